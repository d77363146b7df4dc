//! The response body sent to the client, and what happens when it ends.
//!
//! `ResponseBody` streams the target's body (or a local one), enforces the
//! route's deadline on it, counts bytes, and when it is dropped runs the
//! request's `Completion`: the upstream connection goes back for reuse (only if
//! its body was read to the end), metrics are recorded, the access log line is
//! written. Doing this at drop time means every way a response can end
//! (finished, client gone, upstream reset, deadline) is accounted exactly once.
//!
//! For a gRPC call it also reads the status from the trailers (for the
//! metrics), ends a call that fails mid-stream with trailers carrying the
//! gRPC status rather than a reset, and for a translated gRPC-Web call
//! re-encodes the frames (`grpc_web.rs`).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::complete::Completion;
use super::deadline::Deadline;
use super::grpc;
use super::grpc_web::WebEncoder;
use crate::upstream::{h1, UpstreamBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use tokio::time::{Instant, Sleep};

/// Why a streamed response body was cut short.
#[derive(Debug)]
pub enum BodyError {
    /// The target reset or closed the connection mid-body.
    Upstream(h1::Error),
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
    Upstream(UpstreamBody),
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
    completion: Option<Box<Completion>>,
    // Only gRPC calls pay for this (one allocation per call).
    grpc: Option<Box<GrpcStream>>,
}

/// The gRPC side of a response body.
#[derive(Debug)]
struct GrpcStream {
    /// gRPC-Web translation, when the route does it.
    web: Option<WebEncoder>,
    /// The call has ended (trailers sent): nothing more follows.
    finished: bool,
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
        body: UpstreamBody,
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
            grpc: None,
        }
    }

    /// Treats the body as a gRPC call's: the status is read from the
    /// trailers, a failure ends the call with a gRPC status in trailers,
    /// and `web` re-encodes everything as gRPC-Web.
    pub fn grpc(&mut self, web: Option<WebEncoder>) {
        self.grpc = Some(Box::new(GrpcStream {
            web,
            finished: false,
        }));
    }

    /// Ends a gRPC call that failed with `code` with trailers (or, in
    /// gRPC-Web, the trailer frame) carrying its gRPC status.
    fn end_call(&mut self, code: &'static str, detail: &str) -> Frame<Bytes> {
        let status = super::error::grpc_status(code, http::StatusCode::OK);
        if let Some(c) = self.completion.as_mut() {
            c.grpc_status = Some(status);
        }
        let mut trailers = http::HeaderMap::new();
        grpc::status_headers(&mut trailers, status, &format!("{code}: {detail}"));
        let Some(g) = self.grpc.as_mut() else {
            return Frame::trailers(trailers);
        };
        g.finished = true;
        match g.web.as_mut() {
            Some(web) => {
                let data = web.trailers(&trailers);
                self.bytes += data.len() as u64;
                Frame::data(data)
            }
            None => Frame::trailers(trailers),
        }
    }

    /// Fails the body with `err`, or for a gRPC call ends it cleanly with
    /// the matching status.
    fn fail(
        &mut self,
        code: &'static str,
        err: BodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.error = Some(code);
        if self.grpc.is_some() {
            let detail = err.to_string();
            return Poll::Ready(Some(Ok(self.end_call(code, &detail))));
        }
        Poll::Ready(Some(Err(err)))
    }

    /// Sets the work to run when the response is over.
    pub fn on_complete(&mut self, completion: Box<Completion>) {
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
            Inner::Upstream(body) => loop {
                if this.grpc.as_ref().is_some_and(|g| g.finished) {
                    this.ended = this.error.is_none();
                    return Poll::Ready(None);
                }
                return match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(mut frame))) => {
                        if let Some(idle) = this.idle.as_mut() {
                            idle.touch();
                        }
                        if let Some(g) = this.grpc.as_mut() {
                            frame = match g.frame(frame, &mut this.completion) {
                                Some(f) => f,
                                // Nothing to send yet (text mode).
                                None => continue,
                            };
                        }
                        if let Some(d) = frame.data_ref() {
                            this.bytes += d.len() as u64;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.fail("upstream_reset", BodyError::Upstream(e))
                    }
                    Poll::Ready(None) => {
                        this.ended = true;
                        let rest = this.grpc.as_mut().and_then(|g| {
                            g.finished = true;
                            g.web.as_mut().and_then(WebEncoder::finish)
                        });
                        match rest {
                            Some(d) => {
                                this.bytes += d.len() as u64;
                                Poll::Ready(Some(Ok(Frame::data(d))))
                            }
                            None => Poll::Ready(None),
                        }
                    }
                    Poll::Pending => {
                        if let Some(deadline) = this.deadline.as_mut() {
                            if deadline.poll_expired(cx) {
                                return this.fail("upstream_timeout", BodyError::Timeout);
                            }
                        }
                        if let Some(idle) = this.idle.as_mut() {
                            if idle.poll_expired(cx) {
                                return this.fail("upstream_idle_timeout", BodyError::Idle);
                            }
                        }
                        Poll::Pending
                    }
                };
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Upstream(b) => match &self.grpc {
                Some(g) if g.finished => true,
                Some(g) if g.web.as_ref().is_some_and(WebEncoder::pending) => false,
                _ => b.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            // gRPC-Web changes the size.
            Inner::Upstream(_) if self.grpc.as_ref().is_some_and(|g| g.web.is_some()) => {
                SizeHint::default()
            }
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

impl GrpcStream {
    /// One frame from the upstream: trailers give the call's status (and
    /// end it); with gRPC-Web everything is re-encoded. None when there is
    /// nothing to send for it yet.
    fn frame(
        &mut self,
        frame: Frame<Bytes>,
        done: &mut Option<Box<Completion>>,
    ) -> Option<Frame<Bytes>> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let Some(trailers) = frame.trailers_ref() else {
                    return Some(frame);
                };
                if let Some(c) = done.as_mut() {
                    c.grpc_status = grpc::status(trailers);
                }
                self.finished = true;
                return Some(match self.web.as_mut() {
                    Some(web) => Frame::data(web.trailers(trailers)),
                    None => frame,
                });
            }
        };
        match self.web.as_mut() {
            None => Some(Frame::data(data)),
            Some(web) => {
                let out = web.data(data);
                (!out.is_empty()).then(|| Frame::data(out))
            }
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
        if let Some(mut c) = self.completion.take() {
            if let Some(timer) = self.deadline.take().and_then(Deadline::into_timer) {
                c.ctx.recycle_timer(timer);
            }
            let complete = self.error.is_none() && (self.ended || self.is_end_stream());
            if complete {
                // The body read to its end frees its HTTP/1.1 connection
                // for the next request.
                if let (Inner::Upstream(body), Some(u)) = (&mut self.inner, c.upstream.as_mut()) {
                    u.conn = body.take_reusable();
                }
            }
            c.finish(self.bytes, complete, self.error);
        }
    }
}
