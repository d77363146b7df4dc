//! Resilience of the forward stage, seen from the client: retries (which
//! failures, which requests, which bodies, how many, and the budget that caps
//! them), per-try, request and idle timeouts, deadline propagation from the
//! client's own timeout headers, and the per-upstream circuit breaker.
//!
//! This file only drives weir through sockets and reads its metrics, admin
//! API and access log; it does not reach into weir's internals.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body::Frame;
use http_body_util::BodyExt;
use support::*;

/// Upstream `up` with one target.
const ONE_TARGET: &str = "    targets: [{ address: \"{up}\" }]\n";

/// A route's `retry` block with `extra` keys and a backoff short enough not
/// to slow the suite down.
fn retry(extra: &str) -> String {
    format!("    retry: {{ backoff: {{ base: 1ms, max: 2ms }}{extra} }}\n")
}

/// One route `api` (every path) with the keys `route` to upstream `up` with
/// the keys `upstream` (targets included), plus an access log at `log`.
fn config(route: &str, upstream: &str, log: Option<&TempPath>) -> String {
    let log = log.map_or(String::new(), |l| {
        format!("access_log:\n  enabled: true\n  path: \"{}\"\n", l.as_str())
    });
    format!("{log}routes:\n  - name: api\n    upstream: up\n{route}upstreams:\n  - name: up\n{upstream}")
}

/// weir in front of `up` alone.
async fn gateway(
    route: &str,
    upstream: &str,
    up: &Upstream,
    log: Option<&TempPath>,
) -> TestGateway {
    TestGateway::with(&config(route, upstream, log), &[("up", &up.addr())]).await
}

/// The value of counter `name{labels}` now (0 when absent).
async fn counter(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

/// `weir_retries_total` of route `api`.
async fn retries(gw: &TestGateway) -> f64 {
    counter(gw, "weir_retries_total", &[("route", "api")]).await
}

/// The `code` of a problem document from weir.
fn code_of(resp: &TestResponse) -> String {
    let doc = resp.json();
    doc["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {doc}"))
        .to_owned()
}

