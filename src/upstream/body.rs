//! The body of a request sent to a target: either the client's body streamed
//! through frame by frame, a body weir already holds in memory, or nothing.
//! One concrete enum instead of a boxed trait object keeps the forward path
//! free of per-request allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Request body towards a target.
#[derive(Debug)]
pub enum OutboundBody {
    /// The client's body, streamed; the counter (when present) adds up bytes.
    Stream(Incoming, Option<Arc<AtomicU64>>),
    /// A body held in memory.
    Full(Option<Bytes>),
}

impl OutboundBody {
    /// An empty body.
    pub fn empty() -> Self {
        OutboundBody::Full(None)
    }
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            OutboundBody::Stream(inner, counter) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(counter)) = (&polled, counter) {
                    if let Some(data) = frame.data_ref() {
                        counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                polled
            }
            OutboundBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutboundBody::Stream(inner, _) => inner.is_end_stream(),
            OutboundBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutboundBody::Stream(inner, _) => inner.size_hint(),
            OutboundBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
