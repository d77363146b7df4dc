//! The response body sent to the client, and what happens when it ends.
//!
//! `ResponseBody` streams the target's body (or a local one), enforces the
//! route's deadline on it, counts bytes, and when it is dropped runs the
//! request's `Completion`: the upstream connection goes back for reuse (only if
//! its body was read to the end), metrics are recorded, the access log line is
//! written. Doing this at drop time means every way a response can end
//! (finished, client gone, upstream reset, deadline) is accounted exactly once.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::complete::Completion;
use super::deadline::Deadline;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use tokio::time::{Instant, Sleep};

/// Why a streamed response body was cut short.
#[derive(Debug)]
pub enum BodyError {
    /// The target reset or closed the connection mid-body.
    Upstream(hyper::Error),
    /// The route's deadline passed mid-body.
    Timeout,
    /// The target sent nothing for longer than the route's idle timeout.
    Idle,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Upstream(e) => write!(f, "upstream body error: {e}"),
            BodyError::Timeout => f.write_str("route deadline passed while streaming the response"),
            BodyError::Idle => {
                f.write_str("the upstream sent nothing for longer than the idle timeout")
            }
        }
    }
}

impl std::error::Error for BodyError {}

enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// The body of every response weir sends.
pub struct ResponseBody {
    inner: Inner,
    // Carries the timer the earlier stages may already have armed.
    deadline: Option<Deadline>,
    idle: Option<Box<Idle>>,
    bytes: u64,
    ended: bool,
    error: Option<&'static str>,
    completion: Option<Completion>,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// A body held in memory.
    pub fn full(data: Bytes) -> Self {
        Self::new(Inner::Full(if data.is_empty() { None } else { Some(data) }))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::new(Inner::Full(None))
    }

    /// The target's body, streamed, cut at `deadline` or after `idle`
    /// without a byte from the target.
    pub fn upstream(
        body: Incoming,
        deadline: Option<Deadline>,
        idle: Option<std::time::Duration>,
    ) -> Self {
        let mut b = Self::new(Inner::Upstream(body));
        b.deadline = deadline;
        b.idle = idle.map(|limit| Box::new(Idle::new(limit)));
        b
    }

    fn new(inner: Inner) -> Self {
        ResponseBody {
            inner,
            deadline: None,
            idle: None,
            bytes: 0,
            ended: false,
            error: None,
            completion: None,
        }
    }

    /// Sets the work to run when the response is over.
    pub fn on_complete(&mut self, completion: Completion) {
        self.completion = Some(completion);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(data) => match data.take() {
                Some(d) => {
                    this.bytes += d.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                None => {
                    this.ended = true;
                    Poll::Ready(None)
                }
            },
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        this.bytes += d.len() as u64;
                    }
                    if let Some(idle) = this.idle.as_mut() {
                        idle.touch();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.error = Some("upstream_reset");
                    Poll::Ready(Some(Err(BodyError::Upstream(e))))
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    if let Some(deadline) = this.deadline.as_mut() {
                        if deadline.poll_expired(cx) {
                            this.error = Some("upstream_timeout");
                            return Poll::Ready(Some(Err(BodyError::Timeout)));
                        }
                    }
                    if let Some(idle) = this.idle.as_mut() {
                        if idle.poll_expired(cx) {
                            this.error = Some("upstream_idle_timeout");
                            return Poll::Ready(Some(Err(BodyError::Idle)));
                        }
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

/// The idle timer: re-armed lazily from the time of the last frame, so a
/// busy stream costs one clock read per frame and no timer updates.
pub(super) struct Idle {
    limit: std::time::Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    /// A timer that expires `limit` after the last `touch` (or now).
    pub(super) fn new(limit: std::time::Duration) -> Self {
        Idle {
            limit,
            last: Instant::now(),
            timer: None,
        }
    }

    /// Something went by: the silence starts again.
    pub(super) fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// True once `limit` has passed since the last `touch`; otherwise
    /// arranges for `cx` to be woken when it may have.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.last + self.limit;
        if Instant::now() >= at {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        // Ready here means `at` passed between the check above and now.
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            if let Some(timer) = self.deadline.take().and_then(Deadline::into_timer) {
                c.ctx.recycle_timer(timer);
            }
            let complete = self.error.is_none() && (self.ended || self.is_end_stream());
            c.finish(self.bytes, complete, self.error);
        }
    }
}
