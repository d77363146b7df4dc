//! gRPC as the proxy sees it: which requests are gRPC or gRPC-Web (by
//! their content type), the status codes weir itself may end a call with,
//! and the pieces of a gRPC answer (`grpc-status`, the percent-encoded
//! `grpc-message`, the trailers). Which status a failure maps to is decided
//! in `error.rs`; this file owns the wire format.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `grpc-status`.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The gRPC status codes weir uses (the gRPC specification's numbering).
pub mod code {
    /// The caller cancelled the call.
    pub const CANCELLED: u16 = 1;
    /// An error no other code describes.
    pub const UNKNOWN: u16 = 2;
    /// The deadline passed before the call finished.
    pub const DEADLINE_EXCEEDED: u16 = 4;
    /// The caller may not make this call.
    pub const PERMISSION_DENIED: u16 = 7;
    /// A quota ran out (a rate limit).
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    /// No such method here.
    pub const UNIMPLEMENTED: u16 = 12;
    /// An internal error (a malformed request).
    pub const INTERNAL: u16 = 13;
    /// The service cannot be reached now; the call may be retried.
    pub const UNAVAILABLE: u16 = 14;
    /// The caller is not authenticated.
    pub const UNAUTHENTICATED: u16 = 16;
}

/// The flavour of gRPC a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcKind {
    /// gRPC over HTTP/2 (`application/grpc`, `application/grpc+proto`...).
    Grpc,
    /// gRPC-Web, binary (`application/grpc-web`, `application/grpc-web+proto`).
    Web,
    /// gRPC-Web, base64 text (`application/grpc-web-text`...).
    WebText,
}

impl GrpcKind {
    /// The kind a `content-type` value names, if any.
    pub fn of(content_type: &[u8]) -> Option<GrpcKind> {
        const PREFIX: &[u8] = b"application/grpc";
        if content_type.len() < PREFIX.len()
            || !content_type[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        {
            return None;
        }
        let rest = &content_type[PREFIX.len()..];
        let starts = |p: &[u8]| rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p);
        let kind = if starts(b"-web-text") {
            (GrpcKind::WebText, &rest[9..])
        } else if starts(b"-web") {
            (GrpcKind::Web, &rest[4..])
        } else {
            (GrpcKind::Grpc, rest)
        };
        // `application/grpc` itself, a `+format` or parameters; not
        // `application/grpcx`.
        match kind.1.first() {
            None | Some(b'+' | b';' | b' ') => Some(kind.0),
            _ => None,
        }
    }

    /// True for the gRPC-Web kinds.
    pub fn is_web(self) -> bool {
        self != GrpcKind::Grpc
    }

    /// The `content-type` of an answer weir writes itself.
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            GrpcKind::Grpc => "application/grpc",
            GrpcKind::Web => "application/grpc-web+proto",
            GrpcKind::WebText => "application/grpc-web-text+proto",
        })
    }
}

/// The request's gRPC kind, from its `content-type`.
pub fn kind(headers: &HeaderMap) -> Option<GrpcKind> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| GrpcKind::of(v.as_bytes()))
}

/// The `grpc-status` in `headers`, if there is a valid one.
pub fn status(headers: &HeaderMap) -> Option<u16> {
    let v = headers.get(&GRPC_STATUS)?.as_bytes();
    if v.is_empty() || v.len() > 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter()
        .try_fold(0u16, |n, &d| Some(n * 10 + u16::from(d - b'0')))
}

/// `grpc-status` and `grpc-message` for a call weir ends itself.
pub fn status_headers(headers: &mut HeaderMap, status: u16, message: &str) {
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(status));
    if !message.is_empty() {
        headers.insert(GRPC_MESSAGE.clone(), encode_message(message));
    }
}

/// `message` percent-encoded as `grpc-message` requires: UTF-8 bytes
/// outside printable ASCII, and `%` itself, become `%XX`.
pub fn encode_message(message: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    // Only printable ASCII is left, always a valid value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_told_apart() {
        let of = |s: &str| GrpcKind::of(s.as_bytes());
        assert_eq!(of("application/grpc"), Some(GrpcKind::Grpc));
        assert_eq!(of("application/grpc+proto"), Some(GrpcKind::Grpc));
        assert_eq!(of("Application/GRPC; charset=utf-8"), Some(GrpcKind::Grpc));
        assert_eq!(of("application/grpc-web"), Some(GrpcKind::Web));
        assert_eq!(of("application/grpc-web+proto"), Some(GrpcKind::Web));
        assert_eq!(of("application/grpc-web-text"), Some(GrpcKind::WebText));
        assert_eq!(
            of("application/grpc-web-text+proto"),
            Some(GrpcKind::WebText)
        );
        assert_eq!(of("application/grpcx"), None);
        assert_eq!(of("application/grpc-webx"), None);
        assert_eq!(of("application/json"), None);
        assert_eq!(of("application/grp"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("plain text: ok"), "plain text: ok");
        assert_eq!(encode_message("100% sure"), "100%25 sure");
        assert_eq!(encode_message("line\nbreak"), "line%0Abreak");
        assert_eq!(encode_message("café"), "caf%C3%A9");
    }

    #[test]
    fn statuses_are_read_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert(&GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(status(&h), Some(14));
        h.insert(&GRPC_STATUS, HeaderValue::from_static("1x"));
        assert_eq!(status(&h), None);
    }
}