/// `n` bytes of readable, position-dependent text.
fn text_body(n: usize) -> String {
    (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// A request body whose length is not known in advance, so the client
/// sends it chunked.
struct Unsized(Option<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

/// The only access-log line, once written.
async fn only_log_line(log: &TempPath) -> serde_json::Value {
    let lines = access_log_lines(log, 1).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    lines[0].clone()
}

// === retries ===

#[tokio::test]
async fn get_answered_503_is_retried_and_succeeds() {
    let log = TempPath::new("retry-503");
    let up = Upstream::http1().then(Reply::status(503)).spawn().await;
    let gw = gateway(&retry(", attempts: 2"), ONE_TARGET, &up, Some(&log)).await;

    let resp = get(gw.addr(), "/items/1").await;
    assert_eq!(resp.echoed().path, "/items/1");
    assert_eq!(up.request_count(), 2, "tries seen by the upstream");
    assert_eq!(retries(&gw).await, 1.0);
    let line = only_log_line(&log).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["attempts"], 2, "{line}");
}

#[tokio::test]
async fn connect_failure_is_retried_on_the_other_target() {
    let live = Upstream::echo().await;
    let targets = "    load_balancing: round_robin
    targets:
      - address: \"{dead}\"
      - address: \"{up}\"
";
    let gw = TestGateway::with(
        &config(&retry(""), targets, None),
        &[("dead", &closed_port()), ("up", &live.addr())],
    )
    .await;

    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..6 {
        let resp = c.get(&format!("/n/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(live.request_count(), 6);
    // Round robin sends some first tries to the closed port.
    let n = retries(&gw).await;
    assert!((1.0..=6.0).contains(&n), "{n} retries");
}

#[tokio::test]
async fn reset_before_a_response_is_retried() {
    let up = Upstream::http1()
        .then(Reply::close_without_response())
        .spawn()
        .await;
    let gw = gateway(&retry(""), ONE_TARGET, &up, None).await;

    let resp = get(gw.addr(), "/r").await;
    assert_eq!(resp.echoed().path, "/r");
    assert_eq!(up.request_count(), 2);
    assert_eq!(retries(&gw).await, 1.0);
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key_and_resends_the_whole_body() {
    let up = Upstream::http1().then(Reply::status(503)).spawn().await;
    let gw = gateway(&retry(", attempts: 2"), ONE_TARGET, &up, None).await;
    let body = text_body(20_000);

    let plain = send(
        gw.addr(),
        req(Method::POST, "/orders")
            .body(full(body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(plain.status, 503, "{}", plain.text());
    assert_eq!(up.request_count(), 1, "a POST without a key is tried once");

    up.queue(Reply::status(503));
    let keyed = send(
        gw.addr(),
        req(Method::POST, "/orders")
            .header("idempotency-key", "order-42")
            .body(full(body.clone()))
            .unwrap(),
    )
    .await;
    let echoed = keyed.echoed();
    assert_eq!(up.request_count(), 3, "the keyed POST is tried twice");
    assert_eq!(echoed.body_len, body.len());
    assert_eq!(echoed.body, body, "the retry carries the whole body");
    assert_eq!(echoed.header("idempotency-key"), Some("order-42"));
    assert_eq!(up.echoed_bodies(), vec![Bytes::from(body)]);
    assert_eq!(retries(&gw).await, 1.0);
}

#[tokio::test]
async fn bodies_over_max_body_or_of_unknown_length_are_tried_once() {
    let up = Upstream::echo().await;
    let gw = gateway(&retry(", max_body: 1KiB"), ONE_TARGET, &up, None).await;
    let keyed = |body: client::ClientBody| {
        req(Method::POST, "/upload")
            .header("idempotency-key", "k")
            .body(body)
            .unwrap()
    };

    // Over the limit: streamed, tried once.
    up.queue(Reply::status(503));
    let big = send(gw.addr(), keyed(full(text_body(4096)))).await;
    assert_eq!(big.status, 503, "{}", big.text());
    assert_eq!(up.request_count(), 1);

    // No Content-Length: weir cannot know it fits, so it is not kept.
    up.queue(Reply::status(503));
    let chunked = Unsized(Some(Bytes::from(text_body(100)))).boxed();
    let no_length = send(gw.addr(), keyed(chunked)).await;
    assert_eq!(no_length.status, 503, "{}", no_length.text());
    assert_eq!(up.request_count(), 2);

    // Within the limit: retried, which shows the route does retry.
    up.queue(Reply::status(503));
    let small = send(gw.addr(), keyed(full(text_body(512)))).await;
    assert_eq!(small.echoed().body_len, 512);
    assert_eq!(up.request_count(), 4);
    assert_eq!(retries(&gw).await, 1.0);
}

#[tokio::test]
async fn exhausted_attempts_return_the_last_upstream_answer() {
    let log = TempPath::new("retry-exhausted");
    let mut builder = Upstream::http1();
    for n in 1..=3 {
        builder =
            builder.then(Reply::text(503, format!("try {n}")).header("x-try", &n.to_string()));
    }
    let up = builder.spawn().await;
    let gw = gateway(&retry(", attempts: 3"), ONE_TARGET, &up, Some(&log)).await;

    let resp = get(gw.addr(), "/x").await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-try"), Some("3"), "{}", resp.text());
    assert_eq!(resp.text(), "try 3");
    assert_eq!(up.request_count(), 3, "exactly `attempts` tries");
    assert_eq!(retries(&gw).await, 2.0);
    let line = only_log_line(&log).await;
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["attempts"], 3, "{line}");
}

#[tokio::test]
async fn a_try_past_its_per_try_timeout_is_retried() {
    let up = Upstream::http1()
        .then(Reply::echo().delay(Duration::from_secs(10)))
        .spawn()
        .await;
    let route = retry(", attempts: 2, on: [timeout], per_try_timeout: 300ms");
    let gw = gateway(&route, ONE_TARGET, &up, None).await;

    let t = Instant::now();
    let resp = get(gw.addr(), "/slow-then-fast").await;
    let elapsed = t.elapsed();
    assert_eq!(resp.echoed().path, "/slow-then-fast");
    assert_eq!(up.request_count(), 2);
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}; the stalled try would take 10 s"
    );
    assert_eq!(retries(&gw).await, 1.0);
}

#[tokio::test]
async fn retry_budget_caps_retries_when_everything_fails() {
    let up = Upstream::http1()
        .default_reply(Reply::status(503))
        .spawn()
        .await;
    // ratio 0, one per second over the 10 s window: 10 retries in all.
    let route = retry(", attempts: 2, budget: { ratio: 0, min_per_second: 1 }");
    let gw = gateway(&route, ONE_TARGET, &up, None).await;

    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..30 {
        let resp = c.get(&format!("/b/{i}")).await;
        assert_eq!(resp.status, 503, "request {i}");
    }
    let retried = retries(&gw).await;
    let refused = counter(
        &gw,
        "weir_retry_budget_exhausted_total",
        &[("route", "api")],
    )
    .await;
    assert!((1.0..=11.0).contains(&retried), "{retried} retries");
    assert!(refused > 0.0, "the budget was never exhausted");
    // Every request failed its first try: each was either retried or refused.
    assert_eq!(retried + refused, 30.0);
    assert_eq!(up.request_count(), 30 + retried as usize);
}

// === deadlines ===

/// A `grpc-timeout` value (`<digits><unit>`) as a duration.
fn grpc_duration(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("bad grpc-timeout {value:?}"));
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad grpc-timeout unit in {value:?}"),
    }
}

#[tokio::test]
async fn client_deadlines_are_forwarded_as_the_remaining_budget() {
    let up = Upstream::echo().await;
    let gw = gateway("    timeouts: { request: 60s }\n", ONE_TARGET, &up, None).await;
    let mut c = H1Client::connect(gw.addr()).await;

    let ms = c
        .request(
            req(Method::GET, "/d")
                .header("x-request-timeout", "5000")
                .body(empty())
                .unwrap(),
        )
        .await
        .echoed();
    let seen = ms
        .header("x-request-timeout")
        .expect("x-request-timeout upstream");
    let left: u64 = seen.parse().unwrap_or_else(|_| panic!("not ms: {seen:?}"));
    assert!(
        left > 0 && left < 5000,
        "upstream got x-request-timeout {seen}"
    );

    let grpc = c
        .request(
            req(Method::GET, "/d")
                .header("grpc-timeout", "3S")
                .body(empty())
                .unwrap(),
        )
        .await
        .echoed();
    let seen = grpc.header("grpc-timeout").expect("grpc-timeout upstream");
    let left = grpc_duration(seen);
    assert!(
        !left.is_zero() && left < Duration::from_secs(3),
        "upstream got grpc-timeout {seen}"
    );
    assert_eq!(
        grpc.header("x-request-timeout"),
        None,
        "no header is invented"
    );

    let plain = c.get("/d").await.echoed();
    assert_eq!(plain.header("x-request-timeout"), None);
    assert_eq!(plain.header("grpc-timeout"), None);
}

#[tokio::test]
async fn a_short_client_deadline_ends_a_slow_exchange_with_504() {
    let up = Upstream::http1()
        .latency(Duration::from_secs(5))
        .spawn()
        .await;
    let gw = gateway("    timeouts: { request: 60s }\n", ONE_TARGET, &up, None).await;

    let t = Instant::now();
    let resp = send(
        gw.addr(),
        req(Method::GET, "/slow")
            .header("x-request-timeout", "200")
            .body(empty())
            .unwrap(),
    )
    .await;
    let elapsed = t.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert_eq!(code_of(&resp), "upstream_timeout");
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}; client deadline 200ms, upstream 5 s"
    );
}

#[tokio::test]
async fn idle_timeout_cuts_a_body_that_stops_flowing() {
    let log = TempPath::new("idle");
    let up = Upstream::http1()
        .route("/stall", Reply::stall(100_000, 1_000))
        .spawn()
        .await;
    let gw = gateway(
        "    timeouts: { idle: 300ms }\n",
        ONE_TARGET,
        &up,
        Some(&log),
    )
    .await;

    let mut c = H1Client::connect(gw.addr()).await;
    let resp = c
        .send(req(Method::GET, "/stall").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 200);
    let read = within(IO_TIMEOUT, "the cut body", resp.into_body().collect()).await;
    if let Ok(body) = read {
        let got = body.to_bytes().len();
        assert!(got < 100_000, "the whole body arrived ({got} bytes)");
    }
    let line = only_log_line(&log).await;
    assert_eq!(line["error_code"], "upstream_idle_timeout", "{line}");
}

// === circuit breaker ===

/// The admin view of upstream `up`'s circuit breaker.
async fn breaker_counts(gw: &TestGateway) -> serde_json::Value {
    let doc = gw.admin_get("/upstreams").await.json();
    let up = doc
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "up"))
        .unwrap_or_else(|| panic!("no upstream up in {doc}"));
    up["circuit_breaker"].clone()
}

