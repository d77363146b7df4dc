//! gRPC test harness: a small gRPC service (`test.Echo` plus
//! `grpc.health.v1.Health/Check`) served by tonic's server API, and a tonic
//! client, each over an h2c connection the harness opens with hyper.
//!
//! Why this shape, for build time and for what the tests can see:
//! - No build script and no `.proto` file: code generation needs `protoc`,
//!   which neither the development machines nor CI install, and a build
//!   script would rebuild for every test binary. The few messages are
//!   hand-written prost structs (`#[derive(prost::Message)]`), which is
//!   exactly what generated code would contain.
//! - tonic with no default features: `tonic::client::Grpc` and
//!   `tonic::server::Grpc` (framing, codec, status and trailers handling)
//!   need no code generation and no transport; the transport would add
//!   tower, axum and hyper-timeout to the build. hyper, already weir's,
//!   carries the connections.
//! - Neither side enforces `grpc-timeout` (tonic's transport would), so a
//!   deadline test sees weir's enforcement and nothing else.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The one message type of `test.Echo`. Its fields steer the server.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// Echoed back (server streaming: 0, 1, 2...).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Echoed back.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// Server streaming: how many replies.
    #[prost(uint32, tag = "3")]
    pub count: u32,
    /// Unary: wait this long before answering.
    #[prost(uint32, tag = "4")]
    pub delay_ms: u32,
    /// Unary: fail with this status; server streaming: end with it after
    /// `count` replies.
    #[prost(int32, tag = "5")]
    pub fail_code: i32,
    /// Server streaming: wait for `GrpcUpstream::open_gate` after the
    /// first reply.
    #[prost(bool, tag = "6")]
    pub gated: bool,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `HealthCheckResponse.ServingStatus`.
pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

/// A request the upstream received: path and headers.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct State {
    seen: Mutex<Vec<Seen>>,
    health: AtomicI32,
    gate: Notify,
    connections: AtomicUsize,
}

/// A gRPC server on 127.0.0.1 (h2c); dropping it stops accepting.
pub struct GrpcUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl GrpcUpstream {
    pub async fn spawn() -> GrpcUpstream {
        Self::spawn_with(None).await
    }

