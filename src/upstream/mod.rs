//! Upstreams at run time: the targets of each configured upstream, their
//! resolved addresses, load balancing, connection pools and opening new
//! connections. This module knows nothing about routes or the proxy pipeline;
//! it hands out connections and records connection-level metrics.

pub mod balancer;
pub mod body;
pub mod h1;
pub mod health;
pub mod pool;
pub mod response;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weir_config::{HashOn, UpstreamProtocol};

use crate::observe::metrics::{Metrics, UpstreamMetrics, UpstreamPolicyMetrics};
use crate::policy::circuit_breaker::{self, CircuitBreaker, ConnectionPermit, Overflow};
use crate::policy::outlier::{Observation, OutlierDetector, OutlierSettings};
use crate::tls::ClientTls;
pub use balancer::{hash_key, Balancer};
pub use body::{decode_chunk as decode_base64_chunk, OutboundBody, OutboundError};
pub use h1::Http1Conn;
use pool::{Http1Pool, Http2Pool};
pub use response::UpstreamBody;

/// How often idle connections are swept and hostnames re-resolved.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// Hostname targets are re-resolved this often.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// One configured upstream at run time.
#[derive(Debug)]
pub struct UpstreamSet {
    /// Name from the config.
    pub name: Arc<str>,
    /// Protocol spoken to the targets.
    pub protocol: UpstreamProtocol,
    /// Targets in config order.
    pub targets: Vec<Arc<Target>>,
    /// What consistent hashing hashes, when it is used.
    pub hash_on: Option<HashOn>,
    /// Connection and latency metrics.
    pub metrics: UpstreamMetrics,
    /// Circuit breaking, outlier and health metrics.
    pub policy_metrics: UpstreamPolicyMetrics,
    /// Caps on connections and requests, when configured.
    pub breaker: Option<CircuitBreaker>,
    /// Passive outlier detection, when configured.
    pub outlier: Option<OutlierDetector>,
    /// Active health checks, when configured (run by `health::run`).
    pub health_check: Option<health::CheckSettings>,
    /// TLS to the targets, when configured.
    pub tls: Option<ClientTls>,
    balancer: Balancer,
    // Origin of the `now` passed to the outlier detector.
    origin: Instant,
}

/// One service instance.
#[derive(Debug)]
pub struct Target {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// Load-balancing weight.
    pub weight: u32,
    /// Requests currently forwarded to this target.
    pub in_flight: AtomicUsize,
    /// Taken out of the rotation by an operator (`POST .../drain`): no new
    /// requests, in-flight ones finish.
    pub draining: AtomicBool,
    /// Idle HTTP/1.1 connections.
    pub http1: Http1Pool,
    /// Shared HTTP/2 connection.
    pub http2: Http2Pool<OutboundBody>,
    /// State from active health checks.
    pub health: health::TargetHealth,
    host: String,
    port: u16,
    resolved: ArcSwapOption<SocketAddr>,
    is_hostname: bool,
}

