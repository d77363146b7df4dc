//! gRPC end to end through weir: a tonic client over h2c to weir, weir over
//! h2c to a tonic server. Every call kind, trailers, deadlines, the gRPC
//! errors weir produces, `match.grpc`, gRPC health checks and the
//! `weir_grpc_responses_total` counter.

mod grpc_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use grpc_support::*;
use http::Method;
use support::*;
use tonic::Code;

/// weir with an h2c-capable listener, an admin listener, and `rest`.
fn config(rest: &str) -> String {
    format!(
        "listeners:
  - name: main
    address: 127.0.0.1:0
    protocols: [http1, h2c]
admin:
  address: 127.0.0.1:0
{rest}"
    )
}

/// One route for all of `test.Echo` to one h2c upstream.
fn echo_route(extra: &str) -> String {
    config(&format!(
        "routes:
  - name: echo
    match: {{ grpc: {{ service: test.Echo }} }}
    upstream: grpc
{extra}upstreams:
  - name: grpc
    protocol: h2c
    targets: [{{ address: \"{{up}}\" }}]
"
    ))
}

async fn start(yaml: &str, up: SocketAddr) -> TestGateway {
    TestGateway::start(&fill(yaml, &[("up", &up)])).await
}

/// A `grpc-timeout` value as a duration.
fn parse_grpc_timeout(v: &str) -> Duration {
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().expect("digits");
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("bad grpc-timeout unit {other:?}"),
    }
}

// === call kinds ===

#[tokio::test]
async fn unary_call_reaches_the_upstream_as_grpc_with_te_trailers() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;

    let reply = client.unary(msg(7, b"hello")).await.expect("call succeeds");
    assert_eq!(reply.get_ref().id, 7);
    assert_eq!(reply.get_ref().payload, b"hello");
    assert!(reply.metadata().get("x-request-id").is_some());

    let seen = up.seen_at("/test.Echo/Unary");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("te"), Some("trailers"));
    assert_eq!(seen[0].header("content-type"), Some("application/grpc"));
    assert!(seen[0].header("x-request-id").is_some());
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn large_messages_pass_both_ways() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    // 8 MiB, far beyond every HTTP/2 window, so it has to stream.
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = within(
        Duration::from_secs(30),
        "8 MiB echo",
        client.unary(msg(1, &big)),
    )
    .await
    .expect("large call");
    assert!(reply.get_ref().payload == big, "payload changed on the way");

    let parts: Vec<Msg> = (0..4u64).map(|i| msg(i, &big[..2 * 1024 * 1024])).collect();
    let total = within(
        Duration::from_secs(30),
        "client stream of 4 x 2 MiB",
        client.client_stream(futures_util::stream::iter(parts)),
    )
    .await
    .expect("client stream");
    assert_eq!(total.get_ref().count, 4);
    assert_eq!(total.get_ref().id, 6);
    assert_eq!(total.get_ref().payload.len(), 8 * 1024 * 1024);
}

#[tokio::test]
async fn server_stream_arrives_message_by_message() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    // The upstream sends one reply and then waits: if weir held the
    // response back, the first reply would never arrive.
    let req = Msg {
        count: 3,
        gated: true,
        payload: b"p".to_vec(),
        ..Msg::default()
    };
    let mut stream = client
        .server_stream(req)
        .await
        .expect("stream")
        .into_inner();
    let first = within(IO_TIMEOUT, "the first reply", stream.next())
        .await
        .expect("a reply")
        .expect("ok");
    assert_eq!(first.id, 0);
    up.open_gate();
    let mut ids = vec![first.id];
    while let Some(m) = within(IO_TIMEOUT, "the next reply", stream.next()).await {
        ids.push(m.expect("ok").id);
    }
    assert_eq!(ids, [0, 1, 2]);
}

#[tokio::test]
async fn client_stream_collects_every_message() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    let msgs = (1..=10u64).map(|i| msg(i, b"x"));
    let total = client
        .client_stream(futures_util::stream::iter(msgs))
        .await
        .expect("client stream");
    assert_eq!(total.get_ref().count, 10);
    assert_eq!(total.get_ref().id, 55);
    assert_eq!(total.get_ref().payload, b"xxxxxxxxxx");
}

#[tokio::test]
async fn bidi_stream_flows_both_ways_at_once() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    let (tx, resp) = client.bidi().await;
    let mut replies = resp.expect("stream opened").into_inner();
    // Ping-pong: each message is sent only after the previous reply came
    // back, which is impossible if either direction is buffered.
    for i in 0..5u64 {
        tx.send(msg(i, b"ping")).await.expect("send");
        let reply = within(IO_TIMEOUT, "the echo", replies.next())
            .await
            .expect("a reply")
            .expect("ok");
        assert_eq!(reply.id, 1000 + i);
    }
    drop(tx);
    let end = within(IO_TIMEOUT, "the end of the stream", replies.next()).await;
    assert!(end.is_none(), "the call ends cleanly: {end:?}");
}

