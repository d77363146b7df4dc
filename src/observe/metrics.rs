//! Every metric weir exports is declared here, with its name, help text and
//! labels. Request-path code never looks a metric up by label: the snapshot
//! resolves per-route and per-upstream handles once, at build time, so that a
//! request only touches atomics.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::LatencyHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    upstream: String,
    method: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The process-wide metric registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, LatencyHistogram>,
    upstream_duration: Family<UpstreamLabel, LatencyHistogram>,
    upstream_connect_errors: Family<UpstreamLabel, Counter>,
    upstream_connections: Family<UpstreamLabel, Counter>,
    downstream_active: Gauge,
    downstream_total: Counter,
    access_log_dropped: Counter,
    rejected: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry with every family registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "weir_requests",
            "Requests answered, by route, upstream, method and status class",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabel, LatencyHistogram>::default();
        registry.register(
            "weir_request_duration_seconds",
            "Time from the request's arrival to the last byte of the response, by route",
            request_duration.clone(),
        );
        let upstream_duration = Family::<UpstreamLabel, LatencyHistogram>::default();
        registry.register(
            "weir_upstream_response_duration_seconds",
            "Time from sending a request upstream to receiving the response headers, by upstream",
            upstream_duration.clone(),
        );
        let upstream_connect_errors = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "weir_upstream_connect_errors",
            "Failed attempts to open a connection to a target, by upstream",
            upstream_connect_errors.clone(),
        );
        let upstream_connections = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "weir_upstream_connections_opened",
            "Connections opened to targets, by upstream",
            upstream_connections.clone(),
        );
        let downstream_active = Gauge::default();
        registry.register(
            "weir_downstream_connections_active",
            "Client connections currently open",
            downstream_active.clone(),
        );
        let downstream_total = Counter::default();
        registry.register(
            "weir_downstream_connections",
            "Client connections accepted",
            downstream_total.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "weir_access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            access_log_dropped.clone(),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "weir_downstream_rejected",
            "Requests rejected before routing, by reason (bad_request, ...)",
            rejected.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("weir_build_info", "Build information; always 1", build_info);
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_connect_errors,
            upstream_connections,
            downstream_active,
            downstream_total,
            access_log_dropped,
            rejected,
        }
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one route forwarding to `upstream` (empty for direct
    /// responses and unrouted requests).
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            family: self.requests.clone(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            slots: std::array::from_fn(|_| OnceLock::new()),
            duration: self
                .request_duration
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                })
                .clone(),
        }
    }

    /// Handles for one upstream.
    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let label = UpstreamLabel {
            upstream: upstream.to_owned(),
        };
        UpstreamMetrics {
            response_duration: self.upstream_duration.get_or_create(&label).clone(),
            connect_errors: self.upstream_connect_errors.get_or_create(&label).clone(),
            connections_opened: self.upstream_connections.get_or_create(&label).clone(),
        }
    }

    /// A client connection was accepted; the guard counts it until dropped.
    pub fn downstream_connection(&self) -> ConnectionGuard {
        self.downstream_total.inc();
        self.downstream_active.inc();
        ConnectionGuard(self.downstream_active.clone())
    }

    /// Connections currently open.
    pub fn downstream_active(&self) -> i64 {
        self.downstream_active.get()
    }

    /// Counts an access log line that was dropped.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// Counts a request rejected before routing.
    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Decrements the active-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const METHODS: [Method; 9] = [
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
const METHOD_SLOTS: usize = METHODS.len() + 1;
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Per-route request counters and latency histogram.
#[derive(Debug)]
pub struct RouteMetrics {
    family: Family<RequestLabels, Counter>,
    route: String,
    upstream: String,
    // Series are created on first use (so /metrics shows no zero rows for
    // methods never seen) and then cached: after that a request costs one
    // atomic load and one atomic add.
    slots: [OnceLock<Counter>; METHOD_SLOTS * CLASSES.len()],
    duration: LatencyHistogram,
}

impl RouteMetrics {
    /// Records one finished request.
    pub fn record(&self, method: &Method, status: StatusCode, elapsed: Duration) {
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
        self.duration.observe(elapsed);
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

/// Shared handle to the registry.
pub type SharedMetrics = Arc<Metrics>;
