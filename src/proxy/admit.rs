//! The admit stage: what a matched request must pass before weir picks an
//! upstream for it. Injected faults first (a chaos drill's delay or error),
//! then the route's rate limit. The decisions themselves are in `policy`;
//! this stage asks, waits where a decision says so, and counts.

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use std::time::Duration;

use super::conn::ConnCtx;
use super::deadline::{within, Deadline};
use super::error::ProxyError;
use super::policies::{Backend, RateLimiter, RoutePolicies};
use crate::policy::rate_limit::{key_hash, RateDecision, RATELIMIT, RATELIMIT_POLICY};
use weir_config::{OnBackendError, RateKey};

/// Headers a rate-limited route adds to its responses. It borrows the
/// route's policy value rather than cloning it: it is kept for the whole
/// exchange, and a clone would be one more shared count to raise and drop
/// per request.
#[derive(Debug)]
pub struct RateHeaders<'a> {
    policy: &'a HeaderValue,
    decision: RateDecision,
}

impl RateHeaders<'_> {
    /// Adds `RateLimit-Policy`, `RateLimit` and, on a refusal, `Retry-After`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        headers.insert(RATELIMIT.clone(), self.decision.header());
        if !self.decision.allowed {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(self.decision.retry_after_secs()),
            );
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug)]
pub struct Refusal<'a> {
    /// The error response to send.
    pub error: ProxyError,
    /// Rate-limit headers to add to it.
    pub rate: Option<RateHeaders<'a>>,
}

/// Whom a request counts against when a route limits by client address.
pub enum Client<'a> {
    /// The connection's peer: the local limiter uses the key hash the
    /// connection keeps.
    Peer(&'a ConnCtx),
    /// A client named by a trusted proxy's `X-Forwarded-For`, as text.
    Forwarded(&'a HeaderValue),
}

impl Client<'_> {
    /// The address as text (the Redis key, and the local key when forwarded).
    fn ip(&self) -> &HeaderValue {
        match self {
            Client::Peer(conn) => &conn.client_ip,
            Client::Forwarded(ip) => ip,
        }
    }
}

/// Runs the admit stage. `now` is the request's start on the route's policy
/// clock. `Ok` carries the rate-limit headers for the response when the
/// route is rate limited.
pub async fn admit<'p>(
    policies: &'p RoutePolicies,
    parts: &Parts,
    client: Client<'_>,
    deadline: &mut Option<Deadline>,
    now: Duration,
) -> Result<Option<RateHeaders<'p>>, Refusal<'p>> {
    if let Some(fault) = &policies.fault {
        let decision = fault.decide(&parts.headers, fastrand::f64);
        if let Some(delay) = decision.delay {
            policies.metrics.fault_delays.inc();
            if within(deadline, tokio::time::sleep(delay)).await.is_none() {
                return Err(Refusal {
                    error: ProxyError::timeout(
                        "the route's deadline passed during an injected delay",
                    ),
                    rate: None,
                });
            }
        }
        if let Some(status) = decision.abort {
            policies.metrics.fault_aborts.inc();
            return Err(Refusal {
                error: ProxyError::fault_injected(status),
                rate: None,
            });
        }
    }
    let Some(limiter) = &policies.rate_limit else {
        return Ok(None);
    };
    let decision = match decide(limiter, policies, parts, client, now).await {
        Some(d) => d,
        // The backend could not answer and the policy let the request through.
        None => return Ok(None),
    };
    judge(limiter, policies, decision)
}

/// The admit stage without waiting, for the common route: no injected
/// faults and an in-memory rate limit. `None` when the stage may have to
/// wait (a fault's delay, a Redis round trip): call [`admit`] then. The
/// answer is the same as `admit`'s; it only spares the request the
/// asynchronous call.
pub fn admit_now<'p>(
    policies: &'p RoutePolicies,
    parts: &Parts,
    client: &Client<'_>,
    now: Duration,
) -> Option<Result<Option<RateHeaders<'p>>, Refusal<'p>>> {
    if policies.fault.is_some() {
        return None;
    }
    let Some(limiter) = &policies.rate_limit else {
        return Some(Ok(None));
    };
    let Backend::Local(local) = &limiter.backend else {
        return None;
    };
    let decision = local.admit_hashed(local_key(limiter, parts, client), now);
    Some(judge(limiter, policies, decision))
}

