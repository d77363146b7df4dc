//! `Completion`: the bookkeeping run once per request when its response ends
//! (see `body.rs`), or for a WebSocket when its connection ends (see
//! `websocket.rs`): return the upstream connection, release the target's
//! in-flight count, record metrics, write the access log line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, StatusCode};

use super::conn::ConnCtx;
use super::grpc::{code, GrpcKind};
use crate::observe::access_log::{rfc3339, AccessRecord};
use crate::observe::tracing::{FinishedSpan, ServerSpanFacts, TraceContext};
use crate::policy::circuit_breaker::RequestPermit;
use crate::snapshot::Snapshot;
use crate::upstream::{Http1Conn, Target};

/// What a request used upstream.
#[derive(Debug)]
pub struct UpstreamUse {
    /// The target that served it (its in-flight count was incremented).
    pub target: Arc<Target>,
    /// The HTTP/1.1 connection to give back, put here by the response
    /// body when it ended with the connection reusable.
    pub conn: Option<Http1Conn>,
    /// Time until response headers.
    pub elapsed: Duration,
    /// The upstream circuit breaker's request slot, held to the end.
    pub permit: Option<RequestPermit>,
}

/// Access log fields, collected only when the access log is on.
#[derive(Debug)]
pub struct LogFields {
    /// Wall-clock arrival time.
    pub time: SystemTime,
    /// Request id.
    pub request_id: String,
    /// Host asked for.
    pub host: String,
    /// Path (no query).
    pub path: String,
    /// HTTP version text.
    pub protocol: &'static str,
    /// Request body bytes, counted as they stream.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// Upstream name.
    pub upstream: Option<Arc<str>>,
}

/// A request's trace, when tracing is on.
#[derive(Debug)]
pub struct RequestTrace {
    /// Its W3C context (continued or new) and weir's span id.
    pub ctx: TraceContext,
    /// Wall-clock start of the span.
    pub start: SystemTime,
    /// What the span needs from the request head; kept only when sampled.
    pub head: Option<TraceHead>,
}

impl RequestTrace {
    /// The trace and span ids a latency exemplar links to, when the trace
    /// is sampled (an unsampled trace never reaches the backend).
    pub fn exemplar(&self) -> Option<TraceIds> {
        self.ctx
            .is_sampled()
            .then(|| (self.ctx.trace_id(), self.ctx.span_id()))
    }
}

/// A trace id and a span id.
pub type TraceIds = ([u8; 16], [u8; 8]);

/// The request facts a sampled span records.
#[derive(Debug)]
pub struct TraceHead {
    /// Path without the query.
    pub path: String,
    /// Host asked for.
    pub host: Option<String>,
    /// HTTP version.
    pub version: http::Version,
}

/// Where a request stands as a WebSocket upgrade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebSocketStage {
    /// A plain request.
    #[default]
    None,
    /// A WebSocket upgrade request that has not (yet) become a tunnel: its
    /// result is counted when it finishes.
    Requested,
    /// The upstream answered 101 and the connection became a tunnel; the
    /// request's metrics were recorded at the 101 (`record_upgrade`).
    Tunnel,
}

/// Per-request bookkeeping run when the response ends.
#[derive(Debug)]
pub struct Completion {
    /// The client connection.
    pub ctx: Arc<ConnCtx>,
    /// The snapshot the request ran on.
    pub snapshot: Arc<Snapshot>,
    /// The matched route's `order`, if any.
    pub route: Option<usize>,
    /// The side of a split taken (0 otherwise).
    pub side: usize,
    /// Request method.
    pub method: Method,
    /// Status sent.
    pub status: StatusCode,
    /// Arrival time.
    pub start: Instant,
    /// Upstream resources held by the request.
    pub upstream: Option<UpstreamUse>,
    /// Error code of a local error response.
    pub error: Option<&'static str>,
    /// Tries made upstream (0 when the request was not forwarded).
    pub attempts: u32,
    /// The target of a last try that failed, and how long it took.
    pub failed_target: Option<(Arc<str>, Duration)>,
    /// Access log fields, when logging.
    pub log: Option<Box<LogFields>>,
    /// The request's trace, when tracing is on.
    pub trace: Option<Box<RequestTrace>>,
    /// WebSocket upgrade, if the request asks for one.
    pub websocket: WebSocketStage,
    /// The request is a gRPC (or gRPC-Web) call; set once known (error
    /// paths and the forward stage).
    pub grpc: Option<GrpcKind>,
    /// The call's gRPC status, once seen (answer head or trailers) or
    /// chosen by weir.
    pub grpc_status: Option<u16>,
    /// The client address taken from `X-Forwarded-For` when the peer is a
    /// trusted proxy (and its text); None: the peer is the client.
    pub forwarded_client: Option<Box<(std::net::IpAddr, HeaderValue)>>,
    /// When `finish` ran; its drop then tells the connection without
    /// reading the clock again.
    pub ended_at: Option<Instant>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Also when the request is abandoned without `finish` (hyper drops
        // the service future of a stream the client reset): the
        // connection's idle timers must see it end.
        self.ctx
            .request_ended(self.ended_at.unwrap_or_else(Instant::now));
    }
}

