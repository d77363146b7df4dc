//! The request pipeline, and the only code that drives hyper request and
//! response bodies. Each stage delegates to the module that owns the decision:
//!
//! accept (`server`) → request start (snapshot, request id, checks) → match
//! route (`router`) → pick upstream (`upstream`) → forward (`forward.rs`) →
//! respond (`respond.rs`, `body.rs`) → observe (`complete.rs`, `observe`).

mod admit;
mod body;
mod complete;
mod conn;
mod deadline;
mod error;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod grpc_web;
mod mirror;
mod policies;
mod respond;
mod strict;
mod tries;
mod websocket;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use weir_config::HashOn;

pub use body::{BodyError, ResponseBody};
pub use conn::{ConnCtx, RequestLimits, TrustedProxies};
pub use error::{ProxyError, Source};
pub use policies::{
    maintain_policies, Backend, MirrorPolicy, PolicyBuildError, RateLimiter, RoutePolicies,
    WebSocketPolicy,
};
pub use websocket::{TunnelGuard, Tunnels, CLOSE_TIMEOUT as WEBSOCKET_CLOSE_TIMEOUT};

use crate::router::{CompiledRoute, Cors, RouteAction};
use crate::upstream::hash_key;
use complete::{Completion, LogFields, RequestTrace, TraceHead, WebSocketStage};
use forward::X_REQUEST_ID;

/// The whole HTTP/1.1 `408 header_read_timeout` response an HTTP/1.1
/// connection writes when a request head it has begun does not complete
/// within `timeout`. Built once per listener.
pub fn head_timeout_response(timeout: std::time::Duration) -> bytes::Bytes {
    respond::http1_bytes(&ProxyError::header_read_timeout(timeout))
}

