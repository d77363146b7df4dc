//! Message heads: encoding the request head with its body framing, and
//! parsing the response head (skipping interim 1xx responses) into what
//! the body decoder and the reuse decision need (RFC 9112 §6).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::Body;

use super::body::Decoder;
use super::Error;
use crate::decimal::Decimal;
use crate::upstream::OutboundBody;

/// `Keep-Alive` (RFC 7230 §A.1.2): parameters of a kept-alive HTTP/1.x
/// connection, meaningful to this hop only.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Most header lines in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head, in bytes.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body and no framing header.
    Empty,
    /// `Content-Length`: exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    /// Appends one piece of body data in this framing.
    pub(super) fn encode_data(self, out: &mut Vec<u8>, data: &[u8]) {
        match self {
            Framing::Chunked if data.is_empty() => {}
            Framing::Chunked => {
                push_hex(out, data.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(data),
        }
    }

    /// Appends the end of the body.
    pub(super) fn encode_end(self, out: &mut Vec<u8>) {
        if self == Framing::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }

    /// True when `sent` bytes are more than the framing announced.
    pub(super) fn exceeded(self, sent: u64) -> bool {
        match self {
            Framing::Empty => sent > 0,
            Framing::Length(n) => sent > n,
            Framing::Chunked => false,
        }
    }

    /// True when a body that ended after `sent` bytes fell short.
    pub(super) fn short(self, sent: u64) -> bool {
        matches!(self, Framing::Length(n) if sent < n)
    }
}

fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes the request head into `out` (cleared first) and returns the body
/// framing. The request's own `Content-Length` is kept; without one the
/// body's exact size becomes one, an unknown size is sent chunked, and an
/// empty body gets `content-length: 0` only on methods whose requests
/// carry a payload (as hyper's client does). A `Transfer-Encoding` left on
/// the request, and a `Content-Length` that is not a number, are not
/// written: framing is this codec's to decide.
pub(super) fn encode_request(out: &mut Vec<u8>, parts: &Parts, body: &OutboundBody) -> Framing {
    out.clear();
    let declared = parts.headers.get(header::CONTENT_LENGTH).map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    });
    let framing = match declared {
        Some(Some(n)) => Framing::Length(n),
        Some(None) => Framing::Chunked,
        None => match body.size_hint().exact() {
            Some(0) if body.is_end_stream() => {
                if carries_payload(&parts.method) {
                    Framing::Length(0)
                } else {
                    Framing::Empty
                }
            }
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        },
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let drop_length = declared == Some(None);
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING || (drop_length && *name == header::CONTENT_LENGTH) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) if declared.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(Decimal::new(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn carries_payload(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE
    )
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delimit {
    Length(u64),
    Chunked,
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub(super) struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    delimit: Delimit,
    /// Neither side closes after this exchange.
    pub(super) keep_alive: bool,
}

impl Head {
    /// The body decoder for this response to a request (HEAD or not).
    pub(super) fn decoder(&self, head_request: bool) -> Result<Decoder, Error> {
        let bodiless = head_request
            || self.status.is_informational()
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED;
        Ok(match self.delimit {
            _ if bodiless => Decoder::Empty,
            Delimit::Length(0) => Decoder::Empty,
            Delimit::Length(n) => Decoder::length(n),
            Delimit::Chunked => Decoder::chunked(),
            Delimit::Close => Decoder::Close,
        })
    }

    /// The head as an `http` response.
    pub(super) fn into_response(self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Parses a final response head from the front of `buf`, consuming it
/// (and any interim 1xx responses before it). None: more bytes are needed.
pub(super) fn parse(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    // Most heads have a handful of lines: a small table first, the full
    // one only for a head that overflows it.
    match parse_with::<FEW_HEADERS>(buf) {
        Some(parsed) => parsed,
        None => parse_with::<MAX_HEADERS>(buf)
            .unwrap_or(Err(Error::Invalid("too many response headers"))),
    }
}

/// Header lines the first parse makes room for.
const FEW_HEADERS: usize = 24;

/// `parse` with room for `N` header lines; None when the head has more.
fn parse_with<const N: usize>(buf: &mut BytesMut) -> Option<Result<Option<Head>, Error>> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Some(Err(Error::Invalid("response head too large")));
            }
            Ok(httparse::Status::Partial) => return Some(Ok(None)),
            Err(httparse::Error::TooManyHeaders) => return None,
            Err(_) => return Some(Err(Error::Invalid("malformed response head"))),
        };
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            // Interim (100 Continue, 103 Early Hints): the final head follows.
            buf.advance(len);
            continue;
        }
        if code == 101 {
            // Upgrades go over hyper's connection; this one never asks.
            return Some(Err(Error::Invalid(
                "101 Switching Protocols without an upgrade",
            )));
        }
        let Ok(status) = StatusCode::from_u16(code) else {
            return Some(Err(Error::Invalid("invalid status")));
        };
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Offsets into the head, so the values can share its bytes once it
        // is split off the buffer (no copy per header).
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        let mut ranges = [[0u32; 4]; N];
        for (r, h) in ranges.iter_mut().zip(parsed.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            // `len` is at most MAX_HEAD plus one read, far below u32::MAX.
            *r = [
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            ];
        }
        let head: Bytes = buf.split_to(len).freeze();
        return Some(build(head, &ranges[..count], status, version).map(Some));
    }
}

fn build(
    head: Bytes,
    ranges: &[[u32; 4]],
    status: StatusCode,
    version: Version,
) -> Result<Head, Error> {
    // Room for the headers weir adds on the way back without growing the
    // table: `x-request-id`, a rate-limited route's `RateLimit` and
    // `RateLimit-Policy`, a last response's `Connection: close`. (Growing
    // rehashes every entry; four spare slots cost a few bytes.)
    let mut headers = HeaderMap::with_capacity(ranges.len() + 4);
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for r in ranges {
        let [ns, ne, vs, ve] = r.map(|x| x as usize);
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| Error::Invalid("invalid header name"))?;
        // SAFETY: httparse accepted these bytes as a header value, and it
        // accepts exactly the bytes `HeaderValue` does (HTAB, 0x20-0x7E,
        // obs-text 0x80-0xFF); `value_bytes_agree_with_http` checks all 256.
        // Checking again would walk every value byte a second time.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(vs..ve)) };
        if name == header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii())
                    .ok_or(Error::Invalid("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("conflicting content-length"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            te = true;
            // The last coding decides: chunked means the chunked decoder.
            if let Some(last) = value.as_bytes().split(|&b| b == b',').next_back() {
                chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            let mut others = false;
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() {
                    others = true;
                }
            }
            // Connection management is this hop's alone and is read here:
            // a plain `keep-alive`/`close` never reaches the table. One that
            // names other headers stays, so that they are stripped too.
            if !others {
                continue;
            }
        } else if name == KEEP_ALIVE {
            continue;
        }
        headers.append(name, value);
    }
    let mut keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let delimit = if te {
        // Both framings at once is how smuggling starts: no reuse after it.
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Delimit::Chunked
        } else {
            Delimit::Close
        }
    } else {
        match length {
            Some(n) => Delimit::Length(n),
            None => Delimit::Close,
        }
    };
    Ok(Head {
        status,
        version,
        headers,
        delimit,
        keep_alive,
    })
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}
