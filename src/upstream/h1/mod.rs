//! weir's own HTTP/1.1 client connection to a target. It owns the stream
//! (TCP or TLS), one read buffer and one reused write buffer, and is driven
//! directly by the request that holds it: no connection task, no channels.
//! `send` writes the request head and body and reads the response head; the
//! returned body (`ResponseBody`) owns the connection while the response
//! body is read, and hands it back (`into_reusable`) only when the exchange
//! ended cleanly and both sides allow keep-alive.
//!
//! It owns framing (RFC 9112) and connection reuse rules. It does not own
//! pooling (`upstream::pool`), deadlines (the caller drops the future) or
//! the mapping of errors to responses (`proxy::forward`).

mod body;
mod head;
mod stream;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

pub use body::ResponseBody;
pub use stream::Stream;

use crate::policy::circuit_breaker::ConnectionPermit;
use crate::upstream::{OutboundBody, OutboundError};
use head::{Framing, Head};

/// Read buffer growth step: one read takes up to this much.
const READ_CHUNK: usize = 8 * 1024;
/// Largest single read reserved for a body of known length.
const MAX_READ: usize = 64 * 1024;
/// A known request body up to this size goes out in the head's write.
const INLINE_BODY: usize = 16 * 1024;

/// Why an exchange on an HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The target closed the connection before a complete response.
    #[error("the connection closed before a complete response")]
    Closed,
    /// The target's response is not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The request body could not be read from the client.
    #[error("{0}")]
    Body(#[source] OutboundError),
    /// The request body did not match its declared length.
    #[error("the request body does not match its Content-Length")]
    BodyLength,
    /// An HTTP/2 or upgraded connection (still hyper's) failed.
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
}

/// What `send` reports when it fails.
#[derive(Debug)]
pub enum SendError {
    /// A connection that had served requests before turned out closed
    /// before the request could have reached the target: the body comes
    /// back intact, and the request may go out again on a fresh connection.
    Retry(Box<OutboundBody>, Error),
    /// The exchange failed.
    Failed(Error),
}

/// One HTTP/1.1 connection to a target.
#[derive(Debug)]
pub struct Http1Conn {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    // Requests completed on this connection: a closed connection found
    // when this is 0 is a real failure, not a stale keep-alive.
    served: u32,
    // Held as long as the connection lives (the circuit breaker's cap).
    _permit: Option<ConnectionPermit>,
}

/// How far the request went out.
struct Sent {
    // The whole body was written.
    complete: bool,
    // Bytes of this request written.
    written: usize,
    // The head of a response that arrived before the body was all sent.
    early: Option<Head>,
}

// === impl Http1Conn ===

impl Http1Conn {
    /// A connection over `stream`, freshly opened.
    pub fn new(stream: Stream, permit: Option<ConnectionPermit>) -> Self {
        Http1Conn {
            stream,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            served: 0,
            _permit: permit,
        }
    }

    /// True when an idle connection still looks usable: the target has
    /// neither closed it nor sent anything unasked. Never waits.
    pub fn is_idle_open(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Pending: nothing to read, the connection is as it was left.
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }

