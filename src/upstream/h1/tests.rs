//! Tests of the HTTP/1.1 codec on in-memory streams: what goes on the wire,
//! every response framing, interim responses, early answers, malformed
//! input, and when a connection may be reused or a request sent again.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const LIMIT: Duration = Duration::from_secs(5);

fn pair() -> (Http1Conn, DuplexStream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Http1Conn::new(Stream::Mem(a), None), b)
}

fn request(method: Method, body: Option<&'static [u8]>) -> Request<OutboundBody> {
    let body = OutboundBody::Full(body.map(Bytes::from_static));
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = http::Uri::from_static("/path?q=1");
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("up"));
    req
}

/// Sends `req` on `conn` (the codec borrows the head).
async fn send(
    conn: Http1Conn,
    req: Request<OutboundBody>,
) -> Result<Response<ResponseBody>, SendError> {
    let (parts, body) = req.into_parts();
    conn.send(&parts, body).await
}

/// Sends `req` to a server that reads its head and `body_len` bytes and
/// answers 204; what the server read, the response, and the server side.
async fn answered_204(
    req: Request<OutboundBody>,
    body_len: usize,
) -> (String, Response<ResponseBody>, DuplexStream) {
    let (conn, mut server) = pair();
    let serve = tokio::spawn(async move {
        let head = read_request(&mut server, body_len).await;
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        (head, server)
    });
    let resp = send(conn, req).await.unwrap();
    let (head, server) = serve.await.unwrap();
    (head, resp, server)
}

/// Reads one request head and `body` more bytes from the server side.
async fn read_request(server: &mut DuplexStream, body: usize) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        assert!(seen.len() < 64 * 1024, "no end of head");
        let n = tokio::time::timeout(LIMIT, server.read(&mut byte))
            .await
            .expect("request in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "request head cut short: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    let mut rest = vec![0u8; body];
    tokio::time::timeout(LIMIT, server.read_exact(&mut rest))
        .await
        .expect("body in time")
        .unwrap();
    seen.extend_from_slice(&rest);
    String::from_utf8(seen).unwrap()
}

/// Reads the whole body: its data, its trailers, and the body itself (for
/// the reuse decision).
async fn drain(
    mut body: ResponseBody,
) -> (
    Result<Vec<u8>, Error>,
    Option<http::HeaderMap>,
    ResponseBody,
) {
    let mut data = Vec::new();
    let mut trailers = None;
    for _ in 0..10_000 {
        match tokio::time::timeout(LIMIT, body.frame())
            .await
            .expect("body in time")
        {
            None => return (Ok(data), trailers, body),
            Some(Err(e)) => return (Err(e), trailers, body),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
    }
    panic!("body never ended");
}

async fn exchange(
    method: Method,
    answer: &'static [u8],
) -> Result<Response<ResponseBody>, SendError> {
    let (conn, mut server) = pair();
    let serve = tokio::spawn(async move {
        read_request(&mut server, 0).await;
        server.write_all(answer).await.unwrap();
        server
    });
    let resp = tokio::time::timeout(LIMIT, send(conn, request(method, None)))
        .await
        .expect("response in time");
    // The server side stays open until the body is read.
    let server = serve.await.unwrap();
    std::mem::forget(server);
    resp
}

#[tokio::test]
async fn get_is_encoded_with_no_framing_and_content_length_body_reused() {
    let (conn, mut server) = pair();
    let serve = tokio::spawn(async move {
        let head = read_request(&mut server, 0).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")
            .await
            .unwrap();
        (head, server)
    });
    let resp = send(conn, request(Method::GET, None)).await.unwrap();
    let (head, _server) = serve.await.unwrap();
    assert_eq!(head, "GET /path?q=1 HTTP/1.1\r\nhost: up\r\n\r\n");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
    let (data, _, mut body) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"hello");
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn post_bodies_carry_a_length() {
    for (method, body, expect) in [
        (
            Method::POST,
            None,
            "POST /path?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            Method::DELETE,
            None,
            "DELETE /path?q=1 HTTP/1.1\r\nhost: up\r\n\r\n",
        ),
        (
            Method::PUT,
            Some(&b"abc"[..]),
            "PUT /path?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc",
        ),
    ] {
        let len = body.map_or(0, <[u8]>::len);
        let (head, resp, _server) = answered_204(request(method, body), len).await;
        assert_eq!(head, expect);
        let mut body = resp.into_body();
        assert!(body.is_end_stream());
        assert!(body.take_reusable().is_some());
    }
}

#[tokio::test]
async fn chunked_response_with_extensions_and_trailers() {
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
    )
    .await
    .unwrap();
    let (data, trailers, mut body) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"hello world");
    assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn chunked_response_without_trailers_is_reusable() {
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (data, trailers, mut body) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"abc");
    assert!(trailers.is_none());
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn invalid_chunks_fail_the_body() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n"[..],
    ] {
        let resp = exchange(Method::GET, answer).await.unwrap();
        let (data, _, mut body) = drain(resp.into_body()).await;
        assert!(matches!(data, Err(Error::Invalid(_))), "{data:?}");
        assert!(body.take_reusable().is_none());
    }
}

