//! The forward stage: admit the request, pick a target, send it, and when a
//! try fails in a way the route retries, send it again (to another target
//! when there is one), within the retry budget and the request's deadline.
//!
//! A retry needs the request again, so its body is kept in memory when it is
//! small enough (`retry.max_body`, known from `Content-Length`); a larger or
//! unsized body is streamed and the request is tried once. Each try reports
//! its outcome to outlier detection; each holds a circuit-breaker slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use weir_config::UpstreamProtocol;

use super::admit::{admit, admit_now, Client};
use super::body::ResponseBody;
use super::complete::{Completion, UpstreamUse, WebSocketStage};
use super::deadline::{within, Deadline};
use super::error::ProxyError;
use super::forward;
use super::grpc::{self, GrpcKind};
use super::grpc_web;
use super::mirror;
use super::policies::RoutePolicies;
use super::websocket;
use super::{hash_of, local_error};
use crate::policy::deadline;
use crate::policy::outlier::Observation;
use crate::policy::retry::{Outcome, RetryPolicy};
use crate::router::CompiledRoute;
use crate::upstream::{OutboundBody, UpstreamSet};

/// Forwards one admitted-to-route request; never fails: errors become
/// responses.
#[allow(clippy::too_many_arguments)]
// Not an `async fn`: the arguments are moved into the future once and used
// in place, where an `async fn` would keep a second copy of each.
#[allow(clippy::manual_async_fn)]
pub(super) fn run<'a>(
    set: &'a UpstreamSet,
    route: &'a CompiledRoute,
    policies: &'a RoutePolicies,
    parts: &'a mut Parts,
    mask: u16,
    body: Incoming,
    body_limit: u64,
    body_idle: std::time::Duration,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    mut done: Box<Completion>,
) -> impl std::future::Future<Output = Response<ResponseBody>> + 'a {
    async move {
        if let Some(log) = done.log.as_mut() {
            log.upstream = Some(set.name.clone());
        }

        // A WebSocket handshake is told apart only when the header scan (`mask`,
        // taken in `handle`, which forwarding needs anyway) has seen an
        // `Upgrade` header.
        done.grpc = forward::grpc_kind(mask);
        // gRPC-Web is translated only where the route asks for it; elsewhere
        // it goes to the upstream as it came.
        let web = done.grpc.filter(|k| k.is_web() && route.grpc_web);
        let mut upgrade: Option<OnUpgrade> = None;
        if mask & forward::UPGRADE_PRESENT != 0 && websocket::is_upgrade(parts) {
            done.websocket = WebSocketStage::Requested;
            if !policies.websocket.allowed {
                let e = ProxyError::websocket_not_allowed(&route.name);
                return local_error(e, &request_id, done);
            }
            if set.protocol != UpstreamProtocol::Http1 {
                let e = ProxyError::websocket_unsupported(&set.name);
                return local_error(e, &request_id, done);
            }
            upgrade = parts.extensions.remove::<OnUpgrade>();
        }
        let websocket = done.websocket == WebSocketStage::Requested;

        // The deadline: the route's, capped by what the caller will wait.
        let incoming = if mask & forward::DEADLINE_PRESENT != 0 {
            deadline::incoming(&parts.headers)
        } else {
            None
        };
        let mut total = deadline::effective(route.request_timeout, incoming).map(|t| {
            let at = tokio::time::Instant::from_std(done.start) + t;
            Deadline::new(at, done.ctx.take_timer())
        });

        // Admit.
        // The request's start on the route's policy clock, read once for
        // the rate limit and the retry budget.
        let policy_now = if policies.rate_limit.is_some() || policies.budget.is_some() {
            policies.now_at(done.start)
        } else {
            Duration::ZERO
        };
        let client = match done.forwarded_client.as_deref() {
            Some((_, text)) => Client::Forwarded(text),
            None => Client::Peer(&done.ctx),
        };
        // A block, so that `admitted` ends with it rather than keeping room
        // in this future for the rest of the request.
        let rate = {
            let admitted = match admit_now(policies, parts, &client, policy_now) {
                Some(answer) => answer,
                None => admit(policies, parts, client, &mut total, policy_now).await,
            };
            match admitted {
                Ok(rate) => rate,
                Err(refusal) => {
                    let mut resp = local_error(refusal.error, &request_id, done);
                    if let Some(rate) = refusal.rate {
                        rate.apply(resp.headers_mut());
                    }
                    return resp;
                }
            }
        };

        // Pick the first target.
        let key = set.hash_on.as_ref().and_then(|h| hash_of(h, parts, &done));
        let Some((mut index, target)) = set.pick(key, 0, done.start) else {
            return local_error(
                ProxyError::no_healthy_upstream(&set.name),
                &request_id,
                done,
            );
        };
        let mut target = target.clone();
        if let Err(e) = forward::prepare_request(
            parts,
            mask,
            websocket,
            route,
            set.protocol,
            &done.ctx,
            host.as_ref(),
            &target.address,
            &request_id,
        ) {
            return local_error(e, &request_id, done);
        }
        if let Some(kind) = web {
            grpc_web::request_head(&mut parts.headers, kind);
        }
        // Every try (and the mirror copy) carries weir's span as the parent.
        if let Some(trace) = &done.trace {
            trace.ctx.propagate(&mut parts.headers);
        }

        // Which copies of the request are needed: one per retry, one for the
        // mirror. Both need the body in memory.
        if let Some(budget) = &policies.budget {
            budget.record_request(policy_now);
        }
        let mut retry = policies
            .retry
            .as_ref()
            .filter(|_| RetryPolicy::is_retryable_request(&parts.method, &parts.headers));
        // A handshake copy would open a WebSocket on the shadow upstream.
        let mirror = policies
            .mirror
            .as_ref()
            .filter(|m| !websocket && mirror::selected(m, &parts.headers));
        let keep = retry
            .map(RetryPolicy::max_body)
            .max(mirror.map(|m| m.max_body));
        let mut body = Some(body);
        let mut kept: Option<Bytes> = None;
        if let Some(limit) = keep {
            match read_small_body(&mut body, parts, limit, &mut total).await {
                Ok(bytes) => kept = bytes,
                Err(e) => return local_error(e, &request_id, done),
            }
            if web == Some(GrpcKind::WebText) {
                if let Some(text) = kept.take() {
                    match grpc_web::decode_text(&text) {
                        Some(decoded) => kept = Some(decoded),
                        None => {
                            let e = ProxyError::bad_request("the gRPC-Web text body is not base64");
                            return local_error(e, &request_id, done);
                        }
                    }
                }
            }
        }
        let kept_len = kept.as_ref().map(Bytes::len);
        if retry.is_some_and(|r| kept_len.is_none_or(|n| n > r.max_body())) {
            retry = None;
        }
        if let Some(m) = mirror {
            match &kept {
                Some(b) if b.len() <= m.max_body => {
                    let shadow = done.snapshot.upstreams.get(m.upstream_index).cloned();
                    mirror::send(m, shadow, parts, b.clone(), &policies.metrics);
                }
                _ => {
                    policies.metrics.mirror_dropped.inc();
                }
            }
        }
        let counter = match (&kept, done.log.is_some()) {
            (None, true) => Some(Arc::new(AtomicU64::new(0))),
            _ => None,
        };
        if let Some(log) = done.log.as_mut() {
            log.bytes_in = counter
                .clone()
                .or_else(|| kept_len.map(|n| Arc::new(AtomicU64::new(n as u64))));
        }

        let attempts = retry.map_or(1, RetryPolicy::attempts);
        let mut tried = 0u64;
        let mut attempt = 1u32;
        loop {
            // One try. A block, so that its locals (the exchange's result
            // above all) end before the backoff's await: otherwise this
            // future would keep room for them, and the result would be
            // written into that cold room on every request.
            {
                done.attempts = attempt;
                let last = attempt >= attempts;
                // The head for this try: the original, taken on the last try and
                // lent before that (a target that needs its own copy clones it);
                // a copy when this try's deadline is written into it.
                let mut req_parts = if last {
                    forward::Head::Last(&mut *parts)
                } else {
                    forward::Head::Lent(&*parts)
                };
                if incoming.is_some() {
                    if let Some(t) = &total {
                        let remaining = t
                            .at()
                            .saturating_duration_since(tokio::time::Instant::now());
                        // Less than a millisecond would go out as `0`, which some
                        // services read as "no deadline": fail here instead.
                        if remaining < std::time::Duration::from_millis(1) {
                            return local_error(
                                ProxyError::timeout(
                                    "the caller's deadline passed before the request was sent",
                                ),
                                &request_id,
                                done,
                            );
                        }
                        deadline::propagate(&mut req_parts.to_mut().headers, remaining);
                    }
                }
                let out_body = match (&kept, body.take()) {
                    (Some(b), _) if b.is_empty() => OutboundBody::empty(),
                    (Some(b), _) => OutboundBody::Full(Some(b.clone())),
                    (None, Some(stream)) if web == Some(GrpcKind::WebText) => {
                        OutboundBody::base64(stream, counter.clone())
                    }
                    (None, Some(stream)) => {
                        OutboundBody::stream(stream, counter.clone(), body_limit, body_idle)
                    }
                    (None, None) => OutboundBody::empty(),
                };

                let permit = match &set.breaker {
                    Some(b) => match b.try_request() {
                        Ok(p) => Some(p),
                        Err(o) => {
                            set.overflow(o);
                            return local_error(
                                ProxyError::circuit_open(&set.name, o.as_str()),
                                &request_id,
                                done,
                            );
                        }
                    },
                    None => None,
                };
                target.in_flight.fetch_add(1, Ordering::Relaxed);
                let mut per_try = policies.per_try.map(|p| {
                    let mut at = tokio::time::Instant::now() + p;
                    if let Some(t) = &total {
                        at = at.min(t.at());
                    }
                    Deadline::new(at, None)
                });
                let sent = Instant::now();
                let result = {
                    let deadline = if per_try.is_some() {
                        &mut per_try
                    } else {
                        &mut total
                    };
                    forward::send(
                        Some(&done.ctx),
                        set,
                        &target,
                        req_parts,
                        out_body,
                        route.connect_timeout,
                        deadline,
                    )
                    .await
                };
                let elapsed = sent.elapsed();
                let now = sent + elapsed;

                // What happened, for outlier detection and the retry decision.
                let outcome = match &result {
                    Ok(exchange) => {
                        let status = exchange.response.status().as_u16();
                        set.observe(
                            index,
                            if status >= 500 {
                                Observation::Status5xx
                            } else {
                                Observation::Success
                            },
                            now,
                        );
                        Outcome::Status(status)
                    }
                    Err(e) => match e.code {
                        "upstream_connect_failed" => {
                            set.observe(index, Observation::ConnectFailure, now);
                            Outcome::ConnectFailure
                        }
                        "upstream_reset" => {
                            set.observe(index, Observation::Reset, now);
                            Outcome::Reset
                        }
                        // Only the try's own deadline can be retried; once the
                        // request's deadline has passed there is nothing left.
                        "upstream_timeout" if !expired(&total) => {
                            // The target missed the try's deadline: as slow as a
                            // 504, for outlier detection. A request deadline that
                            // the client chose short is not held against it.
                            set.observe(index, Observation::Status5xx, now);
                            Outcome::Timeout
                        }
                        _ => {
                            target.in_flight.fetch_sub(1, Ordering::Relaxed);
                            if e.code == "body_too_large" || e.code == "body_idle_timeout" {
                                tracing::debug!(client = %done.ctx.client, route = %route.name, reason = e.code, "request body refused");
                                done.ctx.state.metrics.rejected(e.code);
                            }
                            return finish_error(result, &target, elapsed, request_id, done);
                        }
                    },
                };
                let again = !last
                    && retry.is_some_and(|r| r.should_retry(attempt, &outcome))
                    && match &policies.budget {
                        Some(b) if b.try_withdraw(policies.now_at(now)) => true,
                        Some(_) => {
                            policies.metrics.retry_budget_exhausted.inc();
                            false
                        }
                        None => true,
                    };
                if !again {
                    return match result {
                        Ok(exchange) => {
                            match done.trace.as_ref().and_then(|t| t.exemplar()) {
                                Some((trace, span)) => set
                                    .metrics
                                    .response_duration
                                    .observe_traced(elapsed, trace, span),
                                None => set.metrics.response_duration.observe(elapsed),
                            }
                            let mut response = exchange.response;
                            if websocket && response.status() == StatusCode::SWITCHING_PROTOCOLS {
                                let (rparts, rbody) = response.into_parts();
                                let Some(rbody) = rbody.into_hyper() else {
                                    return local_error(
                                    ProxyError::reset(
                                        "the upgrade was not answered on an upgradeable connection",
                                    ),
                                    &request_id,
                                    done,
                                );
                                };
                                let response = Response::from_parts(rparts, rbody);
                                // The upgraded connection belongs to the tunnel:
                                // never cached or pooled.
                                done.upstream = Some(UpstreamUse {
                                    target,
                                    conn: None,
                                    elapsed,
                                    permit,
                                });
                                return match upgrade.take() {
                                    Some(client) => websocket::open(
                                        response,
                                        client,
                                        route,
                                        &policies.websocket,
                                        rate.as_ref(),
                                        &request_id,
                                        done,
                                    ),
                                    None => local_error(
                                        ProxyError::reset(
                                            "the client connection cannot be upgraded",
                                        ),
                                        &request_id,
                                        done,
                                    ),
                                };
                            }
                            forward::prepare_response(&mut response, route, &request_id);
                            if let Some(rate) = &rate {
                                rate.apply(response.headers_mut());
                            }
                            let mut encoder = None;
                            if let Some(kind) = done.grpc {
                                // A trailers-only answer: the status is in the head.
                                done.grpc_status = grpc::status(response.headers());
                                if kind.is_web() {
                                    if web.is_some()
                                        && grpc_web::response_head(response.headers_mut(), kind)
                                    {
                                        encoder = Some(grpc_web::WebEncoder::new(kind));
                                    } else if done.grpc_status.is_none() {
                                        // gRPC-Web passed through: its status is in
                                        // the body, which weir does not parse.
                                        done.grpc = None;
                                    }
                                }
                            }
                            done.upstream = Some(UpstreamUse {
                                target,
                                conn: None,
                                elapsed,
                                permit,
                            });
                            done.status = response.status();
                            let (rparts, rbody) = response.into_parts();
                            let mut body = ResponseBody::upstream(rbody, total, policies.idle);
                            match (done.grpc, encoder) {
                                (_, Some(encoder)) => body.grpc(Some(encoder)),
                                (Some(GrpcKind::Grpc), None) => body.grpc(None),
                                _ => {}
                            }
                            body.on_complete(done);
                            Response::from_parts(rparts, body)
                        }
                        Err(_) => {
                            target.in_flight.fetch_sub(1, Ordering::Relaxed);
                            finish_error(result, &target, elapsed, request_id, done)
                        }
                    };
                }

                // Retry: release this try, wait, and pick a target not tried yet.
                target.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
                drop(result);
            }
            policies.metrics.retries.inc();
            tried |= 1u64.checked_shl(index as u32).unwrap_or(0);
            let backoff = retry.map_or(Default::default(), |r| r.backoff(attempt, fastrand::f64()));
            if within(&mut total, tokio::time::sleep(backoff))
                .await
                .is_none()
            {
                return local_error(
                    ProxyError::timeout("the route's deadline passed while waiting to retry"),
                    &request_id,
                    done,
                );
            }
            attempt += 1;
            match set.pick(key, tried, Instant::now()) {
                Some((i, t)) => {
                    index = i;
                    target = t.clone();
                }
                None => {
                    return local_error(
                        ProxyError::no_healthy_upstream(&set.name),
                        &request_id,
                        done,
                    )
                }
            }
        }
    }
}

