//! weir's own HTTP/1.1 upstream codec against targets that behave in ways a
//! well-mannered hyper upstream never does: answering an upload early,
//! chunked bodies with trailers, bodies delimited by the connection's end,
//! and keep-alive connections closed at awkward moments.
//!
//! Each target here is a scripted TCP server: it reads request heads and
//! writes exactly the bytes a test gives it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Method;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted target does on each accepted connection: it gets the
/// connection's index (0 for the first) and the stream.
type Script = Arc<
    dyn Fn(usize, TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A scripted target on a loopback port; counts accepted connections.
struct Scripted {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ended) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let i = count.fetch_add(1, Ordering::SeqCst);
                let run = script(i, stream);
                let ended = ended.clone();
                tokio::spawn(async move {
                    // The script owns the stream: it is closed when the
                    // script ends, before this count moves.
                    run.await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Scripted {
            addr,
            accepted,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads one request head (and `Content-Length` bytes of body when
/// `with_body`); None when the connection ended first.
async fn read_request(stream: &mut TcpStream, with_body: bool) -> Option<String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if seen.len() > 64 * 1024 {
            return None;
        }
        match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut byte)).await {
            Ok(Ok(1)) => seen.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    if with_body {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut body))
            .await
            .ok()?
            .ok()?;
    }
    Some(head)
}

/// Waits (bounded) for the peer to close, discarding what it sends.
async fn until_closed(stream: &mut TcpStream) {
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

async fn gateway(target: &Scripted, retry: bool) -> TestGateway {
    let retry = if retry {
        "    retry: { backoff: { base: 1ms, max: 2ms } }\n"
    } else {
        ""
    };
    TestGateway::with(
        &format!(
            "routes:\n  - name: api\n    upstream: up\n{retry}upstreams:\n  - name: up\n    targets: [{{ address: \"{{up}}\" }}]\n"
        ),
        &[("up", &target.addr)],
    )
    .await
}

/// A target that answers a request without reading its body, then stops
/// sending and, when `linger`, waits for weir to close.
async fn answers_early(linger: bool) -> Scripted {
    Scripted::start(Arc::new(move |_, mut s| {
        Box::pin(async move {
            if read_request(&mut s, false).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large")
                .await;
            if linger {
                let _ = s.shutdown().await;
                until_closed(&mut s).await;
            }
        })
    }))
    .await
}

#[tokio::test]
async fn an_early_413_to_a_large_upload_reaches_the_client() {
    // A target that closes at once resets the upload, and the kernel then
    // drops its answer before weir can read it: only a lingering close
    // can be relayed (by anyone).
    let target = answers_early(true).await;
    let gw = gateway(&target, false).await;
    early_413(&gw).await;
}

async fn early_413(gw: &TestGateway) {
    // Far more than socket buffers hold: weir cannot finish the upload.
    let body = vec![b'x'; 8 << 20];
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = raw_exchange(gw.addr(), request).await;
    assert_eq!(
        status_of(&answer),
        Some(413),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(300)])
    );
    assert!(answer.ends_with(b"too large"));
}

#[tokio::test]
async fn a_chunked_response_with_trailers_is_relayed_and_the_connection_reused() {
    let target = Scripted::start(Arc::new(|_, mut s| {
        Box::pin(async move {
            for _ in 0..10 {
                if read_request(&mut s, false).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;note=x\r\nhello\r\n6\r\n world\r\n0\r\nx-digest: 1\r\n\r\n")
                    .await;
            }
        })
    }))
    .await;
    let gw = gateway(&target, false).await;
    let mut client = H1Client::connect(gw.addr()).await;
    for _ in 0..3 {
        let resp = client.get("/chunks").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello world");
    }
    assert_eq!(target.accepted(), 1, "one upstream connection, reused");
}

#[tokio::test]
async fn a_response_without_framing_is_read_to_the_close() {
    let target = Scripted::start(Arc::new(|_, mut s| {
        Box::pin(async move {
            if read_request(&mut s, false).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
                .await;
            // Closing ends the body.
        })
    }))
    .await;
    let gw = gateway(&target, false).await;
    let mut client = H1Client::connect(gw.addr()).await;
    for _ in 0..2 {
        let resp = client.get("/stream").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "until the end");
    }
    assert_eq!(
        target.accepted(),
        2,
        "a close-delimited connection is not reused"
    );
}

/// A target that answers the first request of each connection and, on the
/// second, reads the request whole and closes without an answer (a
/// keep-alive connection it dropped just as the request came).
async fn closes_on_second_request() -> Scripted {
    Scripted::start(Arc::new(|i, mut s| {
        Box::pin(async move {
            if read_request(&mut s, true).await.is_none() {
                return;
            }
            let body = format!("conn {i}");
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            let _ = read_request(&mut s, true).await;
        })
    }))
    .await
}

#[tokio::test]
async fn a_get_on_a_connection_closed_under_it_is_sent_again() {
    let target = closes_on_second_request().await;
    // No retry policy: the resend is the connection's own, not a retry.
    let gw = gateway(&target, false).await;
    let mut client = H1Client::connect(gw.addr()).await;
    assert_eq!(client.get("/one").await.text(), "conn 0");
    let resp = client.get("/two").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "conn 1");
    assert_eq!(target.accepted(), 2);
}

#[tokio::test]
async fn a_post_that_reached_the_target_is_not_sent_again() {
    let target = closes_on_second_request().await;
    let gw = gateway(&target, false).await;
    let mut client = H1Client::connect(gw.addr()).await;
    assert_eq!(client.get("/one").await.text(), "conn 0");
    let resp = client
        .request(req(Method::POST, "/order").body(full("pay once")).unwrap())
        .await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(
        target.accepted(),
        1,
        "the POST went out once, on one connection"
    );
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_for_a_post() {
    let target = Scripted::start(Arc::new(|i, mut s| {
        Box::pin(async move {
            if read_request(&mut s, true).await.is_none() {
                return;
            }
            let body = format!("conn {i}");
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            // Idle timeout on the target's side: close right away.
        })
    }))
    .await;
    let gw = gateway(&target, false).await;
    let mut client = H1Client::connect(gw.addr()).await;
    assert_eq!(client.get("/one").await.text(), "conn 0");
    // The close reaches weir before the next request.
    eventually(IO_TIMEOUT, "the target to close", || async {
        target.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    let resp = client
        .request(req(Method::POST, "/order").body(full("pay once")).unwrap())
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "conn 1");
    assert_eq!(target.accepted(), 2);
}
