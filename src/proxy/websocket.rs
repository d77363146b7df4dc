//! WebSocket proxying (RFC 6455 over an HTTP/1.1 Upgrade): recognising the
//! handshake, turning the upstream's `101 Switching Protocols` into a tunnel
//! between the two upgraded connections, and running that tunnel.
//!
//! The tunnel copies bytes both ways untouched: frames, pings and pongs, and
//! the close handshake pass as the peers send them. Each direction follows
//! frame boundaries (`frame.rs`, headers only), so that when weir itself
//! ends a tunnel (idle timeout, shutdown) it sends each side a close frame
//! with code 1001 between two frames, never inside one: masked towards the
//! upstream (weir is its client), unmasked towards the client.
//!
//! An upgraded upstream connection belongs to its tunnel and closes with
//! it; it never goes back to a pool. What a tunnel must not do: inspect or
//! change payloads, or outlive the gateway's shutdown (see [`Tunnels`]).

mod frame;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;

use super::admit::RateHeaders;
use super::body::{Idle, ResponseBody};
use super::complete::Completion;
use super::forward;
use super::policies::WebSocketPolicy;
use crate::router::CompiledRoute;
use frame::{close_frame, FrameTracker, GOING_AWAY};

/// How long weir's own close of a tunnel may take: finishing the frame in
/// flight, delivering both close frames and seeing the replies (or the
/// peers' FIN). Also how long one side may stay open after the other has
/// closed its connection. Past it, the sockets are closed.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long both connections may take to be handed over after the 101.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of each direction.
const BUFFER: usize = 16 * 1024;

const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");

/// The open tunnels of a gateway: counted, so that a shutdown can wait for
/// them, and closed together (1001 to both sides) once its grace is over.
#[derive(Debug)]
pub struct Tunnels {
    close: watch::Sender<bool>,
    open: watch::Sender<()>,
}

/// Held by a tunnel while it is open.
#[derive(Debug)]
pub struct TunnelGuard {
    _open: watch::Receiver<()>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            close: watch::channel(false).0,
            open: watch::channel(()).0,
        }
    }
}

impl Tunnels {
    /// Counts a new tunnel until its guard drops; the receiver turns true
    /// when the tunnel must close (at once if `close_all` already ran).
    pub fn register(&self) -> (TunnelGuard, watch::Receiver<bool>) {
        let guard = TunnelGuard {
            _open: self.open.subscribe(),
        };
        (guard, self.close.subscribe())
    }

    /// Tunnels open now.
    pub fn count(&self) -> usize {
        self.open.receiver_count()
    }

    /// Returns once no tunnel is open.
    pub async fn closed(&self) {
        self.open.closed().await
    }

    /// Asks every tunnel, open now or opened later, to close (1001).
    pub fn close_all(&self) {
        self.close.send_replace(true);
    }
}

/// True for a WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1
/// GET with `Upgrade: websocket` and `Connection: upgrade`. Only called
/// when the header scan saw an `Upgrade` header.
pub(super) fn is_upgrade(parts: &Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, &header::UPGRADE, "websocket")
        && has_token(&parts.headers, &header::CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Puts back, on the request sent upstream, the upgrade headers that the
/// hop-by-hop strip removed.
pub(super) fn restore_request_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, UPGRADE);
    headers.insert(header::UPGRADE, WEBSOCKET);
}

/// Relays the upstream's 101 to the client and starts the tunnel that
/// takes both connections over once hyper has handed them out.
pub(super) fn open(
    mut response: Response<Incoming>,
    client: OnUpgrade,
    route: &CompiledRoute,
    policy: &WebSocketPolicy,
    rate: Option<&RateHeaders>,
    request_id: &HeaderValue,
    mut done: Box<Completion>,
) -> Response<ResponseBody> {
    let upstream = hyper::upgrade::on(&mut response);
    let protocol = response
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(WEBSOCKET);
    forward::prepare_response(&mut response, route, request_id);
    let headers = response.headers_mut();
    if let Some(rate) = rate {
        rate.apply(headers);
    }
    headers.insert(header::CONNECTION, UPGRADE);
    headers.insert(header::UPGRADE, protocol);
    done.status = StatusCode::SWITCHING_PROTOCOLS;
    done.record_upgrade();
    // The client connection serves no more requests: the upstream
    // connection it kept for the next one is better off in the pool.
    done.ctx.release_cached();
    let (guard, close) = done.ctx.state.websockets.register();
    let active = Active::new(&policy.metrics.active);
    let tunnel = Tunnel {
        client,
        upstream,
        idle: policy.idle_timeout,
        close,
        done,
        guard,
        active,
    };
    tokio::spawn(tunnel.run());
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, ResponseBody::empty())
}

