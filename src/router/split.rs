//! Weighted splits across upstreams (canary releases): which side of a
//! route's `upstreams` a request goes to, optionally sticky on a header or
//! cookie so that one user stays on one side.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::header::{self, HeaderMap};
use weir_config::Sticky;

/// One side of a split.
#[derive(Debug, Clone)]
pub struct Side {
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// Position of the upstream in `Config::upstreams`.
    pub upstream_index: usize,
    /// Relative share of requests.
    pub weight: u32,
}

/// A compiled weighted split.
#[derive(Debug, Clone)]
pub struct Split {
    sides: Box<[Side]>,
    // Cumulative weights: side i owns [cumulative[i-1], cumulative[i]).
    cumulative: Box<[u64]>,
    sticky: Option<Sticky>,
}

impl Split {
    /// Builds a split; the total weight must be positive (validated config).
    pub fn new(sides: Vec<Side>, sticky: Option<Sticky>) -> Split {
        let mut total = 0u64;
        let cumulative = sides
            .iter()
            .map(|s| {
                total += u64::from(s.weight);
                total
            })
            .collect();
        Split {
            sides: sides.into_boxed_slice(),
            cumulative,
            sticky,
        }
    }

    /// The sides, in configuration order.
    pub fn sides(&self) -> &[Side] {
        &self.sides
    }

    /// What keeps a user on one side, if anything.
    pub fn sticky(&self) -> Option<&Sticky> {
        self.sticky.as_ref()
    }

    /// Picks a side: the sticky key's hash when the request carries one,
    /// otherwise `roll` (a uniformly random number). Returns the side's index.
    ///
    /// Sides own consecutive stretches of the weight line in configuration
    /// order, and a sticky key always lands on the same point of it. When a
    /// canary listed last grows from 10 to 20, its stretch grows downwards,
    /// so every user already on the canary stays there.
    pub fn pick(&self, headers: &HeaderMap, roll: u64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let point = match self.sticky.as_ref().and_then(|s| sticky_value(s, headers)) {
            Some(value) => stable_hash(value) % total,
            None => roll % total,
        };
        self.cumulative
            .partition_point(|&c| c <= point)
            .min(self.sides.len() - 1)
    }
}

fn sticky_value<'h>(sticky: &Sticky, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    match sticky {
        Sticky::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        Sticky::Cookie(name) => cookie(headers, name).map(str::as_bytes),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A hash that is the same in every weir process and version built from the
/// same code (SipHash with fixed keys), so a user sticks to a side across
/// instances behind a load balancer.
fn stable_hash(value: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7765_6972, 0x7370_6c69);
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn split(weights: &[u32], sticky: Option<Sticky>) -> Split {
        let sides = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Side {
                upstream: Arc::from(format!("v{}", i + 1)),
                upstream_index: i,
                weight: *w,
            })
            .collect();
        Split::new(sides, sticky)
    }

    #[test]
    fn rolls_follow_the_weights() {
        let s = split(&[90, 10], None);
        let h = HeaderMap::new();
        let canary = (0..1000u64).filter(|r| s.pick(&h, *r) == 1).count();
        assert_eq!(canary, 100);
    }

    #[test]
    fn zero_weight_side_gets_nothing() {
        let s = split(&[0, 5, 0], None);
        let h = HeaderMap::new();
        assert!((0..100u64).all(|r| s.pick(&h, r) == 1));
    }

    #[test]
    fn sticky_header_keeps_a_user_on_one_side_whatever_the_roll() {
        let s = split(&[50, 50], Some(Sticky::Header("x-user".into())));
        for user in 0..50 {
            let mut h = HeaderMap::new();
            h.insert(
                "x-user",
                HeaderValue::from_str(&format!("u{user}")).unwrap(),
            );
            let first = s.pick(&h, 0);
            assert!((1..20u64).all(|r| s.pick(&h, r) == first));
        }
    }

    #[test]
    fn sticky_cookie_is_read_from_any_cookie_line() {
        let s = split(&[50, 50], Some(Sticky::Cookie("uid".into())));
        let mut a = HeaderMap::new();
        a.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        a.append(header::COOKIE, HeaderValue::from_static("x=1; uid=alice"));
        let mut b = HeaderMap::new();
        b.insert(header::COOKIE, HeaderValue::from_static("uid=alice"));
        assert_eq!(s.pick(&a, 0), s.pick(&b, 1));
        assert_eq!(cookie(&a, "uid"), Some("alice"));
        assert_eq!(cookie(&a, "missing"), None);
    }

    #[test]
    fn growing_the_last_side_keeps_its_users() {
        let before = split(&[90, 10], Some(Sticky::Header("x-user".into())));
        let after = split(&[80, 20], Some(Sticky::Header("x-user".into())));
        let mut moved_to_canary = 0;
        for user in 0..2000 {
            let mut h = HeaderMap::new();
            h.insert(
                "x-user",
                HeaderValue::from_str(&format!("user-{user}")).unwrap(),
            );
            let (b, a) = (before.pick(&h, 0), after.pick(&h, 0));
            assert!(!(b == 1 && a == 0), "a canary user was moved back");
            moved_to_canary += usize::from(b == 0 && a == 1);
        }
        assert!(moved_to_canary > 0);
    }
}