#[tokio::test]
async fn unframed_response_is_read_to_close_and_not_reused() {
    let (conn, mut server) = pair();
    tokio::spawn(async move {
        read_request(&mut server, 0).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            .await
            .unwrap();
        // Dropping the server side ends the body.
    });
    let resp = send(conn, request(Method::GET, None)).await.unwrap();
    let (data, _, mut body) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"all of it");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn length_body_cut_short_is_an_error() {
    let (conn, mut server) = pair();
    tokio::spawn(async move {
        read_request(&mut server, 0).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
            .await
            .unwrap();
    });
    let resp = send(conn, request(Method::GET, None)).await.unwrap();
    let (data, _, _) = drain(resp.into_body()).await;
    assert!(matches!(data, Err(Error::Closed)), "{data:?}");
}

#[tokio::test]
async fn head_204_and_304_have_no_body() {
    for (method, answer) in [
        (
            Method::HEAD,
            &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"[..],
        ),
        (
            Method::GET,
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 100\r\n\r\n"[..],
        ),
        (
            Method::GET,
            &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 100\r\n\r\n"[..],
        ),
    ] {
        let resp = exchange(method, answer).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "100");
        let mut body = resp.into_body();
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert!(body.take_reusable().is_some());
    }
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("link").is_none());
    let (data, _, _) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"ok");
}

#[tokio::test]
async fn invalid_heads_are_errors() {
    for answer in [
        &b"NOT HTTP\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..],
        &b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"[..],
        &b"HTTP/1.1 99 Low\r\n\r\n"[..],
    ] {
        match exchange(Method::GET, answer).await {
            Err(SendError::Failed(Error::Invalid(_))) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(answer)),
        }
    }
}

#[tokio::test]
async fn same_length_twice_is_accepted() {
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
    )
    .await
    .unwrap();
    let (data, _, _) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"ok");
}

#[tokio::test]
async fn bytes_past_the_response_prevent_reuse() {
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
    )
    .await
    .unwrap();
    let (data, _, mut body) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"ok");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn connection_close_and_http10_prevent_reuse() {
    for (answer, reusable) in [
        (
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
            false,
        ),
        (&b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"[..], false),
        (
            &b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"[..],
            true,
        ),
    ] {
        let resp = exchange(Method::GET, answer).await.unwrap();
        let mut body = resp.into_body();
        assert_eq!(body.take_reusable().is_some(), reusable);
    }
}

#[tokio::test]
async fn early_answer_to_a_large_upload_stops_the_upload() {
    // The pipe holds far less than the body: the upload cannot finish
    // before the server answers.
    let (a, mut server) = tokio::io::duplex(16 * 1024);
    let conn = Http1Conn::new(Stream::Mem(a), None);
    static BIG: [u8; 1 << 20] = [b'x'; 1 << 20];
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let _ = server.read(&mut buf).await;
        server
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
            .await
            .unwrap();
        // Keep the connection open and unread: the client must not wait
        // for the rest of its upload to drain.
        tokio::time::sleep(LIMIT * 2).await;
        drop(server);
    });
    let resp = tokio::time::timeout(LIMIT, send(conn, request(Method::POST, Some(&BIG[..]))))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (data, _, mut body) = drain(resp.into_body()).await;
    assert_eq!(data.unwrap(), b"big!");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn an_answer_sent_before_the_target_closed_survives_the_failed_upload() {
    let (a, mut server) = tokio::io::duplex(16 * 1024);
    let conn = Http1Conn::new(Stream::Mem(a), None);
    static BIG: [u8; 1 << 20] = [b'x'; 1 << 20];
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let _ = server.read(&mut buf).await;
        server
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        // Gone: the client's next write fails, the answer is still unread.
        drop(server);
    });
    let resp = tokio::time::timeout(LIMIT, send(conn, request(Method::POST, Some(&BIG[..]))))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp.into_body().take_reusable().is_none());
}

/// A connection that has served one exchange, and the server side.
async fn served_once() -> (Http1Conn, DuplexStream) {
    let (conn, mut server) = pair();
    let serve = tokio::spawn(async move {
        read_request(&mut server, 0).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        server
    });
    let resp = send(conn, request(Method::GET, None)).await.unwrap();
    let server = serve.await.unwrap();
    let conn = resp.into_body().take_reusable().expect("reusable");
    (conn, server)
}

