//! The Redis-backed rate limiter: one GCRA limit shared by every weir
//! instance that talks to the same Redis. This file owns the connection to
//! Redis (one multiplexed connection, reconnect with back-off), the Lua script
//! that makes each decision atomically on the server, and the operation
//! timeout. It must not decide what happens when Redis cannot answer: it
//! returns a [`StoreError`] quickly and the caller applies `on_backend_error`.
//! It must not build keys either: the caller passes the full key.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use tokio::time::{timeout_at, Instant};

use crate::policy::rate_limit::{RateDecision, RateSpec};

/// How long requests fail fast after a failed connection attempt before the
/// next attempt, so that a dead Redis costs requests a branch, not a connect.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Largest interval or tolerance sent to the script, in microseconds (about
/// 35 years). Lua numbers are doubles: the server clock plus this stays well
/// inside the 2^53 range where every integer is exact.
const MAX_MICROS: u64 = 1 << 50;

/// GCRA on the server's clock. KEYS[1] is the limiter key, ARGV[1] the
/// emission interval T and ARGV[2] the tolerance tau, both in microseconds.
/// Returns `{allowed (0|1), remaining, reset (µs), retry_after (µs)}`.
///
/// The TAT is written with `%.0f` because Lua 5.1 turns numbers into strings
/// with 14 significant digits, which would round a microsecond timestamp.
/// `redis.replicate_commands()` lets Redis 3.2-4 accept a write after `TIME`;
/// later servers replicate effects anyway.
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local ahead = next_tat - now
if ahead > tau then
  return {0, 0, tat - now, ahead - tau}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil(ahead / 1000))
return {1, math.floor((tau - ahead) / interval), ahead, 0}
";

/// Why the Redis store could not answer. The caller logs it, counts it by
/// [`StoreError::kind`], and falls back to its `on_backend_error` policy.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis URL cannot be parsed (construction only).
    #[error("invalid redis url: {0}")]
    InvalidUrl(String),
    /// Connecting failed, or the connection broke during the call.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// A recent connection attempt failed; no new attempt is made until the
    /// back-off ends, so this answer cost no I/O.
    #[error("redis is unavailable (waiting before reconnecting)")]
    Backoff,
    /// Redis did not answer within the operation timeout.
    #[error("redis did not answer in time")]
    Timeout,
    /// Redis answered with an error, or with a reply of the wrong shape.
    #[error("redis answered with an error: {0}")]
    Server(String),
}

/// A rate limiter whose state lives in Redis, so that every weir instance
/// using the same server and key shares one limit. Cheap to share behind an
/// `Arc`: all calls use one multiplexed connection.
pub struct RedisLimiter {
    client: Client,
    connect_config: AsyncConnectionConfig,
    timeout: Duration,
    script: Script,
    link: Link,
}

/// The shared connection and what we know about Redis's reachability.
struct Link {
    state: Mutex<LinkState>,
    // Held by the one call that is connecting; the others wait on it (within
    // their own timeout) instead of opening connections of their own.
    connecting: tokio::sync::Mutex<()>,
}

struct LinkState {
    conn: Option<MultiplexedConnection>,
    // Bumped on every new connection, so that a failure seen on an old
    // connection does not tear down its replacement.
    generation: u64,
    // While `conn` is None: no connection attempt before this instant.
    retry_at: Instant,
}

// === impl StoreError ===

impl StoreError {
    /// A short, stable name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::InvalidUrl(_) => "invalid_url",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Backoff => "backoff",
            StoreError::Timeout => "timeout",
            StoreError::Server(_) => "server",
        }
    }
}

// === impl RedisLimiter ===