// === trailers ===

#[tokio::test]
async fn error_status_in_trailers_follows_the_messages() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    let req = Msg {
        count: 3,
        fail_code: Code::Aborted as i32,
        ..Msg::default()
    };
    let mut stream = client
        .server_stream(req)
        .await
        .expect("stream")
        .into_inner();
    let mut got = 0;
    let status = loop {
        match within(IO_TIMEOUT, "the stream", stream.next()).await {
            Some(Ok(_)) => got += 1,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without its error status"),
        }
    };
    assert_eq!(got, 3);
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stream failed after its replies");
}

#[tokio::test]
async fn trailers_only_error_from_the_upstream_passes_through() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    let req = Msg {
        fail_code: Code::NotFound as i32,
        ..Msg::default()
    };
    let status = client.unary(req).await.expect_err("the upstream fails it");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "failed on request");
}

// === deadlines ===

#[tokio::test]
async fn grpc_timeout_is_the_deadline_and_is_passed_on_reduced() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    // Warm the connections so the measured call spends no time on them.
    client.unary(msg(0, b"")).await.expect("warm-up");

    let mut req = tonic::Request::new(Msg {
        delay_ms: 5_000,
        ..Msg::default()
    });
    req.set_timeout(Duration::from_millis(200));
    let t = Instant::now();
    let status = within(IO_TIMEOUT, "the slow call", client.unary_with(req))
        .await
        .expect_err("the deadline passes");
    let took = t.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().starts_with("upstream_timeout"),
        "weir ended it: {status:?}"
    );
    assert!(
        took >= Duration::from_millis(180) && took < Duration::from_millis(1500),
        "took {took:?}"
    );

    let seen = up.seen_at("/test.Echo/Unary");
    let sent = seen
        .last()
        .unwrap()
        .header("grpc-timeout")
        .expect("passed on");
    let left = parse_grpc_timeout(sent);
    assert!(
        left < Duration::from_millis(200) && left > Duration::from_millis(100),
        "the upstream was given {sent}"
    );
    // The first call carried no deadline, and none was invented for it.
    assert_eq!(seen[0].header("grpc-timeout"), None);
}