/// A usable connection to a target.
#[derive(Debug)]
pub enum Connection {
    /// HTTP/1.1 through weir's codec: one request at a time.
    Http1(Http1Conn),
    /// HTTP/1.1 through hyper, able to upgrade (a WebSocket handshake);
    /// never pooled.
    Upgradeable(http1::SendRequest<OutboundBody>),
    /// HTTP/2: multiplexed; clones share the connection.
    Http2(http2::SendRequest<OutboundBody>),
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target's hostname did not resolve.
    #[error("target {0} has no resolved address")]
    Unresolved(Arc<str>),
    /// The circuit breaker refused a new connection or a wait for one.
    #[error("the circuit breaker's {} limit is reached", .0.as_str())]
    CircuitOpen(Overflow),
    /// TCP connect did not finish in time.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Address tried.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// TCP connect failed (refused, unreachable, ...).
    #[error("connecting to {addr} failed: {source}")]
    Io {
        /// Address tried.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch,
    /// client certificate refused, ...).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The target address.
        addr: SocketAddr,
        /// What rustls reported.
        source: std::io::Error,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        /// Address tried.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
}

// === impl UpstreamSet ===

impl UpstreamSet {
    /// Builds the run-time view of one configured upstream. Hostnames are
    /// resolved here once; failures leave the target unresolved (it is skipped
    /// until a later re-resolution succeeds).
    pub fn build(
        cfg: &weir_config::Upstream,
        metrics: &Metrics,
        tls: Option<ClientTls>,
    ) -> UpstreamSet {
        let targets: Vec<Arc<Target>> = cfg
            .targets
            .iter()
            .map(|t| Arc::new(Target::new(&t.address, t.weight, &cfg.keepalive)))
            .collect();
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let breaker = cfg.circuit_breaker.map(|cb| {
            CircuitBreaker::new(circuit_breaker::Limits {
                max_connections: cb.max_connections,
                max_pending: cb.max_pending,
                max_requests: cb.max_requests,
            })
        });
        let outlier = cfg.outlier_detection.map(|od| {
            OutlierDetector::new(
                targets.len(),
                OutlierSettings {
                    consecutive_5xx: od.consecutive_5xx,
                    consecutive_connect_failures: od.consecutive_connect_failures,
                    base_ejection: od.base_ejection.get(),
                    max_ejection_percent: od.max_ejection_percent,
                },
            )
        });
        UpstreamSet {
            name: Arc::from(cfg.name.as_str()),
            protocol: cfg.protocol,
            tls,
            balancer: Balancer::new(cfg.load_balancing, &weights),
            hash_on: cfg.hash_on.clone(),
            metrics: metrics.upstream(&cfg.name),
            policy_metrics: metrics.upstream_policy(&cfg.name),
            breaker,
            outlier,
            health_check: cfg.health_check.as_ref().map(health::CheckSettings::from),
            targets,
            origin: Instant::now(),
        }
    }

    /// Picks a target for a request with hash `key`: resolved, passing its
    /// health checks, not ejected, and preferably not in `tried` (a bit per
    /// target index already tried by this request; retries go elsewhere when
    /// another target can take them). Returns the target's index with it.
    /// None when no target can take the request.
    /// `now` is the caller's reading of the clock (one per request is enough).
    pub fn pick(
        &self,
        key: Option<u64>,
        tried: u64,
        now: Instant,
    ) -> Option<(usize, &Arc<Target>)> {
        let targets = &self.targets;
        let now = self
            .outlier
            .as_ref()
            .map(|_| now.saturating_duration_since(self.origin));
        let usable = |i: usize| {
            let t = &targets[i];
            t.addr().is_some()
                && t.health.is_healthy()
                && !t.draining.load(Ordering::Relaxed)
                && match (&self.outlier, now) {
                    (Some(o), Some(now)) => !o.is_ejected(i, now),
                    _ => true,
                }
        };
        let in_flight = |i: usize| targets[i].in_flight.load(Ordering::Relaxed);
        let fresh = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let picked = if tried == 0 {
            self.balancer.pick(key, usable, in_flight)
        } else {
            self.balancer
                .pick(key, |i| usable(i) && fresh(i), in_flight)
                .or_else(|| self.balancer.pick(key, usable, in_flight))
        };
        picked.map(|i| (i, &targets[i]))
    }

    /// Reports the result of one exchange with target `index` to outlier
    /// detection; an ejection is logged and counted.
    pub fn observe(&self, index: usize, observation: Observation, now: Instant) {
        let Some(outlier) = &self.outlier else { return };
        let now = now.saturating_duration_since(self.origin);
        if let Some(ejection) = outlier.record(index, observation, now) {
            let target = self.targets.get(index).map_or("", |t| &t.address);
            tracing::warn!(
                upstream = %self.name,
                target,
                reason = ejection.reason.as_str(),
                seconds = ejection.duration.as_secs_f64(),
                times = ejection.times_ejected,
                "target ejected by outlier detection"
            );
            self.policy_metrics.ejected(ejection.reason.as_str());
        }
    }

    /// Opens a new connection to `target`, counting failures in metrics.
    /// `upgrade`: an HTTP/1.1 connection that can be handed over after a
    /// 101 (hyper's), for a WebSocket handshake.
    pub async fn connect(
        &self,
        target: &Target,
        timeout: Duration,
        upgrade: bool,
    ) -> Result<Connection, ConnectError> {
        // While connecting, the request holds a pending slot; the open
        // connection then holds a connection slot for as long as it lives.
        let (_pending, permit) = match &self.breaker {
            Some(b) => {
                let pending = b.try_pending().map_err(|o| self.overflow(o))?;
                let permit = b.try_connection().map_err(|o| self.overflow(o))?;
                (Some(pending), Some(permit))
            }
            None => (None, None),
        };
        let result = target
            .connect(self.protocol, self.tls.as_ref(), timeout, permit, upgrade)
            .await;
        match &result {
            Ok(_) => self.metrics.connections_opened.inc(),
            Err(_) => self.metrics.connect_errors.inc(),
        };
        result
    }

