//! Target selection: round robin, random, least request (power of two
//! choices) and consistent hashing, all weighted. Selection is lock-free:
//! round robin is one atomic increment over a precomputed schedule, the others
//! read only immutable tables and the targets' in-flight counters.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use weir_config::LoadBalancing;

/// Largest round-robin schedule we precompute; beyond it weighted random is
/// statistically equivalent and needs no table.
const MAX_SCHEDULE: usize = 1 << 16;
/// Points each unit of weight gets on the hash ring.
const RING_POINTS_PER_WEIGHT: usize = 64;

/// A compiled selection policy over targets `0..n`.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    weights: Vec<u32>,
    // cumulative weights, for weighted random picks
    cumulative: Vec<u64>,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    Random,
    LeastRequest,
    Ring {
        points: Vec<(u64, u32)>,
    },
}

impl Balancer {
    /// Builds a balancer for targets with these weights (each >= 1).
    pub fn new(policy: LoadBalancing, weights: &[u32]) -> Balancer {
        let weights: Vec<u32> = weights.iter().map(|w| (*w).max(1)).collect();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0u64;
        for w in &weights {
            total += u64::from(*w);
            cumulative.push(total);
        }
        let kind = match policy {
            LoadBalancing::RoundRobin => match smooth_schedule(&weights) {
                Some(schedule) => Kind::RoundRobin {
                    schedule,
                    next: AtomicUsize::new(0),
                },
                None => Kind::Random,
            },
            LoadBalancing::Random => Kind::Random,
            LoadBalancing::LeastRequest => Kind::LeastRequest,
            LoadBalancing::ConsistentHash => Kind::Ring {
                points: ring(&weights),
            },
        };
        Balancer {
            kind,
            weights,
            cumulative,
        }
    }

    /// Picks a target index. `eligible(i)` says whether target `i` may be used
    /// (resolved, not excluded); `in_flight(i)` is its current load; `key` is
    /// the request's hash key for consistent hashing. None when no target is
    /// eligible.
    pub fn pick(
        &self,
        key: Option<u64>,
        eligible: impl Fn(usize) -> bool,
        in_flight: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let first = match &self.kind {
            Kind::RoundRobin { schedule, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                schedule[i] as usize
            }
            Kind::Random => self.weighted_random(),
            Kind::LeastRequest => {
                let a = self.weighted_random();
                let b = self.weighted_random();
                // Compare load relative to weight: in_flight / weight, cross-multiplied.
                let la = in_flight(a) as u64 * u64::from(self.weights[b]);
                let lb = in_flight(b) as u64 * u64::from(self.weights[a]);
                match (eligible(a), eligible(b)) {
                    (true, true) if lb < la => b,
                    (true, _) => a,
                    (false, true) => b,
                    (false, false) => a,
                }
            }
            Kind::Ring { points } => {
                let k = key.unwrap_or_else(|| fastrand::u64(..));
                let at = points.partition_point(|(h, _)| *h < k);
                points
                    .get(at)
                    .or_else(|| points.first())
                    .map_or(0, |p| p.1 as usize)
            }
        };
        if eligible(first) {
            return Some(first);
        }
        // Fall back to the next eligible target in a stable order, so that a
        // hashed key moves to the same replacement every time.
        (1..n).map(|step| (first + step) % n).find(|&i| eligible(i))
    }

    fn weighted_random(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let r = fastrand::u64(0..total);
        self.cumulative.partition_point(|c| *c <= r)
    }
}

/// Hash of a consistent-hash key.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

// Smooth weighted round robin (the interleaving NGINX popularised): each round
// every target gains its weight, the largest current value is picked and loses
// the total. Weights are first divided by their gcd to keep the schedule short.
fn smooth_schedule(weights: &[u32]) -> Option<Vec<u32>> {
    let g = weights.iter().fold(0u32, |acc, w| gcd(acc, *w)).max(1);
    let reduced: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    if total as usize > MAX_SCHEDULE {
        return None;
    }
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    Some(schedule)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn ring(weights: &[u32]) -> Vec<(u64, u32)> {
    let mut points = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let count = (*w as usize * RING_POINTS_PER_WEIGHT).min(64 * 1024);
        for p in 0..count {
            points.push((hash_key(format!("{i}-{p}").as_bytes()), i as u32));
        }
    }
    points.sort_unstable();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balancer, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[b.pick(None, |_| true, |_| 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let b = Balancer::new(LoadBalancing::RoundRobin, &[1, 2, 3]);
        assert_eq!(counts(&b, 3, 600), vec![100, 200, 300]);
    }

    #[test]
    fn round_robin_interleaves() {
        let b = Balancer::new(LoadBalancing::RoundRobin, &[5, 1]);
        let seq: Vec<usize> = (0..6)
            .map(|_| b.pick(None, |_| true, |_| 0).unwrap())
            .collect();
        // The light target is not starved until the end of the cycle.
        assert!(seq[..4].contains(&1), "{seq:?}");
    }

    #[test]
    fn random_roughly_follows_weights() {
        let b = Balancer::new(LoadBalancing::Random, &[1, 3]);
        let c = counts(&b, 2, 20_000);
        assert!(c[1] > c[0] * 2, "{c:?}");
    }

    #[test]
    fn least_request_prefers_idle_target() {
        let b = Balancer::new(LoadBalancing::LeastRequest, &[1, 1]);
        let mut c = [0; 2];
        for _ in 0..1000 {
            c[b.pick(None, |_| true, |i| if i == 0 { 100 } else { 0 })
                .unwrap()] += 1;
        }
        assert!(c[1] > 700, "{c:?}");
    }

    #[test]
    fn consistent_hash_is_stable_and_spreads() {
        let b = Balancer::new(LoadBalancing::ConsistentHash, &[1, 1, 1]);
        let mut seen = [0; 3];
        for user in 0..300 {
            let key = hash_key(format!("user-{user}").as_bytes());
            let first = b.pick(Some(key), |_| true, |_| 0).unwrap();
            assert_eq!(b.pick(Some(key), |_| true, |_| 0).unwrap(), first);
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&s| s > 50), "{seen:?}");
    }

    #[test]
    fn ineligible_targets_are_skipped() {
        let b = Balancer::new(LoadBalancing::RoundRobin, &[1, 1, 1]);
        for _ in 0..10 {
            assert_eq!(b.pick(None, |i| i == 2, |_| 0), Some(2));
        }
        assert_eq!(b.pick(None, |_| false, |_| 0), None);
    }
}
