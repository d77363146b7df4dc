//! Every metric weir exports is declared here, with its name, help text and
//! labels. Request-path code never looks a metric up by label: the snapshot
//! resolves per-route and per-upstream handles once, at build time, so that a
//! request only touches atomics.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::{self, LatencyHistogram};

mod handles;

pub use handles::{
    ConnectionGuard, RouteMetrics, RoutePolicyMetrics, UpstreamMetrics, UpstreamPolicyMetrics,
    WebSocketMetrics,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    upstream: String,
    method: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteGrpcLabel {
    route: String,
    grpc_status: String,
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
struct RouteDecisionLabel {
    route: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKindLabel {
    route: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResultLabel {
    route: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLimitLabel {
    upstream: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReasonLabel {
    upstream: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResultLabel {
    upstream: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    upstream: String,
    target: String,
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
    policy: PolicyFamilies,
    reloads: Family<ResultLabel, Counter>,
    config_info: Family<HashLabel, Gauge>,
    tls_expiry: Family<CertificateLabel, Gauge>,
    tls_reloads: Family<ListenerResultLabel, Counter>,
    tls_handshake_errors: Family<ListenerLabel, Counter>,
    spans_dropped: Counter,
    websocket_active: Family<RouteLabel, Gauge>,
    websocket_upgrades: Family<RouteResultLabel, Counter>,
    grpc_responses: Family<RouteGrpcLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabel {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabel {
    listener: String,
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerResultLabel {
    listener: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// The governance families; see `RoutePolicyMetrics` and
/// `UpstreamPolicyMetrics` for the per-route and per-upstream handles.
#[derive(Debug, Default)]
struct PolicyFamilies {
    retries: Family<RouteLabel, Counter>,
    retry_budget_exhausted: Family<RouteLabel, Counter>,
    rate_limited: Family<RouteLabel, Counter>,
    rate_limit_backend_errors: Family<RouteDecisionLabel, Counter>,
    faults: Family<RouteKindLabel, Counter>,
    mirror: Family<RouteResultLabel, Counter>,
    circuit_open: Family<UpstreamLimitLabel, Counter>,
    ejections: Family<UpstreamReasonLabel, Counter>,
    health_checks: Family<UpstreamResultLabel, Counter>,
    target_healthy: Family<TargetLabel, Gauge>,
}

impl PolicyFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "weir_retries",
            "Retries sent (tries after the first), by route",
            self.retries.clone(),
        );
        registry.register(
            "weir_retry_budget_exhausted",
            "Retries not sent because the route's retry budget was spent, by route",
            self.retry_budget_exhausted.clone(),
        );
        registry.register(
            "weir_rate_limited",
            "Requests rejected with 429 by a rate limit, by route",
            self.rate_limited.clone(),
        );
        registry.register(
            "weir_rate_limit_backend_errors",
            "Rate-limit decisions the backend (Redis) could not make, by route and the on_backend_error decision taken",
            self.rate_limit_backend_errors.clone(),
        );
        registry.register(
            "weir_faults_injected",
            "Faults injected, by route and kind (delay, abort)",
            self.faults.clone(),
        );
        registry.register(
            "weir_mirror_requests",
            "Shadow requests, by route and result (sent, dropped, failed)",
            self.mirror.clone(),
        );
        registry.register(
            "weir_circuit_open",
            "Requests failed fast by a circuit breaker, by upstream and the limit reached",
            self.circuit_open.clone(),
        );
        registry.register(
            "weir_outlier_ejections",
            "Targets ejected by outlier detection, by upstream and reason",
            self.ejections.clone(),
        );
        registry.register(
            "weir_health_checks",
            "Active health checks run, by upstream and result (pass, fail)",
            self.health_checks.clone(),
        );
        registry.register(
            "weir_upstream_target_healthy",
            "1 when a target passes its active health checks, 0 when not, by upstream and target",
            self.target_healthy.clone(),
        );
    }
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
        let policy = PolicyFamilies::default();
        policy.register(&mut registry);
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "weir_config_reloads",
            "Configuration reloads, by result (success, failure)",
            reloads.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "weir_tracing_spans_dropped",
            "Spans not exported: the export queue was full, or the collector failed or refused them",
            spans_dropped.clone(),
        );
        let config_info = Family::<HashLabel, Gauge>::default();
        registry.register(
            "weir_config_info",
            "The running configuration: 1 for the hash of its file",
            config_info.clone(),
        );
        let tls_expiry = Family::<CertificateLabel, Gauge>::default();
        registry.register(
            "weir_tls_certificate_expiry_timestamp_seconds",
            "When each listener certificate expires (its notAfter), in seconds since the epoch, by listener and certificate file",
            tls_expiry.clone(),
        );
        let tls_reloads = Family::<ListenerResultLabel, Counter>::default();
        registry.register(
            "weir_tls_reloads",
            "Reloads of a listener's certificates, keys and client CA, by listener and result",
            tls_reloads.clone(),
        );
        let tls_handshake_errors = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "weir_tls_handshake_errors",
            "TLS handshakes that failed or timed out (including rejected client certificates), by listener",
            tls_handshake_errors.clone(),
        );
        let websocket_active = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "weir_websocket_connections_active",
            "WebSocket connections currently open through weir, by route",
            websocket_active.clone(),
        );
        let websocket_upgrades = Family::<RouteResultLabel, Counter>::default();
        registry.register(
            "weir_websocket_upgrades",
            "WebSocket upgrade requests, by route and result (upgraded; refused: the upstream answered other than 101; not_allowed: the route has websocket: false; error: weir answered with an error of its own)",
            websocket_upgrades.clone(),
        );
        let grpc_responses = Family::<RouteGrpcLabel, Counter>::default();
        registry.register(
            "weir_grpc_responses",
            "gRPC and gRPC-Web calls by route and the gRPC status they ended with (from the trailers, a trailers-only answer, or weir's own error)",
            grpc_responses.clone(),
        );
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
            policy,
            reloads,
            config_info,
            tls_expiry,
            tls_reloads,
            tls_handshake_errors,
            spans_dropped,
            websocket_active,
            websocket_upgrades,
            grpc_responses,
        }
    }

    /// WebSocket handles for one route.
    pub fn route_websocket(&self, route: &str) -> WebSocketMetrics {
        let result = |r: &str| {
            self.websocket_upgrades
                .get_or_create(&RouteResultLabel {
                    route: route.to_owned(),
                    result: r.to_owned(),
                })
                .clone()
        };
        WebSocketMetrics {
            active: self
                .websocket_active
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                })
                .clone(),
            upgraded: result("upgraded"),
            refused: result("refused"),
            not_allowed: result("not_allowed"),
            error: result("error"),
        }
    }

    /// Records when `certificate` of `listener` expires.
    pub fn tls_certificate_expiry(&self, listener: &str, certificate: &str, unix_seconds: i64) {
        self.tls_expiry
            .get_or_create(&CertificateLabel {
                listener: listener.to_owned(),
                certificate: certificate.to_owned(),
            })
            .set(unix_seconds);
    }

    /// Counts one reload of a listener's TLS files.
    pub fn tls_reloaded(&self, listener: &str, success: bool) {
        self.tls_reloads
            .get_or_create(&ListenerResultLabel {
                listener: listener.to_owned(),
                result: if success { "success" } else { "failure" }.to_owned(),
            })
            .inc();
    }

    /// Counts one failed handshake on `listener`.
    pub fn tls_handshake_failed(&self, listener: &str) {
        self.tls_handshake_errors
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .inc();
    }

    /// Counts spans the tracer could not export.
    pub fn tracing_spans_dropped(&self) -> Counter {
        self.spans_dropped.clone()
    }

    /// Counts a reload that applied changes (`true`) or was refused.
    pub fn config_reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Publishes the running configuration's hash, replacing `old`.
    pub fn set_config_hash(&self, old: &str, new: &str) {
        if !old.is_empty() {
            self.config_info.remove(&HashLabel {
                hash: old.to_owned(),
            });
        }
        if !new.is_empty() {
            self.config_info
                .get_or_create(&HashLabel {
                    hash: new.to_owned(),
                })
                .set(1);
        }
    }

    /// Governance handles for one route.
    pub fn route_policy(&self, route: &str) -> RoutePolicyMetrics {
        let p = &self.policy;
        let label = RouteLabel {
            route: route.to_owned(),
        };
        let decision = |d: &str| {
            p.rate_limit_backend_errors
                .get_or_create(&RouteDecisionLabel {
                    route: route.to_owned(),
                    decision: d.to_owned(),
                })
                .clone()
        };
        let kind = |k: &str| {
            p.faults
                .get_or_create(&RouteKindLabel {
                    route: route.to_owned(),
                    kind: k.to_owned(),
                })
                .clone()
        };
        let result = |r: &str| {
            p.mirror
                .get_or_create(&RouteResultLabel {
                    route: route.to_owned(),
                    result: r.to_owned(),
                })
                .clone()
        };
        RoutePolicyMetrics {
            retries: p.retries.get_or_create(&label).clone(),
            retry_budget_exhausted: p.retry_budget_exhausted.get_or_create(&label).clone(),
            rate_limited: p.rate_limited.get_or_create(&label).clone(),
            backend_errors_allowed: decision("allow"),
            backend_errors_denied: decision("deny"),
            fault_delays: kind("delay"),
            fault_aborts: kind("abort"),
            mirror_sent: result("sent"),
            mirror_dropped: result("dropped"),
            mirror_failed: result("failed"),
        }
    }

    /// Governance handles for one upstream.
    pub fn upstream_policy(&self, upstream: &str) -> UpstreamPolicyMetrics {
        let p = &self.policy;
        let limit = |l: &str| {
            p.circuit_open
                .get_or_create(&UpstreamLimitLabel {
                    upstream: upstream.to_owned(),
                    limit: l.to_owned(),
                })
                .clone()
        };
        let result = |r: &str| {
            p.health_checks
                .get_or_create(&UpstreamResultLabel {
                    upstream: upstream.to_owned(),
                    result: r.to_owned(),
                })
                .clone()
        };
        UpstreamPolicyMetrics {
            upstream: upstream.to_owned(),
            circuit_open_connections: limit("max_connections"),
            circuit_open_pending: limit("max_pending"),
            circuit_open_requests: limit("max_requests"),
            checks_passed: result("pass"),
            checks_failed: result("fail"),
            ejections: p.ejections.clone(),
            target_healthy: p.target_healthy.clone(),
        }
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        let out = histogram::annotate(&out, "weir_request_duration_seconds", |labels| {
            let route = label_value(labels, "route")?;
            let h = self.request_duration.get(&RouteLabel { route })?;
            Some(h.clone())
        });
        histogram::annotate(&out, "weir_upstream_response_duration_seconds", |labels| {
            let upstream = label_value(labels, "upstream")?;
            let h = self.upstream_duration.get(&UpstreamLabel { upstream })?;
            Some(h.clone())
        })
    }

    /// Handles for one route forwarding to `upstream` (empty for direct
    /// responses and unrouted requests).
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            family: self.requests.clone(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            slots: std::array::from_fn(|_| OnceLock::new()),
            grpc_family: self.grpc_responses.clone(),
            grpc_slots: std::array::from_fn(|_| OnceLock::new()),
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

/// Shared handle to the registry.
pub type SharedMetrics = Arc<Metrics>;

/// The unescaped value of label `name` in OpenMetrics label text
/// (`a="1",b="x\"y"`).
fn label_value(labels: &str, name: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        if key.trim_start_matches(',') == name {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::label_value;

    #[test]
    fn label_values_are_found_and_unescaped() {
        let labels = r#"le="0.5",route="a\"b\\c",upstream="up""#;
        assert_eq!(label_value(labels, "route").as_deref(), Some(r#"a"b\c"#));
        assert_eq!(label_value(labels, "upstream").as_deref(), Some("up"));
        assert_eq!(label_value(labels, "le").as_deref(), Some("0.5"));
        assert_eq!(label_value(labels, "missing"), None);
    }
}