    /// Marks the target with configured address `address` as draining (or
    /// back in rotation). False when the upstream has no such target.
    pub fn set_draining(&self, address: &str, draining: bool) -> bool {
        match self.targets.iter().find(|t| &*t.address == address) {
            Some(t) => {
                t.draining.store(draining, Ordering::Relaxed);
                tracing::info!(upstream = %self.name, target = address, draining, "target drain changed");
                true
            }
            None => false,
        }
    }

    /// Copies the drain marks of `previous` (the same-named upstream of the
    /// configuration being replaced) onto targets with the same address.
    pub fn inherit_drains(&self, previous: &UpstreamSet) {
        for old in previous
            .targets
            .iter()
            .filter(|t| t.draining.load(Ordering::Relaxed))
        {
            if let Some(t) = self.targets.iter().find(|t| t.address == old.address) {
                t.draining.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Counts a breaker refusal and turns it into an error.
    pub fn overflow(&self, overflow: Overflow) -> ConnectError {
        let m = &self.policy_metrics;
        match overflow {
            Overflow::Connections => m.circuit_open_connections.inc(),
            Overflow::Pending => m.circuit_open_pending.inc(),
            Overflow::Requests => m.circuit_open_requests.inc(),
        };
        ConnectError::CircuitOpen(overflow)
    }

    /// JSON view for the admin API: each target's state and why.
    pub fn describe(&self) -> serde_json::Value {
        let now = self.origin.elapsed();
        let targets: Vec<serde_json::Value> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let outlier = self.outlier.as_ref().map(|o| o.describe(i, now));
                let ejected = outlier.is_some_and(|o| o.ejected);
                let state = if t.draining.load(Ordering::Relaxed) {
                    "draining"
                } else if t.addr().is_none() {
                    "unresolved"
                } else if !t.health.is_healthy() {
                    "unhealthy"
                } else if ejected {
                    "ejected"
                } else {
                    "healthy"
                };
                serde_json::json!({
                    "address": &*t.address,
                    "resolved": t.addr().map(|a| a.to_string()),
                    "weight": t.weight,
                    "state": state,
                    "health": self.health_check.as_ref().map(|_| t.health.describe()),
                    "outlier": outlier.map(|o| serde_json::json!({
                        "ejected": o.ejected,
                        "ejected_for_seconds": o.remaining.as_secs_f64(),
                        "times_ejected": o.times_ejected,
                        "last_reason": o.last_reason.map(|r| r.as_str()),
                    })),
                    "in_flight": t.in_flight.load(Ordering::Relaxed),
                    "idle_connections": t.http1.idle_count(),
                })
            })
            .collect();
        let breaker = self.breaker.as_ref().map(|b| {
            let (connections, pending, requests) = b.counts();
            let limits = b.limits();
            serde_json::json!({
                "connections": connections,
                "pending": pending,
                "requests": requests,
                "max_connections": limits.max_connections,
                "max_pending": limits.max_pending,
                "max_requests": limits.max_requests,
            })
        });
        serde_json::json!({
            "name": &*self.name,
            "protocol": self.protocol.as_str(),
            "circuit_breaker": breaker,
            "targets": targets,
        })
    }

    fn maintain(&self) {
        for t in &self.targets {
            t.http1.evict_expired();
            t.http2.evict_closed();
        }
    }
}

// === impl Target ===

impl Target {
    fn new(address: &str, weight: u32, keepalive: &weir_config::Keepalive) -> Target {
        let (host, port) =
            weir_config::parse_target_address(address).unwrap_or_else(|_| (address.to_owned(), 0));
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        let target = Target {
            address: Arc::from(address),
            weight,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            http1: Http1Pool::new(keepalive.max_idle, keepalive.idle_timeout.get()),
            http2: Http2Pool::default(),
            health: health::TargetHealth::default(),
            is_hostname: literal.is_none(),
            resolved: ArcSwapOption::from(literal.map(Arc::new)),
            host,
            port,
        };
        if target.is_hostname {
            target.resolve_blocking();
        }
        target
    }

