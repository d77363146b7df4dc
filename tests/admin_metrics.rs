//! The admin API, Prometheus metrics, the access log and graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::*;

const API: &str = "routes:
  - name: api
    match: { path_prefix: /api }
    upstream: up
  - name: refused
    match: { path_prefix: /refused }
    upstream: refused
upstreams:
  - name: up
    targets: [{ address: \"{up}\" }]
  - name: refused
    targets: [{ address: \"{refused}\" }]
";

async fn api_gateway(up: &Upstream) -> TestGateway {
    TestGateway::with(API, &[("up", &up.addr()), ("refused", &closed_port())]).await
}

#[tokio::test]
async fn healthz_and_ready_answer_200() {
    let up = Upstream::echo().await;
    let gw = api_gateway(&up).await;
    let h = gw.admin_get("/healthz").await;
    assert_eq!(h.status, 200);
    let r = gw.admin_get("/ready").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.admin_get("/nope").await.status, 404);
}

#[tokio::test]
async fn metrics_count_requests_by_route_upstream_method_and_status_class() {
    let up = Upstream::http1()
        .route("/api/missing", Reply::text(404, "no"))
        .spawn()
        .await;
    let gw = api_gateway(&up).await;
    let mut c = H1Client::connect(gw.addr()).await;
    for _ in 0..3 {
        assert_eq!(c.get("/api/x").await.status, 200);
    }
    let post = c
        .request(req(Method::POST, "/api/x").body(full("b")).unwrap())
        .await;
    assert_eq!(post.status, 200);
    assert_eq!(c.get("/api/missing").await.status, 404);
    assert_eq!(c.get("/unrouted").await.status, 404);

    let api = |method, class| {
        [
            ("route", "api"),
            ("upstream", "up"),
            ("method", method),
            ("status_class", class),
        ]
    };
    gw.metric_reaches("weir_requests_total", &api("GET", "2xx"), 3.0)
        .await;
    gw.metric_reaches("weir_requests_total", &api("POST", "2xx"), 1.0)
        .await;
    gw.metric_reaches("weir_requests_total", &api("GET", "4xx"), 1.0)
        .await;
    let unrouted = [("route", ""), ("method", "GET"), ("status_class", "4xx")];
    gw.metric_reaches("weir_requests_total", &unrouted, 1.0)
        .await;

    let text = gw.metrics().await;
    let route = [("route", "api")];
    assert_eq!(
        metric(&text, "weir_request_duration_seconds_count", &route),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "weir_request_duration_seconds_bucket",
            &[("route", "api"), ("le", "+Inf")]
        ),
        Some(5.0),
        "{text}"
    );
    assert!(
        metric(&text, "weir_request_duration_seconds_sum", &route).is_some(),
        "{text}"
    );
    let upstream = [("upstream", "up")];
    assert_eq!(
        metric(
            &text,
            "weir_upstream_response_duration_seconds_count",
            &upstream
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "weir_upstream_response_duration_seconds_bucket",
            &[("upstream", "up"), ("le", "+Inf")]
        ),
        Some(5.0),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_connect_errors_counter_increments_after_refused_connect() {
    let up = Upstream::echo().await;
    let gw = api_gateway(&up).await;
    let labels = [("upstream", "refused")];
    let before = metric(
        &gw.metrics().await,
        "weir_upstream_connect_errors_total",
        &labels,
    )
    .unwrap_or(0.0);
    assert_eq!(get(gw.addr(), "/refused").await.status, 502);
    gw.metric_reaches("weir_upstream_connect_errors_total", &labels, before + 1.0)
        .await;
    assert_eq!(get(gw.addr(), "/refused").await.status, 502);
    gw.metric_reaches("weir_upstream_connect_errors_total", &labels, before + 2.0)
        .await;
    // Successful connects are not errors.
    assert_eq!(get(gw.addr(), "/api/ok").await.status, 200);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "weir_upstream_connect_errors_total",
            &[("upstream", "up")]
        ),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_connections_active_gauge_follows_open_connections() {
    let up = Upstream::echo().await;
    let gw = api_gateway(&up).await;
    let name = "weir_downstream_connections_active";
    gw.metric_reaches(name, &[], 0.0).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = H1Client::connect(gw.addr()).await;
        assert_eq!(c.get("/api/x").await.status, 200);
        clients.push(c);
    }
    gw.metric_reaches(name, &[], 3.0).await;
    clients.truncate(1);
    gw.metric_reaches(name, &[], 1.0).await;
    drop(clients);
    gw.metric_reaches(name, &[], 0.0).await;
}

#[tokio::test]
async fn build_info_reports_the_version() {
    let up = Upstream::echo().await;
    let gw = api_gateway(&up).await;
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "weir_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn config_endpoint_returns_the_effective_config_as_json() {
    let up = Upstream::echo().await;
    let gw = api_gateway(&up).await;
    let resp = gw.admin_get("/config").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let config = resp.json();
    let names: Vec<&str> = config["routes"]
        .as_array()
        .expect("routes array")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "refused"]);
    assert_eq!(config["routes"][0]["upstream"], "up");
    assert_eq!(config["routes"][0]["match"]["path_prefix"], "/api");
    assert_eq!(
        config["upstreams"][0]["targets"][0]["address"],
        up.addr().to_string()
    );
}

#[tokio::test]
async fn routes_endpoint_lists_routes_in_precedence_order() {
    let gw = TestGateway::with(
        "routes:
  - name: catch_all
    match: { path_prefix: / }
    direct_response: { status: 200 }
  - name: regex
    match: { path_regex: \"/r/.*\" }
    direct_response: { status: 200 }
  - name: exact_path
    match: { path: /a }
    direct_response: { status: 200 }
  - name: long_prefix
    match: { path_prefix: /a/b }
    direct_response: { status: 200 }
  - name: exact_host
    match: { host: x.example }
    direct_response: { status: 200 }
",
        &[],
    )
    .await;
    let resp = gw.admin_get("/routes").await;
    assert_eq!(resp.status, 200);
    let routes = resp.json();
    let listed: Vec<(&str, u64)> = routes
        .as_array()
        .expect("array")
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["order"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("exact_host", 4),
            ("exact_path", 2),
            ("long_prefix", 3),
            ("catch_all", 0),
            ("regex", 1),
        ]
    );
}

/// `API` with the access log written to `log`.
async fn logged_gateway(up: &Upstream, log: &TempPath) -> TestGateway {
    TestGateway::with(
        &format!(
            "access_log:\n  enabled: true\n  path: \"{}\"\n{API}",
            log.as_str()
        ),
        &[("up", &up.addr()), ("refused", &closed_port())],
    )
    .await
}

/// The one line of `lines` for request `id`.
fn line_for(lines: &[serde_json::Value], id: &str) -> serde_json::Value {
    let found: Vec<&serde_json::Value> = lines.iter().filter(|l| l["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "lines for {id}: {lines:#?}");
    found[0].clone()
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let log = TempPath::new("access");
    let up = Upstream::http1()
        .route("/api/cut", Reply::truncate(100_000, 1_000))
        .spawn()
        .await;
    let gw = logged_gateway(&up, &log).await;
    let mut c = H1Client::connect(gw.addr()).await;
    let ok = c
        .request(
            req(Method::POST, "/api/ok?q=1")
                .header("host", "a.test")
                .body(full("12345"))
                .unwrap(),
        )
        .await;
    assert_eq!(ok.status, 200);
    let not_found = c.get("/nope").await;
    assert_eq!(not_found.status, 404);
    let refused = c.get("/refused").await;
    assert_eq!(refused.status, 502);
    let mut other = H1Client::connect(gw.addr()).await;
    let cut = other
        .send(req(Method::GET, "/api/cut").body(empty()).unwrap())
        .await;
    let cut_id = cut.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(http_body_util::BodyExt::collect(cut.into_body())
        .await
        .is_err());

    let lines = access_log_lines(&log, 4).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let by_id = |id: &str| line_for(&lines, id);

    let l = by_id(ok.header("x-request-id").unwrap());
    for field in [
        "time",
        "request_id",
        "client",
        "method",
        "host",
        "path",
        "protocol",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "route",
        "upstream_target",
    ] {
        assert!(l.get(field).is_some(), "missing {field}: {l}");
    }
    let time = l["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "time {time:?} is not RFC 3339 UTC"
    );
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert_eq!(l["method"], "POST");
    assert_eq!(l["host"], "a.test");
    assert_eq!(l["path"], "/api/ok");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes_in"], 5);
    assert_eq!(l["bytes_out"], ok.body.len() as u64);
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(l["route"], "api");
    assert_eq!(l["upstream_target"], up.addr().to_string());
    assert!(l["error_code"].is_null(), "{l}");

    let l = by_id(not_found.header("x-request-id").unwrap());
    assert_eq!(l["status"], 404);
    assert_eq!(l["route"], "");
    assert_eq!(l["error_code"], "route_not_found");
    assert_eq!(l["bytes_out"], not_found.body.len() as u64);

    let l = by_id(refused.header("x-request-id").unwrap());
    assert_eq!(l["status"], 502);
    assert_eq!(l["route"], "refused");
    assert_eq!(l["error_code"], "upstream_connect_failed");

    // Cut mid-body: the status the target sent, and the error.
    let l = by_id(&cut_id);
    assert_eq!(l["status"], 200);
    assert_eq!(l["error_code"], "upstream_reset");
}

#[tokio::test]
async fn access_log_writes_a_line_for_requests_rejected_for_their_host_header() {
    let log = TempPath::new("access-rejected");
    let up = Upstream::echo().await;
    let gw = logged_gateway(&up, &log).await;

    // Rejected before routing: no Host at all, then two of them (raw TCP,
    // since hyper's client would not send either).
    let mut ids = Vec::new();
    for (path, request) in [
        ("/api/no-host", &b"GET /api/no-host HTTP/1.1\r\n\r\n"[..]),
        (
            "/api/two-hosts",
            &b"GET /api/two-hosts HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"[..],
        ),
    ] {
        let mut raw = RawConn::connect(gw.addr()).await;
        raw.write(request).await;
        let resp = raw.read_response(false).await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert_eq!(
            resp.json()["code"],
            "bad_request",
            "{path}: {}",
            resp.text()
        );
        let id = resp
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{path}: no x-request-id"))
            .to_owned();
        ids.push((path, id));
    }
    assert_eq!(up.request_count(), 0, "a rejected request was forwarded");

    let lines = access_log_lines(&log, ids.len()).await;
    assert_eq!(lines.len(), ids.len(), "{lines:#?}");
    for (path, id) in &ids {
        let l = line_for(&lines, id);
        assert_eq!(l["status"], 400, "{l}");
        assert_eq!(l["error_code"], "bad_request", "{l}");
        assert_eq!(l["path"], *path, "{l}");
        assert_eq!(l["method"], "GET", "{l}");
        assert_eq!(l["route"], "", "{l}");
    }
}

/// Starts a request to a 1 s upstream, shuts weir down while it is in
/// flight, and checks that the listener closes at once, the request still
/// completes with 200, and shutdown reports a full drain.
async fn shutdown_mid_request(runtime: &str) {
    let up = Upstream::http1()
        .latency(Duration::from_secs(1))
        .spawn()
        .await;
    let mut gw = TestGateway::with(
        &format!("{runtime}{API}"),
        &[("up", &up.addr()), ("refused", &closed_port())],
    )
    .await;
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move {
        let t = Instant::now();
        (get(addr, "/api/slow").await, t.elapsed())
    });
    eventually(IO_TIMEOUT, "the request to reach the upstream", || {
        std::future::ready(up.request_count() == 1)
    })
    .await;

    let shutdown = tokio::spawn(gw.take().shutdown());
    eventually(IO_TIMEOUT, "new connections to be refused", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the listener should close while the request is still in flight"
    );

    let (resp, elapsed) = within(IO_TIMEOUT, "the in-flight request", in_flight)
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.echoed().path, "/api/slow");
    assert!(elapsed >= Duration::from_secs(1));
    let drained = within(IO_TIMEOUT, "shutdown", shutdown).await.unwrap();
    assert!(
        drained,
        "shutdown returned before the in-flight request finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_request_and_refuses_new_connections() {
    shutdown_mid_request("runtime:\n  shutdown_grace: 5s\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn graceful_shutdown_uses_the_default_grace_without_a_runtime_section() {
    shutdown_mid_request("").await;
}

#[tokio::test]

async fn listener_and_admin_may_both_bind_port_zero() {
    let gw = TestGateway::start(
        "listeners:
  - name: a
    address: 127.0.0.1:0
  - name: b
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
routes:
  - name: hi
    direct_response: { status: 200, body: hi }
",
    )
    .await;
    assert_eq!(get(gw.listener("a"), "/").await.text(), "hi");
    assert_eq!(get(gw.listener("b"), "/").await.text(), "hi");
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
}
