//! Distributed tracing with OpenTelemetry: the W3C trace context of a request
//! (continued from `traceparent`/`tracestate` or started here), parent-based
//! head sampling, one server span per request, and its batched export over
//! OTLP/HTTP (`export.rs`).
//!
//! It owns span identity, sampling and delivery to the collector. It must not
//! decide anything about the request (routing, retries, status) nor touch
//! `proxy/`: the pipeline hands it a [`TraceContext`] at the start and a
//! [`FinishedSpan`] at the end. Recording never blocks and never fails the
//! request: when the queue is full or the collector is away, spans are
//! dropped and counted.

mod export;
mod otlp;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use export::{Export, Message};

/// The W3C `traceparent` request header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` request header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` bit of W3C trace flags.
const FLAG_SAMPLED: u8 = 0x01;
/// Flags kept from a parent: `sampled` and W3C level 2's `random` (which says
/// something about the trace id, which weir keeps). Other bits have no
/// meaning yet and are not passed on.
const FORWARDED_FLAGS: u8 = 0x03;
/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Why a [`Tracer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// `otlp_endpoint` cannot be used (validation normally catches this).
    #[error("tracing.otlp_endpoint: {0}")]
    Endpoint(String),
    /// The exporter task needs a Tokio runtime and none is running.
    #[error("the trace exporter must be started inside a Tokio runtime")]
    NoRuntime,
}

// === Sampler ===

/// Parent-based head sampling with a trace-id ratio for new traces.
///
/// A parent that says "sampled" is followed, as is one that says "not
/// sampled". Without a parent, the trace is kept when the trace id's
/// rightmost 8 bytes, read big-endian and shifted right by one, fall below
/// `ratio × 2⁶³`: OpenTelemetry's `TraceIdRatioBased` as the Go and Rust SDKs
/// compute it, so a trace id gets the same decision in every service using
/// the same ratio, and a trace kept at one ratio is kept at any higher one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// Traces whose id value is below this are kept; 0 keeps none.
    bound: u64,
}

// === impl Sampler ===

impl Sampler {
    /// A sampler keeping `ratio` of new traces; out-of-range values are
    /// clamped to 0..=1 and NaN keeps none.
    pub fn new(ratio: f64) -> Sampler {
        // `as` saturates and maps NaN to 0: 1.0 gives 2^63, which every
        // shifted id is below.
        let bound = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
        Sampler { bound }
    }

    /// Decides for a span whose parent said `parent_sampled` (`None`: no
    /// parent, a new trace).
    pub fn sample(&self, parent_sampled: Option<bool>, trace_id: &[u8; 16]) -> bool {
        match parent_sampled {
            Some(sampled) => sampled,
            None => self.sample_root(trace_id),
        }
    }

    /// The ratio decision for a new trace.
    pub fn sample_root(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.bound
    }
}

// === TraceContext ===

/// The trace context of one request as weir handles it: the trace it belongs
/// to, weir's own span in it, the caller's span (if the trace was continued),
/// and the sampling decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    flags: u8,
    tracestate: Option<HeaderValue>,
}

/// An id in lowercase hex, on the stack; `N` is twice the id's byte length.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HexId<const N: usize>([u8; N]);

// === impl TraceContext ===

impl TraceContext {
    /// Continues the caller's trace when the request carries one valid
    /// `traceparent` (its `tracestate` rides along), or starts a new trace
    /// otherwise; a missing, repeated or malformed `traceparent` starts a new
    /// trace and its `tracestate` is ignored, as W3C Trace Context requires.
    /// Either way weir gets a fresh span id, and the sampler decides.
    pub fn from_request(headers: &HeaderMap, sampler: &Sampler) -> TraceContext {
        let span_id = random_span_id();
        match parent(headers) {
            Some((trace_id, parent_span_id, parent_flags)) => {
                let sampled = sampler.sample(Some(parent_flags & FLAG_SAMPLED != 0), &trace_id);
                TraceContext {
                    trace_id,
                    span_id,
                    parent_span_id: Some(parent_span_id),
                    flags: with_sampled(parent_flags & FORWARDED_FLAGS, sampled),
                    tracestate: tracestate(headers),
                }
            }
            None => {
                let trace_id = fastrand::u128(1..).to_be_bytes();
                let sampled = sampler.sample(None, &trace_id);
                TraceContext {
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    flags: with_sampled(0, sampled),
                    tracestate: None,
                }
            }
        }
    }

    /// Whether this request's span is recorded and exported.
    pub fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// Weir's span id for this request: the parent of everything upstream.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The caller's span id, when the trace was continued.
    pub fn parent_span_id(&self) -> Option<[u8; 8]> {
        self.parent_span_id
    }

    /// W3C trace flags as sent upstream.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The caller's `tracestate`, passed through unchanged (several headers
    /// are joined with commas).
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }

    /// The trace id in hex, for the access log.
    pub fn trace_id_hex(&self) -> HexId<32> {
        HexId(hex(&self.trace_id))
    }

    /// Weir's span id in hex, for the access log.
    pub fn span_id_hex(&self) -> HexId<16> {
        HexId(hex(&self.span_id))
    }

    /// The `traceparent` for the upstream request:
    /// `00-{trace id}-{weir's span id}-{flags}`.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = [b'-'; TRACEPARENT_LEN];
        buf[..2].copy_from_slice(b"00");
        buf[3..35].copy_from_slice(&hex::<16, 32>(&self.trace_id));
        buf[36..52].copy_from_slice(&hex::<8, 16>(&self.span_id));
        buf[53..].copy_from_slice(&hex::<1, 2>(&[self.flags]));
        // Hex digits and dashes are always a valid value.
        HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
            .unwrap_or(HeaderValue::from_static(""))
    }

    /// Writes the context into an upstream request's headers: a new
    /// `traceparent` whose parent is weir's span, and the caller's
    /// `tracestate` (or none, removing whatever the client sent with an
    /// invalid `traceparent`).
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

/// The one valid `traceparent` of a request: (trace id, parent span id, flags).
fn parent(headers: &HeaderMap) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_traceparent(value.as_bytes())
}