impl Completion {
    /// Runs the bookkeeping; see the module doc.
    pub fn finish(&mut self, bytes_out: u64, complete: bool, body_error: Option<&'static str>) {
        let now = Instant::now();
        self.ended_at = Some(now);
        let elapsed = now.saturating_duration_since(self.start);
        let mut upstream_elapsed = None;
        let mut target_addr = None;
        if let Some(u) = self.upstream.take() {
            u.target.in_flight.fetch_sub(1, Ordering::Relaxed);
            upstream_elapsed = Some(u.elapsed);
            if complete {
                if let Some(conn) = u.conn {
                    self.ctx.give_back(&u.target, conn);
                }
            }
            // Only the access log shows it: no copy without one.
            if self.log.is_some() {
                target_addr = Some(u.target.address.clone());
            }
        } else if let Some((addr, elapsed)) = self.failed_target.take() {
            upstream_elapsed = Some(elapsed);
            target_addr = Some(addr);
        }
        if self.grpc.is_some() && self.grpc_status.is_none() {
            self.grpc_status = Some(unseen_grpc_status(self.status, complete, body_error));
        }
        match self.websocket {
            WebSocketStage::None => self.record(elapsed),
            WebSocketStage::Requested => {
                self.record(elapsed);
                self.count_upgrade();
            }
            // A tunnel's request was recorded when it was upgraded: its
            // lifetime is not a response time.
            WebSocketStage::Tunnel => {}
        }
        let error_code = self.error.or(body_error);
        if let Some(trace) = &self.trace {
            self.record_span(trace, error_code, log_upstream(&self.log));
        }
        let Some(log) = self.log.take() else { return };
        let Some(access_log) = self.ctx.state.access_log.as_ref() else {
            return;
        };
        let route_name = self
            .route
            .and_then(|i| self.snapshot.config.routes.get(i))
            .map_or("", |r| r.name.as_str());
        let trace_id = self.trace.as_ref().map(|t| t.ctx.trace_id_hex());
        let span_id = self.trace.as_ref().map(|t| t.ctx.span_id_hex());
        access_log.write(&AccessRecord {
            time: rfc3339(log.time),
            request_id: &log.request_id,
            // Port 0: a forwarded client's port is not known.
            client: self
                .forwarded_client
                .as_deref()
                .map_or(self.ctx.client, |(ip, _)| std::net::SocketAddr::new(*ip, 0)),
            method: self.method.as_str(),
            host: &log.host,
            path: &log.path,
            protocol: log.protocol,
            status: self.status.as_u16(),
            bytes_in: log
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_out,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            route: route_name,
            upstream: log.upstream.as_deref().unwrap_or(""),
            upstream_target: target_addr.as_deref().unwrap_or(""),
            upstream_duration_ms: upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            error_code,
            attempts: self.attempts,
            trace_id: trace_id.as_ref().map(|h| h.as_str()),
            span_id: span_id.as_ref().map(|h| h.as_str()),
        });
    }
}

impl Completion {
    /// Records the request's metrics and counts an upgrade, when the
    /// upstream has answered 101; `finish` then runs when the tunnel ends.
    pub fn record_upgrade(&mut self) {
        self.websocket = WebSocketStage::Tunnel;
        self.record(self.start.elapsed());
        if let Some(p) = self.route.and_then(|i| self.snapshot.route_policies.get(i)) {
            p.websocket.metrics.upgraded.inc();
        }
    }

    /// Records the request in its route's (or the unrouted) metrics.
    fn record(&self, elapsed: Duration) {
        let metrics = match self
            .route
            .and_then(|i| self.snapshot.route_metrics.get(i))
            .and_then(|sides| sides.get(self.side))
        {
            Some(m) => m,
            None => &self.snapshot.unrouted_metrics,
        };
        let exemplar = self.trace.as_ref().and_then(|t| t.exemplar());
        metrics.record(&self.method, self.status, elapsed, exemplar);
        if let Some(status) = self.grpc_status {
            metrics.record_grpc(status);
        }
    }

    /// Counts an upgrade request that did not become a tunnel, by why.
    fn count_upgrade(&self) {
        let Some(p) = self.route.and_then(|i| self.snapshot.route_policies.get(i)) else {
            return;
        };
        let m = &p.websocket.metrics;
        match self.error {
            Some(code) if code == super::error::WEBSOCKET_NOT_ALLOWED => m.not_allowed.inc(),
            Some(_) => m.error.inc(),
            None => m.refused.inc(),
        };
    }

    /// Hands a sampled request's server span to the tracer.
    fn record_span(&self, trace: &RequestTrace, error_code: Option<&str>, upstream: Option<&str>) {
        let (Some(tracer), Some(head)) = (self.ctx.state.tracer.as_ref(), trace.head.as_ref())
        else {
            return;
        };
        let route = self.route.and_then(|i| self.snapshot.config.routes.get(i));
        let http_route = route.and_then(|r| {
            let m = &r.matches;
            m.path
                .as_deref()
                .or(m.path_prefix.as_deref())
                .or(m.path_regex.as_deref())
        });
        let facts = ServerSpanFacts {
            method: &self.method,
            scheme: "http",
            path: &head.path,
            host: head.host.as_deref(),
            version: head.version,
            http_route,
            route: route.map(|r| r.name.as_str()),
            upstream,
            status: Some(self.status.as_u16()),
            attempts: self.attempts,
            error_code,
        };
        tracer.record(FinishedSpan::server(
            trace.ctx.clone(),
            trace.start,
            SystemTime::now(),
            &facts,
        ));
    }
}

/// The status a gRPC call ended with when none was seen: what a client
/// makes of a non-200 answer; for a 200, the failure that cut it, a call
/// the client gave up on (CANCELLED), or a call that ended without a
/// status (UNKNOWN).
fn unseen_grpc_status(http: StatusCode, complete: bool, body_error: Option<&str>) -> u16 {
    if http != StatusCode::OK {
        return super::error::grpc_status_of_http(http);
    }
    match body_error {
        Some(e) => super::error::grpc_status(e, http),
        None if !complete => code::CANCELLED,
        None => code::UNKNOWN,
    }
}

fn log_upstream(log: &Option<Box<LogFields>>) -> Option<&str> {
    log.as_ref().and_then(|l| l.upstream.as_deref())
}
