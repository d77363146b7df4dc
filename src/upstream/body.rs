//! The body of a request sent to a target: either the client's body streamed
//! through frame by frame, the client's base64 text decoded on the way (a
//! gRPC-Web text request), a body weir already holds in memory, or nothing.
//! One concrete enum instead of a boxed trait object keeps the forward path
//! free of per-request allocation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Request body towards a target.
#[derive(Debug)]
pub enum OutboundBody {
    /// The client's body, streamed, within its size and idle limits.
    Stream(ClientStream),
    /// The client's body as base64 text, sent decoded.
    Base64(Box<Base64Body>),
    /// A body held in memory.
    Full(Option<Bytes>),
}

/// Why a request body could not be sent whole: the target is reset.
#[derive(Debug)]
pub enum OutboundError {
    /// Reading the client's body failed.
    Client(hyper::Error),
    /// The client's base64 text is not base64.
    Base64,
    /// The client's body went past the route's `max_request_body` (the
    /// limit, in bytes).
    TooLarge(u64),
    /// No byte of the client's body came for this long
    /// (`limits.body_idle_timeout`).
    Idle(Duration),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Client(e) => write!(f, "client body error: {e}"),
            OutboundError::Base64 => f.write_str("the request body is not valid base64"),
            OutboundError::TooLarge(limit) => {
                write!(f, "the request body is larger than {limit} bytes")
            }
            OutboundError::Idle(idle) => {
                write!(f, "no request body byte arrived for {idle:?}")
            }
        }
    }
}

impl std::error::Error for OutboundError {}

impl OutboundBody {
    /// An empty body.
    pub fn empty() -> Self {
        OutboundBody::Full(None)
    }

    /// The client's body, streamed, refused once it carries more than
    /// `limit` bytes or goes `idle` without one; the counter (when present)
    /// adds up bytes.
    pub fn stream(
        inner: Incoming,
        counter: Option<Arc<AtomicU64>>,
        limit: u64,
        idle: Duration,
    ) -> Self {
        OutboundBody::Stream(ClientStream {
            inner,
            counter,
            left: limit,
            limit,
            idle,
            timer: None,
            armed: false,
        })
    }

    /// The client's base64 body, decoded as it streams.
    pub fn base64(inner: Incoming, counter: Option<Arc<AtomicU64>>) -> Self {
        OutboundBody::Base64(Box::new(Base64Body {
            inner,
            counter,
            carry: Vec::new(),
        }))
    }
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = OutboundError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        match self.get_mut() {
            OutboundBody::Stream(s) => s.poll(cx),
            OutboundBody::Base64(b) => b.poll(cx),
            OutboundBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutboundBody::Stream(s) => s.inner.is_end_stream(),
            OutboundBody::Base64(b) => b.inner.is_end_stream() && b.carry.is_empty(),
            OutboundBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutboundBody::Stream(s) => s.inner.size_hint(),
            OutboundBody::Base64(_) => SizeHint::default(),
            OutboundBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The client's body as it streams through.
#[derive(Debug)]
pub struct ClientStream {
    inner: Incoming,
    counter: Option<Arc<AtomicU64>>,
    // Bytes still allowed, and the limit they count down from.
    left: u64,
    limit: u64,
    idle: Duration,
    // Made the first time the body waits (a body that arrives whole never
    // needs one), then reset each time a wait starts.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ClientStream {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                let deadline = Instant::now() + self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !self.armed {
                    timer.as_mut().reset(deadline);
                    self.armed = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(OutboundError::Idle(self.idle))));
                }
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        return Poll::Ready(Some(Err(OutboundError::TooLarge(self.limit))));
                    }
                    self.left -= n;
                    if let Some(counter) = &self.counter {
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Poll::Ready(_) => {}
        }
        polled.map_err(OutboundError::Client)
    }
}

/// A base64 body decoded as it streams. The text may arrive split
/// anywhere, and may be several padded encodings one after the other (a
/// browser that encodes each message on its own), so whole 4-character
/// groups are decoded as they complete and a padded group ends one
/// encoding.
#[derive(Debug)]
pub struct Base64Body {
    inner: Incoming,
    counter: Option<Arc<AtomicU64>>,
    // Characters of a group not yet complete (at most 3).
    carry: Vec<u8>,
}

impl Base64Body {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if self.carry.is_empty() => return Poll::Ready(None),
                // A group cut short: the text was not base64.
                Poll::Ready(None) => return Poll::Ready(Some(Err(OutboundError::Base64))),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(OutboundError::Client(e))))
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let text = match frame.into_data() {
                Ok(text) => text,
                // Requests carry no trailers in gRPC-Web; pass any along.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            if let Some(counter) = &self.counter {
                counter.fetch_add(text.len() as u64, Ordering::Relaxed);
            }
            match decode_chunk(&mut self.carry, &text) {
                Ok(decoded) if decoded.is_empty() => continue,
                Ok(decoded) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(decoded))))),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

/// Decodes the whole groups of `carry` + `text`, keeping the rest in
/// `carry`.
pub fn decode_chunk(carry: &mut Vec<u8>, text: &[u8]) -> Result<Vec<u8>, OutboundError> {
    let mut input: Vec<u8> = Vec::with_capacity(carry.len() + text.len());
    input.append(carry);
    // Line breaks are allowed by some encoders; they carry nothing.
    input.extend(text.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    let whole = input.len() / 4 * 4;
    carry.extend_from_slice(&input[whole..]);
    let input = &input[..whole];
    let mut out = Vec::with_capacity(whole / 4 * 3);
    let mut start = 0;
    for group in (0..whole).step_by(4) {
        if input[group + 2] == b'=' || input[group + 3] == b'=' {
            STANDARD
                .decode_vec(&input[start..group + 4], &mut out)
                .map_err(|_| OutboundError::Base64)?;
            start = group + 4;
        }
    }
    if start < whole {
        STANDARD
            .decode_vec(&input[start..], &mut out)
            .map_err(|_| OutboundError::Base64)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(text: &str, at: &[usize]) -> Result<Vec<u8>, OutboundError> {
        let mut carry = Vec::new();
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in at.iter().chain(std::iter::once(&text.len())) {
            out.extend(decode_chunk(&mut carry, &text.as_bytes()[last..cut])?);
            last = cut;
        }
        assert!(carry.is_empty(), "left over: {carry:?}");
        Ok(out)
    }

    #[test]
    fn text_split_anywhere_decodes_whole() {
        let text = STANDARD.encode(b"hello, gRPC-Web world");
        for cut in 0..text.len() {
            assert_eq!(
                decode_split(&text, &[cut]).unwrap(),
                b"hello, gRPC-Web world"
            );
        }
    }

    #[test]
    fn padded_encodings_one_after_the_other_decode() {
        let text = format!("{}{}", STANDARD.encode(b"ab"), STANDARD.encode(b"cdef"));
        assert_eq!(text, "YWI=Y2RlZg==");
        assert_eq!(decode_split(&text, &[3, 6]).unwrap(), b"abcdef");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_split("!!!!", &[]).is_err());
        assert!(decode_split("YW=I", &[]).is_err());
    }
}
