//! Governance policies: the blocks a route or an upstream may carry to protect
//! the services behind weir (retries and their budget, rate limits, fault
//! injection, mirroring, health checks, outlier detection, circuit breaking),
//! plus the shared Redis connection used by `backend: redis` rate limits.
//!
//! Every block is optional; when absent the policy is off. Defaults follow
//! what Envoy and NGINX users expect and are listed in `docs/configuration.md`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{ByteSize, Duration};

// === Numbers that are not integers ===

/// A real number, compared by value. The configuration model derives `Eq`
/// (configs are compared to detect changes), which `f64` alone cannot.
#[derive(Clone, Copy, Debug, Default, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Number(pub f64);

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Number {}

impl Number {
    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

// === Upstream policies ===

/// Active health checks of an upstream's targets.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (default), `tcp` (a successful connect is healthy) or `grpc`
    /// (the gRPC health protocol).
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// Service asked about by gRPC checks (`grpc.health.v1.Health/Check`).
    /// Default `""`: the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Path requested by HTTP checks. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Host` header of HTTP checks. Default: the target's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Time between checks of one target. Default `5s`.
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    /// Time one check may take. Default `1s`.
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy target back. Default 2.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a target out. Default 3.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Statuses that pass an HTTP check: codes (`200`) or ranges
    /// (`200-299`). Default `[200-299]`.
    #[serde(default = "default_expected_status")]
    pub expected_status: Vec<StatusRange>,
}

/// How a target is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP/1.1 `GET` whose status must be in `expected_status`.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// A `grpc.health.v1.Health/Check` call over HTTP/2 (h2c, or h2 on a
    /// TLS upstream); healthy when the answer is `SERVING`. Needs an
    /// upstream with `protocol: h2c` or `h2`.
    Grpc,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_expected_status() -> Vec<StatusRange> {
    vec![StatusRange {
        low: 200,
        high: 299,
    }]
}

/// An inclusive range of HTTP status codes, written `200-299` or `204`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest code in the range.
    pub low: u16,
    /// Highest code in the range.
    pub high: u16,
}

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid status {s:?} (expected a code like 200 or a range like 200-299)");
        let code = |t: &str| t.trim().parse::<u16>().map_err(|_| bad());
        match s.split_once('-') {
            Some((low, high)) => Ok(StatusRange {
                low: code(low)?,
                high: code(high)?,
            }),
            None => {
                let c = code(s)?;
                Ok(StatusRange { low: c, high: c })
            }
        }
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrText::<StatusRange>::new("a status code or range"))
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.low == self.high {
            s.serialize_u16(self.low)
        } else {
            s.collect_str(self)
        }
    }
}

/// Passive outlier detection: targets that fail real requests are ejected
/// from the rotation for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (or resets) that eject a target. `0` turns
    /// this rule off. Default 5.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive failed connects that eject a target. `0` turns this rule
    /// off. Default 3.
    #[serde(default = "default_consecutive_connect_failures")]
    pub consecutive_connect_failures: u32,
    /// Ejection time; the n-th ejection of a target lasts n times this.
    /// Default `30s`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: Duration,
    /// Most targets ejected at once, as a percentage of all targets.
    /// Default 50.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_consecutive_connect_failures() -> u32 {
    3
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// Circuit breaking: caps on what one upstream may hold at once; requests
/// beyond them fail fast with `503 circuit_open` instead of queueing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open connections to all targets together. Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests waiting for a new connection to open. Default 256.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Requests in flight to all targets together. Default 1024.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
}

fn default_max_connections() -> usize {
    1024
}
fn default_max_pending() -> usize {
    256
}
fn default_max_requests() -> usize {
    1024
}

// === Route policies ===

/// Retries of failed attempts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Most tries in all, the first one included (`1` = no retry). Default 2.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Failures that are retried. Default
    /// `[connect_failure, reset, 502, 503, 504]`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Deadline of each try. Default: the route's `timeouts.per_try`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Wait between tries.
    #[serde(default)]
    pub backoff: Backoff,
    /// Cap on retries as a share of requests.
    #[serde(default)]
    pub budget: RetryBudget,
    /// Request bodies up to this size are kept so a retry can resend them;
    /// larger bodies are streamed and never retried. Default `64KiB`.
    #[serde(default = "default_retry_max_body")]
    pub max_body: ByteSize,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
    ]
}
fn default_retry_max_body() -> ByteSize {
    ByteSize(64 * 1024)
}

/// A failure a retry may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// No connection could be opened.
    ConnectFailure,
    /// The target closed or reset the connection before a whole response.
    Reset,
    /// The try's deadline (`per_try_timeout`) passed.
    Timeout,
    /// Any 5xx response.
    Status5xx,
    /// This response status.
    Status(u16),
}

impl FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connect_failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "timeout" => Ok(RetryOn::Timeout),
            "5xx" => Ok(RetryOn::Status5xx),
            _ => s.parse::<u16>().map(RetryOn::Status).map_err(|_| {
                format!(
                    "invalid retry condition {s:?} (expected connect_failure, reset, timeout, 5xx or a status code)"
                )
            }),
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect_failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::Timeout => f.write_str("timeout"),
            RetryOn::Status5xx => f.write_str("5xx"),
            RetryOn::Status(c) => write!(f, "{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrText::<RetryOn>::new("a retry condition"))
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(c) => s.serialize_u16(*c),
            other => s.collect_str(other),
        }
    }
}

