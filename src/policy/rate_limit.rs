//! Rate limiting with GCRA (the generic cell rate algorithm): one timestamp
//! per key, the theoretical arrival time (TAT) of the next request, instead of
//! a token count and a refill timer. [`gcra`] holds the semantics once;
//! [`LocalLimiter`] applies them in memory for one route, and the Redis
//! backend in `store` applies the same function's rules on a shared server.
//! This file also formats the `RateLimit`, `RateLimit-Policy` and
//! `Retry-After` response headers.
//!
//! It must not read a clock, pick the key out of a request or build the 429
//! response: the proxy passes `now` and the key bytes and acts on the
//! [`RateDecision`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::decimal::Decimal;

#[cfg(test)]
mod tests;

/// `RateLimit`: the key's remaining quota and when it is whole again.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy`: the quota and its window.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

// Keyed buckets are spread over this many locks (a power of two).
const SHARDS: usize = 32;
// Most keys one shard remembers, so one limiter holds at most
// SHARDS * SHARD_CAPACITY keys whatever clients send.
const SHARD_CAPACITY: usize = 4096;
// A full shard that sweeping cannot shrink is evicted down to this, so that
// one O(n) pass pays for the next thousand new keys instead of one.
const SHARD_LOW_WATER: usize = SHARD_CAPACITY * 3 / 4;

/// How many requests one key may make: a steady `requests` per `per`, plus
/// `burst` extra requests allowed back to back on top of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    /// Requests per period, steady state.
    pub requests: u64,
    /// The period.
    pub per: Duration,
    /// Extra requests a full allowance may spend at once.
    pub burst: u64,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests the key may still make right now.
    pub remaining: u64,
    /// Time until the key's allowance is whole again.
    pub reset: Duration,
    /// When rejected: time until one more request is allowed. Zero when allowed.
    pub retry_after: Duration,
}

/// An in-memory limiter for one route's policy: a single lock-free bucket when
/// the route is limited as a whole, or one bucket per key (client address,
/// header value) kept in sharded maps with bounded memory.
#[derive(Debug)]
pub struct LocalLimiter {
    spec: RateSpec,
    params: Params,
    shared: CacheLine<AtomicU64>,
    shards: [CacheLine<Mutex<Shard>>; SHARDS],
}

// Key hash -> TAT. The key is already a keyed 64-bit hash, so the map hashes
// it no further; two keys sharing a bucket would need a full 64-bit collision.
type Shard = HashMap<u64, u64, BuildHasherDefault<PrehashedKey>>;

#[derive(Default)]
struct PrehashedKey(u64);

// Keeps neighbouring shard locks (and the shared TAT) on separate cache lines,
// so that traffic on one does not slow down the others.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CacheLine<T>(T);

// A spec turned into GCRA's two numbers, in nanoseconds. They are u128 so
// that `T * C` and `TAT + T` cannot overflow whatever the spec and clock say.
#[derive(Clone, Copy, Debug)]
struct Params {
    // T: the time one request costs.
    interval: u128,
    // tau = T * C: how far ahead of `now` the TAT may run.
    tolerance: u128,
}

/// One GCRA step for a key whose stored TAT is `tat` (0 for a key never
/// seen), at `now`; both in nanoseconds since any fixed origin. Returns the
/// TAT to store and the decision.
///
/// With capacity `C = requests + burst`, interval `T = per / requests` and
/// tolerance `tau = T * C`: the request would move the TAT to
/// `max(tat, now) + T`. If that is more than `tau` ahead of `now` it is
/// refused, the TAT is unchanged and it may retry once the excess has passed;
/// otherwise it is allowed, and `remaining` is how many more fit under `tau`.
/// A fresh key therefore admits `C` requests back to back, then `requests`
/// per `per`.
///
/// Validation forbids zeros, but they do not panic here: `requests` and `C`
/// count as at least 1 and `T` as at least 1 ns. The arithmetic is wide
/// enough not to overflow; a TAT beyond `u64::MAX` (centuries away, or an
/// absurd period) is stored as `u64::MAX`.
pub fn gcra(tat: u64, now: u64, spec: &RateSpec) -> (u64, RateDecision) {
    Params::new(spec).step(tat, now)
}

