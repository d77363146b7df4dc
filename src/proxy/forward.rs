//! Forwarding: turning the client's request into the request sent to a target
//! (hop-by-hop headers removed, `X-Forwarded-*` and `x-request-id` set, path
//! rewritten, route header edits applied), obtaining a connection, and sending
//! it. Also cleans the target's response headers before they go back.

use std::sync::Arc;
use std::time::Duration;

use super::deadline::{within, Deadline};
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http2;
use weir_config::UpstreamProtocol;

use super::conn::ConnCtx;
use super::error::ProxyError;
use super::grpc::GrpcKind;
use crate::router::CompiledRoute;
use crate::upstream::h1::{self, SendError};
use crate::upstream::{
    ConnectError, Connection, Http1Conn, OutboundBody, OutboundError, Target, UpstreamBody,
    UpstreamSet,
};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Bit set by `scan` for `TE`; the hop-by-hop bits (0-7) follow the order
/// of the names in `strip_present`.
const TE_PRESENT: u16 = 8;

/// Bit set by `scan` when an `X-Forwarded-For` header is present.
const XFF_PRESENT: u16 = 1 << 8;
/// Bit set by `scan` when a header weir derives from the client
/// certificate (`x-client-cert-*`) arrives from the client: forged.
const CLIENT_CERT_PRESENT: u16 = 1 << 9;
/// The prefix of every header weir derives from the client certificate.
const CLIENT_CERT_PREFIX: &str = "x-client-cert-";
static X_CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
/// Bit set by `scan` when an `Upgrade` header is present.
pub(super) const UPGRADE_PRESENT: u16 = 4;
/// Bit set by `scan` for `Connection`.
pub(super) const CONNECTION_PRESENT: u16 = 1;
/// Bit set by `scan` for `Transfer-Encoding`.
pub(super) const TRANSFER_ENCODING_PRESENT: u16 = 2;
/// Bit set by `scan` for `Content-Length` (read by `strict::check`).
pub(super) const CONTENT_LENGTH_PRESENT: u16 = 1 << 12;
/// Bit set by `scan` for a framing header name spelt with an underscore,
/// which some servers take for the real one.
pub(super) const LOOKALIKE_PRESENT: u16 = 1 << 13;
/// Two bits where `scan` records a gRPC content type (`grpc_kind`).
const GRPC_SHIFT: u16 = 10;
/// Bit set by `scan` for a deadline header (`grpc-timeout`,
/// `x-request-timeout`): without it the deadline lookups are skipped.
pub(super) const DEADLINE_PRESENT: u16 = 1 << 14;
/// Bit set by `scan` when the client sent an `x-request-id`.
pub(super) const REQUEST_ID_PRESENT: u16 = 1 << 15;
const GRPC_MASK: u16 = 3 << GRPC_SHIFT;

/// One pass over the (few) headers: which hop-by-hop headers are present
/// (bits 0-7, in the order of `strip_present`), plus `XFF_PRESENT`, the
/// framing bits `strict::check` reads, and whether the content type is
/// gRPC's. Every later lookup or removal hashes; this lets the common
/// message skip nearly all of them.
pub(super) fn scan(headers: &HeaderMap) -> u16 {
    let (mut mask, content_type) = scan_names(headers);
    // Only requests with a body carry a content type: one lookup for them.
    if content_type {
        if let Some(value) = headers.get(header::CONTENT_TYPE) {
            let kind = match GrpcKind::of(value.as_bytes()) {
                None => 0,
                Some(GrpcKind::Grpc) => 1,
                Some(GrpcKind::Web) => 2,
                Some(GrpcKind::WebText) => 3,
            };
            mask |= kind << GRPC_SHIFT;
        }
    }
    mask
}

/// The name bits of `scan`, and whether a content type is present.
fn scan_names(headers: &HeaderMap) -> (u16, bool) {
    let mut mask = 0u16;
    let mut content_type = false;
    // Names only (values are a second walk), one `match` so the compiler
    // can branch on the length before comparing bytes.
    for name in headers.keys() {
        mask |= match name.as_str() {
            "connection" => 1,
            "transfer-encoding" => 2,
            "upgrade" => 4,
            "te" => 8,
            "expect" => 16,
            "keep-alive" => 32,
            "proxy-connection" => 64,
            "proxy-authenticate" => 128,
            "x-forwarded-for" => XFF_PRESENT,
            "content-length" => CONTENT_LENGTH_PRESENT,
            "grpc-timeout" | "x-request-timeout" => DEADLINE_PRESENT,
            "x-request-id" => REQUEST_ID_PRESENT,
            "transfer_encoding" | "content_length" => LOOKALIKE_PRESENT,
            "content-type" => {
                content_type = true;
                0
            }
            n if n.starts_with(CLIENT_CERT_PREFIX) => CLIENT_CERT_PRESENT,
            _ => 0,
        };
    }
    (mask, content_type)
}

