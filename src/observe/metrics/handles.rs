//! The handles the request path records through: per-route, per-upstream
//! and per-connection metrics resolved once when a snapshot is built, so a
//! request touches atomics and never a label lookup. The families they
//! point into are declared in `metrics.rs`.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{RequestLabels, RouteGrpcLabel, TargetLabel, UpstreamReasonLabel};
use crate::observe::histogram::LatencyHistogram;

/// Decrements the active-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(pub(super) Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(super) const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];
pub(super) const METHOD_SLOTS: usize = METHODS.len() + 1;
pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Per-route request counters and latency histogram.
#[derive(Debug)]
pub struct RouteMetrics {
    pub(super) family: Family<RequestLabels, Counter>,
    pub(super) route: String,
    pub(super) upstream: String,
    // Series are created on first use (so /metrics shows no zero rows for
    // methods never seen) and then cached: after that a request costs one
    // atomic load and one atomic add.
    pub(super) slots: [OnceLock<Counter>; METHOD_SLOTS * CLASSES.len()],
    pub(super) grpc_family: Family<RouteGrpcLabel, Counter>,
    // One per gRPC status (0-16) and one for any other value; created on
    // first use like `slots`. Only gRPC calls touch them.
    pub(super) grpc_slots: [OnceLock<Counter>; GRPC_SLOTS],
    pub(super) duration: LatencyHistogram,
}

/// gRPC statuses 0-16, plus one slot for values outside the specification.
pub(super) const GRPC_SLOTS: usize = 18;

impl RouteMetrics {
    /// Records one finished request; `exemplar` (trace id, span id) when
    /// its trace is sampled.
    pub fn record(
        &self,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
        exemplar: Option<([u8; 16], [u8; 8])>,
    ) {
        let m = METHODS
            .iter()
            .position(|x| x == method)
            .unwrap_or(METHODS.len());
        let c = usize::from((status.as_u16() / 100).clamp(1, 5) - 1);
        let counter = self.slots[m * CLASSES.len() + c].get_or_init(|| {
            let method = METHODS.get(m).map_or("OTHER", |x| x.as_str());
            self.family
                .get_or_create(&RequestLabels {
                    route: self.route.clone(),
                    upstream: self.upstream.clone(),
                    method: method.to_owned(),
                    status_class: CLASSES[c].to_owned(),
                })
                .clone()
        });
        counter.inc();
        match exemplar {
            Some((trace, span)) => self.duration.observe_traced(elapsed, trace, span),
            None => self.duration.observe(elapsed),
        }
    }
}

impl RouteMetrics {
    /// Counts a gRPC call that ended with `status`.
    pub fn record_grpc(&self, status: u16) {
        let slot = usize::from(status).min(GRPC_SLOTS - 1);
        self.grpc_slots[slot]
            .get_or_init(|| {
                self.grpc_family
                    .get_or_create(&RouteGrpcLabel {
                        route: self.route.clone(),
                        grpc_status: if slot == GRPC_SLOTS - 1 {
                            "other".to_owned()
                        } else {
                            slot.to_string()
                        },
                    })
                    .clone()
            })
            .inc();
    }
}

/// Per-upstream handles.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Time to response headers.
    pub response_duration: LatencyHistogram,
    /// Failed connection attempts.
    pub connect_errors: Counter,
    /// Connections opened.
    pub connections_opened: Counter,
}

/// Governance counters of one route, resolved when the snapshot is built.
#[derive(Clone, Debug)]
pub struct RoutePolicyMetrics {
    /// Retries sent.
    pub retries: Counter,
    /// Retries refused by the budget.
    pub retry_budget_exhausted: Counter,
    /// Requests rejected with 429.
    pub rate_limited: Counter,
    /// Backend errors let through (`on_backend_error: allow`).
    pub backend_errors_allowed: Counter,
    /// Backend errors rejected (`on_backend_error: deny`).
    pub backend_errors_denied: Counter,
    /// Injected delays.
    pub fault_delays: Counter,
    /// Injected aborts.
    pub fault_aborts: Counter,
    /// Shadow requests sent.
    pub mirror_sent: Counter,
    /// Shadow requests dropped (in-flight cap, body too large).
    pub mirror_dropped: Counter,
    /// Shadow requests that failed (connect, reset, timeout).
    pub mirror_failed: Counter,
}

/// WebSocket handles of one route, resolved when the snapshot is built.
#[derive(Clone, Debug)]
pub struct WebSocketMetrics {
    /// WebSockets open now.
    pub active: Gauge,
    /// Upgrades relayed (101 from the upstream, tunnel opened).
    pub upgraded: Counter,
    /// Upgrades the upstream answered with something other than 101.
    pub refused: Counter,
    /// Upgrades refused because the route has `websocket: false`.
    pub not_allowed: Counter,
    /// Upgrades weir answered with an error of its own (rate limit, no
    /// target, connect failure, timeout...).
    pub error: Counter,
}

/// Governance counters of one upstream.
#[derive(Clone, Debug)]
pub struct UpstreamPolicyMetrics {
    pub(super) upstream: String,
    /// Fast failures at `max_connections`.
    pub circuit_open_connections: Counter,
    /// Fast failures at `max_pending`.
    pub circuit_open_pending: Counter,
    /// Fast failures at `max_requests`.
    pub circuit_open_requests: Counter,
    /// Health checks passed.
    pub checks_passed: Counter,
    /// Health checks failed.
    pub checks_failed: Counter,
    pub(super) ejections: Family<UpstreamReasonLabel, Counter>,
    pub(super) target_healthy: Family<TargetLabel, Gauge>,
}

impl UpstreamPolicyMetrics {
    /// Counts an ejection (rare: looked up by label).
    pub fn ejected(&self, reason: &str) {
        self.ejections
            .get_or_create(&UpstreamReasonLabel {
                upstream: self.upstream.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Publishes a target's health (on transitions only).
    pub fn set_target_healthy(&self, target: &str, healthy: bool) {
        self.target_healthy
            .get_or_create(&TargetLabel {
                upstream: self.upstream.clone(),
                target: target.to_owned(),
            })
            .set(i64::from(healthy));
    }
}
