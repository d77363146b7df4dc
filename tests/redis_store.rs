//! The Redis-backed rate limiter against a real `redis-server` on loopback:
//! one limit shared by several limiter instances (as several weir processes
//! would hold), refill, key expiry, and fast failure and recovery when Redis
//! goes away. End-to-end tests through the proxy live elsewhere.

#[path = "support/redis.rs"]
mod redis_support;

use std::future::Future;
use std::time::{Duration, Instant};

use redis_support::{free_port, RedisServer};
use weir::policy::rate_limit::{RateDecision, RateSpec};
use weir::store::redis::{RedisLimiter, StoreError};

/// Generous per-call timeout for a healthy local Redis on a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(10);

fn limiter(url: &str) -> RedisLimiter {
    RedisLimiter::new(url, CALL_TIMEOUT).expect("valid redis url")
}

fn spec(requests: u64, per: Duration, burst: u64) -> RateSpec {
    RateSpec {
        requests,
        per,
        burst,
    }
}

async fn admit(limiter: &RedisLimiter, key: &str, spec: &RateSpec) -> RateDecision {
    match limiter.admit(key, spec).await {
        Ok(decision) => decision,
        Err(e) => panic!("admit({key}) failed: {e}"),
    }
}

/// Polls `check` until it returns true; fails the test after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw connection for looking at what the limiter stored.
async fn inspect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis")
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let server = RedisServer::start();
    let (a, b) = (limiter(&server.url()), limiter(&server.url()));
    // C = 3 + 2 = 5; T = 20 s, so nothing refills during the test.
    let spec = spec(3, Duration::from_secs(60), 2);
    let key = "weir:rl:{api}:10.0.0.1";

    for (i, expected_remaining) in [4u64, 3, 2, 1, 0].into_iter().enumerate() {
        let instance = if i % 2 == 0 { &a } else { &b };
        let d = admit(instance, key, &spec).await;
        assert!(d.allowed, "request {} should pass: {d:?}", i + 1);
        assert_eq!(d.remaining, expected_remaining, "request {}: {d:?}", i + 1);
        assert_eq!(d.retry_after, Duration::ZERO);
        assert!(d.reset > Duration::ZERO && d.reset <= Duration::from_secs(100));
    }

    for instance in [&b, &a] {
        let d = admit(instance, key, &spec).await;
        assert!(!d.allowed, "the 6th request across both must be rejected");
        assert_eq!(d.remaining, 0);
        assert!(d.retry_after > Duration::ZERO, "{d:?}");
        assert!(d.retry_after <= Duration::from_secs(20), "{d:?}");
    }
}

#[tokio::test]
async fn different_keys_are_independent() {
    let server = RedisServer::start();
    let limiter = limiter(&server.url());
    let spec = spec(1, Duration::from_secs(60), 0);

    assert!(admit(&limiter, "weir:rl:{api}:alice", &spec).await.allowed);
    assert!(!admit(&limiter, "weir:rl:{api}:alice", &spec).await.allowed);

    let bob = admit(&limiter, "weir:rl:{api}:bob", &spec).await;
    assert!(bob.allowed, "bob has his own allowance: {bob:?}");
    assert!(
        admit(&limiter, "weir:rl:{other}:alice", &spec)
            .await
            .allowed
    );
}

#[tokio::test]
async fn admits_again_after_the_allowance_refills() {
    let server = RedisServer::start();
    let limiter = limiter(&server.url());
    let spec = spec(2, Duration::from_millis(200), 0);
    let key = "weir:rl:{api}:refill";

    // Spend until rejected; on a slow machine a slot may refill between
    // calls, so count on no exact number of admissions.
    let mut rejected = None;
    for _ in 0..100 {
        let d = admit(&limiter, key, &spec).await;
        if !d.allowed {
            rejected = Some(d);
            break;
        }
    }
    let rejected = rejected.expect("a 200 ms allowance must run out within 100 calls");
    assert!(rejected.retry_after > Duration::ZERO);
    assert!(rejected.retry_after <= Duration::from_millis(100));

    eventually(WAIT, "the allowance to refill", || async {
        admit(&limiter, key, &spec).await.allowed
    })
    .await;
}

