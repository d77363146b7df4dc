//! `limits:`: oversize request lines, heads, header lines and bodies get
//! 414, 431 and 413; slow heads get 408 at the header read timeout (and a
//! crowd of such clients does not slow normal requests); connections are
//! capped, and closed after their last allowed request.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REJECTED: &str = "weir_downstream_rejected_total";

/// A gateway with `limits` and two routes to one echo upstream: `/api`
/// (the default body limit) and `/big` (`max_request_body: 64KiB`).
async fn gateway(limits: &str) -> (TestGateway, Upstream) {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(
        &format!(
            "limits: {{ {limits} }}
routes:
  - name: big
    match: {{ path_prefix: /big }}
    upstream: up
    max_request_body: 64KiB
  - name: api
    match: {{ path_prefix: /api }}
    upstream: up
upstreams:
  - name: up
    targets:
      - address: \"{{up}}\"
"
        ),
        &[("up", &up.addr())],
    )
    .await;
    (gw, up)
}

fn problem_code(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let doc: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    doc["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_request_line_over_the_limit_gets_414() {
    let (gw, up) = gateway("max_request_line: 1KiB").await;
    let path = format!("/api/{}", "a".repeat(1100));
    let reply = raw_exchange(
        gw.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&reply),
        Some(414),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(problem_code(&reply), "uri_too_long");
    // Just under the limit goes through.
    let path = format!("/api/{}", "a".repeat(900));
    assert_eq!(get(gw.addr(), &path).await.status, 200);
    assert_eq!(up.requests().len(), 1);
    gw.metric_reaches(REJECTED, &[("reason", "request_line_too_long")], 1.0)
        .await;
}

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_from_hyper() {
    let (gw, up) = gateway("max_header_bytes: 8KiB, max_request_line: 4KiB").await;
    let mut head = String::from("GET /api/x HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        head.push_str(&format!("x-filler-{i}: {}\r\n", "v".repeat(500)));
    }
    head.push_str("\r\n");
    let reply = raw_exchange(gw.addr(), head.into_bytes()).await;
    assert_eq!(
        status_of(&reply),
        Some(431),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // A request line longer than the whole head limit cannot be told apart
    // from a long head: hyper answers 431 for it too.
    let path = format!("/api/{}", "a".repeat(9000));
    let reply = raw_exchange(
        gw.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&reply),
        Some(431),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(up.requests().is_empty());
    gw.metric_reaches(REJECTED, &[("reason", "header_too_large")], 2.0)
        .await;
}

#[tokio::test]
async fn one_header_line_over_max_header_field_gets_431() {
    let (gw, up) = gateway("max_header_field: 1KiB").await;
    let reply = raw_exchange(
        gw.addr(),
        format!(
            "GET /api/x HTTP/1.1\r\nHost: x\r\nx-big: {}\r\nConnection: close\r\n\r\n",
            "v".repeat(1100)
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&reply),
        Some(431),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(problem_code(&reply), "header_too_large");
    assert!(up.requests().is_empty());
    gw.metric_reaches(REJECTED, &[("reason", "header_too_large")], 1.0)
        .await;
}

#[tokio::test]
async fn more_headers_than_max_headers_gets_431() {
    let (gw, up) = gateway("max_headers: 10").await;
    let mut head = String::from("GET /api/x HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let reply = raw_exchange(gw.addr(), head.into_bytes()).await;
    assert_eq!(
        status_of(&reply),
        Some(431),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // Ten in all is allowed.
    let mut head = String::from("GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..8 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let reply = raw_exchange(gw.addr(), head.into_bytes()).await;
    assert_eq!(
        status_of(&reply),
        Some(200),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_up_front_or_while_streaming() {
    let (gw, up) = gateway("max_request_body: 16KiB").await;
    // Content-Length over the limit: refused before anything is forwarded.
    let mut c = H1Client::connect(gw.addr()).await;
    let resp = c
        .request(
            req(http::Method::POST, "/api/x")
                .body(full(vec![b'a'; 20_000]))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["code"], "body_too_large");
    assert!(up.requests().is_empty());
    // Within the limit.
    let resp = send(
        gw.addr(),
        req(http::Method::POST, "/api/x")
            .body(full(vec![b'a'; 16 * 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    // The route's own limit is larger.
    let resp = send(
        gw.addr(),
        req(http::Method::POST, "/big/x")
            .body(full(vec![b'a'; 60_000]))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    // Chunked, with no length up front: refused once it crosses the limit.
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.write(b"POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    for _ in 0..5 {
        conn.write(format!("1000\r\n{}\r\n", "b".repeat(4096)).as_bytes())
            .await;
    }
    conn.write(b"0\r\n\r\n").await;
    let resp = conn.read_response(false).await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["code"], "body_too_large");
    gw.metric_reaches(REJECTED, &[("reason", "body_too_large")], 2.0)
        .await;
}

#[tokio::test]
async fn a_slow_head_gets_408_at_the_header_read_timeout() {
    let (gw, up) = gateway("header_read_timeout: 1s").await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let start = Instant::now();
    let head = b"GET /api/x HTTP/1.1\r\nHost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answer = Vec::new();
    for byte in head.iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        // One byte every 200ms: the head would take 12s.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not answered in time"
        );
    }
    let took = start.elapsed();
    answer.extend(read_to_close(&mut stream).await);
    assert_eq!(
        status_of(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(problem_code(&answer), "header_read_timeout");
    assert!(String::from_utf8_lossy(&answer)
        .to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n"));
    assert!(up.requests().is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(2),
        "closed after {took:?}"
    );
    gw.metric_reaches(REJECTED, &[("reason", "header_read_timeout")], 1.0)
        .await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let (gw, _up) = gateway("body_idle_timeout: 1s").await;
    let mut conn = RawConn::connect(gw.addr()).await;
    let start = Instant::now();
    conn.write(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    let resp = conn.read_response(false).await;
    let took = start.elapsed();
    assert_eq!(resp.status, 408, "{}", resp.text());
    assert_eq!(resp.json()["code"], "body_idle_timeout");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert!(conn.is_closed_by_peer().await);
    gw.metric_reaches(REJECTED, &[("reason", "body_idle_timeout")], 1.0)
        .await;
    // A body that keeps coming, slower than the timeout overall, is fine.
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.write(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        .await;
    for b in b"abcd" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        conn.write(&[*b]).await;
    }
    let resp = conn.read_response(false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn the_last_allowed_request_closes_the_connection() {
    let (gw, up) = gateway("max_requests_per_connection: 3").await;
    let mut conn = RawConn::connect(gw.addr()).await;
    for i in 1..=3 {
        conn.write(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let resp = conn.read_response(false).await;
        assert_eq!(resp.status, 200);
        let close = resp.header("connection") == Some("close");
        assert_eq!(close, i == 3, "request {i}: {:?}", resp.headers);
    }
    assert!(conn.is_closed_by_peer().await);
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once() {
    let (gw, _up) = gateway("max_connections: 2").await;
    let mut a = H1Client::connect(gw.addr()).await;
    let mut b = H1Client::connect(gw.addr()).await;
    assert_eq!(a.get("/api/a").await.status, 200);
    assert_eq!(b.get("/api/b").await.status, 200);
    // A third is accepted and closed without an answer.
    let reply = raw_exchange(
        gw.addr(),
        b"GET /api/c HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    )
    .await;
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    gw.metric_reaches(REJECTED, &[("reason", "max_connections")], 1.0)
        .await;
    // Once one closes, its slot is free again.
    drop(a);
    eventually(IO_TIMEOUT, "a free connection slot", || async {
        status_of(
            &raw_exchange(
                gw.addr(),
                b"GET /api/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            )
            .await,
        ) == Some(200)
    })
    .await;
    assert_eq!(b.get("/api/b").await.status, 200);
}

/// What a raw socket receives until weir closes it, within the I/O
/// timeout.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    within(IO_TIMEOUT, "weir to close the connection", async {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    out
}

/// Raises the open-file limit to what the test needs, when allowed.
fn ensure_files(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < needed) {
        let raised = Rlimit {
            current: limit.maximum.map(|m| m.min(needed)).or(Some(needed)),
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|c| c >= needed),
        "the test needs {needed} open files, the limit is {now:?}"
    );
}

/// Slowloris: 1,000 clients trickle a head one byte a second. Each gets
/// 408 and is closed at the header read timeout, and normal requests made meanwhile are
/// answered promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_and_do_not_delay_others() {
    const CLIENTS: usize = 1000;
    // Each client holds a socket on both ends, plus the upstream's.
    ensure_files(2 * CLIENTS as u64 + 256);
    let (gw, _up) = gateway("header_read_timeout: 1s").await;
    let addr = gw.addr();
    let start = Instant::now();
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        slow.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return None;
            };
            let connected = Instant::now();
            let head = b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n";
            for byte in head.iter() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return Some(connected.elapsed());
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(connected.elapsed()),
                    // The head is never complete before the timeout: the
                    // only answer may be the 408.
                    Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 408 ") => {
                        return Some(connected.elapsed())
                    }
                    Ok(Ok(_)) => return Some(Duration::MAX),
                    Err(_) => {}
                }
                if connected.elapsed() > Duration::from_secs(10) {
                    return Some(Duration::MAX);
                }
            }
            Some(Duration::MAX)
        });
    }
    // Normal requests while the slow clients are connected.
    let mut worst = Duration::ZERO;
    let mut served = 0;
    while start.elapsed() < Duration::from_millis(1500) && served < 200 {
        let t = Instant::now();
        let resp = within(
            Duration::from_secs(1),
            "a normal request",
            get(addr, "/api/n"),
        )
        .await;
        assert_eq!(resp.status, 200);
        worst = worst.max(t.elapsed());
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 10, "only {served} normal requests in 1.5s");
    let mut cut = 0;
    let results = within(Duration::from_secs(20), "the slow clients", async {
        let mut out = Vec::new();
        while let Some(r) = slow.join_next().await {
            out.push(r.expect("slow client task"));
        }
        out
    })
    .await;
    for took in results.into_iter().flatten() {
        assert!(
            took < Duration::from_secs(3),
            "a slow client was held for {took:?}"
        );
        cut += 1;
    }
    assert!(cut >= CLIENTS * 9 / 10, "only {cut} slow clients connected");
    assert!(
        worst < Duration::from_secs(1),
        "a normal request took {worst:?}"
    );
}

#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_cut_at_its_timeout() {
    use support::tls::{Ca, CertDir};
    let dir = CertDir::new("handshake-timeout");
    let ca = Ca::new("weir test CA");
    let (cert, key) = ca.server("edge", &["127.0.0.1"]).write(&dir, "edge");
    let up = Upstream::echo().await;
    let gw = TestGateway::start(&format!(
        "limits: {{ tls_handshake_timeout: 1s }}
listeners:
  - name: main
    address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}
admin:
  address: 127.0.0.1:0
routes:
  - name: all
    upstream: up
upstreams:
  - name: up
    targets: [{{ address: \"{}\" }}]
",
        up.addr()
    ))
    .await;
    // Connects and says nothing: no ClientHello ever comes.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = within(
        Duration::from_secs(5),
        "the handshake timeout",
        stream.read(&mut buf),
    )
    .await;
    let took = start.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    gw.metric_reaches(
        "weir_tls_handshake_errors_total",
        &[("listener", "main")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn http2_header_lists_over_the_limit_are_not_served() {
    let up = Upstream::echo().await;
    let gw = TestGateway::start(&format!(
        "limits: {{ h2_max_header_list_size: 16KiB, max_header_field: 64KiB }}
listeners:
  - name: main
    address: 127.0.0.1:0
    protocols: [http1, h2c]
admin:
  address: 127.0.0.1:0
routes:
  - name: all
    upstream: up
upstreams:
  - name: up
    targets: [{{ address: \"{}\" }}]
",
        up.addr()
    ))
    .await;
    let mut c = H2Client::connect(gw.addr()).await.expect("h2 handshake");
    let small = req(http::Method::GET, "/ok")
        .header("x-big", "v".repeat(8 * 1024))
        .body(empty())
        .unwrap();
    assert_eq!(c.request(small).await.status, 200);
    // Over the advertised limit: h2 answers 431 and resets the stream.
    let big = req(http::Method::GET, "/big")
        .header("x-big", "v".repeat(20 * 1024))
        .body(empty())
        .unwrap();
    let mut c = H2Client::connect(gw.addr()).await.expect("h2 handshake");
    let resp = c.try_request(big).await.expect("a 431 answer");
    assert_eq!(resp.status, 431);
    assert_eq!(
        up.requests().len(),
        1,
        "the large request reached the upstream"
    );
}
