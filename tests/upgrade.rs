//! Zero-downtime binary upgrade as an operator runs it: `weir run --upgrade`
//! takes the listening sockets over from a running weir under load, the old
//! process drains and exits; a takeover with nothing to take over, or one
//! that fails half-way, leaves the running weir as it was; `weir upgrade`
//! does the same from the background and tells systemd (`NOTIFY_SOCKET`)
//! who the main process is; and systemd socket activation (`LISTEN_FDS`).
//!
//! Every test runs the built binary as child processes on loopback with
//! ports chosen by the OS; every wait has a deadline, and children are
//! killed on drop so a failing test leaves nothing behind.

mod cli_support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cli_support::{
    eventually, logged_address, run, spawn_logged, weir, ChildGuard, RawClient, TempConfig,
    Upstream,
};

/// The path the upstream answers only after [`SLOW_DELAY`].
const SLOW: &str = "/slow";
const SLOW_DELAY: Duration = Duration::from_secs(2);
/// Longest any one wait for a process or a log line may take.
const WAIT: Duration = Duration::from_secs(30);

/// A private directory for control and notify sockets, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("weir-upgrade-{}-{n}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `weir` child whose stderr is read line by line.
struct Weir {
    child: ChildGuard,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Weir {
    /// Starts `weir --log-level info <args>`.
    fn start(args: &[&str]) -> Weir {
        let mut cmd = weir();
        cmd.args(["--log-level", "info"]).args(args);
        Weir::spawn(cmd)
    }

    /// Starts `cmd` with stderr piped and read line by line.
    fn spawn(cmd: Command) -> Weir {
        let (child, lines, log) = spawn_logged(cmd);
        Weir { child, lines, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits for a log line `matches` accepts and returns it.
    fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("weir never logged {what}; log:\n{}", self.log()),
            }
        }
    }

    /// The addresses of the `public` listener and the admin listener.
    fn wait_for_addresses(&self) -> (SocketAddr, SocketAddr) {
        let public = self.wait_for_line("its listener", |l| {
            l.contains("listening") && l.contains("listener=public")
        });
        let admin = self.wait_for_line("its admin listener", |l| l.contains("admin listening"));
        (address_in(&public), address_in(&admin))
    }

    /// Waits for the process to exit and returns its exit code.
    fn wait_exit(&mut self, what: &str) -> i32 {
        let status = self
            .child
            .wait_timeout(WAIT)
            .unwrap_or_else(|| panic!("{what} did not exit; log:\n{}", self.log()));
        status.code().unwrap_or(-1)
    }
}

fn address_in(line: &str) -> SocketAddr {
    logged_address(line).unwrap_or_else(|| panic!("no address in {line}"))
}

