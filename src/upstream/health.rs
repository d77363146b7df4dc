//! Active health checks: a background task per upstream probes every target
//! on an interval (an HTTP `GET`, a bare TCP connect, or a gRPC health call
//! in `health/grpc.rs`) and keeps each
//! target's [`TargetHealth`], which target selection reads with one atomic
//! load.
//!
//! This file owns the probes, the check loop and the healthy/unhealthy state
//! machine. It does not choose targets, count metrics or eject on real
//! traffic (that is `policy::outlier`); it only flips the flag selection
//! reads and logs each transition.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

mod grpc;

use super::{Target, UpstreamSet};
use crate::observe::metrics::UpstreamPolicyMetrics;
use crate::tls::ClientTls;

/// `User-Agent` of HTTP checks, so targets can tell them from real traffic.
pub const CHECK_USER_AGENT: &str = "weir-health-check";
/// A check reads at most this much of a response body, then hangs up.
const MAX_BODY: usize = 64 * 1024;
/// Floor of the check interval, so a zero interval cannot turn the loop into
/// a flood of probes.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Statuses that pass when a check lists none.
const DEFAULT_EXPECTED: (u16, u16) = (200, 299);

/// How a target is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP/1.1 `GET` of `path` whose status must fall in one of the
    /// inclusive `expected` ranges (empty: 200-299).
    Http {
        /// Request path, e.g. `/healthz`.
        path: String,
        /// Inclusive status ranges that pass.
        expected: Vec<(u16, u16)>,
        /// `Host` header; None sends the target's address.
        host: Option<String>,
    },
    /// A TCP connect; success is healthy.
    Tcp,
    /// A `grpc.health.v1.Health/Check` call over HTTP/2; `SERVING` is
    /// healthy.
    Grpc {
        /// The service asked about (`""`: the whole server).
        service: String,
        /// `:authority`; None sends the target's address.
        host: Option<String>,
    },
}

/// Health checking of one upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    /// What a check does.
    pub kind: CheckKind,
    /// Time between rounds of checks (jittered by ±10%).
    pub interval: Duration,
    /// Time one check may take, connect included.
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy target back (0 counts as 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy target out (0 counts as 1).
    pub unhealthy_threshold: u32,
}

/// A change of a target's health, for the caller to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The target passed enough checks to take traffic again.
    BecameHealthy,
    /// The target failed enough checks to be taken out of rotation.
    BecameUnhealthy {
        /// Why the last check failed.
        reason: String,
    },
}

/// Health of one target as seen by active checks.
///
/// A target starts healthy: upstreams without health checks must take
/// traffic, and starting unhealthy would answer every request with 503 from
/// the start (or a reload) until the first round of checks is done. Instead,
/// as in HAProxy, the very first check decides on its own: one failure takes
/// a never-checked target out at once, so a dead target is dropped after one
/// check rather than `unhealthy_threshold` of them. From then on the
/// thresholds apply.
#[derive(Debug)]
pub struct TargetHealth {
    // read on every target selection; written only by the checker
    healthy: AtomicBool,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default)]
struct Detail {
    checks: u64,
    consecutive_successes: u32,
    consecutive_failures: u32,
    last_check: Option<SystemTime>,
    last_failure: Option<String>,
}

/// Aborts a spawned task when dropped, so a probe cut short by its timeout
/// does not leave its connection task behind.
struct AbortOnDrop(JoinHandle<()>);

// === impl CheckSettings ===

impl From<&weir_config::HealthCheck> for CheckSettings {
    fn from(cfg: &weir_config::HealthCheck) -> CheckSettings {
        let kind = match cfg.kind {
            weir_config::HealthCheckKind::Http => CheckKind::Http {
                path: cfg.path.clone().unwrap_or_else(|| "/".to_owned()),
                expected: cfg
                    .expected_status
                    .iter()
                    .map(|r| (r.low, r.high))
                    .collect(),
                host: cfg.host.clone(),
            },
            weir_config::HealthCheckKind::Tcp => CheckKind::Tcp,
            weir_config::HealthCheckKind::Grpc => CheckKind::Grpc {
                service: cfg.service.clone().unwrap_or_default(),
                host: cfg.host.clone(),
            },
        };
        CheckSettings {
            kind,
            interval: cfg.interval.get(),
            timeout: cfg.timeout.get(),
            healthy_threshold: cfg.healthy_threshold,
            unhealthy_threshold: cfg.unhealthy_threshold,
        }
    }
}

// === impl TargetHealth ===

impl Default for TargetHealth {
    fn default() -> TargetHealth {
        TargetHealth {
            healthy: AtomicBool::new(true),
            detail: Mutex::new(Detail::default()),
        }
    }
}