/// Starts a GET of `/slow` in the background and waits until the upstream
/// holds it.
async fn hold_one_request(
    gw: &TestGateway,
    up: &Upstream,
) -> tokio::task::JoinHandle<TestResponse> {
    let addr = gw.addr();
    let first = tokio::spawn(async move { get(addr, "/slow").await });
    eventually(IO_TIMEOUT, "the upstream to hold the slow request", || {
        std::future::ready(up.request_count() == 1)
    })
    .await;
    first
}

fn slow_upstream() -> support::upstream::UpstreamBuilder {
    Upstream::http1().route("/slow", Reply::echo().delay(Duration::from_secs(2)))
}

#[tokio::test]
async fn max_requests_refuses_the_excess_at_once_and_recovers() {
    let up = slow_upstream().spawn().await;
    let upstream = format!("    circuit_breaker: {{ max_requests: 1 }}\n{ONE_TARGET}");
    let gw = gateway("", &upstream, &up, None).await;

    let first = hold_one_request(&gw, &up).await;
    assert_eq!(breaker_counts(&gw).await["requests"], 1);
    let second = get(gw.addr(), "/fast").await;
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(code_of(&second), "circuit_open");
    assert!(
        !first.is_finished(),
        "the refusal waited for the request in flight"
    );
    assert_eq!(
        up.request_count(),
        1,
        "the refused request reached the upstream"
    );
    let open = counter(
        &gw,
        "weir_circuit_open_total",
        &[("upstream", "up"), ("limit", "max_requests")],
    )
    .await;
    assert!(
        open >= 1.0,
        "weir_circuit_open_total{{limit=max_requests}} = {open}"
    );

    let done = within(IO_TIMEOUT, "the slow request", first).await.unwrap();
    assert_eq!(done.echoed().path, "/slow");
    eventually(IO_TIMEOUT, "the request slot to be released", || async {
        breaker_counts(&gw).await["requests"] == 0
    })
    .await;
    assert_eq!(get(gw.addr(), "/fast").await.echoed().path, "/fast");
}

