//! Target health through real sockets: active HTTP and TCP health checks
//! taking targets out of the rotation and back, passive outlier detection
//! ejecting targets that fail real requests, and how both show in the admin
//! API (`/upstreams`) and in the metrics.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// How long a state change may take before a test fails. Checks run every
/// 100 ms, so this is only reached when weir is broken.
const LIMIT: Duration = Duration::from_secs(10);

/// HTTP checks of `/healthz` every 100 ms, two results in a row to flip.
const HTTP_CHECK: &str = "health_check: { path: /healthz, interval: 100ms, timeout: 500ms, \
                          healthy_threshold: 2, unhealthy_threshold: 2 }";

/// A config with one catch-all route to upstream `pool`, whose targets are
/// `targets` and whose other settings are the YAML lines in `policy`.
fn pool(targets: &[SocketAddr], policy: &str) -> String {
    let mut yaml = String::from(
        "routes:
  - name: all
    upstream: pool
upstreams:
  - name: pool
    targets:
",
    );
    for t in targets {
        yaml.push_str(&format!("      - address: \"{t}\"\n"));
    }
    for line in policy.lines() {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml
}

async fn start(targets: &[SocketAddr], policy: &str) -> TestGateway {
    TestGateway::with(&pool(targets, policy), &[]).await
}

/// The `/upstreams` entry of `addr` in upstream `pool`.
async fn target(gw: &TestGateway, addr: SocketAddr) -> Value {
    let resp = gw.admin_get("/upstreams").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    let pool = doc
        .as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == "pool"))
        .unwrap_or_else(|| panic!("no upstream named pool in {doc}"));
    pool["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no target {addr} in {pool}"))
        .clone()
}

