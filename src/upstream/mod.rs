//! Upstreams at run time: the targets of each configured upstream, their
//! resolved addresses, load balancing, connection pools and opening new
//! connections. This module knows nothing about routes or the proxy pipeline;
//! it hands out connections and records connection-level metrics.

pub mod balancer;
pub mod body;
pub mod pool;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weir_config::{HashOn, UpstreamProtocol};

use crate::observe::metrics::{Metrics, UpstreamMetrics};
pub use balancer::{hash_key, Balancer};
pub use body::OutboundBody;
use pool::{Http1Pool, Http2Pool};

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
    balancer: Balancer,
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
    /// Idle HTTP/1.1 connections.
    pub http1: Http1Pool<OutboundBody>,
    /// Shared HTTP/2 connection.
    pub http2: Http2Pool<OutboundBody>,
    host: String,
    port: u16,
    resolved: ArcSwapOption<SocketAddr>,
    is_hostname: bool,
}

/// A usable connection to a target.
#[derive(Debug)]
pub enum Connection {
    /// HTTP/1.1: one request at a time.
    Http1(http1::SendRequest<OutboundBody>),
    /// HTTP/2: multiplexed; clones share the connection.
    Http2(http2::SendRequest<OutboundBody>),
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target's hostname did not resolve.
    #[error("target {0} has no resolved address")]
    Unresolved(Arc<str>),
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
    pub fn build(cfg: &weir_config::Upstream, metrics: &Metrics) -> UpstreamSet {
        let targets: Vec<Arc<Target>> = cfg
            .targets
            .iter()
            .map(|t| Arc::new(Target::new(&t.address, t.weight, &cfg.keepalive)))
            .collect();
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        UpstreamSet {
            name: Arc::from(cfg.name.as_str()),
            protocol: cfg.protocol,
            balancer: Balancer::new(cfg.load_balancing, &weights),
            hash_on: cfg.hash_on.clone(),
            metrics: metrics.upstream(&cfg.name),
            targets,
        }
    }

    /// Picks a target for a request with hash `key`, skipping unresolved
    /// targets. None when no target can take the request.
    pub fn pick(&self, key: Option<u64>) -> Option<&Arc<Target>> {
        let targets = &self.targets;
        self.balancer
            .pick(
                key,
                |i| targets[i].addr().is_some(),
                |i| targets[i].in_flight.load(Ordering::Relaxed),
            )
            .map(|i| &targets[i])
    }

    /// Opens a new connection to `target`, counting failures in metrics.
    pub async fn connect(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let result = target.connect(self.protocol, timeout).await;
        match &result {
            Ok(_) => self.metrics.connections_opened.inc(),
            Err(_) => self.metrics.connect_errors.inc(),
        };
        result
    }

    /// JSON view for the admin API.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "name": &*self.name,
            "protocol": self.protocol.as_str(),
            "targets": self.targets.iter().map(|t| serde_json::json!({
                "address": &*t.address,
                "resolved": t.addr().map(|a| a.to_string()),
                "weight": t.weight,
                "in_flight": t.in_flight.load(Ordering::Relaxed),
                "idle_connections": t.http1.idle_count(),
            })).collect::<Vec<_>>(),
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
            http1: Http1Pool::new(keepalive.max_idle, keepalive.idle_timeout.get()),
            http2: Http2Pool::default(),
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
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let addr = self
            .addr()
            .ok_or_else(|| ConnectError::Unresolved(self.address.clone()))?;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Ok(Ok(s)) => s,
        };
        // Small requests must not wait for Nagle's delayed-ACK dance.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        match protocol {
            UpstreamProtocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .writev(false)
                    .handshake(io)
                    .await
                    .map_err(|source| ConnectError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "upstream connection ended");
                    }
                });
                Ok(Connection::Http1(sender))
            }
            UpstreamProtocol::H2c => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(|source| ConnectError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
                    }
                });
                Ok(Connection::Http2(sender))
            }
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
