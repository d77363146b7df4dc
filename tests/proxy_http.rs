//! Forwarding HTTP/1.1 through weir: bodies (small, streamed, chunked,
//! bodiless responses), framing edge cases, header rewriting and upstream
//! connection reuse.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use support::*;

/// One catch-all route to upstream `up` (`{up}`), after `routes`.
fn config(routes: &str) -> String {
    format!(
        "routes:
{routes}  - name: all
    match: {{ path_prefix: / }}
    upstream: up
upstreams:
  - name: up
    targets:
      - address: \"{{up}}\"
"
    )
}

async fn echo_gateway(routes: &str) -> (Upstream, TestGateway) {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(&config(routes), &[("up", &up.addr())]).await;
    (up, gw)
}

#[tokio::test]
async fn forwards_get_with_path_query_and_response() {
    let up = Upstream::http1()
        .route(
            "/fixed",
            Reply::text(201, "made it").header("x-from-upstream", "yes"),
        )
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;

    let resp = get(gw.addr(), "/fixed").await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.text(), "made it");
    assert_eq!(resp.header("x-from-upstream"), Some("yes"));

    let e = get(gw.addr(), "/some/path?a=1&b=two").await.echoed();
    assert_eq!(e.method, "GET");
    assert_eq!(e.uri, "/some/path?a=1&b=two");
    assert_eq!(e.body_len, 0);
}

