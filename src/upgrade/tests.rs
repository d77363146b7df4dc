//! Unit tests of the upgrade module: claim rules, the control socket file,
//! and a whole handoff between two threads of one process.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use super::*;

/// A fresh directory for one test's control socket; the socket path.
fn temp_socket(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("weir-upgrade-unit-{}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("weir.sock")
}

fn remove_temp(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn loopback() -> (TcpListener, SocketAddr) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

fn listener(name: &str) -> Role {
    Role::Listener(name.to_owned())
}

#[test]
fn claims_by_role_and_address_then_by_fixed_address_only() {
    let (public, public_addr) = loopback();
    let (admin, admin_addr) = loopback();
    let inherited = |role, configured: String, local, socket| Inherited {
        role: Some(role),
        configured: Some(configured),
        local,
        socket,
    };
    let mut sockets = InheritedListeners {
        origin: "test".into(),
        sockets: vec![
            inherited(
                listener("public"),
                "127.0.0.1:0".into(),
                public_addr,
                public,
            ),
            inherited(Role::Admin, admin_addr.to_string(), admin_addr, admin),
        ],
    };
    // A changed address binds afresh; port 0 never matches by address.
    assert!(sockets.claim(&listener("public"), "127.0.0.1:9").is_none());
    assert!(sockets.claim(&listener("other"), "127.0.0.1:0").is_none());
    let claimed = sockets.claim(&listener("public"), "127.0.0.1:0").unwrap();
    assert_eq!(claimed.local_addr().unwrap(), public_addr);
    // A listener that took over the admin's fixed address gets its socket.
    let claimed = sockets
        .claim(&listener("renamed"), &admin_addr.to_string())
        .unwrap();
    assert_eq!(claimed.local_addr().unwrap(), admin_addr);
    assert!(sockets.is_empty());
}

#[test]
fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
    let path = temp_socket("stale");
    drop(UnixListener::bind(&path).unwrap());
    let live = ControlSocket::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(matches!(
        ControlSocket::bind(&path),
        Err(UpgradeError::InstanceRunning { .. })
    ));
    drop(live);
    assert!(!path.exists(), "the socket file outlived its process");
    remove_temp(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_the_sockets_to_a_successor_and_leaves_it_the_path() {
    let path = temp_socket("handoff");
    let control = ControlSocket::bind(&path).unwrap();
    let (public, public_addr) = loopback();
    let offered = vec![ListeningSocket {
        role: listener("public"),
        configured: "127.0.0.1:0".into(),
        socket: public,
    }];
    let serving = tokio::spawn(control.serve(Arc::new(offered)));
    let at = path.clone();
    let (instance, received) = tokio::task::spawn_blocking(move || {
        let instance = query(&at).unwrap();
        let mut takeover = Takeover::begin(&at).unwrap();
        let mut listeners = takeover.take_listeners();
        let socket = listeners.claim(&listener("public"), "127.0.0.1:0").unwrap();
        takeover.complete().unwrap();
        (instance, socket.local_addr().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(instance.pid, std::process::id());
    assert_eq!(received, public_addr);
    assert_eq!(serving.await.unwrap(), std::process::id());
    assert!(path.exists(), "the path belongs to the successor now");
    remove_temp(&path);
}
