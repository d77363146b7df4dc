//! The `tracing:` block: distributed tracing with OpenTelemetry, exported over
//! OTLP/HTTP (protobuf) to a collector.
//!
//! This file owns the shape, defaults and checks of that block, and the one
//! parser of `otlp_endpoint` that both validation and the gateway use, so the
//! two never disagree. It must not know how spans are built or sent (that is
//! the gateway's `observe::tracing`).
//!
//! ```yaml
//! tracing:
//!   otlp_endpoint: http://127.0.0.1:4318
//!   sample_ratio: 0.01
//!   service_name: weir
//! ```

use serde::{Deserialize, Serialize};

use crate::policy::Number;
use crate::units::Duration;
use crate::validate::parse_target_address;

/// The largest accepted `queue_size`: a guard against a typo that would let
/// spans pile up in memory while the collector is away.
const MAX_QUEUE_SIZE: usize = 1 << 20;

/// Distributed tracing: one server span per request, sent in batches to an
/// OpenTelemetry collector over OTLP/HTTP with protobuf bodies
/// (`POST {otlp_endpoint}/v1/traces`).
///
/// Sampling is parent-based: a request whose W3C `traceparent` says
/// "sampled" is traced, one that says "not sampled" is not, and one without a
/// (valid) `traceparent` starts a new trace that is kept with probability
/// `sample_ratio`, decided from the trace id as OpenTelemetry's
/// `TraceIdRatioBased` sampler does (so every service using the same ratio
/// makes the same choice for a trace).
///
/// Export never slows requests: finished spans wait in a bounded queue of
/// `queue_size`; when the queue is full, or the collector fails, spans are
/// dropped and counted (`weir_tracing_spans_dropped_total`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Base URL of the collector's OTLP/HTTP receiver,
    /// `http://host:port[/path]`; spans are posted to `{otlp_endpoint}/v1/traces`.
    /// Plain HTTP only (no `https` yet). Default `http://127.0.0.1:4318`, the
    /// standard port of a collector on the same host.
    #[serde(default = "default_otlp_endpoint")]
    pub otlp_endpoint: String,
    /// Share of new traces (requests arriving without a `traceparent`) that
    /// are recorded, from `0` (none) to `1` (all). Requests that continue a
    /// trace follow their parent's decision instead. Default `1`.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Number,
    /// The `service.name` resource attribute of every span. Default `weir`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Most spans sent in one export request. Default 512. At most `queue_size`.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most finished spans waiting for export; more are dropped and counted.
    /// Default 2048.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Longest time a finished span waits before a partial batch is sent.
    /// Default `5s`.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// Time one export request (connect and response) may take; a slower
    /// export is abandoned and its spans dropped. Also bounds the final flush
    /// at shutdown. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

/// Where spans are posted, as parsed from `otlp_endpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Request path of trace exports: the endpoint's path followed by
    /// `/v1/traces`.
    pub traces_path: String,
    /// The `Host` header value: the endpoint's authority as written.
    pub authority: String,
}

// === impl Tracing ===

// Written out rather than derived: the defaults are not the types' zeros.
impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            otlp_endpoint: default_otlp_endpoint(),
            sample_ratio: default_sample_ratio(),
            service_name: default_service_name(),
            batch_size: default_batch_size(),
            queue_size: default_queue_size(),
            flush_interval: default_flush_interval(),
            timeout: default_timeout(),
        }
    }
}

impl Tracing {
    /// Parses `otlp_endpoint`; the error says what is wrong with it.
    pub fn endpoint(&self) -> Result<OtlpEndpoint, String> {
        parse_endpoint(&self.otlp_endpoint)
    }
}

fn default_otlp_endpoint() -> String {
    "http://127.0.0.1:4318".into()
}
fn default_sample_ratio() -> Number {
    Number(1.0)
}
fn default_service_name() -> String {
    "weir".into()
}
fn default_batch_size() -> usize {
    512
}
fn default_queue_size() -> usize {
    2048
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn parse_endpoint(url: &str) -> Result<OtlpEndpoint, String> {
    const SHAPE: &str = "expected http://host:port[/path], e.g. http://127.0.0.1:4318";
    if url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Err(format!(
            "https is not supported yet (got {url:?}); use a plain http:// endpoint"
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("must start with http:// (got {url:?}); {SHAPE}"))?;
    if let Some(c) = rest
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '@'))
    {
        return Err(format!("{c:?} is not allowed (got {url:?}); {SHAPE}"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) =
        parse_target_address(authority).map_err(|e| format!("{e} (in {url:?}); {SHAPE}"))?;
    Ok(OtlpEndpoint {
        host,
        port,
        traces_path: format!("{}/v1/traces", path.trim_end_matches('/')),
        authority: authority.to_owned(),
    })
}

/// Checks a `tracing:` block; returns (YAML path, message) for each problem.
pub(crate) fn validate_tracing(t: &Tracing) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut error = |field: &str, message: String| {
        errors.push((format!("tracing.{field}"), message));
    };
    if let Err(msg) = t.endpoint() {
        error("otlp_endpoint", msg);
    }
    let ratio = t.sample_ratio.get();
    if !(0.0..=1.0).contains(&ratio) {
        error(
            "sample_ratio",
            format!("must be between 0 and 1 (got {ratio}); e.g. 0.01 records 1% of new traces"),
        );
    }
    if t.service_name.trim().is_empty() {
        error("service_name", "must not be empty".into());
    }
    if t.batch_size == 0 {
        error("batch_size", "must be at least 1".into());
    } else if t.batch_size > t.queue_size && t.queue_size > 0 {
        error(
            "batch_size",
            format!(
                "must not exceed queue_size ({}) (got {})",
                t.queue_size, t.batch_size
            ),
        );
    }
    if !(1..=MAX_QUEUE_SIZE).contains(&t.queue_size) {
        error(
            "queue_size",
            format!(
                "must be between 1 and {MAX_QUEUE_SIZE} (got {})",
                t.queue_size
            ),
        );
    }
    if t.flush_interval.is_zero() {
        error("flush_interval", "must be greater than 0".into());
    }
    if t.timeout.is_zero() {
        error("timeout", "must be greater than 0".into());
    }
    errors
}
