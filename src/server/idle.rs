//! The idle and request-head timeouts of one client connection, each served
//! by one timer per connection that is re-armed only when it fires:
//!
//! - `H1Io` wraps an HTTP/1.x connection's socket. It closes the connection
//!   quietly (end of stream to hyper) once it has been idle between requests
//!   for `limits.keepalive_idle`, and when a request head it has begun is
//!   not complete within `limits.header_read_timeout` it writes the 408
//!   itself and ends the connection.
//! - `h2_idle` resolves when an HTTP/2 connection has had no request in
//!   progress for `keepalive_idle`, or has started the last request it may
//!   carry; the caller then ends it gracefully (GOAWAY).
//!
//! One approximation: bytes of a pipelined request that arrive while an
//! earlier request is in progress are not seen as a head starting (hyper
//! may hold them unparsed); if that head is still incomplete when the
//! earlier response ends, it is bounded by `keepalive_idle` (from that end)
//! rather than `header_read_timeout`, unless more of it arrives.
//!
//! Owns only the timing; whether a request is in progress, and when the
//! last one ended, comes from the pipeline through `ConnCtx`. Must not
//! parse HTTP (hyper does) nor write anything but the 408.
//!
//! Why not hyper's `header_read_timeout`: it arms a boxed timer for every
//! request head and closes an idle keep-alive connection at the same
//! deadline as a slow head, without an answer. Here a phase change only
//! stores a time (a request start is two relaxed atomics, a new head one
//! clock read); the timer wakes at the earliest moment a deadline could
//! have passed, works out the real one, and sleeps again if it lies ahead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::proxy::ConnCtx;

/// The timeouts of a listener's HTTP/1.x connections.
#[derive(Clone, Debug)]
pub(super) struct H1Timeouts {
    /// `limits.keepalive_idle`.
    pub(super) keepalive_idle: Duration,
    /// `limits.header_read_timeout`.
    pub(super) header_read: Duration,
    /// The whole 408 response written when a head times out.
    pub(super) reply: Bytes,
}

/// A request head being received: its first bytes came while no request
/// was in progress.
#[derive(Clone, Copy, Debug)]
struct Head {
    /// `ConnCtx::requests` when it began; once the count moves on, hyper
    /// has the whole head.
    requests: u64,
    since: Instant,
    /// A byte of it has arrived. A new connection's first head counts from
    /// the connection's start, before any byte.
    bytes: bool,
}

/// What has run out.
enum Expired {
    /// The connection has been idle too long: close quietly.
    Idle,
    /// A head begun has not completed: answer 408 and close.
    Head,
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Closed for idleness: every read is the end of the stream.
    Ended,
    /// Writing the 408; so many bytes of it are written.
    Replying(usize),
    /// The 408 is written (or could not be): every read fails.
    Closed,
}

/// An HTTP/1.x client connection's socket, with its keep-alive idle and
/// request-head timeouts.
#[derive(Debug)]
pub(super) struct H1Io<S> {
    inner: S,
    ctx: Arc<ConnCtx>,
    keepalive_idle: Duration,
    header_read: Duration,
    reply: Bytes,
    timer: Pin<Box<Sleep>>,
    head: Option<Head>,
    /// Everything hyper wrote has been flushed: a 408 written now cannot
    /// land inside a response.
    flushed: bool,
    phase: Phase,
    /// Where a small vectored write is gathered (see `poll_write_vectored`);
    /// empty until the first one.
    gather: Vec<u8>,
}

/// Vectored writes of at most this many bytes in all are copied into one
/// buffer and written with one `write`.
const GATHER_MAX: usize = 4 * 1024;

impl<S> H1Io<S> {
    /// Wraps a connection whose first bytes have arrived (or, over TLS,
    /// whose handshake has just finished): its first head counts from now.
    pub(super) fn new(inner: S, ctx: Arc<ConnCtx>, timeouts: &H1Timeouts) -> Self {
        let now = Instant::now();
        H1Io {
            inner,
            ctx,
            keepalive_idle: timeouts.keepalive_idle,
            header_read: timeouts.header_read,
            reply: timeouts.reply.clone(),
            timer: Box::pin(tokio::time::sleep_until(
                (now + timeouts.header_read).into(),
            )),
            head: Some(Head {
                requests: 0,
                since: now,
                bytes: false,
            }),
            flushed: true,
            phase: Phase::Open,
            gather: Vec::new(),
        }
    }

    /// Bytes arrived: between requests, they begin (or continue) a head.
    fn on_bytes(&mut self) {
        if self.ctx.idle_since().is_none() {
            // A request body, or a pipelined request hyper has not reached.
            return;
        }
        let requests = self.ctx.requests();
        match &mut self.head {
            Some(h) if h.requests == requests => h.bytes = true,
            _ => {
                self.head = Some(Head {
                    requests,
                    since: Instant::now(),
                    bytes: true,
                })
            }
        }
    }

    /// Waits for the timer; when it fires, either a deadline has passed or
    /// it is re-armed for the earliest moment one could.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let next = match self.ctx.idle_since() {
                // In a request: the earliest deadline is a head that
                // starts right after it, or idleness from its end.
                None => now + self.keepalive_idle.min(self.header_read),
                Some(idle) => match self.head {
                    Some(h) if h.requests == self.ctx.requests() => {
                        let deadline = h.since + self.header_read;
                        if now >= deadline {
                            // A connection that never sent a byte of its
                            // head is idle, not slow.
                            return Poll::Ready(if h.bytes {
                                Expired::Head
                            } else {
                                Expired::Idle
                            });
                        }
                        deadline
                    }
                    _ => {
                        let deadline = idle + self.keepalive_idle;
                        if now >= deadline {
                            return Poll::Ready(Expired::Idle);
                        }
                        // A head may begin at any moment.
                        deadline.min(now + self.header_read)
                    }
                },
            };
            self.timer.as_mut().reset(next.into());
        }
    }
}

