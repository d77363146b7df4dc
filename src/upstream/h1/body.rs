//! The response body of an HTTP/1.1 exchange: decodes the framing the head
//! announced (length, chunked, to the end of the connection, none) and
//! yields data split straight off the connection's read buffer (no copy).
//! It owns the connection until the body has ended.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::{Error, Http1Conn};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILER_FIELDS: usize = 64;

/// Where the body decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoder {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    /// Chunked, at this point of the encoding.
    Chunked(Chunk),
    /// Delimited by the end of the connection.
    Close,
    /// The body has ended cleanly.
    Done,
}

/// A position in the chunked encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

impl Decoder {
    pub(super) fn length(n: u64) -> Self {
        Decoder::Length(n)
    }

    pub(super) fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size)
    }
}

/// The body of a response read over an [`Http1Conn`].
#[derive(Debug)]
pub struct ResponseBody {
    // None once the connection failed (it is closed by dropping it) or
    // was taken back for reuse.
    conn: Option<Http1Conn>,
    decoder: Decoder,
    // The exchange allows keep-alive (request fully sent, no `close`).
    reusable: bool,
}

impl ResponseBody {
    pub(super) fn new(conn: Http1Conn, decoder: Decoder, reusable: bool) -> Self {
        ResponseBody {
            conn: Some(conn),
            decoder,
            reusable,
        }
    }

    /// The connection, when the body ended cleanly and the connection may
    /// carry another request: keep-alive on both sides, the request body
    /// sent whole, and nothing unasked left to read.
    pub fn take_reusable(&mut self) -> Option<Http1Conn> {
        if !self.reusable || !matches!(self.decoder, Decoder::Empty | Decoder::Done) {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.read_buf.is_empty() {
            // Bytes past the response: the target is out of step.
            return None;
        }
        conn.served();
        Some(conn)
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.read_buf;
            match &mut this.decoder {
                Decoder::Empty | Decoder::Done => return Poll::Ready(None),
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                    if !buf.is_empty() {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        let data = buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.decoder = match this.decoder {
                                Decoder::Length(_) => Decoder::Done,
                                _ => Decoder::Chunked(Chunk::DataEnd),
                            };
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decoder::Close => {
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decoder::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        this.decoder = Decoder::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return this.fail(Error::Invalid("chunk size line too long"));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return this.fail(Error::Invalid("invalid chunk size")),
                },
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() >= 2 {
                        if &buf[..2] != b"\r\n" {
                            return this.fail(Error::Invalid("chunk data not followed by CRLF"));
                        }
                        buf.advance(2);
                        this.decoder = Decoder::Chunked(Chunk::Size);
                        continue;
                    }
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        this.decoder = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    match trailers(buf) {
                        Ok(Some(map)) => {
                            this.decoder = Decoder::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(map))));
                        }
                        Ok(None) => {}
                        Err(e) => return this.fail(e),
                    }
                }
            }
            // The buffer holds nothing usable yet: read more.
            let expected = match this.decoder {
                Decoder::Length(n) | Decoder::Chunked(Chunk::Data(n)) => n,
                _ => 0,
            };
            match conn.poll_fill_expecting(cx, expected) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.decoder == Decoder::Close => {
                    this.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(Error::Closed),
                Poll::Ready(Ok(_)) => {}
                // A TLS peer that closes without close_notify ends a
                // close-delimited body all the same (it cannot be reused).
                Poll::Ready(Err(e))
                    if this.decoder == Decoder::Close
                        && e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    this.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Err(e)) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Empty | Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Empty | Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Parses a complete trailer section off the front of `buf`. None: more
/// bytes are needed.
fn trailers(buf: &mut bytes::BytesMut) -> Result<Option<HeaderMap>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(f.name.as_bytes()),
                    HeaderValue::from_bytes(f.value),
                ) else {
                    return Err(Error::Invalid("invalid trailer field"));
                };
                map.append(name, value);
            }
            buf.advance(used);
            Ok(Some(map))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
            Err(Error::Invalid("trailer section too large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Error::Invalid("malformed trailer section")),
    }
}