/// Counts a tunnel in its route's active gauge while alive.
struct Active(Gauge);

impl Active {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One WebSocket between a client and a target, from the 101 on.
struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Option<Duration>,
    close: watch::Receiver<bool>,
    done: Box<Completion>,
    guard: TunnelGuard,
    active: Active,
}

impl Tunnel {
    async fn run(self) {
        let Tunnel {
            client,
            upstream,
            idle,
            mut close,
            mut done,
            guard,
            active,
        } = self;
        let both = async { tokio::try_join!(client, upstream) };
        let (bytes_in, bytes_out, code) = match tokio::time::timeout(UPGRADE_TIMEOUT, both).await {
            Ok(Ok((client, upstream))) => {
                let shutdown = Box::pin(async move {
                    // An error means the gateway is gone: close as well.
                    let _ = close.wait_for(|c| *c).await;
                });
                let mut relay = Relay::new(TokioIo::new(client), TokioIo::new(upstream), shutdown);
                relay.idle = idle.map(Idle::new);
                let end = (&mut relay).await;
                let code = match end {
                    Ok(Reason::Closed) => None,
                    Ok(Reason::Idle) => Some("websocket_idle_timeout"),
                    Ok(Reason::Shutdown) => Some("websocket_shutdown"),
                    Err(e) => {
                        tracing::debug!(client = %done.ctx.client, error = %e, "WebSocket ended with an error");
                        Some("websocket_reset")
                    }
                };
                (relay.to_upstream.bytes, relay.to_client.bytes, code)
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %done.ctx.client, error = %e, "WebSocket upgrade failed after the 101");
                (0, 0, Some("websocket_reset"))
            }
            Err(_) => (0, 0, Some("websocket_reset")),
        };
        if let Some(log) = done.log.as_mut() {
            log.bytes_in = Some(Arc::new(AtomicU64::new(bytes_in)));
        }
        drop(active);
        done.finish(bytes_out, false, code);
        drop(done);
        // Last: a shutdown waiting for tunnels sees this one gone only once
        // its access log line is queued.
        drop(guard);
    }
}

/// Why a tunnel ended without an I/O error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// The peers closed it.
    Closed,
    /// weir closed it after `websocket_idle_timeout` of silence.
    Idle,
    /// weir closed it because the gateway is shutting down.
    Shutdown,
}

/// Copies both directions between the client's and the upstream's
/// connections until both are closed, or weir closes them.
struct Relay<C, U> {
    client: C,
    upstream: U,
    to_upstream: Pipe,
    to_client: Pipe,
    idle: Option<Idle>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    closing: Option<(Reason, Pin<Box<Sleep>>)>,
    linger: Option<Pin<Box<Sleep>>>,
}

impl<C, U> Relay<C, U> {
    fn new(client: C, upstream: U, shutdown: Pin<Box<dyn Future<Output = ()> + Send>>) -> Self {
        Relay {
            client,
            upstream,
            to_upstream: Pipe::new(),
            to_client: Pipe::new(),
            idle: None,
            shutdown,
            closing: None,
            linger: None,
        }
    }

    /// Starts weir's own close: a 1001 close frame to each side, once the
    /// frame in flight towards it has ended.
    fn begin_close(&mut self, reason: Reason) {
        let text = match reason {
            Reason::Idle => "idle timeout",
            _ => "shutting down",
        };
        let key = fastrand::u32(..).to_be_bytes();
        self.to_upstream
            .begin_close(close_frame(GOING_AWAY, text, Some(key)));
        self.to_client
            .begin_close(close_frame(GOING_AWAY, text, None));
        self.closing = Some((reason, Box::pin(tokio::time::sleep(CLOSE_TIMEOUT))));
    }
}