/// A gateway config: `public` and admin on port 0, everything to `upstream`.
fn gateway_config(upstream: SocketAddr, extra_listener: Option<SocketAddr>) -> String {
    let extra = extra_listener
        .map(|a| format!("  - name: extra\n    address: {a}\n"))
        .unwrap_or_default();
    format!(
        "\
runtime:
  threads: 2
  shutdown_grace: 20s
listeners:
  - name: public
    address: 127.0.0.1:0
{extra}admin:
  address: 127.0.0.1:0
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: app
upstreams:
  - name: app
    targets:
      - address: {upstream}
"
    )
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// `GET path` on a fresh connection; the response status and body.
fn get_once(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut client = RawClient::connect(addr, Duration::from_secs(10))?;
    let response = client.get(path)?;
    client.close();
    Ok((response.status, response.body))
}

/// Clients that each send `GET /fast` on a fresh connection, over and over,
/// until stopped, and count what happened.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// Most requests one client sends, whatever happens to the stop flag.
    const MAX_REQUESTS: usize = 20_000;
    /// Pause between one client's requests: enough load to keep connections
    /// arriving throughout the handoff without exhausting ephemeral ports.
    const PACE: Duration = Duration::from_millis(1);

    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failed, refused, errors) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    refused.clone(),
                    errors.clone(),
                );
                thread::spawn(move || {
                    for _ in 0..Self::MAX_REQUESTS {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        thread::sleep(Self::PACE);
                        let outcome = match get_once(addr, "/fast") {
                            Ok((200, body)) if body == "ok /fast\n" => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ok((status, body)) => format!("status {status}: {body}"),
                            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                format!("refused: {e}")
                            }
                            Err(e) => format!("{:?}: {e}", e.kind()),
                        };
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut errors = errors.lock().expect("errors lock");
                        if errors.len() < 10 {
                            errors.push(outcome);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            refused,
            errors,
            clients,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests have succeeded.
    fn wait_for_more(&self, more: usize, context: impl Fn() -> String) {
        let target = self.ok() + more;
        let reached = eventually(WAIT, || (self.ok() >= target).then_some(()));
        assert!(
            reached.is_some(),
            "the load stalled at {} successes; errors {:?}; {}",
            self.ok(),
            self.errors.lock().expect("errors lock"),
            context()
        );
    }

    /// Stops the clients; returns (successes, failures, refusals, samples).
    fn finish(self) -> (usize, usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().expect("load client");
        }
        let errors = self.errors.lock().expect("errors lock").clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            errors,
        )
    }
}

#[test]
fn upgrade_under_load_fails_no_request_and_drains_the_old_process() {
    let upstream = Upstream::start(SLOW, SLOW_DELAY);
    // Slow requests are then held for the delay only.
    upstream.release();
    let dir = TempDir::new("load");
    let control = dir.join("weir.sock");
    let file = TempConfig::new("upgrade-load", &gateway_config(upstream.addr, None));
    let config = file.display();
    let mut old = Weir::start(&[
        "run",
        "--config",
        &config,
        "--upgrade-socket",
        path_arg(&control),
    ]);
    let (public, admin) = old.wait_for_addresses();

    // A long request in flight on the old process: it reached the upstream
    // (the first request it ever saw) before the new process existed.
    let slow = thread::spawn(move || get_once(public, SLOW));
    assert!(
        eventually(WAIT, || (upstream.received() >= 1).then_some(())).is_some(),
        "the slow request never reached the upstream; log:\n{}",
        old.log()
    );

    let load = Load::start(public, 4);
    load.wait_for_more(50, || format!("before the upgrade; log:\n{}", old.log()));

    let old_pid = old.child.id();
    let mut new = Weir::start(&[
        "run",
        "--config",
        &config,
        "--upgrade",
        "--upgrade-socket",
        path_arg(&control),
    ]);
    let (new_public, new_admin) = new.wait_for_addresses();
    assert_eq!(
        (new_public, new_admin),
        (public, admin),
        "log:\n{}",
        new.log()
    );
    new.wait_for_line("the completed upgrade", |l| l.contains("upgrade complete"));
    assert!(
        new.log()
            .contains(&format!("inherited from weir pid {old_pid}")),
        "log:\n{}",
        new.log()
    );

    let slow = slow
        .join()
        .expect("slow client")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}; log:\n{}", old.log()));
    assert_eq!(slow, (200, format!("ok {SLOW}\n")));
    assert_eq!(old.wait_exit("the old weir"), 0, "log:\n{}", old.log());
    assert!(
        old.log().contains("handed the listening sockets over"),
        "log:\n{}",
        old.log()
    );

    // Only the new process is left to answer.
    load.wait_for_more(100, || {
        format!("after the old weir exited; log:\n{}", new.log())
    });
    let (ok, failed, refused, errors) = load.finish();
    assert_eq!(
        (failed, refused),
        (0, 0),
        "{ok} requests succeeded; errors: {errors:?}\nold log:\n{}\nnew log:\n{}",
        old.log(),
        new.log()
    );
    let ready = get_once(admin, "/ready").expect("GET /ready on the new process");
    assert_eq!(ready.0, 200, "{ready:?}");
    assert!(
        new.child.0.try_wait().expect("try_wait").is_none(),
        "the new weir exited; log:\n{}",
        new.log()
    );
}

