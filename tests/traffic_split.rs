//! Traffic shaping on a route: weighted splits across upstreams (canary
//! releases, sticky by header or cookie), mirroring to a shadow upstream,
//! and injected faults. Each upstream answers with its own name so the
//! side a request took is visible in the response.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::*;

/// An upstream that answers every request with `name` as its body.
async fn named(name: &'static str) -> Upstream {
    Upstream::http1()
        .default_reply(Reply::text(200, name))
        .spawn()
        .await
}

/// The value of `name{labels}` now, 0 when the series does not exist.
async fn metric_now(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

// === Weighted split ===

/// A route `canary` split between upstreams `v1` and `v2`.
fn split_config(w1: u32, w2: u32, sticky: Option<&str>) -> String {
    let sticky = sticky.map_or(String::new(), |s| format!("    sticky: \"{s}\"\n"));
    format!(
        "routes:
  - name: canary
    upstreams: [{{ name: v1, weight: {w1} }}, {{ name: v2, weight: {w2} }}]
{sticky}upstreams:
  - name: v1
    targets: [{{ address: \"{{up}}\" }}]
  - name: v2
    targets: [{{ address: \"{{up2}}\" }}]
"
    )
}

async fn split_gateway(v1: &Upstream, v2: &Upstream, w1: u32, w2: u32) -> TestGateway {
    TestGateway::with(
        &split_config(w1, w2, None),
        &[("up", &v1.addr()), ("up2", &v2.addr())],
    )
    .await
}

/// Sends `n` GETs on one connection; each must be answered by a side.
async fn send_many(gw: &TestGateway, n: usize) {
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..n {
        let resp = c.get(&format!("/item/{i}")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

fn side_labels(upstream: &str) -> [(&str, &str); 3] {
    [
        ("route", "canary"),
        ("upstream", upstream),
        ("status_class", "2xx"),
    ]
}

#[tokio::test]
async fn even_split_gives_both_sides_traffic_and_counts_each_side() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let gw = split_gateway(&v1, &v2, 50, 50).await;
    send_many(&gw, 400).await;
    let (n1, n2) = (v1.request_count(), v2.request_count());
    assert_eq!(n1 + n2, 400);
    // Expected 200 each, sd 10: the band is 8 sd wide on each side.
    assert!(
        (120..=280).contains(&n1) && (120..=280).contains(&n2),
        "50/50 gave {n1}:{n2}"
    );
    let total = "weir_requests_total";
    gw.metric_reaches(total, &side_labels("v1"), n1 as f64)
        .await;
    gw.metric_reaches(total, &side_labels("v2"), n2 as f64)
        .await;
}

#[tokio::test]
async fn zero_weight_side_gets_no_traffic() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let gw = split_gateway(&v1, &v2, 100, 0).await;
    send_many(&gw, 50).await;
    assert_eq!((v1.request_count(), v2.request_count()), (50, 0));
    gw.metric_reaches("weir_requests_total", &side_labels("v1"), 50.0)
        .await;
    let text = gw.metrics().await;
    let v2_count = metric(&text, "weir_requests_total", &side_labels("v2"));
    assert!(v2_count.unwrap_or(0.0) == 0.0, "{text}");
}

#[tokio::test]
async fn ninety_ten_split_sends_about_a_tenth_to_the_canary() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let gw = split_gateway(&v1, &v2, 90, 10).await;
    send_many(&gw, 1000).await;
    let (stable, canary) = (v1.request_count(), v2.request_count());
    assert_eq!(stable + canary, 1000);
    // Expected 100, sd ~9.5: both bounds are more than 5 sd away.
    assert!((50..=160).contains(&canary), "90/10 gave {stable}:{canary}");
}

/// Which side (`v1` or `v2`) answered each of `n` requests, each built by
/// `identify` (which adds the user's sticky header or cookie).
async fn sides_seen(
    c: &mut H1Client,
    n: usize,
    identify: impl Fn(http::request::Builder) -> http::request::Builder,
) -> Vec<String> {
    let mut sides = Vec::with_capacity(n);
    for i in 0..n {
        let request = identify(req(Method::GET, &format!("/page/{i}")));
        let resp = c.request(request.body(empty()).unwrap()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        sides.push(resp.text());
    }
    sides
}

/// Sends 10 requests for each of 20 users; every user must stay on one
/// side, and the users must be spread over both.
async fn assert_users_stick(
    gw: &TestGateway,
    identify: impl Fn(http::request::Builder, &str) -> http::request::Builder,
) {
    let mut c = H1Client::connect(gw.addr()).await;
    let mut users_on_v1 = 0;
    for user in 0..20 {
        let name = format!("user-{user}");
        let sides = sides_seen(&mut c, 10, |b| identify(b, &name)).await;
        assert!(
            sides.iter().all(|s| *s == sides[0]),
            "{name} moved between sides: {sides:?}"
        );
        users_on_v1 += usize::from(sides[0] == "v1");
    }
    assert!(
        (1..20).contains(&users_on_v1),
        "{users_on_v1} of 20 users on v1: the split is not spreading users"
    );
}

#[tokio::test]
async fn sticky_header_keeps_each_user_on_one_side() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let gw = TestGateway::with(
        &split_config(50, 50, Some("header:X-User")),
        &[("up", &v1.addr()), ("up2", &v2.addr())],
    )
    .await;
    assert_users_stick(&gw, |b, user| b.header("x-user", user)).await;

    // Without the header a request is placed at random, so anonymous
    // traffic still reaches both sides.
    let (before1, before2) = (v1.request_count(), v2.request_count());
    send_many(&gw, 100).await;
    assert!(
        v1.request_count() > before1 && v2.request_count() > before2,
        "anonymous requests all went to one side"
    );
}

#[tokio::test]
async fn sticky_cookie_keeps_each_user_on_one_side() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let gw = TestGateway::with(
        &split_config(50, 50, Some("cookie:user")),
        &[("up", &v1.addr()), ("up2", &v2.addr())],
    )
    .await;
    assert_users_stick(&gw, |b, user| {
        b.header("cookie", format!("a=b; user={user}"))
    })
    .await;
}

// === Mirroring ===

/// A route `shop` forwarding to `primary` and mirroring to `shadow`, with
/// `options` appended inside the `mirror` block.
async fn mirror_gateway(
    primary: &Upstream,
    shadow: &dyn std::fmt::Display,
    options: &str,
) -> TestGateway {
    let yaml = format!(
        "routes:
  - name: shop
    upstream: primary
    mirror: {{ upstream: shadow, percent: 100{options} }}
upstreams:
  - name: primary
    targets: [{{ address: \"{{up}}\" }}]
  - name: shadow
    targets: [{{ address: \"{{shadow}}\" }}]
"
    );
    TestGateway::with(&yaml, &[("up", &primary.addr()), ("shadow", shadow)]).await
}

fn mirror_labels(result: &str) -> [(&str, &str); 2] {
    [("route", "shop"), ("result", result)]
}

const MIRROR: &str = "weir_mirror_requests_total";

fn post(path: &str, body: impl Into<bytes::Bytes>) -> http::Request<client::ClientBody> {
    req(Method::POST, path).body(full(body)).unwrap()
}

#[tokio::test]
async fn mirror_copies_method_path_and_body_to_the_shadow() {
    let primary = named("primary").await;
    let shadow = Upstream::echo().await;
    let gw = mirror_gateway(&primary, &shadow.addr(), "").await;
    let resp = send(gw.addr(), post("/orders?id=7", "order body")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "primary");

    eventually(IO_TIMEOUT, "the shadow to read the copy", || {
        std::future::ready(shadow.echoed_bodies().len() == 1)
    })
    .await;
    assert_eq!(shadow.echoed_bodies()[0], "order body");
    let copy = shadow.last_request();
    assert_eq!(copy.method, Method::POST);
    assert_eq!(
        copy.uri.path_and_query().map(|p| p.as_str()),
        Some("/orders?id=7")
    );
    assert_eq!(
        copy.headers.get("x-weir-mirror").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // The loop guard marks the copy only, not the real request.
    assert!(!primary.last_request().headers.contains_key("x-weir-mirror"));
    gw.metric_reaches(MIRROR, &mirror_labels("sent"), 1.0).await;
    assert_eq!(shadow.request_count(), 1);
}

#[tokio::test]
async fn slow_shadow_does_not_slow_the_client() {
    let primary = named("primary").await;
    let shadow = Upstream::http1()
        .latency(Duration::from_secs(3))
        .spawn()
        .await;
    let gw = mirror_gateway(&primary, &shadow.addr(), "").await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..3 {
        let started = Instant::now();
        let resp = c.request(post(&format!("/slow/{i}"), "x")).await;
        let took = started.elapsed();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "primary");
        // Waiting for the shadow would take at least 3 s.
        assert!(
            took < Duration::from_millis(1500),
            "request {i} took {took:?}"
        );
    }
    // The copies did go out; they are still held by the shadow.
    eventually(IO_TIMEOUT, "three copies at the shadow", || {
        std::future::ready(shadow.request_count() == 3)
    })
    .await;
    assert_eq!(metric_now(&gw, MIRROR, &mirror_labels("sent")).await, 3.0);
}

#[tokio::test]
async fn unreachable_shadow_is_counted_as_failed_and_the_client_is_served() {
    let primary = named("primary").await;
    let gw = mirror_gateway(&primary, &closed_port(), "").await;
    let resp = send(gw.addr(), post("/orders", "b")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "primary");
    gw.metric_reaches(MIRROR, &mirror_labels("failed"), 1.0)
        .await;
    assert_eq!(metric_now(&gw, MIRROR, &mirror_labels("sent")).await, 1.0);
}

#[tokio::test]
async fn request_already_marked_as_a_copy_is_not_mirrored_again() {
    let primary = named("primary").await;
    let shadow = Upstream::echo().await;
    let gw = mirror_gateway(&primary, &shadow.addr(), "").await;
    let guarded = req(Method::GET, "/guarded")
        .header("x-weir-mirror", "1")
        .body(empty())
        .unwrap();
    let resp = send(gw.addr(), guarded).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "primary");
    // Mirroring is decided before the primary is contacted, so once the
    // response is here the counters are final for this request.
    let text = gw.metrics().await;
    for result in ["sent", "dropped"] {
        let n = metric(&text, MIRROR, &mirror_labels(result)).unwrap_or(0.0);
        assert!(n == 0.0, "{result} = {n} for a guarded request:\n{text}");
    }

    // A plain request afterwards is mirrored; once its copy has arrived,
    // the shadow must have seen that copy and nothing else.
    let resp = send(gw.addr(), req(Method::GET, "/plain").body(empty()).unwrap()).await;
    assert_eq!(resp.status, 200);
    eventually(IO_TIMEOUT, "the plain request's copy", || {
        std::future::ready(shadow.request_count() >= 1)
    })
    .await;
    // A brief bounded look for a late copy of the guarded request.
    let quiet_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < quiet_until && shadow.request_count() == 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paths: Vec<String> = shadow
        .requests()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/plain"]);
    assert_eq!(metric_now(&gw, MIRROR, &mirror_labels("sent")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_beyond_max_in_flight_are_dropped() {
    let primary = named("primary").await;
    // The shadow holds the first copy for longer than the test runs, so
    // its slot stays taken while the other requests arrive.
    let shadow = Upstream::http1()
        .latency(Duration::from_secs(30))
        .spawn()
        .await;
    let gw = mirror_gateway(&primary, &shadow.addr(), ", max_in_flight: 1, timeout: 30s").await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..5)
        .map(|i| tokio::spawn(async move { send(addr, post(&format!("/burst/{i}"), "b")).await }))
        .collect();
    for task in tasks {
        let resp = task.await.expect("request task");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "primary");
    }
    let text = gw.metrics().await;
    let count = |result| metric(&text, MIRROR, &mirror_labels(result)).unwrap_or(0.0);
    assert_eq!((count("sent"), count("dropped")), (1.0, 4.0), "{text}");
    assert_eq!(primary.request_count(), 5);
}

#[tokio::test]
async fn body_over_max_body_is_not_mirrored() {
    let primary = Upstream::echo().await;
    let shadow = Upstream::echo().await;
    let gw = mirror_gateway(&primary, &shadow.addr(), ", max_body: 1KiB").await;
    let big = vec![b'z'; 4096];
    let resp = send(gw.addr(), post("/upload", big)).await;
    assert_eq!(resp.echoed().body_len, 4096);
    // Decided before the primary was contacted: final once answered.
    let text = gw.metrics().await;
    let count = |result| metric(&text, MIRROR, &mirror_labels(result)).unwrap_or(0.0);
    assert_eq!((count("sent"), count("dropped")), (0.0, 1.0), "{text}");

    // A small body on the same route still goes to the shadow, which
    // shows that the large one was held back by its size alone.
    let resp = send(gw.addr(), post("/upload", "small")).await;
    assert_eq!(resp.echoed().body, "small");
    eventually(IO_TIMEOUT, "the small body's copy", || {
        std::future::ready(shadow.echoed_bodies().len() == 1)
    })
    .await;
    assert_eq!(shadow.echoed_bodies(), ["small"]);
}

// === Fault injection ===

/// Routes with faults, one per path prefix, all forwarding to `{up}`.
const FAULTS: &str = "routes:
  - name: always
    match: { path_prefix: /always }
    upstream: up
    fault: { abort: { status: 503, percent: 100 } }
  - name: never
    match: { path_prefix: /never }
    upstream: up
    fault: { abort: { status: 503, percent: 0 } }
  - name: flagged
    match: { path_prefix: /flagged }
    upstream: up
    fault: { abort: { status: 418, percent: 100 }, header: x-weir-fault }
  - name: slowed
    match: { path_prefix: /slowed }
    upstream: up
    fault: { delay: { duration: 300ms, percent: 100 } }
upstreams:
  - name: up
    targets: [{ address: \"{up}\" }]
";

async fn fault_gateway(up: &Upstream) -> TestGateway {
    TestGateway::with(FAULTS, &[("up", &up.addr())]).await
}

fn fault_labels<'a>(route: &'a str, kind: &'a str) -> [(&'a str, &'a str); 2] {
    [("route", route), ("kind", kind)]
}

const FAULTS_TOTAL: &str = "weir_faults_injected_total";

/// Checks that `resp` is weir's problem+json for an injected fault.
fn assert_fault_injected(resp: &TestResponse, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let doc = resp.json();
    assert_eq!(doc["code"], "fault_injected", "{doc}");
    assert_eq!(doc["status"], status, "{doc}");
}

#[tokio::test]
async fn abort_at_full_rate_answers_without_contacting_the_upstream() {
    let up = Upstream::echo().await;
    let gw = fault_gateway(&up).await;
    let mut c = H1Client::connect(gw.addr()).await;
    for _ in 0..3 {
        assert_fault_injected(&c.get("/always/x").await, 503);
    }
    assert_eq!(up.request_count(), 0);
    assert_eq!(up.connections(), 0);
    gw.metric_reaches(FAULTS_TOTAL, &fault_labels("always", "abort"), 3.0)
        .await;
}

#[tokio::test]
async fn abort_at_zero_percent_never_fires() {
    let up = Upstream::echo().await;
    let gw = fault_gateway(&up).await;
    let mut c = H1Client::connect(gw.addr()).await;
    for _ in 0..20 {
        let resp = c.get("/never/x").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(up.request_count(), 20);
    let aborts = metric_now(&gw, FAULTS_TOTAL, &fault_labels("never", "abort")).await;
    assert!(aborts == 0.0, "{aborts} aborts at 0%");
}

#[tokio::test]
async fn abort_with_a_header_condition_only_hits_flagged_requests() {
    let up = Upstream::echo().await;
    let gw = fault_gateway(&up).await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..4 {
        let plain = c.get(&format!("/flagged/{i}")).await;
        assert_eq!(plain.status, 200, "{}", plain.text());
        let flagged = req(Method::GET, &format!("/flagged/{i}"))
            .header("x-weir-fault", "yes")
            .body(empty())
            .unwrap();
        assert_fault_injected(&c.request(flagged).await, 418);
    }
    assert_eq!(up.request_count(), 4);
    gw.metric_reaches(FAULTS_TOTAL, &fault_labels("flagged", "abort"), 4.0)
        .await;
}

#[tokio::test]
async fn delay_holds_the_request_before_forwarding_it() {
    let up = Upstream::echo().await;
    let gw = fault_gateway(&up).await;
    let mut c = H1Client::connect(gw.addr()).await;
    let started = Instant::now();
    let resp = c.get("/slowed/x").await;
    let took = started.elapsed();
    assert_eq!(resp.echoed().path, "/slowed/x");
    assert!(
        took >= Duration::from_millis(290),
        "a 300ms injected delay, answered in {took:?}"
    );
    assert_eq!(up.request_count(), 1);
    gw.metric_reaches(FAULTS_TOTAL, &fault_labels("slowed", "delay"), 1.0)
        .await;
    let aborts = metric_now(&gw, FAULTS_TOTAL, &fault_labels("slowed", "abort")).await;
    assert!(aborts == 0.0, "{aborts} aborts on a delay-only route");
}