#[tokio::test]
async fn max_connections_refuses_a_request_that_needs_a_new_connection() {
    let up = slow_upstream().spawn().await;
    let upstream = format!("    circuit_breaker: {{ max_connections: 1 }}\n{ONE_TARGET}");
    let gw = gateway("", &upstream, &up, None).await;

    // The held request owns the only connection; the next one, on another
    // client connection, would need a second.
    let first = hold_one_request(&gw, &up).await;
    let second = get(gw.addr(), "/fast").await;
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(code_of(&second), "circuit_open");
    assert!(
        !first.is_finished(),
        "the refusal waited for the request in flight"
    );
    let text = gw.metrics().await;
    let by_limit = |limit| {
        metric(
            &text,
            "weir_circuit_open_total",
            &[("upstream", "up"), ("limit", limit)],
        )
        .unwrap_or(0.0)
    };
    assert!(
        by_limit("max_connections") + by_limit("max_pending") >= 1.0,
        "no connection-side refusal counted:\n{text}"
    );
    assert_eq!(by_limit("max_requests"), 0.0);

    // Once free, the one connection serves the next request.
    assert_eq!(
        within(IO_TIMEOUT, "the slow request", first)
            .await
            .unwrap()
            .status,
        200
    );
    eventually(IO_TIMEOUT, "the connection to be idle again", || async {
        breaker_counts(&gw).await["requests"] == 0
    })
    .await;
    assert_eq!(get(gw.addr(), "/fast").await.status, 200);
    assert_eq!(up.connections(), 1, "upstream connections opened");
}
