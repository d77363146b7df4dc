//! Unit tests for the health state machine and probes, against real
//! listeners on loopback.

use super::*;
use std::sync::atomic::AtomicU16;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Generous outer bound so a broken probe fails the test instead of
/// hanging it; never a timing assertion.
const TEST_DEADLINE: Duration = Duration::from_secs(10);

fn http(expected: &[(u16, u16)]) -> CheckSettings {
    CheckSettings {
        kind: CheckKind::Http {
            path: "/healthz".to_owned(),
            expected: expected.to_vec(),
            host: None,
        },
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    }
}

fn tcp() -> CheckSettings {
    CheckSettings {
        kind: CheckKind::Tcp,
        ..http(&[])
    }
}

/// A tiny HTTP server answering every request with the status in
/// `status`; returns its address and the request heads it received.
async fn http_server(status: Arc<AtomicU16>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let status = status.load(Ordering::Relaxed);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let reply = format!(
                    "HTTP/1.1 {status} Test\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, heads)
}

/// A server that accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn bounded_probe(addr: SocketAddr, settings: &CheckSettings) -> Result<(), String> {
    tokio::time::timeout(TEST_DEADLINE, probe(addr, settings))
        .await
        .expect("probe ends within its own timeout")
}

#[tokio::test]
async fn http_check_passes_on_expected_status() {
    let (addr, heads) = http_server(Arc::new(AtomicU16::new(204))).await;
    assert_eq!(bounded_probe(addr, &http(&[(200, 299)])).await, Ok(()));
    let heads = heads.lock().unwrap();
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    assert!(head.contains("user-agent: weir-health-check\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
}

#[tokio::test]
async fn http_check_fails_on_unexpected_status() {
    let status = Arc::new(AtomicU16::new(503));
    let (addr, _) = http_server(status.clone()).await;
    let settings = http(&[(200, 299), (404, 404)]);
    assert_eq!(
        bounded_probe(addr, &settings).await,
        Err("status 503".to_owned())
    );
    status.store(404, Ordering::Relaxed);
    assert_eq!(bounded_probe(addr, &settings).await, Ok(()));
    status.store(302, Ordering::Relaxed);
    assert_eq!(
        bounded_probe(addr, &http(&[])).await,
        Err("status 302".to_owned())
    );
}

#[tokio::test]
async fn http_check_sends_configured_host() {
    let (addr, heads) = http_server(Arc::new(AtomicU16::new(200))).await;
    let mut settings = http(&[]);
    settings.kind = CheckKind::Http {
        path: "ready".to_owned(),
        expected: vec![],
        host: Some("orders.internal".to_owned()),
    };
    assert_eq!(bounded_probe(addr, &settings).await, Ok(()));
    let head = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("get /ready http/1.1\r\n"), "{head}");
    assert!(head.contains("host: orders.internal\r\n"), "{head}");
}

#[tokio::test]
async fn check_of_a_closed_port_fails_to_connect() {
    let addr = closed_port().await;
    for settings in [http(&[]), tcp()] {
        let err = bounded_probe(addr, &settings).await.unwrap_err();
        assert!(err.starts_with("connect "), "{err}");
    }
}

#[tokio::test]
async fn http_check_times_out_on_a_silent_server() {
    let addr = silent_server().await;
    let mut settings = http(&[]);
    settings.timeout = Duration::from_millis(200);
    let err = bounded_probe(addr, &settings).await.unwrap_err();
    assert_eq!(err, "timed out after 200ms");
}

#[tokio::test]
async fn tcp_check_passes_when_connect_succeeds() {
    // accepting is enough: the server never speaks
    let addr = silent_server().await;
    assert_eq!(bounded_probe(addr, &tcp()).await, Ok(()));
}

#[tokio::test]
async fn check_loop_follows_targets_and_ends_with_the_upstream() {
    let status = Arc::new(AtomicU16::new(200));
    let (up, _) = http_server(status.clone()).await;
    let down = closed_port().await;
    let yaml = format!(
        "listeners: [{{ name: web, address: \"127.0.0.1:8080\" }}]\n\
         upstreams:\n  - {{ name: u, targets: [{{ address: \"{up}\" }}, {{ address: \"{down}\" }}] }}\n\
         routes: []\n"
    );
    let config = weir_config::Config::from_yaml(&yaml).expect("test config is valid");
    let metrics = crate::observe::metrics::Metrics::new();
    let set = Arc::new(UpstreamSet::build(&config.upstreams[0], &metrics, None));
    let mut settings = http(&[]);
    settings.healthy_threshold = 1;
    settings.unhealthy_threshold = 1;
    let task = tokio::spawn(run(Arc::downgrade(&set), settings));

    let checked = |t: &Target| t.health.describe()["checks"].as_u64().unwrap_or(0) > 0;
    eventually(|| checked(&set.targets[0]) && checked(&set.targets[1])).await;
    assert!(set.targets[0].health.is_healthy());
    assert!(!set.targets[1].health.is_healthy());

    status.store(500, Ordering::Relaxed);
    eventually(|| !set.targets[0].health.is_healthy()).await;
    assert_eq!(
        set.targets[0].health.describe()["last_failure"],
        "status 500"
    );

    drop(set);
    tokio::time::timeout(TEST_DEADLINE, task)
        .await
        .expect("the loop ends once the upstream is dropped")
        .unwrap();
}

async fn eventually(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TEST_DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn failed(reason: &str) -> Result<(), String> {
    Err(reason.to_owned())
}

#[test]
fn unchecked_target_is_healthy() {
    let h = TargetHealth::default();
    assert!(h.is_healthy());
    assert_eq!(h.describe()["checks"], 0);
    assert!(h.describe()["last_check_unix_ms"].is_null());
}

#[test]
fn first_failed_check_takes_target_out() {
    let h = TargetHealth::default();
    let t = SystemTime::now();
    assert_eq!(
        h.record(failed("unresolved"), &http(&[]), t),
        Some(Transition::BecameUnhealthy {
            reason: "unresolved".to_owned()
        })
    );
    assert!(!h.is_healthy());
}

#[test]
fn goes_unhealthy_after_threshold_failures() {
    let h = TargetHealth::default();
    let s = http(&[]);
    let t = SystemTime::now();
    assert_eq!(h.record(Ok(()), &s, t), None);
    assert_eq!(h.record(failed("status 503"), &s, t), None);
    assert_eq!(h.record(failed("status 503"), &s, t), None);
    // a pass breaks the streak
    assert_eq!(h.record(Ok(()), &s, t), None);
    assert_eq!(h.record(failed("status 503"), &s, t), None);
    assert_eq!(h.record(failed("status 503"), &s, t), None);
    assert!(h.is_healthy());
    assert_eq!(
        h.record(failed("timed out after 1s"), &s, t),
        Some(Transition::BecameUnhealthy {
            reason: "timed out after 1s".to_owned()
        })
    );
    assert!(!h.is_healthy());
    assert_eq!(h.record(failed("status 503"), &s, t), None);
    assert_eq!(h.describe()["consecutive_failures"], 4);
    assert_eq!(h.describe()["last_failure"], "status 503");
}

#[test]
fn comes_back_after_threshold_successes() {
    let h = TargetHealth::default();
    let s = http(&[]);
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_234);
    h.record(failed("connect refused"), &s, t);
    assert_eq!(h.record(Ok(()), &s, t), None);
    assert_eq!(h.record(failed("connect refused"), &s, t), None);
    assert_eq!(h.record(Ok(()), &s, t), None);
    assert!(!h.is_healthy());
    assert_eq!(h.record(Ok(()), &s, t), Some(Transition::BecameHealthy));
    assert!(h.is_healthy());
    assert_eq!(h.record(Ok(()), &s, t), None);
    let view = h.describe();
    assert_eq!(view["healthy"], true);
    assert_eq!(view["last_check_unix_ms"], 1_234);
    assert_eq!(view["last_failure"], "connect refused");
}

#[test]
fn zero_thresholds_count_as_one() {
    let h = TargetHealth::default();
    let mut s = http(&[]);
    s.healthy_threshold = 0;
    s.unhealthy_threshold = 0;
    let t = SystemTime::now();
    h.record(Ok(()), &s, t);
    assert!(h.record(failed("x"), &s, t).is_some());
    assert_eq!(h.record(Ok(()), &s, t), Some(Transition::BecameHealthy));
}

#[test]
fn jitter_stays_within_ten_percent() {
    let i = Duration::from_secs(10);
    assert_eq!(jittered(i, 0.0), Duration::from_secs(9));
    assert!(jittered(i, 0.999) < Duration::from_secs(11));
    assert!(jittered(i, 0.5) > Duration::from_secs(9));
}
