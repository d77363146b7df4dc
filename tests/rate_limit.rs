//! Route rate limits end to end: the burst a fresh key may spend, the 429
//! problem document with `Retry-After` and the `RateLimit` headers, per-key
//! and per-route buckets, refill, and the Redis backend shared by several
//! gateways, including what happens while Redis is down and after it comes
//! back. The Redis client itself is covered in `redis_store.rs`.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::Duration;

use http::Method;
use redis_support::RedisServer;
use support::*;

/// Deadline for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(10);

/// One route `name` on `prefix` to upstream `up`, limited by `rate_limit`
/// (a YAML flow mapping).
fn route(name: &str, prefix: &str, rate_limit: &str) -> String {
    format!(
        "  - name: {name}
    match: {{ path_prefix: {prefix} }}
    upstream: up
    rate_limit: {rate_limit}
"
    )
}

/// A config body (after `BASE`): optional top-level blocks, then `routes`,
/// then the upstream `up`.
fn config(top: &str, routes: &[String]) -> String {
    format!(
        "{top}routes:
{}upstreams:
  - name: up
    targets:
      - address: \"{{up}}\"
",
        routes.concat()
    )
}

/// A gateway with the single route `api` on `/api` limited by `rate_limit`.
async fn gateway(up: &Upstream, top: &str, rate_limit: &str) -> TestGateway {
    TestGateway::with(
        &config(top, &[route("api", "/api", rate_limit)]),
        &[("up", &up.addr())],
    )
    .await
}

/// The top-level `redis` block for `url`.
fn redis_block(url: &str) -> String {
    format!("redis: {{ url: \"{url}\", timeout: 100ms }}\n")
}

/// `r` and `t` of a `RateLimit` header: `"default";r=<remaining>;t=<secs>`.
fn rate_state(resp: &TestResponse) -> (u64, u64) {
    let value = resp
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no ratelimit header: {:?}", resp.headers));
    let mut parts = value.split(';');
    assert_eq!(parts.next(), Some("\"default\""), "{value}");
    let mut field = |name: &str| -> u64 {
        let part = parts.next().unwrap_or_else(|| panic!("{value}"));
        let number = part
            .strip_prefix(name)
            .and_then(|p| p.strip_prefix('='))
            .unwrap_or_else(|| panic!("expected {name}= in {value}"));
        number
            .parse()
            .unwrap_or_else(|e| panic!("{name} in {value}: {e}"))
    };
    let r = field("r");
    let t = field("t");
    assert_eq!(parts.next(), None, "{value}");
    (r, t)
}

/// Checks that `resp` is weir's 429 `rate_limited` answer and returns its
/// `Retry-After` seconds.
fn assert_rate_limited(resp: &TestResponse) -> u64 {
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let doc = resp.json();
    assert_eq!(doc["code"], "rate_limited", "{doc}");
    assert_eq!(doc["status"], 429, "{doc}");
    assert_eq!(doc["type"], "urn:weir:error:rate_limited", "{doc}");
    for field in ["title", "detail"] {
        assert!(
            doc[field].as_str().is_some_and(|t| !t.is_empty()),
            "{field}: {doc}"
        );
    }
    assert_eq!(
        doc["request_id"].as_str(),
        resp.header("x-request-id"),
        "{doc}"
    );
    let retry_after: u64 = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("no retry-after: {:?}", resp.headers))
        .parse()
        .expect("retry-after in whole seconds");
    assert!(retry_after >= 1, "retry-after {retry_after}");
    assert_eq!(rate_state(resp).0, 0, "a refusal has nothing remaining");
    retry_after
}

