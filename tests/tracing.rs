//! Tracing through the proxy: a request's W3C context is continued (or a
//! trace started), the upstream receives weir's span as its parent, the
//! server span reaches a real OTLP/HTTP receiver with its attributes, and
//! the access log carries the ids.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

use support::client::{self, req};
use support::gateway::TestGateway;
use support::upstream::Upstream;
use support::{access_log_lines, eventually, TempPath, IO_TIMEOUT};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver that keeps every span it is sent.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        for rs in export.resource_spans {
                            for ss in rs.scope_spans {
                                kept.lock().unwrap().extend(ss.spans);
                            }
                        }
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(reply))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, spans)
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn gateway(collector: SocketAddr, up: &Upstream, log: &TempPath, ratio: f64) -> TestGateway {
    TestGateway::with(
        &format!(
            "access_log: {{ enabled: true, path: \"{}\" }}\n\
             tracing: {{ otlp_endpoint: \"http://{collector}\", sample_ratio: {ratio}, service_name: edge, flush_interval: 100ms }}\n\
             routes:\n  - name: api\n    match: {{ path_prefix: /api/ }}\n    upstream: up\n\
             upstreams:\n  - name: up\n    targets: [{{ address: \"{{up}}\" }}]\n",
            log.as_str()
        ),
        &[("up", &up.addr())],
    )
    .await
}

#[tokio::test]
async fn a_sampled_parent_is_continued_and_weir_becomes_the_upstreams_parent() {
    let (otlp, spans) = collector().await;
    let up = Upstream::echo().await;
    let log = TempPath::new("trace-log");
    let gw = gateway(otlp, &up, &log, 0.0).await;

    let resp = client::send(
        gw.addr(),
        req(Method::GET, "/api/orders?id=1")
            .header("host", "shop.example")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .header("tracestate", "vendor=1")
            .body(client::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    let echoed = resp.echoed();
    let sent = echoed.header("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"));
    let weir_span = parts[2].to_owned();
    assert_ne!(weir_span, PARENT, "weir must send its own span id");
    assert_eq!(echoed.header("tracestate"), Some("vendor=1"));

    // The parent was sampled, so the span is exported although the ratio is 0.
    eventually(IO_TIMEOUT, "the span reaches the collector", || {
        let n = spans.lock().unwrap().len();
        std::future::ready(n >= 1)
    })
    .await;
    let span = spans.lock().unwrap()[0].clone();
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(hex(&span.span_id), weir_span);
    assert_eq!(span.name, "GET /api/");
    assert_eq!(
        attr(&span, "http.request.method"),
        Some(Value::StringValue("GET".into()))
    );
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr(&span, "url.path"),
        Some(Value::StringValue("/api/orders".into()))
    );
    assert_eq!(
        attr(&span, "weir.route"),
        Some(Value::StringValue("api".into()))
    );
    assert_eq!(
        attr(&span, "weir.upstream"),
        Some(Value::StringValue("up".into()))
    );
    assert_eq!(attr(&span, "weir.attempts"), Some(Value::IntValue(1)));

    let lines = access_log_lines(&log, 1).await;
    assert_eq!(lines[0]["trace_id"], TRACE);
    assert_eq!(lines[0]["span_id"], weir_span.as_str());
}