    /// The address connections go to, if resolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.resolved.load().as_deref().copied()
    }

    fn resolve_blocking(&self) {
        match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(mut addrs) => {
                if let Some(a) = addrs.next() {
                    self.resolved.store(Some(Arc::new(a)));
                }
            }
            Err(e) => tracing::warn!(target = %self.address, error = %e, "cannot resolve target"),
        }
    }

    /// The host part of the configured address (a name or an IP address).
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn resolve(&self) {
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(mut addrs) => {
                if let Some(a) = addrs.next() {
                    if self.addr() != Some(a) {
                        tracing::info!(target = %self.address, addr = %a, "target re-resolved");
                        self.resolved.store(Some(Arc::new(a)));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target = %self.address, error = %e, "cannot re-resolve target")
            }
        }
    }

    async fn connect(
        &self,
        protocol: UpstreamProtocol,
        tls: Option<&ClientTls>,
        timeout: Duration,
        permit: Option<ConnectionPermit>,
        upgrade: bool,
    ) -> Result<Connection, ConnectError> {
        let addr = self
            .addr()
            .ok_or_else(|| ConnectError::Unresolved(self.address.clone()))?;
        let started = tokio::time::Instant::now();
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Ok(Ok(s)) => s,
        };
        // Small requests must not wait for Nagle's delayed-ACK dance.
        let _ = stream.set_nodelay(true);
        // weir's own codec serves plain HTTP/1.1 exchanges; hyper the rest.
        let own = !protocol.is_http2() && !upgrade;
        let Some(tls) = tls else {
            if own {
                return Ok(Connection::Http1(Http1Conn::new(
                    h1::Stream::Tcp(stream),
                    permit,
                )));
            }
            return handshake(TokioIo::new(stream), protocol, addr, permit).await;
        };
        // The connect timeout covers the TLS handshake too.
        let left = timeout.saturating_sub(started.elapsed());
        let stream = match tokio::time::timeout(left, tls.connect(&self.host, stream)).await {
            Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
            Ok(Err(source)) => return Err(ConnectError::Tls { addr, source }),
            Ok(Ok(s)) => s,
        };
        if own {
            let stream = h1::Stream::Tls(Box::new(stream));
            return Ok(Connection::Http1(Http1Conn::new(stream, permit)));
        }
        handshake(TokioIo::new(stream), protocol, addr, permit).await
    }
}

/// The HTTP handshake on an open connection (cleartext or TLS); the
/// connection's task holds `permit` for as long as it lives.
async fn handshake<I>(
    io: I,
    protocol: UpstreamProtocol,
    addr: SocketAddr,
    permit: Option<ConnectionPermit>,
) -> Result<Connection, ConnectError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if protocol.is_http2() {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        return Ok(Connection::Http2(sender));
    }
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _permit = permit;
        // With upgrades, a 101 hands the connection to whoever holds the
        // response (a WebSocket tunnel) and this task ends; the connection
        // is never pooled again.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(Connection::Upgradeable(sender))
}

/// Starts the background work of freshly built upstreams: connection
/// maintenance and active health checks. Each task ends by itself once its
/// upstream is dropped.
pub fn start_background(sets: &[Arc<UpstreamSet>]) {
    tokio::spawn(maintain(sets.iter().map(Arc::downgrade).collect()));
    for set in sets {
        if let Some(settings) = &set.health_check {
            tokio::spawn(health::run(Arc::downgrade(set), settings.clone()));
        }
    }
}

/// Runs until every upstream in `sets` is gone: sweeps expired idle
/// connections and re-resolves hostname targets.
pub async fn maintain(sets: Vec<Weak<UpstreamSet>>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_resolve = Duration::ZERO;
    loop {
        tick.tick().await;
        since_resolve += MAINTENANCE_INTERVAL;
        let live: Vec<Arc<UpstreamSet>> = sets.iter().filter_map(Weak::upgrade).collect();
        if live.is_empty() {
            return;
        }
        for set in &live {
            set.maintain();
        }
        if since_resolve >= RESOLVE_INTERVAL {
            since_resolve = Duration::ZERO;
            for set in &live {
                for t in set.targets.iter().filter(|t| t.is_hostname) {
                    t.resolve().await;
                }
            }
        }
    }
}