/// One sample of `name` for `labels`, 0 when weir has not exported it.
async fn counter(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

/// GET `path` with `x-api-key: key`, or without the header.
async fn get_as(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> TestResponse {
    let mut request = req(Method::GET, path);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    send(addr, request.body(empty()).unwrap()).await
}

#[tokio::test]
async fn rejects_after_the_burst_is_spent_without_reaching_the_upstream() {
    let log = TempPath::new("rate-limit-access");
    let up = Upstream::echo().await;
    let top = format!(
        "access_log:\n  enabled: true\n  path: \"{}\"\n",
        log.as_str()
    );
    let gw = gateway(
        &up,
        &top,
        "{ requests: 3, per: 1m, burst: 2, key: route, backend: local }",
    )
    .await;
    let mut client = H1Client::connect(gw.addr()).await;

    // 3 + 2 back to back; at 20 s per request nothing refills meanwhile.
    for i in 1..=5 {
        let resp = client.get("/api/x").await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let refused = client.get("/api/x").await;
    let retry_after = assert_rate_limited(&refused);
    assert!(retry_after <= 20, "one request costs 20 s: {retry_after}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"default\";q=3;w=60")
    );
    let (_, reset) = rate_state(&refused);
    assert!((1..=100).contains(&reset), "5 requests of 20 s: t={reset}");

    assert_eq!(up.request_count(), 5, "the refused request was forwarded");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "weir_rate_limited_total", &[("route", "api")]),
        Some(1.0)
    );

    let lines = access_log_lines(&log, 6).await;
    let id = refused.header("x-request-id").expect("x-request-id");
    let line = lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"));
    assert_eq!(line["status"], 429, "{line}");
    assert_eq!(line["error_code"], "rate_limited", "{line}");
    assert_eq!(line["attempts"], 0, "{line}");
    assert_eq!(line["route"], "api", "{line}");
}

#[tokio::test]
async fn remaining_counts_down_on_every_admitted_response() {
    let up = Upstream::echo().await;
    let gw = gateway(&up, "", "{ requests: 3, per: 1m, burst: 2, key: route }").await;
    let mut client = H1Client::connect(gw.addr()).await;

    let mut seen = Vec::new();
    for _ in 0..5 {
        let resp = client.get("/api/x").await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"default\";q=3;w=60")
        );
        assert_eq!(resp.header("retry-after"), None, "only refusals carry it");
        let (remaining, reset) = rate_state(&resp);
        assert!((1..=100).contains(&reset), "t={reset}");
        seen.push(remaining);
    }
    assert_eq!(seen, [4, 3, 2, 1, 0]);
}