#[tokio::test]
async fn without_a_parent_the_ratio_decides_and_errors_are_recorded() {
    let (otlp, spans) = collector().await;
    let up = Upstream::echo().await;
    let log = TempPath::new("trace-ratio");
    let gw = gateway(otlp, &up, &log, 1.0).await;

    // A new trace: the upstream gets a fresh, sampled context.
    let resp = client::get(gw.addr(), "/api/x").await;
    let sent = resp.echoed().header("traceparent").unwrap().to_owned();
    assert!(sent.starts_with("00-") && sent.ends_with("-01"), "{sent}");
    // An unrouted request is traced too, with its error.
    assert_eq!(client::get(gw.addr(), "/nope").await.status, 404);

    eventually(IO_TIMEOUT, "both spans exported", || {
        let n = spans.lock().unwrap().len();
        std::future::ready(n >= 2)
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    let trace_of_first = &sent[3..35];
    assert!(spans
        .iter()
        .any(|s| hex(&s.trace_id) == trace_of_first && s.parent_span_id.is_empty()));
    let not_found = spans
        .iter()
        .find(|s| attr(s, "http.response.status_code") == Some(Value::IntValue(404)))
        .expect("the 404's span");
    assert_eq!(
        attr(not_found, "error.type"),
        Some(Value::StringValue("route_not_found".into()))
    );
}

#[tokio::test]
async fn an_unsampled_parent_is_propagated_but_not_exported() {
    let (otlp, spans) = collector().await;
    let up = Upstream::echo().await;
    let log = TempPath::new("trace-unsampled");
    let gw = gateway(otlp, &up, &log, 1.0).await;
    let resp = client::send(
        gw.addr(),
        req(Method::GET, "/api/x")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-00"))
            .body(client::empty())
            .unwrap(),
    )
    .await;
    let sent = resp.echoed().header("traceparent").unwrap().to_owned();
    assert!(
        sent.starts_with(&format!("00-{TRACE}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    // Give the exporter two flush intervals: nothing may arrive.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(spans.lock().unwrap().is_empty());
    let lines = access_log_lines(&log, 1).await;
    assert_eq!(lines[0]["trace_id"], TRACE);
}

#[tokio::test]
async fn latency_buckets_carry_the_sampled_request_as_exemplar() {
    let (otlp, _spans) = collector().await;
    let up = Upstream::echo().await;
    let log = TempPath::new("trace-exemplar");
    let gw = gateway(otlp, &up, &log, 0.0).await;
    let send = |flags: &'static str, trace: &'static str| {
        client::send(
            gw.addr(),
            req(Method::GET, "/api/x")
                .header("traceparent", format!("00-{trace}-{PARENT}-{flags}"))
                .body(client::empty())
                .unwrap(),
        )
    };
    // Unsampled: counted, but never an exemplar (its trace is not exported).
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(send("00", unsampled).await.status, 200);
    gw.metric_reaches(
        "weir_request_duration_seconds_count",
        &[("route", "api")],
        1.0,
    )
    .await;
    let metrics = gw.metrics().await;
    assert!(!metrics.contains(" # {"), "{metrics}");

    let resp = send("01", TRACE).await;
    assert_eq!(resp.status, 200);
    let span = resp
        .echoed()
        .header("traceparent")
        .and_then(|t| t.split('-').nth(2))
        .expect("weir's span id")
        .to_owned();
    gw.metric_reaches(
        "weir_request_duration_seconds_count",
        &[("route", "api")],
        2.0,
    )
    .await;
    let metrics = gw.metrics().await;
    let want = format!(" # {{trace_id=\"{TRACE}\",span_id=\"{span}\"}} ");
    for (family, label) in [
        ("weir_request_duration_seconds_bucket{", "route=\"api\""),
        (
            "weir_upstream_response_duration_seconds_bucket{",
            "upstream=\"up\"",
        ),
    ] {
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(label) && l.contains(&want))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one exemplar bucket for {family}:\n{metrics}"
        );
        // `… N # {ids} VALUE TIMESTAMP`: the value is the observation in
        // seconds, within the bucket's bound.
        let tail: Vec<&str> = lines[0].rsplit(' ').take(2).collect();
        let value: f64 = tail[1].parse().expect("exemplar value");
        let timestamp: f64 = tail[0].parse().expect("exemplar timestamp");
        let le: f64 = lines[0]
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(|b| {
                if b == "+Inf" {
                    f64::INFINITY
                } else {
                    b.parse().unwrap()
                }
            })
            .unwrap();
        assert!(value > 0.0 && value <= le, "{}", lines[0]);
        assert!(timestamp > 1.7e9, "{}", lines[0]);
    }
    assert!(!metrics.contains(unsampled), "{metrics}");
}