/// Parses `version-traceid-parentid-flags` per W3C Trace Context: lowercase
/// hex only, no all-zero ids, version `ff` invalid, version 00 exactly 55
/// bytes; a later version may append `-...` fields, which are ignored.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let [version] = unhex::<1>(&value[..2])?;
    let well_formed_length = match version {
        0xff => false,
        0x00 => value.len() == TRACEPARENT_LEN,
        _ => value.len() == TRACEPARENT_LEN || value[TRACEPARENT_LEN] == b'-',
    };
    if !well_formed_length || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let span_id = unhex::<8>(&value[36..52])?;
    let [flags] = unhex::<1>(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// The request's `tracestate`, several header lines joined with commas (RFC
/// 9110 list semantics); empty lines are skipped.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter().filter(|v| !v.is_empty());
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

fn with_sampled(flags: u8, sampled: bool) -> u8 {
    if sampled {
        flags | FLAG_SAMPLED
    } else {
        flags & !FLAG_SAMPLED
    }
}

fn random_span_id() -> [u8; 8] {
    // All-zero ids are invalid in W3C and OTLP.
    fastrand::u64(1..).to_be_bytes()
}

/// Lowercase hex of `bytes`; `H` must be `2 * N`.
fn hex<const N: usize, const H: usize>(bytes: &[u8; N]) -> [u8; H] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; H];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Decodes exactly `2 * N` lowercase hex digits.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *b = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

// === impl HexId ===

impl<const N: usize> HexId<N> {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Built from hex digits only, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

// === Spans ===

/// What kind of span, in OpenTelemetry's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Weir serving a client's request.
    Server,
    /// Weir calling an upstream.
    Client,
}

/// A span's final status. OpenTelemetry leaves it unset unless the
/// operation failed; for HTTP server spans that means a 5xx (a 4xx is the
/// client's problem, not weir's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    /// Nothing to report.
    Unset,
    /// The request failed.
    Error,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// Text.
    Str(Cow<'static, str>),
    /// A whole number.
    Int(i64),
    /// A flag.
    Bool(bool),
}

