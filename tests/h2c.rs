//! HTTP/2 over cleartext (prior knowledge), client side and upstream side.

mod parsing_support;
mod support;

use std::time::{Duration, Instant};

use http::{Method, Version};
use http_body_util::BodyExt;
use support::*;

fn config(upstream_protocol: &str) -> String {
    format!(
        "listeners:
  - name: main
    address: 127.0.0.1:0
    protocols: [http1, h2c]
routes:
  - name: all
    upstream: up
upstreams:
  - name: up
    protocol: {upstream_protocol}
    targets:
      - address: \"{{up}}\"
"
    )
}

#[tokio::test]
async fn h2c_client_reaches_http1_upstream() {
    let up = Upstream::echo().await;
    let gw = TestGateway::start(&fill(&config("http1"), &[("up", &up.addr())])).await;
    let mut c = H2Client::connect(gw.addr()).await.expect("h2 handshake");

    let resp = c
        .request(
            req(Method::POST, "/h2/in?q=1")
                .body(full("over h2"))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.version, Version::HTTP_2);
    assert!(resp.header("x-request-id").is_some());
    let e = resp.echoed();
    assert_eq!(e.version, "HTTP/1.1");
    assert_eq!(e.method, "POST");
    assert_eq!(e.uri, "/h2/in?q=1", "origin-form towards HTTP/1.1");
    assert_eq!(e.body, "over h2");
    // The :authority becomes Host.
    assert_eq!(e.header_all("host"), [gw.addr().to_string().as_str()]);
    assert_eq!(up.last_request().version, Version::HTTP_11);
}