/// Handles one request from a client connection. Never fails: every error
/// becomes a response.
// Not an `async fn`: see `tries::run`. One future for the whole pipeline up
// to the forward stage: hyper stores it per connection, and each nested
// future would keep its own copy of the request head, written on every
// request into memory that has gone cold since the connection's last one.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> impl std::future::Future<Output = Result<Response<ResponseBody>, Infallible>> + 'static {
    // Split here rather than inside: the future then stores the head once,
    // where hyper puts it, and the pipeline works on it in place.
    let (mut parts, body) = req.into_parts();
    async move {
        let version = parts.version;
        let last = ctx.count_request(version == Version::HTTP_2);
        if last && version == Version::HTTP_2 {
            // The connection ends with GOAWAY; the streams it has started,
            // this one included, finish first.
            ctx.mark_spent();
        }
        let mut resp = 'req: {
            let start = Instant::now();
            let snapshot = ctx.state.snapshot.load_full();
            // One walk over the header names serves the strictness checks, the
            // lookups that only a present header needs, and forwarding later.
            let mask = forward::scan(&parts.headers);
            let request_id = request_id(&parts, mask);
            // Ended by the Completion's drop, however the response ends.
            ctx.request_started();
            // Boxed: it travels with the request through every stage and into
            // the response body; moving a pointer is cheaper than its 300-odd bytes.
            let mut done = Box::new(Completion {
                ctx: ctx.clone(),
                snapshot: snapshot.clone(),
                route: None,
                side: 0,
                method: parts.method.clone(),
                status: http::StatusCode::OK,
                start,
                upstream: None,
                error: None,
                attempts: 0,
                failed_target: None,
                log: None,
                trace: None,
                websocket: WebSocketStage::None,
                grpc: None,
                grpc_status: None,
                forwarded_client: None,
                ended_at: None,
            });
            let host = request_host(&parts);
            if let Some(tracer) = &ctx.state.tracer {
                let trace_ctx = tracer.context(&parts.headers);
                let head = trace_ctx.is_sampled().then(|| TraceHead {
                    path: parts.uri.path().to_owned(),
                    host: match &host {
                        Ok(Some(h)) => h.to_str().ok().map(str::to_owned),
                        _ => None,
                    },
                    version: parts.version,
                });
                done.trace = Some(Box::new(RequestTrace {
                    ctx: trace_ctx,
                    start: SystemTime::now(),
                    head,
                }));
            }
            if ctx.state.access_log.is_some() {
                // Filled before any check, so that rejected requests are logged too.
                let host_text = match &host {
                    Ok(Some(h)) => h.to_str().unwrap_or(""),
                    _ => parts
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or(""),
                };
                done.log = Some(Box::new(LogFields {
                    time: SystemTime::now(),
                    request_id: request_id.to_str().unwrap_or("").to_owned(),
                    host: host_text.to_owned(),
                    path: parts.uri.path().to_owned(),
                    protocol: protocol_name(parts.version),
                    bytes_in: None,
                    upstream: None,
                }));
            }
            if let Some(trusted) = &ctx.trusted {
                // Only a trusted peer's X-Forwarded-For names the client.
                let chain = parts
                    .headers
                    .get_all(&forward::X_FORWARDED_FOR)
                    .iter()
                    .map(HeaderValue::as_bytes);
                done.forwarded_client = trusted.client(chain).map(|ip| {
                    let text = conn::ip_value(ip);
                    // Boxed: rare, and the request state is moved a few times.
                    Box::new((ip, text))
                });
            }
            if let Some((reason, e)) = head_too_large(&ctx.limits, &parts) {
                tracing::debug!(client = %ctx.client, reason, detail = %e.detail, "request refused");
                ctx.state.metrics.rejected(reason);
                done.grpc = grpc::kind(&parts.headers);
                break 'req local_error(e, &request_id, done);
            }
            let host = match host.and_then(|h| strict::check(&parts, mask).map(|()| h)) {
                Ok(h) => h,
                Err(e) => {
                    ctx.state.metrics.rejected(e.code);
                    done.grpc = grpc::kind(&parts.headers);
                    break 'req reject_head(e, &parts, &request_id, done);
                }
            };
            if parts.method == Method::CONNECT {
                done.grpc = grpc::kind(&parts.headers);
                let e = ProxyError::not_implemented("CONNECT is not proxied");
                break 'req reject_head(e, &parts, &request_id, done);
            }

            // Match route.
            let host_str = host.as_ref().and_then(|h| h.to_str().ok());
            let client_cert = ctx.tls.as_ref().and_then(|t| t.client_cert.as_ref());
            let Some(route) = snapshot.routes.route(
                &parts.method,
                host_str,
                parts.uri.path(),
                parts.uri.query(),
                &parts.headers,
                client_cert,
            ) else {
                let forbidden = snapshot.routes.forbids_client_cert(
                    &parts.method,
                    host_str,
                    parts.uri.path(),
                    parts.uri.query(),
                    &parts.headers,
                    client_cert,
                );
                let e = if forbidden {
                    ProxyError::client_cert_forbidden(parts.method.as_str(), parts.uri.path())
                } else {
                    ProxyError::route_not_found(
                        parts.method.as_str(),
                        host_str.unwrap_or(""),
                        parts.uri.path(),
                    )
                };
                // A gRPC client is told UNIMPLEMENTED, in its own terms.
                done.grpc = grpc::kind(&parts.headers);
                break 'req local_error(e, &request_id, done);
            };
            done.route = Some(route.order);
            // CORS: a preflight is answered here; an allowed origin's response is
            // marked readable at the end, whatever produced it.
            let cors = match &route.cors {
                Some(cors) => {
                    let origin = cors.allowed_origin(&parts.headers);
                    if Cors::is_preflight(&parts.method, &parts.headers) {
                        break 'req preflight(cors, origin, route, &parts, &request_id, done);
                    }
                    origin.map(|o| (cors, o))
                }
                None => None,
            };
            if let RouteAction::Direct(reply) = &route.action {
                let mut resp = respond::direct(reply);
                route.response_headers.apply(resp.headers_mut());
                if let Some((cors, origin)) = cors {
                    cors.apply(origin, resp.headers_mut());
                }
                break 'req finish(resp, &request_id, done);
            }
            // Pick upstream: the route's one, or a side of its split.
            let upstream_index = match &route.action {
                RouteAction::Forward { upstream_index, .. } => Some(*upstream_index),
                RouteAction::Split(split) => {
                    done.side = split.pick(&parts.headers, fastrand::u64(..));
                    split.sides().get(done.side).map(|s| s.upstream_index)
                }
                RouteAction::Direct(_) => None,
            };
            let set = upstream_index.and_then(|i| snapshot.upstreams.get(i));
            let policies = snapshot.route_policies.get(route.order);
            let (Some(set), Some(policies)) = (set, policies) else {
                let e = ProxyError::no_healthy_upstream(&route.name);
                done.grpc = grpc::kind(&parts.headers);
                break 'req local_error(e, &request_id, done);
            };
            let body_limit = route
                .max_request_body
                .unwrap_or(ctx.limits.max_request_body);
            if mask & forward::CONTENT_LENGTH_PRESENT != 0
                && content_length(&parts).is_some_and(|n| n > body_limit)
            {
                tracing::debug!(client = %ctx.client, route = %route.name, limit = body_limit, "request body too large (Content-Length)");
                ctx.state.metrics.rejected("body_too_large");
                done.grpc = grpc::kind(&parts.headers);
                break 'req local_error(ProxyError::body_too_large(body_limit), &request_id, done);
            }
            let body_idle = ctx.limits.body_idle_timeout;
            let mut resp = tries::run(
                set, route, policies, &mut parts, mask, body, body_limit, body_idle, host,
                request_id, done,
            )
            .await;
            if let Some((cors, origin)) = cors {
                cors.apply(origin, resp.headers_mut());
            }
            resp
        };
        // hyper closes an HTTP/1.x connection after a response that says so.
        // After a body timeout the rest of the body may still come: the
        // connection cannot carry another request.
        let timed_out = resp.status() == http::StatusCode::REQUEST_TIMEOUT;
        if (last || timed_out) && version <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(resp)
    }
}