/// The bucket identity of a rate-limit key. Hashed with a key drawn at
/// random once per process, so that clients cannot aim keys at one shard or
/// one map bucket without knowing it; the same for every limiter, so that a
/// caller may hash a key once and use it on any route.
pub fn key_hash(key: &[u8]) -> u64 {
    static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    HASHER.hash_one(key)
}

/// The `RateLimit-Policy` value of a spec, computed once per route:
/// `"default";q=<requests>;w=<seconds>`. The window is rounded up to whole
/// seconds, at least 1, so that it never advertises a faster rate than the
/// real one.
pub fn policy_header(spec: &RateSpec) -> HeaderValue {
    let window = ceil_secs(spec.per).max(1);
    ascii_value(format!("\"default\";q={};w={window}", spec.requests))
}

// === impl RateDecision ===

impl RateDecision {
    /// The `RateLimit` value: `"default";r=<remaining>;t=<seconds until the
    /// allowance is whole, rounded up>`.
    pub fn header(&self) -> HeaderValue {
        // Written by hand rather than with `format!`: this runs for every
        // response on a rate-limited route.
        let mut buf = [0u8; 64];
        let mut len = 0;
        for part in [
            &b"\"default\";r="[..],
            Decimal::new(self.remaining).as_bytes(),
            b";t=",
            Decimal::new(ceil_secs(self.reset)).as_bytes(),
        ] {
            buf[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        let value = bytes::Bytes::copy_from_slice(&buf[..len]);
        // SAFETY: the value is the ASCII literals above and decimal digits,
        // all of them bytes `HeaderValue` accepts (`header_is_valid` in the
        // tests checks). Validating would walk every byte again, on every
        // response of a rate-limited route.
        unsafe { HeaderValue::from_maybe_shared_unchecked(value) }
    }

    /// The `Retry-After` seconds for a refused request: rounded up, at least
    /// 1, so that a client that obeys it is not refused again.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }
}

// === impl LocalLimiter ===

impl LocalLimiter {
    /// A limiter with every bucket full.
    pub fn new(spec: RateSpec) -> LocalLimiter {
        LocalLimiter {
            spec,
            params: Params::new(&spec),
            shared: CacheLine(AtomicU64::new(0)),
            shards: std::array::from_fn(|_| CacheLine::default()),
        }
    }

    /// The spec this limiter enforces (a reload keeps the limiter, and its
    /// state, only when the spec is unchanged).
    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Decides one request. `key` names the bucket; `None` is the single
    /// bucket shared by the whole route. `now` is the time since an origin of
    /// the caller's choosing, the same for every call.
    pub fn admit(&self, key: Option<&[u8]>, now: Duration) -> RateDecision {
        self.admit_hashed(key.map(key_hash), now)
    }

    /// [`admit`](Self::admit) for a key already hashed with [`key_hash`]
    /// (a connection's peer address is hashed once, not per request).
    pub fn admit_hashed(&self, key: Option<u64>, now: Duration) -> RateDecision {
        let now = saturating_nanos(now);
        match key {
            None => self.admit_shared(now),
            Some(hash) => self.admit_keyed(hash, now),
        }
    }

    /// Forgets every key whose allowance is whole again at `now` (its TAT has
    /// passed, which is the same as never having been seen). For a periodic
    /// caller; admitting also sweeps a shard when it fills up.
    pub fn sweep(&self, now: Duration) {
        let now = saturating_nanos(now);
        for shard in &self.shards {
            let mut map = lock(&shard.0);
            map.retain(|_, tat| *tat > now);
            // Give memory back after a burst of keys has gone quiet.
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                let len = map.len();
                map.shrink_to(len * 2);
            }
        }
    }

    /// How many keys the limiter currently remembers.
    pub fn tracked_keys(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).len()).sum()
    }

    fn admit_shared(&self, now: u64) -> RateDecision {
        let shared = &self.shared.0;
        // Relaxed is enough: the TAT is the only state and guards no other
        // memory, and compare-exchanges on one atomic are totally ordered.
        let mut tat = shared.load(Ordering::Relaxed);
        loop {
            let (next, decision) = self.params.step(tat, now);
            // A refusal changes nothing. The TAT only ever grows, so a newer
            // value than the one read would refuse too.
            if !decision.allowed {
                return decision;
            }
            match shared.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return decision,
                Err(actual) => tat = actual,
            }
        }
    }

    fn admit_keyed(&self, hash: u64, now: u64) -> RateDecision {
        let mut map = lock(&self.shards[shard_index(hash)].0);
        if let Some(tat) = map.get_mut(&hash) {
            let (next, decision) = self.params.step(*tat, now);
            if decision.allowed {
                *tat = next;
            }
            return decision;
        }
        let (next, decision) = self.params.step(0, now);
        if decision.allowed {
            if map.len() >= SHARD_CAPACITY {
                make_room(&mut map, now);
            }
            map.insert(hash, next);
        }
        decision
    }
}

