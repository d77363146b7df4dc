//! gRPC-Web translation for routes with `grpc_web: true`: a browser's
//! gRPC-Web request becomes a gRPC request to the upstream, and the gRPC
//! answer goes back as gRPC-Web, with the trailers moved into the body.
//!
//! gRPC-Web differs from gRPC in three ways this file undoes: the content
//! type (`application/grpc-web[-text][+proto]`), the trailers (HTTP/1.1 and
//! browsers' fetch cannot read them, so they travel as a last
//! length-prefixed frame whose flag byte has bit 0x80 set, holding
//! `name: value\r\n` lines), and, in text mode, base64 on the whole body.
//! The request's base64 is decoded by `upstream::OutboundBody::Base64`; the
//! message frames themselves are the same and are not parsed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TE};

use super::grpc::GrpcKind;

const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
/// The flag byte of the frame that carries the trailers.
const TRAILER_FLAG: u8 = 0x80;

/// Rewrites a gRPC-Web request head into a gRPC one.
pub fn request_head(headers: &mut HeaderMap, kind: GrpcKind) {
    let grpc = headers
        .get(CONTENT_TYPE)
        .map(|ct| swap_prefix(ct.as_bytes(), web_prefix(kind), b"application/grpc"))
        .unwrap_or(HeaderValue::from_static("application/grpc"));
    headers.insert(CONTENT_TYPE, grpc);
    // gRPC servers may refuse a request that does not promise to read
    // trailers; the browser cannot make that promise itself.
    headers.insert(TE, TRAILERS);
    if kind == GrpcKind::WebText {
        // Decoding changes the length.
        headers.remove(CONTENT_LENGTH);
    }
}

/// Rewrites the gRPC answer's head into a gRPC-Web one. Only an answer
/// that is gRPC (its content type says so) is touched.
pub fn response_head(headers: &mut HeaderMap, kind: GrpcKind) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    if GrpcKind::of(ct.as_bytes()) != Some(GrpcKind::Grpc) {
        return false;
    }
    let web = swap_prefix(ct.as_bytes(), b"application/grpc", web_prefix(kind));
    headers.insert(CONTENT_TYPE, web);
    // The body grows by the trailer frame (and the base64).
    headers.remove(CONTENT_LENGTH);
    true
}

fn web_prefix(kind: GrpcKind) -> &'static [u8] {
    match kind {
        GrpcKind::WebText => b"application/grpc-web-text",
        _ => b"application/grpc-web",
    }
}

/// `value` with its first `from.len()` bytes (known to match `from`,
/// case aside) replaced by `to`: the `+proto` or parameters are kept.
fn swap_prefix(value: &[u8], from: &[u8], to: &[u8]) -> HeaderValue {
    let rest = value.get(from.len()..).unwrap_or_default();
    let mut out = Vec::with_capacity(to.len() + rest.len());
    out.extend_from_slice(to);
    out.extend_from_slice(rest);
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("application/grpc"))
}

/// A whole gRPC-Web text body (one kept in memory for a retry or the
/// mirror), decoded; None when it is not base64.
pub fn decode_text(text: &[u8]) -> Option<Bytes> {
    let mut carry = Vec::new();
    let decoded = crate::upstream::decode_base64_chunk(&mut carry, text).ok()?;
    carry.is_empty().then(|| Bytes::from(decoded))
}

/// Turns the upstream's gRPC response body into gRPC-Web, frame by frame.
#[derive(Debug)]
pub struct WebEncoder {
    text: bool,
    // Text mode: bytes not yet encoded, so that the output stays one
    // base64 text without padding in the middle (at most 2).
    carry: Vec<u8>,
}

impl WebEncoder {
    /// An encoder for `kind` (a gRPC-Web kind).
    pub fn new(kind: GrpcKind) -> Self {
        WebEncoder {
            text: kind == GrpcKind::WebText,
            carry: Vec::new(),
        }
    }

    /// A data frame of the answer; may be empty in text mode when fewer
    /// than three bytes are waiting.
    pub fn data(&mut self, data: Bytes) -> Bytes {
        if !self.text {
            return data;
        }
        self.carry.extend_from_slice(&data);
        let whole = self.carry.len() / 3 * 3;
        let encoded = STANDARD.encode(&self.carry[..whole]);
        self.carry.drain(..whole);
        Bytes::from(encoded)
    }

    /// The trailers as the answer's last frame.
    pub fn trailers(&mut self, trailers: &HeaderMap) -> Bytes {
        let mut block = BytesMut::new();
        for (name, value) in trailers {
            block.put_slice(name.as_str().as_bytes());
            block.put_slice(b": ");
            block.put_slice(value.as_bytes());
            block.put_slice(b"\r\n");
        }
        let mut frame = BytesMut::with_capacity(5 + block.len());
        frame.put_u8(TRAILER_FLAG);
        frame.put_u32(block.len() as u32);
        frame.put_slice(&block);
        if !self.text {
            return frame.freeze();
        }
        self.carry.extend_from_slice(&frame);
        self.finish().unwrap_or_default()
    }

    /// What is still waiting at the end of the answer (text mode), padded.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.carry.is_empty() {
            return None;
        }
        let encoded = STANDARD.encode(&self.carry);
        self.carry.clear();
        Some(Bytes::from(encoded))
    }

    /// True when bytes are waiting to be encoded.
    pub fn pending(&self) -> bool {
        !self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_becomes_grpc() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web-text+proto"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        request_head(&mut h, GrpcKind::WebText);
        assert_eq!(h[CONTENT_TYPE], "application/grpc+proto");
        assert_eq!(h[TE], "trailers");
        assert!(h.get(CONTENT_LENGTH).is_none());

        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        request_head(&mut h, GrpcKind::Web);
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[CONTENT_LENGTH], "12", "binary keeps its length");
    }

    #[test]
    fn response_head_becomes_grpc_web_only_for_grpc_answers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(response_head(&mut h, GrpcKind::Web));
        assert_eq!(h[CONTENT_TYPE], "application/grpc-web+proto");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        assert!(response_head(&mut h, GrpcKind::WebText));
        assert_eq!(h[CONTENT_TYPE], "application/grpc-web-text");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert!(!response_head(&mut h, GrpcKind::Web));
        assert_eq!(h[CONTENT_TYPE], "text/html");
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let mut e = WebEncoder::new(GrpcKind::Web);
        let frame = e.trailers(&t);
        let block = b"grpc-status: 0\r\ngrpc-message: ok\r\n";
        assert_eq!(frame[0], 0x80);
        assert_eq!(&frame[1..5], (block.len() as u32).to_be_bytes());
        assert_eq!(&frame[5..], block);
    }

    #[test]
    fn text_mode_is_one_base64_text_whatever_the_chunking() {
        let mut e = WebEncoder::new(GrpcKind::WebText);
        let mut out = Vec::new();
        for chunk in [&b"a"[..], b"bcd", b"", b"efghij"] {
            out.extend_from_slice(&e.data(Bytes::copy_from_slice(chunk)));
        }
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        out.extend_from_slice(&e.trailers(&t));
        assert!(!e.pending());
        let decoded = STANDARD.decode(&out).expect("one valid base64 text");
        assert_eq!(&decoded[..10], b"abcdefghij");
        assert_eq!(decoded[10], 0x80);
        assert_eq!(&decoded[15..], b"grpc-status: 0\r\n");
    }
}