impl<C, U> Future for Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<Reason>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.closing.is_none() {
            if this.shutdown.as_mut().poll(cx).is_ready() {
                this.begin_close(Reason::Shutdown);
            } else if this.idle.as_mut().is_some_and(|i| i.poll_expired(cx)) {
                this.begin_close(Reason::Idle);
            }
        }
        let mut active = false;
        let up = this.to_upstream.poll_copy(
            cx,
            Pin::new(&mut this.client),
            Pin::new(&mut this.upstream),
            &mut active,
        );
        let down = this.to_client.poll_copy(
            cx,
            Pin::new(&mut this.upstream),
            Pin::new(&mut this.client),
            &mut active,
        );
        if active {
            if let Some(idle) = this.idle.as_mut() {
                idle.touch();
            }
        }
        let reason = this.closing.as_ref().map_or(Reason::Closed, |(r, _)| *r);
        let (up, down) = match (up, down) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                // Once weir is closing, a peer that resets instead of
                // answering the close does not make it an error.
                return Poll::Ready(if this.closing.is_some() {
                    Ok(reason)
                } else {
                    Err(e)
                });
            }
            (up, down) => (up.is_ready(), down.is_ready()),
        };
        if up && down {
            return Poll::Ready(Ok(reason));
        }
        if let Some((_, deadline)) = this.closing.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(reason));
            }
        }
        if up || down {
            // One side has closed its connection: the WebSocket is over, the
            // other side gets a moment to close too.
            let linger = this
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)));
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(reason));
            }
        }
        Poll::Pending
    }
}

/// What a direction does with the bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Copy everything.
    Forward,
    /// weir is closing: copy the rest of the frame in flight, then send
    /// the close frame.
    FinishFrame,
    /// weir's close frame is (being) sent: read and drop what the source
    /// still sends, until its own close frame or the end of its stream.
    Discard,
}

/// One direction of a tunnel.
struct Pipe {
    buf: Box<[u8]>,
    /// Bytes read and not yet written: `buf[start..end]`.
    start: usize,
    end: usize,
    tracker: FrameTracker,
    /// False once the stream stopped looking like WebSocket frames; weir
    /// then cannot place a close frame and lets the close timeout end it.
    tracking: bool,
    mode: Mode,
    /// weir's close frame, and how much of it is written.
    close: Option<Vec<u8>>,
    close_written: usize,
    injecting: bool,
    /// Bytes forwarded (frame headers included, weir's close excluded).
    bytes: u64,
    eof: bool,
    done: bool,
    need_flush: bool,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            tracker: FrameTracker::new(),
            tracking: true,
            mode: Mode::Forward,
            close: None,
            close_written: 0,
            injecting: false,
            bytes: 0,
            eof: false,
            done: false,
            need_flush: false,
        }
    }

    /// Arranges for `frame` to follow the frame in flight. Nothing to do
    /// when the source has already sent its own close (the destination
    /// gets that one) or its stream has ended.
    fn begin_close(&mut self, frame: Vec<u8>) {
        if self.done || self.eof || !self.tracking || self.tracker.close_seen() {
            return;
        }
        self.close = Some(frame);
        self.mode = Mode::FinishFrame;
    }

    /// Copies from `src` to `dst` until `src` would block; Ready once the
    /// direction is over and `dst`'s write side is shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead,
        W: AsyncWrite,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.start < self.end {
                let n = ready!(dst.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.need_flush = true;
            }
            if self.mode == Mode::FinishFrame && self.tracker.at_boundary() {
                self.mode = Mode::Discard;
                self.injecting = true;
            }
            if self.injecting {
                if let Some(frame) = &self.close {
                    while self.close_written < frame.len() {
                        let n = ready!(dst.as_mut().poll_write(cx, &frame[self.close_written..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        self.close_written += n;
                    }
                }
                self.injecting = false;
                self.need_flush = true;
            }
            let replied = self.mode == Mode::Discard && self.tracker.close_seen();
            if self.eof || replied {
                ready!(dst.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match src.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(dst.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            if n == 0 {
                self.eof = true;
                continue;
            }
            *active = true;
            let forward = self.follow(n);
            self.start = 0;
            self.end = forward;
            self.bytes += forward as u64;
        }
    }

    /// Runs the `n` bytes just read through the frame tracker; returns how
    /// many of them to forward.
    fn follow(&mut self, n: usize) -> usize {
        let data = &self.buf[..n];
        match self.mode {
            Mode::Forward => {
                if self.tracking && self.tracker.advance(data).is_err() {
                    self.tracking = false;
                }
                n
            }
            Mode::FinishFrame => match self.tracker.advance_to_boundary(data) {
                Ok(k) => {
                    if k < n || self.tracker.at_boundary() {
                        // The frame in flight ends here: the close frame
                        // goes next, the rest is dropped (but followed, to
                        // see the source's own close frame).
                        self.mode = Mode::Discard;
                        self.injecting = true;
                        let _ = self.tracker.advance(&data[k..]);
                    }
                    k
                }
                Err(_) => {
                    self.tracking = false;
                    self.mode = Mode::Forward;
                    self.close = None;
                    n
                }
            },
            Mode::Discard => {
                let _ = self.tracker.advance(data);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests;