/// A span ready for export.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedSpan {
    /// Identity and sampling decision (from [`TraceContext::from_request`]).
    pub ctx: TraceContext,
    /// Low-cardinality name, e.g. `GET /api/{id}`.
    pub name: Cow<'static, str>,
    /// Kind of span.
    pub kind: SpanKind,
    /// When the request arrived.
    pub start: SystemTime,
    /// When the response ended.
    pub end: SystemTime,
    /// Attributes, keyed by OpenTelemetry semantic-convention names.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Final status.
    pub status: SpanStatus,
}

/// What the request pipeline knows about a finished request; turned into a
/// server span by [`FinishedSpan::server`].
#[derive(Clone, Copy, Debug)]
pub struct ServerSpanFacts<'a> {
    /// Request method.
    pub method: &'a Method,
    /// `http` or `https`, as the client spoke to weir.
    pub scheme: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// The authority the client asked for (`Host` or the URI's), with or
    /// without a port.
    pub host: Option<&'a str>,
    /// HTTP version of the client's request.
    pub version: Version,
    /// The matched route's path template (`http.route`): low cardinality,
    /// e.g. the route's `path` or `path_prefix`. `None` when no route matched
    /// or the route matches no path.
    pub http_route: Option<&'a str>,
    /// The matched route's name.
    pub route: Option<&'a str>,
    /// The upstream the request was sent to.
    pub upstream: Option<&'a str>,
    /// Status sent to the client; `None` when no response was sent.
    pub status: Option<u16>,
    /// Tries made upstream (0 when nothing was forwarded).
    pub attempts: u32,
    /// Weir's error code when it produced an error response or cut the
    /// response short.
    pub error_code: Option<&'a str>,
}

// === impl FinishedSpan ===

impl FinishedSpan {
    /// The server span of a request, with the OpenTelemetry HTTP server
    /// attributes (`http.request.method`, `url.scheme`, `url.path`,
    /// `server.address`, `server.port`, `network.protocol.version`,
    /// `http.route`, `http.response.status_code`, `error.type`) and weir's own
    /// (`weir.route`, `weir.upstream`, `weir.attempts`).
    ///
    /// `error.type` is weir's error code when there is one, else the status
    /// for a 5xx. The name is `{method} {http.route}`, or just the method.
    pub fn server(
        ctx: TraceContext,
        start: SystemTime,
        end: SystemTime,
        facts: &ServerSpanFacts<'_>,
    ) -> FinishedSpan {
        use AttributeValue::{Int, Str};
        let mut attributes = Vec::with_capacity(14);
        let method = known_method(facts.method);
        attributes.push((
            "http.request.method",
            Str(Cow::Borrowed(method.unwrap_or("_OTHER"))),
        ));
        if method.is_none() {
            attributes.push((
                "http.request.method_original",
                Str(Cow::Owned(facts.method.as_str().to_owned())),
            ));
        }
        attributes.push(("url.scheme", text(facts.scheme)));
        attributes.push(("url.path", text(facts.path)));
        if let Some((address, port)) = facts.host.and_then(split_host) {
            attributes.push(("server.address", text(address)));
            if let Some(port) = port {
                attributes.push(("server.port", Int(i64::from(port))));
            }
        }
        if let Some(v) = protocol_version(facts.version) {
            attributes.push(("network.protocol.version", Str(Cow::Borrowed(v))));
        }
        if let Some(r) = facts.http_route {
            attributes.push(("http.route", text(r)));
        }
        if let Some(status) = facts.status {
            attributes.push(("http.response.status_code", Int(i64::from(status))));
        }
        let server_error = facts.status.is_some_and(|s| s >= 500);
        match facts.error_code {
            Some(code) => attributes.push(("error.type", text(code))),
            None if server_error => {
                let code = facts.status.map(|s| s.to_string()).unwrap_or_default();
                attributes.push(("error.type", Str(Cow::Owned(code))));
            }
            None => {}
        }
        if let Some(r) = facts.route {
            attributes.push(("weir.route", text(r)));
        }
        if let Some(u) = facts.upstream {
            attributes.push(("weir.upstream", text(u)));
        }
        attributes.push(("weir.attempts", Int(i64::from(facts.attempts))));
        let name = match (method, facts.http_route) {
            (Some(m), Some(r)) => Cow::Owned(format!("{m} {r}")),
            (Some(m), None) => Cow::Borrowed(m),
            (None, Some(r)) => Cow::Owned(format!("HTTP {r}")),
            (None, None) => Cow::Borrowed("HTTP"),
        };
        FinishedSpan {
            ctx,
            name,
            kind: SpanKind::Server,
            start,
            end,
            attributes,
            status: if server_error {
                SpanStatus::Error
            } else {
                SpanStatus::Unset
            },
        }
    }
}