/// Polls `/upstreams` until the entry of `addr` satisfies `done`, and
/// returns that entry.
async fn wait_target(
    gw: &TestGateway,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let t = target(gw, addr).await;
        if done(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {t}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_state(gw: &TestGateway, addr: SocketAddr, state: &str) -> Value {
    wait_target(gw, addr, &format!("{addr} to be {state}"), |t| {
        t["state"] == state
    })
    .await
}

/// The `health.checks` counter of a target entry.
fn checks(t: &Value) -> u64 {
    t["health"]["checks"].as_u64().unwrap_or(0)
}

/// Polls `/metrics` until sample `name{labels}` satisfies `done`; returns it.
async fn wait_metric(
    gw: &TestGateway,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + LIMIT;
    loop {
        let value = metric(&gw.metrics().await, name, labels);
        if let Some(v) = value.filter(|&v| done(v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name}{labels:?}; last seen: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn checks_total(text: &str, result: &str) -> f64 {
    metric(
        text,
        "weir_health_checks_total",
        &[("upstream", "pool"), ("result", result)],
    )
    .unwrap_or(0.0)
}

fn ejections(text: &str, reason: &str) -> f64 {
    metric(
        text,
        "weir_outlier_ejections_total",
        &[("upstream", "pool"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// Requests `up` received other than health checks.
fn data_requests(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.uri.path() != "/healthz")
        .count()
}

/// Sends `n` GETs to distinct data paths on one connection; returns their
/// statuses.
async fn send_n(gw: &TestGateway, n: usize) -> Vec<u16> {
    let mut c = H1Client::connect(gw.addr()).await;
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(c.get(&format!("/data/{i}")).await.status.as_u16());
    }
    statuses
}

// === active health checks ===

#[tokio::test]
async fn failing_health_check_takes_target_out_and_passing_brings_it_back() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gw = start(&[a.addr(), b.addr()], HTTP_CHECK).await;
    let healthy = |t: &Value| t["state"] == "healthy" && checks(t) >= 1;
    wait_target(&gw, a.addr(), "a checked", healthy).await;
    wait_target(&gw, b.addr(), "b checked", healthy).await;
    let b_label = b.addr().to_string();
    let b_gauge = [("upstream", "pool"), ("target", b_label.as_str())];
    wait_metric(&gw, "weir_upstream_target_healthy", &b_gauge, |v| v == 1.0).await;
    let passes_before = checks_total(&gw.metrics().await, "pass");
    assert!(passes_before >= 2.0, "passes: {passes_before}");

    b.set_route("/healthz", Reply::status(503));
    let out = wait_state(&gw, b.addr(), "unhealthy").await;
    assert_eq!(out["health"]["healthy"], false, "{out}");
    assert_eq!(out["health"]["last_failure"], "status 503", "{out}");
    assert!(
        out["health"]["consecutive_failures"].as_u64() >= Some(2),
        "{out}"
    );
    assert!(
        out["health"]["last_check_unix_ms"].as_u64().is_some(),
        "{out}"
    );
    assert!(out["outlier"].is_null(), "{out}");
    wait_metric(&gw, "weir_upstream_target_healthy", &b_gauge, |v| v == 0.0).await;
    assert!(checks_total(&gw.metrics().await, "fail") >= 2.0);

    // The other target is reported as it is, with its own check state.
    let other = target(&gw, a.addr()).await;
    assert_eq!(other["state"], "healthy", "{other}");
    assert_eq!(other["health"]["healthy"], true, "{other}");
    assert!(other["health"]["last_failure"].is_null(), "{other}");

    let (a_before, b_before) = (data_requests(&a), data_requests(&b));
    assert!(send_n(&gw, 10).await.iter().all(|&s| s == 200));
    assert_eq!(data_requests(&a), a_before + 10);
    assert_eq!(
        data_requests(&b),
        b_before,
        "an unhealthy target got traffic"
    );

    b.set_route("/healthz", Reply::status(200));
    let back = wait_state(&gw, b.addr(), "healthy").await;
    assert_eq!(back["health"]["healthy"], true, "{back}");
    assert!(
        back["health"]["consecutive_successes"].as_u64() >= Some(2),
        "{back}"
    );
    // The reason of the latest failure is kept for the operator.
    assert_eq!(back["health"]["last_failure"], "status 503", "{back}");
    wait_metric(&gw, "weir_upstream_target_healthy", &b_gauge, |v| v == 1.0).await;
    assert!(checks_total(&gw.metrics().await, "pass") >= passes_before + 2.0);

    let b_before = data_requests(&b);
    assert!(send_n(&gw, 10).await.iter().all(|&s| s == 200));
    assert!(
        data_requests(&b) > b_before,
        "the target did not get traffic back"
    );
}

#[tokio::test]
async fn expected_status_accepts_listed_codes_and_ranges() {
    let teapot = Upstream::http1()
        .route("/healthz", Reply::status(418))
        .spawn()
        .await;
    let no_content = Upstream::http1()
        .route("/healthz", Reply::status(204))
        .spawn()
        .await;
    let failing = Upstream::http1()
        .route("/healthz", Reply::status(500))
        .spawn()
        .await;
    let gw = start(
        &[teapot.addr(), no_content.addr(), failing.addr()],
        "health_check: { path: /healthz, interval: 100ms, timeout: 500ms, \
         healthy_threshold: 2, unhealthy_threshold: 2, expected_status: [200-299, 418] }",
    )
    .await;
    for up in [&teapot, &no_content] {
        let t = wait_target(&gw, up.addr(), "three passed checks", |t| checks(t) >= 3).await;
        assert_eq!(t["state"], "healthy", "{t}");
        assert_eq!(t["health"]["consecutive_failures"], 0, "{t}");
        assert!(t["health"]["last_failure"].is_null(), "{t}");
    }
    let t = wait_state(&gw, failing.addr(), "unhealthy").await;
    assert_eq!(t["health"]["last_failure"], "status 500", "{t}");

    assert!(send_n(&gw, 6).await.iter().all(|&s| s == 200));
    assert_eq!(data_requests(&teapot) + data_requests(&no_content), 6);
    assert_eq!(data_requests(&failing), 0);
}

#[tokio::test]
async fn tcp_check_marks_closed_port_unhealthy_and_live_target_healthy() {
    let live = Upstream::echo().await;
    let dead = closed_port();
    let gw = start(
        &[live.addr(), dead],
        "health_check: { type: tcp, interval: 100ms, timeout: 500ms, \
         healthy_threshold: 2, unhealthy_threshold: 2 }",
    )
    .await;
    let t = wait_state(&gw, dead, "unhealthy").await;
    let reason = t["health"]["last_failure"].as_str().unwrap_or_default();
    assert!(reason.starts_with("connect "), "{t}");

    let t = wait_target(&gw, live.addr(), "two checks of the live target", |t| {
        checks(t) >= 2
    })
    .await;
    assert_eq!(t["state"], "healthy", "{t}");
    assert!(t["health"]["last_failure"].is_null(), "{t}");
    // A TCP check only connects: the live target saw connections but no
    // HTTP request.
    assert!(live.connections() >= 2);
    assert_eq!(live.request_count(), 0);

    assert!(send_n(&gw, 4).await.iter().all(|&s| s == 200));
    assert_eq!(live.request_count(), 4);
}

#[tokio::test]
async fn all_targets_unhealthy_answers_no_healthy_upstream() {
    let a = Upstream::http1()
        .route("/healthz", Reply::status(503))
        .spawn()
        .await;
    let b = Upstream::http1()
        .route("/healthz", Reply::status(503))
        .spawn()
        .await;
    let gw = start(&[a.addr(), b.addr()], HTTP_CHECK).await;
    wait_state(&gw, a.addr(), "unhealthy").await;
    wait_state(&gw, b.addr(), "unhealthy").await;

    let resp = get(gw.addr(), "/orders").await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let doc = resp.json();
    assert_eq!(doc["code"], "no_healthy_upstream", "{doc}");
    assert_eq!(doc["status"], 503, "{doc}");
    assert_eq!(data_requests(&a) + data_requests(&b), 0);
}

#[tokio::test]
async fn isolated_check_failures_do_not_take_target_out() {
    // One target and no client traffic, so every request the upstream sees
    // is a health check, and checks of it never overlap (a round waits for
    // its probe). A queued 503 then fails exactly the next check and the
    // ones after it pass again: the outcome of every check is fixed by the
    // test, not by timing.
    let up = Upstream::echo().await;
    // A generous timeout: a check timing out on a loaded machine would be a
    // failure the test did not plan.
    let gw = start(
        &[up.addr()],
        "health_check: { path: /healthz, interval: 100ms, timeout: 3s, \
         healthy_threshold: 2, unhealthy_threshold: 2 }",
    )
    .await;
    // The first check of a target decides alone, so it must pass first.
    wait_target(&gw, up.addr(), "a first check", |t| checks(t) >= 1).await;

    const FLAPS: usize = 4;
    for _ in 0..FLAPS {
        let seen = up.request_count();
        up.queue(Reply::status(503));
        // The failing check and one after it have been answered and
        // recorded once two more checks were recorded after `seen`.
        let want = u64::try_from(seen + 2).unwrap();
        let t = wait_target(&gw, up.addr(), "a failed then a passed check", |t| {
            assert_eq!(t["state"], "healthy", "target taken out by a flap: {t}");
            checks(t) >= want && t["health"]["consecutive_successes"].as_u64() >= Some(1)
        })
        .await;
        assert_eq!(t["health"]["last_failure"], "status 503", "{t}");
    }
    let text = gw.metrics().await;
    assert_eq!(checks_total(&text, "fail"), FLAPS as f64);
    assert_eq!(
        metric(
            &text,
            "weir_upstream_target_healthy",
            &[("target", &up.addr().to_string())]
        ),
        Some(1.0)
    );

    // Failures in a row do reach unhealthy_threshold, and only then.
    up.set_route("/healthz", Reply::status(503));
    let t = wait_target(&gw, up.addr(), "the target to be unhealthy", |t| {
        if t["health"]["consecutive_failures"].as_u64() < Some(2) {
            assert_eq!(t["state"], "healthy", "out before the threshold: {t}");
        }
        t["state"] == "unhealthy"
    })
    .await;
    assert!(
        t["health"]["consecutive_failures"].as_u64() >= Some(2),
        "{t}"
    );
    // With its only target out, the upstream refuses requests.
    assert_eq!(get(gw.addr(), "/x").await.status, 503);
}

// === passive outlier detection ===

#[tokio::test]
async fn consecutive_5xx_eject_target_until_base_ejection_passes() {
    let good = Upstream::echo().await;
    let bad = Upstream::http1()
        .default_reply(Reply::status(500))
        .spawn()
        .await;
    let gw = start(
        &[good.addr(), bad.addr()],
        "outlier_detection: { consecutive_5xx: 3, base_ejection: 1s, max_ejection_percent: 50 }",
    )
    .await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..20 {
        if bad.request_count() == 3 {
            break;
        }
        let status = c.get(&format!("/data/{i}")).await.status;
        assert!(status == 200 || status == 500, "{status}");
    }
    assert_eq!(bad.request_count(), 3);
    // The outcome is recorded before the response is sent on.
    let t = target(&gw, bad.addr()).await;
    assert_eq!(t["state"], "ejected", "{t}");
    assert_eq!(t["outlier"]["ejected"], true, "{t}");
    assert_eq!(t["outlier"]["times_ejected"], 1, "{t}");
    assert_eq!(t["outlier"]["last_reason"], "consecutive_5xx", "{t}");
    assert!(t["health"].is_null(), "{t}");
    assert_eq!(ejections(&gw.metrics().await, "consecutive_5xx"), 1.0);

    let other = target(&gw, good.addr()).await;
    assert_eq!(other["state"], "healthy", "{other}");
    assert!(other["health"].is_null(), "{other}");
    assert_eq!(other["outlier"]["ejected"], false, "{other}");
    assert_eq!(other["outlier"]["times_ejected"], 0, "{other}");

    let good_before = good.request_count();
    let statuses = send_n(&gw, 10).await;
    // The ejection lasts 1 s; only if it is still the same one afterwards
    // did it cover all ten requests (a very slow machine may outlast it).
    let after = target(&gw, bad.addr()).await;
    if after["outlier"]["ejected"] == true && after["outlier"]["times_ejected"] == 1 {
        assert_eq!(statuses, vec![200; 10]);
        assert_eq!(good.request_count(), good_before + 10);
        assert_eq!(bad.request_count(), 3, "an ejected target got traffic");
    } else {
        eprintln!("ejection ended before the requests were done: {after}");
    }

    wait_target(&gw, bad.addr(), "the ejection to end", |t| {
        t["outlier"]["ejected"] == false
    })
    .await;
    let bad_before = bad.request_count();
    for i in 0..10 {
        if bad.request_count() > bad_before {
            break;
        }
        c.get(&format!("/again/{i}")).await;
    }
    assert!(
        bad.request_count() > bad_before,
        "no traffic after the ejection"
    );
}

#[tokio::test]
async fn consecutive_connect_failures_eject_target() {
    let good = Upstream::echo().await;
    let dead = closed_port();
    let gw = start(
        &[good.addr(), dead],
        "outlier_detection: { consecutive_connect_failures: 2, base_ejection: 30s, \
         max_ejection_percent: 50 }",
    )
    .await;
    // Without retries, the requests sent to the dead target fail with 502
    // until it is ejected.
    let mut c = H1Client::connect(gw.addr()).await;
    let mut failed = 0;
    for i in 0..20 {
        if target(&gw, dead).await["state"] == "ejected" {
            break;
        }
        let resp = c.get(&format!("/data/{i}")).await;
        if resp.status == 502 {
            assert_eq!(resp.json()["code"], "upstream_connect_failed");
            failed += 1;
        } else {
            assert_eq!(resp.status, 200);
        }
    }
    assert_eq!(failed, 2, "ejection after two failed connects");
    let t = target(&gw, dead).await;
    assert_eq!(t["state"], "ejected", "{t}");
    assert_eq!(
        t["outlier"]["last_reason"], "consecutive_connect_failures",
        "{t}"
    );
    assert_eq!(t["outlier"]["times_ejected"], 1, "{t}");
    let text = gw.metrics().await;
    assert_eq!(ejections(&text, "consecutive_connect_failures"), 1.0);
    assert_eq!(ejections(&text, "consecutive_5xx"), 0.0);
    assert_eq!(target(&gw, good.addr()).await["state"], "healthy");

    assert!(send_n(&gw, 10).await.iter().all(|&s| s == 200));
}

async fn ejected_count(gw: &TestGateway, addrs: &[SocketAddr]) -> usize {
    let mut n = 0;
    for &a in addrs {
        n += usize::from(target(gw, a).await["state"] == "ejected");
    }
    n
}

/// Four targets of which the first `failing` always answer 500, ejected
/// after two 5xx in a row for far longer than the test, at most 50% at once.
/// Sends traffic until two are ejected, then 20 more requests; returns the
/// failing upstreams, the number of targets ejected and the ejections
/// counted.
async fn eject_failing_of_four(failing: usize) -> (Vec<Upstream>, usize, f64) {
    let mut ups = Vec::new();
    for i in 0..4 {
        let reply = if i < failing {
            Reply::status(500)
        } else {
            Reply::echo()
        };
        ups.push(Upstream::http1().default_reply(reply).spawn().await);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(Upstream::addr).collect();
    let gw = start(
        &addrs,
        "outlier_detection: { consecutive_5xx: 2, base_ejection: 30s, max_ejection_percent: 50 }",
    )
    .await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..40 {
        if ejected_count(&gw, &addrs).await >= 2 {
            break;
        }
        c.get(&format!("/data/{i}")).await;
    }
    assert_eq!(ejected_count(&gw, &addrs).await, 2);
    send_n(&gw, 20).await;
    for up in &ups[failing..] {
        assert!(up.request_count() > 0);
    }
    let count = ejected_count(&gw, &addrs).await;
    let metric = ejections(&gw.metrics().await, "consecutive_5xx");
    ups.truncate(failing);
    (ups, count, metric)
}

#[tokio::test]
async fn max_ejection_percent_allows_half_of_four_targets() {
    let (_, ejected, counted) = eject_failing_of_four(2).await;
    assert_eq!(ejected, 2);
    assert_eq!(counted, 2.0);
}

#[tokio::test]
async fn max_ejection_percent_keeps_third_failing_target_in_rotation() {
    let (failing, ejected, counted) = eject_failing_of_four(3).await;
    assert_eq!(ejected, 2, "more than 50% of the targets ejected");
    assert_eq!(counted, 2.0);
    // The one left in keeps failing and keeps getting traffic.
    let counts: Vec<usize> = failing.iter().map(Upstream::request_count).collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    assert!(most >= 5, "requests per failing target: {counts:?}");
}

#[tokio::test]
async fn single_target_is_never_ejected_at_fifty_percent() {
    let up = Upstream::http1()
        .default_reply(Reply::status(500))
        .spawn()
        .await;
    let gw = start(
        &[up.addr()],
        "outlier_detection: { consecutive_5xx: 2, base_ejection: 30s, max_ejection_percent: 50 }",
    )
    .await;
    assert_eq!(send_n(&gw, 10).await, vec![500; 10]);
    assert_eq!(up.request_count(), 10);
    let t = target(&gw, up.addr()).await;
    assert_eq!(t["state"], "healthy", "{t}");
    assert_eq!(t["outlier"]["ejected"], false, "{t}");
    assert_eq!(t["outlier"]["times_ejected"], 0, "{t}");
    assert_eq!(ejections(&gw.metrics().await, "consecutive_5xx"), 0.0);
}
