//! The accept path of a listener: accepting within `max_connections`,
//! the TLS handshake or the HTTP/2 preface sniff, and serving each client
//! connection with hyper under the drain watcher.
//!
//! Owns the per-listener connection builders (hyper settings from
//! `limits`) and which I/O wrapper each protocol is served through
//! (`idle.rs`, `h2_guard.rs`). Must not touch the request pipeline
//! (`proxy`) beyond handing it a `ConnCtx`, nor binding, reloads or
//! upgrades (the parent module).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir_config::{Limits, ListenerProtocol};

use super::drain::{Drain, DrainWatch};
use super::h2_guard::H2Guard;
use super::idle::{h2_idle, H1Io, H1Timeouts};
use crate::proxy::{self, ConnCtx, RequestLimits, TrustedProxies};
use crate::state::State;
use crate::tls::{ServerTls, TlsSession};

/// How long a connection accepted just before a drain may take to send its
/// first bytes; clients send their request right after connecting.
pub(super) const FIRST_BYTES_GRACE: Duration = Duration::from_secs(1);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// hyper's default limit on the number of request header fields.
pub(super) const HYPER_MAX_HEADERS: usize = 100;

/// Runs hyper's HTTP/2 stream tasks (one per request, each holding the
/// request pipeline's future inline), boxed before they are spawned: the
/// spawn then moves a pointer instead of copying kilobytes of future
/// through each of its layers.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// The connection builders of one listener: one per protocol it speaks,
/// and its TLS when it terminates TLS, set up with `limits:`.
pub(super) struct ConnBuilders {
    name: String,
    h1: Option<http1::Builder>,
    h2: Option<http2::Builder<StreamExecutor>>,
    tls: Option<Arc<ServerTls>>,
    tls_handshake_timeout: Duration,
    /// Also how long a new connection may take to send its first bytes.
    header_read_timeout: Duration,
    /// HTTP/1.x keep-alive idle and head timeouts, and the 408.
    h1_timeouts: H1Timeouts,
    /// How long an HTTP/2 connection may go without an open stream.
    keepalive_idle: Duration,
    limits: Arc<RequestLimits>,
    trusted: Arc<TrustedProxies>,
    open: Arc<OpenConnections>,
}

impl ConnBuilders {
    pub(super) fn new(
        name: &str,
        protocols: &[ListenerProtocol],
        tls: Option<Arc<ServerTls>>,
        limits: &Limits,
        request_limits: Arc<RequestLimits>,
        trusted: Arc<TrustedProxies>,
        open: Arc<OpenConnections>,
    ) -> Self {
        let head = usize::try_from(limits.max_header_bytes.bytes()).unwrap_or(usize::MAX);
        // With TLS, ALPN decides; both builders are ready for what it picks.
        let h1 = (tls.is_some() || protocols.contains(&ListenerProtocol::Http1)).then(|| {
            let mut b = http1::Builder::new();
            // hyper hands the head and the body's own buffers to one vectored
            // write instead of copying them into a per-connection buffer
            // that grows to the largest response; `H1Io` gathers a small
            // response into one plain `write`. Over TLS, rustls copies the
            // bytes into records anyway.
            b.writev(true);
            // A head that does not fit the buffer, or parses longer than
            // the limit, or has too many fields, is answered 431 by hyper.
            // The buffer bound also stops a head from being buffered past
            // the limit while it is still incomplete.
            b.max_buf_size(head.max(8192)).max_header_size(head);
            // hyper's own cap is 100 and costs nothing; an explicit cap
            // makes its parser fill a heap array of that many slots for
            // every request (about 2k instructions), so it is only set
            // when the limit differs.
            if limits.max_headers != HYPER_MAX_HEADERS {
                b.max_headers(limits.max_headers);
            }
            // The head and idle timeouts are `H1Io`'s: one timer per
            // connection instead of one boxed timer per request head, and a
            // 408 for a head cut short. Without a timer hyper arms none.
            b.header_read_timeout(None);
            b
        });
        let h2 = (tls.is_some() || protocols.contains(&ListenerProtocol::H2c)).then(|| {
            let mut b = http2::Builder::new(StreamExecutor);
            b.timer(TokioTimer::new());
            // Validation keeps these within u32 (RFC 9113 windows are
            // 31-bit).
            let window = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            b.max_concurrent_streams(limits.h2_max_concurrent_streams)
                .initial_stream_window_size(window(limits.h2_stream_window.bytes()))
                .initial_connection_window_size(window(limits.h2_connection_window.bytes()))
                .max_header_list_size(window(limits.h2_max_header_list_size.bytes()));
            b
        });
        ConnBuilders {
            name: name.to_owned(),
            h1,
            h2,
            tls,
            tls_handshake_timeout: limits.tls_handshake_timeout.get(),
            header_read_timeout: limits.header_read_timeout.get(),
            h1_timeouts: H1Timeouts {
                keepalive_idle: limits.keepalive_idle.get(),
                header_read: limits.header_read_timeout.get(),
                reply: proxy::head_timeout_response(limits.header_read_timeout.get()),
            },
            keepalive_idle: limits.keepalive_idle.get(),
            limits: request_limits,
            trusted,
            open,
        }
    }
}