/// Responses on either side of the size up to which weir gathers a response
/// into one write (4 KiB, head included), larger ones written from their own
/// buffers, and chunked ones, one after another on one client connection:
/// each arrives whole, byte for byte, in order.
#[tokio::test]
async fn responses_of_every_size_arrive_intact_on_one_connection() {
    let body = |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8).collect() };
    let sizes = [0usize, 1, 3_900, 4_000, 4_096, 4_097, 16_384, 300_000];
    let mut up = Upstream::http1();
    for len in sizes {
        up = up.route(&format!("/{len}"), Reply::text(200, body(len)));
    }
    let up = up
        .route(
            "/chunked",
            Reply::chunks(&["first ", &"x".repeat(5_000), " last"]),
        )
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;

    let mut conn = RawConn::connect(gw.addr()).await;
    for round in 0..2 {
        for len in sizes {
            conn.write(format!("GET /{len} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .await;
            let resp = conn.read_response(false).await;
            assert_eq!(resp.status, 200, "/{len}, round {round}");
            assert_eq!(resp.body.len(), len, "/{len}, round {round}");
            assert!(
                resp.body == body(len),
                "/{len}: body differs, round {round}"
            );
        }
        conn.write(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        let resp = conn.read_response(false).await;
        assert_eq!(resp.text(), format!("first {} last", "x".repeat(5_000)));
    }
}

#[tokio::test]
async fn forwards_post_body() {
    let (_up, gw) = echo_gateway("").await;
    let body = "x".repeat(100_000) + "end";
    let resp = send(
        gw.addr(),
        req(Method::POST, "/submit")
            .header("content-type", "text/plain")
            .body(full(body.clone()))
            .unwrap(),
    )
    .await;
    let e = resp.echoed();
    assert_eq!(e.method, "POST");
    assert_eq!(e.body, body);
    assert_eq!(e.header("content-length"), Some("100003"));
    assert_eq!(e.header("content-type"), Some("text/plain"));
}

// 1 GiB each way. On the 2-core reference machine a debug build moves each
// in about 1.5 s, so the full size is kept.
const BIG: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_1gib_download_without_buffering() {
    let up = Upstream::http1()
        .route("/big", Reply::stream(BIG))
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;
    let mut c = H1Client::connect(gw.addr()).await;
    let t = Instant::now();
    let resp = c
        .send(req(Method::GET, "/big").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        BIG.to_string()
    );
    let check = client::read_pattern(resp.into_body(), Duration::from_secs(60)).await;
    eprintln!("1 GiB download took {:?}", t.elapsed());
    assert_eq!(check.len(), BIG);
    assert!(
        check.ok(),
        "body differs from the pattern at byte {:?}",
        check.first_mismatch()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_1gib_upload_without_buffering() {
    let up = Upstream::http1()
        .route("/upload", Reply::drain())
        .spawn()
        .await;
    // Over the default body limit (10MiB).
    let limits = "limits: { max_request_body: 2GiB }\n";
    let gw = TestGateway::with(&format!("{limits}{}", config("")), &[("up", &up.addr())]).await;
    let mut c = H1Client::connect(gw.addr()).await;
    let t = Instant::now();
    let body = pattern::PatternBody::new(BIG).boxed();
    let resp = within(
        Duration::from_secs(60),
        "the upload",
        c.send(req(Method::POST, "/upload").body(body).unwrap()),
    )
    .await;
    let resp = TestResponse::read(resp).await;
    eprintln!("1 GiB upload took {:?}", t.elapsed());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let d: Drained = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(d.len, BIG);
    assert_eq!(d.content_length.as_deref(), Some("1073741824"));
    assert!(d.pattern_ok, "upload corrupted: {d:?}");
}

#[tokio::test]
async fn forwards_chunked_request_body() {
    let up = Upstream::http1()
        .route("/drain", Reply::drain())
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;

    // Streamed with no length: hyper's client sends it chunked.
    const LEN: u64 = 3 * 1024 * 1024 + 17;
    let body = pattern::PatternBody::chunked(LEN).boxed();
    let resp = send(gw.addr(), req(Method::POST, "/drain").body(body).unwrap()).await;
    let d: Drained = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(d.len, LEN);
    assert!(d.pattern_ok, "{d:?}");
    assert_eq!(
        d.checksum,
        Some(pattern::fnv1a(&pattern::bytes(LEN as usize)))
    );
    assert_eq!(d.transfer_encoding.as_deref(), Some("chunked"));
    assert_eq!(d.content_length, None);

    // Hand-written chunks, with a chunk extension.
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(
        b"POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let resp = raw.read_response(false).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body"], "hello world");
}

#[tokio::test]
async fn forwards_chunked_response_body() {
    let up = Upstream::http1()
        .route("/chunks", Reply::chunks(&["hello ", "chunked ", "world"]))
        .route("/big", Reply::stream_chunked(5 * 1024 * 1024 + 3))
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;

    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(b"GET /chunks HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let resp = raw.read_response(false).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.text(), "hello chunked world");

    let mut c = H1Client::connect(gw.addr()).await;
    let resp = c
        .send(req(Method::GET, "/big").body(empty()).unwrap())
        .await;
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let check = client::read_pattern(resp.into_body(), IO_TIMEOUT).await;
    assert_eq!(check.len(), 5 * 1024 * 1024 + 3);
    assert!(check.ok());
}

#[tokio::test]
async fn expect_100_continue_gets_interim_response_before_body() {
    let (up, gw) = echo_gateway("").await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(
        b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await;
    // Nothing of the body has been sent: weir must ask for it.
    let (status, _) = raw.read_head().await;
    assert_eq!(status, 100, "expected 100 Continue before the body");
    raw.write(b"hello world").await;
    let resp = raw.read_response(false).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body"], "hello world");
    assert!(
        !up.last_request().headers.contains_key("expect"),
        "Expect is answered by weir, not forwarded"
    );
}

#[tokio::test]
async fn head_response_has_no_body() {
    let up = Upstream::http1()
        .route("/doc", Reply::text(200, "0123456789"))
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;
    let mut raw = RawConn::connect(gw.addr()).await;
    // Pipelined: any body bytes after the HEAD response would corrupt the
    // second response.
    raw.write(
        b"HEAD /doc HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /doc HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    let head = raw.read_response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10"));
    let next = raw.read_response(false).await;
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "0123456789");
    assert_eq!(up.requests()[0].method, Method::HEAD);
}

#[tokio::test]
async fn no_content_and_not_modified_responses_have_no_body() {
    let up = Upstream::http1()
        .route("/204", Reply::status(204).header("x-r", "204"))
        .route("/304", Reply::status(304).header("etag", "\"v1\""))
        .route("/doc", Reply::text(200, "after"))
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(
        b"GET /204 HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /304 HTTP/1.1\r\nHost: a.test\r\nIf-None-Match: \"v1\"\r\n\r\n\
          GET /doc HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    let r204 = raw.read_response(false).await;
    assert_eq!(r204.status, 204);
    assert_eq!(r204.header("x-r"), Some("204"));
    assert_eq!(r204.header("transfer-encoding"), None);
    assert_eq!(r204.header("content-length"), None);
    let r304 = raw.read_response(false).await;
    assert_eq!(r304.status, 304);
    assert_eq!(r304.header("etag"), Some("\"v1\""));
    assert_eq!(r304.header("transfer-encoding"), None);
    let after = raw.read_response(false).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "after");
}

#[tokio::test]
async fn passes_60kib_header_values_both_ways() {
    let big = "v".repeat(60 * 1024);
    let up = Upstream::http1()
        .route("/big-resp", Reply::text(200, "ok").header("x-big", &big))
        .spawn()
        .await;
    // Over the default header line limit (16KiB), within the head limit.
    let limits = "limits: { max_header_field: 64KiB }\n";
    let gw = TestGateway::with(&format!("{limits}{}", config("")), &[("up", &up.addr())]).await;

    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("x-big", &big)
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header("x-big"), Some(big.as_str()));

    let resp = get(gw.addr(), "/big-resp").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-big"), Some(big.as_str()));
}

#[tokio::test]
async fn removes_hop_by_hop_request_headers() {
    let (_up, gw) = echo_gateway("").await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("te", "gzip")
            .header("upgrade", "websocket")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    for name in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert_eq!(e.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(e.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn keeps_te_trailers_for_grpc() {
    let (_up, gw) = echo_gateway("").await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("te", "trailers, deflate")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header("te"), Some("trailers"));
}

#[tokio::test]
async fn removes_headers_named_in_every_connection_header_line() {
    let (_up, gw) = echo_gateway("").await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("connection", "keep-alive")
            .header("connection", "x-second-hop")
            .header("x-second-hop", "secret")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(
        e.header("x-second-hop"),
        None,
        "a header named in the second Connection line reached the upstream"
    );
}

#[tokio::test]
async fn removes_hop_by_hop_response_headers() {
    let up = Upstream::http1()
        .route(
            "/hop",
            Reply::text(200, "ok")
                .header("connection", "x-custom")
                .header("x-custom", "secret")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("upgrade", "h2c")
                .header("te", "trailers")
                .header("x-kept", "yes"),
        )
        .spawn()
        .await;
    let gw = TestGateway::with(&config(""), &[("up", &up.addr())]).await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(b"GET /hop HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let resp = raw.read_response(false).await;
    assert_eq!(resp.status, 200);
    for name in [
        "connection",
        "x-custom",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
    ] {
        assert_eq!(resp.header(name), None, "{name} reached the client");
    }
    assert_eq!(resp.header("x-kept"), Some("yes"));
    assert_eq!(resp.text(), "ok");
}

#[tokio::test]
async fn x_forwarded_for_from_a_client_is_replaced_by_its_address() {
    // No trusted_proxies: whatever the client claims is not passed on
    // (tests/trusted_proxies.rs covers trusted peers).
    let (_up, gw) = echo_gateway("").await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.9")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header_all("x-forwarded-for"), ["127.0.0.1"]);

    let e = get(gw.addr(), "/echo").await.echoed();
    assert_eq!(e.header_all("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn sets_x_forwarded_proto_and_host() {
    let (_up, gw) = echo_gateway("").await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("host", "shop.example:8080")
            .header("x-forwarded-proto", "https")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(e.header_all("x-forwarded-host"), ["shop.example:8080"]);
}

#[tokio::test]
async fn passes_host_unchanged() {
    let (up, gw) = echo_gateway("").await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("host", "Shop.Example:8080")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header_all("host"), ["Shop.Example:8080"]);
    assert_ne!(e.header("host"), Some(up.addr().to_string().as_str()));
}

#[tokio::test]
async fn absolute_form_request_uses_its_authority_as_host() {
    let (_up, gw) = echo_gateway("").await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(b"GET http://abs.example:81/echo?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await;
    let resp = raw.read_response(false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let e: Echoed = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(e.uri, "/echo?x=1", "origin-form upstream");
    assert_eq!(e.header_all("host"), ["abs.example:81"]);
}

#[tokio::test]

async fn http10_request_without_host_reaches_upstream_with_a_host_header() {
    // weir speaks HTTP/1.1 upstream, where Host is mandatory (RFC 9112 §3.2).
    let (up, gw) = echo_gateway("").await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.write(b"GET /echo HTTP/1.0\r\n\r\n").await;
    let resp = raw.read_response(false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = up.last_request();
    assert_eq!(rec.version, http::Version::HTTP_11);
    assert!(
        rec.headers.contains_key("host"),
        "HTTP/1.1 request sent upstream without Host: {:?}",
        rec.headers
    );
}

fn is_request_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn generates_x_request_id_when_absent() {
    let (_up, gw) = echo_gateway("").await;
    let first = get(gw.addr(), "/echo").await;
    let sent_up = first.echoed().header("x-request-id").unwrap().to_owned();
    assert!(is_request_id(&sent_up), "{sent_up:?} is not 32 hex digits");
    assert_eq!(first.header("x-request-id"), Some(sent_up.as_str()));

    let second = get(gw.addr(), "/echo").await;
    let id2 = second.header("x-request-id").unwrap();
    assert!(is_request_id(id2));
    assert_ne!(id2, sent_up, "request ids must be unique");
}

#[tokio::test]
async fn keeps_client_x_request_id() {
    let (_up, gw) = echo_gateway("").await;
    let resp = send(
        gw.addr(),
        req(Method::GET, "/echo")
            .header("x-request-id", "client-id-123")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.header("x-request-id"), Some("client-id-123"));
    assert_eq!(resp.echoed().header_all("x-request-id"), ["client-id-123"]);
}

const OPS_ROUTE: &str = "  - name: ops
    match: { path_prefix: /ops }
    upstream: up
    request_headers:
      set: { x-set: new }
      add: { x-add: two }
      remove: [x-remove]
    response_headers:
      set: { x-rset: new }
      add: { x-radd: two }
      remove: [x-rremove]
";

#[tokio::test]
async fn applies_request_header_ops() {
    let (_up, gw) = echo_gateway(OPS_ROUTE).await;
    let e = send(
        gw.addr(),
        req(Method::GET, "/ops/echo")
            .header("x-set", "old")
            .header("x-set", "older")
            .header("x-add", "one")
            .header("x-remove", "gone")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header_all("x-set"), ["new"]);
    assert_eq!(e.header_all("x-add"), ["one", "two"]);
    assert_eq!(e.header("x-remove"), None);

    // Another route: untouched.
    let e = send(
        gw.addr(),
        req(Method::GET, "/other")
            .header("x-set", "old")
            .header("x-remove", "kept")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header_all("x-set"), ["old"]);
    assert_eq!(e.header("x-remove"), Some("kept"));
}

#[tokio::test]
async fn applies_response_header_ops() {
    let up = Upstream::http1()
        .route(
            "/ops/r",
            Reply::text(200, "ok")
                .header("x-rset", "old")
                .header("x-radd", "one")
                .header("x-rremove", "gone"),
        )
        .spawn()
        .await;
    let gw = TestGateway::with(&config(OPS_ROUTE), &[("up", &up.addr())]).await;
    let resp = get(gw.addr(), "/ops/r").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header_all("x-rset"), ["new"]);
    assert_eq!(resp.header_all("x-radd"), ["one", "two"]);
    assert_eq!(resp.header("x-rremove"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_on_one_client_connection_reuse_one_upstream_connection() {
    let (up, gw) = echo_gateway("").await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..50 {
        let resp = c.get(&format!("/echo/{i}")).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(up.request_count(), 50);
    assert_eq!(up.connections(), 1, "upstream connections opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_zero_opens_a_new_upstream_connection_for_every_request() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(
        "routes:
  - name: all
    match: { path_prefix: / }
    upstream: up
upstreams:
  - name: up
    keepalive: { max_idle: 0 }
    targets:
      - address: \"{up}\"
",
        &[("up", &up.addr())],
    )
    .await;
    // One client connection, kept alive throughout: reuse towards the
    // upstream must not happen even within it.
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..5 {
        let resp = c.get(&format!("/echo/{i}")).await;
        assert_eq!(resp.echoed().path, format!("/echo/{i}"));
        assert!(!c.is_closed(), "weir closed the client connection");
    }
    assert_eq!(up.request_count(), 5);
    assert_eq!(up.connections(), 5, "upstream connections opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_open_at_most_one_upstream_connection_each() {
    let (up, gw) = echo_gateway("").await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                for i in 0..10 {
                    let resp = c.get(&format!("/echo/{n}/{i}")).await;
                    assert_eq!(resp.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.request_count(), 200);
    let opened = up.connections();
    assert!(opened <= 20, "{opened} upstream connections for 20 clients");
}
