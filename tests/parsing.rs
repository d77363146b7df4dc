//! Request parsing that cannot be desynchronised: every HTTP/1.1 case of the
//! reliability guide (framing, chunked bodies, line syntax, request target,
//! connection management) sent as raw bytes, with the status weir answers,
//! whether it closes the connection, and what a recording upstream saw;
//! malformed HTTP/2 requests written as raw frames; HTTP/2 floods.
//!
//! Each table row names the RFC section it enforces and the layer that
//! rejects it: `Hyper` (hyper and httparse, before weir sees a request: an
//! empty 400), `Weir` (weir's first request phase: a problem document) or
//! `Forwarded` (accepted, and checked in the form the upstream got it).
//! docs/security.md summarises the table.

mod parsing_support;
mod support;

use std::time::Duration;

use parsing_support::*;
use support::*;

/// How long weir may take to answer a case and close the connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layer {
    /// hyper/httparse: the request never reaches weir's code.
    Hyper,
    /// weir's earliest request phase (`proxy::handle`, before routing).
    Weir,
    /// Found by hyper's chunked decoder while the body streams, after the
    /// head was forwarded: weir answers 400 and abandons the upstream
    /// request before its end.
    HyperBody,
    /// Accepted and forwarded in a normalised form.
    Forwarded,
}

/// What the upstream got, for checks on forwarded cases.
struct Seen<'a> {
    /// The bytes weir sent upstream for this case.
    upstream: &'a str,
    /// What weir answered.
    answer: &'a Exchange,
    rec: &'a Recorder,
    /// Requests the upstream parsed during this case.
    requests: usize,
}

enum Want {
    /// Rejected with this status before anything reaches the upstream;
    /// the connection is closed.
    Reject(u16),
    /// A body error found after the head was forwarded: the client gets
    /// this status, the connection is closed, and the upstream never gets a
    /// complete request (no last chunk).
    RejectBody(u16),
    /// Forwarded; the check looks at what the upstream saw.
    Forward(fn(&Seen)),
}

struct Case {
    id: &'static str,
    rfc: &'static str,
    layer: Layer,
    want: Want,
    raw: Vec<u8>,
}

fn case(id: &'static str, rfc: &'static str, layer: Layer, want: Want, raw: &[u8]) -> Case {
    Case {
        id,
        rfc,
        layer,
        want,
        raw: raw.to_vec(),
    }
}

/// The single request the upstream got carries `hello` as its body, framed
/// once.
fn body_hello(s: &Seen) {
    assert!(s.upstream.ends_with("hello") || s.upstream.contains("5\r\nhello\r\n0\r\n\r\n"));
    let head = s
        .upstream
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let framing =
        head.matches("content-length:").count() + head.matches("transfer-encoding:").count();
    assert_eq!(framing, 1, "one framing header upstream: {head}");
    assert_eq!(s.answer.status(), Some(200));
}

fn one_request(s: &Seen) {
    assert_eq!(s.answer.statuses(), vec![200], "{:?}", s.answer);
    assert_eq!(s.requests, 1, "{}", s.upstream);
}

fn head_lower(s: &Seen) -> String {
    s.upstream
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase()
}