#[tokio::test]
async fn http1_client_reaches_h2c_upstream() {
    let up = Upstream::h2c().spawn().await;
    let gw = TestGateway::start(&fill(&config("h2c"), &[("up", &up.addr())])).await;
    let resp = send(
        gw.addr(),
        req(Method::POST, "/to/h2?x=y")
            .header("host", "svc.example:8080")
            .header("connection", "keep-alive")
            .header("te", "trailers")
            .body(full("over h1"))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.version, Version::HTTP_11);
    let e = resp.echoed();
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.body, "over h1");
    assert_eq!(e.uri, "http://svc.example:8080/to/h2?x=y");
    assert_eq!(e.header("connection"), None);
    assert_eq!(up.last_request().version, Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_end_to_end_carries_50_concurrent_streams_on_one_connection() {
    // Each response takes 300 ms: one after the other, 50 would need 15 s.
    let up = Upstream::h2c()
        .latency(Duration::from_millis(300))
        .spawn()
        .await;
    let gw = TestGateway::start(&fill(&config("h2c"), &[("up", &up.addr())])).await;
    let client = H2Client::connect(gw.addr()).await.expect("h2 handshake");
    let t = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let resp = c.get(&format!("/stream/{i}")).await;
                (i, resp)
            })
        })
        .collect();
    for t in tasks {
        let (i, resp) = t.await.unwrap();
        assert_eq!(resp.version, Version::HTTP_2);
        let e = resp.echoed();
        assert_eq!(e.path, format!("/stream/{i}"));
        assert_eq!(e.version, "HTTP/2.0");
    }
    let elapsed = t.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "50 streams took {elapsed:?}: not concurrent"
    );
    assert_eq!(up.request_count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn concurrent_requests_share_one_h2c_upstream_connection() {
    let up = Upstream::h2c()
        .latency(Duration::from_millis(100))
        .spawn()
        .await;
    let gw = TestGateway::start(&fill(&config("h2c"), &[("up", &up.addr())])).await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/c/{i}")).await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(up.request_count(), 20);
    assert_eq!(
        up.connections(),
        1,
        "HTTP/2 multiplexes: one upstream connection is enough"
    );
}

#[tokio::test]
async fn upstream_failure_mid_body_resets_only_that_h2_stream() {
    let up = Upstream::http1()
        .route("/cut", Reply::truncate(1_000_000, 10_000))
        .spawn()
        .await;
    let gw = TestGateway::start(&fill(&config("http1"), &[("up", &up.addr())])).await;
    let mut c = H2Client::connect(gw.addr()).await.expect("h2 handshake");
    let cut = c
        .send(req(Method::GET, "/cut").body(empty()).unwrap())
        .await
        .expect("response head");
    assert_eq!(cut.status(), 200);
    let body = within(IO_TIMEOUT, "the cut body", cut.into_body().collect()).await;
    assert!(body.is_err(), "a cut body must not look complete");
    // The connection survives: only the stream was reset.
    let resp = c.get("/after").await;
    assert_eq!(resp.echoed().path, "/after");
}

#[tokio::test]
async fn http1_only_listener_rejects_h2c_prior_knowledge() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(
        "routes:
  - name: all
    upstream: up
upstreams:
  - name: up
    targets: [{ address: \"{up}\" }]
",
        &[("up", &up.addr())],
    )
    .await;
    let outcome = match H2Client::connect(gw.addr()).await {
        Err(e) => Err(e),
        Ok(mut c) => c
            .try_request(req(Method::GET, "/x").body(empty()).unwrap())
            .await
            .map(|r| r.status),
    };
    assert!(
        !matches!(outcome, Ok(s) if s == 200),
        "h2c request on an http1-only listener succeeded"
    );
    assert_eq!(up.request_count(), 0);
    // The listener still serves HTTP/1.1.
    assert_eq!(get(gw.addr(), "/x").await.status, 200);
}

/// `x-request-id` is unique per request: weir sends it as a never-indexed
/// literal, so it neither fills the client's HPACK table nor evicts the
/// entries later responses reuse. Read from the raw header blocks of three
/// responses on one connection, one of them carrying the client's own id.
#[tokio::test]
async fn request_ids_go_out_as_never_indexed_literals() {
    use parsing_support::*;
    use tokio::io::AsyncWriteExt;

    let up = Upstream::echo().await;
    let gw = TestGateway::start(&fill(&config("http1"), &[("up", &up.addr())])).await;
    let stream = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut out = h2_start();
    for (id, client_id) in [(1u32, None), (3, Some("client-id-1")), (5, None)] {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/ids"),
            (b":authority", b"a"),
        ];
        if let Some(v) = client_id {
            fields.push((b"x-request-id", v.as_bytes()));
        }
        let flags = frame::END_HEADERS | frame::END_STREAM;
        out.extend(h2_frame(frame::HEADERS, flags, id, &hpack_block(&fields)));
    }
    wr.write_all(&out).await.expect("write requests");

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reader = FrameReader::new();
    let mut blocks = Vec::new();
    while blocks.len() < 3 {
        let Some(f) = reader.next(&mut rd, deadline).await else {
            panic!("connection ended after {} responses", blocks.len());
        };
        match f.kind {
            frame::SETTINGS if f.flags & frame::ACK == 0 => {
                let ack = h2_frame(frame::SETTINGS, frame::ACK, 0, &[]);
                wr.write_all(&ack).await.expect("settings ack");
            }
            frame::HEADERS if f.stream != 0 => {
                assert_ne!(f.flags & frame::END_HEADERS, 0, "one frame per head");
                blocks.push((f.stream, f.payload));
            }
            _ => {}
        }
    }
    for (stream, block) in &blocks {
        assert_eq!(h2_status(block), Some(200), "stream {stream}");
        let fields = hpack_fields(block).expect("a well-formed header block");
        let never: Vec<&HpackField> = fields
            .iter()
            .filter(|f| f.kind == HpackKind::NeverIndexed)
            .collect();
        assert_eq!(never.len(), 1, "stream {stream}: {fields:?}");
        // A literal name: "x-request-id" is in no static table, and a
        // never-indexed field never enters the dynamic one. Huffman-coded,
        // its 12 characters take 69 bits.
        let (huffman, name) = never[0].name.clone().expect("a literal name");
        assert!(huffman);
        assert_eq!(name.len(), 9, "stream {stream}");
    }
    let ids: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("x-request-id"))
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().any(|id| id == "client-id-1"), "{ids:?}");
}