impl TargetHealth {
    /// Whether the target may receive traffic. True until checks say
    /// otherwise, and always true for targets that are never checked.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Feeds the result of one check made at `at`; returns the transition
    /// it caused, if any. See the type's docs for the first-check rule.
    pub fn record(
        &self,
        result: Result<(), String>,
        settings: &CheckSettings,
        at: SystemTime,
    ) -> Option<Transition> {
        let mut d = self.lock();
        let first = d.checks == 0;
        d.checks = d.checks.saturating_add(1);
        d.last_check = Some(at);
        let healthy = self.is_healthy();
        // The flag is written under the lock, so transitions are reported
        // exactly once even if two checkers were ever to race.
        match result {
            Ok(()) => {
                d.consecutive_failures = 0;
                d.consecutive_successes = d.consecutive_successes.saturating_add(1);
                if !healthy && d.consecutive_successes >= settings.healthy_threshold.max(1) {
                    self.healthy.store(true, Ordering::Relaxed);
                    return Some(Transition::BecameHealthy);
                }
                None
            }
            Err(reason) => {
                d.consecutive_successes = 0;
                d.consecutive_failures = d.consecutive_failures.saturating_add(1);
                d.last_failure = Some(reason.clone());
                if healthy
                    && (first || d.consecutive_failures >= settings.unhealthy_threshold.max(1))
                {
                    self.healthy.store(false, Ordering::Relaxed);
                    return Some(Transition::BecameUnhealthy { reason });
                }
                None
            }
        }
    }

    /// JSON view for the admin API: `healthy`, `checks` (made so far),
    /// `consecutive_successes`, `consecutive_failures`, `last_check_unix_ms`
    /// (null before the first check) and `last_failure` (the reason of the
    /// latest failed check, null if none failed).
    pub fn describe(&self) -> serde_json::Value {
        let d = self.lock();
        let last_check_ms = d
            .last_check
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        serde_json::json!({
            "healthy": self.is_healthy(),
            "checks": d.checks,
            "consecutive_successes": d.consecutive_successes,
            "consecutive_failures": d.consecutive_failures,
            "last_check_unix_ms": last_check_ms,
            "last_failure": d.last_failure,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Detail> {
        // The detail is plain counters: usable even if a holder panicked.
        self.detail.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl AbortOnDrop ===

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === probes ===

/// Probes `addr` once. TCP checks pass when a connection opens; HTTP checks
/// send `GET path` (with `Host` the configured host or `addr`,
/// `User-Agent: weir-health-check`, `Connection: close`) and pass when the
/// status is expected. The whole exchange, connect included, must finish
/// within `settings.timeout`. The error is a short reason for logs and the
/// admin API (`status 503`, `connect refused: ...`, `timed out after 1s`).
pub async fn probe(addr: SocketAddr, settings: &CheckSettings) -> Result<(), String> {
    probe_with_host(addr, None, None, settings).await
}

/// `tls`: the upstream's TLS and the target's configured host (name or
/// address) to verify its certificate against.
async fn probe_with_host(
    addr: SocketAddr,
    default_host: Option<&str>,
    tls: Option<(&ClientTls, &str)>,
    settings: &CheckSettings,
) -> Result<(), String> {
    let timeout = settings.timeout;
    let exchange = exchange(addr, default_host, tls, &settings.kind);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn exchange(
    addr: SocketAddr,
    default_host: Option<&str>,
    tls: Option<(&ClientTls, &str)>,
    kind: &CheckKind,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("connect refused: {e}"),
        _ => format!("connect failed: {e}"),
    })?;
    // A TCP check on a TLS upstream completes the handshake too: a target
    // whose certificate weir would refuse is not healthy.
    let stream = match tls {
        None => Probed::Plain(stream),
        Some((tls, host)) => Probed::Tls(Box::new(
            tls.connect(host, stream)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?,
        )),
    };
    let (path, expected, host) = match kind {
        CheckKind::Http {
            path,
            expected,
            host,
        } => (path, expected, host),
        CheckKind::Tcp => return Ok(()),
        CheckKind::Grpc { service, host } => {
            let authority = match (host, default_host) {
                (Some(h), _) => h.clone(),
                (None, Some(h)) => h.to_owned(),
                (None, None) => addr.to_string(),
            };
            return grpc::check(addr, stream, &authority, service).await;
        }
    };
    let host = match (host, default_host) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => addr.to_string(),
    };
    // An origin-form target must start with '/'; be lenient with `healthz`.
    let path = if path.starts_with('/') {
        path.clone()
    } else {
        format!("/{path}")
    };
    let request = Request::get(path)
        .header(HOST, host)
        .header(USER_AGENT, CHECK_USER_AGENT)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid check request: {e}"))?;
    let response = match stream {
        Probed::Plain(stream) => send_http1(addr, TokioIo::new(stream), request).await?,
        Probed::Tls(stream) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
            send_http2(addr, TokioIo::new(stream), request).await?
        }
        Probed::Tls(stream) => send_http1(addr, TokioIo::new(stream), request).await?,
    };
    let status = response.status().as_u16();
    if !status_passes(expected, status) {
        return Err(format!("status {status}"));
    }
    let mut body = response.into_body();
    let mut read = 0usize;
    while read < MAX_BODY {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(format!("reading body failed: {e}")),
        }
    }
    Ok(())
}

/// A probe's connection.
enum Probed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A check response whose connection lives until the response is dropped.
struct CheckResponse {
    response: hyper::Response<hyper::body::Incoming>,
    _conn: AbortOnDrop,
}

impl std::ops::Deref for CheckResponse {
    type Target = hyper::Response<hyper::body::Incoming>;
    fn deref(&self) -> &Self::Target {
        &self.response
    }
}

impl CheckResponse {
    fn into_body(self) -> hyper::body::Incoming {
        self.response.into_body()
    }
}

async fn send_http1<I>(
    addr: SocketAddr,
    io: I,
    request: Request<Empty<Bytes>>,
) -> Result<CheckResponse, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "health check connection ended");
        }
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok(CheckResponse {
        response,
        _conn: conn,
    })
}