/// Client connections open over every listener, against
/// `limits.max_connections`.
pub(super) struct OpenConnections {
    count: AtomicUsize,
    max: usize,
}

impl OpenConnections {
    /// A cap of `max` open client connections.
    pub(super) fn new(max: usize) -> OpenConnections {
        OpenConnections {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a slot for a new connection; None when all are taken.
    pub(super) fn try_open(self: &Arc<Self>) -> Option<OpenSlot> {
        let taken = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        taken.ok().map(|_| OpenSlot(self.clone()))
    }
}

/// One open connection's slot, given back when the connection ends.
pub(super) struct OpenSlot(Arc<OpenConnections>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which protocol a connection speaks, from its first bytes.
pub(super) enum Sniffed {
    Http1,
    Http2,
    Gone,
}

/// Peeks (without consuming) until the bytes either diverge from the HTTP/2
/// preface (HTTP/1.x: almost always at the first byte) or complete it. Doing
/// this once per connection lets both protocols run on the plain socket,
/// with no rewind wrapper on every read.
pub(super) async fn sniff(stream: &TcpStream) -> Sniffed {
    let mut buf = [0u8; 24];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Sniffed::Gone,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Sniffed::Http1;
        }
        if n == H2_PREFACE.len() {
            return Sniffed::Http2;
        }
        // A preface split across packets: peek again shortly.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    builders: Arc<ConnBuilders>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<Drain>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = builders.open.try_open() else {
                    // Closed at once rather than left in the backlog: the
                    // client learns now, and the socket costs nothing.
                    state.metrics.rejected("max_connections");
                    tracing::debug!(client = %peer, "connection refused: limits.max_connections reached");
                    drop(stream);
                    continue;
                };
                let task = serve_connection(
                    stream,
                    slot,
                    peer,
                    builders.clone(),
                    state.clone(),
                    stop.clone(),
                    graceful.watcher(),
                );
                tokio::spawn(task);
            }
            Err(e) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

pub(super) async fn serve_connection(
    stream: TcpStream,
    _slot: OpenSlot,
    peer: SocketAddr,
    builders: Arc<ConnBuilders>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    watcher: DrainWatch,
) {
    let _ = stream.set_nodelay(true);
    let _guard = state.metrics.downstream_connection();
    // The TLS and HTTP stages are boxed: their futures (rustls' and
    // hyper's connection state) would otherwise make this task's future
    // tens of KiB, copied several times over as the task is spawned.
    if let Some(tls) = &builders.tls {
        let tls = tls.clone();
        return Box::pin(serve_tls(stream, peer, &tls, builders, state, watcher)).await;
    }
    let (protocol, sniffed) = match (&builders.h1, &builders.h2) {
        (Some(_), None) => (Sniffed::Http1, false),
        (None, Some(_)) => (Sniffed::Http2, false),
        _ => {
            let sniffing = tokio::time::timeout(builders.header_read_timeout, sniff(&stream));
            (sniffing.await.unwrap_or(Sniffed::Gone), true)
        }
    };
    let h2 = match protocol {
        Sniffed::Http1 => false,
        Sniffed::Http2 => true,
        Sniffed::Gone => return,
    };
    // Sniffing has seen the first bytes already.
    if !sniffed && !first_bytes(&stream, stop, builders.header_read_timeout).await {
        return;
    }
    let ctx = Arc::new(
        ConnCtx::new(state, peer, builders.limits.clone()).with_trusted(&builders.trusted),
    );
    Box::pin(serve_http(stream, h2, ctx, builders, watcher)).await;
}

/// Serves a client connection with hyper, HTTP/2 when `h2` and HTTP/1.1
/// otherwise, under the drain watcher: HTTP/1.1 through `H1Io` (keep-alive
/// idle and head timeouts), HTTP/2 through `H2Guard` (control-frame
/// budget), ended with GOAWAY when idle or spent (`h2_idle`).
async fn serve_http<S>(
    stream: S,
    h2: bool,
    ctx: Arc<ConnCtx>,
    builders: Arc<ConnBuilders>,
    watcher: DrainWatch,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let ctx = ctx.clone();
        service_fn(move |req| proxy::handle(ctx.clone(), req))
    };
    let result = match (h2, &builders.h1, &builders.h2) {
        // With upgrades: a WebSocket handshake answered 101 hands the
        // socket (still wrapped, its timers idle while the tunnel's request
        // is in progress) to its tunnel (`proxy::websocket`).
        (false, Some(b), _) => {
            let io = TokioIo::new(H1Io::new(stream, ctx.clone(), &builders.h1_timeouts));
            let conn = b.serve_connection(io, service).with_upgrades();
            watcher
                .serve(conn, std::future::pending(), std::future::pending())
                .await
        }
        (true, _, Some(b)) => {
            let io = TokioIo::new(H2Guard::new(stream, ctx.state.metrics.clone()));
            let conn = b.serve_connection(io, service);
            // A client that never answers the GOAWAY's PING (nor closes)
            // would hold the connection; once it has been idle that long
            // again it is dropped. Streams in progress are never cut.
            let idle = builders.keepalive_idle;
            watcher
                .serve(conn, h2_idle(&ctx, idle, true), h2_idle(&ctx, idle, false))
                .await
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        connection_error(&ctx.state, ctx.client, &e);
    }
}

/// Counts and logs how a client connection failed: the limits hyper
/// enforces itself show up here.
pub(super) fn connection_error(state: &State, peer: SocketAddr, e: &hyper::Error) {
    // hyper answers 431 for a head over the limits. The head timeout and
    // the HTTP/2 flood guard count their own closes (`idle.rs`,
    // `h2_guard.rs`); hyper sees them as I/O errors.
    let reason = if e.is_parse_too_large() {
        Some("header_too_large")
    } else if e.is_parse() {
        Some("bad_request")
    } else {
        None
    };
    if let Some(reason) = reason {
        state.metrics.rejected(reason);
    }
    tracing::debug!(client = %peer, reason = reason.unwrap_or("io"), error = %e, "client connection ended with an error");
}

/// Runs the TLS handshake (bounded by `limits.tls_handshake_timeout`), then
/// serves the protocol ALPN settled on: HTTP/2 for `h2`, HTTP/1.1 otherwise
/// (a client that offers no ALPN speaks HTTP/1.1).
pub(super) async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &ServerTls,
    builders: Arc<ConnBuilders>,
    state: Arc<State>,
    watcher: DrainWatch,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let handshake = acceptor.accept(stream);
    let stream = match tokio::time::timeout(builders.tls_handshake_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.metrics.tls_handshake_failed(&builders.name);
            tracing::debug!(client = %peer, listener = %builders.name, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.tls_handshake_failed(&builders.name);
            tracing::debug!(client = %peer, listener = %builders.name, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let ctx = Arc::new(
        ConnCtx::new(state, peer, builders.limits.clone())
            .with_trusted(&builders.trusted)
            .with_tls(TlsSession::of(session)),
    );
    serve_http(stream, h2, ctx, builders, watcher).await;
}

/// Waits for the client's first bytes. hyper closes, unanswered, a
/// connection it has read nothing from when a graceful shutdown reaches it;
/// a client that connected just before a drain or a handoff (to a socket
/// that never stopped listening) would see its request fail. False when the
/// client went away or sent nothing within `wait` (the header read
/// timeout), or within `FIRST_BYTES_GRACE` of the drain.
pub(crate) async fn first_bytes(
    stream: &TcpStream,
    mut stop: watch::Receiver<bool>,
    wait: Duration,
) -> bool {
    let data = async {
        let mut byte = [0u8; 1];
        matches!(stream.peek(&mut byte).await, Ok(n) if n > 0)
    };
    let drain = async {
        let _ = stop.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(FIRST_BYTES_GRACE).await;
    };
    tokio::select! {
        got = data => got,
        () = drain => false,
        () = tokio::time::sleep(wait) => false,
    }
}
