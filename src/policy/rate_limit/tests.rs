use super::*;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

const SECOND: Duration = Duration::from_secs(1);
// 10 per second with a burst of 5: C = 15, T = 100ms.
const SPEC: RateSpec = RateSpec {
    requests: 10,
    per: SECOND,
    burst: 5,
};
const T: Duration = Duration::from_millis(100);
const C: u64 = 15;

// A fake clock well away from zero, so that "fresh" and "expired" differ.
fn at(offset: Duration) -> Duration {
    Duration::from_secs(1_000) + offset
}

fn spend(limiter: &LocalLimiter, key: Option<&[u8]>, now: Duration) -> u64 {
    let mut allowed = 0;
    while limiter.admit(key, now).allowed {
        allowed += 1;
        assert!(allowed <= C, "admitted past capacity");
    }
    allowed
}

#[test]
fn fresh_key_gets_capacity_then_rejects() {
    let limiter = LocalLimiter::new(SPEC);
    let now = at(Duration::ZERO);
    for i in 1..=C {
        let d = limiter.admit(Some(b"a"), now);
        assert!(d.allowed);
        assert_eq!(d.remaining, C - i);
        assert_eq!(d.reset, T * i as u32);
        assert_eq!(d.retry_after, Duration::ZERO);
    }
    let refused = limiter.admit(Some(b"a"), now);
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert_eq!(refused.reset, T * C as u32);
}

#[test]
fn refills_at_the_steady_rate() {
    let limiter = LocalLimiter::new(SPEC);
    assert_eq!(spend(&limiter, None, at(Duration::ZERO)), C);
    assert_eq!(spend(&limiter, None, at(T)), 1);
    assert_eq!(spend(&limiter, None, at(T + T / 2)), 0);
    // One period later: the steady `requests`, not the whole burst.
    assert_eq!(spend(&limiter, None, at(T + SECOND)), SPEC.requests);
    // Idle long enough: the whole capacity again.
    assert_eq!(spend(&limiter, None, at(SECOND * 60)), C);
}

#[test]
fn retry_after_is_the_time_until_the_next_allowance() {
    let limiter = LocalLimiter::new(SPEC);
    let now = at(Duration::ZERO);
    spend(&limiter, Some(b"a"), now);
    assert_eq!(limiter.admit(Some(b"a"), now).retry_after, T);
    let almost = now + T - Duration::from_nanos(1);
    let refused = limiter.admit(Some(b"a"), almost);
    assert_eq!(refused.retry_after, Duration::from_nanos(1));
    // Refusals do not push the next allowance further out.
    assert!(limiter.admit(Some(b"a"), now + T).allowed);
}

#[test]
fn remaining_and_reset_recover_as_time_passes() {
    let limiter = LocalLimiter::new(SPEC);
    let now = at(Duration::ZERO);
    for _ in 0..5 {
        limiter.admit(None, now);
    }
    // Three intervals later, three of the five spent requests are back.
    let d = limiter.admit(None, now + T * 3);
    assert_eq!(d.remaining, C - 3);
    assert_eq!(d.reset, T * 3);
}

#[test]
fn keys_are_independent() {
    let limiter = LocalLimiter::new(SPEC);
    let now = at(Duration::ZERO);
    assert_eq!(spend(&limiter, Some(b"10.0.0.1"), now), C);
    assert_eq!(spend(&limiter, Some(b"10.0.0.2"), now), C);
    assert_eq!(spend(&limiter, None, now), C);
    assert!(!limiter.admit(Some(b"10.0.0.1"), now).allowed);
}

#[test]
fn shared_bucket_admits_exactly_capacity_across_threads() {
    let spec = RateSpec {
        requests: 100,
        per: SECOND,
        burst: 50,
    };
    let limiter = Arc::new(LocalLimiter::new(spec));
    let allowed = Arc::new(AtomicUsize::new(0));
    let now = at(Duration::ZERO);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (limiter, allowed) = (Arc::clone(&limiter), Arc::clone(&allowed));
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if limiter.admit(None, now).allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 150);
}

#[test]
fn memory_stays_bounded_under_many_distinct_keys() {
    let limiter = LocalLimiter::new(SPEC);
    let now = at(Duration::ZERO);
    // Half again as many keys as the limiter can hold, so every shard fills.
    let keys = (SHARDS * SHARD_CAPACITY * 3 / 2) as u32;
    for i in 0..keys {
        assert!(limiter.admit(Some(&i.to_be_bytes()), now).allowed);
        if i % 4096 == 0 {
            assert!(limiter.tracked_keys() <= SHARDS * SHARD_CAPACITY);
        }
    }
    let tracked = limiter.tracked_keys();
    assert!(tracked <= SHARDS * SHARD_CAPACITY, "{tracked}");
    assert!(tracked >= SHARDS * SHARD_LOW_WATER, "{tracked}");
    limiter.sweep(now + T);
    assert_eq!(limiter.tracked_keys(), 0);
}

