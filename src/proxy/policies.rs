//! `RoutePolicies`: one route's governance settings compiled from the
//! configuration (retry policy and budget, rate limiter, faults, mirroring,
//! per-try and idle timeouts) together with their counters. Built with the
//! snapshot; the request path only reads it and calls into `policy`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};
use weir_config::{OnBackendError, RateBackend, RateKey, Route};

use crate::observe::metrics::{Metrics, RoutePolicyMetrics, WebSocketMetrics};
use crate::policy::fault::FaultPolicy;
use crate::policy::rate_limit::{self, LocalLimiter, RateSpec};
use crate::policy::retry::{RetryBudget, RetryPolicy};
use crate::store::redis::RedisLimiter;

/// A backend that keeps failing is reported at most this often per route.
const BACKEND_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The governance of one route.
#[derive(Debug)]
pub struct RoutePolicies {
    /// Retries, when configured.
    pub retry: Option<RetryPolicy>,
    /// The retry budget, when retries are configured (shared with the
    /// route's next snapshot when its budget settings do not change).
    pub budget: Option<Arc<RetryBudget>>,
    /// Deadline of each try (`retry.per_try_timeout`, else `timeouts.per_try`).
    pub per_try: Option<Duration>,
    /// Longest silence while the response streams (`timeouts.idle`).
    pub idle: Option<Duration>,
    /// The rate limit, when configured.
    pub rate_limit: Option<RateLimiter>,
    /// Injected faults, when configured.
    pub fault: Option<FaultPolicy>,
    /// Traffic mirroring, when configured.
    pub mirror: Option<MirrorPolicy>,
    /// WebSocket settings and handles.
    pub websocket: WebSocketPolicy,
    /// Counters.
    pub metrics: RoutePolicyMetrics,
    origin: Instant,
}

/// A route's rate limit: where it counts, what it counts per, and the
/// `RateLimit-Policy` header it advertises.
#[derive(Debug)]
pub struct RateLimiter {
    /// Steady rate and burst.
    pub spec: RateSpec,
    /// What requests share a bucket.
    pub key: RateKey,
    /// `RateLimit-Policy` value, computed once.
    pub policy_header: HeaderValue,
    /// The decision when Redis cannot answer.
    pub on_backend_error: OnBackendError,
    /// Where buckets live.
    pub backend: Backend,
    /// Prefix of Redis keys: `weir:rl:<route>:`.
    pub key_prefix: String,
    last_error_log: AtomicU64,
}

/// Where a rate limit's buckets live.
#[derive(Debug)]
pub enum Backend {
    /// In this process (shared with the route's next snapshot while its
    /// limit does not change, so a reload keeps the buckets).
    Local(Arc<LocalLimiter>),
    /// In Redis, shared with every weir using it.
    Redis(Arc<RedisLimiter>),
}

/// A route's mirroring settings and its in-flight count.
#[derive(Debug)]
pub struct MirrorPolicy {
    /// Index of the shadow upstream in the snapshot.
    pub upstream_index: usize,
    /// Share of requests mirrored, 0-100.
    pub percent: f64,
    /// Larger bodies are not mirrored.
    pub max_body: usize,
    /// Most shadow requests in flight.
    pub max_in_flight: usize,
    /// Deadline of one shadow request.
    pub timeout: Duration,
    /// Shadow requests in flight now.
    pub in_flight: Arc<AtomicUsize>,
}

/// A route's WebSocket settings (`websocket`, `websocket_idle_timeout`).
#[derive(Debug)]
pub struct WebSocketPolicy {
    /// Whether upgrades are proxied.
    pub allowed: bool,
    /// Longest silence in both directions before weir closes the tunnel.
    pub idle_timeout: Option<Duration>,
    /// Active gauge and upgrade counters.
    pub metrics: WebSocketMetrics,
}

/// Why a route's policies could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyBuildError {
    /// `rate_limit.backend: redis` without a usable `redis` block.
    #[error("route {route:?}: rate_limit.backend is redis but {why}")]
    Redis {
        /// The route.
        route: String,
        /// What is missing or wrong.
        why: String,
    },
    /// A configured value the runtime cannot represent.
    #[error("route {route:?}: {why}")]
    Invalid {
        /// The route.
        route: String,
        /// What is wrong.
        why: String,
    },
}

// === impl RoutePolicies ===

