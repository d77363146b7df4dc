//! Traffic mirroring: a copy of a request goes to a shadow upstream, fire and
//! forget. The client's response never waits for the shadow or depends on
//! it; the copy runs on its own task with its own deadline, bounded in number
//! per route, and is dropped (and counted) when the bound is reached. Copies
//! carry `x-weir-mirror: 1`, and a request that already carries it is never
//! mirrored again, so two gateways mirroring to each other cannot loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Uri, Version};
use http_body_util::BodyExt;
use weir_config::UpstreamProtocol;

use super::forward;
use super::policies::MirrorPolicy;
use crate::observe::metrics::RoutePolicyMetrics;
use crate::upstream::{OutboundBody, UpstreamSet};

/// The loop guard header.
pub static X_WEIR_MIRROR: HeaderName = HeaderName::from_static("x-weir-mirror");
/// Most of a shadow response body read (and discarded) before giving up on
/// reusing its connection.
const MAX_DRAIN: usize = 1 << 20;

/// Whether this request is mirrored: it is not a mirror copy itself, and
/// the route's percentage roll says yes.
pub fn selected(policy: &MirrorPolicy, headers: &HeaderMap) -> bool {
    if policy.percent <= 0.0 || headers.contains_key(&X_WEIR_MIRROR) {
        return false;
    }
    policy.percent >= 100.0 || fastrand::f64() * 100.0 < policy.percent
}

/// Sends a copy of the request (`parts` as prepared for the primary
/// upstream, and its whole body) to the shadow upstream on a task of its
/// own. Returns at once.
pub fn send(
    policy: &MirrorPolicy,
    shadow: Option<Arc<UpstreamSet>>,
    parts: &Parts,
    body: Bytes,
    metrics: &RoutePolicyMetrics,
) {
    let Some(set) = shadow else {
        metrics.mirror_dropped.inc();
        return;
    };
    let Some(slot) = Slot::take(&policy.in_flight, policy.max_in_flight) else {
        metrics.mirror_dropped.inc();
        return;
    };
    let Some(req) = copy(parts, body, set.protocol) else {
        metrics.mirror_dropped.inc();
        return;
    };
    metrics.mirror_sent.inc();
    let failed = metrics.mirror_failed.clone();
    let timeout = policy.timeout;
    tokio::spawn(async move {
        let _slot = slot;
        let result = tokio::time::timeout(timeout, exchange(&set, req, timeout)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                failed.inc();
                tracing::debug!(upstream = %set.name, error = %why, "shadow request failed");
            }
            Err(_) => {
                failed.inc();
                tracing::debug!(upstream = %set.name, "shadow request timed out");
            }
        }
    });
}

/// One shadow exchange: pick a target, send, read the response to its end.
async fn exchange(
    set: &UpstreamSet,
    req: Request<OutboundBody>,
    connect_timeout: std::time::Duration,
) -> Result<(), String> {
    let (_, target) = set
        .pick(None, 0, std::time::Instant::now())
        .ok_or_else(|| "no available target".to_owned())?;
    let target = target.clone();
    let _permit = match &set.breaker {
        Some(b) => Some(b.try_request().map_err(|o| {
            set.overflow(o);
            format!("circuit breaker at {}", o.as_str())
        })?),
        None => None,
    };
    target.in_flight.fetch_add(1, Ordering::Relaxed);
    let (mut parts, body) = req.into_parts();
    let result = forward::send(
        None,
        set,
        &target,
        forward::Head::Last(&mut parts),
        body,
        connect_timeout,
        &mut None,
    )
    .await;
    let outcome = match result {
        Err(e) => Err(e.detail),
        Ok(exchange) => {
            let mut body = exchange.response.into_body();
            let mut read = 0usize;
            let mut complete = false;
            while read <= MAX_DRAIN {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        read += frame.data_ref().map_or(0, Bytes::len);
                    }
                    Some(Err(e)) => return finish(&target, Err(e.to_string())),
                    None => {
                        complete = true;
                        break;
                    }
                }
            }
            if complete {
                if let Some(conn) = body.take_reusable() {
                    target.http1.checkin(conn);
                }
            }
            Ok(())
        }
    };
    finish(&target, outcome)
}

fn finish(target: &crate::upstream::Target, outcome: Result<(), String>) -> Result<(), String> {
    target.in_flight.fetch_sub(1, Ordering::Relaxed);
    outcome
}

/// The copy sent to the shadow, in the shadow's protocol.
fn copy(parts: &Parts, body: Bytes, protocol: UpstreamProtocol) -> Option<Request<OutboundBody>> {
    let mut req = Request::new(if body.is_empty() {
        OutboundBody::empty()
    } else {
        OutboundBody::Full(Some(body))
    });
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut()
        .insert(X_WEIR_MIRROR.clone(), HeaderValue::from_static("1"));
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    match protocol {
        UpstreamProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::try_from(pq).ok()?;
            if let Some(a) = authority {
                let host = HeaderValue::from_str(&a).ok()?;
                req.headers_mut().insert(header::HOST, host);
            }
        }
        protocol @ (UpstreamProtocol::H2c | UpstreamProtocol::H2) => {
            *req.version_mut() = Version::HTTP_2;
            let authority = authority.unwrap_or_else(|| "localhost".to_owned());
            *req.uri_mut() = Uri::builder()
                .scheme(super::forward::scheme(protocol))
                .authority(authority)
                .path_and_query(pq)
                .build()
                .ok()?;
            req.headers_mut().remove(header::HOST);
        }
    }
    Some(req)
}

/// One of a route's shadow request slots, released on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