async fn send_http2<I>(
    addr: SocketAddr,
    io: I,
    mut request: Request<Empty<Bytes>>,
) -> Result<CheckResponse, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "health check connection ended");
        }
    }));
    // HTTP/2 carries the host as :authority and has no Connection header.
    let host = request
        .headers_mut()
        .remove(HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| addr.to_string());
    request.headers_mut().remove(CONNECTION);
    let pq = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = hyper::Uri::builder()
        .scheme("https")
        .authority(host)
        .path_and_query(pq)
        .build()
        .map_err(|e| format!("invalid check request: {e}"))?;
    *request.version_mut() = http::Version::HTTP_2;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok(CheckResponse {
        response,
        _conn: conn,
    })
}

fn status_passes(expected: &[(u16, u16)], status: u16) -> bool {
    let in_range = |&(low, high): &(u16, u16)| (low..=high).contains(&status);
    if expected.is_empty() {
        in_range(&DEFAULT_EXPECTED)
    } else {
        expected.iter().any(in_range)
    }
}

// === the check loop ===

/// Checks every target of `set` each interval until the upstream is dropped
/// (a reload replaced it). The first round starts at once; targets are
/// probed concurrently, each bounded by the timeout, so a hanging target
/// delays no other. Rounds start every `interval` ±10% (random, so that many
/// gateways do not check in step). HTTP checks send the target's configured
/// address as `Host` unless the settings name a host. A target whose
/// hostname is unresolved fails with reason `unresolved`.
pub async fn run(set: Weak<UpstreamSet>, settings: CheckSettings) {
    let settings = Arc::new(settings);
    loop {
        let started = tokio::time::Instant::now();
        // Hold the upstream only for the length of a round, so that dropping
        // it ends this task at the next round.
        let Some(live) = set.upgrade() else {
            return;
        };
        let upstream = live.name.clone();
        let targets = live.targets.clone();
        let metrics = Arc::new(live.policy_metrics.clone());
        let tls = live.tls.clone();
        drop(live);

        let mut round = JoinSet::new();
        for target in targets {
            round.spawn(check(
                upstream.clone(),
                target,
                tls.clone(),
                settings.clone(),
                metrics.clone(),
            ));
        }
        while round.join_next().await.is_some() {}

        let pause = jittered(settings.interval.max(MIN_INTERVAL), fastrand::f64());
        tokio::time::sleep_until(started + pause).await;
    }
}

async fn check(
    upstream: Arc<str>,
    target: Arc<Target>,
    tls: Option<ClientTls>,
    settings: Arc<CheckSettings>,
    metrics: Arc<UpstreamPolicyMetrics>,
) {
    let tls = tls.as_ref().map(|t| (t, target.host()));
    let result = match target.addr() {
        Some(addr) => probe_with_host(addr, Some(&target.address), tls, &settings).await,
        None => Err("unresolved".to_owned()),
    };
    match &result {
        Ok(()) => metrics.checks_passed.inc(),
        Err(_) => metrics.checks_failed.inc(),
    };
    let transition = target.health.record(result, &settings, SystemTime::now());
    metrics.set_target_healthy(&target.address, target.health.is_healthy());
    match transition {
        Some(Transition::BecameUnhealthy { reason }) => tracing::warn!(
            upstream = %upstream,
            target = %target.address,
            %reason,
            "target failed health checks; out of rotation"
        ),
        Some(Transition::BecameHealthy) => tracing::info!(
            upstream = %upstream,
            target = %target.address,
            "target passed health checks; back in rotation"
        ),
        None => {}
    }
}

/// `interval` scaled by a factor in [0.9, 1.1) chosen by `roll` in [0, 1).
fn jittered(interval: Duration, roll: f64) -> Duration {
    Duration::try_from_secs_f64(interval.as_secs_f64() * (0.9 + 0.2 * roll.clamp(0.0, 1.0)))
        .unwrap_or(interval)
}

#[cfg(test)]
mod tests {
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
}
