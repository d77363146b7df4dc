//! The request pipeline, and the only code that drives hyper request and
//! response bodies. Each stage delegates to the module that owns the decision:
//!
//! accept (`server`) → request start (snapshot, request id, checks) → match
//! route (`router`) → pick upstream (`upstream`) → forward (`forward.rs`) →
//! respond (`respond.rs`, `body.rs`) → observe (`complete.rs`, `observe`).

mod body;
mod complete;
mod conn;
mod deadline;
mod error;
mod forward;
mod respond;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use weir_config::HashOn;

pub use body::{BodyError, ResponseBody};
pub use conn::ConnCtx;
pub use error::{ProxyError, Source};

use crate::router::{CompiledRoute, RouteAction};
use crate::upstream::{hash_key, OutboundBody, UpstreamSet};
use complete::{Completion, LogFields, UpstreamUse};
use deadline::Deadline;
use forward::X_REQUEST_ID;

/// Handles one request from a client connection. Never fails: every error
/// becomes a response.
pub async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let snapshot = ctx.state.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let request_id = request_id(&parts);
    let mut done = Completion {
        ctx: ctx.clone(),
        snapshot: snapshot.clone(),
        route: None,
        method: parts.method.clone(),
        status: http::StatusCode::OK,
        start,
        upstream: None,
        error: None,
        log: None,
    };
    let host = request_host(&parts);
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
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            ctx.state.metrics.rejected("bad_request");
            return Ok(local_error(e, &request_id, done));
        }
    };
    if parts.method == Method::CONNECT {
        return Ok(local_error(
            ProxyError::not_implemented("CONNECT is not proxied"),
            &request_id,
            done,
        ));
    }

    // Match route.
    let host_str = host.as_ref().and_then(|h| h.to_str().ok());
    let Some(route) = snapshot.routes.route(
        &parts.method,
        host_str,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
    ) else {
        let e = ProxyError::route_not_found(
            parts.method.as_str(),
            host_str.unwrap_or(""),
            parts.uri.path(),
        );
        return Ok(local_error(e, &request_id, done));
    };
    done.route = Some(route.order);
    match &route.action {
        RouteAction::Direct(reply) => {
            let mut resp = respond::direct(reply);
            route.response_headers.apply(resp.headers_mut());
            Ok(finish(resp, &request_id, done))
        }
        RouteAction::Forward { upstream_index, .. } => {
            let Some(set) = snapshot.upstreams.get(*upstream_index) else {
                let e = ProxyError::no_healthy_upstream(&route.name);
                return Ok(local_error(e, &request_id, done));
            };
            Ok(forward(set, route, parts, body, host, request_id, done).await)
        }
    }
}

/// The forward stage: pick a target, send, and stream the response back.
async fn forward(
    set: &UpstreamSet,
    route: &CompiledRoute,
    mut parts: Parts,
    body: Incoming,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    mut done: Completion,
) -> Response<ResponseBody> {
    if let Some(log) = done.log.as_mut() {
        log.upstream = Some(set.name.clone());
    }
    let key = set.hash_on.as_ref().and_then(|h| hash_of(h, &parts, &done));
    let Some(target) = set.pick(key).cloned() else {
        return local_error(
            ProxyError::no_healthy_upstream(&set.name),
            &request_id,
            done,
        );
    };
    target.in_flight.fetch_add(1, Ordering::Relaxed);
    done.upstream = Some(UpstreamUse {
        target: target.clone(),
        conn: None,
        elapsed: Default::default(),
    });

    let mut deadline = route.request_timeout.map(|t| {
        let at = tokio::time::Instant::from_std(done.start) + t;
        Deadline::new(at, done.ctx.take_timer())
    });
    if let Err(e) = forward::prepare_request(
        &mut parts,
        route,
        set.protocol,
        &done.ctx.client_ip,
        host.as_ref(),
        &target.address,
        &request_id,
    ) {
        return local_error(e, &request_id, done);
    }
    let counter = done.log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    if let Some(log) = done.log.as_mut() {
        log.bytes_in = counter.clone();
    }
    let req = Request::from_parts(parts, OutboundBody::Stream(body, counter));
    let sent = Instant::now();
    match forward::send(
        &done.ctx,
        set,
        &target,
        req,
        route.connect_timeout,
        &mut deadline,
    )
    .await
    {
        Ok(exchange) => {
            let elapsed = sent.elapsed();
            set.metrics.response_duration.observe(elapsed);
            let mut response = exchange.response;
            forward::prepare_response(&mut response, route, &request_id);
            if let Some(u) = done.upstream.as_mut() {
                u.conn = exchange.conn;
                u.elapsed = elapsed;
            }
            done.status = response.status();
            let (rparts, rbody) = response.into_parts();
            let mut body = ResponseBody::upstream(rbody, deadline);
            body.on_complete(done);
            Response::from_parts(rparts, body)
        }
        Err(e) => {
            if let Some(u) = done.upstream.as_mut() {
                u.elapsed = sent.elapsed();
            }
            local_error(e, &request_id, done)
        }
    }
}

/// Sends a problem+json response for `err`.
fn local_error(
    err: ProxyError,
    request_id: &HeaderValue,
    mut done: Completion,
) -> Response<ResponseBody> {
    if err.source == Source::Upstream {
        tracing::debug!(code = err.code, detail = %err.detail, "upstream error");
    }
    done.error = Some(err.code);
    let resp = respond::problem(&err, request_id.to_str().unwrap_or(""));
    finish(resp, request_id, done)
}

fn finish(
    mut resp: Response<ResponseBody>,
    request_id: &HeaderValue,
    mut done: Completion,
) -> Response<ResponseBody> {
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    done.status = resp.status();
    resp.body_mut().on_complete(done);
    resp
}

/// The client's `x-request-id` when it is usable, else a new random one.
fn request_id(parts: &Parts) -> HeaderValue {
    if let Some(v) = parts.headers.get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 && v.to_str().is_ok() {
            return v.clone();
        }
    }
    let mut buf = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = ((n >> (i * 4)) & 0xf) as u8;
        *b = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    // Reference-counted from the start: the id is cloned into the upstream
    // request and the response, and cloning a Vec-backed value would first
    // allocate to make it shared. Hex digits are always a valid value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or(HeaderValue::from_static("0"))
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
        return HeaderValue::from_str(a.as_str())
            .map(Some)
            .map_err(|_| ProxyError::bad_request("invalid authority"));
    }
    match first {
        Some(h) if h.is_empty() && parts.version == Version::HTTP_11 => {
            Err(ProxyError::bad_request("empty Host header"))
        }
        Some(h) => Ok(Some(h.clone())),
        None if parts.version == Version::HTTP_11 => Err(ProxyError::bad_request(
            "HTTP/1.1 request without a Host header",
        )),
        None => Ok(None),
    }
}

fn hash_of(on: &HashOn, parts: &Parts, done: &Completion) -> Option<u64> {
    match on {
        HashOn::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
        HashOn::ClientIp => Some(hash_key(done.ctx.client.ip().to_string().as_bytes())),
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