#[test]
fn sweep_forgets_only_keys_whose_allowance_is_whole() {
    let limiter = LocalLimiter::new(SPEC);
    let now = at(Duration::ZERO);
    limiter.admit(Some(b"light"), now);
    spend(&limiter, Some(b"heavy"), now);
    limiter.sweep(now + T);
    assert_eq!(limiter.tracked_keys(), 1);
    // The heavy key is still limited after the sweep.
    assert_eq!(spend(&limiter, Some(b"heavy"), now + T), 1);
}

#[test]
fn full_shard_evicts_the_keys_closest_to_a_full_allowance() {
    let mut shard = Shard::default();
    for key in 0..SHARD_CAPACITY as u64 {
        // TATs 100, 101, ...; with now = 100 the first one has expired.
        shard.insert(key, 100 + key);
    }
    make_room(&mut shard, 100);
    assert_eq!(shard.len(), SHARD_LOW_WATER);
    let evicted = (SHARD_CAPACITY - SHARD_LOW_WATER) as u64;
    assert_eq!(shard.values().min().copied(), Some(100 + evicted));

    // With equal TATs, exactly enough are evicted.
    let mut ties: Shard = (0..SHARD_CAPACITY as u64).map(|k| (k, 500)).collect();
    make_room(&mut ties, 100);
    assert_eq!(ties.len(), SHARD_LOW_WATER);
}

#[test]
fn gcra_saturates_instead_of_panicking() {
    let zero = RateSpec {
        requests: 0,
        per: Duration::ZERO,
        burst: 0,
    };
    let (tat, d) = gcra(0, 0, &zero);
    assert!(d.allowed);
    assert_eq!(tat, 1);
    let huge = RateSpec {
        requests: u64::MAX,
        per: Duration::MAX,
        burst: u64::MAX,
    };
    assert!(gcra(u64::MAX, u64::MAX, &huge).1.allowed);
    let one_per_forever = RateSpec {
        requests: 1,
        per: Duration::MAX,
        burst: 0,
    };
    let (tat, first) = gcra(0, 5, &one_per_forever);
    assert!(first.allowed);
    assert_eq!(tat, u64::MAX);
    let (_, second) = gcra(tat, 5, &one_per_forever);
    assert!(!second.allowed);
    assert_eq!(second.retry_after, Duration::from_nanos(u64::MAX - 5));
}

#[test]
fn gcra_refusal_keeps_the_stored_tat() {
    let tat = saturating_nanos(at(T * C as u32));
    let now = saturating_nanos(at(Duration::ZERO));
    let (next, d) = gcra(tat, now, &SPEC);
    assert!(!d.allowed);
    assert_eq!(next, tat);
}

#[test]
fn headers_follow_the_ratelimit_draft() {
    assert_eq!(RATELIMIT.as_str(), "ratelimit");
    assert_eq!(RATELIMIT_POLICY.as_str(), "ratelimit-policy");
    assert_eq!(policy_header(&SPEC), "\"default\";q=10;w=1");
    let minute = RateSpec {
        requests: 100,
        per: Duration::from_secs(60),
        burst: 0,
    };
    assert_eq!(policy_header(&minute), "\"default\";q=100;w=60");
    let sub_second = RateSpec {
        per: Duration::from_millis(1_500),
        ..minute
    };
    assert_eq!(policy_header(&sub_second), "\"default\";q=100;w=2");

    let decision = RateDecision {
        allowed: false,
        remaining: 0,
        reset: Duration::from_millis(1_200),
        retry_after: Duration::from_millis(300),
    };
    assert_eq!(decision.header(), "\"default\";r=0;t=2");
    assert_eq!(decision.retry_after_secs(), 1);
    let whole = RateDecision {
        allowed: true,
        remaining: 7,
        reset: Duration::ZERO,
        retry_after: Duration::from_secs(2),
    };
    assert_eq!(whole.header(), "\"default\";r=7;t=0");
    assert_eq!(whole.retry_after_secs(), 2);
}

// `header` skips `HeaderValue`'s validation; the widest values it can write
// must pass it, and fit its buffer.
#[test]
fn header_is_valid() {
    for (remaining, reset) in [
        (0, Duration::ZERO),
        (u64::MAX, Duration::MAX),
        (1_234_567_890, Duration::from_nanos(1)),
    ] {
        let decision = RateDecision {
            allowed: true,
            remaining,
            reset,
            retry_after: Duration::ZERO,
        };
        let value = decision.header();
        let checked = HeaderValue::from_bytes(value.as_bytes()).expect("a valid header value");
        assert_eq!(checked, value);
    }
    let max = RateDecision {
        allowed: true,
        remaining: u64::MAX,
        reset: Duration::MAX,
        retry_after: Duration::ZERO,
    };
    assert_eq!(
        max.header(),
        format!("\"default\";r={0};t={0}", u64::MAX).as_str()
    );
}