fn corpus() -> Vec<Case> {
    use Layer::*;
    use Want::*;
    let long_ext = {
        let mut v =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=".to_vec();
        v.extend(std::iter::repeat_n(b'a', 20 * 1024));
        v.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        v
    };
    let smuggle_get = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nConnection: close\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut pipelined = Vec::new();
    for _ in 0..9 {
        pipelined.extend_from_slice(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    pipelined.extend_from_slice(b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let mut cases = vec![
        // 3.1 Message framing.
        case("F1 CL then TE", "RFC 9112 §6.1, §6.3(3)", Forwarded, Forward(te_wins_and_closes),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("F1 TE then CL", "RFC 9112 §6.1, §6.3(3)", Forwarded, Forward(te_wins_and_closes),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("F2 TE with tab", "RFC 9112 §6.1", Forwarded, Forward(te_wins_and_closes),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
        case("F2 CL with space before colon", "RFC 9112 §5.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        case("F3 two different CL", "RFC 9112 §6.3(5)", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        case("F3 CL list differing", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        case("F4 two identical CL", "RFC 9110 §8.6", Forwarded, Forward(body_hello),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
        case("F4 CL list identical", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
        case("F5 CL +5", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
        case("F5 CL -1", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nhello"),
        case("F5 CL 0x5", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
        case("F5 CL 5.0", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\nhello"),
        case("F5 CL 1e2", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e2\r\n\r\nhello"),
        case("F5 CL 5 5", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\nhello"),
        case("F5 CL empty", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nhello"),
        case("F5 CL with VT", "RFC 9110 §8.6", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\x0b\r\n\r\nhello"),
        case("F6 CL overflow", "RFC 9112 §6.3(5)", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\nhello"),
        case("F8 TE gzip", "RFC 9112 §6.3(4)", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
        case("F8 TE chunked, gzip", "RFC 9112 §6.3(4)", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        case("F9 TE xchunked", "RFC 9112 §6.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        case("F9 TE chunked;x=y", "RFC 9112 §6.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=y\r\n\r\n0\r\n\r\n"),
        case("F9 TE identity", "RFC 9112 §6.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello"),
        case("F9 TE chunked with VT", "RFC 9112 §6.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n"),
        case("F9 TE with U+017F", "RFC 9112 §6.1", Hyper, Reject(400),
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun\u{17f}ed\r\n\r\n0\r\n\r\n".as_bytes()),
        case("F9 TE gzip, chunked", "RFC 9112 §6.1 (501 SHOULD)", Weir, Reject(501),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        case("F10 TE chunked, chunked", "RFC 9112 §6.1", Weir, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        case("F10 TE twice", "RFC 9112 §6.1", Weir, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        case("F11 TE CHUNKED", "RFC 9112 §7", Forwarded, Forward(body_hello),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        case("F12 TE in HTTP/1.0", "RFC 9112 §6.1", Hyper, Reject(400),
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        case("F13 HTTP/1.0 body without CL", "RFC 9112 §6.3(6)", Forwarded, Forward(one_request_10),
            b"POST / HTTP/1.0\r\nHost: a\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("F14 TE name with trailing SP", "RFC 9112 §5.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"),
        case("F14 TE name folded", "RFC 9112 §5.2", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"),
        case("F14 Transfer_Encoding", "RFC 9110 §5.1", Weir, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"),
        case("F14 Content_Length", "RFC 9110 §5.1", Weir, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        case("F14 TE name with \\x01", "RFC 9110 §5.1", Hyper, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\n\x01Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"),
        case("F15 GET with a body", "RFC 9112 §6.3", Forwarded, Forward(one_request), smuggle_get),
        // 3.2 Chunked body.
        case("C1 chunk size g", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\ng\r\nhello\r\n0\r\n\r\n"),
        case("C1 chunk size 0x5", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
        case("C1 chunk size +5", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
        case("C1 chunk size -5", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"),
        case("C1 chunk size with leading SP", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n"),
        case("C2 chunk size overflow", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        case("C3 bare LF in chunk extension", "RFC 9112 §7.1.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\nhello\r\n0\r\n\r\n"),
        case("C3 bare LF after chunk size", "RFC 9112 §2.2", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
        case("C4 bare CR in chunk line", "RFC 9112 §2.2", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n"),
        case("C5 chunk data too long", "RFC 9112 §7.1", HyperBody, RejectBody(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n"),
        case("C6 chunk extensions", "RFC 9112 §7.1.1", Forwarded, Forward(body_hello),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=b;c=\"q\"\r\nhello\r\n0\r\n\r\n"),
        Case { id: "C7 20 KiB chunk extension", rfc: "RFC 9112 §7.1.1", layer: HyperBody, want: RejectBody(400), raw: long_ext },
        case("C9 framing headers in trailers", "RFC 9110 §6.5.1", Forwarded, Forward(trailers_not_merged),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\nHost: evil\r\n\r\n"),
        // 3.3 Line syntax.
        case("L1 bare LF line ends", "RFC 9112 §2.2 (MAY accept)", Forwarded, Forward(crlf_only),
            b"GET / HTTP/1.1\nHost: a\nConnection: close\n\n"),
        case("L2 bare CR in a header", "RFC 9112 §2.2", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
        case("L2 bare CR in the request line", "RFC 9112 §2.2", Hyper, Reject(400),
            b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("L3 obs-fold", "RFC 9112 §5.2", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
        case("L4 SP before colon", "RFC 9112 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        case("L4 tab before colon", "RFC 9112 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
        case("L5 whitespace-led first header", "RFC 9112 §2.2", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\n X: a\r\nHost: a\r\n\r\n"),
        case("L6 empty name", "RFC 9110 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n"),
        case("L6 name with SP", "RFC 9110 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX Y: x\r\n\r\n"),
        case("L6 name with @", "RFC 9110 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX@: x\r\n\r\n"),
        case("L6 name with (", "RFC 9110 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX(: x\r\n\r\n"),
        case("L6 non-ASCII name", "RFC 9110 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX\xe9: x\r\n\r\n"),
        case("L6 name with \\x01", "RFC 9110 §5.1", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX\x01: x\r\n\r\n"),
        case("L7 NUL in a value", "RFC 9110 §5.5", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
        case("L8 \\x01 in a value", "RFC 9110 §5.5", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"),
        case("L8 VT in a value", "RFC 9110 §5.5", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0bb\r\n\r\n"),
        case("L8 DEL in a value", "RFC 9110 §5.5", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"),
        case("L9 obs-text in a value", "RFC 9110 §5.5", Forwarded, Forward(obs_text_kept),
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xe9\r\nConnection: close\r\n\r\n"),
        case("L10 line without a colon", "RFC 9112 §5", Hyper, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
        case("L11 leading CRLFs", "RFC 9112 §2.2", Forwarded, Forward(one_request),
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        // 3.4 Request line and target.
        case("R1 two spaces", "RFC 9112 §3", Hyper, Reject(400),
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R1 tab separator", "RFC 9112 §3", Hyper, Reject(400),
            b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R1 trailing SP", "RFC 9112 §3", Hyper, Reject(400),
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n"),
        case("R2 SP in method", "RFC 9112 §3.1", Hyper, Reject(400),
            b"G ET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R2 NUL in method", "RFC 9112 §3.1", Hyper, Reject(400),
            b"GET\x00 / HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R2 unknown method token", "RFC 9110 §9.1", Forwarded, Forward(one_request),
            b"PURGE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        case("R3 HTTP/1.1x", "RFC 9112 §2.3", Hyper, Reject(400),
            b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n"),
        case("R3 http/1.1", "RFC 9112 §2.3", Hyper, Reject(400),
            b"GET / http/1.1\r\nHost: a\r\n\r\n"),
        case("R3 HTTP/1.10", "RFC 9112 §2.3", Hyper, Reject(400),
            b"GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
        case("R3 HTTP/2.0 on HTTP/1", "RFC 9112 §2.3", Hyper, Reject(400),
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        case("R3 HTTP/3.0", "RFC 9112 §2.3", Hyper, Reject(400),
            b"GET / HTTP/3.0\r\nHost: a\r\n\r\n"),
        case("R4 HTTP/0.9", "RFC 9112 §2.3", Hyper, Reject(400), b"GET /\r\n\r\n"),
        case("R6 target not starting with /", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R6 fragment in target", "RFC 9112 §3.2", Forwarded, Forward(fragment_dropped),
            b"GET /a#b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        case("R6 quote in target", "RFC 3986 §2", Weir, Reject(400),
            b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R6 < in target", "RFC 3986 §2", Hyper, Reject(400),
            b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R6 CTL in target", "RFC 9112 §3.2", Hyper, Reject(400),
            b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R7 absolute-form against Host", "RFC 9112 §3.2.2", Forwarded, Forward(uri_authority_wins),
            b"GET http://uri-host/abs HTTP/1.1\r\nHost: header-host\r\nConnection: close\r\n\r\n"),
        case("R7 absolute-form with userinfo", "RFC 9110 §4.2.4", Weir, Reject(400),
            b"GET http://user@uri-host/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R8 CONNECT", "RFC 9112 §3.2.3", Weir, Reject(501),
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        case("R8 asterisk-form with GET", "RFC 9112 §3.2.4", Weir, Reject(400),
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        case("R9 missing Host", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\n\r\n"),
        case("R9 two Host", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        case("R9 empty Host", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n"),
        case("R9 Host with SP", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        case("R9 Host with /", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        case("R9 Host with userinfo", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"),
        case("R9 Host with a non-numeric port", "RFC 9112 §3.2", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a:port\r\n\r\n"),
        // 3.5 Connection management.
        case("H1 Connection names a header", "RFC 9110 §7.6.1", Forwarded, Forward(nominated_removed),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\n\r\n"),
        case("H2 Connection names Content-Length", "RFC 9110 §7.6.1", Weir, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"),
        case("H2 Connection names Transfer-Encoding", "RFC 9110 §7.6.1", Weir, Reject(400),
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        case("H2 Connection names Host", "RFC 9110 §7.6.1", Weir, Reject(400),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n"),
        case("H3 hop-by-hop headers", "RFC 9110 §7.6.1", Forwarded, Forward(hop_by_hop_removed),
            b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: foo\r\nConnection: close\r\n\r\n"),
        case("H5 h2c upgrade", "RFC 9113 §3.1 (h2c smuggling)", Forwarded, Forward(hop_by_hop_removed),
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n"),
        Case { id: "H6 ten pipelined requests", rfc: "RFC 9112 §9.3.2", layer: Forwarded, want: Forward(ten_in_order), raw: pipelined },
    ];
    cases.shrink_to_fit();
    cases
}

/// hyper drops `Content-Length` when `Transfer-Encoding: chunked` is
/// present, reads the body as chunked and closes the connection after the
/// answer (RFC 9112 §6.1 allows it); weir never sees the pair (known gap
/// G1 in docs/security.md).
fn te_wins_and_closes(s: &Seen) {
    one_request(s);
    let head = head_lower(s);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(s.answer.closed);
    assert!(!s.upstream.contains("/smuggled"), "{}", s.upstream);
}

/// http::Uri drops the fragment while parsing; weir forwards the path
/// without it (known gap G3).
fn fragment_dropped(s: &Seen) {
    one_request(s);
    assert_eq!(s.rec.upstream.last_request().uri.path(), "/a");
    assert!(!s.upstream.contains('#'), "{}", s.upstream);
}

fn one_request_10(s: &Seen) {
    one_request(s);
    assert!(!s.upstream.contains("/smuggled"), "{}", s.upstream);
}

fn trailers_not_merged(s: &Seen) {
    body_hello(s);
    let head = head_lower(s);
    assert!(!head.contains("content-length: 50"), "{head}");
    assert!(!head.contains("evil"), "{head}");
    let recorded = s.rec.upstream.last_request();
    assert_eq!(recorded.headers.get("host").unwrap(), "a");
}

fn crlf_only(s: &Seen) {
    one_request(s);
    let head = s.upstream.split("\r\n\r\n").next().unwrap();
    assert_eq!(
        head.matches('\n').count(),
        head.matches("\r\n").count(),
        "{head:?}"
    );
}

fn obs_text_kept(s: &Seen) {
    one_request(s);
    assert!(s.upstream.contains("x-obs: caf\u{fffd}"), "{}", s.upstream);
}

fn uri_authority_wins(s: &Seen) {
    one_request(s);
    let recorded = s.rec.upstream.last_request();
    assert_eq!(recorded.headers.get("host").unwrap(), "uri-host");
    assert_eq!(recorded.uri.path(), "/abs");
    assert!(!head_lower(s).contains("header-host"), "{}", s.upstream);
}

fn nominated_removed(s: &Seen) {
    one_request(s);
    assert!(!head_lower(s).contains("x-foo"), "{}", s.upstream);
}

fn hop_by_hop_removed(s: &Seen) {
    one_request(s);
    let head = head_lower(s);
    for name in [
        "keep-alive:",
        "proxy-connection:",
        "te:",
        "upgrade:",
        "http2-settings:",
    ] {
        assert!(!head.contains(name), "{name} forwarded: {head}");
    }
}

fn ten_in_order(s: &Seen) {
    assert_eq!(s.answer.statuses(), vec![200; 10], "{:?}", s.answer);
    assert_eq!(s.upstream.matches("GET /p HTTP/1.1\r\n").count(), 10);
}

const CONFIG: &str = "listeners:
  - name: main
    address: 127.0.0.1:0
    protocols: [http1, h2c]
admin:
  address: 127.0.0.1:0
routes:
  - name: all
    upstream: up
upstreams:
  - name: up
    targets:
      - address: \"{up}\"
";

async fn start() -> (Recorder, TestGateway) {
    let rec = Recorder::start().await;
    let gw = TestGateway::start(&fill(CONFIG, &[("up", &rec.addr())])).await;
    (rec, gw)
}

/// Runs one case; returns a description of what went wrong, if anything.
async fn run_case(gw: &TestGateway, rec: &Recorder, c: &Case) -> Option<String> {
    let before = rec.len();
    let conns = rec.connections();
    let requests = rec.upstream.request_count();
    let answer = exchange(gw.addr(), &c.raw, CLOSE_WITHIN).await;
    let upstream_bytes = rec.since(before);
    let upstream = String::from_utf8_lossy(&upstream_bytes);
    let head = answer.head();
    let problem = head.contains("content-type: application/problem+json");
    let mut wrong = Vec::new();
    match &c.want {
        Want::Reject(status) | Want::RejectBody(status) => {
            if answer.status() != Some(*status) {
                wrong.push(format!("status {:?}, want {status}", answer.status()));
            }
            if !answer.closed {
                wrong.push("connection left open".to_owned());
            }
            match c.layer {
                Layer::Weir if !problem => wrong.push("no problem document".to_owned()),
                Layer::Hyper if problem => wrong.push("weir answered, not hyper".to_owned()),
                _ => {}
            }
            if answer.statuses().len() > 1 {
                wrong.push(format!("more than one response: {:?}", answer.statuses()));
            }
        }
        Want::Forward(_) => {}
    }
    match &c.want {
        Want::Reject(_) => {
            if !upstream_bytes.is_empty() || rec.connections() != conns {
                wrong.push(format!("upstream saw {upstream:?}"));
            }
        }
        Want::RejectBody(_) => {
            // The head was streamed on; the request must end unfinished.
            if upstream.ends_with("0\r\n\r\n") || upstream.contains("hello") {
                wrong.push(format!("upstream got a complete body: {upstream:?}"));
            }
        }
        Want::Forward(check) => {
            if !answer.closed {
                wrong.push("connection left open after Connection: close".to_owned());
            }
            let seen = Seen {
                upstream: &upstream,
                answer: &answer,
                rec,
                requests: rec.upstream.request_count() - requests,
            };
            let outcome = std::panic::AssertUnwindSafe(|| check(&seen));
            if let Err(e) = std::panic::catch_unwind(outcome) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                wrong.push(msg);
            }
        }
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "{} [{}, {:?}]: {}\n  answer: {:?}",
            c.id,
            c.rfc,
            c.layer,
            wrong.join("; "),
            String::from_utf8_lossy(&answer.bytes)
        )
    })
}

#[tokio::test]
async fn http1_corpus() {
    let (rec, gw) = start().await;
    let cases = corpus();
    let mut failures = Vec::new();
    for c in &cases {
        if let Some(f) = run_case(&gw, &rec, c).await {
            failures.push(f);
        }
    }
    // Whatever happened, no smuggled request ever reached the upstream.
    for r in rec.upstream.requests() {
        assert_ne!(r.uri.path(), "/smuggled", "a smuggled request got through");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// HTTP/2 malformed requests (RFC 9113 §8.1.1, §8.2, §8.3), written as raw
// frames: the `h2` client refuses to send most of them.

/// What happened to a stream.
#[derive(Debug, PartialEq)]
enum StreamEnd {
    Reset(u32),
    Status(u16),
}

/// The outcome of one raw HTTP/2 exchange.
#[derive(Debug, Default)]
struct H2Outcome {
    bad: Option<StreamEnd>,
    good: Option<StreamEnd>,
    goaway: Option<u32>,
}

const PROTOCOL_ERROR: u32 = 1;

/// The request fields of a well-formed GET to `path`.
fn fields(path: &'static str) -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"a"),
    ]
}

/// `fields("/bad")` with `extra` appended.
fn bad_with(extra: &[(&'static [u8], &'static [u8])]) -> Vec<(&'static [u8], &'static [u8])> {
    let mut f = fields("/bad");
    f.extend_from_slice(extra);
    f
}

fn headers_frame(stream: u32, f: &[(&[u8], &[u8])], end_stream: bool) -> Vec<u8> {
    let flags = frame::END_HEADERS | if end_stream { frame::END_STREAM } else { 0 };
    h2_frame(frame::HEADERS, flags, stream, &hpack_block(f))
}

/// Stream 1 carries the case, then a well-formed request on stream 3 shows
/// whether the connection still serves others.
async fn h2_exchange(addr: std::net::SocketAddr, stream1: &[u8]) -> H2Outcome {
    let sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = sock.into_split();
    let mut out = h2_start();
    out.extend_from_slice(stream1);
    out.extend(headers_frame(3, &fields("/good"), true));
    use tokio::io::AsyncWriteExt;
    let _ = wr.write_all(&out).await;
    let deadline = std::time::Instant::now() + CLOSE_WITHIN;
    let mut reader = FrameReader::new();
    let mut outcome = H2Outcome::default();
    while let Some(f) = reader.next(&mut rd, deadline).await {
        // Frames of the connection (stream 0) fill no slot.
        let mut unused = None;
        let slot = match f.stream {
            1 => &mut outcome.bad,
            3 => &mut outcome.good,
            _ => &mut unused,
        };
        match f.kind {
            frame::SETTINGS if f.flags & frame::ACK == 0 => {
                let _ = wr
                    .write_all(&h2_frame(frame::SETTINGS, frame::ACK, 0, &[]))
                    .await;
            }
            frame::RST_STREAM if slot.is_none() => {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                *slot = Some(StreamEnd::Reset(code));
            }
            frame::HEADERS if slot.is_none() => {
                *slot = h2_status(&f.payload).map(StreamEnd::Status);
            }
            frame::GOAWAY => {
                outcome.goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
                break;
            }
            _ => {}
        }
        if outcome.bad.is_some() && outcome.good.is_some() {
            break;
        }
    }
    outcome
}

enum H2Want {
    /// Stream 1 is reset with PROTOCOL_ERROR or answered 400; nothing of it
    /// reaches the upstream; stream 3 is served.
    Reject,
    /// As `Reject`, found while the body streams: the upstream may have the
    /// head, never the whole body.
    RejectBody,
    /// The connection is closed with GOAWAY(PROTOCOL_ERROR) (a connection
    /// error in RFC 9113); nothing of stream 1 reaches the upstream.
    Goaway,
    /// Forwarded (stream 1 answered 200).
    Forward,
}

struct H2Case {
    id: &'static str,
    rfc: &'static str,
    layer: Layer,
    want: H2Want,
    frames: Vec<u8>,
}

fn h2_case(
    id: &'static str,
    rfc: &'static str,
    layer: Layer,
    want: H2Want,
    f: &[(&'static [u8], &'static [u8])],
) -> H2Case {
    H2Case {
        id,
        rfc,
        layer,
        want,
        frames: headers_frame(1, f, true),
    }
}

fn h2_corpus() -> Vec<H2Case> {
    use H2Want::*;
    use Layer::*;
    let with_body = |f: &[(&'static [u8], &'static [u8])], body: &[u8]| {
        let mut v = headers_frame(1, f, false);
        v.extend(h2_frame(frame::DATA, frame::END_STREAM, 1, body));
        v
    };
    let no = |name: &'static [u8]| -> Vec<(&'static [u8], &'static [u8])> {
        fields("/bad")
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect()
    };
    let mut trailer_pseudo = headers_frame(1, &fields("/bad"), false);
    trailer_pseudo.extend(h2_frame(frame::DATA, 0, 1, b"hello"));
    trailer_pseudo.extend(headers_frame(1, &[(b":path", b"/x")], true));
    let mut after_end = headers_frame(1, &fields("/bad"), true);
    after_end.extend(headers_frame(1, &[(b"x-late", b"1")], true));
    vec![
        h2_case(
            "connection",
            "RFC 9113 §8.2.2",
            Hyper,
            Reject,
            &bad_with(&[(b"connection", b"keep-alive")]),
        ),
        h2_case(
            "transfer-encoding",
            "RFC 9113 §8.2.2",
            Hyper,
            Reject,
            &bad_with(&[(b"transfer-encoding", b"chunked")]),
        ),
        h2_case(
            "keep-alive",
            "RFC 9113 §8.2.2",
            Hyper,
            Reject,
            &bad_with(&[(b"keep-alive", b"5")]),
        ),
        h2_case(
            "proxy-connection",
            "RFC 9113 §8.2.2",
            Hyper,
            Reject,
            &bad_with(&[(b"proxy-connection", b"x")]),
        ),
        h2_case(
            "upgrade",
            "RFC 9113 §8.2.2",
            Hyper,
            Reject,
            &bad_with(&[(b"upgrade", b"h2c")]),
        ),
        h2_case(
            "te: gzip",
            "RFC 9113 §8.2.2",
            Hyper,
            Reject,
            &bad_with(&[(b"te", b"gzip")]),
        ),
        h2_case(
            "te: trailers",
            "RFC 9113 §8.2.2",
            Forwarded,
            Forward,
            &bad_with(&[(b"te", b"trailers")]),
        ),
        h2_case(
            "uppercase name",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"X-Foo", b"1")]),
        ),
        h2_case(
            "colon in a name",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x:y", b"1")]),
        ),
        h2_case(
            "SP in a name",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x y", b"1")]),
        ),
        h2_case(
            "CTL in a name",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x\x01", b"1")]),
        ),
        h2_case(
            "0x7f in a name",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x\x7f", b"1")]),
        ),
        h2_case(
            "0xff in a name",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x\xff", b"1")]),
        ),
        h2_case(
            "NUL in a value",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x", b"a\x00b")]),
        ),
        h2_case(
            "CR in a value",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x", b"a\rb")]),
        ),
        h2_case(
            "LF in a value",
            "RFC 9113 §8.2.1",
            Hyper,
            Goaway,
            &bad_with(&[(b"x", b"a\nb")]),
        ),
        h2_case(
            "leading SP in a value",
            "RFC 9113 §8.2.1",
            Weir,
            Reject,
            &bad_with(&[(b"x", b" a")]),
        ),
        h2_case(
            "trailing HTAB in a value",
            "RFC 9113 §8.2.1",
            Weir,
            Reject,
            &bad_with(&[(b"x", b"a\t")]),
        ),
        h2_case(
            "pseudo-header after a regular one",
            "RFC 9113 §8.3",
            Hyper,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b"x", b"1"),
                (b":path", b"/bad"),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            "duplicate :path",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &bad_with(&[(b":path", b"/bad2")]),
        ),
        h2_case(
            "unknown pseudo-header",
            "RFC 9113 §8.3",
            Hyper,
            Goaway,
            &bad_with(&[(b":foo", b"1")]),
        ),
        h2_case(
            ":status in a request",
            "RFC 9113 §8.3",
            Hyper,
            Reject,
            &bad_with(&[(b":status", b"200")]),
        ),
        h2_case(
            "no :method",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &no(b":method"),
        ),
        h2_case(
            "no :scheme",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &no(b":scheme"),
        ),
        h2_case("no :path", "RFC 9113 §8.3.1", Hyper, Reject, &no(b":path")),
        h2_case(
            "empty :path",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b""),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            ":path without /",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"bad"),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            ":path * with GET",
            "RFC 9113 §8.3.1",
            Weir,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"*"),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            ":method with SP",
            "RFC 9113 §8.3.1",
            Hyper,
            Goaway,
            &[
                (b":method", b"GE T"),
                (b":scheme", b"http"),
                (b":path", b"/bad"),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            ":path with SP",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"/bad x"),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            ":path with CR LF",
            "RFC 9113 §8.3.1",
            Hyper,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"/bad\r\nx: y"),
                (b":authority", b"a"),
            ],
        ),
        h2_case(
            "host differs from :authority",
            "RFC 9113 §8.3.1",
            Weir,
            Reject,
            &bad_with(&[(b"host", b"b")]),
        ),
        h2_case(
            ":authority with userinfo",
            "RFC 9113 §8.3.1",
            Weir,
            Reject,
            &[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"/bad"),
                (b":authority", b"u@a"),
            ],
        ),
        H2Case {
            id: "content-length above the DATA",
            rfc: "RFC 9113 §8.1.1",
            layer: HyperBody,
            want: RejectBody,
            frames: with_body(&bad_with(&[(b"content-length", b"10")]), b"hello"),
        },
        H2Case {
            id: "content-length below the DATA",
            rfc: "RFC 9113 §8.1.1",
            layer: HyperBody,
            want: RejectBody,
            frames: with_body(&bad_with(&[(b"content-length", b"2")]), b"hello"),
        },
        h2_case(
            "two different content-length",
            "RFC 9113 §8.1.1",
            Hyper,
            Reject,
            &bad_with(&[(b"content-length", b"1"), (b"content-length", b"2")]),
        ),
        // The h2 crate drops pseudo-headers in trailers instead of resetting
        // the stream; they never reach weir or the upstream (known gap G5).
        H2Case {
            id: "pseudo-header in trailers",
            rfc: "RFC 9113 §8.1",
            layer: Forwarded,
            want: Forward,
            frames: trailer_pseudo,
        },
        H2Case {
            id: "HEADERS after END_STREAM",
            rfc: "RFC 9113 §5.1",
            layer: Hyper,
            want: Goaway,
            frames: after_end,
        },
    ]
}

async fn run_h2_case(gw: &TestGateway, rec: &Recorder, c: &H2Case) -> Option<String> {
    let before = rec.len();
    let o = h2_exchange(gw.addr(), &c.frames).await;
    // The upstream answer to /good must be in before the check.
    let upstream = String::from_utf8_lossy(&rec.since(before)).into_owned();
    let mut wrong = Vec::new();
    let rejected = matches!(
        o.bad,
        Some(StreamEnd::Reset(PROTOCOL_ERROR)) | Some(StreamEnd::Status(400))
    );
    match c.want {
        H2Want::Reject | H2Want::RejectBody if !rejected => {
            wrong.push(format!("stream 1 ended {:?}", o.bad))
        }
        H2Want::Goaway if o.goaway.is_none() => wrong.push("no GOAWAY".to_owned()),
        H2Want::Forward if o.bad != Some(StreamEnd::Status(200)) => {
            wrong.push(format!("stream 1 ended {:?}", o.bad))
        }
        _ => {}
    }
    if !matches!(c.want, H2Want::Goaway) {
        if o.good != Some(StreamEnd::Status(200)) {
            wrong.push(format!("stream 3 ended {:?}", o.good));
        }
        if o.goaway.is_some() {
            wrong.push(format!("GOAWAY {:?}", o.goaway));
        }
    }
    let weir_answered = o.bad == Some(StreamEnd::Status(400));
    match (c.layer, &c.want) {
        (Layer::Weir, H2Want::Reject) if !weir_answered => {
            wrong.push("not answered by weir".to_owned())
        }
        (Layer::Hyper, _) if weir_answered => wrong.push("answered by weir, not h2".to_owned()),
        _ => {}
    }
    match c.want {
        H2Want::Reject | H2Want::Goaway if upstream.contains("/bad") => {
            wrong.push(format!("upstream saw {upstream:?}"))
        }
        H2Want::RejectBody if upstream.contains("hello") => {
            wrong.push(format!("upstream got the body: {upstream:?}"))
        }
        H2Want::Forward if upstream.contains(":path") => {
            wrong.push(format!("a pseudo-header went upstream: {upstream:?}"))
        }
        _ => {}
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "h2 {} [{}, {:?}]: {}",
            c.id,
            c.rfc,
            c.layer,
            wrong.join("; ")
        )
    })
}

#[tokio::test]
async fn h2_malformed_requests() {
    let (rec, gw) = start().await;
    let cases = h2_corpus();
    let mut failures = Vec::new();
    for c in &cases {
        if let Some(f) = run_h2_case(&gw, &rec, c).await {
            failures.push(f);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The same cases through the `h2` crate as a client, where it agrees to
/// send them: it refuses connection-specific headers itself, and sends a
/// body that disagrees with its `content-length`, which weir (h2 server
/// side) resets without the upstream ever getting the whole body; the
/// connection keeps serving other streams.
#[tokio::test]
async fn h2_client_cases() {
    let (rec, gw) = start().await;
    let sock = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut client, conn) = within(IO_TIMEOUT, "h2 handshake", h2::client::handshake(sock))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = |path: &str| {
        http::Request::builder()
            .uri(format!("http://a{path}"))
            .body(())
            .unwrap()
    };

    // Refused by the client library: it never goes on the wire.
    let mut with_conn = request("/bad");
    with_conn
        .headers_mut()
        .insert("connection", http::HeaderValue::from_static("keep-alive"));
    assert!(client.send_request(with_conn, true).is_err());

    // A body longer than its content-length.
    let before = rec.len();
    let mut req = request("/bad");
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert("content-length", http::HeaderValue::from_static("2"));
    let mut client = within(IO_TIMEOUT, "ready", client.ready()).await.unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"hello"), true)
        .expect("the h2 client does not check content-length");
    match within(IO_TIMEOUT, "the reset", resp).await {
        Err(e) => {
            assert!(e.is_remote(), "{e}");
            assert_eq!(e.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{e}");
        }
        Ok(r) => assert_eq!(r.status(), 400),
    }

    // The connection still serves a well-formed request.
    let mut client = within(IO_TIMEOUT, "ready", client.ready()).await.unwrap();
    let (resp, _) = client.send_request(request("/good"), true).unwrap();
    let resp = within(IO_TIMEOUT, "the good response", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let upstream = String::from_utf8_lossy(&rec.since(before)).into_owned();
    assert!(!upstream.contains("hello"), "{upstream}");
}
