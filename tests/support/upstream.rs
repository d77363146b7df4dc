//! `Upstream`: an in-process hyper server on `127.0.0.1:0` whose behaviour is
//! set per path. It counts accepted TCP connections and records every request
//! head it receives, so tests can assert what weir sent.
//!
//! ```ignore
//! let up = Upstream::http1()
//!     .route("/hello", Reply::text(200, "hi"))
//!     .route("/slow", Reply::echo().delay(Duration::from_secs(2)))
//!     .spawn()
//!     .await; // every other path: Reply::echo()
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::pattern::{fnv1a, PatternBody, PatternCheck};
use super::BoxError;

/// Which protocol the upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

/// What the upstream does for one path.
#[derive(Clone, Debug)]
pub struct Reply {
    kind: Kind,
    status: u16,
    headers: Vec<(String, String)>,
    delay: Duration,
}

#[derive(Clone, Debug)]
enum Kind {
    /// A fixed body.
    Body(Bytes),
    /// A body in several frames of unknown total length (chunked in HTTP/1.1).
    Chunks(Vec<Bytes>),
    /// The request as JSON (see `Echoed`).
    Echo,
    /// `len` pattern bytes generated on the fly.
    Stream { len: u64, chunked: bool },
    /// Reads the whole request body and reports `Drained` as JSON.
    Drain,
    /// Reads the request, then closes the connection without answering.
    CloseWithoutResponse,
    /// Announces `declared` bytes, sends `sent`, then aborts the connection.
    Truncate { declared: u64, sent: u64 },
    /// Announces `declared` bytes, sends `sent`, then sends nothing more
    /// (the connection stays open).
    Stall { declared: u64, sent: u64 },
}

impl Reply {
    fn new(kind: Kind, status: u16) -> Self {
        Reply {
            kind,
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// A response with this status and an empty body.
    pub fn status(status: u16) -> Self {
        Self::new(Kind::Body(Bytes::new()), status)
    }

    /// A fixed text body.
    pub fn text(status: u16, body: impl Into<Bytes>) -> Self {
        Self::new(Kind::Body(body.into()), status)
    }

    /// A body sent as separate frames without a Content-Length.
    pub fn chunks(parts: &[&str]) -> Self {
        let parts = parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        Self::new(Kind::Chunks(parts), 200)
    }

    /// Echoes the request as JSON.
    pub fn echo() -> Self {
        Self::new(Kind::Echo, 200)
    }

    /// `len` pattern bytes with a Content-Length.
    pub fn stream(len: u64) -> Self {
        Self::new(
            Kind::Stream {
                len,
                chunked: false,
            },
            200,
        )
    }

    /// `len` pattern bytes, chunked.
    pub fn stream_chunked(len: u64) -> Self {
        Self::new(Kind::Stream { len, chunked: true }, 200)
    }

    /// Drains the request body; answers with `Drained` JSON.
    pub fn drain() -> Self {
        Self::new(Kind::Drain, 200)
    }

    /// Reads the request then closes the connection without a response.
    pub fn close_without_response() -> Self {
        Self::new(Kind::CloseWithoutResponse, 200)
    }

    /// Declares a `declared`-byte body, sends `sent` bytes and resets.
    pub fn truncate(declared: u64, sent: u64) -> Self {
        Self::new(Kind::Truncate { declared, sent }, 200)
    }

    /// Declares a `declared`-byte body, sends `sent` bytes and stalls.
    pub fn stall(declared: u64, sent: u64) -> Self {
        Self::new(Kind::Stall { declared, sent }, 200)
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Waits this long (after recording the request) before answering.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A request head as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Builder for an `Upstream`.
pub struct UpstreamBuilder {
    proto: Proto,
    routes: Vec<(String, Reply)>,
    default: Reply,
    latency: Duration,
    queued: VecDeque<Reply>,
}

impl UpstreamBuilder {
    /// Behaviour for requests whose path is exactly `path`.
    pub fn route(mut self, path: &str, reply: Reply) -> Self {
        self.routes.push((path.to_owned(), reply));
        self
    }

    /// Behaviour for every other path (default: echo).
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default = reply;
        self
    }

    /// The next request (whatever its path) gets `reply`; queued replies are
    /// used up in order before the per-path behaviour applies again.
    pub fn then(mut self, reply: Reply) -> Self {
        self.queued.push_back(reply);
        self
    }

    /// Added delay before every response.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn spawn(self) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let shared = Arc::new(Shared {
            routes: Mutex::new(self.routes),
            default: Mutex::new(self.default),
            queued: Mutex::new(self.queued),
            latency: self.latency,
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
        });
        let proto = self.proto;
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let io = TokioIo::new(stream);
                    let _ = match proto {
                        Proto::Http1 => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        }
                        Proto::H2c => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .max_concurrent_streams(1000)
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        Upstream { addr, shared, task }
    }
}

struct Shared {
    routes: Mutex<Vec<(String, Reply)>>,
    default: Mutex<Reply>,
    queued: Mutex<VecDeque<Reply>>,
    latency: Duration,
    connections: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    bodies: Mutex<Vec<Bytes>>,
}