// A route with fault injection admits through the stage's waiting path
// (a delay may come first); its rate limit must count and answer the same.
#[tokio::test]
async fn a_route_with_fault_injection_keeps_its_rate_limit() {
    let up = Upstream::echo().await;
    let route = "  - name: api
    match: { path_prefix: /api }
    upstream: up
    fault: { delay: { duration: 20ms, percent: 100 } }
    rate_limit: { requests: 2, per: 1m, key: \"header:X-Api-Key\" }
"
    .to_string();
    let gw = TestGateway::with(&config("", &[route]), &[("up", &up.addr())]).await;

    for expected in [1, 0] {
        let resp = get_as(gw.addr(), "/api/x", Some("k1")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"default\";q=2;w=60")
        );
        assert_eq!(rate_state(&resp).0, expected);
    }
    assert_rate_limited(&get_as(gw.addr(), "/api/x", Some("k1")).await);
    // Another key has its own bucket.
    let other = get_as(gw.addr(), "/api/x", Some("k2")).await;
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(rate_state(&other).0, 1);
    assert_eq!(
        up.requests().len(),
        3,
        "the refused request never reached the upstream"
    );
    assert_eq!(
        counter(
            &gw,
            "weir_faults_injected_total",
            &[("route", "api"), ("kind", "delay")]
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn header_keys_have_independent_buckets_and_a_missing_header_shares_one() {
    let up = Upstream::echo().await;
    let gw = gateway(
        &up,
        "",
        "{ requests: 2, per: 1m, key: \"header:X-Api-Key\" }",
    )
    .await;
    let addr = gw.addr();

    for _ in 0..2 {
        assert_eq!(get_as(addr, "/api/x", Some("alice")).await.status, 200);
    }
    assert_rate_limited(&get_as(addr, "/api/x", Some("alice")).await);

    // Bob's allowance is whole although alice's is spent.
    let bob = get_as(addr, "/api/x", Some("bob")).await;
    assert_eq!(bob.status, 200);
    assert_eq!(rate_state(&bob).0, 1);
    assert_eq!(get_as(addr, "/api/x", Some("bob")).await.status, 200);
    assert_rate_limited(&get_as(addr, "/api/x", Some("bob")).await);

    // Without the header every request counts against one bucket, whichever
    // connection it comes on.
    assert_eq!(get_as(addr, "/api/x", None).await.status, 200);
    assert_eq!(get_as(addr, "/api/x", None).await.status, 200);
    assert_rate_limited(&get_as(addr, "/api/x", None).await);
    // An empty value is not a way around it either.
    assert_rate_limited(&get_as(addr, "/api/x", Some("")).await);

    assert_eq!(up.request_count(), 6);
    assert_eq!(
        counter(&gw, "weir_rate_limited_total", &[("route", "api")]).await,
        4.0
    );
}

#[tokio::test]
async fn client_ip_key_ignores_a_spoofed_forwarded_for() {
    let up = Upstream::echo().await;
    let gw = gateway(&up, "", "{ requests: 2, per: 1m, key: client_ip }").await;
    let addr = gw.addr();

    // Every test client is 127.0.0.1: separate connections claiming other
    // addresses in X-Forwarded-For still spend the one bucket of that IP.
    for (i, claimed) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
        let resp = send(
            addr,
            req(Method::GET, "/api/x")
                .header("x-forwarded-for", *claimed)
                .body(empty())
                .unwrap(),
        )
        .await;
        if i < 2 {
            assert_eq!(resp.status, 200, "request {}", i + 1);
        } else {
            assert_rate_limited(&resp);
        }
    }
    assert_eq!(up.request_count(), 2);
}

/// Each client address has its own bucket, kept across its connections.
#[tokio::test]
async fn client_ip_buckets_follow_the_peer_address() {
    let up = Upstream::echo().await;
    let gw = gateway(&up, "", "{ requests: 2, per: 1m, key: client_ip }").await;
    let a: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let b: std::net::IpAddr = "127.0.0.3".parse().unwrap();

    let mut first = H1Client::connect_from(gw.addr(), a).await;
    assert_eq!(rate_state(&first.get("/api/x").await), (1, 30));
    assert_eq!(first.get("/api/x").await.status, 200);
    assert_rate_limited(&first.get("/api/x").await);
    // Another address starts full, on its own connection.
    let mut other = H1Client::connect_from(gw.addr(), b).await;
    assert_eq!(rate_state(&other.get("/api/x").await).0, 1);
    // A new connection from the first address finds its bucket spent.
    let mut again = H1Client::connect_from(gw.addr(), a).await;
    assert_rate_limited(&again.get("/api/x").await);
    assert_eq!(other.get("/api/x").await.status, 200);
    assert_eq!(up.request_count(), 4);
}

#[tokio::test]
async fn admits_again_once_the_allowance_refills() {
    let up = Upstream::echo().await;
    let gw = gateway(&up, "", "{ requests: 1, per: 200ms, key: route }").await;
    let mut client = H1Client::connect(gw.addr()).await;

    // On a loaded machine the slot may refill between two requests, so spend
    // until refused rather than counting on the second one being refused.
    let mut refused = None;
    for _ in 0..100 {
        let resp = client.get("/api/x").await;
        if resp.status == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status, 200);
    }
    let refused = refused.expect("a 200 ms allowance must run out within 100 requests");
    // Rounded up to whole seconds, never 0.
    assert_eq!(assert_rate_limited(&refused), 1);
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"default\";q=1;w=1")
    );

    eventually(WAIT, "a request to be admitted again", || {
        let addr = gw.addr();
        async move { get(addr, "/api/x").await.status == 200 }
    })
    .await;
}

#[tokio::test]
async fn two_routes_have_independent_limits() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(
        &config(
            "",
            &[
                route("a", "/a", "{ requests: 1, per: 1m, key: route }"),
                route("b", "/b", "{ requests: 2, per: 1m, key: route }"),
            ],
        ),
        &[("up", &up.addr())],
    )
    .await;
    let mut client = H1Client::connect(gw.addr()).await;

    assert_eq!(client.get("/a/x").await.status, 200);
    let refused = client.get("/a/x").await;
    assert_rate_limited(&refused);
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"default\";q=1;w=60")
    );

    let b = client.get("/b/x").await;
    assert_eq!(b.status, 200, "route b has its own allowance");
    assert_eq!(b.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
    assert_eq!(rate_state(&b).0, 1);
    assert_eq!(client.get("/b/x").await.status, 200);
    assert_rate_limited(&client.get("/b/x").await);

    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "weir_rate_limited_total", &[("route", "a")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "weir_rate_limited_total", &[("route", "b")]),
        Some(1.0)
    );
    assert_eq!(up.request_count(), 3);
}

