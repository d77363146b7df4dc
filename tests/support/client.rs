//! Clients: HTTP/1.1 over hyper's connection API (one connection, reused for
//! keep-alive), h2c with prior knowledge, and raw TCP for bytes hyper's client
//! would refuse to send.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pattern::PatternCheck;
use super::upstream::Echoed;
use super::{within, BoxError, IO_TIMEOUT};

/// Request body type of the test clients.
pub type ClientBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body held in memory.
pub fn full(b: impl Into<Bytes>) -> ClientBody {
    http_body_util::Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// An empty body.
pub fn empty() -> ClientBody {
    full(Bytes::new())
}

/// A request builder for `method` `path` (origin form).
pub fn req(method: Method, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

/// A response read whole.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub async fn read(resp: Response<Incoming>) -> TestResponse {
        let (parts, body) = resp.into_parts();
        let body = within(IO_TIMEOUT, "the response body", body.collect())
            .await
            .expect("read response body")
            .to_bytes();
        TestResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// The first value of `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii"))
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// The upstream's `Reply::echo()` document.
    pub fn echoed(&self) -> Echoed {
        assert_eq!(self.status, 200, "expected an echo, got: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not an echo ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 client connection; requests on it reuse the connection.
pub struct H1Client {
    addr: SocketAddr,
    sender: http1::SendRequest<ClientBody>,
}

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> H1Client {
        let stream = within(IO_TIMEOUT, "connect", TcpStream::connect(addr))
            .await
            .expect("connect to weir");
        H1Client::over(addr, stream).await
    }

    /// A connection from the loopback address `from` (any of 127.0.0.0/8),
    /// for tests that need clients with different addresses.
    pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> H1Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the client address");
        let stream = within(IO_TIMEOUT, "connect", socket.connect(addr))
            .await
            .expect("connect to weir");
        H1Client::over(addr, stream).await
    }

    async fn over(addr: SocketAddr, stream: TcpStream) -> H1Client {
        let _ = stream.set_nodelay(true);
        let (sender, conn) = within(
            IO_TIMEOUT,
            "http1 handshake",
            http1::handshake(TokioIo::new(stream)),
        )
        .await
        .expect("http1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H1Client { addr, sender }
    }

    /// Sends `req` and returns the response head with its body unread. Adds
    /// `Host: <weir address>` when the request has none.
    pub async fn send(&mut self, mut req: Request<ClientBody>) -> Response<Incoming> {
        self.try_send(&mut req).await.expect("request failed")
    }

    async fn try_send(
        &mut self,
        req: &mut Request<ClientBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        if !req.headers().contains_key(http::header::HOST) {
            let host = self.addr.to_string().parse().unwrap();
            req.headers_mut().insert(http::header::HOST, host);
        }
        let req = std::mem::replace(req, Request::new(empty()));
        within(IO_TIMEOUT, "connection ready", self.sender.ready()).await?;
        within(IO_TIMEOUT, "response head", self.sender.send_request(req)).await
    }

    /// Sends `req` and reads the whole response.
    pub async fn request(&mut self, req: Request<ClientBody>) -> TestResponse {
        TestResponse::read(self.send(req).await).await
    }

    /// Sends `req`; Err when the connection failed before a response.
    pub async fn try_request(
        &mut self,
        mut req: Request<ClientBody>,
    ) -> Result<TestResponse, hyper::Error> {
        let resp = self.try_send(&mut req).await?;
        Ok(TestResponse::read(resp).await)
    }

    pub async fn get(&mut self, path: &str) -> TestResponse {
        self.request(req(Method::GET, path).body(empty()).unwrap())
            .await
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// GET `path` on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> TestResponse {
    H1Client::connect(addr).await.get(path).await
}

/// Sends `req` on a new connection.
pub async fn send(addr: SocketAddr, req: Request<ClientBody>) -> TestResponse {
    H1Client::connect(addr).await.request(req).await
}

/// Reads a pattern body to the end, checking it on the way.
pub async fn read_pattern(body: Incoming, limit: Duration) -> PatternCheck {
    let mut body = body;
    let mut check = PatternCheck::new();
    within(limit, "the pattern body", async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(data) = frame.data_ref() {
                check.update(data);
            }
        }
    })
    .await;
    check
}

/// An h2c (prior knowledge) client connection; clones share it.
#[derive(Clone)]
pub struct H2Client {
    addr: SocketAddr,
    sender: http2::SendRequest<ClientBody>,
}

impl H2Client {
    /// Connects and performs the HTTP/2 handshake.
    pub async fn connect(addr: SocketAddr) -> Result<H2Client, hyper::Error> {
        let stream = within(IO_TIMEOUT, "connect", TcpStream::connect(addr))
            .await
            .expect("connect to weir");
        let _ = stream.set_nodelay(true);
        let (sender, conn) = within(
            IO_TIMEOUT,
            "h2 handshake",
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Client { addr, sender })
    }

    /// Sends `req` and returns the response head, body unread. A path-only
    /// URI gets `http://<weir address>` prepended.
    pub async fn send(
        &mut self,
        mut req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        if req.uri().authority().is_none() {
            let uri = format!("http://{}{}", self.addr, req.uri());
            *req.uri_mut() = uri.parse().unwrap();
        }
        within(IO_TIMEOUT, "h2 ready", self.sender.ready()).await?;
        within(IO_TIMEOUT, "h2 response", self.sender.send_request(req)).await
    }

    /// Sends `req` and reads the whole response; Err when the request
    /// failed before a response head.
    pub async fn try_request(
        &mut self,
        req: Request<ClientBody>,
    ) -> Result<TestResponse, hyper::Error> {
        let resp = self.send(req).await?;
        Ok(TestResponse::read(resp).await)
    }

    pub async fn request(&mut self, req: Request<ClientBody>) -> TestResponse {
        self.try_request(req).await.expect("h2 request failed")
    }

    pub async fn get(&mut self, path: &str) -> TestResponse {
        self.request(req(Method::GET, path).body(empty()).unwrap())
            .await
    }
}

/// A raw TCP connection for hand-written requests.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within(IO_TIMEOUT, "connect", TcpStream::connect(addr))
            .await
            .expect("connect to weir");
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within(IO_TIMEOUT, "write", self.stream.write_all(bytes))
            .await
            .expect("write to weir");
    }

    /// Reads more bytes into the buffer; false on EOF or a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match within(IO_TIMEOUT, "bytes from weir", self.stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response head (status line and headers).
    pub async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_head(&head);
            }
            assert!(
                self.fill().await,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads one whole response; `head_request` says the request was HEAD.
    pub async fn read_response(&mut self, head_request: bool) -> RawResponse {
        let (status, headers) = self.read_head().await;
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if head_request || status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            self.read_chunked().await
        } else if let Some(len) = get("content-length") {
            let len: usize = len.trim().parse().expect("content-length");
            while self.buf.len() < len {
                assert!(self.fill().await, "connection closed mid-body");
            }
            self.buf.drain(..len).collect()
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        RawResponse {
            status,
            headers,
            body,
        }
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                assert!(self.fill().await, "connection closed in a chunk header");
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        let empty = i == 0;
                        self.buf.drain(..i + 2);
                        if empty {
                            return body;
                        }
                    } else {
                        assert!(self.fill().await, "connection closed in trailers");
                    }
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill().await, "connection closed mid-chunk");
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Everything until the peer closes (or resets) the connection.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// True when the peer closes the connection (EOF or reset) with no more
    /// bytes, within the I/O timeout.
    pub async fn is_closed_by_peer(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        match within(IO_TIMEOUT, "close by weir", self.stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
        }
    }
}

/// Writes `request` on a new connection (ignoring write errors: the server
/// may answer and close before reading everything) and returns all bytes it
/// sends back before closing.
pub async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let conn = RawConn::connect(addr).await;
    let (mut rd, mut wr) = conn.stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        // Keep the write half open: shutting it down would end the request.
        wr
    });
    let mut out = Vec::new();
    let _ = within(IO_TIMEOUT, "weir to close the connection", async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    out
}

/// The status code of the first response in `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    (status, headers)
}

impl RawConn {
    /// True when, for all of `d`, weir neither sends a byte nor closes the
    /// connection.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(d, self.stream.read(&mut chunk)).await {
            Err(_) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Ok(Err(_)) => false,
        }
    }

    /// The underlying socket.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}
