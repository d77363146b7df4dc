//! Failures: weir's problem+json answers, responses cut when an upstream
//! fails mid-body, and input hyper rejects before weir sees a request.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use support::*;

/// Checks an RFC 9457 document from weir and returns it.
fn check_problem(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    want_status: u16,
    code: &str,
) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, want_status, "{text}");
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json")
    );
    let doc: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(doc["code"], code, "{doc}");
    assert_eq!(doc["status"], want_status, "{doc}");
    assert_eq!(doc["type"], format!("urn:weir:error:{code}"), "{doc}");
    assert!(
        doc["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{doc}"
    );
    assert!(
        doc["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{doc}"
    );
    let id = headers
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap();
    assert_eq!(doc["request_id"], id, "{doc}");
    doc
}

fn problem(resp: &TestResponse, status: u16, code: &str) -> serde_json::Value {
    check_problem(
        resp.status.as_u16(),
        &resp.headers,
        &resp.body,
        status,
        code,
    )
}

fn raw_problem(resp: &client::RawResponse, status: u16, code: &str) -> serde_json::Value {
    let mut headers = HeaderMap::new();
    for (n, v) in &resp.headers {
        headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    check_problem(resp.status, &headers, &resp.body, status, code)
}

fn routes_to(address: &str, extra: &str) -> String {
    format!(
        "routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: up
{extra}upstreams:
  - name: up
    targets:
      - address: \"{address}\"
"
    )
}

#[tokio::test]
async fn unmatched_request_gets_404_route_not_found() {
    let gw = TestGateway::with(&routes_to("127.0.0.1:9", ""), &[]).await;
    let resp = get(gw.addr(), "/nope").await;
    let doc = problem(&resp, 404, "route_not_found");
    assert!(doc["detail"].as_str().unwrap().contains("/nope"), "{doc}");
}

#[tokio::test]
async fn refused_connection_gets_502_upstream_connect_failed() {
    let gw = TestGateway::with(
        &routes_to(
            "{up}",
            "    response_headers: { set: { x-route-edit: applied } }\n",
        ),
        &[("up", &closed_port())],
    )
    .await;
    let resp = get(gw.addr(), "/api/x").await;
    problem(&resp, 502, "upstream_connect_failed");
    // Documented: route response_headers are not applied to problem documents.
    assert_eq!(resp.header("x-route-edit"), None);
}

#[tokio::test]
async fn slow_upstream_gets_504_upstream_timeout_at_the_deadline() {
    let up = Upstream::http1()
        .latency(Duration::from_secs(2))
        .spawn()
        .await;
    let gw = TestGateway::with(
        &routes_to("{up}", "    timeouts: { request: 200ms }\n"),
        &[("up", &up.addr())],
    )
    .await;
    let t = Instant::now();
    let resp = get(gw.addr(), "/api/slow").await;
    let elapsed = t.elapsed();
    problem(&resp, 504, "upstream_timeout");
    assert_eq!(up.request_count(), 1);
    assert!(
        elapsed < Duration::from_millis(1000),
        "answered after {elapsed:?}, deadline 200ms"
    );
}

#[tokio::test]
async fn unresolvable_targets_get_503_no_healthy_upstream() {
    let gw = TestGateway::with(
        "routes:
  - name: api
    upstream: dns
upstreams:
  - name: dns
    targets:
      - address: nonexistent.invalid:80
      - address: also-nonexistent.invalid:8080
",
        &[],
    )
    .await;
    let resp = get(gw.addr(), "/x").await;
    problem(&resp, 503, "no_healthy_upstream");
}

#[tokio::test]
async fn upstream_closing_without_response_gets_502_upstream_reset() {
    let up = Upstream::http1()
        .route("/api/close", Reply::close_without_response())
        .spawn()
        .await;
    let gw = TestGateway::with(&routes_to("{up}", ""), &[("up", &up.addr())]).await;
    let resp = send(
        gw.addr(),
        req(Method::POST, "/api/close")
            .body(full("payload"))
            .unwrap(),
    )
    .await;
    problem(&resp, 502, "upstream_reset");
    assert_eq!(up.request_count(), 1, "a sent request is not retried");
}

#[tokio::test]
async fn upstream_reset_mid_body_cuts_the_client_response() {
    let up = Upstream::http1()
        .route("/api/cut", Reply::truncate(1_000_000, 100_000))
        .spawn()
        .await;
    let gw = TestGateway::with(&routes_to("{up}", ""), &[("up", &up.addr())]).await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(b"GET /api/cut HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let (status, headers) = raw.read_head().await;
    assert_eq!(status, 200);
    let declared = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str());
    assert_eq!(declared, Some("1000000"));
    // read_to_close fails the test if weir keeps the connection open.
    let body = raw.read_to_close().await;
    assert!(
        body.len() < 1_000_000,
        "got the full body although the upstream sent 100000 bytes"
    );
    assert!(
        body.len() <= 100_000,
        "got {} bytes, more than sent",
        body.len()
    );
}

#[tokio::test]
async fn deadline_passing_mid_body_cuts_the_client_response() {
    let up = Upstream::http1()
        .route("/api/stall", Reply::stall(1_000_000, 10_000))
        .spawn()
        .await;
    let gw = TestGateway::with(
        &routes_to("{up}", "    timeouts: { request: 300ms }\n"),
        &[("up", &up.addr())],
    )
    .await;
    let t = Instant::now();
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(b"GET /api/stall HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let (status, _) = raw.read_head().await;
    assert_eq!(status, 200);
    let body = raw.read_to_close().await;
    let elapsed = t.elapsed();
    assert!(body.len() < 1_000_000);
    assert!(
        elapsed < Duration::from_secs(3),
        "cut after {elapsed:?}, deadline 300ms"
    );
}

/// Sends `raw` on its own connection and checks that weir answers with the
/// problem `status`/`code` without forwarding anything upstream.
async fn rejected_without_forwarding(raw_request: &[u8], status: u16, code: &str) {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(&routes_to("{up}", ""), &[("up", &up.addr())]).await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(raw_request).await;
    let resp = raw.read_response(false).await;
    raw_problem(&resp, status, code);
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn http11_request_without_host_gets_400_and_is_not_forwarded() {
    rejected_without_forwarding(b"GET /api/x HTTP/1.1\r\n\r\n", 400, "bad_request").await;
}

#[tokio::test]
async fn two_host_headers_get_400_and_are_not_forwarded() {
    rejected_without_forwarding(
        b"GET /api/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn connect_method_gets_501_not_implemented() {
    rejected_without_forwarding(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
        "not_implemented",
    )
    .await;
}

fn request_with_headers(count: usize, value_len: usize) -> Vec<u8> {
    let mut r = b"GET /api/x HTTP/1.1\r\nHost: a.test\r\n".to_vec();
    let value = "h".repeat(value_len);
    for i in 0..count {
        r.extend_from_slice(format!("x-filler-{i}: {value}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

#[tokio::test]
async fn more_than_100_header_fields_get_431() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(&routes_to("{up}", ""), &[("up", &up.addr())]).await;
    // 200 KiB of headers in 400 fields.
    let out = raw_exchange(gw.addr(), request_with_headers(400, 500)).await;
    assert_eq!(
        status_of(&out),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn request_head_over_the_read_buffer_gets_431() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(&routes_to("{up}", ""), &[("up", &up.addr())]).await;
    // 500 KiB of headers in 10 fields, beyond hyper's ~400 KiB buffer.
    let out = raw_exchange(gw.addr(), request_with_headers(10, 50 * 1024)).await;
    assert_eq!(
        status_of(&out),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn malformed_request_line_gets_400() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(&routes_to("{up}", ""), &[("up", &up.addr())]).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /api/x HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"GET /api/\x01x HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let out = raw_exchange(gw.addr(), bad.to_vec()).await;
        assert_eq!(
            status_of(&out),
            Some(400),
            "{:?} answered {:?}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(&out)
        );
    }
    assert_eq!(up.request_count(), 0);
}

/// Panics raised outside test code (in weir or a library) since installed.
fn count_library_panics() -> &'static AtomicUsize {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| !l.file().starts_with("tests/"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    &PANICS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_normally_after_every_error_without_panicking() {
    let panics = count_library_panics();
    let before = panics.load(Ordering::SeqCst);
    let up = Upstream::http1()
        .route("/api/close", Reply::close_without_response())
        .route("/api/cut", Reply::truncate(1_000_000, 10_000))
        .route("/api/slow", Reply::echo().delay(Duration::from_secs(2)))
        .spawn()
        .await;
    let gw = TestGateway::with(
        "routes:
  - name: api
    match: { path_prefix: /api }
    upstream: up
    timeouts: { request: 200ms }
  - name: refused
    match: { path_prefix: /refused }
    upstream: refused
  - name: dns
    match: { path_prefix: /dns }
    upstream: dns
upstreams:
  - name: up
    targets: [{ address: \"{up}\" }]
  - name: refused
    targets: [{ address: \"{refused}\" }]
  - name: dns
    targets: [{ address: nonexistent.invalid:80 }]
",
        &[("up", &up.addr()), ("refused", &closed_port())],
    )
    .await;
    let addr = gw.addr();

    // The same client connection throughout, where weir keeps it open.
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/nope").await.status, 404);
    assert_eq!(c.get("/refused").await.status, 502);
    assert_eq!(c.get("/dns").await.status, 503);
    assert_eq!(c.get("/api/slow").await.status, 504);
    assert_eq!(c.get("/api/close").await.status, 502);
    // A cut response ends its client connection: use another one.
    let mut other = H1Client::connect(addr).await;
    let cut = other
        .send(req(Method::GET, "/api/cut").body(empty()).unwrap())
        .await;
    assert!(http_body_util::BodyExt::collect(cut.into_body())
        .await
        .is_err());
    for bad in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        request_with_headers(400, 500),
        request_with_headers(10, 50 * 1024),
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
    ] {
        let _ = within(IO_TIMEOUT * 2, "a malformed exchange", async {
            let stream = RawConn::connect(addr).await.into_stream();
            let (mut rd, mut wr) = tokio::io::split(stream);
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = wr.write_all(&bad).await;
            // Hang up half-way through for the truncated bodies.
            let _ = wr.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), rd.read_to_end(&mut sink)).await;
        })
        .await;
    }

    // Normal service continues, on old and new connections.
    let mut fresh = H1Client::connect(addr).await;
    let e = fresh.get("/api/after").await.echoed();
    assert_eq!(e.path, "/api/after");
    assert_eq!(c.get("/api/again").await.status, 200);
    assert_eq!(
        panics.load(Ordering::SeqCst),
        before,
        "weir (or a library) panicked; see the test output"
    );
}
