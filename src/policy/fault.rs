//! Fault injection for one route: delay some requests, abort some with a
//! chosen status, optionally only those that carry an opt-in header. Delay and
//! abort are rolled independently, as Envoy does; when both hit, the caller
//! waits first and then aborts.
//!
//! This file owns the decision only. It must not sleep, build responses or
//! draw random numbers itself: the caller passes the rolls, so tests can
//! script them.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

/// The compiled fault settings of one route.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    delay: Option<(Duration, f64)>,
    abort: Option<(StatusCode, f64)>,
    header: Option<HeaderName>,
}

/// What to do to one request. The default is to leave it alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long before going on.
    pub delay: Option<Duration>,
    /// Answer with this status instead of forwarding (after any delay).
    pub abort: Option<StatusCode>,
}

// === impl FaultPolicy ===

impl FaultPolicy {
    /// Builds a policy. Each fault carries the percentage of requests it hits
    /// (0 to 100; values outside are clamped, NaN counts as 0). With `header`
    /// set, only requests that carry that header are eligible.
    pub fn new(
        delay: Option<(Duration, f64)>,
        abort: Option<(StatusCode, f64)>,
        header: Option<HeaderName>,
    ) -> FaultPolicy {
        FaultPolicy {
            delay: delay.map(|(d, p)| (d, clamp_percent(p))),
            abort: abort.map(|(s, p)| (s, clamp_percent(p))),
            header,
        }
    }

    /// Decides the faults for one request. `roll` returns a uniform number in
    /// `[0, 1)`; it is called once for the delay and then once for the abort,
    /// and only for a fault whose percentage is strictly between 0 and 100 (0
    /// never hits and 100 always does, so there is nothing to roll).
    pub fn decide(&self, headers: &HeaderMap, mut roll: impl FnMut() -> f64) -> FaultDecision {
        if let Some(name) = &self.header {
            if !headers.contains_key(name) {
                return FaultDecision::default();
            }
        }
        FaultDecision {
            delay: self
                .delay
                .and_then(|(d, p)| hits(p, &mut roll).then_some(d)),
            abort: self
                .abort
                .and_then(|(s, p)| hits(p, &mut roll).then_some(s)),
        }
    }
}

fn clamp_percent(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 100.0)
    }
}

fn hits(percent: f64, roll: &mut impl FnMut() -> f64) -> bool {
    if percent <= 0.0 {
        false
    } else if percent >= 100.0 {
        true
    } else {
        roll() * 100.0 < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const DELAY: Duration = Duration::from_millis(250);

    // Hands out the given rolls in order and fails the test if more are asked.
    fn script(rolls: &[f64]) -> impl FnMut() -> f64 + '_ {
        let mut next = rolls.iter();
        move || *next.next().expect("more rolls than scripted")
    }

    #[test]
    fn delay_and_abort_roll_independently_delay_first() {
        let policy = FaultPolicy::new(
            Some((DELAY, 50.0)),
            Some((StatusCode::SERVICE_UNAVAILABLE, 50.0)),
            None,
        );
        let none = HeaderMap::new();
        let both = policy.decide(&none, script(&[0.1, 0.2]));
        assert_eq!(both.delay, Some(DELAY));
        assert_eq!(both.abort, Some(StatusCode::SERVICE_UNAVAILABLE));
        let delay_only = policy.decide(&none, script(&[0.49, 0.5]));
        assert_eq!(delay_only.delay, Some(DELAY));
        assert_eq!(delay_only.abort, None);
        let abort_only = policy.decide(&none, script(&[0.5, 0.0]));
        assert_eq!(abort_only.delay, None);
        assert_eq!(abort_only.abort, Some(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn hundred_percent_always_hits_and_zero_never_without_rolling() {
        let always = FaultPolicy::new(
            Some((DELAY, 100.0)),
            Some((StatusCode::IM_A_TEAPOT, 0.0)),
            None,
        );
        let decision = always.decide(&HeaderMap::new(), script(&[]));
        assert_eq!(
            decision,
            FaultDecision {
                delay: Some(DELAY),
                abort: None
            }
        );
    }

    #[test]
    fn out_of_range_percentages_are_clamped() {
        let policy = FaultPolicy::new(
            Some((DELAY, 250.0)),
            Some((StatusCode::BAD_GATEWAY, f64::NAN)),
            None,
        );
        let decision = policy.decide(&HeaderMap::new(), script(&[]));
        assert_eq!(decision.delay, Some(DELAY));
        assert_eq!(decision.abort, None);
    }

    #[test]
    fn opt_in_header_limits_faults_to_requests_that_carry_it() {
        let name = HeaderName::from_static("x-fault");
        let policy = FaultPolicy::new(
            None,
            Some((StatusCode::BAD_GATEWAY, 100.0)),
            Some(name.clone()),
        );
        assert_eq!(
            policy.decide(&HeaderMap::new(), script(&[])),
            FaultDecision::default()
        );
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static("1"));
        assert_eq!(
            policy.decide(&headers, script(&[])).abort,
            Some(StatusCode::BAD_GATEWAY)
        );
    }

    #[test]
    fn no_faults_configured_leaves_the_request_alone() {
        let policy = FaultPolicy::new(None, None, None);
        assert_eq!(
            policy.decide(&HeaderMap::new(), script(&[])),
            FaultDecision::default()
        );
    }
}