/// Checks the request head against the limits hyper does not apply itself:
/// the request line (HTTP/1.x) and each header line. Returns the metric
/// reason and the error when one is exceeded.
fn head_too_large(limits: &RequestLimits, parts: &Parts) -> Option<(&'static str, ProxyError)> {
    if parts.version <= Version::HTTP_11 {
        // `METHOD SP target SP HTTP/1.1`: the target as sent (origin or
        // absolute form) is what the URI holds.
        let target = match parts.uri.path_and_query() {
            Some(pq) => pq.as_str().len(),
            None => 0,
        } + parts.uri.scheme_str().map_or(0, |s| s.len() + 3)
            + parts.uri.authority().map_or(0, |a| a.as_str().len());
        let line = parts.method.as_str().len() + 1 + target + 9;
        if line > limits.max_request_line {
            return Some((
                "request_line_too_long",
                ProxyError::uri_too_long(limits.max_request_line),
            ));
        }
    }
    for (name, value) in &parts.headers {
        if name.as_str().len() + 2 + value.len() > limits.max_header_field {
            return Some((
                "header_too_large",
                ProxyError::header_too_large(limits.max_header_field),
            ));
        }
    }
    None
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Answers a CORS preflight on a route with `cors`: 204 with what the
/// route allows when `origin` is allowed, else 403.
fn preflight(
    cors: &Cors,
    origin: Option<HeaderValue>,
    route: &CompiledRoute,
    parts: &Parts,
    request_id: &HeaderValue,
    done: Box<Completion>,
) -> Response<ResponseBody> {
    let Some(origin) = origin else {
        return local_error(
            ProxyError::cors_origin_not_allowed(&route.name),
            request_id,
            done,
        );
    };
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = http::StatusCode::NO_CONTENT;
    *resp.headers_mut() = cors.preflight(origin, &parts.headers);
    finish(resp, request_id, done)
}

/// A request refused for its head: on HTTP/1.x the connection is closed
/// after the answer, since whatever follows on it (a body, a smuggled
/// request) cannot be trusted to start where weir thinks.
fn reject_head(
    err: ProxyError,
    parts: &Parts,
    request_id: &HeaderValue,
    done: Box<Completion>,
) -> Response<ResponseBody> {
    let mut resp = local_error(err, request_id, done);
    if parts.version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Sends the error response for `err`: a gRPC status for a gRPC call, a
/// problem+json document otherwise.
pub(crate) fn local_error(
    err: ProxyError,
    request_id: &HeaderValue,
    mut done: Box<Completion>,
) -> Response<ResponseBody> {
    if err.source == Source::Upstream {
        tracing::debug!(code = err.code, detail = %err.detail, "upstream error");
    }
    done.error = Some(err.code);
    let resp = match done.grpc {
        Some(kind) => {
            done.grpc_status = Some(err.grpc_status());
            respond::grpc_error(&err, kind)
        }
        None => respond::problem(&err, request_id.to_str().unwrap_or("")),
    };
    finish(resp, request_id, done)
}

fn finish(
    mut resp: Response<ResponseBody>,
    request_id: &HeaderValue,
    mut done: Box<Completion>,
) -> Response<ResponseBody> {
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    done.status = resp.status();
    resp.body_mut().on_complete(done);
    resp
}

/// The client's `x-request-id` when it is usable, else a new random one.
///
/// Either is marked sensitive. An id is unique per request, so it is never
/// worth a place in an HTTP/2 connection's HPACK table: it goes out as a
/// never-indexed literal (its name too, about 9 bytes more per message)
/// instead of being inserted and evicting entries that later messages would
/// reuse, an insert and eviction that cost about 6 % of the instructions of
/// a proxied h2c request (callgrind). Values that do repeat, like
/// `RateLimit` while a key is far from its limit, stay indexable.
fn request_id(parts: &Parts, mask: u16) -> HeaderValue {
    if mask & forward::REQUEST_ID_PRESENT != 0 {
        if let Some(v) = parts.headers.get(&X_REQUEST_ID) {
            if !v.is_empty() && v.len() <= 200 && v.to_str().is_ok() {
                let mut v = v.clone();
                v.set_sensitive(true);
                return v;
            }
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let random = fastrand::u128(..).to_le_bytes();
    for (pair, byte) in buf.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Reference-counted from the start: the id is cloned into the upstream
    // request and the response, and cloning a Vec-backed value would first
    // allocate to make it shared. Hex digits are always a valid value.
    let mut id = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or(HeaderValue::from_static("0"));
    id.set_sensitive(true);
    id
}

/// The authority the client asked for: the URI's (absolute-form, HTTP/2) or
/// the Host header. HTTP/1.1 requires exactly one Host (RFC 9112 §3.2).
fn request_host(parts: &Parts) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::bad_request("more than one Host header"));
    }
    if let Some(a) = parts.uri.authority() {
        // HTTP/2: a Host that disagrees with :authority makes the request
        // malformed (RFC 9113 §8.3.1); HTTP/1.1 absolute-form ignores Host.
        if parts.version == Version::HTTP_2
            && first.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()))
        {
            return Err(ProxyError::bad_request("Host differs from :authority"));
        }
        return match HeaderValue::from_str(a.as_str()) {
            Ok(h) if strict::valid_host(&h, parts.version) => Ok(Some(h)),
            _ => Err(ProxyError::bad_request("invalid authority")),
        };
    }
    match first {
        Some(h) if h.is_empty() && parts.version == Version::HTTP_11 => {
            Err(ProxyError::bad_request("empty Host header"))
        }
        Some(h) if !strict::valid_host(h, parts.version) => {
            Err(ProxyError::bad_request("invalid Host header"))
        }
        Some(h) => Ok(Some(h.clone())),
        None if parts.version == Version::HTTP_11 => Err(ProxyError::bad_request(
            "HTTP/1.1 request without a Host header",
        )),
        None => Ok(None),
    }
}

pub(crate) fn hash_of(on: &HashOn, parts: &Parts, done: &Completion) -> Option<u64> {
    match on {
        HashOn::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashOn::Cookie(name) => {
            crate::router::cookie(&parts.headers, name).map(|v| hash_key(v.as_bytes()))
        }
        HashOn::ClientIp => Some(match done.forwarded_client.as_deref() {
            Some((_, text)) => hash_key(text.as_bytes()),
            // The peer's address as the connection formatted it once.
            None => hash_key(done.ctx.client_ip.as_bytes()),
        }),
        HashOn::Path => Some(hash_key(parts.uri.path().as_bytes())),
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_stay_out_of_hpack_tables() {
        let (parts, ()) = Request::new(()).into_parts();
        let a = request_id(&parts, 0);
        let b = request_id(&parts, 0);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.is_sensitive() && b.is_sensitive());
    }

    #[test]
    fn client_request_ids_are_kept_and_stay_out_of_hpack_tables() {
        let req = Request::builder()
            .header(&X_REQUEST_ID, "client-id-1")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        let id = request_id(&parts, forward::REQUEST_ID_PRESENT);
        assert_eq!(id, "client-id-1");
        assert!(id.is_sensitive());
    }
}