impl<S: AsyncWrite + Unpin> H1Io<S> {
    /// Writes what the socket takes of the 408 without waiting for the
    /// client (one that reads nothing is closed all the same), then fails
    /// the read so that hyper ends the connection.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Phase::Replying(done) = self.phase {
            if done == self.reply.len() {
                // TLS holds the records until flushed.
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
                self.phase = Phase::Closed;
                break;
            }
            self.phase = match Pin::new(&mut self.inner).poll_write(cx, &self.reply[done..]) {
                Poll::Ready(Ok(n)) if n > 0 => Phase::Replying(done + n),
                _ => Phase::Closed,
            };
        }
        Poll::Ready(Err(head_timed_out()))
    }
}

fn head_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head timed out")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Open => {}
            Phase::Ended => return Poll::Ready(Ok(())),
            Phase::Replying(_) => return this.poll_reply(cx),
            Phase::Closed => return Poll::Ready(Err(head_timed_out())),
        }
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if r.is_ok() && buf.filled().len() > before {
                this.on_bytes();
            }
            return Poll::Ready(r);
        }
        // Nothing to read: the timer's turn.
        match ready!(this.poll_timer(cx)) {
            Expired::Idle => {
                tracing::debug!(client = %this.ctx.client, "idle HTTP/1.x connection closed");
                this.phase = Phase::Ended;
                Poll::Ready(Ok(()))
            }
            Expired::Head => {
                this.ctx.state.metrics.rejected("header_read_timeout");
                tracing::debug!(client = %this.ctx.client, "request head timed out: 408");
                this.phase = if this.flushed {
                    Phase::Replying(0)
                } else {
                    Phase::Closed
                };
                this.poll_reply(cx)
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H1Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Replying(_) | Phase::Closed) {
            return Poll::Ready(Err(head_timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.flushed = false;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Replying(_) | Phase::Closed) {
            return Poll::Ready(Err(head_timed_out()));
        }
        // hyper hands over a response's head and body as separate buffers
        // (`writev(true)`, see `ConnBuilders`); a small response costs less
        // as one plain `write` than as an iovec, and gathering it needs
        // only a buffer of `GATHER_MAX`.
        let r = match gather(bufs, &mut this.gather) {
            Some(one) => Pin::new(&mut this.inner).poll_write(cx, one),
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.flushed = false;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.flushed = true;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Resolves when an HTTP/2 connection has had no request in progress for
/// `keepalive_idle` (counted from now at the earliest), or, with `spent`,
/// has started the last request it may carry
/// (`limits.h2_max_requests_per_connection`).
pub(super) async fn h2_idle(ctx: &ConnCtx, keepalive_idle: Duration, spent: bool) {
    let start = Instant::now();
    let timer = tokio::time::sleep(keepalive_idle);
    let last = async {
        if spent {
            ctx.spent().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(timer, last);
    loop {
        tokio::select! {
            biased;
            () = &mut last => return,
            () = &mut timer => {}
        }
        let now = Instant::now();
        let next = match ctx.idle_since() {
            // Idleness can begin no earlier than now.
            None => now + keepalive_idle,
            Some(since) if now >= since.max(start) + keepalive_idle => {
                tracing::debug!(client = %ctx.client, "idle HTTP/2 connection ended");
                return;
            }
            Some(since) => since.max(start) + keepalive_idle,
        };
        timer.as_mut().reset(next.into());
    }
}

/// Copies `bufs` into `into` and returns them as one slice when there are
/// several and they hold at most `GATHER_MAX` bytes in all; `None` when they
/// should go out as they are.
fn gather<'a>(bufs: &[io::IoSlice<'_>], into: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    if bufs.len() < 2 || bufs.iter().map(|b| b.len()).sum::<usize>() > GATHER_MAX {
        return None;
    }
    into.clear();
    for b in bufs {
        into.extend_from_slice(b);
    }
    Some(into)
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use super::{gather, GATHER_MAX};

    #[test]
    fn small_writes_are_gathered_in_order_and_large_ones_left_vectored() {
        let mut into = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".as_slice();
        let parts = [IoSlice::new(head), IoSlice::new(b"hello")];
        assert_eq!(
            gather(&parts, &mut into),
            Some([head, b"hello"].concat().as_slice())
        );
        // The buffer is reused, not appended to.
        let parts = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
        assert_eq!(gather(&parts, &mut into), Some(b"abcd".as_slice()));

        let one = [IoSlice::new(b"alone")];
        assert_eq!(gather(&one, &mut into), None);
        let body = vec![b'x'; GATHER_MAX - head.len()];
        let exact = [IoSlice::new(head), IoSlice::new(&body)];
        assert_eq!(gather(&exact, &mut into).map(<[u8]>::len), Some(GATHER_MAX));
        let body = vec![b'x'; GATHER_MAX - head.len() + 1];
        let large = [IoSlice::new(head), IoSlice::new(&body)];
        assert_eq!(gather(&large, &mut into), None);
    }
}