/// The gRPC kind `scan` found in the content type.
pub(super) fn grpc_kind(mask: u16) -> Option<GrpcKind> {
    match (mask & GRPC_MASK) >> GRPC_SHIFT {
        1 => Some(GrpcKind::Grpc),
        2 => Some(GrpcKind::Web),
        3 => Some(GrpcKind::WebText),
        _ => None,
    }
}

/// Removes every `x-client-cert-*` header the client sent.
fn strip_client_cert_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(CLIENT_CERT_PREFIX))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers. Only those `scan` found present pay for a
/// hashing removal; a bare `Connection: keep-alive`, the common case, costs
/// one removal. (A response's content type means nothing here.)
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let (mask, _) = scan_names(headers);
    strip_present(headers, mask);
}

fn strip_present(headers: &mut HeaderMap, mask: u16) {
    let present = (mask & 0xff) as u8;
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in Connection are hop-by-hop too. Taking the values
        // out with the entry hashes the name once; the common
        // `keep-alive`/`close` lists nothing.
        let mut listed: Vec<HeaderName> = Vec::new();
        if let Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
            for value in entry.remove_entry_mult().1 {
                let v = value.as_bytes();
                if v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close") {
                    continue;
                }
                let Ok(v) = value.to_str() else { continue };
                listed.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|n| {
                            !n.eq_ignore_ascii_case("keep-alive")
                                && !n.eq_ignore_ascii_case("close")
                        })
                        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
                );
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    let names: [&HeaderName; 8] = [
        &header::CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::TE,
        &header::EXPECT,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
    ];
    // Connection (bit 0) is gone already.
    for (i, name) in names.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Rewrites the client's request head into the one sent upstream. `mask`
