//! Client connection lifecycle: an idle keep-alive connection is closed
//! after `limits.keepalive_idle` (quietly on HTTP/1.1, with GOAWAY on
//! HTTP/2), a request in progress is never cut by it, a head begun but not
//! finished within `header_read_timeout` gets 408 (cleartext and TLS), and
//! an HTTP/2 connection ends with GOAWAY after `h2_max_requests_per_connection`
//! streams while the streams in flight finish.

mod parsing_support;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parsing_support::*;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const REJECTED: &str = "weir_downstream_rejected_total";
const NO_ERROR: u32 = 0;

/// A gateway with `limits` in front of an upstream that answers `/slow`
/// after `slow` and echoes everything else.
async fn gateway(limits: &str, slow: Duration) -> (TestGateway, Upstream) {
    let up = Upstream::http1()
        .route("/slow", Reply::text(200, "slow").delay(slow))
        .spawn()
        .await;
    let gw = TestGateway::start(&fill(
        "limits: { {limits} }
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
    targets:
      - address: \"{up}\"
",
        &[("limits", &limits), ("up", &up.addr())],
    ))
    .await;
    (gw, up)
}

fn within_range(took: Duration, low_ms: u64, high_ms: u64, what: &str) {
    assert!(
        took >= Duration::from_millis(low_ms) && took < Duration::from_millis(high_ms),
        "{what} after {took:?}, expected {low_ms}..{high_ms} ms"
    );
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_quietly_after_keepalive_idle() {
    let (gw, up) = gateway(
        "header_read_timeout: 1s, keepalive_idle: 2s",
        Duration::ZERO,
    )
    .await;
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response(false).await.status, 200);
    // Idle for longer than the head timeout: no longer a reason to close.
    assert!(
        conn.quiet_for(Duration::from_millis(1500)).await,
        "an idle connection was closed at the header read timeout"
    );
    conn.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response(false).await.status, 200);
    let idle = Instant::now();
    let rest = conn.read_to_close().await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    within_range(idle.elapsed(), 1800, 3500, "idle connection closed");
    assert_eq!(up.request_count(), 2);
    // Quiet closes are not refusals.
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, REJECTED, &[("reason", "header_read_timeout")]),
        None,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_longer_than_keepalive_idle_is_not_cut() {
    let (gw, _up) = gateway(
        "header_read_timeout: 1s, keepalive_idle: 1s",
        Duration::from_millis(2500),
    )
    .await;
    let mut conn = RawConn::connect(gw.addr()).await;
    let start = Instant::now();
    conn.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = conn.read_response(false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "slow");
    assert!(start.elapsed() >= Duration::from_millis(2400));
    // The idle time counts from the end of the response.
    assert!(conn.quiet_for(Duration::from_millis(700)).await);
    conn.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response(false).await.status, 200);
}

/// Writes `head` a byte every 200 ms until weir answers or closes; returns
/// what it sent back and when its first byte came.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    head: &[u8],
) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut reply = Vec::new();
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                reply.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not cut in time");
    }
    let took = start.elapsed();
    // The rest of the answer, then the close.
    within(IO_TIMEOUT, "weir to close after the 408", async {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            reply.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    (reply, took)
}

fn assert_408(reply: &[u8]) {
    let text = String::from_utf8_lossy(reply);
    assert_eq!(status_of(reply), Some(408), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/problem+json"),
        "{head}"
    );
    let doc: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(doc["code"], "header_read_timeout");
    assert_eq!(doc["status"], 408);
}

#[tokio::test]
async fn a_slow_head_gets_408_then_the_connection_closes() {
    let (gw, up) = gateway("header_read_timeout: 1s", Duration::ZERO).await;
    // A first request on the connection, then a slow second head: the head
    // timeout counts from its first byte, not from the connection's start.
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response(false).await.status, 200);
    assert!(conn.quiet_for(Duration::from_millis(1200)).await);
    let mut stream = conn.into_stream();
    let (reply, took) = trickle(
        &mut stream,
        b"GET /b HTTP/1.1\r\nHost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n",
    )
    .await;
    assert_408(&reply);
    within_range(took, 900, 2500, "408");
    assert_eq!(up.request_count(), 1);
    gw.metric_reaches(REJECTED, &[("reason", "header_read_timeout")], 1.0)
        .await;
}

#[tokio::test]
async fn a_slow_head_over_tls_gets_408() {
    use support::tls::{client_config, Ca, CertDir};
    let dir = CertDir::new("slow-head");
    let ca = Ca::new("weir test CA");
    let (cert, key) = ca.server("edge", &["localhost"]).write(&dir, "edge");
    let up = Upstream::echo().await;
    let gw = TestGateway::start(&format!(
        "limits: {{ header_read_timeout: 1s }}
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
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let config = client_config(&ca, None, &[b"http/1.1"]);
    let mut tls = within(
        IO_TIMEOUT,
        "TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    let (reply, took) = trickle(&mut tls, b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_408(&reply);
    within_range(took, 900, 2500, "408 over TLS");
    assert_eq!(up.request_count(), 0);
    gw.metric_reaches(REJECTED, &[("reason", "header_read_timeout")], 1.0)
        .await;
}

/// What a raw HTTP/2 client saw until weir closed the connection.
#[derive(Debug, Default)]
struct Seen {
    /// Per stream: when it ended, and whether its answer was 200.
    ended: HashMap<u32, (Instant, bool)>,
    ok: HashMap<u32, bool>,
    resets: Vec<u32>,
    /// (when, last stream id, error code)
    goaways: Vec<(Instant, u32, u32)>,
    closed: Option<Instant>,
}

fn get_headers(stream: u32, path: &[u8]) -> Vec<u8> {
    let block = hpack_block(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"a"),
    ]);
    h2_frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        stream,
        &block,
    )
}

