//! WebSocket proxying: a real WebSocket echo server (tokio-tungstenite)
//! behind weir, and a tokio-tungstenite client in front of it.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use support::*;

type Ws = WebSocketStream<TcpStream>;

/// Held by the tests that allocate a lot (the 16 MiB message) or measure
/// this process's memory, so that the measurement sees only its own.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Room for the 16 MiB message, small read buffers for the many-connection
/// test.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(32 << 20))
}

/// What the echo server saw.
#[derive(Default)]
struct Seen {
    handshakes: AtomicUsize,
    /// Close codes received from the client side (through weir).
    closes: Mutex<Vec<u16>>,
}

/// A WebSocket echo server on `127.0.0.1:0`. It echoes text and binary
/// messages; `close:CODE` makes it close with CODE; `ping-me` makes it
/// ping, and it answers the pong with `pong:PAYLOAD`. A handshake for
/// `/refuse` is answered 403 with a body.
struct EchoServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl EchoServer {
    async fn spawn() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let shared = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        EchoServer { addr, seen }
    }

    fn closes(&self) -> Vec<u16> {
        self.seen.closes.lock().unwrap().clone()
    }
}

async fn serve(stream: TcpStream, seen: Arc<Seen>) {
    // tungstenite's callback type returns its error response by value.
    #[allow(clippy::result_large_err)]
    let refuse = |req: &Request, resp: Response| {
        if req.uri().path() == "/refuse" {
            let body = "no WebSocket here";
            let mut r = ErrorResponse::new(Some(body.to_owned()));
            *r.status_mut() = http::StatusCode::FORBIDDEN;
            r.headers_mut()
                .insert("content-length", body.len().to_string().parse().unwrap());
            return Err(r);
        }
        Ok(resp)
    };
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(stream, refuse, Some(ws_config())).await;
    let Ok(mut ws) = accepted else { return };
    seen.handshakes.fetch_add(1, Ordering::SeqCst);
    while let Some(msg) = ws.next().await {
        let reply = match msg {
            Ok(Message::Text(t)) if t.starts_with("close:") => {
                let code: u16 = t["close:".len()..].parse().unwrap();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "server closing".into(),
                };
                let _ = ws.close(Some(frame)).await;
                continue;
            }
            Ok(Message::Text(t)) if t.as_str() == "ping-me" => Message::Ping("srv".into()),
            Ok(Message::Pong(p)) => Message::text(format!("pong:{}", String::from_utf8_lossy(&p))),
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                seen.closes.lock().unwrap().push(code);
                continue;
            }
            // Pings are answered by tungstenite itself.
            Ok(_) => continue,
            Err(_) => break,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let url = format!("ws://{addr}{path}");
    within(
        IO_TIMEOUT,
        "the WebSocket handshake",
        tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config())),
    )
    .await
    .map(|(ws, _)| ws)
}

/// The next message other than a pong.
async fn next_message(ws: &mut Ws) -> Message {
    loop {
        let msg = within(IO_TIMEOUT, "a message", ws.next())
            .await
            .expect("stream open")
            .expect("message");
        if !matches!(msg, Message::Pong(_)) {
            return msg;
        }
    }
}

/// Reads until the stream ends; true when it ended cleanly (no reset).
async fn ends_cleanly(ws: &mut Ws) -> bool {
    loop {
        match within(IO_TIMEOUT, "the end of the WebSocket", ws.next()).await {
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return true,
            Some(Err(e)) => {
                eprintln!("WebSocket ended with {e}");
                return false;
            }
            Some(Ok(_)) => {}
        }
    }
}