/// is `scan` of its headers; `websocket` keeps the upgrade headers of a
/// WebSocket handshake (an HTTP/1.1 upstream only).
#[allow(clippy::too_many_arguments)]
pub fn prepare_request(
    parts: &mut Parts,
    mask: u16,
    websocket: bool,
    route: &CompiledRoute,
    protocol: UpstreamProtocol,
    client: &ConnCtx,
    host: Option<&HeaderValue>,
    target: &str,
    request_id: &HeaderValue,
) -> Result<(), ProxyError> {
    let headers = &mut parts.headers;
    // `TE: trailers` is the one TE value that must survive: gRPC needs it.
    let te_trailers = mask & TE_PRESENT != 0
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    // weir answers `Expect: 100-continue` itself (hyper sends the interim 100
    // when the body is first read), so the target never sees it; the strip
    // removes it along with the hop-by-hop headers.
    strip_present(headers, mask);
    if te_trailers {
        headers.insert(header::TE, TRAILERS);
    }
    if websocket {
        super::websocket::restore_request_headers(headers);
    }

    if mask & CLIENT_CERT_PRESENT != 0 {
        strip_client_cert_headers(headers);
    }
    // The table grows once for the headers added below, not once each.
    headers.reserve(4);
    let client_ip = &client.client_ip;
    // Only a trusted proxy's list is kept; anyone else's is replaced, so a
    // client cannot pass off a made-up address as its own.
    if mask & XFF_PRESENT != 0 && client.trusted.is_some() {
        append_forwarded_for(headers, client_ip);
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
    }
    match &client.tls {
        None => {
            headers.insert(X_FORWARDED_PROTO.clone(), HTTP);
        }
        Some(tls) => {
            headers.insert(X_FORWARDED_PROTO.clone(), HTTPS);
            if let Some(san) = &tls.san_header {
                headers.insert(X_CLIENT_CERT_SAN.clone(), san.clone());
            }
            if let Some(subject) = &tls.subject_header {
                headers.insert(X_CLIENT_CERT_SUBJECT.clone(), subject.clone());
            }
        }
    }
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    route.request_headers.apply(headers);

    let rewritten = route.rewrite(parts.uri.path(), parts.uri.query());
    match protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            // Absolute-form and HTTP/2 requests carry the authority in the
            // URI; an HTTP/1.1 target needs it in Host, and an absolute-form
            // authority overrides any Host header (RFC 9112 §3.2.2). An
            // origin-form request is sent as it came, Host untouched.
            // A request without any host (HTTP/1.0) still needs one on
            // HTTP/1.1 (RFC 9112 §3.2): name the target, as NGINX does.
            if parts.uri.authority().is_some() {
                if let Some(h) = host {
                    parts.headers.insert(header::HOST, h.clone());
                }
            } else if host.is_none() {
                if let Ok(h) = HeaderValue::from_str(target) {
                    parts.headers.insert(header::HOST, h);
                }
            }
            if rewritten.is_some() || parts.uri.authority().is_some() {
                let pq = match &rewritten {
                    Some(p) => p.as_str(),
                    None => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                };
                parts.uri = Uri::try_from(pq)
                    .map_err(|e| ProxyError::bad_request(format!("invalid request target: {e}")))?;
            }
        }
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            parts.version = Version::HTTP_2;
            let authority = host.and_then(|h| h.to_str().ok()).unwrap_or(target);
            let pq = match &rewritten {
                Some(p) => p.as_str(),
                None => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            };
            parts.uri = Uri::builder()
                .scheme(scheme(protocol))
                .authority(authority)
                .path_and_query(pq)
                .build()
                .map_err(|e| ProxyError::bad_request(format!("invalid request target: {e}")))?;
            // HTTP/2 carries the host as :authority.
            parts.headers.remove(header::HOST);
        }
    }
    Ok(())
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    // Several X-Forwarded-For lines form one list (RFC 9110 §5.3): keep
    // every hop already recorded, in order, then add ours.
    let mut joined: Vec<u8> = Vec::new();
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        let prev = prev.as_bytes().trim_ascii();
        if prev.is_empty() {
            continue;
        }
        joined.extend_from_slice(prev);
        joined.extend_from_slice(b", ");
    }
    let value = if joined.is_empty() {
        client_ip.clone()
    } else {
        joined.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

/// Cleans the target's response head before it goes to the client.
pub fn prepare_response<B>(
    resp: &mut Response<B>,
    route: &CompiledRoute,
    request_id: &HeaderValue,
) {
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers);
    // One hash: keep the target's own id if it set one.
    headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(|| request_id.clone());
    route.response_headers.apply(headers);
}

/// The result of a successful exchange with a target.
pub struct Exchange {
    /// The target's response. Its body owns an HTTP/1.1 connection until
    /// the body ends (`UpstreamBody::take_reusable`).
    pub response: Response<UpstreamBody>,
}

/// The request head for one try, as `send` gets it: lent when another try
/// may follow (an HTTP/1.1 target's codec only reads it), handed over on
/// the last try, or a copy of its own when this try changes it. Two words
/// wide, where the head itself is over 200 bytes: the pipeline's futures
/// store it, and each byte they store is written per request.
pub enum Head<'a> {
    Lent(&'a Parts),
    Last(&'a mut Parts),
    Copy(Box<Parts>),
}

impl Head<'_> {
    fn get(&self) -> &Parts {
        match self {
            Head::Lent(p) => p,
            Head::Last(p) => p,
            Head::Copy(p) => p,
        }
    }

    /// The head to change for this try alone, copied first when lent.
    pub fn to_mut(&mut self) -> &mut Parts {
        if let Head::Lent(p) = self {
            *self = Head::Copy(Box::new((*p).clone()));
        }
        match self {
            Head::Lent(_) => unreachable!("replaced above"),
            Head::Last(p) => p,
            Head::Copy(p) => p,
        }
    }

    /// An owned head, for clients that take a request of their own.
    fn into_owned(self) -> Parts {
        match self {
            Head::Lent(p) => p.clone(),
            Head::Last(p) => std::mem::replace(p, Request::new(()).into_parts().0),
            Head::Copy(p) => *p,
        }
    }
}