#[test]
fn upgrade_without_a_running_weir_fails_and_serves_nothing() {
    let dir = TempDir::new("nobody");
    let control = dir.join("nobody.sock");
    let file = TempConfig::new(
        "upgrade-nobody",
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: hi\n    direct_response: { status: 200 }\n",
    );
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(file.path())
        .args(["--upgrade", "--upgrade-socket"])
        .arg(&control);
    let out = run(cmd);
    assert_eq!(out.code(), 1, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("no running weir to upgrade")
            && out.stderr.contains(path_arg(&control)),
        "stderr:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("listening"), "stderr:\n{}", out.stderr);
    assert!(!control.exists(), "a failed takeover left {control:?}");
}

#[test]
fn failed_takeover_leaves_the_old_process_serving_and_a_later_one_succeeds() {
    let upstream = Upstream::start(SLOW, SLOW_DELAY);
    let dir = TempDir::new("failed");
    let control = dir.join("weir.sock");
    let good = TempConfig::new("upgrade-good", &gateway_config(upstream.addr, None));
    let mut old = Weir::start(&[
        "run",
        "--config",
        &good.display(),
        "--upgrade-socket",
        path_arg(&control),
    ]);
    let (public, _) = old.wait_for_addresses();

    // The new configuration adds a listener on an address that is taken:
    // the new process receives the sockets, then cannot bind.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let taken_addr = taken.local_addr().expect("taken addr");
    let bad = TempConfig::new(
        "upgrade-bad",
        &gateway_config(upstream.addr, Some(taken_addr)),
    );
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(bad.path())
        .args(["--upgrade", "--upgrade-socket"])
        .arg(&control);
    let out = run(cmd);
    assert_eq!(out.code(), 1, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("cannot listen on"),
        "stderr:\n{}",
        out.stderr
    );
    old.wait_for_line("the abandoned upgrade", |l| {
        l.contains("upgrade attempt failed")
    });

    assert!(
        old.child.0.try_wait().expect("try_wait").is_none(),
        "the old weir exited; log:\n{}",
        old.log()
    );
    let served = get_once(public, "/fast").expect("GET on the old weir");
    assert_eq!(served, (200, "ok /fast\n".to_owned()));

    let mut new = Weir::start(&[
        "run",
        "--config",
        &good.display(),
        "--upgrade",
        "--upgrade-socket",
        path_arg(&control),
    ]);
    new.wait_for_line("the completed upgrade", |l| l.contains("upgrade complete"));
    assert_eq!(old.wait_exit("the old weir"), 0, "log:\n{}", old.log());
    let served = get_once(public, "/fast").expect("GET on the new weir");
    assert_eq!(served, (200, "ok /fast\n".to_owned()));
    drop(taken);
    new.child.0.kill().expect("kill the new weir");
    let _ = new.wait_exit("the new weir");
}

/// Sends SIGTERM to `pid` (not a child of the test: `weir upgrade` starts
/// the new process detached).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Terminates a process that is not a child of the test when dropped.
struct Detached(Option<u32>);

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            terminate(pid);
        }
    }
}