impl RoutePolicies {
    /// Compiles `route`'s policies. `upstream_index` resolves an upstream
    /// name; `redis` is the process's Redis client, when configured.
    /// `previous` is the same-named route of the snapshot being replaced,
    /// with its configuration: its rate-limit buckets, retry budget and
    /// mirror counter carry over when their settings are unchanged.
    pub fn build(
        route: &Route,
        upstream_index: impl Fn(&str) -> Option<usize>,
        redis: Option<&Arc<RedisLimiter>>,
        metrics: &Metrics,
        previous: Option<(&Route, &RoutePolicies)>,
    ) -> Result<RoutePolicies, PolicyBuildError> {
        let name = route.name.as_str();
        let invalid = |why: String| PolicyBuildError::Invalid {
            route: name.to_owned(),
            why,
        };
        let retry = route.retry.as_ref();
        let per_try = retry
            .and_then(|r| r.per_try_timeout)
            .or(route.timeouts.per_try)
            .map(|d| d.get());
        let rate_limit = match &route.rate_limit {
            None => None,
            Some(rl) => {
                let spec = RateSpec {
                    requests: rl.requests,
                    per: rl.per.get(),
                    burst: rl.burst,
                };
                let kept = previous.and_then(|(cfg, p)| match &p.rate_limit {
                    Some(RateLimiter {
                        backend: Backend::Local(local),
                        ..
                    }) if cfg.rate_limit.as_ref() == Some(rl) => Some(local.clone()),
                    _ => None,
                });
                let backend = match rl.backend {
                    RateBackend::Local => {
                        Backend::Local(kept.unwrap_or_else(|| Arc::new(LocalLimiter::new(spec))))
                    }
                    RateBackend::Redis => match redis {
                        Some(r) => Backend::Redis(r.clone()),
                        None => {
                            return Err(PolicyBuildError::Redis {
                                route: name.to_owned(),
                                why: "there is no top-level redis block".into(),
                            })
                        }
                    },
                };
                Some(RateLimiter {
                    spec,
                    key: rl.key.clone(),
                    policy_header: rate_limit::policy_header(&spec),
                    on_backend_error: rl.on_backend_error,
                    backend,
                    key_prefix: format!("weir:rl:{name}:"),
                    last_error_log: AtomicU64::new(0),
                })
            }
        };
        let fault = match &route.fault {
            None => None,
            Some(f) => {
                let abort = match f.abort {
                    None => None,
                    Some(a) => Some((
                        StatusCode::from_u16(a.status)
                            .map_err(|_| invalid(format!("invalid fault status {}", a.status)))?,
                        a.percent.get(),
                    )),
                };
                let header = match &f.header {
                    None => None,
                    Some(h) => Some(
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| invalid(format!("invalid fault header {h:?}")))?,
                    ),
                };
                Some(FaultPolicy::new(
                    f.delay.map(|d| (d.duration.get(), d.percent.get())),
                    abort,
                    header,
                ))
            }
        };
        let mirror = match &route.mirror {
            None => None,
            Some(m) => Some(MirrorPolicy {
                upstream_index: upstream_index(&m.upstream)
                    .ok_or_else(|| invalid(format!("unknown mirror upstream {:?}", m.upstream)))?,
                percent: m.percent.get(),
                max_body: usize::try_from(m.max_body.bytes()).unwrap_or(usize::MAX),
                max_in_flight: m.max_in_flight,
                timeout: m.timeout.get(),
                // In-flight copies stay counted across a reload.
                in_flight: previous
                    .and_then(|(_, p)| p.mirror.as_ref())
                    .map_or_else(|| Arc::new(AtomicUsize::new(0)), |m| m.in_flight.clone()),
            }),
        };
        Ok(RoutePolicies {
            retry: retry.map(RetryPolicy::from_config),
            budget: retry.map(|r| {
                let kept = previous.and_then(|(cfg, p)| {
                    let same = cfg.retry.as_ref().map(|c| c.budget) == Some(r.budget);
                    p.budget.clone().filter(|_| same)
                });
                kept.unwrap_or_else(|| Arc::new(RetryBudget::from_config(&r.budget)))
            }),
            per_try,
            idle: route.timeouts.idle.map(|d| d.get()),
            rate_limit,
            fault,
            mirror,
            websocket: WebSocketPolicy {
                allowed: route.websocket,
                idle_timeout: route.websocket_idle_timeout.map(|d| d.get()),
                metrics: metrics.route_websocket(name),
            },
            metrics: metrics.route_policy(name),
            origin: Instant::now(),
        })
    }

    /// Time since this route's policies were built: the `now` its policies
    /// count in.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// `at` on this route's policy clock (a request reads the clock once).
    pub fn now_at(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }
}

/// Every few seconds, forgets rate-limit keys whose allowance is whole
/// again, so memory follows the number of active clients. Ends with the
/// gateway.
pub async fn maintain_policies(state: std::sync::Weak<crate::state::State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let snapshot = state.snapshot.load_full();
        drop(state);
        for p in &snapshot.route_policies {
            if let Some(RateLimiter {
                backend: Backend::Local(local),
                ..
            }) = &p.rate_limit
            {
                local.sweep(p.now());
            }
        }
    }
}

// === impl RateLimiter ===

impl RateLimiter {
    /// Whether a backend error should be logged now (at most once per
    /// interval per route, so a dead Redis does not flood the log).
    pub fn should_log_error(&self, now: Duration) -> bool {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_error_log.load(Ordering::Relaxed);
        let interval = BACKEND_ERROR_LOG_INTERVAL.as_millis() as u64;
        (last == 0 || now_ms.saturating_sub(last) >= interval)
            && self
                .last_error_log
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