/// Sends `req` to `target`, reusing a connection when possible. Opening a
/// connection is the cold path and is boxed, which keeps this future (and so
/// every request's) small: it is moved on each request. A reused
/// HTTP/1.1 connection that turns out to have been closed by the target
/// before the request could reach it is replaced by a fresh one, once (see
/// `h1::SendError::Retry` for when that is safe).
// The head is borrowed (`Head`): an HTTP/1.1 target's codec only reads it,
// so no try copies it; hyper's clients take a request of their own.
// Not an `async fn`, so that the arguments are stored once (see `tries::run`).
#[allow(clippy::manual_async_fn)]
pub fn send<'a>(
    ctx: Option<&'a ConnCtx>,
    set: &'a UpstreamSet,
    target: &'a Arc<Target>,
    parts: Head<'a>,
    mut body: OutboundBody,
    connect_timeout: Duration,
    deadline: &'a mut Option<Deadline>,
) -> impl std::future::Future<Output = Result<Exchange, ProxyError>> + 'a {
    async move {
        match set.protocol {
            // Only a WebSocket handshake keeps `Upgrade` past the hop-by-hop
            // strip: it goes over a fresh hyper connection that can hand the
            // stream to the tunnel.
            UpstreamProtocol::Http1 if parts.get().headers.contains_key(header::UPGRADE) => {
                let req = Request::from_parts(parts.into_owned(), body);
                Box::pin(send_upgradeable(
                    set,
                    target,
                    req,
                    connect_timeout,
                    deadline,
                ))
                .await
            }
            UpstreamProtocol::Http1 => {
                let mut conn = match reuse_http1(ctx, target) {
                    Some(c) => c,
                    None => Box::pin(connect_http1(set, target, connect_timeout, deadline)).await?,
                };
                let mut retried = false;
                loop {
                    match within(deadline, conn.send(parts.get(), body)).await {
                        None => return Err(timeout_error()),
                        Some(Ok(response)) => {
                            return Ok(Exchange {
                                response: response.map(UpstreamBody::H1),
                            })
                        }
                        Some(Err(SendError::Retry(back, e))) if !retried => {
                            tracing::debug!(target = %target.address, error = %e, "reused connection was closed; reconnecting");
                            body = *back;
                            retried = true;
                            conn = Box::pin(connect_http1(set, target, connect_timeout, deadline))
                                .await?;
                        }
                        Some(Err(SendError::Retry(_, e) | SendError::Failed(e))) => {
                            return Err(send_error(&e))
                        }
                    }
                }
            }
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                let mut sender = match target.http2.get() {
                    Some(s) => s,
                    None => Box::pin(connect_http2(set, target, connect_timeout, deadline)).await?,
                };
                let req = Request::from_parts(parts.into_owned(), body);
                match within(deadline, sender.send_request(req)).await {
                    None => Err(timeout_error()),
                    Some(Ok(response)) => Ok(Exchange {
                        response: response.map(UpstreamBody::Hyper),
                    }),
                    Some(Err(e)) => Err(send_error(&h1::Error::Hyper(e))),
                }
            }
        }
    }
}

/// A WebSocket handshake: a fresh hyper connection with upgrades, never
/// pooled (after a 101 it belongs to the tunnel).
async fn send_upgradeable(
    set: &UpstreamSet,
    target: &Target,
    req: Request<OutboundBody>,
    connect_timeout: Duration,
    deadline: &mut Option<Deadline>,
) -> Result<Exchange, ProxyError> {
    let mut sender = match connect(set, target, connect_timeout, deadline, true).await? {
        Connection::Upgradeable(s) => s,
        _ => return Err(ProxyError::connect_failed("protocol mismatch")),
    };
    match within(deadline, sender.send_request(req)).await {
        None => Err(timeout_error()),
        Some(Ok(response)) => Ok(Exchange {
            response: response.map(UpstreamBody::Hyper),
        }),
        Some(Err(e)) => Err(send_error(&h1::Error::Hyper(e))),
    }
}

/// The connection cached for this client, else an idle one from the pool;
/// one the target closed while idle is dropped.
fn reuse_http1(ctx: Option<&ConnCtx>, target: &Arc<Target>) -> Option<Http1Conn> {
    if let Some(mut c) = ctx.and_then(|c| c.take(target)) {
        if c.is_idle_open() {
            return Some(c);
        }
    }
    while let Some(mut c) = target.http1.checkout() {
        if c.is_idle_open() {
            return Some(c);
        }
    }
    None
}

