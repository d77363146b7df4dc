//! Passive outlier detection (Envoy's, simplified): targets of one upstream
//! that fail real requests several times in a row are ejected from the
//! rotation for a while, longer each time they are ejected again.
//!
//! This file owns the per-target failure counters and ejection deadlines. It
//! does not pick targets, probe them or log: target selection asks
//! [`OutlierDetector::is_ejected`], the proxy reports each attempt through
//! [`OutlierDetector::record`] and logs or counts the [`Ejection`]s it gets
//! back. Times are durations since an origin the caller keeps fixed for the
//! detector's life.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Largest multiple of `base_ejection` an ejection lasts. Without a cap a
/// target that keeps failing would be ejected for ever longer, and real
/// traffic would almost never find out that it recovered; ten times the base
/// matches Envoy's defaults (30 s base, 300 s maximum).
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// Thresholds and limits of outlier detection for one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Consecutive 5xx responses or resets that eject a target; 0 turns the
    /// rule off.
    pub consecutive_5xx: u32,
    /// Consecutive failed connects that eject a target; 0 turns the rule off.
    pub consecutive_connect_failures: u32,
    /// Length of a first ejection; the n-th lasts n times this (at most
    /// [`MAX_EJECTION_MULTIPLIER`] times). Zero turns ejection off.
    pub base_ejection: Duration,
    /// Most targets ejected at once, as a percentage of all targets
    /// (values above 100 count as 100). Rounded down: with 50% of 1 target
    /// no target is ever ejected.
    pub max_ejection_percent: u32,
}

/// What one attempt against a target showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Any response below 500; resets both failure streaks.
    Success,
    /// A 5xx response.
    Status5xx,
    /// No connection could be opened.
    ConnectFailure,
    /// The connection broke before a whole response; counts like a 5xx.
    Reset,
}

/// Which rule ejected a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionReason {
    /// `consecutive_5xx` responses (or resets) in a row.
    Consecutive5xx,
    /// `consecutive_connect_failures` failed connects in a row.
    ConsecutiveConnectFailures,
}

/// A target just ejected, for the caller to log and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Index of the target.
    pub target: usize,
    /// The target is back in rotation at this time.
    pub until: Duration,
    /// How long this ejection lasts.
    pub duration: Duration,
    /// The rule that fired.
    pub reason: EjectionReason,
    /// Ejections counted toward the multiplier, this one included.
    pub times_ejected: u32,
}

/// One target's outlier state, for the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetOutlierState {
    /// Whether the target is out of rotation now.
    pub ejected: bool,
    /// Time until it is back; zero when not ejected.
    pub remaining: Duration,
    /// Ejections counted toward the multiplier (see
    /// [`OutlierDetector::record`] for how it decays).
    pub times_ejected: u32,
    /// The rule behind the latest ejection, if there was one.
    pub last_reason: Option<EjectionReason>,
}

/// Outlier state of every target of one upstream, indexed like the targets.
#[derive(Debug)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    targets: Box<[TargetStats]>,
    // Serialises ejections so that two targets failing at once cannot both
    // pass the max_ejection_percent check. Only the (rare) ejection path
    // takes it; recording and `is_ejected` stay lock-free.
    ejecting: Mutex<()>,
}

#[derive(Debug, Default)]
struct TargetStats {
    consecutive_5xx: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    times_ejected: AtomicU32,
    // nanoseconds since the caller's origin; 0 = never ejected
    ejected_until: AtomicU64,
    // EjectionReason code; 0 = none yet
    last_reason: AtomicU8,
}

// === impl OutlierSettings ===

impl From<&weir_config::OutlierDetection> for OutlierSettings {
    fn from(cfg: &weir_config::OutlierDetection) -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: cfg.consecutive_5xx,
            consecutive_connect_failures: cfg.consecutive_connect_failures,
            base_ejection: cfg.base_ejection.get(),
            max_ejection_percent: cfg.max_ejection_percent,
        }
    }
}

// === impl EjectionReason ===

impl EjectionReason {
    /// Stable name for logs, metrics labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Consecutive5xx => "consecutive_5xx",
            EjectionReason::ConsecutiveConnectFailures => "consecutive_connect_failures",
        }
    }

    fn code(self) -> u8 {
        match self {
            EjectionReason::Consecutive5xx => 1,
            EjectionReason::ConsecutiveConnectFailures => 2,
        }
    }

    fn from_code(code: u8) -> Option<EjectionReason> {
        match code {
            1 => Some(EjectionReason::Consecutive5xx),
            2 => Some(EjectionReason::ConsecutiveConnectFailures),
            _ => None,
        }
    }
}

impl std::fmt::Display for EjectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl OutlierDetector ===