    /// The same server over TLS (HTTP/2 by ALPN `h2`).
    pub async fn spawn_tls(config: Arc<rustls::ServerConfig>) -> GrpcUpstream {
        Self::spawn_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn spawn_with(tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            health: AtomicI32::new(SERVING),
            gate: Notify::new(),
            connections: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| serve(state.clone(), req));
                    let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = h2.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = h2.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        GrpcUpstream {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests received for `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// What `Health/Check` answers from now on.
    pub fn set_health(&self, status: i32) {
        self.state.health.store(status, Ordering::Relaxed);
    }

    /// Lets a gated server stream go on.
    pub fn open_gate(&self) {
        self.state.gate.notify_one();
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

async fn serve(
    state: Arc<State>,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let path = req.uri().path().to_owned();
    state.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: req.headers().clone(),
    });
    let mut echo = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Ok(match path.as_str() {
        "/test.Echo/Unary" => echo.unary(Handler(unary), req).await,
        "/test.Echo/ServerStream" => {
            let state = state.clone();
            echo.server_streaming(Handler(move |r| server_stream(state.clone(), r)), req)
                .await
        }
        "/test.Echo/ClientStream" => echo.client_streaming(Handler(client_stream), req).await,
        "/test.Echo/Bidi" => echo.streaming(Handler(bidi), req).await,
        "/grpc.health.v1.Health/Check" => {
            let status = state.health.load(Ordering::Relaxed);
            tonic::server::Grpc::new(
                ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default(),
            )
            .unary(
                Handler(move |_: Request<HealthCheckRequest>| async move {
                    Ok(Response::new(HealthCheckResponse { status }))
                }),
                req,
            )
            .await
        }
        _ => Status::unimplemented(format!("no method {path}")).into_http(),
    })
}

async fn unary(req: Request<Msg>) -> Result<Response<Msg>, Status> {
    let msg = req.into_inner();
    if msg.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(msg.delay_ms))).await;
    }
    if msg.fail_code != 0 {
        return Err(Status::new(Code::from(msg.fail_code), "failed on request"));
    }
    Ok(Response::new(msg))
}

async fn server_stream(state: Arc<State>, req: Request<Msg>) -> Result<Response<Replies>, Status> {
    let msg = req.into_inner();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..u64::from(msg.count) {
            let reply = Msg {
                id: i,
                payload: msg.payload.clone(),
                ..Msg::default()
            };
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
            if msg.gated && i == 0 {
                state.gate.notified().await;
            }
        }
        if msg.fail_code != 0 {
            let _ = tx
                .send(Err(Status::new(
                    Code::from(msg.fail_code),
                    "stream failed after its replies",
                )))
                .await;
        }
    });
    Ok(Response::new(Box::pin(receiver_stream(rx)) as Replies))
}

async fn client_stream(req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
    let mut stream = req.into_inner();
    let mut total = Msg::default();
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        total.id += msg.id;
        total.count += 1;
        total.payload.extend_from_slice(&msg.payload);
    }
    Ok(Response::new(total))
}

async fn bidi(req: Request<Streaming<Msg>>) -> Result<Response<Replies>, Status> {
    let replies = req.into_inner().map(|m| {
        m.map(|mut m| {
            m.id += 1000;
            m
        })
    });
    Ok(Response::new(Box::pin(replies) as Replies))
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// A closure as the tower `Service` tonic's server API calls.
struct Handler<F>(F);

impl<F, Req, Resp, Fut> tower_service::Service<Request<Req>> for Handler<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Req>) -> Fut {
        (self.0)(req)
    }
}

/// An h2c connection as the service tonic's client API calls.
#[derive(Clone)]
pub struct H2Channel {
    sender: http2::SendRequest<tonic::body::Body>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move { sender.send_request(req).await })
    }
}

/// A tonic client for `test.Echo` over one h2c connection.
#[derive(Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<H2Channel>,
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let origin: Uri = format!("http://{addr}").parse().unwrap();
        let grpc = tonic::client::Grpc::with_origin(H2Channel { sender }, origin)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        EchoClient { grpc }
    }

    /// A client over TLS to `addr`, verifying the server as `name`; the
    /// configuration must offer ALPN `h2`.
    pub async fn connect_tls(
        addr: SocketAddr,
        name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> EchoClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_owned()).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, stream)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let origin: Uri = format!("https://{name}").parse().unwrap();
        let grpc = tonic::client::Grpc::with_origin(H2Channel { sender }, origin)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        EchoClient { grpc }
    }

    async fn ready(&mut self) {
        self.grpc.ready().await.expect("connection ready");
    }

    pub async fn unary(&mut self, msg: Msg) -> Result<Response<Msg>, Status> {
        self.unary_with(Request::new(msg)).await
    }

    pub async fn unary_with(&mut self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.call_unary("/test.Echo/Unary", req).await
    }

    /// A unary call to any path (e.g. a method no route matches).
    pub async fn call_unary(
        &mut self,
        path: &'static str,
        req: Request<Msg>,
    ) -> Result<Response<Msg>, Status> {
        self.ready().await;
        self.grpc
            .unary(req, http::uri::PathAndQuery::from_static(path), codec())
            .await
    }

    pub async fn server_stream(&mut self, msg: Msg) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await;
        self.grpc
            .server_streaming(
                Request::new(msg),
                http::uri::PathAndQuery::from_static("/test.Echo/ServerStream"),
                codec(),
            )
            .await
    }

    pub async fn grpc_server_stream(
        &mut self,
        req: Request<Msg>,
    ) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await;
        self.grpc
            .server_streaming(
                req,
                http::uri::PathAndQuery::from_static("/test.Echo/ServerStream"),
                codec(),
            )
            .await
    }

    pub async fn client_stream(
        &mut self,
        msgs: impl Stream<Item = Msg> + Send + 'static,
    ) -> Result<Response<Msg>, Status> {
        self.ready().await;
        self.grpc
            .client_streaming(
                Request::new(msgs),
                http::uri::PathAndQuery::from_static("/test.Echo/ClientStream"),
                codec(),
            )
            .await
    }

    /// Opens a bidirectional stream fed from the returned sender.
    pub async fn bidi(&mut self) -> (mpsc::Sender<Msg>, Result<Response<Streaming<Msg>>, Status>) {
        self.ready().await;
        let (tx, rx) = mpsc::channel(4);
        let resp = self
            .grpc
            .streaming(
                Request::new(receiver_stream(rx)),
                http::uri::PathAndQuery::from_static("/test.Echo/Bidi"),
                codec(),
            )
            .await;
        (tx, resp)
    }
}

/// A message carrying `payload`.
pub fn msg(id: u64, payload: &[u8]) -> Msg {
    Msg {
        id,
        payload: payload.to_vec(),
        ..Msg::default()
    }
}
