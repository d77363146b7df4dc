//! Threshold circuit breaking per upstream, in Envoy's sense: counters with
//! ceilings, not failure rates. Three counters cover one upstream across all
//! of its targets: open connections, requests waiting for a new connection,
//! and requests in flight. A caller that gets an [`Overflow`] answers with a
//! local 503 instead of adding load to an upstream already at its limit.
//!
//! This file owns the counters and their permits only. It must not decide
//! what to send back to the client or open connections itself; failure-rate
//! ejection of single targets lives in `outlier`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Ceilings for one upstream. `usize::MAX` means unlimited; zero refuses
/// everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections to the upstream, all targets together.
    pub max_connections: usize,
    /// Requests waiting for a new connection to open.
    pub max_pending: usize,
    /// Requests in flight to the upstream, all targets together.
    pub max_requests: usize,
}

/// Which ceiling refused a permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// `max_connections` was reached.
    #[error("upstream has reached max_connections")]
    Connections,
    /// `max_pending` was reached.
    #[error("upstream has reached max_pending")]
    Pending,
    /// `max_requests` was reached.
    #[error("upstream has reached max_requests")]
    Requests,
}

/// The breaker of one upstream. Lock-free: every operation is a short
/// compare-exchange loop on one counter.
#[derive(Debug)]
pub struct CircuitBreaker {
    counters: Arc<Counters>,
}

/// One in-flight request. Dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct RequestPermit {
    // Only its Drop matters.
    _slot: Held,
}

/// One request waiting for a new connection. Dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct PendingPermit {
    // Only its Drop matters.
    _slot: Held,
}

/// One open connection. Keep it alongside the connection (it is `Send` and
/// `'static`, so it can move into the connection's task); dropping it frees
/// the slot.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct ConnectionPermit {
    // Only its Drop matters.
    _slot: Held,
}

#[derive(Debug)]
struct Counters {
    // The ceilings are atomics too so that a reload can change them while
    // permits taken under the old ones are still out: counts stay exact.
    limits: [AtomicUsize; 3],
    counts: [AtomicUsize; 3],
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Connections = 0,
    Pending = 1,
    Requests = 2,
}

// Owns one unit of one counter and gives it back on drop, whichever permit
// wraps it.
#[derive(Debug)]
struct Held {
    counters: Arc<Counters>,
    kind: Kind,
}

// === impl Overflow ===

impl Overflow {
    /// The name of the limit, as in the configuration and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Connections => "max_connections",
            Overflow::Pending => "max_pending",
            Overflow::Requests => "max_requests",
        }
    }
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    /// A breaker with these ceilings and nothing in use.
    pub fn new(limits: Limits) -> CircuitBreaker {
        let counters = Counters {
            limits: [
                AtomicUsize::new(limits.max_connections),
                AtomicUsize::new(limits.max_pending),
                AtomicUsize::new(limits.max_requests),
            ],
            counts: Default::default(),
        };
        CircuitBreaker {
            counters: Arc::new(counters),
        }
    }

    /// Takes a slot for one request in flight to the upstream.
    pub fn try_request(&self) -> Result<RequestPermit, Overflow> {
        self.acquire(Kind::Requests)
            .map(|slot| RequestPermit { _slot: slot })
            .ok_or(Overflow::Requests)
    }

    /// Takes a slot for one request that must wait for a new connection.
    pub fn try_pending(&self) -> Result<PendingPermit, Overflow> {
        self.acquire(Kind::Pending)
            .map(|slot| PendingPermit { _slot: slot })
            .ok_or(Overflow::Pending)
    }

    /// Takes a slot for one new connection to the upstream.
    pub fn try_connection(&self) -> Result<ConnectionPermit, Overflow> {
        self.acquire(Kind::Connections)
            .map(|slot| ConnectionPermit { _slot: slot })
            .ok_or(Overflow::Connections)
    }

    /// Current usage as `(connections, pending, requests)`, for the admin API
    /// and gauges.
    pub fn counts(&self) -> (usize, usize, usize) {
        let c = &self.counters.counts;
        (
            c[Kind::Connections as usize].load(Ordering::Relaxed),
            c[Kind::Pending as usize].load(Ordering::Relaxed),
            c[Kind::Requests as usize].load(Ordering::Relaxed),
        )
    }

    /// The ceilings in force.
    pub fn limits(&self) -> Limits {
        let l = &self.counters.limits;
        Limits {
            max_connections: l[Kind::Connections as usize].load(Ordering::Relaxed),
            max_pending: l[Kind::Pending as usize].load(Ordering::Relaxed),
            max_requests: l[Kind::Requests as usize].load(Ordering::Relaxed),
        }
    }

    /// Changes the ceilings, keeping the counts (a reload that only changes
    /// limits). Lowering a ceiling below the current count revokes nothing:
    /// new permits are refused until enough of the old ones are dropped.
    pub fn set_limits(&self, limits: Limits) {
        let l = &self.counters.limits;
        l[Kind::Connections as usize].store(limits.max_connections, Ordering::Relaxed);
        l[Kind::Pending as usize].store(limits.max_pending, Ordering::Relaxed);
        l[Kind::Requests as usize].store(limits.max_requests, Ordering::Relaxed);
    }

    // A compare-exchange loop rather than add-then-roll-back: a refused
    // caller never inflates the count, so a concurrent caller is never
    // refused because of it and the admin API never shows a count over the
    // ceiling.
    fn acquire(&self, kind: Kind) -> Option<Held> {
        let limit = self.counters.limits[kind as usize].load(Ordering::Relaxed);
        let count = &self.counters.counts[kind as usize];
        let mut current = count.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            // Relaxed is enough: the counter guards no other memory, and all
            // read-modify-writes on one atomic are totally ordered anyway.
            match count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Held {
                        counters: Arc::clone(&self.counters),
                        kind,
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }
}