impl OutlierDetector {
    /// A detector for targets `0..n`, none ejected.
    pub fn new(n: usize, settings: OutlierSettings) -> OutlierDetector {
        OutlierDetector {
            settings,
            targets: (0..n).map(|_| TargetStats::default()).collect(),
            ejecting: Mutex::new(()),
        }
    }

    /// The settings the detector was built with.
    pub fn settings(&self) -> &OutlierSettings {
        &self.settings
    }

    /// Number of targets covered.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when the detector covers no target.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Records how one attempt against `target` went and ejects the target
    /// when a failure streak reaches its threshold, returning the ejection.
    ///
    /// A success resets both streaks. 5xx responses and resets count toward
    /// `consecutive_5xx` only, failed connects toward
    /// `consecutive_connect_failures` only. An ejection lasts
    /// `base_ejection * times_ejected` (multiplier capped at
    /// [`MAX_EJECTION_MULTIPLIER`]) and resets the streaks. It is refused,
    /// keeping the streak so a later failure tries again, when it would take
    /// the number of ejected targets past `max_ejection_percent` of all
    /// targets (rounded down).
    ///
    /// Decay: once a target has stayed in rotation, after its last ejection
    /// ended, for as long as that ejection lasted, its next ejection counts
    /// from 1 again.
    ///
    /// Failures of a target that is already ejected (requests that were in
    /// flight when it was ejected) are dropped. Unknown targets are ignored.
    pub fn record(&self, target: usize, result: Observation, now: Duration) -> Option<Ejection> {
        let stats = self.targets.get(target)?;
        let (counter, threshold, reason) = match result {
            Observation::Success => {
                stats.reset_streaks();
                return None;
            }
            Observation::Status5xx | Observation::Reset => (
                &stats.consecutive_5xx,
                self.settings.consecutive_5xx,
                EjectionReason::Consecutive5xx,
            ),
            Observation::ConnectFailure => (
                &stats.consecutive_connect_failures,
                self.settings.consecutive_connect_failures,
                EjectionReason::ConsecutiveConnectFailures,
            ),
        };
        // Failures of requests that were in flight when the target was
        // ejected say nothing new about it.
        if threshold == 0 || self.is_ejected(target, now) {
            return None;
        }
        let streak = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_add(1))
            })
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        if streak < threshold {
            return None;
        }
        self.eject(target, stats, reason, now)
    }

    /// Whether `target` is out of rotation at `now`. One atomic load; unknown
    /// targets are never ejected.
    pub fn is_ejected(&self, target: usize, now: Duration) -> bool {
        self.targets
            .get(target)
            .is_some_and(|t| nanos(now) < t.ejected_until.load(Ordering::Relaxed))
    }

    /// Number of targets out of rotation at `now`.
    pub fn ejected_count(&self, now: Duration) -> usize {
        let now = nanos(now);
        self.targets
            .iter()
            .filter(|t| now < t.ejected_until.load(Ordering::Relaxed))
            .count()
    }

    /// The state of `target` at `now`, for the admin API. Unknown targets
    /// read as never ejected.
    pub fn describe(&self, target: usize, now: Duration) -> TargetOutlierState {
        let Some(stats) = self.targets.get(target) else {
            return TargetOutlierState::default();
        };
        let until = stats.ejected_until.load(Ordering::Relaxed);
        let now = nanos(now);
        TargetOutlierState {
            ejected: now < until,
            remaining: Duration::from_nanos(until.saturating_sub(now)),
            times_ejected: stats.times_ejected.load(Ordering::Relaxed),
            last_reason: EjectionReason::from_code(stats.last_reason.load(Ordering::Relaxed)),
        }
    }

    fn eject(
        &self,
        target: usize,
        stats: &TargetStats,
        reason: EjectionReason,
        now: Duration,
    ) -> Option<Ejection> {
        // A poisoned lock only means another thread panicked while holding
        // it; the guarded data is `()`, so carrying on is safe.
        let _guard = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        let now_nanos = nanos(now);
        let previous_until = stats.ejected_until.load(Ordering::Relaxed);
        if now_nanos < previous_until {
            // another thread ejected it first
            return None;
        }
        let percent = self.settings.max_ejection_percent.min(100) as usize;
        let allowed = self.targets.len() * percent / 100;
        if self.ejected_count(now) >= allowed {
            return None;
        }
        let mut times = stats.times_ejected.load(Ordering::Relaxed);
        if times > 0 {
            let healthy_since = previous_until.saturating_add(nanos(self.ejection_time(times)));
            if now_nanos >= healthy_since {
                times = 0;
            }
        }
        let times = times.saturating_add(1);
        let duration = self.ejection_time(times);
        if duration.is_zero() {
            return None;
        }
        let until = now_nanos.saturating_add(nanos(duration));
        stats.times_ejected.store(times, Ordering::Relaxed);
        stats.last_reason.store(reason.code(), Ordering::Relaxed);
        stats.ejected_until.store(until, Ordering::Relaxed);
        stats.reset_streaks();
        Some(Ejection {
            target,
            until: Duration::from_nanos(until),
            duration,
            reason,
            times_ejected: times,
        })
    }

    fn ejection_time(&self, times: u32) -> Duration {
        self.settings
            .base_ejection
            .checked_mul(times.min(MAX_EJECTION_MULTIPLIER))
            .unwrap_or(Duration::MAX)
    }
}