/// A running in-process upstream. Stops accepting when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// An HTTP/1.1 upstream; every path echoes unless configured.
    pub fn http1() -> UpstreamBuilder {
        Self::builder(Proto::Http1)
    }

    /// An h2c (prior knowledge) upstream.
    pub fn h2c() -> UpstreamBuilder {
        Self::builder(Proto::H2c)
    }

    fn builder(proto: Proto) -> UpstreamBuilder {
        UpstreamBuilder {
            proto,
            routes: Vec::new(),
            default: Reply::echo(),
            latency: Duration::ZERO,
            queued: VecDeque::new(),
        }
    }

    /// An echoing HTTP/1.1 upstream.
    pub async fn echo() -> Upstream {
        Self::http1().spawn().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far (counted when the head arrives).
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Every request head received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Changes the behaviour for `path` from now on.
    pub fn set_route(&self, path: &str, reply: Reply) {
        let mut routes = self.shared.routes.lock().unwrap();
        routes.retain(|(p, _)| p != path);
        routes.push((path.to_owned(), reply));
    }

    /// Changes the behaviour for every path without a route from now on.
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = reply;
    }

    /// Queues `reply` for the next request (see `UpstreamBuilder::then`).
    pub fn queue(&self, reply: Reply) {
        self.shared.queued.lock().unwrap().push_back(reply);
    }

    /// The bodies of the requests answered by `Reply::echo()`, in order.
    pub fn echoed_bodies(&self) -> Vec<Bytes> {
        self.shared.bodies.lock().unwrap().clone()
    }

    /// The last request head received.
    pub fn last_request(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

/// What `Reply::echo()` answers, parsed.
#[derive(Debug, Deserialize)]
pub struct Echoed {
    pub method: String,
    /// Request target as received (path and query for HTTP/1.1, absolute for HTTP/2).
    pub uri: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub body_len: usize,
}

impl Echoed {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What `Reply::drain()` answers, parsed.
#[derive(Debug, Deserialize)]
pub struct Drained {
    /// Body bytes received.
    pub len: u64,
    /// True when the body was the pattern stream (`pattern.rs`).
    pub pattern_ok: bool,
    pub first_mismatch: Option<u64>,
    /// FNV-1a of the body, only for bodies up to 16 MiB (too slow beyond,
    /// in debug builds; large bodies rely on the pattern check).
    pub checksum: Option<u64>,
    pub transfer_encoding: Option<String>,
    pub content_length: Option<String>,
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(b: impl Into<Bytes>) -> UpBody {
    http_body_util::Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

async fn handle(state: Arc<Shared>, req: Request<Incoming>) -> Result<Response<UpBody>, BoxError> {
    state.requests.lock().unwrap().push(Recorded {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let queued = state.queued.lock().unwrap().pop_front();
    let reply = queued.unwrap_or_else(|| {
        state
            .routes
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == req.uri().path())
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| state.default.lock().unwrap().clone())
    });
    let delay = state.latency + reply.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(reply.status)?);
    for (name, value) in &reply.headers {
        resp = resp.header(name.as_str(), value.as_str());
    }
    let body = match reply.kind {
        Kind::Body(b) => full(b),
        Kind::Chunks(parts) => Frames(parts.into()).boxed(),
        Kind::Echo => {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            state.bodies.lock().unwrap().push(body.clone());
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
                "body_len": body.len(),
            });
            resp = resp.header("content-type", "application/json");
            full(serde_json::to_vec(&json)?)
        }
        Kind::Stream { len, chunked } => {
            if chunked {
                PatternBody::chunked(len).boxed()
            } else {
                PatternBody::new(len).boxed()
            }
        }
        Kind::Drain => {
            let te = header_string(req.headers(), "transfer-encoding");
            let cl = header_string(req.headers(), "content-length");
            let mut body = req.into_body();
            let mut check = PatternCheck::new();
            let mut small = Some(Vec::new());
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                if let Some(data) = frame.data_ref() {
                    check.update(data);
                    if let Some(buf) = small.as_mut() {
                        if buf.len() + data.len() <= 16 << 20 {
                            buf.extend_from_slice(data);
                        } else {
                            small = None;
                        }
                    }
                }
            }
            let json = serde_json::json!({
                "len": check.len(),
                "pattern_ok": check.ok(),
                "first_mismatch": check.first_mismatch(),
                "checksum": small.map(|b| fnv1a(&b)),
                "transfer_encoding": te,
                "content_length": cl,
            });
            resp = resp.header("content-type", "application/json");
            full(serde_json::to_vec(&json)?)
        }
        Kind::CloseWithoutResponse => {
            let _ = req.into_body().collect().await;
            // hyper closes the connection without writing anything when the
            // service fails.
            return Err("closing without a response".into());
        }
        Kind::Truncate { declared, sent } => {
            resp = resp.header("content-length", declared.to_string());
            Truncated {
                data: PatternBody::new(sent),
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
                fail: true,
            }
            .boxed()
        }
        Kind::Stall { declared, sent } => {
            resp = resp.header("content-length", declared.to_string());
            Truncated {
                data: PatternBody::new(sent),
                pause: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
                fail: false,
            }
            .boxed()
        }
    };
    Ok(resp.body(body)?)
}

fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Frames of unknown total length.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Sends its data, pauses so that hyper flushes it, then (with `fail`)
/// fails, which makes hyper abort the connection short of the declared
/// length.
struct Truncated {
    data: PatternBody,
    pause: Pin<Box<tokio::time::Sleep>>,
    fail: bool,
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data.is_end_stream() {
            return Pin::new(&mut self.data).poll_frame(cx);
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) if self.fail => Poll::Ready(Some(Err("truncated on purpose".into()))),
            Poll::Ready(()) => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
