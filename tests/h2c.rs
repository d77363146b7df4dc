//! HTTP/2 over cleartext (prior knowledge), client side and upstream side.

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
