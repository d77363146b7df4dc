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
mod tests;