/// The next `sd_notify` message on `socket`.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn upgrade_command_hands_over_in_the_background_and_notifies_systemd() {
    let upstream = Upstream::start(SLOW, SLOW_DELAY);
    let dir = TempDir::new("command");
    let control = dir.join("weir.sock");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(WAIT))
        .expect("notify read timeout");
    let file = TempConfig::new("upgrade-command", &gateway_config(upstream.addr, None));

    let mut cmd = weir();
    cmd.args(["--log-level", "info", "run", "--config"])
        .arg(file.path())
        .arg("--upgrade-socket")
        .arg(&control)
        .env("NOTIFY_SOCKET", &notify_path);
    let mut old = Weir::spawn(cmd);
    let (public, _) = old.wait_for_addresses();
    assert_eq!(next_notification(&notify), "READY=1");

    // The new process outlives `weir upgrade` and inherits its output: files,
    // not pipes, or reading them would wait for the new process to exit.
    let out_path = dir.join("upgrade.out");
    let err_path = dir.join("upgrade.err");
    let mut cmd = weir();
    cmd.args(["upgrade", "--config"])
        .arg(file.path())
        .arg("--upgrade-socket")
        .arg(&control)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut helper = ChildGuard(cmd.spawn().expect("spawn weir upgrade"));
    let status = helper
        .wait_timeout(WAIT)
        .expect("weir upgrade did not return");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let new_pid: u32 = stdout
        .split_once("weir pid ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {stdout:?}"));
    let mut new = Detached(Some(new_pid));
    assert!(
        stdout.contains(&format!("took over from pid {}", old.child.id())),
        "{stdout}"
    );

    assert_eq!(
        next_notification(&notify),
        format!("MAINPID={new_pid}\nREADY=1")
    );
    assert_eq!(old.wait_exit("the old weir"), 0, "log:\n{}", old.log());
    let served = get_once(public, "/fast").expect("GET on the new weir");
    assert_eq!(served, (200, "ok /fast\n".to_owned()));

    // The new process now owns the control socket, and stops like any other.
    if let Some(pid) = new.0.take() {
        terminate(pid);
    }
    assert_eq!(next_notification(&notify), "STOPPING=1");
    let removed = eventually(WAIT, || (!control.exists()).then_some(()));
    assert!(
        removed.is_some(),
        "the control socket outlived the new weir"
    );
}

#[test]
fn socket_activation_serves_on_the_descriptor_systemd_passes() {
    let upstream = Upstream::start(SLOW, SLOW_DELAY);
    let dir = TempDir::new("activation");
    let file = TempConfig::new("upgrade-activation", &gateway_config(upstream.addr, None));
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind the activation socket");
    let addr = socket.local_addr().expect("activation addr");

    // systemd passes sockets from descriptor 3 with LISTEN_PID set to the
    // service's pid. std can only place a descriptor at 0-2, so the socket
    // goes in as stdin and the shell moves it to 3 before exec'ing weir
    // (exec keeps the pid the shell exported).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@" 3<&0 0</dev/null"#)
        .arg(env!("CARGO_BIN_EXE_weir"))
        .args(["--log-level", "info", "run", "--config"])
        .arg(file.path())
        .arg("--upgrade-socket")
        .arg(dir.join("weir.sock"))
        .env_remove("RUST_LOG")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "public")
        .stdin(Stdio::from(OwnedFd::from(socket)));
    let gw = Weir::spawn(cmd);
    let (public, _) = gw.wait_for_addresses();
    assert_eq!(public, addr, "log:\n{}", gw.log());
    assert!(
        gw.log().contains("inherited from systemd"),
        "log:\n{}",
        gw.log()
    );
    let served = get_once(addr, "/fast").expect("GET on the activated socket");
    assert_eq!(served, (200, "ok /fast\n".to_owned()));
}

/// `method path` on a fresh connection; the status and body.
fn request_once(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut client = RawClient::connect(addr, WAIT).expect("connect");
    let response = client
        .send(method, path)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    client.close();
    (response.status, response.body)
}

/// The pid `GET /status` reports on `admin`.
fn serving_pid(admin: SocketAddr) -> u32 {
    let (status, body) = request_once(admin, "GET", "/status");
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    status["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid in {body}"))
}

