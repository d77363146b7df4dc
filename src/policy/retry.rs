//! Retries: which requests may be repeated, after which outcomes, how long to
//! wait between tries, and the budget that caps retries to a share of live
//! traffic so that retries never multiply the load on an upstream that is
//! already failing (the Finagle / linkerd retry budget).
//!
//! This file owns the decisions only. It does not buffer or replay bodies,
//! send requests, sleep, draw random numbers or read a clock: the proxy
//! pipeline passes `now` and random rolls in and acts on the answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};

/// Header that makes any request safe to repeat: the client promises the
/// server deduplicates requests carrying the same key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Backoff used when the config does not say: the first wait is at most
/// 25 ms, no wait exceeds 250 ms.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// See [`DEFAULT_BACKOFF_BASE`].
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Request bodies up to this size are kept for replay unless configured.
const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Slots the budget window is divided into.
const SLOTS: usize = 10;
/// Low bits of a slot word hold the count, the high bits the slot's epoch.
const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MAX: u64 = (1 << (64 - COUNT_BITS)) - 1;
/// Narrowest slot; keeps 40-bit epochs good for decades of uptime.
const MIN_SLOT: Duration = Duration::from_millis(1);

/// A failure a retry may follow: the configuration's own type, so the two
/// cannot drift apart.
pub use weir_config::RetryOn;

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No connection could be opened.
    ConnectFailure,
    /// The connection was closed or reset before a whole response arrived.
    Reset,
    /// The try's own deadline passed.
    Timeout,
    /// A response with this status arrived.
    Status(u16),
}

/// When and how a route retries failed attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    // total tries, the first one included; always >= 1
    attempts: u32,
    on: Vec<RetryOn>,
    backoff_base: Duration,
    backoff_max: Duration,
    per_try_timeout: Option<Duration>,
    max_body: usize,
}

/// Caps retries at `min_per_second * window + ratio * requests` over a
/// sliding window, shared by every request the budget covers.
///
/// The window is split into 10 slots; each slot is one `AtomicU64` that packs
/// the slot's epoch (`now / slot width`, 40 bits) with a count (24 bits), so a
/// stale slot is reset by the compare-exchange that first writes to it in a
/// new epoch. Consequences, by design:
/// - the window slides a slot at a time: it covers between 9 and 10 slot
///   widths of history;
/// - callers passing `now` values in the same slot never withdraw past the
///   budget; while callers race across a slot boundary, the budget can be
///   overdrawn by at most one retry per such concurrent caller;
/// - a slot counts at most 2^24 - 1 events; past that, requests stop adding
///   to the allowance and retries are refused (both conservative).
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    // min_per_second * window length, in retries
    reserve: f64,
    slot_nanos: u64,
    window: Duration,
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
}

// === retry conditions ===