// === impl Held ===

impl Drop for Held {
    fn drop(&mut self) {
        self.counters.counts[self.kind as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, pending: usize, requests: usize) -> Limits {
        Limits {
            max_connections: connections,
            max_pending: pending,
            max_requests: requests,
        }
    }

    #[test]
    fn refuses_exactly_past_each_limit() {
        let breaker = CircuitBreaker::new(limits(2, 1, 3));
        let c: Vec<_> = (0..2).map(|_| breaker.try_connection().unwrap()).collect();
        assert_eq!(breaker.try_connection().unwrap_err(), Overflow::Connections);
        let p = breaker.try_pending().unwrap();
        assert_eq!(breaker.try_pending().unwrap_err(), Overflow::Pending);
        let r: Vec<_> = (0..3).map(|_| breaker.try_request().unwrap()).collect();
        assert_eq!(breaker.try_request().unwrap_err(), Overflow::Requests);
        assert_eq!(breaker.counts(), (2, 1, 3));
        drop((c, p, r));
    }

    #[test]
    fn dropping_a_permit_frees_its_slot() {
        let breaker = CircuitBreaker::new(limits(1, 1, 1));
        let request = breaker.try_request().unwrap();
        let pending = breaker.try_pending().unwrap();
        let connection = breaker.try_connection().unwrap();
        assert_eq!(breaker.counts(), (1, 1, 1));
        drop(request);
        assert_eq!(breaker.counts(), (1, 1, 0));
        assert!(breaker.try_request().is_ok());
        drop(pending);
        drop(connection);
        assert_eq!(breaker.counts(), (0, 0, 0));
    }

    #[test]
    fn zero_limit_refuses_everything() {
        let breaker = CircuitBreaker::new(limits(0, 0, 0));
        assert!(breaker.try_connection().is_err());
        assert!(breaker.try_pending().is_err());
        assert!(breaker.try_request().is_err());
        assert_eq!(breaker.counts(), (0, 0, 0));
    }

    #[test]
    fn lowered_limit_keeps_counts_and_refuses_until_drained() {
        let breaker = CircuitBreaker::new(limits(10, 10, 3));
        let held: Vec<_> = (0..3).map(|_| breaker.try_request().unwrap()).collect();
        breaker.set_limits(limits(10, 10, 2));
        assert_eq!(breaker.limits().max_requests, 2);
        assert!(breaker.try_request().is_err());
        drop(held);
        assert_eq!(breaker.counts().2, 0);
        assert!(breaker.try_request().is_ok());
    }

    #[test]
    fn permits_outlive_the_breaker_and_move_across_threads() {
        fn assert_send_static<T: Send + 'static>(_: &T) {}
        let breaker = CircuitBreaker::new(limits(1, 1, 1));
        let connection = breaker.try_connection().unwrap();
        assert_send_static(&connection);
        assert_send_static(&breaker.try_pending().unwrap());
        assert_send_static(&breaker.try_request().unwrap());
        drop(breaker);
        std::thread::spawn(move || drop(connection)).join().unwrap();
    }

    #[test]
    fn overflow_names_the_configured_limit() {
        assert_eq!(Overflow::Connections.as_str(), "max_connections");
        assert_eq!(Overflow::Pending.as_str(), "max_pending");
        assert_eq!(Overflow::Requests.as_str(), "max_requests");
    }

    #[test]
    fn concurrent_callers_never_exceed_the_limit() {
        const LIMIT: usize = 3;
        let breaker = Arc::new(CircuitBreaker::new(limits(LIMIT, LIMIT, LIMIT)));
        // Raised after a permit is granted and lowered before it is dropped,
        // so it never exceeds the number of permits really out.
        let holding = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (breaker, holding, peak) = (
                    Arc::clone(&breaker),
                    Arc::clone(&holding),
                    Arc::clone(&peak),
                );
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(permit) = breaker.try_request() {
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            holding.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=LIMIT).contains(&peak), "peak {peak}");
        assert_eq!(breaker.counts(), (0, 0, 0));
    }
}