#[test]
fn reload_that_changes_listeners_upgrades_in_place_under_load() {
    let upstream = Upstream::start(SLOW, SLOW_DELAY);
    upstream.release();
    let dir = TempDir::new("reload");
    let control = dir.join("weir.sock");
    let file = TempConfig::new("upgrade-reload", &gateway_config(upstream.addr, None));
    let config = file.display();
    let mut first = Weir::start(&[
        "run",
        "--config",
        &config,
        "--upgrade-socket",
        path_arg(&control),
    ]);
    let (public, admin) = first.wait_for_addresses();
    let first_pid = first.child.id();
    assert_eq!(serving_pid(admin), first_pid);
    let load = Load::start(public, 4);
    load.wait_for_more(50, || format!("before the reload; log:\n{}", first.log()));

    // A new listener: the file watcher sees it, and only a new process can
    // bind it. The successor shares the first one's stderr.
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    file.replace(&gateway_config(upstream.addr, Some(any_port)));
    let line = first.wait_for_line("the successor's new listener", |l| {
        l.contains("listening") && l.contains("listener=extra")
    });
    let extra = address_in(&line);
    first.wait_for_line("the completed upgrade", |l| l.contains("upgrade complete"));
    // The old process stops accepting just after it confirms the handover:
    // a request may still reach it in between.
    let second_pid = eventually(WAIT, || {
        let pid = serving_pid(admin);
        (pid != first_pid).then_some(pid)
    })
    .unwrap_or_else(|| panic!("the first weir kept the admin API; log:\n{}", first.log()));
    let mut second = Detached(Some(second_pid));
    assert_eq!(
        get_once(extra, "/fast").expect("GET on the new listener"),
        (200, "ok /fast\n".to_owned())
    );
    assert_eq!(
        first.wait_exit("the first weir"),
        0,
        "log:\n{}",
        first.log()
    );
    assert!(
        first
            .log()
            .contains("configuration applied by a binary upgrade"),
        "log:\n{}",
        first.log()
    );
    load.wait_for_more(100, || {
        format!("after the first upgrade; log:\n{}", first.log())
    });

    // The listener removed again, through the admin API this time (the
    // watcher may get there first: then the call reports the handover).
    file.replace(&gateway_config(upstream.addr, None));
    let (status, body) = request_once(admin, "POST", "/config/reload");
    let third_pid = match status {
        200 => {
            let report: serde_json::Value = serde_json::from_str(&body).expect("reload JSON");
            assert_eq!(report["result"], "upgraded", "{body}");
            assert!(
                report["changes"].to_string().contains("listeners: changed"),
                "{body}"
            );
            report["pid"].as_u64().expect("pid") as u32
        }
        409 => {
            assert!(body.contains("has handed over to pid"), "{body}");
            eventually(WAIT, || {
                let pid = serving_pid(admin);
                (pid != second_pid).then_some(pid)
            })
            .unwrap_or_else(|| panic!("the second weir kept the admin API; log:\n{}", first.log()))
        }
        _ => panic!("reload answered {status}: {body}; log:\n{}", first.log()),
    };
    let _third = Detached(Some(third_pid));
    assert!(
        eventually(WAIT, || (serving_pid(admin) == third_pid).then_some(())).is_some(),
        "the third weir never served the admin API; log:\n{}",
        first.log()
    );
    assert_ne!(third_pid, second_pid);
    let closed = eventually(WAIT, || {
        matches!(get_once(extra, "/fast"), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            .then_some(())
    });
    assert!(
        closed.is_some(),
        "the removed listener still accepts; log:\n{}",
        first.log()
    );
    // The second process drains and exits on its own.
    let second_gone = eventually(WAIT, || {
        (!Path::new(&format!("/proc/{second_pid}")).exists()).then_some(())
    });
    assert!(second_gone.is_some(), "log:\n{}", first.log());
    second.0 = None;

    load.wait_for_more(100, || {
        format!("after the second upgrade; log:\n{}", first.log())
    });
    let (ok, failed, refused, errors) = load.finish();
    assert_eq!(
        (failed, refused),
        (0, 0),
        "{ok} requests succeeded; errors: {errors:?}\nlog:\n{}",
        first.log()
    );
}