impl RedisLimiter {
    /// A limiter for the Redis at `url` (`redis://host:port`,
    /// `redis://:password@host:port/db`), where every call takes at most
    /// `timeout`. Does no I/O: the connection opens on first use, so this
    /// succeeds while Redis is down. Fails only on a malformed URL.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLimiter, StoreError> {
        // The parser's message never contains the URL, so no password leaks.
        let client = Client::open(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        // One deadline per call (connect included) bounds everything; the
        // client's own timeouts would only race it with a different error.
        let connect_config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        Ok(RedisLimiter {
            client,
            connect_config,
            timeout,
            script: Script::new(GCRA_LUA),
            link: Link {
                state: Mutex::new(LinkState {
                    conn: None,
                    generation: 0,
                    retry_at: Instant::now(),
                }),
                connecting: tokio::sync::Mutex::new(()),
            },
        })
    }

    /// Decides one request for `key` under `spec`, on Redis's clock and with
    /// the same semantics as the in-process GCRA limiter. Answers within the
    /// timeout; any failure is an `Err` for the caller's fallback policy.
    /// A `spec` with `requests == 0` counts as `requests == 1`.
    pub async fn admit(&self, key: &str, spec: &RateSpec) -> Result<RateDecision, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let (mut conn, generation) = self.connection(deadline).await?;
        let (interval, tau) = gcra_params(spec);
        let mut call = self.script.key(key);
        call.arg(interval).arg(tau);
        let reply: (i64, i64, i64, i64) =
            match timeout_at(deadline, call.invoke_async(&mut conn)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => return Err(self.failed(generation, &e)),
                Err(_) => return Err(self.timed_out(generation)),
            };
        let (allowed, remaining, reset, retry_after) = reply;
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
            retry_after: micros(retry_after),
        })
    }

    /// Checks that Redis answers a `PING` within the timeout, connecting if
    /// needed. For readiness checks; honours the reconnect back-off.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.timeout;
        let (mut conn, generation) = self.connection(deadline).await?;
        let ping = redis::cmd("PING");
        match timeout_at(deadline, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed(generation, &e)),
            Err(_) => Err(self.timed_out(generation)),
        }
    }

    /// Whether a connection to Redis is open, as of the last call. A Redis
    /// that just died still counts as connected until a call notices.
    pub fn is_connected(&self) -> bool {
        self.link.state().conn.is_some()
    }

    /// The operation timeout this limiter was built with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The shared connection, opening it if none is open and the back-off
    /// allows a new attempt.
    async fn connection(
        &self,
        deadline: Instant,
    ) -> Result<(MultiplexedConnection, u64), StoreError> {
        if let Some(found) = self.link.current()? {
            return Ok(found);
        }
        let _connecting = timeout_at(deadline, self.link.connecting.lock())
            .await
            .map_err(|_| StoreError::Timeout)?;
        // Another call may have connected (or failed) while we waited.
        if let Some(found) = self.link.current()? {
            return Ok(found);
        }
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connect_config);
        match timeout_at(deadline, attempt).await {
            Ok(Ok(conn)) => Ok(self.link.set_conn(conn)),
            Ok(Err(e)) => {
                self.link.back_off();
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.link.back_off();
                Err(StoreError::Timeout)
            }
        }
    }

    /// Maps a failed call to an error, dropping the connection when the
    /// failure means it is broken. The next call reconnects at once: a
    /// restarted Redis is usually back by then, and if it is not, that
    /// attempt fails fast and starts the back-off.
    fn failed(&self, generation: u64, e: &RedisError) -> StoreError {
        if e.is_timeout() {
            self.timed_out(generation)
        } else if e.is_io_error() || e.is_unrecoverable_error() {
            self.link.drop_conn(generation, Duration::ZERO);
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Server(e.to_string())
        }
    }

    /// A call on an open connection ran out of time. A stalled or
    /// partitioned Redis looks exactly like this, so drop the connection and
    /// back off rather than make every request wait for the timeout.
    fn timed_out(&self, generation: u64) -> StoreError {
        self.link.drop_conn(generation, RECONNECT_BACKOFF);
        StoreError::Timeout
    }
}

impl fmt::Debug for RedisLimiter {
    // Hand-written so that the password in the URL never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisLimiter")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish()
    }
}

// === impl Link ===