async fn connect_http1(
    set: &UpstreamSet,
    target: &Target,
    connect_timeout: Duration,
    deadline: &mut Option<Deadline>,
) -> Result<Http1Conn, ProxyError> {
    match connect(set, target, connect_timeout, deadline, false).await? {
        Connection::Http1(c) => Ok(c),
        _ => Err(ProxyError::connect_failed("protocol mismatch")),
    }
}

/// Opens the target's shared HTTP/2 connection. Concurrent first requests
/// wait for one connect instead of each opening a connection of their own.
async fn connect_http2(
    set: &UpstreamSet,
    target: &Target,
    connect_timeout: Duration,
    deadline: &mut Option<Deadline>,
) -> Result<http2::SendRequest<OutboundBody>, ProxyError> {
    let _connecting = within(deadline, target.http2.lock_connecting())
        .await
        .ok_or_else(timeout_error)?;
    if let Some(s) = target.http2.get() {
        return Ok(s);
    }
    match connect(set, target, connect_timeout, deadline, false).await? {
        Connection::Http2(s) => {
            target.http2.set(s.clone());
            Ok(s)
        }
        _ => Err(ProxyError::connect_failed("protocol mismatch")),
    }
}

async fn connect(
    set: &UpstreamSet,
    target: &Target,
    connect_timeout: Duration,
    deadline: &mut Option<Deadline>,
    upgrade: bool,
) -> Result<Connection, ProxyError> {
    let fut = set.connect(target, connect_timeout, upgrade);
    match within(deadline, fut).await {
        None => Err(timeout_error()),
        Some(Ok(c)) => Ok(c),
        Some(Err(e @ ConnectError::Unresolved(_))) => {
            Err(ProxyError::no_healthy_upstream_detail(e.to_string()))
        }
        Some(Err(ConnectError::CircuitOpen(o))) => {
            Err(ProxyError::circuit_open(&set.name, o.as_str()))
        }
        Some(Err(e)) => Err(ProxyError::connect_failed(e.to_string())),
    }
}

fn timeout_error() -> ProxyError {
    ProxyError::timeout("the route's request deadline passed before the upstream answered")
}

fn send_error(e: &h1::Error) -> ProxyError {
    // The client's own body failing (past its limit, stalled, a malformed
    // chunk, an early end) is the client's doing, not the target's.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        match cause.downcast_ref::<OutboundError>() {
            Some(OutboundError::TooLarge(limit)) => return ProxyError::body_too_large(*limit),
            Some(OutboundError::Idle(idle)) => return ProxyError::body_idle_timeout(*idle),
            Some(body) => {
                return ProxyError::bad_request(format!(
                    "the request body could not be read: {body}"
                ))
            }
            None => {}
        }
        source = cause.source();
    }
    ProxyError::reset(format!(
        "the upstream closed the connection before a complete response: {e}"
    ))
}

/// The `:scheme` of a request sent over HTTP/2 with `protocol`.
pub(crate) fn scheme(protocol: UpstreamProtocol) -> &'static str {
    match protocol {
        UpstreamProtocol::H2 => "https",
        _ => "http",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Parts {
        let mut parts = Request::new(()).into_parts().0;
        parts.uri = Uri::from_static("/orders");
        parts.headers.insert("x-a", HeaderValue::from_static("1"));
        parts
    }

    #[test]
    fn a_lent_head_is_copied_before_a_try_changes_it() {
        let parts = head();
        let mut lent = Head::Lent(&parts);
        lent.to_mut()
            .headers
            .insert("x-request-timeout", HeaderValue::from_static("250"));
        assert!(matches!(lent, Head::Copy(_)));
        assert_eq!(lent.get().headers.len(), 2);
        assert_eq!(lent.into_owned().uri, "/orders");
        // The original, which a later try sends again, is untouched.
        assert_eq!(parts.headers.len(), 1);
        assert!(!parts.headers.contains_key("x-request-timeout"));
    }

    #[test]
    fn the_last_try_changes_and_takes_the_head_itself() {
        let mut parts = head();
        let mut last = Head::Last(&mut parts);
        last.to_mut()
            .headers
            .insert("x-request-timeout", HeaderValue::from_static("250"));
        let owned = last.into_owned();
        assert_eq!(owned.uri, "/orders");
        assert_eq!(owned.headers.len(), 2);
        assert!(parts.headers.is_empty());
    }
}
