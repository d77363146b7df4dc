//! gRPC-Web through weir: hand-built gRPC-Web requests (binary and base64
//! text) over HTTP/1.1, translated into gRPC for a tonic server, and the
//! framed answers with their trailer frame; weir's own errors; CORS.

mod grpc_support;
mod support;

use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use grpc_support::*;
use http::Method;
use prost::Message;
use support::*;

const ORIGIN: &str = "https://shop.example.com";

fn config(up: SocketAddr) -> String {
    fill(
        "listeners:
  - name: main
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
routes:
  - name: web
    match: { grpc: { service: test.Echo }, methods: [POST] }
    upstream: grpc
    grpc_web: true
    cors:
      allow_origins: [\"https://shop.example.com\"]
      allow_headers: [authorization]
      max_age: 10m
  - name: passthrough
    match: { grpc: { service: test.Passthrough } }
    upstream: grpc
upstreams:
  - name: grpc
    protocol: h2c
    targets: [{ address: \"{up}\" }]
",
        &[("up", &up)],
    )
}

/// One length-prefixed message frame.
fn frame(m: &Msg) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A body split into its frames: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "cut frame header: {body:?}");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "cut frame: {body:?}");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// The messages and the trailer block of a gRPC-Web answer body.
fn split(body: &[u8]) -> (Vec<Msg>, String) {
    let all = frames(body);
    let (last, messages) = all.split_last().expect("at least the trailer frame");
    assert_eq!(last.0, 0x80, "the last frame carries the trailers");
    assert!(
        messages.iter().all(|(flag, _)| *flag == 0),
        "only the last frame is a trailer frame"
    );
    let msgs = messages
        .iter()
        .map(|(_, m)| Msg::decode(&m[..]).expect("a Msg"))
        .collect();
    (
        msgs,
        String::from_utf8(last.1.clone()).expect("text trailers"),
    )
}

fn web_request(
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> http::Request<support::client::ClientBody> {
    req(Method::POST, path)
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("origin", ORIGIN)
        .body(full(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn binary_unary_call_is_translated_both_ways() {
    let up = GrpcUpstream::spawn().await;
    let gw = TestGateway::start(&config(up.addr())).await;
    let resp = send(
        gw.addr(),
        web_request(
            "/test.Echo/Unary",
            "application/grpc-web+proto",
            frame(&msg(7, b"hello")),
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, http::Version::HTTP_11);
    // tonic answers `application/grpc`: its gRPC-Web form.
    assert_eq!(resp.header("content-type"), Some("application/grpc-web"));
    assert_eq!(resp.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("grpc-status, grpc-message, grpc-status-details-bin")
    );
    let (msgs, trailers) = split(&resp.body);
    assert_eq!(msgs, [msg(7, b"hello")]);
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");

    let seen = up.seen_at("/test.Echo/Unary");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/grpc+proto")
    );
    assert_eq!(seen[0].header("te"), Some("trailers"));
}

#[tokio::test]
async fn text_server_stream_is_translated_both_ways() {
    let up = GrpcUpstream::spawn().await;
    let gw = TestGateway::start(&config(up.addr())).await;
    let request = frame(&Msg {
        count: 3,
        payload: b"abc".to_vec(),
        ..Msg::default()
    });
    // Two base64 runs, each padded, one after the other.
    let text = format!(
        "{}{}",
        STANDARD.encode(&request[..4]),
        STANDARD.encode(&request[4..])
    );
    assert!(text[..8].ends_with('='), "the first run is padded: {text}");
    let resp = send(
        gw.addr(),
        web_request(
            "/test.Echo/ServerStream",
            "application/grpc-web-text",
            text.into_bytes(),
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/grpc-web-text")
    );
    let body = std::str::from_utf8(&resp.body).expect("text");
    assert!(
        !body.trim_end_matches('=').contains('='),
        "one base64 text, padded at the end only: {body}"
    );
    let decoded = STANDARD.decode(body).expect("base64");
    let (msgs, trailers) = split(&decoded);
    assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(msgs.iter().all(|m| m.payload == b"abc"));
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
    assert_eq!(
        up.seen_at("/test.Echo/ServerStream")[0].header("content-type"),
        Some("application/grpc")
    );
}

#[tokio::test]
async fn upstream_errors_reach_the_browser() {
    let up = GrpcUpstream::spawn().await;
    let gw = TestGateway::start(&config(up.addr())).await;
    // An error after replies: in the trailer frame.
    let failing = Msg {
        count: 2,
        fail_code: tonic::Code::Aborted as i32,
        ..Msg::default()
    };
    let resp = send(
        gw.addr(),
        web_request(
            "/test.Echo/ServerStream",
            "application/grpc-web",
            frame(&failing),
        ),
    )
    .await;
    let (msgs, trailers) = split(&resp.body);
    assert_eq!(msgs.len(), 2);
    assert!(trailers.contains("grpc-status: 10\r\n"), "{trailers:?}");
    assert!(
        // As tonic percent-encoded it.
        trailers.contains("grpc-message: stream%20failed%20after%20its%20replies\r\n"),
        "{trailers:?}"
    );

    // A trailers-only error: the status stays in the head.
    let not_found = Msg {
        fail_code: tonic::Code::NotFound as i32,
        ..Msg::default()
    };
    let resp = send(
        gw.addr(),
        web_request(
            "/test.Echo/Unary",
            "application/grpc-web",
            frame(&not_found),
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("5"));
    assert_eq!(resp.header("grpc-message"), Some("failed%20on%20request"));
    assert!(resp.body.is_empty(), "{:?}", resp.body);
    gw.metric_reaches(
        "weir_grpc_responses_total",
        &[("route", "web"), ("grpc_status", "10")],
        1.0,
    )
    .await;
    gw.metric_reaches(
        "weir_grpc_responses_total",
        &[("route", "web"), ("grpc_status", "5")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn weir_errors_are_grpc_web_answers() {
    let up = GrpcUpstream::spawn().await;
    let gw = TestGateway::start(&config(up.addr())).await;
    // No route: UNIMPLEMENTED.
    let resp = send(
        gw.addr(),
        web_request("/test.Other/Call", "application/grpc-web-text", Vec::new()),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    assert_eq!(resp.header("grpc-status"), Some("12"));
    assert!(resp.body.is_empty());

    // The deadline: DEADLINE_EXCEEDED, readable by the page (CORS).
    let slow = Msg {
        delay_ms: 5_000,
        ..Msg::default()
    };
    let mut request = web_request("/test.Echo/Unary", "application/grpc-web", frame(&slow));
    request
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("200m"));
    let t = std::time::Instant::now();
    let resp = send(gw.addr(), request).await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/grpc-web+proto")
    );
    assert_eq!(resp.header("grpc-status"), Some("4"));
    assert_eq!(resp.header("access-control-allow-origin"), Some(ORIGIN));
    let sent = up.seen_at("/test.Echo/Unary")[0].headers["grpc-timeout"].clone();
    assert_ne!(sent, "200m", "the upstream gets the time left");

    // Text that is not base64: the upstream's stream is reset, and the
    // call fails instead of reaching the upstream cut short.
    let resp = send(
        gw.addr(),
        web_request(
            "/test.Echo/Unary",
            "application/grpc-web-text",
            b"!!!!".to_vec(),
        ),
    )
    .await;
    let status = resp.header("grpc-status").expect("a gRPC status");
    assert_ne!(status, "0", "{:?}", resp.headers);
}

#[tokio::test]
async fn cors_preflight_is_answered_by_weir() {
    let up = GrpcUpstream::spawn().await;
    let gw = TestGateway::start(&config(up.addr())).await;
    let preflight = |origin: &str| {
        req(Method::OPTIONS, "/test.Echo/Unary")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web")
            .body(empty())
            .unwrap()
    };
    // The route allows only POST; the preflight still reaches it.
    let resp = send(gw.addr(), preflight(ORIGIN)).await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(resp.header("vary"), Some("origin"));
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout")
    );
    assert_eq!(resp.header("access-control-max-age"), Some("600"));
    assert!(resp.header("x-request-id").is_some());

    let resp = send(gw.addr(), preflight("https://elsewhere.example")).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.json()["code"], "cors_origin_not_allowed");
    assert!(resp.header("access-control-allow-origin").is_none());
    assert!(up.seen().is_empty(), "preflights never reach the upstream");

    // A request from another origin is served without CORS headers.
    let mut other = web_request(
        "/test.Echo/Unary",
        "application/grpc-web",
        frame(&msg(1, b"")),
    );
    other.headers_mut().insert(
        "origin",
        http::HeaderValue::from_static("https://elsewhere.example"),
    );
    let resp = send(gw.addr(), other).await;
    assert_eq!(resp.status, 200);
    assert!(resp.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn without_grpc_web_the_request_goes_through_as_it_came() {
    let up = GrpcUpstream::spawn().await;
    let gw = TestGateway::start(&config(up.addr())).await;
    send(
        gw.addr(),
        web_request(
            "/test.Passthrough/Call",
            "application/grpc-web",
            frame(&msg(1, b"")),
        ),
    )
    .await;
    let seen = up.seen_at("/test.Passthrough/Call");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("content-type"), Some("application/grpc-web"));
}