/// Ends a request whose last try failed, recording which target it was.
fn finish_error(
    result: Result<forward::Exchange, ProxyError>,
    target: &Arc<crate::upstream::Target>,
    elapsed: std::time::Duration,
    request_id: HeaderValue,
    mut done: Box<Completion>,
) -> Response<ResponseBody> {
    // The target's in-flight count was already released by the caller;
    // record it for the access log only.
    done.failed_target = Some((target.address.clone(), elapsed));
    match result {
        Err(e) => local_error(e, &request_id, done),
        Ok(_) => local_error(
            ProxyError::reset("the upstream exchange ended unexpectedly"),
            &request_id,
            done,
        ),
    }
}

fn expired(total: &Option<Deadline>) -> bool {
    total
        .as_ref()
        .is_some_and(|t| t.at() <= tokio::time::Instant::now())
}

/// Reads the request body into memory when it is known to be at most
/// `limit` bytes (no body at all, or a `Content-Length` within it). Leaves
/// `body` in place and returns None otherwise, so it can still be streamed.
async fn read_small_body(
    body: &mut Option<Incoming>,
    parts: &Parts,
    limit: usize,
    total: &mut Option<Deadline>,
) -> Result<Option<Bytes>, ProxyError> {
    let Some(incoming) = body.as_ref() else {
        return Ok(None);
    };
    if hyper::body::Body::is_end_stream(incoming) {
        *body = None;
        return Ok(Some(Bytes::new()));
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n <= limit as u64 => {}
        _ => return Ok(None),
    }
    let Some(incoming) = body.take() else {
        return Ok(None);
    };
    match within(total, Limited::new(incoming, limit).collect()).await {
        None => Err(ProxyError::timeout(
            "the route's deadline passed while reading the request body",
        )),
        Some(Ok(collected)) => Ok(Some(collected.to_bytes())),
        Some(Err(e)) => Err(ProxyError::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
    }
}
