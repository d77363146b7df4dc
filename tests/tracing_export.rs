//! Trace export through real sockets: a `Tracer` posting to an OTLP/HTTP
//! receiver written here (hyper on `127.0.0.1:0`, decoding the protobuf
//! bodies), batching, propagation of ids, and what happens when the
//! collector is dead, stalled or refusing: recording never blocks, and every
//! lost span is counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as OtlpStatus};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use weir::config::{Duration as ConfigDuration, Number, Tracing};
use weir::observe::tracing::{FinishedSpan, ServerSpanFacts, Tracer, TRACEPARENT, TRACESTATE};

/// Hang guard for things that should take microseconds; only reached when
/// the tracer is broken.
const LIMIT: Duration = Duration::from_secs(10);

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

// === The collector ===

/// How the collector answers exports.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 with an empty `ExportTraceServiceResponse`.
    Accept,
    /// 200 saying this many spans were rejected.
    Reject(i64),
    /// This status, no body.
    Fail(u16),
}

/// One export request as received.
struct Received {
    path: String,
    content_type: String,
    request: ExportTraceServiceRequest,
}

#[derive(Clone)]
struct Collector {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    answer: Arc<Mutex<Answer>>,
}

impl Collector {
    async fn start(answer: Answer) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Collector {
            addr: listener.local_addr().unwrap(),
            exports: Arc::default(),
            connections: Arc::default(),
            answer: Arc::new(Mutex::new(answer)),
        };
        let state = collector.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| state.clone().handle(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        collector
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let request = ExportTraceServiceRequest::decode(body).expect("a protobuf export");
        self.exports.lock().unwrap().push(Received {
            path,
            content_type,
            request,
        });
        let answer = *self.answer.lock().unwrap();
        let (status, body) = match answer {
            Answer::Accept => (200, ExportTraceServiceResponse::default().encode_to_vec()),
            Answer::Reject(n) => (
                200,
                ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: n,
                        error_message: "too old".into(),
                    }),
                }
                .encode_to_vec(),
            ),
            Answer::Fail(status) => (status, Vec::new()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(response)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans per export request, in arrival order.
    fn batch_sizes(&self) -> Vec<usize> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .map(|r| spans_of(&r.request).len())
            .collect()
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Span> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| spans_of(&r.request))
            .collect()
    }
}

fn spans_of(request: &ExportTraceServiceRequest) -> Vec<Span> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect()
}

// === Helpers ===

fn config(endpoint: String, batch_size: usize, queue_size: usize) -> Tracing {
    Tracing {
        otlp_endpoint: endpoint,
        sample_ratio: Number(1.0),
        service_name: "edge".into(),
        batch_size,
        queue_size,
        // Long enough never to fire in tests that count batches.
        flush_interval: ConfigDuration::from_secs(600),
        timeout: ConfigDuration::from_secs(5),
    }
}

fn tracer(cfg: &Tracing) -> Tracer {
    Tracer::new(cfg, Counter::default()).expect("tracer starts")
}

fn incoming(traceparent: Option<&str>, tracestate: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(tp) = traceparent {
        headers.insert(TRACEPARENT, HeaderValue::from_str(tp).unwrap());
    }
    if let Some(ts) = tracestate {
        headers.insert(TRACESTATE, HeaderValue::from_str(ts).unwrap());
    }
    headers
}

/// The server span of a `GET /api/orders` that ended with `status`.
fn span(tracer: &Tracer, headers: &HeaderMap, status: u16) -> FinishedSpan {
    let start = SystemTime::now();
    let facts = ServerSpanFacts {
        method: &Method::GET,
        scheme: "http",
        path: "/api/orders",
        host: Some("shop.example:8080"),
        version: Version::HTTP_11,
        http_route: Some("/api/"),
        route: Some("api"),
        upstream: Some("orders"),
        status: Some(status),
        attempts: 2,
        error_code: None,
    };
    FinishedSpan::server(
        tracer.context(headers),
        start,
        start + Duration::from_millis(3),
        &facts,
    )
}