/// Sends the preface and `requests`, then reads (acknowledging SETTINGS
/// and PINGs as a real client does when `ack`) until weir closes or `limit`
/// passes.
async fn h2_session(
    gw: &TestGateway,
    requests: &[(u32, &[u8])],
    limit: Duration,
    ack: bool,
) -> Seen {
    let sock = TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut rd, mut wr) = sock.into_split();
    let mut out = h2_start();
    for (stream, path) in requests {
        out.extend(get_headers(*stream, path));
    }
    wr.write_all(&out).await.expect("write");
    let deadline = Instant::now() + limit;
    let mut frames = FrameReader::new();
    let mut seen = Seen::default();
    while let Some(f) = frames.next(&mut rd, deadline).await {
        match f.kind {
            frame::SETTINGS if ack && f.flags & frame::ACK == 0 => {
                let _ = wr
                    .write_all(&h2_frame(frame::SETTINGS, frame::ACK, 0, b""))
                    .await;
            }
            frame::PING if ack && f.flags & frame::ACK == 0 => {
                let _ = wr
                    .write_all(&h2_frame(frame::PING, frame::ACK, 0, &f.payload))
                    .await;
            }
            frame::HEADERS => {
                // hpack's static table: an indexed `:status: 200` is 0x88.
                seen.ok
                    .entry(f.stream)
                    .or_insert(f.payload.first() == Some(&0x88));
                if f.flags & frame::END_STREAM != 0 {
                    seen.ended
                        .insert(f.stream, (Instant::now(), seen.ok[&f.stream]));
                }
            }
            frame::DATA if f.flags & frame::END_STREAM != 0 => {
                let ok = seen.ok.get(&f.stream).copied().unwrap_or(false);
                seen.ended.insert(f.stream, (Instant::now(), ok));
            }
            frame::RST_STREAM => seen.resets.push(f.stream),
            frame::GOAWAY => {
                let last = u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                seen.goaways.push((Instant::now(), last, code));
            }
            _ => {}
        }
    }
    if Instant::now() < deadline {
        seen.closed = Some(Instant::now());
    }
    eprintln!("h2 session: {seen:?}");
    seen
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_keepalive_idle() {
    let (gw, up) = gateway("keepalive_idle: 1s", Duration::from_millis(1500)).await;
    // A stream open longer than keepalive_idle keeps the connection.
    let start = Instant::now();
    let seen = h2_session(&gw, &[(1, b"/slow")], Duration::from_secs(8), true).await;
    let (ended, ok) = seen.ended[&1];
    assert!(ok, "{seen:?}");
    assert!(ended - start >= Duration::from_millis(1400), "{seen:?}");
    assert!(seen.resets.is_empty(), "{seen:?}");
    // Then, idle for keepalive_idle: GOAWAY without error, and a close.
    let &(goaway, _, code) = seen.goaways.first().expect("a GOAWAY");
    assert_eq!(code, NO_ERROR);
    within_range(goaway - ended, 900, 2500, "GOAWAY");
    let closed = seen.closed.expect("weir closed the connection");
    assert!(closed - goaway < Duration::from_secs(2), "{seen:?}");
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn http2_ends_with_goaway_after_max_requests_and_streams_in_flight_finish() {
    let (gw, up) = gateway(
        "h2_max_requests_per_connection: 3",
        Duration::from_millis(500),
    )
    .await;
    let start = Instant::now();
    let seen = h2_session(
        &gw,
        &[(1, b"/slow"), (3, b"/slow"), (5, b"/slow")],
        Duration::from_secs(8),
        true,
    )
    .await;
    // GOAWAY comes once the third stream starts, before any answer.
    let &(goaway, _, code) = seen.goaways.first().expect("a GOAWAY");
    assert_eq!(code, NO_ERROR);
    assert!(goaway - start < Duration::from_millis(450), "{seen:?}");
    // Every stream in flight finishes with its answer.
    assert!(seen.resets.is_empty(), "{seen:?}");
    for stream in [1, 3, 5] {
        let (ended, ok) = seen.ended.get(&stream).copied().expect("stream ended");
        assert!(ok, "stream {stream}: {seen:?}");
        assert!(ended > goaway, "{seen:?}");
    }
    // The last GOAWAY covers them, and then the connection closes.
    let &(_, last, code) = seen.goaways.last().unwrap();
    assert_eq!(code, NO_ERROR);
    assert!(last >= 5, "{seen:?}");
    assert!(seen.closed.is_some(), "{seen:?}");
    assert_eq!(up.request_count(), 3);
    // A new connection is served as usual.
    let mut c = H2Client::connect(gw.addr()).await.expect("h2 handshake");
    assert_eq!(c.get("/a").await.status, 200);
}

#[tokio::test]
async fn an_idle_http2_client_that_never_answers_the_goaway_is_dropped() {
    let (gw, _up) = gateway("keepalive_idle: 1s", Duration::ZERO).await;
    // No request, and no answer to weir's SETTINGS or its GOAWAY's PING.
    let start = Instant::now();
    let seen = h2_session(&gw, &[], Duration::from_secs(8), false).await;
    let &(goaway, _, code) = seen.goaways.first().expect("a GOAWAY");
    assert_eq!(code, NO_ERROR);
    within_range(goaway - start, 900, 2500, "GOAWAY");
    // Idle as long again after the GOAWAY: dropped.
    let closed = seen.closed.expect("weir closed the connection");
    within_range(closed - goaway, 900, 2500, "close after the GOAWAY");
}