#[tokio::test]
async fn idle_check_sees_close_and_unasked_bytes() {
    let (mut conn, server) = served_once().await;
    assert!(conn.is_idle_open());
    drop(server);
    assert!(!conn.is_idle_open());

    let (mut conn, mut server) = served_once().await;
    server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    assert!(!conn.is_idle_open());
}

#[tokio::test]
async fn closed_reused_connection_hands_back_an_unsent_request() {
    let (conn, server) = served_once().await;
    drop(server);
    match send(conn, request(Method::POST, Some(b"data"))).await {
        Err(SendError::Retry(body, _)) => {
            assert!(matches!(*body, OutboundBody::Full(Some(b)) if b == "data"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn close_after_the_request_was_written_retries_only_idempotent_requests() {
    for (method, retried) in [(Method::GET, true), (Method::POST, false)] {
        let (conn, mut server) = served_once().await;
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            drop(server);
        });
        let result = send(conn, request(method.clone(), Some(b"data"))).await;
        match result {
            Err(SendError::Retry(..)) if retried => {}
            Err(SendError::Failed(_)) if !retried => {}
            other => panic!("{method}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn fresh_connection_failure_is_never_retried() {
    let (conn, server) = pair();
    drop(server);
    assert!(matches!(
        send(conn, request(Method::GET, None)).await,
        Err(SendError::Failed(_))
    ));
}

#[test]
fn value_bytes_agree_with_http() {
    // `head::build` trusts httparse's value check instead of repeating
    // `HeaderValue`'s: the two must accept exactly the same bytes.
    for b in 0..=255u8 {
        if b == b'\r' || b == b'\n' {
            continue;
        }
        let mut buf = bytes::BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-v: a"[..]);
        buf.extend_from_slice(&[b, b'a']);
        buf.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        let parsed = head::parse(&mut buf);
        let checked = http::HeaderValue::from_bytes(&[b'a', b, b'a']).is_ok();
        match parsed {
            Ok(Some(h)) => {
                assert!(checked, "byte {b:#04x} accepted by the parser only");
                let value = h.into_response().headers()["x-v"].clone();
                assert_eq!(value.as_bytes(), &[b'a', b, b'a']);
            }
            other => assert!(!checked, "byte {b:#04x} refused by the parser: {other:?}"),
        }
    }
}

#[tokio::test]
async fn connection_management_headers_are_consumed_unless_they_name_others() {
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(!resp.headers().contains_key("connection"));
    assert!(!resp.headers().contains_key("keep-alive"));
    let resp = exchange(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["connection"], "keep-alive, x-hop");
    assert_eq!(resp.headers()["x-hop"], "1");
}

#[tokio::test]
async fn heads_with_many_lines_are_read_whole() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..60 {
        answer.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"content-length: 0\r\n\r\n");
    let resp = exchange(Method::GET, answer.leak()).await.unwrap();
    assert_eq!(resp.headers().len(), 61);
    assert_eq!(resp.headers()["x-h59"], "59");
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..101 {
        answer.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"\r\n");
    assert!(matches!(
        exchange(Method::GET, answer.leak()).await,
        Err(SendError::Failed(Error::Invalid(_)))
    ));
}

#[tokio::test]
async fn framing_headers_left_on_the_request_are_the_codecs_to_write() {
    // A Transfer-Encoding is never passed on (the codec frames the body),
    // and a Content-Length that is not a number gives way to chunking.
    for (extra, expect) in [
        (
            ("transfer-encoding", "gzip"),
            "PUT /path?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc",
        ),
        (
            ("content-length", "x3"),
            "PUT /path?q=1 HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ] {
        let len = expect.len() - expect.find("\r\n\r\n").unwrap() - 4;
        let mut req = request(Method::PUT, Some(b"abc"));
        req.headers_mut()
            .insert(extra.0, http::HeaderValue::from_static(extra.1));
        let (head, resp, _server) = answered_204(req, len).await;
        assert_eq!(head, expect);
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn a_read_of_the_rest_of_a_body_has_room_to_come_back_short() {
    // tokio keeps a socket marked readable after a read that filled all
    // the room it was given; the idle check then pays a syscall to learn
    // there is nothing more. One spare byte lets the read come back short.
    let (mut conn, mut server) = pair();
    let rest = 20_000usize;
    server.write_all(&vec![b'x'; rest]).await.unwrap();
    let mut got = 0;
    while got < rest {
        let n = tokio::time::timeout(
            LIMIT,
            std::future::poll_fn(|cx| conn.poll_fill_expecting(cx, (rest - got) as u64)),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            conn.read_buf.capacity() > conn.read_buf.len(),
            "a read expecting {} bytes had no room beyond them",
            rest - got
        );
        got += n;
    }
    assert_eq!(got, rest);
}