/// Whether an attempt that ended with `outcome` meets condition `on`.
pub fn matches(on: RetryOn, outcome: &Outcome) -> bool {
    match (on, outcome) {
        (RetryOn::ConnectFailure, Outcome::ConnectFailure)
        | (RetryOn::Reset, Outcome::Reset)
        | (RetryOn::Timeout, Outcome::Timeout) => true,
        (RetryOn::Status5xx, Outcome::Status(s)) => (500..=599).contains(s),
        (RetryOn::Status(want), Outcome::Status(s)) => want == *s,
        _ => false,
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// A policy of `attempts` tries in all (0 is read as 1: no retry) that
    /// retries after the outcomes listed in `on`. Backoff defaults to 25 ms
    /// base / 250 ms cap, no per-try timeout, bodies up to 64 KiB replayable.
    pub fn new(attempts: u32, on: impl IntoIterator<Item = RetryOn>) -> RetryPolicy {
        let mut conditions: Vec<RetryOn> = Vec::new();
        for c in on {
            if !conditions.contains(&c) {
                conditions.push(c);
            }
        }
        RetryPolicy {
            attempts: attempts.max(1),
            on: conditions,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            per_try_timeout: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Sets the backoff: the n-th retry waits a random time below
    /// `min(max, base * 2^(n-1))`.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> RetryPolicy {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Sets the deadline of each try (None: each try may use the whole
    /// request deadline).
    pub fn with_per_try_timeout(mut self, timeout: Option<Duration>) -> RetryPolicy {
        self.per_try_timeout = timeout;
        self
    }

    /// Sets the largest request body kept for replay; larger bodies are
    /// streamed and their requests never retried.
    pub fn with_max_body(mut self, bytes: usize) -> RetryPolicy {
        self.max_body = bytes;
        self
    }

    /// Builds the runtime policy from a route's `retry` block. The budget is
    /// separate: see [`RetryBudget::from_config`].
    pub fn from_config(cfg: &weir_config::Retry) -> RetryPolicy {
        RetryPolicy::new(cfg.attempts, cfg.on.iter().copied())
            .with_backoff(cfg.backoff.base.get(), cfg.backoff.max.get())
            .with_per_try_timeout(cfg.per_try_timeout.map(|d| d.get()))
            .with_max_body(usize::try_from(cfg.max_body.bytes()).unwrap_or(usize::MAX))
    }

    /// Total tries, the first one included (>= 1).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The outcomes that are retried.
    pub fn conditions(&self) -> &[RetryOn] {
        &self.on
    }

    /// Deadline of each try, if set.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Largest request body, in bytes, kept so a retry can resend it.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Whether a request may be sent twice: its method is idempotent
    /// (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or it
    /// carries a non-empty `Idempotency-Key` header.
    pub fn is_retryable_request(method: &Method, headers: &HeaderMap) -> bool {
        is_idempotent(method)
            || headers
                .get_all(IDEMPOTENCY_KEY)
                .iter()
                .any(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
    }

    /// Whether to try again after `attempts_made` tries (the first one
    /// included), the last of which ended with `outcome`. The caller still
    /// checks the request is retryable and asks the budget.
    pub fn should_retry(&self, attempts_made: u32, outcome: &Outcome) -> bool {
        attempts_made < self.attempts && self.on.iter().any(|c| matches(*c, outcome))
    }

    /// Wait before retry number `retry_number` (1 for the first retry), with
    /// full jitter: `min(max, base * 2^(n-1)) * roll`, where `roll` is a
    /// uniform random number in `[0, 1)`. Never overflows; rolls outside
    /// `[0, 1]` are clamped.
    pub fn backoff(&self, retry_number: u32, roll: f64) -> Duration {
        let exponent = retry_number.saturating_sub(1);
        let grown = 1u32
            .checked_shl(exponent)
            .and_then(|factor| self.backoff_base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        let cap = grown.min(self.backoff_max);
        // NaN fails the comparison and becomes 0.
        let roll = if roll > 0.0 { roll } else { 0.0 };
        if roll >= 1.0 {
            return cap;
        }
        // Scaling whole nanoseconds keeps round numbers exact; `as` saturates.
        let nanos = (cap.as_nanos() as f64 * roll) as u128;
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        let subsec = (nanos % 1_000_000_000) as u32;
        Duration::new(secs, subsec).min(cap)
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget allowing `min_per_second` retries per second plus `ratio`
    /// retries per request seen, both over a sliding `window`. A negative or
    /// non-finite ratio counts as 0; windows shorter than 10 ms count as
    /// 10 ms.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> RetryBudget {
        let slot = (window / SLOTS as u32).max(MIN_SLOT);
        let window = slot * SLOTS as u32;
        RetryBudget {
            ratio: if ratio.is_finite() && ratio > 0.0 {
                ratio
            } else {
                0.0
            },
            reserve: f64::from(min_per_second) * window.as_secs_f64(),
            slot_nanos: u64::try_from(slot.as_nanos()).unwrap_or(u64::MAX),
            window,
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Builds a budget from a route's `retry.budget` block, over the 10-second
    /// window the configuration documents.
    pub fn from_config(cfg: &weir_config::RetryBudget) -> RetryBudget {
        RetryBudget::new(cfg.ratio.get(), cfg.min_per_second, Duration::from_secs(10))
    }

    /// The window the budget is computed over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts one original request (not a retry). `now` is the time since an
    /// origin the caller keeps fixed for the budget's life.
    pub fn record_request(&self, now: Duration) {
        let e = self.epoch(now);
        let slot = &self.requests[slot_index(e)];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (slot_epoch, count) = unpack(current);
            let next = if slot_epoch == e {
                if count == COUNT_MAX {
                    return;
                }
                pack(e, count + 1)
            } else if slot_epoch < e {
                pack(e, 1)
            } else {
                // The caller's clock lags a whole window behind: the request
                // is outside the window that matters.
                return;
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Asks for one retry. True when the budget allows it, in which case the
    /// retry is counted; false means the caller must not retry.
    pub fn try_withdraw(&self, now: Duration) -> bool {
        let e = self.epoch(now);
        let index = slot_index(e);
        let slot = &self.retries[index];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (slot_epoch, count) = unpack(current);
            let count = match slot_epoch.cmp(&e) {
                std::cmp::Ordering::Equal => count,
                std::cmp::Ordering::Less => 0,
                // A caller a whole window behind gets nothing rather than
                // disturbing a newer slot.
                std::cmp::Ordering::Greater => return false,
            };
            if count == COUNT_MAX {
                return false;
            }
            // The compare-exchange below fails if this slot moved since it was
            // read, so `count` is exact when the retry is granted.
            let spent = sum_window(&self.retries, e, Some(index)) + count;
            if spent as f64 >= self.allowance(e) {
                return false;
            }
            match slot.compare_exchange_weak(
                current,
                pack(e, count + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Retries the budget would grant right now (for the admin API and
    /// metrics; racing requests may change it at once).
    pub fn available(&self, now: Duration) -> u64 {
        let e = self.epoch(now);
        let spent = sum_window(&self.retries, e, None) as f64;
        let left = (self.allowance(e) - spent).ceil();
        if left > 0.0 {
            left as u64
        } else {
            0
        }
    }

    fn allowance(&self, e: u64) -> f64 {
        self.reserve + self.ratio * sum_window(&self.requests, e, None) as f64
    }

    fn epoch(&self, now: Duration) -> u64 {
        let e = now.as_nanos() / u128::from(self.slot_nanos);
        u64::try_from(e).unwrap_or(u64::MAX).min(EPOCH_MAX)
    }
}

fn slot_index(epoch: u64) -> usize {
    // SLOTS is tiny, so the remainder always fits.
    (epoch % SLOTS as u64) as usize
}

fn pack(epoch: u64, count: u64) -> u64 {
    (epoch << COUNT_BITS) | count
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> COUNT_BITS, word & COUNT_MAX)
}

/// Sum of the counts of slots whose epoch lies in the window ending at epoch
/// `e`, leaving out slot `skip`.
fn sum_window(slots: &[AtomicU64; SLOTS], e: u64, skip: Option<usize>) -> u64 {
    slots
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, slot)| unpack(slot.load(Ordering::Relaxed)))
        .filter(|(slot_epoch, _)| slot_epoch + SLOTS as u64 > e)
        .map(|(_, count)| count)
        .sum()
}

/// True for the methods RFC 9110 §9.2.2 defines as idempotent: GET, HEAD,
/// OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(attempts: u32, on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy::new(attempts, on.iter().copied())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn idempotent_methods_are_retryable() {
        let empty = HeaderMap::new();
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(RetryPolicy::is_retryable_request(&method, &empty), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!RetryPolicy::is_retryable_request(&method, &empty), "{m}");
        }
    }

    #[test]
    fn idempotency_key_makes_post_retryable_unless_empty() {
        let mut headers = HeaderMap::new();
        headers.insert("Idempotency-Key", HeaderValue::from_static("8e03978e"));
        assert!(RetryPolicy::is_retryable_request(&Method::POST, &headers));

        headers.insert("Idempotency-Key", HeaderValue::from_static(""));
        assert!(!RetryPolicy::is_retryable_request(&Method::POST, &headers));
        headers.insert("Idempotency-Key", HeaderValue::from_static("  "));
        assert!(!RetryPolicy::is_retryable_request(&Method::PATCH, &headers));
    }

    #[test]
    fn retries_only_listed_outcomes() {
        let p = policy(3, &[RetryOn::ConnectFailure, RetryOn::Status(503)]);
        assert!(p.should_retry(1, &Outcome::ConnectFailure));
        assert!(p.should_retry(1, &Outcome::Status(503)));
        assert!(!p.should_retry(1, &Outcome::Status(502)));
        assert!(!p.should_retry(1, &Outcome::Reset));
        assert!(!p.should_retry(1, &Outcome::Timeout));
        assert!(!p.should_retry(1, &Outcome::Status(200)));

        let p = policy(3, &[RetryOn::Reset, RetryOn::Timeout, RetryOn::Status5xx]);
        assert!(p.should_retry(1, &Outcome::Reset));
        assert!(p.should_retry(1, &Outcome::Timeout));
        assert!(p.should_retry(1, &Outcome::Status(500)));
        assert!(p.should_retry(1, &Outcome::Status(599)));
        assert!(!p.should_retry(1, &Outcome::Status(499)));
        assert!(!p.should_retry(1, &Outcome::ConnectFailure));
    }

    #[test]
    fn stops_when_attempts_are_spent() {
        let p = policy(3, &[RetryOn::Reset]);
        assert!(p.should_retry(1, &Outcome::Reset));
        assert!(p.should_retry(2, &Outcome::Reset));
        assert!(!p.should_retry(3, &Outcome::Reset));
        assert!(!p.should_retry(4, &Outcome::Reset));

        let single = policy(0, &[RetryOn::Reset]);
        assert_eq!(single.attempts(), 1);
        assert!(!single.should_retry(1, &Outcome::Reset));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = policy(5, &[]).with_backoff(Duration::from_millis(10), Duration::from_millis(100));
        // a roll just under 1 gives the cap itself, to float precision
        let top = |n| p.backoff(n, 1.0);
        assert_eq!(top(1), Duration::from_millis(10));
        assert_eq!(top(2), Duration::from_millis(20));
        assert_eq!(top(3), Duration::from_millis(40));
        assert_eq!(top(4), Duration::from_millis(80));
        assert_eq!(top(5), Duration::from_millis(100));
        assert_eq!(top(40), Duration::from_millis(100));
        assert_eq!(top(u32::MAX), Duration::from_millis(100));
        assert_eq!(p.backoff(0, 1.0), Duration::from_millis(10));
    }

    #[test]
    fn backoff_is_jittered_within_the_cap() {
        let p = policy(5, &[]).with_backoff(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(20));
        for i in 0..100 {
            let roll = f64::from(i) / 100.0;
            assert!(p.backoff(3, roll) <= Duration::from_millis(40));
        }
        assert_eq!(p.backoff(3, -1.0), Duration::ZERO);
        assert_eq!(p.backoff(3, f64::NAN), Duration::ZERO);
        assert_eq!(p.backoff(3, 7.0), Duration::from_millis(40));
    }

    #[test]
    fn backoff_never_overflows_with_huge_settings() {
        let p = policy(5, &[]).with_backoff(Duration::MAX, Duration::MAX);
        assert_eq!(p.backoff(64, 1.0), Duration::MAX);
        assert!(p.backoff(64, 0.5) <= Duration::MAX);
    }

    #[test]
    fn builds_from_the_route_config() {
        let cfg = weir_config::Retry {
            attempts: 3,
            on: vec![weir_config::RetryOn::Status5xx, weir_config::RetryOn::Reset],
            per_try_timeout: Some(weir_config::Duration::from_millis(500)),
            backoff: weir_config::Backoff {
                base: weir_config::Duration::from_millis(10),
                max: weir_config::Duration::from_millis(30),
            },
            budget: weir_config::RetryBudget::default(),
            max_body: weir_config::ByteSize(1024),
        };
        let p = RetryPolicy::from_config(&cfg);
        assert_eq!(p.attempts(), 3);
        assert_eq!(p.conditions(), [RetryOn::Status5xx, RetryOn::Reset]);
        assert_eq!(p.per_try_timeout(), Some(Duration::from_millis(500)));
        assert_eq!(p.max_body(), 1024);
        assert_eq!(p.backoff(9, 1.0), Duration::from_millis(30));

        // defaults: 0.2 per request plus 10/s over 10 s
        let b = RetryBudget::from_config(&cfg.budget);
        assert_eq!(b.window(), secs(10));
        assert_eq!(b.available(secs(1)), 100);
    }

    #[test]
    fn budget_allows_the_minimum_when_idle() {
        let b = RetryBudget::new(0.2, 2, secs(10));
        let now = secs(100);
        for _ in 0..20 {
            assert!(b.try_withdraw(now));
        }
        assert!(!b.try_withdraw(now));
        assert_eq!(b.available(now), 0);
    }

    #[test]
    fn budget_allows_about_ratio_under_load() {
        let b = RetryBudget::new(0.1, 0, secs(10));
        let mut granted = 0;
        for i in 0..1000u64 {
            let now = Duration::from_millis(50_000 + i * 5);
            b.record_request(now);
            if b.try_withdraw(now) {
                granted += 1;
            }
        }
        assert_eq!(granted, 100);
        assert!(!b.try_withdraw(Duration::from_millis(55_000)));
    }

    #[test]
    fn budget_refuses_beyond_the_allowance() {
        let b = RetryBudget::new(0.5, 1, secs(10));
        let now = secs(7);
        for _ in 0..100 {
            b.record_request(now);
        }
        // 1/s * 10 s + 0.5 * 100
        assert_eq!(b.available(now), 60);
        let granted = (0..200).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 60);
    }

    #[test]
    fn budget_recovers_after_the_window_slides() {
        let b = RetryBudget::new(0.0, 1, secs(10));
        let start = secs(1000);
        let granted = (0..50).filter(|_| b.try_withdraw(start)).count();
        assert_eq!(granted, 10);
        // still inside the window: nothing new
        assert!(!b.try_withdraw(start + secs(9)));
        // the slot holding the spent retries has left the window
        assert!(b.try_withdraw(start + secs(10)));
        assert_eq!(b.available(start + secs(10)), 9);
    }

    #[test]
    fn requests_leave_the_window_too() {
        let b = RetryBudget::new(1.0, 0, secs(10));
        for _ in 0..5 {
            b.record_request(secs(20));
        }
        assert_eq!(b.available(secs(29)), 5);
        assert_eq!(b.available(secs(30)), 0);
        assert!(!b.try_withdraw(secs(30)));
    }

    #[test]
    fn concurrent_withdrawals_never_exceed_the_budget() {
        let b = RetryBudget::new(0.5, 0, secs(10));
        let now = Duration::from_millis(3_500);
        for _ in 0..400 {
            b.record_request(now);
        }
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (b, granted) = (&b, &granted);
                s.spawn(move || {
                    for i in 0..200u64 {
                        // every caller is inside the same one-second slot
                        let now = Duration::from_millis(3_000 + (t * 200 + i) % 1000);
                        if b.try_withdraw(now) {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 200);
    }

    #[test]
    fn short_windows_are_widened_to_the_slot_minimum() {
        let b = RetryBudget::new(0.0, 100, Duration::ZERO);
        assert_eq!(b.window(), Duration::from_millis(10));
        assert_eq!(b.available(secs(1)), 1);
    }
}
