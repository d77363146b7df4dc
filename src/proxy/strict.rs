//! Request-head strictness: the checks weir adds on top of hyper's parser so
//! that no request whose framing, target or authority another HTTP
//! implementation could read differently is ever forwarded (RFC 9110,
//! RFC 9112; the case numbers are those of the parsing corpus in
//! `tests/parsing.rs`). They run in the first request phase, before
//! routing. A plain HTTP/1.1 request (no `Transfer-Encoding`, one
//! `Content-Length` or none, no `Connection` list) costs the walk over its
//! target's bytes and over the Host value, nothing else: the header names
//! were already walked once by `forward::scan`, whose mask says which checks
//! apply. HTTP/2 requests also have the ends of their values looked at.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Version};

use super::error::ProxyError;
use super::forward::{
    CONNECTION_PRESENT, CONTENT_LENGTH_PRESENT, LOOKALIKE_PRESENT, TRANSFER_ENCODING_PRESENT,
};

/// Checks the framing headers `scan` found (`mask`) and the request target.
pub(super) fn check(parts: &Parts, mask: u16) -> Result<(), ProxyError> {
    check_target(parts)?;
    if parts.version == Version::HTTP_2 {
        check_h2_values(parts)?;
    }
    if mask
        & (CONNECTION_PRESENT
            | CONTENT_LENGTH_PRESENT
            | TRANSFER_ENCODING_PRESENT
            | LOOKALIKE_PRESENT)
        == 0
    {
        return Ok(());
    }
    if mask & LOOKALIKE_PRESENT != 0 {
        // `Transfer_Encoding` / `Content_Length`: some servers read these
        // as the framing header (F14).
        return Err(ProxyError::bad_request(
            "a framing header name written with an underscore",
        ));
    }
    let te = mask & TRANSFER_ENCODING_PRESENT != 0;
    if te && mask & CONTENT_LENGTH_PRESENT != 0 {
        // F1/F2: the classic request-smuggling pair (RFC 9112 §6.1).
        return Err(ProxyError::bad_request(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if te {
        check_transfer_encoding(parts)?;
    }
    if mask & CONTENT_LENGTH_PRESENT != 0 {
        // hyper already refused differing values; several (even equal)
        // lines or a list are refused too (F4, RFC 9110 §8.6 allows it) so
        // that a single value is all a target can ever see.
        let mut values = parts.headers.get_all(header::CONTENT_LENGTH).iter();
        let first = values.next();
        if values.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b',')) {
            return Err(ProxyError::bad_request("more than one Content-Length"));
        }
    }
    if mask & CONNECTION_PRESENT != 0 {
        check_connection(parts)?;
    }
    Ok(())
}

/// HTTP/2 carries values verbatim: the h2 crate refuses NUL, CR and LF but
/// not the leading or trailing whitespace RFC 9113 §8.2.1 also makes
/// malformed (an HTTP/1.1 parser strips it, so such a value would read
/// differently on either side of weir). Only the ends of each value are
/// looked at.
fn check_h2_values(parts: &Parts) -> Result<(), ProxyError> {
    let padded = parts.headers.values().any(|v| {
        let v = v.as_bytes();
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    });
    if padded {
        return Err(ProxyError::bad_request(
            "a header value starts or ends with whitespace",
        ));
    }
    Ok(())
}

/// hyper accepts any list whose last coding is `chunked`; weir forwards
/// exactly one `chunked` and nothing else (F9, F10).
fn check_transfer_encoding(parts: &Parts) -> Result<(), ProxyError> {
    let mut chunked = 0;
    for value in parts.headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else {
                return Err(ProxyError::not_implemented(
                    "transfer codings other than chunked are not supported",
                ));
            }
        }
    }
    if chunked != 1 {
        return Err(ProxyError::bad_request("chunked applied more than once"));
    }
    Ok(())
}

/// `Connection` may name hop-by-hop headers, but not the ones that frame
/// the message or say where it goes: removing those would change the
/// request the target reads (H2, RFC 9110 §7.6.1).
fn check_connection(parts: &Parts) -> Result<(), ProxyError> {
    for value in parts.headers.get_all(header::CONNECTION) {
        for name in value.as_bytes().split(|b| *b == b',') {
            let name = name.trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"host")
            {
                return Err(ProxyError::bad_request(
                    "Connection names a framing or routing header",
                ));
            }
        }
    }
    Ok(())
}

/// The request target's form must suit the method (RFC 9112 §3.2), and its
/// bytes must be URI characters: httparse lets `"`, `<`, `>`, `\`, `^`,
/// `` ` ``, `{`, `|` and `}` through (R6).
fn check_target(parts: &Parts) -> Result<(), ProxyError> {
    let uri = &parts.uri;
    if uri.scheme().is_none() && uri.authority().is_some() && parts.method != Method::CONNECT {
        // Authority-form (`GET foo`) is CONNECT's alone.
        return Err(ProxyError::bad_request(
            "request target is not a path or an absolute URI",
        ));
    }
    let path = uri.path();
    if path == "*" && parts.method != Method::OPTIONS {
        return Err(ProxyError::bad_request("`*` is a target for OPTIONS only"));
    }
    let query = uri.query().unwrap_or("");
    if path.bytes().chain(query.bytes()).any(not_uri_char) {
        return Err(ProxyError::bad_request(
            "request target contains characters that are not allowed in a URI",
        ));
    }
    Ok(())
}

/// Visible ASCII characters RFC 3986 never allows unencoded.
fn not_uri_char(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
    )
}

/// The bytes a reg-name or IPv4 address may hold (RFC 3986 §3.2.2:
/// unreserved, percent, sub-delims), as a table: this runs on every request.
static HOST_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// A Host value (or absolute-form authority) must be `uri-host [ ":" port ]`
/// (RFC 9112 §3.2, RFC 3986 §3.2.2): no userinfo, spaces, slashes or other
/// delimiters, and a numeric port (R9, R7).
pub(super) fn valid_host(value: &HeaderValue, version: Version) -> bool {
    let v = value.as_bytes();
    if v.is_empty() {
        // HTTP/1.0 may send an empty Host; HTTP/1.1 may not (checked
        // by the caller with its own message).
        return version != Version::HTTP_11;
    }
    let (host, port) = if v[0] == b'[' {
        // IP-literal: hex digits, colons and dots inside the brackets.
        let Some(end) = v.iter().position(|b| *b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &v[end + 1..] {
            [] => return true,
            [b':', port @ ..] => return port.iter().all(u8::is_ascii_digit),
            _ => return false,
        }
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, &v[..0]),
        }
    };
    if host.is_empty() {
        return false;
    }
    let host_ok = host.iter().all(|b| HOST_CHARS[usize::from(*b)]);
    host_ok && port.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> bool {
        valid_host(&HeaderValue::from_str(s).unwrap(), Version::HTTP_11)
    }

    #[test]
    fn hosts() {
        for ok in [
            "a",
            "a:80",
            "a.b-c",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "a:",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "", "a b", "a/b", "user@a", "a:port", "[::1", "[zz]", "[::1]x", "a:1:2", "a?b", "a#b",
            ":80",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(valid_host(&HeaderValue::from_static(""), Version::HTTP_10));
    }
}