    /// Sends the request `parts` and `body` and reads the response head.
    /// The head is only read (a retry can send it again without a copy);
    /// the body of the returned response owns the connection; see the
    /// module doc.
    // Not an `async fn`, so that `body` is stored once in the future.
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        mut self,
        parts: &'a Parts,
        mut body: OutboundBody,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, SendError>> + 'a {
        async move {
            let framing = head::encode_request(&mut self.write_buf, parts, &body);
            // A small body already in memory goes out with the head: one write.
            // It is cloned, not taken, so the request can come back intact.
            let mut body_done = false;
            if let OutboundBody::Full(data) = &body {
                let len = data.as_ref().map_or(0, Bytes::len);
                if len <= INLINE_BODY {
                    if let Some(d) = data {
                        framing.encode_data(&mut self.write_buf, d);
                    }
                    framing.encode_end(&mut self.write_buf);
                    body_done = true;
                }
            } else if body.is_end_stream() {
                framing.encode_end(&mut self.write_buf);
                body_done = true;
            }
            let head_request = parts.method == Method::HEAD;
            // A body that is already on its way with the head is never polled,
            // so the request can be sent again as it is.
            let replayable = body_done;
            let idempotent = crate::policy::retry::is_idempotent(&parts.method);
            let sent = match self.send_request(&mut body, framing, body_done).await {
                Ok(sent) => sent,
                Err((written, e)) => {
                    // Nothing reached the target: safe to send again, any method.
                    if written == 0 && self.served > 0 && matches!(e, Error::Io(_) | Error::Closed)
                    {
                        return Err(SendError::Retry(Box::new(body), e));
                    }
                    return Err(SendError::Failed(e));
                }
            };
            let head = match sent.early {
                Some(head) => head,
                None => match self.read_head().await {
                    Ok(head) => head,
                    Err((got, e)) => {
                        // A kept-alive connection the target closed just as the
                        // request went out: nothing was answered. Sending again
                        // is safe when the method is idempotent and the body
                        // can be sent again.
                        let stale = got == 0
                            && self.served > 0
                            && matches!(e, Error::Io(_) | Error::Closed)
                            && (sent.written == 0 || (idempotent && replayable));
                        if stale {
                            return Err(SendError::Retry(Box::new(body), e));
                        }
                        return Err(SendError::Failed(e));
                    }
                },
            };
            drop(body);
            let decoder = head.decoder(head_request).map_err(SendError::Failed)?;
            // A body that runs to the end of the connection uses it up.
            let reusable = sent.complete && head.keep_alive && decoder != body::Decoder::Close;
            let response = head.into_response();
            Ok(response.map(|()| ResponseBody::new(self, decoder, reusable)))
        }
    }

    /// Writes what `write_buf` holds, then the rest of the body, watching
    /// for an early response while it waits. On failure, reports how many
    /// bytes of this request were written.
    async fn send_request(
        &mut self,
        body: &mut OutboundBody,
        framing: Framing,
        mut body_done: bool,
    ) -> Result<Sent, (usize, Error)> {
        let mut written = 0usize;
        let mut off = 0usize;
        let mut sent_len = 0u64;
        let mut flushed = true;
        poll_fn(|cx| loop {
            // Write what is buffered.
            if off < self.write_buf.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.write_buf[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((written, Error::Closed)));
                    }
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        written += n;
                        flushed = false;
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        // A target that answered and closed makes the write
                        // fail; its answer is worth more than the error.
                        if let Some(head) = self.salvage_head(cx) {
                            return Poll::Ready(Ok(Sent {
                                complete: false,
                                written,
                                early: Some(head),
                            }));
                        }
                        return Poll::Ready(Err((written, Error::Io(e))));
                    }
                    Poll::Pending => {}
                }
            } else {
                off = 0;
                self.write_buf.clear();
                if !flushed {
                    match Pin::new(&mut self.stream).poll_flush(cx) {
                        Poll::Ready(Ok(())) => flushed = true,
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Err((written, Error::Io(e))));
                        }
                        Poll::Pending => {}
                    }
                }
                if flushed && body_done {
                    return Poll::Ready(Ok(Sent {
                        complete: true,
                        written,
                        early: None,
                    }));
                }
                if flushed {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                sent_len += data.len() as u64;
                                if framing.exceeded(sent_len) {
                                    return Poll::Ready(Err((written, Error::BodyLength)));
                                }
                                framing.encode_data(&mut self.write_buf, &data);
                            }
                            // Request trailers are not forwarded on HTTP/1.1.
                            continue;
                        }
                        Poll::Ready(None) => {
                            if framing.short(sent_len) {
                                return Poll::Ready(Err((written, Error::BodyLength)));
                            }
                            framing.encode_end(&mut self.write_buf);
                            body_done = true;
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err((written, Error::Body(e))));
                        }
                        Poll::Pending => {}
                    }
                }
            }
            // Waiting on the target or on the client's body: the target may
            // answer (say, 413) before it has read the whole body.
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err((written, Error::Closed))),
                Poll::Ready(Ok(_)) => match head::parse(&mut self.read_buf) {
                    Ok(Some(head)) => {
                        return Poll::Ready(Ok(Sent {
                            complete: false,
                            written,
                            early: Some(head),
                        }))
                    }
                    Ok(None) => continue,
                    Err(e) => return Poll::Ready(Err((written, e))),
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err((written, Error::Io(e)))),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// A response head already received (or receivable without waiting)
    /// when writing the request failed.
    fn salvage_head(&mut self, cx: &mut Context<'_>) -> Option<Head> {
        // Bounded: each round either completes the head, fails, or adds
        // bytes towards the head size limit.
        for _ in 0..64 {
            match head::parse(&mut self.read_buf) {
                Ok(Some(head)) => return Some(head),
                Ok(None) => {}
                Err(_) => return None,
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
        None
    }

    /// Reads until a final response head is complete. On failure, reports
    /// how many response bytes had arrived.
    async fn read_head(&mut self) -> Result<Head, (usize, Error)> {
        let mut got = self.read_buf.len();
        loop {
            if !self.read_buf.is_empty() {
                match head::parse(&mut self.read_buf) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(e) => return Err((got, e)),
                }
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => return Err((got, Error::Closed)),
                Ok(n) => got += n,
                Err(e) => return Err((got, Error::Io(e))),
            }
        }
    }

    /// Reads once into the read buffer. Ready(Ok(0)) is the end of the
    /// stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.poll_fill_expecting(cx, 0)
    }

    /// Reads once, with room for `expected` more bytes when that is known
    /// (the rest of a body): a large body then comes in few reads, each
    /// into a buffer of its own (earlier data is still held downstream).
    fn poll_fill_expecting(
        &mut self,
        cx: &mut Context<'_>,
        expected: u64,
    ) -> Poll<io::Result<usize>> {
        // One byte more than the body still owes: a read that fills the
        // room it was given tells tokio the socket may hold more, and the
        // next `is_idle_open` then pays a read syscall (EAGAIN) to find out.
        // A read that comes back short clears that readiness for free. The
        // buffer's capacity also carries over to the next response's head
        // read, so a response exactly as large as the last one fits short.
        let want = usize::try_from(expected)
            .unwrap_or(MAX_READ)
            .saturating_add(1)
            .clamp(READ_CHUNK, MAX_READ);
        // With the buffer no longer shared, this reclaims it in place.
        if self.read_buf.capacity() - self.read_buf.len() < want {
            self.read_buf.reserve(want);
        }
        let read = std::pin::pin!(self.stream.read_buf(&mut self.read_buf));
        std::future::Future::poll(read, cx)
    }

    /// Marks one exchange done: the connection is idle again.
    fn served(&mut self) {
        self.served = self.served.saturating_add(1);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