fn text(s: &str) -> AttributeValue {
    AttributeValue::Str(Cow::Owned(s.to_owned()))
}

/// The method's name when it is one of the semantic conventions' known
/// methods; others are reported as `_OTHER` to keep cardinality bounded.
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

fn protocol_version(version: Version) -> Option<&'static str> {
    Some(match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// `host[:port]` or `[v6][:port]` → (host without brackets, port).
fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port.and_then(|p| p.parse().ok())))
}

// === Tracer ===

/// The process's tracer: samples requests and hands finished spans to the
/// exporter task. Share it behind an `Arc`; every method takes `&self`.
///
/// Dropping the `Tracer` (e.g. when a reload builds a new one) lets the
/// exporter send what is still queued in the background and stop; call
/// [`Tracer::shutdown`] instead to wait for that.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    tx: mpsc::Sender<Message>,
    dropped: Counter,
    /// Bounds `flush` and `shutdown`.
    timeout: Duration,
}

// === impl Tracer ===

impl Tracer {
    /// Starts the exporter task (on the current Tokio runtime) for `cfg`.
    /// `dropped` counts spans that were sampled but never reached the
    /// collector: queue full, export failed, or recorded after shutdown.
    pub fn new(cfg: &weir_config::Tracing, dropped: Counter) -> Result<Tracer, TracerError> {
        let endpoint = cfg.endpoint().map_err(TracerError::Endpoint)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TracerError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        let export = Export::new(cfg, endpoint, dropped.clone())?;
        runtime.spawn(export.run(rx));
        Ok(Tracer {
            sampler: Sampler::new(cfg.sample_ratio.get()),
            tx,
            dropped,
            timeout: cfg.timeout.get(),
        })
    }

    /// The sampler built from `sample_ratio`.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The trace context of an incoming request (see
    /// [`TraceContext::from_request`]).
    pub fn context(&self, headers: &HeaderMap) -> TraceContext {
        TraceContext::from_request(headers, &self.sampler)
    }

    /// Queues a finished span for export. Never blocks: an unsampled span is
    /// ignored, and a span that finds the queue full (or the exporter gone)
    /// is dropped and counted.
    pub fn record(&self, span: FinishedSpan) {
        if !span.ctx.is_sampled() {
            return;
        }
        if self.tx.try_send(Message::Span(span)).is_err() {
            self.dropped.inc();
        }
    }

    /// Spans dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Exports everything queued so far without waiting for a full batch or
    /// the flush interval. Returns whether that finished within `timeout`.
    pub async fn flush(&self) -> bool {
        self.control(Message::Flush).await
    }

    /// Exports everything queued and stops the exporter; spans recorded
    /// afterwards are dropped. Waits at most `timeout`, and returns whether
    /// the exporter finished within it.
    pub async fn shutdown(&self) -> bool {
        self.control(Message::Shutdown).await
    }

    async fn control(&self, message: fn(oneshot::Sender<()>) -> Message) -> bool {
        let (ack, done) = oneshot::channel();
        let work = async {
            // Unlike `record`, waiting for room here is fine: the caller
            // asked to wait, and the timeout bounds it.
            self.tx.send(message(ack)).await.is_ok() && done.await.is_ok()
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(false)
    }
}