fn close_code(msg: &Message) -> Option<u16> {
    match msg {
        Message::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

const ROUTES: &str = "
routes:
  - name: ws
    match: { path_prefix: / }
    upstream: echo
upstreams:
  - name: echo
    targets: [{ address: \"{up}\" }]
";

async fn gateway(up: &EchoServer, extra: &str) -> TestGateway {
    TestGateway::with(&format!("{extra}{ROUTES}"), &[("up", &up.addr)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_binary_fragmented_and_large_messages_pass_through() {
    let _memory = MEMORY.lock().await;
    let up = EchoServer::spawn().await;
    let gw = gateway(&up, "").await;
    let mut ws = connect(gw.addr(), "/chat").await.unwrap();

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));
    let bytes: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(bytes));

    // Three fragments with a ping between them (RFC 6455 §5.4 allows
    // control frames inside a fragmented message).
    let part = |data: &'static str, op: Data, fin: bool| {
        Message::Frame(Frame::message(data, OpCode::Data(op), fin))
    };
    ws.send(part("frag", Data::Text, false)).await.unwrap();
    ws.send(Message::Ping("mid".into())).await.unwrap();
    ws.send(part("men", Data::Continue, false)).await.unwrap();
    ws.send(part("ted", Data::Continue, true)).await.unwrap();
    let mut pong = false;
    let echoed = loop {
        match within(IO_TIMEOUT, "the fragmented echo", ws.next()).await {
            Some(Ok(Message::Pong(p))) => pong = &p[..] == b"mid",
            Some(Ok(m)) => break m,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(echoed, Message::text("fragmented"));
    assert!(pong, "the ping between fragments was answered");

    let large: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(large.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(b) => assert!(b[..] == large[..], "16 MiB message changed"),
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).await.unwrap();
    assert!(ends_cleanly(&mut ws).await);
}

#[tokio::test]
async fn pings_and_pongs_pass_both_ways() {
    let up = EchoServer::spawn().await;
    let gw = gateway(&up, "").await;
    let mut ws = connect(gw.addr(), "/").await.unwrap();
    // Client ping, upstream pong.
    ws.send(Message::Ping("c1".into())).await.unwrap();
    match within(IO_TIMEOUT, "the pong", ws.next()).await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"c1"),
        other => panic!("expected the upstream's pong, got {other:?}"),
    }
    // Upstream ping, client pong (sent by tungstenite), reported back.
    ws.send(Message::text("ping-me")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::Ping("srv".into()));
    // The client's pong goes out with its next write.
    ws.flush().await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("pong:srv"));
}

#[tokio::test]
async fn close_codes_pass_both_ways() {
    let up = EchoServer::spawn().await;
    let gw = gateway(&up, "").await;

    // The client closes with 4000: the upstream sees it, and its answer
    // comes back.
    let mut ws = connect(gw.addr(), "/").await.unwrap();
    let frame = CloseFrame {
        code: CloseCode::from(4000),
        reason: "client done".into(),
    };
    ws.close(Some(frame)).await.unwrap();
    let answer = next_message(&mut ws).await;
    assert_eq!(close_code(&answer), Some(4000), "{answer:?}");
    assert!(ends_cleanly(&mut ws).await);
    eventually(IO_TIMEOUT, "the upstream to see 4000", || {
        std::future::ready(up.closes() == [4000])
    })
    .await;

    // The upstream closes with 4001: the client sees it.
    let mut ws = connect(gw.addr(), "/").await.unwrap();
    ws.send(Message::text("close:4001")).await.unwrap();
    let close = next_message(&mut ws).await;
    assert_eq!(close_code(&close), Some(4001), "{close:?}");
    assert!(ends_cleanly(&mut ws).await);
    eventually(
        IO_TIMEOUT,
        "the client's answer to reach the upstream",
        || std::future::ready(up.closes() == [4000, 4001]),
    )
    .await;
}

#[tokio::test]
async fn an_upstream_refusal_is_passed_through() {
    let up = EchoServer::spawn().await;
    let gw = gateway(&up, "").await;
    match connect(gw.addr(), "/refuse").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = resp.body().as_deref().unwrap_or_default();
            assert_eq!(body, b"no WebSocket here");
        }
        other => panic!("expected the upstream's 403, got {other:?}"),
    }
    gw.metric_reaches(
        "weir_websocket_upgrades_total",
        &[("route", "ws"), ("result", "refused")],
        1.0,
    )
    .await;
    assert_eq!(up.seen.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_route_without_websocket_answers_403() {
    let up = EchoServer::spawn().await;
    let gw = TestGateway::with(
        "
routes:
  - name: plain
    match: { path_prefix: / }
    upstream: echo
    websocket: false
upstreams:
  - name: echo
    targets: [{ address: \"{up}\" }]
",
        &[("up", &up.addr)],
    )
    .await;
    match connect(gw.addr(), "/chat").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("websocket_not_allowed"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    gw.metric_reaches(
        "weir_websocket_upgrades_total",
        &[("route", "plain"), ("result", "not_allowed")],
        1.0,
    )
    .await;
    assert_eq!(up.seen.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_websocket_to_an_h2c_upstream_answers_501() {
    let up = EchoServer::spawn().await;
    let gw = TestGateway::with(
        &ROUTES.replace("    targets:", "    protocol: h2c\n    targets:"),
        &[("up", &up.addr)],
    )
    .await;
    match connect(gw.addr(), "/").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 501);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("websocket_unsupported"), "{body}");
        }
        other => panic!("expected 501, got {other:?}"),
    }
    gw.metric_reaches(
        "weir_websocket_upgrades_total",
        &[("route", "ws"), ("result", "error")],
        1.0,
    )
    .await;
    assert_eq!(up.seen.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_silent_websocket_is_closed_after_its_idle_timeout() {
    let up = EchoServer::spawn().await;
    let gw = TestGateway::with(
        &ROUTES.replace(
            "    upstream: echo\n",
            "    upstream: echo\n    websocket_idle_timeout: 300ms\n",
        ),
        &[("up", &up.addr)],
    )
    .await;
    let mut ws = connect(gw.addr(), "/").await.unwrap();
    ws.send(Message::text("once")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("once"));
    let quiet = Instant::now();
    let close = next_message(&mut ws).await;
    assert_eq!(close_code(&close), Some(1001), "{close:?}");
    assert!(quiet.elapsed() >= Duration::from_millis(250));
    assert!(ends_cleanly(&mut ws).await);
    eventually(IO_TIMEOUT, "the upstream to get 1001", || {
        std::future::ready(up.closes() == [1001])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001_to_both_sides_after_the_grace() {
    let up = EchoServer::spawn().await;
    let grace = Duration::from_millis(800);
    let mut gw = gateway(&up, "runtime:\n  shutdown_grace: 800ms\n").await;
    let mut ws = connect(gw.addr(), "/").await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("before"));

    let started = Instant::now();
    let shutdown = tokio::spawn(gw.take().shutdown());
    // Within the grace the WebSocket still works.
    ws.send(Message::text("during")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("during"));
    let close = next_message(&mut ws).await;
    assert_eq!(close_code(&close), Some(1001), "{close:?}");
    assert!(
        started.elapsed() >= grace - Duration::from_millis(50),
        "closed after {:?}, before the grace",
        started.elapsed()
    );
    assert!(ends_cleanly(&mut ws).await, "closed with a reset");
    eventually(IO_TIMEOUT, "the upstream to get 1001", || {
        std::future::ready(up.closes() == [1001])
    })
    .await;
    let drained = within(IO_TIMEOUT, "the shutdown", shutdown).await.unwrap();
    assert!(!drained, "a WebSocket had to be closed: not a full drain");
}

#[tokio::test]
async fn metrics_and_access_log_describe_the_websocket() {
    let up = EchoServer::spawn().await;
    let log = TempPath::new("ws-access");
    let gw = gateway(
        &up,
        &format!(
            "access_log:\n  enabled: true\n  path: \"{}\"\n",
            log.as_str()
        ),
    )
    .await;
    let opened = Instant::now();
    let mut ws = connect(gw.addr(), "/logged").await.unwrap();
    gw.metric_reaches("weir_websocket_connections_active", &[("route", "ws")], 1.0)
        .await;
    gw.metric_reaches(
        "weir_websocket_upgrades_total",
        &[("route", "ws"), ("result", "upgraded")],
        1.0,
    )
    .await;
    let payload = "x".repeat(1000);
    ws.send(Message::text(payload.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text(payload));
    ws.close(None).await.unwrap();
    assert!(ends_cleanly(&mut ws).await);
    gw.metric_reaches("weir_websocket_connections_active", &[("route", "ws")], 0.0)
        .await;
    let lifetime = opened.elapsed();

    let lines = access_log_lines(&log, 1).await;
    let l = &lines[0];
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["path"], "/logged", "{l}");
    assert_eq!(l["route"], "ws", "{l}");
    // A 1000-byte masked text frame (8 bytes of header) and a close frame
    // (6) go up; the echo (4) and the close answer (2) come down.
    assert_eq!(l["bytes_in"], 1000 + 8 + 6, "{l}");
    assert_eq!(l["bytes_out"], 1000 + 4 + 2, "{l}");
    let ms = l["duration_ms"].as_f64().expect("duration");
    assert!(ms > 0.0 && ms <= lifetime.as_secs_f64() * 1000.0, "{l}");
}

/// Resident set size of this process (weir runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
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

/// Opens `n` WebSockets to `addr` (at most 100 handshakes at a time),
/// exchanges one message on each, and returns them open.
async fn open_many(addr: SocketAddr, n: usize) -> Vec<Ws> {
    let mut all = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= 100 {
            all.push(tasks.join_next().await.unwrap().unwrap());
        }
        tasks.spawn(async move {
            let mut ws = connect(addr, "/many").await.unwrap();
            let text = format!("message {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next_message(&mut ws).await, Message::text(text));
            ws
        });
    }
    while let Some(ws) = tasks.join_next().await {
        all.push(ws.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_websockets() {
    const N: usize = 1000;
    let _memory = MEMORY.lock().await;
    // Direct: client and server sockets; through weir: two more each.
    ensure_files(8 * N as u64);
    let up = EchoServer::spawn().await;
    let gw = gateway(&up, "").await;
    let started = Instant::now();

    // The same number straight to the echo server first: the difference
    // between the two growths is what weir adds.
    let before = rss_kib();
    let direct = within(
        Duration::from_secs(20),
        "direct WebSockets",
        open_many(up.addr, N),
    )
    .await;
    let direct_growth = rss_kib().saturating_sub(before);
    let before = rss_kib();
    let proxied = within(
        Duration::from_secs(20),
        "WebSockets through weir",
        open_many(gw.addr(), N),
    )
    .await;
    let proxied_growth = rss_kib().saturating_sub(before);
    gw.metric_reaches(
        "weir_websocket_connections_active",
        &[("route", "ws")],
        N as f64,
    )
    .await;
    let weir_kib = proxied_growth.saturating_sub(direct_growth);
    println!(
        "{N} WebSockets: RSS +{direct_growth} KiB direct, +{proxied_growth} KiB through weir; \
         weir's share about {weir_kib} KiB ({:.1} KiB per WebSocket)",
        weir_kib as f64 / N as f64
    );
    // Two 16 KiB copy buffers per tunnel, plus hyper's and tokio's state.
    assert!(
        weir_kib < 100 * N as u64,
        "weir grew by {weir_kib} KiB for {N} WebSockets"
    );

    let close_all = |set: Vec<Ws>| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for mut ws in set {
            tasks.spawn(async move {
                ws.close(None).await.unwrap();
                ends_cleanly(&mut ws).await
            });
        }
        let mut clean = 0;
        while let Some(ok) = tasks.join_next().await {
            clean += usize::from(ok.unwrap());
        }
        clean
    };
    assert_eq!(close_all(proxied).await, N);
    assert_eq!(close_all(direct).await, N);
    gw.metric_reaches("weir_websocket_connections_active", &[("route", "ws")], 0.0)
        .await;
    gw.metric_reaches(
        "weir_websocket_upgrades_total",
        &[("route", "ws"), ("result", "upgraded")],
        N as f64,
    )
    .await;
    println!(
        "{N} WebSockets opened, used and closed in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn secure_websockets_pass_through_a_tls_listener() {
    use support::tls::{client_config, Ca, CertDir};
    let dir = CertDir::new("wss");
    let ca = Ca::new("weir test CA");
    let (cert, key) = ca.server("edge", &["edge.test"]).write(&dir, "edge");
    let up = EchoServer::spawn().await;
    let gw = TestGateway::start(&fill(
        &format!(
            "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    \
             tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}\n{ROUTES}"
        ),
        &[("up", &up.addr)],
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("edge.test").expect("name");
    // WebSockets ride on HTTP/1.1 (RFC 8441 over HTTP/2 is not supported).
    let tls = tokio_rustls::TlsConnector::from(client_config(&ca, None, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (mut ws, _) = within(
        IO_TIMEOUT,
        "the secure WebSocket handshake",
        tokio_tungstenite::client_async("wss://edge.test/secure", tls),
    )
    .await
    .expect("wss handshake");
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = within(IO_TIMEOUT, "the echo", ws.next())
        .await
        .expect("open")
        .expect("message");
    assert_eq!(echoed, Message::text("over tls"));
    ws.close(None).await.unwrap();
    loop {
        match within(IO_TIMEOUT, "the close", ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(up.seen.handshakes.load(Ordering::Relaxed), 1);
}