#[tokio::test]
async fn deadline_mid_stream_ends_the_call_with_deadline_exceeded() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    // One reply, then the upstream waits for a gate that never opens.
    let mut req = tonic::Request::new(Msg {
        count: 2,
        gated: true,
        ..Msg::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let mut stream = client
        .grpc_server_stream(req)
        .await
        .expect("stream")
        .into_inner();
    let first = within(IO_TIMEOUT, "the first reply", stream.next()).await;
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    let end = within(IO_TIMEOUT, "the end of the call", stream.next()).await;
    let status = match end {
        Some(Err(status)) => status,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

// === errors weir produces ===

#[tokio::test]
async fn weir_errors_are_grpc_statuses() {
    let up = GrpcUpstream::spawn().await;
    let down = closed_port();
    let yaml = config(&format!(
        "routes:
  - name: echo
    match: {{ grpc: {{ service: test.Echo, method: Unary }} }}
    upstream: grpc
  - name: limited
    match: {{ grpc: {{ service: test.Limited }} }}
    upstream: grpc
    rate_limit: {{ requests: 1, per: 1h }}
  - name: down
    match: {{ grpc: {{ service: test.Down }} }}
    upstream: down
  - name: chaos
    match: {{ grpc: {{ service: test.Chaos }} }}
    upstream: grpc
    fault: {{ abort: {{ status: 503, percent: 100 }} }}
upstreams:
  - name: grpc
    protocol: h2c
    targets: [{{ address: \"{{up}}\" }}]
  - name: down
    protocol: h2c
    targets: [{{ address: \"{down}\" }}]
"
    ));
    let gw = start(&yaml, up.addr()).await;
    let client = EchoClient::connect(gw.addr()).await;
    let call = |path: &'static str| {
        let mut c = client.clone();
        async move {
            c.call_unary(path, tonic::Request::new(msg(1, b"")))
                .await
                .expect_err("weir fails it")
        }
    };

    let s = call("/test.Echo/Missing").await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    assert!(s.message().starts_with("route_not_found: "), "{s:?}");

    let s = call("/test.Down/Call").await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().starts_with("upstream_connect_failed"), "{s:?}");

    let s = call("/test.Chaos/Call").await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().starts_with("fault_injected"), "{s:?}");

    // The first call on the limited route spends the bucket (and the
    // upstream answers UNIMPLEMENTED itself); the second is refused.
    let first = call("/test.Limited/Call").await;
    assert_eq!(
        first.code(),
        Code::Unimplemented,
        "from the upstream: {first:?}"
    );
    let s = call("/test.Limited/Call").await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().starts_with("rate_limited"), "{s:?}");

    // On the wire: HTTP 200, a gRPC content type, the status in the head
    // and nothing else (trailers-only), percent-encoded message.
    let mut h2 = H2Client::connect(gw.addr()).await.expect("h2");
    let resp = h2
        .request(
            req(Method::POST, "/test.Nothing/Here?x=%C3%A9")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(full(vec![0u8, 0, 0, 0, 0]))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(resp.header("grpc-status"), Some("12"));
    let message = resp.header("grpc-message").expect("grpc-message");
    assert!(message.starts_with("route_not_found: no route matches POST /test.Nothing/Here"));
    assert!(resp.body.is_empty());

    // A plain request still gets problem+json.
    let plain = get(gw.addr(), "/nothing").await;
    assert_eq!(plain.status, 404);
    assert_eq!(
        plain.header("content-type"),
        Some("application/problem+json")
    );
}

#[test]
fn every_error_code_maps_to_the_documented_grpc_status() {
    use weir::proxy::ProxyError;
    // The table in docs/protocols.md must say what the code does.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocols.md"))
        .expect("docs/protocols.md");
    let errors = [
        ProxyError::route_not_found("POST", "h", "/a.B/C"),
        ProxyError::not_implemented("x"),
        ProxyError::bad_request("x"),
        ProxyError::client_cert_forbidden("POST", "/a.B/C"),
        ProxyError::cors_origin_not_allowed("r"),
        ProxyError::connect_failed("x"),
        ProxyError::reset("x"),
        ProxyError::no_healthy_upstream("u"),
        ProxyError::circuit_open("u", "max_requests"),
        ProxyError::timeout("x"),
        ProxyError::rate_limited("x"),
        ProxyError::body_too_large(1),
        ProxyError::header_too_large(1),
        ProxyError::uri_too_long(1),
        ProxyError::body_idle_timeout(std::time::Duration::from_secs(1)),
    ];
    for e in errors {
        let row = format!("| `{}` |", e.code);
        let line = doc
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no row for {} in docs/protocols.md", e.code));
        let status = format!("| {} ", e.grpc_status());
        assert!(
            line.contains(&status),
            "{}: code says {status}, doc: {line}",
            e.code
        );
    }
    let expected = [
        ("route_not_found", 12),
        ("upstream_connect_failed", 14),
        ("circuit_open", 14),
        ("upstream_timeout", 4),
        ("rate_limited", 8),
    ];
    for (code, status) in expected {
        let line = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{code}` |")))
            .unwrap();
        assert!(line.contains(&format!("| {status} ")), "{line}");
    }
    // fault_injected follows the HTTP status it was given.
    let fault = |s: u16| ProxyError::fault_injected(http::StatusCode::from_u16(s).unwrap());
    assert_eq!(fault(503).grpc_status(), 14);
    assert_eq!(fault(429).grpc_status(), 14);
    assert_eq!(fault(404).grpc_status(), 12);
    assert_eq!(fault(401).grpc_status(), 16);
    assert_eq!(fault(500).grpc_status(), 2);
}

// === routing ===

#[tokio::test]
async fn grpc_match_routes_by_service_and_method() {
    let a = GrpcUpstream::spawn().await;
    let b = GrpcUpstream::spawn().await;
    // The service-wide route comes first in the file; the method route
    // still wins, as an exact path beats a prefix.
    let yaml = config(
        "routes:
  - name: service
    match: { grpc: { service: test.Echo } }
    upstream: b
  - name: method
    match: { grpc: { service: test.Echo, method: Unary } }
    upstream: a
upstreams:
  - name: a
    protocol: h2c
    targets: [{ address: \"{a}\" }]
  - name: b
    protocol: h2c
    targets: [{ address: \"{b}\" }]
",
    );
    let gw = TestGateway::start(&fill(&yaml, &[("a", &a.addr()), ("b", &b.addr())])).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    client.unary(msg(1, b"")).await.expect("unary");
    let total = client
        .client_stream(futures_util::stream::iter([msg(1, b"")]))
        .await
        .expect("client stream");
    assert_eq!(total.get_ref().count, 1);
    assert_eq!(a.seen().len(), 1);
    assert_eq!(a.seen()[0].path, "/test.Echo/Unary");
    assert_eq!(b.seen().len(), 1);
    assert_eq!(b.seen()[0].path, "/test.Echo/ClientStream");

    let routes = gw.admin_get("/routes").await.json();
    let method = routes
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "method"))
        .expect("method route")
        .clone();
    assert_eq!(method["order"], 1);
    assert_eq!(method["match"]["grpc"]["service"], "test.Echo", "{method}");
    assert_eq!(method["match"]["grpc"]["method"], "Unary", "{method}");
    let first = &routes[0];
    assert_eq!(first["name"], "method", "precedence: {routes}");
}

// === health checks ===

#[tokio::test]
async fn grpc_health_check_takes_a_target_out_and_brings_it_back() {
    let up = GrpcUpstream::spawn().await;
    let yaml = echo_route("").replace(
        "    protocol: h2c\n",
        "    protocol: h2c\n    health_check: { type: grpc, interval: 50ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }\n",
    );
    let gw = start(&yaml, up.addr()).await;
    let addr = up.addr().to_string();
    let state = |gw: &TestGateway| {
        let gw_admin = gw.admin();
        let addr = addr.clone();
        async move {
            let doc = get(gw_admin, "/upstreams").await.json();
            let target = doc[0]["targets"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["address"] == addr))
                .cloned()
                .unwrap_or_default();
            (
                target["health"]["healthy"].as_bool(),
                target["health"]["checks"].as_u64().unwrap_or(0),
                target["health"]["last_failure"].clone(),
            )
        }
    };
    eventually(IO_TIMEOUT, "a passing check", || async {
        let (healthy, checks, _) = state(&gw).await;
        healthy == Some(true) && checks >= 1
    })
    .await;
    let checks = up.seen_at("/grpc.health.v1.Health/Check");
    assert!(!checks.is_empty());
    assert_eq!(checks[0].header("content-type"), Some("application/grpc"));
    assert_eq!(checks[0].header("te"), Some("trailers"));

    up.set_health(NOT_SERVING);
    eventually(IO_TIMEOUT, "the target taken out", || async {
        state(&gw).await.0 == Some(false)
    })
    .await;
    let (_, _, failure) = state(&gw).await;
    assert_eq!(failure, "not serving (NOT_SERVING)");
    let mut client = EchoClient::connect(gw.addr()).await;
    let s = client.unary(msg(1, b"")).await.expect_err("no target");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().starts_with("no_healthy_upstream"), "{s:?}");

    up.set_health(SERVING);
    eventually(IO_TIMEOUT, "the target back", || async {
        state(&gw).await.0 == Some(true)
    })
    .await;
    client.unary(msg(1, b"")).await.expect("served again");
}

// === metrics ===

#[tokio::test]
async fn grpc_statuses_are_counted_per_route() {
    let up = GrpcUpstream::spawn().await;
    let gw = start(&echo_route(""), up.addr()).await;
    let mut client = EchoClient::connect(gw.addr()).await;
    client.unary(msg(1, b"")).await.expect("ok");
    client.unary(msg(2, b"")).await.expect("ok");
    let nf = Msg {
        fail_code: Code::NotFound as i32,
        ..Msg::default()
    };
    client.unary(nf).await.expect_err("not found");
    let aborted = Msg {
        count: 2,
        fail_code: Code::Aborted as i32,
        ..Msg::default()
    };
    let mut stream = client
        .server_stream(aborted)
        .await
        .expect("stream")
        .into_inner();
    while let Some(Ok(_)) = stream.next().await {}
    let unrouted = client
        .call_unary("/other.Svc/Call", tonic::Request::new(msg(1, b"")))
        .await
        .expect_err("no route");
    assert_eq!(unrouted.code(), Code::Unimplemented);

    let name = "weir_grpc_responses_total";
    gw.metric_reaches(name, &[("route", "echo"), ("grpc_status", "0")], 2.0)
        .await;
    gw.metric_reaches(name, &[("route", "echo"), ("grpc_status", "5")], 1.0)
        .await;
    gw.metric_reaches(name, &[("route", "echo"), ("grpc_status", "10")], 1.0)
        .await;
    gw.metric_reaches(name, &[("route", ""), ("grpc_status", "12")], 1.0)
        .await;
    // Plain HTTP requests are not counted as gRPC.
    get(gw.addr(), "/plain").await;
    let text = gw.metrics().await;
    assert_eq!(metric(&text, name, &[]), Some(5.0), "{text}");
}