// === impl TargetStats ===

impl TargetStats {
    fn reset_streaks(&self) {
        // Successes are the common case: skip the store (and the cache-line
        // write it costs other cores) when there is no streak to reset.
        if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
        }
    }
}

/// Nanoseconds since the origin; saturates after 584 years.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(consecutive_5xx: u32, connect: u32, percent: u32) -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx,
            consecutive_connect_failures: connect,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: percent,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Records `n` observations at `now`, returning the last result.
    fn record_n(
        d: &OutlierDetector,
        target: usize,
        obs: Observation,
        n: u32,
        now: Duration,
    ) -> Option<Ejection> {
        (0..n).map(|_| d.record(target, obs, now)).last().flatten()
    }

    #[test]
    fn ejects_at_the_5xx_threshold() {
        let d = OutlierDetector::new(4, settings(3, 0, 100));
        let now = secs(10);
        assert_eq!(record_n(&d, 1, Observation::Status5xx, 2, now), None);
        assert!(!d.is_ejected(1, now));
        let ejection = d.record(1, Observation::Reset, now).unwrap();
        assert_eq!(ejection.target, 1);
        assert_eq!(ejection.reason, EjectionReason::Consecutive5xx);
        assert_eq!(ejection.duration, secs(30));
        assert_eq!(ejection.until, secs(40));
        assert_eq!(ejection.times_ejected, 1);
        assert!(d.is_ejected(1, now));
        assert!(!d.is_ejected(0, now));
    }

    #[test]
    fn ejects_at_the_connect_failure_threshold() {
        let d = OutlierDetector::new(2, settings(0, 2, 100));
        let now = secs(1);
        // the 5xx rule is off
        assert_eq!(record_n(&d, 0, Observation::Status5xx, 50, now), None);
        assert_eq!(d.record(0, Observation::ConnectFailure, now), None);
        let ejection = d.record(0, Observation::ConnectFailure, now).unwrap();
        assert_eq!(ejection.reason, EjectionReason::ConsecutiveConnectFailures);
        assert_eq!(
            d.describe(0, now).last_reason,
            Some(EjectionReason::ConsecutiveConnectFailures)
        );
    }

    #[test]
    fn success_resets_the_streak() {
        let d = OutlierDetector::new(2, settings(3, 3, 100));
        let now = secs(5);
        for _ in 0..10 {
            record_n(&d, 0, Observation::Status5xx, 2, now);
            record_n(&d, 0, Observation::ConnectFailure, 2, now);
            assert_eq!(d.record(0, Observation::Success, now), None);
        }
        assert!(!d.is_ejected(0, now));
    }

    #[test]
    fn target_returns_after_base_ejection() {
        let d = OutlierDetector::new(2, settings(1, 0, 100));
        d.record(0, Observation::Status5xx, secs(100)).unwrap();
        assert!(d.is_ejected(0, secs(129)));
        let state = d.describe(0, secs(120));
        assert!(state.ejected);
        assert_eq!(state.remaining, secs(10));
        assert!(!d.is_ejected(0, secs(130)));
        assert_eq!(d.describe(0, secs(130)).remaining, Duration::ZERO);
    }

    #[test]
    fn second_ejection_lasts_twice_as_long() {
        let d = OutlierDetector::new(2, settings(1, 0, 100));
        d.record(0, Observation::Status5xx, secs(0)).unwrap();
        // back at 30 s, fails again soon after
        let second = d.record(0, Observation::Status5xx, secs(35)).unwrap();
        assert_eq!(second.times_ejected, 2);
        assert_eq!(second.duration, secs(60));
        assert!(d.is_ejected(0, secs(94)));
        assert!(!d.is_ejected(0, secs(95)));
    }

    #[test]
    fn ejection_time_is_capped() {
        let d = OutlierDetector::new(2, settings(1, 0, 100));
        let mut now = secs(0);
        let mut last = None;
        for _ in 0..15 {
            let e = d.record(0, Observation::Status5xx, now).unwrap();
            // fail again as soon as it is back
            now = e.until;
            last = Some(e);
        }
        let last = last.unwrap();
        assert_eq!(last.times_ejected, 15);
        assert_eq!(last.duration, secs(30) * MAX_EJECTION_MULTIPLIER);
    }

    #[test]
    fn multiplier_decays_after_a_healthy_spell() {
        let d = OutlierDetector::new(2, settings(1, 0, 100));
        d.record(0, Observation::Status5xx, secs(0)).unwrap();
        let second = d.record(0, Observation::Status5xx, secs(30)).unwrap();
        assert_eq!(second.until, secs(90));
        // in rotation from 90 s; a healthy spell as long as the last
        // ejection (60 s) ends at 150 s
        let early = d.record(0, Observation::Status5xx, secs(149)).unwrap();
        assert_eq!(early.times_ejected, 3);
        let d = OutlierDetector::new(2, settings(1, 0, 100));
        d.record(0, Observation::Status5xx, secs(0)).unwrap();
        d.record(0, Observation::Status5xx, secs(30)).unwrap();
        let forgiven = d.record(0, Observation::Status5xx, secs(150)).unwrap();
        assert_eq!(forgiven.times_ejected, 1);
        assert_eq!(forgiven.duration, secs(30));
    }

    #[test]
    fn failures_while_ejected_do_not_extend_the_ejection() {
        let d = OutlierDetector::new(2, settings(2, 0, 100));
        let first = record_n(&d, 0, Observation::Status5xx, 2, secs(0)).unwrap();
        assert_eq!(record_n(&d, 0, Observation::Status5xx, 9, secs(1)), None);
        assert_eq!(d.describe(0, secs(1)).times_ejected, 1);
        assert!(!d.is_ejected(0, first.until));
        // the in-flight failures left no streak behind
        assert_eq!(d.record(0, Observation::Status5xx, first.until), None);
        assert!(d.record(0, Observation::Status5xx, first.until).is_some());
    }

    #[test]
    fn respects_max_ejection_percent() {
        let d = OutlierDetector::new(4, settings(1, 0, 50));
        let now = secs(10);
        assert!(d.record(0, Observation::Status5xx, now).is_some());
        assert!(d.record(1, Observation::Status5xx, now).is_some());
        assert_eq!(d.record(2, Observation::Status5xx, now), None);
        assert_eq!(d.record(3, Observation::Status5xx, now), None);
        assert_eq!(d.ejected_count(now), 2);
        // once the first two are back, the others may go
        let later = secs(40);
        assert!(d.record(2, Observation::Status5xx, later).is_some());
        assert_eq!(d.ejected_count(later), 1);
    }

    #[test]
    fn half_of_one_target_is_none() {
        let d = OutlierDetector::new(1, settings(1, 1, 50));
        assert_eq!(record_n(&d, 0, Observation::Status5xx, 10, secs(1)), None);
        assert!(!d.is_ejected(0, secs(1)));
        let all = OutlierDetector::new(1, settings(1, 1, 100));
        assert!(all
            .record(0, Observation::ConnectFailure, secs(1))
            .is_some());
    }

    #[test]
    fn settings_come_from_the_upstream_config() {
        let cfg = weir_config::OutlierDetection {
            consecutive_5xx: 5,
            consecutive_connect_failures: 3,
            base_ejection: weir_config::Duration::from_secs(30),
            max_ejection_percent: 50,
        };
        assert_eq!(OutlierSettings::from(&cfg), settings(5, 3, 50));
    }

    #[test]
    fn unknown_targets_are_ignored() {
        let d = OutlierDetector::new(1, settings(1, 1, 100));
        assert_eq!(d.record(7, Observation::Status5xx, secs(1)), None);
        assert!(!d.is_ejected(7, secs(1)));
        assert_eq!(d.describe(7, secs(1)), TargetOutlierState::default());
    }

    #[test]
    fn concurrent_failures_never_exceed_the_ejection_cap() {
        let d = OutlierDetector::new(8, settings(3, 2, 50));
        let now = secs(60);
        std::thread::scope(|s| {
            for t in 0..4usize {
                let d = &d;
                s.spawn(move || {
                    for i in 0..2000usize {
                        let target = (t + i) % 8;
                        let obs = match i % 5 {
                            0 => Observation::Success,
                            1 | 2 => Observation::ConnectFailure,
                            _ => Observation::Status5xx,
                        };
                        d.record(target, obs, now);
                        assert!(d.ejected_count(now) <= 4);
                    }
                });
            }
        });
        assert!(d.ejected_count(now) <= 4);
        for target in 0..8 {
            record_n(&d, target, Observation::ConnectFailure, 2, now);
        }
        assert_eq!(d.ejected_count(now), 4);
    }
}