impl Link {
    fn state(&self) -> MutexGuard<'_, LinkState> {
        // The lock is never held across a panic point; recover regardless.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open connection, `None` when a connection attempt is due, or
    /// `Err(Backoff)` while the back-off after a failed attempt runs.
    fn current(&self) -> Result<Option<(MultiplexedConnection, u64)>, StoreError> {
        let state = self.state();
        match &state.conn {
            Some(conn) => Ok(Some((conn.clone(), state.generation))),
            None if Instant::now() < state.retry_at => Err(StoreError::Backoff),
            None => Ok(None),
        }
    }

    fn set_conn(&self, conn: MultiplexedConnection) -> (MultiplexedConnection, u64) {
        let mut state = self.state();
        state.generation += 1;
        state.conn = Some(conn.clone());
        (conn, state.generation)
    }

    fn back_off(&self) {
        let mut state = self.state();
        state.conn = None;
        state.retry_at = Instant::now() + RECONNECT_BACKOFF;
    }

    /// Forgets connection `generation` if it is still the current one; the
    /// next attempt may start `after` from now.
    fn drop_conn(&self, generation: u64, after: Duration) {
        let mut state = self.state();
        if state.conn.is_some() && state.generation == generation {
            state.conn = None;
            state.retry_at = Instant::now() + after;
        }
    }
}

/// The GCRA emission interval T and tolerance tau for `spec`, in
/// microseconds: capacity C = requests + burst, T = per / requests,
/// tau = T * C. Both are at least 1 µs and at most [`MAX_MICROS`].
fn gcra_params(spec: &RateSpec) -> (u64, u64) {
    let requests = spec.requests.max(1);
    let capacity = requests.saturating_add(spec.burst);
    let per = u64::try_from(spec.per.as_micros()).unwrap_or(u64::MAX);
    let interval = (per / requests).clamp(1, MAX_MICROS);
    let tau = interval.saturating_mul(capacity).min(MAX_MICROS);
    (interval, tau)
}

/// A duration from the script's microseconds; negatives (never expected) are zero.
fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requests: u64, per_ms: u64, burst: u64) -> RateSpec {
        RateSpec {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }
    }

    #[test]
    fn params_follow_the_gcra_definitions() {
        // 10 per second with 5 burst: T = 100 ms, C = 15, tau = 1.5 s.
        assert_eq!(gcra_params(&spec(10, 1000, 5)), (100_000, 1_500_000));
    }

    #[test]
    fn params_stay_positive_and_bounded_for_extreme_specs() {
        assert_eq!(gcra_params(&spec(0, 1000, 0)), (1_000_000, 1_000_000));
        assert_eq!(gcra_params(&spec(1_000_000_000, 1, 0)).0, 1);
        let huge = RateSpec {
            requests: 1,
            per: Duration::MAX,
            burst: u64::MAX,
        };
        assert_eq!(gcra_params(&huge), (MAX_MICROS, MAX_MICROS));
    }

    #[test]
    fn construction_needs_no_server() {
        let limiter = RedisLimiter::new("redis://127.0.0.1:1", Duration::from_millis(100));
        assert!(limiter.is_ok_and(|l| !l.is_connected()));
    }

    #[test]
    fn limiter_and_its_calls_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: T) {}
        let limiter = RedisLimiter::new("redis://127.0.0.1:1", Duration::from_millis(100));
        let Ok(limiter) = limiter else {
            panic!("a loopback URL is valid");
        };
        assert_send_sync(&limiter);
        // Built, never polled: only the future's type matters here.
        assert_send(limiter.admit("k", &spec(1, 1000, 0)));
        assert_send(limiter.ping());
    }

    #[test]
    fn malformed_url_is_rejected() {
        let err = RedisLimiter::new("http://nope", Duration::from_millis(100));
        assert!(matches!(err, Err(StoreError::InvalidUrl(_))));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let limiter = RedisLimiter::new("redis://:s3cret@127.0.0.1:6379/2", Duration::from_secs(1));
        let text = format!("{limiter:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("127.0.0.1:6379"), "{text}");
    }
}