fn fresh(tracer: &Tracer) -> FinishedSpan {
    span(tracer, &HeaderMap::new(), 200)
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(s: &str) -> Value {
    Value::StringValue(s.into())
}

fn bytes_of(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Polls `check` every 10 ms until it holds or `LIMIT` passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `record` must return at once; a blocked one trips the hang guard.
async fn record_all(tracer: &Tracer, spans: Vec<FinishedSpan>) {
    tokio::time::timeout(LIMIT, async {
        for s in spans {
            tracer.record(s);
        }
    })
    .await
    .expect("record never blocks");
}

// === Tests ===

#[tokio::test]
async fn spans_reach_the_collector_in_batches_with_their_ids_and_attributes() {
    let collector = Collector::start(Answer::Accept).await;
    let tracer = tracer(&config(collector.endpoint(), 3, 64));

    let continued = span(
        &tracer,
        &incoming(
            Some(&format!("00-{TRACE}-{PARENT}-01")),
            Some("vendor=opaque"),
        ),
        200,
    );
    let continued_ctx = continued.ctx.clone();
    let failed = span(&tracer, &HeaderMap::new(), 503);
    let failed_ctx = failed.ctx.clone();
    let unsampled = span(
        &tracer,
        &incoming(Some(&format!("00-{TRACE}-{PARENT}-00")), None),
        200,
    );
    assert!(!unsampled.ctx.is_sampled());
    let mut spans = vec![continued, failed, unsampled];
    spans.extend((0..5).map(|_| fresh(&tracer)));
    record_all(&tracer, spans).await;

    // Two full batches go out by themselves; the rest waits for the flush.
    assert!(tracer.flush().await, "flush finishes");
    assert_eq!(collector.batch_sizes(), [3, 3, 1]);
    assert_eq!(tracer.dropped(), 0, "unsampled spans are not drops");
    // One kept-alive connection carries every export.
    assert_eq!(collector.connections.load(Ordering::SeqCst), 1);

    let exports = collector.exports.lock().unwrap();
    for received in exports.iter() {
        assert_eq!(received.path, "/v1/traces");
        assert_eq!(received.content_type, "application/x-protobuf");
        let resource = received.request.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(&text("edge"))
        );
        let scope = received.request.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .expect("scope");
        assert_eq!(scope.name, "weir");
    }
    drop(exports);

    let spans = collector.spans();
    assert_eq!(spans.len(), 7);
    let first = &spans[0];
    assert_eq!(first.trace_id, bytes_of(TRACE));
    assert_eq!(first.parent_span_id, bytes_of(PARENT));
    assert_eq!(first.span_id, continued_ctx.span_id().to_vec());
    assert_eq!(first.trace_state, "vendor=opaque");
    // Sampled, with a parent from another process.
    assert_eq!(first.flags, 0x301);
    assert_eq!(first.name, "GET /api/");
    assert_eq!(first.kind, SpanKind::Server as i32);
    assert!(first.end_time_unix_nano > first.start_time_unix_nano);
    assert_eq!(first.status, None);
    let a = &first.attributes;
    assert_eq!(attr(a, "http.request.method"), Some(&text("GET")));
    assert_eq!(attr(a, "url.path"), Some(&text("/api/orders")));
    assert_eq!(attr(a, "server.address"), Some(&text("shop.example")));
    assert_eq!(attr(a, "network.protocol.version"), Some(&text("1.1")));
    assert_eq!(attr(a, "http.route"), Some(&text("/api/")));
    assert_eq!(
        attr(a, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(attr(a, "weir.route"), Some(&text("api")));
    assert_eq!(attr(a, "weir.upstream"), Some(&text("orders")));
    assert_eq!(attr(a, "weir.attempts"), Some(&Value::IntValue(2)));
    assert_eq!(attr(a, "error.type"), None);

    let second = &spans[1];
    assert_eq!(second.trace_id, failed_ctx.trace_id().to_vec());
    assert_ne!(second.trace_id, bytes_of(TRACE));
    assert!(
        second.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    assert_eq!(second.flags, 0x101);
    assert_eq!(second.trace_state, "");
    let status = second.status.as_ref().expect("error status");
    assert_eq!(status.code, OtlpStatus::Error as i32);
    assert_eq!(attr(&second.attributes, "error.type"), Some(&text("503")));

    // The unsampled span never left weir.
    let unsampled_parent = bytes_of(PARENT);
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.parent_span_id == unsampled_parent)
            .count(),
        1
    );
}

#[tokio::test]
async fn a_partial_batch_goes_out_after_the_flush_interval() {
    let collector = Collector::start(Answer::Accept).await;
    let mut cfg = config(format!("{}/otlp/", collector.endpoint()), 100, 100);
    cfg.flush_interval = ConfigDuration::from_millis(50);
    let tracer = tracer(&cfg);
    record_all(&tracer, vec![fresh(&tracer), fresh(&tracer)]).await;
    eventually("two spans at the collector", || {
        collector.spans().len() == 2
    })
    .await;
    let path = collector.exports.lock().unwrap()[0].path.clone();
    assert_eq!(path, "/otlp/v1/traces");
    assert_eq!(tracer.dropped(), 0);
}

#[tokio::test]
async fn shutdown_exports_what_is_queued_and_later_spans_are_dropped() {
    let collector = Collector::start(Answer::Accept).await;
    let tracer = tracer(&config(collector.endpoint(), 100, 100));
    record_all(&tracer, vec![fresh(&tracer), fresh(&tracer)]).await;
    assert!(tracer.shutdown().await, "shutdown finishes");
    assert_eq!(collector.batch_sizes(), [2]);

    record_all(&tracer, vec![fresh(&tracer)]).await;
    assert_eq!(tracer.dropped(), 1);
    assert!(!tracer.flush().await, "nothing is left to flush");
    assert_eq!(collector.spans().len(), 2);
}

#[tokio::test]
async fn a_dead_collector_costs_counted_drops_and_never_blocks() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let tracer = tracer(&config(format!("http://{closed}"), 2, 16));
    let spans: Vec<FinishedSpan> = (0..1000).map(|_| fresh(&tracer)).collect();
    record_all(&tracer, spans).await;
    assert!(tracer.flush().await, "a refused connection fails fast");
    // Each span was either refused by the full queue or lost with its batch.
    assert_eq!(tracer.dropped(), 1000);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_while_an_export_stalls() {
    // A collector that reads the request and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let seen = stalled.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                seen.store(true, Ordering::SeqCst);
            }
            held.push(stream);
        }
    });
    let mut cfg = config(format!("http://{addr}"), 1, 4);
    cfg.timeout = ConfigDuration::from_secs(600);
    let tracer = tracer(&cfg);

    record_all(&tracer, vec![fresh(&tracer)]).await;
    eventually("the export to stall", || stalled.load(Ordering::SeqCst)).await;
    // The exporter is stuck in its export: the queue holds 4, the rest drop.
    let spans: Vec<FinishedSpan> = (0..10).map(|_| fresh(&tracer)).collect();
    record_all(&tracer, spans).await;
    assert_eq!(tracer.dropped(), 6);
}

#[tokio::test]
async fn collector_errors_and_rejections_count_as_drops() {
    let collector = Collector::start(Answer::Fail(503)).await;
    let tracer = tracer(&config(collector.endpoint(), 100, 100));
    record_all(
        &tracer,
        vec![fresh(&tracer), fresh(&tracer), fresh(&tracer)],
    )
    .await;
    assert!(tracer.flush().await);
    assert_eq!(collector.batch_sizes(), [3]);
    assert_eq!(tracer.dropped(), 3);

    *collector.answer.lock().unwrap() = Answer::Reject(1);
    record_all(&tracer, vec![fresh(&tracer), fresh(&tracer)]).await;
    assert!(tracer.flush().await);
    assert_eq!(collector.batch_sizes(), [3, 2]);
    assert_eq!(tracer.dropped(), 4);
}

#[tokio::test]
async fn a_bad_endpoint_is_refused_at_start() {
    let cfg = config("https://127.0.0.1:4318".into(), 1, 1);
    assert!(Tracer::new(&cfg, Counter::default()).is_err());
}