#[tokio::test]
async fn redis_backend_shares_one_limit_across_gateways() {
    let server = RedisServer::start();
    let up = Upstream::echo().await;
    let top = redis_block(&server.url());
    let limit = "{ requests: 4, per: 1m, key: route, backend: redis, on_backend_error: allow }";
    let first = gateway(&up, &top, limit).await;
    let second = gateway(&up, &top, limit).await;
    let mut clients = [
        H1Client::connect(first.addr()).await,
        H1Client::connect(second.addr()).await,
    ];

    for i in 0..4 {
        let resp = clients[i % 2].get("/api/x").await;
        assert_eq!(resp.status, 200, "request {}: {}", i + 1, resp.text());
        // A response without the header would mean Redis was not asked.
        assert_eq!(rate_state(&resp).0, 3 - i as u64, "request {}", i + 1);
    }
    for client in &mut clients {
        let refused = client.get("/api/x").await;
        let retry_after = assert_rate_limited(&refused);
        assert!(retry_after <= 15, "one request costs 15 s: {retry_after}");
    }

    assert_eq!(up.request_count(), 4, "exactly 4 forwarded in total");
    for gw in [&first, &second] {
        let m = gw.metrics().await;
        assert_eq!(
            metric(&m, "weir_rate_limited_total", &[("route", "api")]),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, "weir_rate_limit_backend_errors_total", &[]).unwrap_or(0.0),
            0.0,
            "redis answered every call"
        );
    }
}

#[tokio::test]
async fn unreachable_redis_applies_on_backend_error() {
    let up = Upstream::echo().await;
    let url = format!("redis://{}", closed_port());
    let gw = TestGateway::with(
        &config(
            &redis_block(&url),
            &[
                route(
                    "open",
                    "/open",
                    "{ requests: 1, per: 1m, key: route, backend: redis, on_backend_error: allow }",
                ),
                route(
                    "closed",
                    "/closed",
                    "{ requests: 1, per: 1m, key: route, backend: redis, on_backend_error: deny }",
                ),
            ],
        ),
        &[("up", &up.addr())],
    )
    .await;
    let mut client = H1Client::connect(gw.addr()).await;

    // Far beyond the one request per minute Redis would allow; each call must
    // fail fast (100 ms timeout, then back-off), well under these 5 s.
    within(Duration::from_secs(5), "requests with redis down", async {
        for i in 0..3 {
            let open = client.get("/open/x").await;
            assert_eq!(open.status, 200, "allow lets request {} through", i + 1);
            let closed = client.get("/closed/x").await;
            assert_rate_limited(&closed);
        }
    })
    .await;

    assert_eq!(
        up.request_count(),
        3,
        "only the allowed route was forwarded"
    );
    let m = gw.metrics().await;
    let errors = |route: &str, decision: &str| {
        metric(
            &m,
            "weir_rate_limit_backend_errors_total",
            &[("route", route), ("decision", decision)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(errors("open", "allow"), 3.0);
    assert_eq!(errors("open", "deny"), 0.0);
    assert_eq!(errors("closed", "deny"), 3.0);
    assert_eq!(errors("closed", "allow"), 0.0);
}

#[tokio::test]
async fn limits_apply_again_after_redis_restarts() {
    let mut server = RedisServer::start();
    let up = Upstream::echo().await;
    let gw = gateway(
        &up,
        &redis_block(&server.url()),
        "{ requests: 2, per: 1m, key: route, backend: redis, on_backend_error: allow }",
    )
    .await;
    let addr = gw.addr();
    let backend_errors = || counter(&gw, "weir_rate_limit_backend_errors_total", &[]);

    assert_eq!(get(addr, "/api/x").await.status, 200);
    assert_eq!(get(addr, "/api/x").await.status, 200);
    assert_rate_limited(&get(addr, "/api/x").await);

    server.stop();
    // With Redis gone the route lets requests through, counted as errors.
    eventually(WAIT, "requests to pass while redis is down", || async {
        get(addr, "/api/x").await.status == 200
    })
    .await;
    assert!(backend_errors().await > 0.0);

    // The restarted server is empty: a fresh allowance of 2. Probe until a
    // request is decided by Redis again (no new backend error); that probe
    // spent the first slot.
    server.restart();
    eventually(WAIT, "weir to use redis again", || async {
        let before = backend_errors().await;
        let resp = get(addr, "/api/x").await;
        resp.status == 200 && backend_errors().await == before
    })
    .await;
    let before = backend_errors().await;
    let second = get(addr, "/api/x").await;
    assert_eq!(second.status, 200);
    assert_eq!(rate_state(&second).0, 0);
    assert_rate_limited(&get(addr, "/api/x").await);
    assert_eq!(backend_errors().await, before, "redis decided both");
}