// === impl Params ===

impl Params {
    fn new(spec: &RateSpec) -> Params {
        let per = saturating_nanos(spec.per);
        let interval = u128::from((per / spec.requests.max(1)).max(1));
        let capacity = u128::from(spec.requests.saturating_add(spec.burst).max(1));
        Params {
            interval,
            tolerance: interval * capacity,
        }
    }

    fn step(self, tat: u64, now: u64) -> (u64, RateDecision) {
        let next = u128::from(tat.max(now)) + self.interval;
        let ahead = next - u128::from(now);
        if ahead > self.tolerance {
            let refused = RateDecision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(tat.saturating_sub(now)),
                retry_after: Duration::from_nanos(clamp(ahead - self.tolerance)),
            };
            return (tat, refused);
        }
        let allowed = RateDecision {
            allowed: true,
            remaining: clamp((self.tolerance - ahead) / self.interval),
            reset: Duration::from_nanos(clamp(ahead)),
            retry_after: Duration::ZERO,
        };
        (clamp(next), allowed)
    }
}

// === impl PrehashedKey ===

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    // Only `u64` keys are ever hashed; this keeps the hasher total anyway.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

// The map indexes its buckets with the low bits of the hash and tags them with
// the top seven; shard on bits it uses for neither, or every key of a shard
// would share them and crowd into a fraction of the table.
fn shard_index(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

// Called when a shard is full and a new key arrives. Keys whose TAT has
// passed go first: forgetting them loses nothing. If the shard is still above
// the low-water mark, evict the keys with the smallest TAT. Forgetting a key
// hands it a full allowance again; the smallest TATs are the keys closest to a
// full allowance already, so this gives away the least, while the keys that
// spend fastest (a flood of one-off keys cannot push them out) are kept.
fn make_room(map: &mut Shard, now: u64) {
    map.retain(|_, tat| *tat > now);
    if map.len() <= SHARD_LOW_WATER {
        return;
    }
    let excess = map.len() - SHARD_LOW_WATER;
    let mut tats: Vec<u64> = map.values().copied().collect();
    let cutoff = *tats.select_nth_unstable(excess - 1).1;
    // Everything below the cutoff goes; ties at the cutoff fill the rest.
    let below = tats.iter().filter(|tat| **tat < cutoff).count();
    let mut ties = excess - below;
    map.retain(|_, tat| {
        if *tat < cutoff {
            return false;
        }
        if *tat == cutoff && ties > 0 {
            ties -= 1;
            return false;
        }
        true
    });
}

// A poisoned shard still holds valid TATs (every update is one store), so
// keep using it rather than failing every request that hashes there.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn clamp(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

// Header values built here hold only digits and fixed ASCII, which always
// convert; the fallback keeps the function total without a panic path.
fn ascii_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