#[tokio::test]
async fn idle_keys_expire() {
    let server = RedisServer::start();
    let limiter = limiter(&server.url());
    let key = "weir:rl:{api}:ttl";
    let mut conn = inspect(&server.url()).await;

    let d = admit(&limiter, key, &spec(1, Duration::from_millis(300), 0)).await;
    assert!(d.allowed);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    // -1 would mean no expiry, -2 already gone (only on a very slow machine).
    assert!(ttl == -2 || (1..=300).contains(&ttl), "PTTL = {ttl}");

    eventually(WAIT, "the idle key to expire", || {
        let mut conn = conn.clone();
        async move {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("EXISTS");
            exists == 0
        }
    })
    .await;
}

#[tokio::test]
async fn rejection_leaves_the_stored_state_unchanged() {
    let server = RedisServer::start();
    let limiter = limiter(&server.url());
    let key = "weir:rl:{api}:unchanged";
    let spec = spec(1, Duration::from_secs(60), 0);
    let mut conn = inspect(&server.url()).await;

    assert!(admit(&limiter, key, &spec).await.allowed);
    let stored: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert!(!admit(&limiter, key, &spec).await.allowed);
    let after: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(stored, after);
    assert!(
        stored.parse::<u64>().is_ok(),
        "TAT stored as integer µs: {stored}"
    );
}

#[tokio::test]
async fn unreachable_redis_fails_fast() {
    // Nothing listens on a port we just released: connections are refused.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limiter = RedisLimiter::new(&url, Duration::from_millis(100)).expect("valid url");
    let spec = spec(10, Duration::from_secs(1), 0);

    let started = Instant::now();
    let mut backoffs = 0;
    for i in 0..20 {
        match limiter.admit("weir:rl:{api}:down", &spec).await {
            Ok(d) => panic!("call {i} answered without redis: {d:?}"),
            Err(StoreError::Backoff) => backoffs += 1,
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "20 calls took {elapsed:?}"
    );
    assert!(backoffs > 0, "calls after a refused connect must back off");
    assert!(!limiter.is_connected());
    assert!(limiter.ping().await.is_err());
}

#[tokio::test]
async fn silent_redis_times_out_and_backs_off() {
    // A listener that never accepts: TCP connects (through the backlog) but
    // nothing ever answers, as with a stalled server.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("local addr").port();
    let url = format!("redis://127.0.0.1:{port}");
    let limiter = RedisLimiter::new(&url, Duration::from_millis(100)).expect("valid url");
    let spec = spec(10, Duration::from_secs(1), 0);

    let started = Instant::now();
    let mut timeouts = 0;
    for i in 0..20 {
        match limiter.admit("weir:rl:{api}:silent", &spec).await {
            Ok(d) => panic!("call {i} answered without redis: {d:?}"),
            Err(StoreError::Timeout) => timeouts += 1,
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(timeouts > 0, "a silent server must time out");
    assert!(
        elapsed < Duration::from_secs(5),
        "20 calls took {elapsed:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn recovers_after_redis_restarts() {
    let mut server = RedisServer::start();
    let limiter = limiter(&server.url());
    let spec = spec(1000, Duration::from_secs(1), 0);
    let key = "weir:rl:{api}:restart";

    assert!(admit(&limiter, key, &spec).await.allowed);
    assert!(limiter.is_connected());

    server.stop();
    eventually(WAIT, "calls to fail while redis is down", || async {
        limiter.admit(key, &spec).await.is_err()
    })
    .await;

    server.restart();
    eventually(WAIT, "the limiter to reconnect", || async {
        limiter.admit(key, &spec).await.is_ok()
    })
    .await;
    assert!(limiter.is_connected());
    assert!(limiter.ping().await.is_ok());
}

#[tokio::test]
async fn password_and_database_in_the_url_are_used() {
    let server = RedisServer::start_with_args(&["--requirepass", "s3cret"]);
    let port = server.port();
    let spec = spec(5, Duration::from_secs(60), 0);
    let key = "weir:rl:{api}:auth";

    let good = limiter(&format!("redis://:s3cret@127.0.0.1:{port}/3"));
    assert!(admit(&good, key, &spec).await.allowed);
    let mut conn = inspect(&format!("redis://:s3cret@127.0.0.1:{port}/3")).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 1, "the key lives in database 3");

    let bad = limiter(&format!("redis://:wrong@127.0.0.1:{port}"));
    let err = bad.admit(key, &spec).await.expect_err("wrong password");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}