/// Exponential backoff with full jitter between tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Upper bound of the first wait. Default `25ms`.
    #[serde(default = "default_backoff_base")]
    pub base: Duration,
    /// Upper bound of any wait. Default `250ms`.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

/// Retries allowed over a sliding 10-second window: `min_per_second` per
/// second plus `ratio` times the requests seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries per request allowed on top of the minimum (0-1). Default 0.2.
    #[serde(default = "default_budget_ratio")]
    pub ratio: Number,
    /// Retries per second always allowed. Default 10.
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
        }
    }
}

fn default_budget_ratio() -> Number {
    Number(0.2)
}
fn default_budget_min() -> u32 {
    10
}

/// A rate limit on a route.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per `per`, steady state.
    pub requests: u64,
    /// The period. Default `1s`.
    #[serde(default = "default_rate_per")]
    pub per: Duration,
    /// Extra requests a key may make back to back on top of `requests`.
    /// Default 0.
    #[serde(default)]
    pub burst: u64,
    /// Who shares a limit: `client_ip` (default), `header:NAME` or `route`.
    #[serde(default)]
    pub key: RateKey,
    /// Where counters live: `local` (this process, default) or `redis`
    /// (shared by every weir using the same Redis).
    #[serde(default)]
    pub backend: RateBackend,
    /// What happens when Redis cannot answer: `allow` (default) or `deny`.
    #[serde(default)]
    pub on_backend_error: OnBackendError,
}

fn default_rate_per() -> Duration {
    Duration::from_secs(1)
}

/// What a rate limit counts per.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client's IP address.
    #[default]
    ClientIp,
    /// The value of a request header (lower-cased name); requests without
    /// it share one bucket.
    Header(String),
    /// The whole route shares one limit.
    Route,
}

impl FromStr for RateKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client_ip" => Ok(RateKey::ClientIp),
            "route" => Ok(RateKey::Route),
            _ => match s.split_once(':') {
                Some(("header", name)) if !name.is_empty() => {
                    Ok(RateKey::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "invalid rate limit key {s:?} (expected client_ip, header:NAME or route)"
                )),
            },
        }
    }
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateKey::ClientIp => f.write_str("client_ip"),
            RateKey::Header(n) => write!(f, "header:{n}"),
            RateKey::Route => f.write_str("route"),
        }
    }
}

impl<'de> Deserialize<'de> for RateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for RateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where rate-limit counters live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateBackend {
    /// In this process's memory.
    #[default]
    Local,
    /// In the Redis server of the top-level `redis` block.
    Redis,
}

/// The decision when the rate-limit backend cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Let the request through (logged and counted).
    #[default]
    Allow,
    /// Reject it with 429.
    Deny,
}

/// Faults injected on purpose, for chaos drills.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay some requests before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer some requests with an error instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests carrying this header are affected. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// An injected delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    pub duration: Duration,
    /// Share of requests delayed, 0-100. Default 100.
    #[serde(default = "default_percent")]
    pub percent: Number,
}

/// An injected error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Status sent (400-599).
    pub status: u16,
    /// Share of requests aborted, 0-100. Default 100.
    #[serde(default = "default_percent")]
    pub percent: Number,
}

fn default_percent() -> Number {
    Number(100.0)
}

/// Traffic mirroring: a copy of some requests goes to a shadow upstream,
/// fire and forget.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The shadow upstream.
    pub upstream: String,
    /// Share of requests mirrored, 0-100. Default 100.
    #[serde(default = "default_percent")]
    pub percent: Number,
    /// Requests with a larger body are not mirrored. Default `64KiB`.
    #[serde(default = "default_retry_max_body")]
    pub max_body: ByteSize,
    /// Shadow requests in flight at once for this route; beyond it copies
    /// are dropped (and counted). Default 64.
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
    /// Deadline of a shadow request. Default `5s`.
    #[serde(default = "default_mirror_timeout")]
    pub timeout: Duration,
}

fn default_mirror_in_flight() -> usize {
    64
}
fn default_mirror_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One side of a weighted split (`routes[].upstreams`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstream {
    /// Upstream name.
    pub name: String,
    /// Relative share of requests (0-10000; 0 takes no new traffic).
    pub weight: u32,
}

/// What keeps a user on one side of a split: `header:NAME` or `cookie:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sticky {
    /// The value of a request header (lower-cased name).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
}

impl FromStr for Sticky {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("header", name)) if !name.is_empty() => {
                Ok(Sticky::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if !name.is_empty() => Ok(Sticky::Cookie(name.to_owned())),
            _ => Err(format!(
                "invalid sticky {s:?} (expected header:NAME or cookie:NAME)"
            )),
        }
    }
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Header(n) => write!(f, "header:{n}"),
            Sticky::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Sticky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Sticky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The Redis server shared by `backend: redis` rate limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// Time one Redis call may take before `on_backend_error` decides.
    /// Default `100ms`.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}

// === Helpers ===

/// Deserializes a value written either as a number or as text, through its
/// `FromStr` (so `503` and `"503"` and `5xx` all work).
struct IntOrText<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> IntOrText<T> {
    fn new(expecting: &'static str) -> Self {
        IntOrText {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err = String>> Visitor<'_> for IntOrText<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}