/// Turns a limiter's decision into the stage's answer, counting refusals.
fn judge<'p>(
    limiter: &'p RateLimiter,
    policies: &RoutePolicies,
    decision: RateDecision,
) -> Result<Option<RateHeaders<'p>>, Refusal<'p>> {
    let headers = RateHeaders {
        policy: &limiter.policy_header,
        decision,
    };
    if decision.allowed {
        Ok(Some(headers))
    } else {
        policies.metrics.rate_limited.inc();
        Err(Refusal {
            error: ProxyError::rate_limited(format!(
                "the route's rate limit of {} requests per {} is spent; retry in {} s",
                limiter.spec.requests,
                weir_config::Duration(limiter.spec.per),
                decision.retry_after_secs()
            )),
            rate: Some(headers),
        })
    }
}

/// Asks the limiter. None when the backend failed and `on_backend_error`
/// allows the request; a refusal decision when it denies it.
async fn decide(
    limiter: &RateLimiter,
    policies: &RoutePolicies,
    parts: &Parts,
    client: Client<'_>,
    now: Duration,
) -> Option<RateDecision> {
    match &limiter.backend {
        Backend::Local(local) => Some(local.admit_hashed(local_key(limiter, parts, &client), now)),
        Backend::Redis(redis) => {
            let mut full = String::with_capacity(limiter.key_prefix.len() + 40);
            full.push_str(&limiter.key_prefix);
            if let Some(k) = key_bytes(limiter, parts, &client) {
                full.push_str(&String::from_utf8_lossy(k));
            }
            // Boxed: the Redis exchange is a large future, and every
            // request's state would otherwise carry its size.
            match Box::pin(redis.admit(&full, &limiter.spec)).await {
                Ok(d) => Some(d),
                Err(e) => {
                    let deny = limiter.on_backend_error == OnBackendError::Deny;
                    if deny {
                        policies.metrics.backend_errors_denied.inc();
                    } else {
                        policies.metrics.backend_errors_allowed.inc();
                    }
                    if limiter.should_log_error(policies.now()) {
                        tracing::warn!(
                            error = %e,
                            decision = if deny { "deny" } else { "allow" },
                            "rate limit backend unavailable; applying on_backend_error"
                        );
                    }
                    deny.then_some(RateDecision {
                        allowed: false,
                        remaining: 0,
                        reset: limiter.spec.per,
                        retry_after: std::time::Duration::from_secs(1),
                    })
                }
            }
        }
    }
}

/// The bytes a request is counted by: None for a route-wide limit.
fn key_bytes<'r>(
    limiter: &RateLimiter,
    parts: &'r Parts,
    client: &'r Client<'_>,
) -> Option<&'r [u8]> {
    match &limiter.key {
        RateKey::ClientIp => Some(client.ip().as_bytes()),
        // Requests without the header share one bucket: leaving them
        // unlimited would make the limit trivial to bypass.
        RateKey::Header(name) => Some(
            parts
                .headers
                .get(name.as_str())
                .map_or(&b""[..], |v| v.as_bytes()),
        ),
        RateKey::Route => None,
    }
}

/// The local limiter's bucket for a request. A connection's peer address is
/// hashed once per connection, not per request.
fn local_key(limiter: &RateLimiter, parts: &Parts, client: &Client<'_>) -> Option<u64> {
    match (&limiter.key, client) {
        (RateKey::ClientIp, Client::Peer(conn)) => Some(conn.client_key()),
        _ => key_bytes(limiter, parts, client).map(key_hash),
    }
}
