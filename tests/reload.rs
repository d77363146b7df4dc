//! Hot reload: every trigger goes through one path (read, validate, diff,
//! compile, swap); an invalid file changes nothing; requests never fail
//! while configurations are swapped under load; state carries over by name.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use support::client::{self, H1Client};
use support::gateway::{fill, TestGateway, BASE};
use support::upstream::{Reply, Upstream};
use support::{eventually, metric, TempPath, IO_TIMEOUT};

/// Writes `yaml` to `file` and asks the gateway to reload it; returns the
/// admin answer.
async fn reload_with(gw: &TestGateway, file: &TempPath, yaml: &str) -> client::TestResponse {
    std::fs::write(&file.0, yaml).expect("write config");
    gw.admin_post("/config/reload").await
}

/// Two routes' worth of configuration: `/a` always, `/b` only in the second
/// shape, and different weights on `a`'s targets.
fn shape(second: bool, one: &Upstream, two: &Upstream) -> String {
    let (route_b, weight) = if second {
        (
            "  - name: b\n    match: { path_prefix: /b }\n    upstream: b\n",
            3,
        )
    } else {
        ("", 1)
    };
    let text = [
        BASE,
        "routes:\n",
        "  - name: a\n    match: { path_prefix: /a }\n    upstream: a\n",
        route_b,
        "upstreams:\n",
        "  - name: a\n    targets:\n",
        &format!("      - {{ address: \"{{one}}\", weight: {weight} }}\n"),
        "      - { address: \"{two}\" }\n",
        "  - name: b\n    targets: [{ address: \"{two}\" }]\n",
    ]
    .concat();
    fill(&text, &[("one", &one.addr()), ("two", &two.addr())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_load_fail_no_request() {
    let one = Upstream::echo().await;
    let two = Upstream::echo().await;
    let file = TempPath::new("reload-load");
    std::fs::write(&file.0, shape(false, &one, &two)).unwrap();
    let gw = TestGateway::start_file(&file.0).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), gw.addr());
        clients.push(tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            // Bounded: the reloads below stop it, and a ceiling guards a hang.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout(IO_TIMEOUT, c.get("/a/x")).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    for i in 0..100 {
        let second = i % 2 == 0;
        let resp = reload_with(&gw, &file, &shape(second, &one, &two)).await;
        assert_eq!(resp.status, 200, "reload {i}: {}", resp.text());
        // The file watcher may have applied this file first; either way it
        // runs when the call returns.
        let result = resp.json()["result"].clone();
        assert!(
            result == "success" || result == "unchanged",
            "reload {i}: {result}"
        );
        // The swap is done when the admin call returns: the new routing is
        // visible at once (well within the one second allowed).
        let b = client::get(gw.addr(), "/b/x").await;
        assert_eq!(b.status, if second { 200 } else { 404 }, "reload {i}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load to mean anything"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "weir_config_reloads_total", &[("result", "success")]),
        Some(100.0)
    );
}

#[tokio::test]
async fn an_invalid_file_is_rejected_with_every_error_and_the_old_one_keeps_serving() {
    let one = Upstream::echo().await;
    let two = Upstream::echo().await;
    let file = TempPath::new("reload-invalid");
    let good = shape(false, &one, &two);
    std::fs::write(&file.0, &good).unwrap();
    let gw = TestGateway::start_file(&file.0).await;
    let hash = gw.admin_get("/status").await.json()["config_hash"].clone();

    let bad = good.replace("upstream: a", "upstream: nope") + "  - name: c\n    targets: []\n";
    let resp = reload_with(&gw, &file, &bad).await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["result"], "failure");
    let errors: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("routes[0].upstream") && errors[0].contains("nope"),
        "{errors:?}"
    );
    assert!(errors[1].contains("upstreams[2].targets"), "{errors:?}");
    assert!(errors.iter().all(|e| e.starts_with("line ")), "{errors:?}");

    assert_eq!(client::get(gw.addr(), "/a/x").await.status, 200);
    assert_eq!(gw.admin_get("/status").await.json()["config_hash"], hash);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "weir_config_reloads_total", &[("result", "failure")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn listener_changes_are_refused_as_needing_a_restart() {
    let one = Upstream::echo().await;
    let two = Upstream::echo().await;
    let file = TempPath::new("reload-listener");
    let good = shape(false, &one, &two);
    std::fs::write(&file.0, &good).unwrap();
    let gw = TestGateway::start_file(&file.0).await;

    let changed = good.replacen(
        "address: 127.0.0.1:0\n",
        "address: 127.0.0.1:0\n    protocols: [http1, h2c]\n",
        1,
    );
    let resp = reload_with(&gw, &file, &changed).await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert_eq!(
        resp.json()["errors"][0],
        "listeners: changed (needs a restart)"
    );
    assert_eq!(client::get(gw.addr(), "/a/x").await.status, 200);
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_trigger() {
    let one = Upstream::echo().await;
    let two = Upstream::echo().await;
    let file = TempPath::new("reload-watch");
    std::fs::write(&file.0, shape(false, &one, &two)).unwrap();
    let gw = TestGateway::start_file(&file.0).await;
    assert_eq!(client::get(gw.addr(), "/b/x").await.status, 404);

    std::fs::write(&file.0, shape(true, &one, &two)).unwrap();
    eventually(IO_TIMEOUT, "the watcher applies the new file", || async {
        client::get(gw.addr(), "/b/x").await.status == 200
    })
    .await;
    let status = gw.admin_get("/status").await.json();
    let text = std::fs::read_to_string(&file.0).unwrap();
    assert_eq!(status["config_hash"], weir::reload::config_hash(&text));
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_config_info",
            &[("hash", &weir::reload::config_hash(&text))]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn rate_limit_buckets_survive_an_unrelated_reload() {
    let up = Upstream::echo().await;
    let file = TempPath::new("reload-state");
    let yaml = |extra: &str| {
        fill(
            &format!(
                "{BASE}routes:\n  - name: limited\n    match: {{ path_prefix: /l }}\n    upstream: up\n\
                 \x20   rate_limit: {{ requests: 2, per: 1m, key: route }}\n{extra}\
                 upstreams:\n  - name: up\n    targets: [{{ address: \"{{up}}\" }}]\n"
            ),
            &[("up", &up.addr())],
        )
    };
    std::fs::write(&file.0, yaml("")).unwrap();
    let gw = TestGateway::start_file(&file.0).await;
    assert_eq!(client::get(gw.addr(), "/l").await.status, 200);
    assert_eq!(client::get(gw.addr(), "/l").await.status, 200);

    let resp = reload_with(
        &gw,
        &file,
        &yaml("  - name: other\n    match: { path: /o }\n    direct_response: { status: 204 }\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(client::get(gw.addr(), "/o").await.status, 204);
    // The spent bucket came along: the third request is still refused.
    assert_eq!(client::get(gw.addr(), "/l").await.status, 429);
}

#[tokio::test]
async fn a_drained_target_takes_no_new_requests_until_undrained_even_across_reloads() {
    let one = Upstream::http1()
        .default_reply(Reply::text(200, "one"))
        .spawn()
        .await;
    let two = Upstream::http1()
        .default_reply(Reply::text(200, "two"))
        .spawn()
        .await;
    let file = TempPath::new("reload-drain");
    std::fs::write(&file.0, shape(false, &one, &two)).unwrap();
    let gw = TestGateway::start_file(&file.0).await;

    let target = one.addr().to_string();
    let resp = gw
        .admin_post(&format!("/upstreams/a/targets/{target}/drain"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ups = gw.admin_get("/upstreams").await.json();
    assert_eq!(ups[0]["targets"][0]["state"], "draining");
    for _ in 0..6 {
        assert_eq!(client::get(gw.addr(), "/a/x").await.text(), "two");
    }

    // A reload that changes the upstream (weights) keeps the drain mark.
    let resp = reload_with(&gw, &file, &shape(true, &one, &two)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for _ in 0..6 {
        assert_eq!(client::get(gw.addr(), "/a/x").await.text(), "two");
    }

    let resp = gw
        .admin_post(&format!("/upstreams/a/targets/{target}/undrain"))
        .await;
    assert_eq!(resp.status, 200);
    let mut bodies = Vec::new();
    for _ in 0..8 {
        bodies.push(client::get(gw.addr(), "/a/x").await.text());
    }
    assert!(bodies.iter().any(|b| b == "one"), "{bodies:?}");

    let missing = gw.admin_post("/upstreams/a/targets/10.9.9.9:1/drain").await;
    assert_eq!(missing.status, 404);
    let unknown = gw
        .admin_post("/upstreams/zzz/targets/1.2.3.4:5/drain")
        .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn reload_without_a_file_is_a_conflict() {
    let gw = TestGateway::with(
        "routes:\n  - name: hi\n    direct_response: { status: 200 }\n",
        &[],
    )
    .await;
    let resp = gw.admin_post("/config/reload").await;
    assert_eq!(resp.status, 409, "{}", resp.text());
}
