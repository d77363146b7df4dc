//! `Deadline`: a request's deadline, shared by every stage that waits
//! (connect, response headers, response body). Its timer is created only the
//! first time a stage actually has to wait, and then reused by the later
//! stages, so a request costs at most one timer registration, and a response
//! that is ready at once costs none. The timer itself is recycled through the
//! client connection (`ConnCtx`), so a keep-alive connection allocates it
//! once rather than once per request; and a recycled timer that is already
//! set no later than the new deadline is left where it is (moving a timer
//! in tokio's wheel costs more than the one early wakeup, per request
//! timeout, that re-arms it).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// A point in time after which the request fails.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    // False while `timer` is a recycled one not yet checked against `at`.
    armed: bool,
}

impl Deadline {
    /// A deadline at `at`, reusing `recycled` as its timer when given.
    pub fn new(at: Instant, recycled: Option<Pin<Box<Sleep>>>) -> Self {
        Deadline {
            at,
            timer: recycled,
            armed: false,
        }
    }

    /// When the deadline passes.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// True once the deadline has passed; registers `cx` to be woken then
    /// (or earlier, when a recycled timer was set for an earlier time).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let timer = match &mut self.timer {
            Some(t) => t,
            None => {
                self.armed = true;
                self.timer.insert(Box::pin(tokio::time::sleep_until(at)))
            }
        };
        if !self.armed {
            self.armed = true;
            if timer.deadline() > at {
                timer.as_mut().reset(at);
            }
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Fired: at or after `at`, or early for an older deadline.
            if timer.deadline() >= at || Instant::now() >= at {
                return true;
            }
            timer.as_mut().reset(at);
        }
    }

    /// The timer, for reuse by a later request.
    pub fn into_timer(self) -> Option<Pin<Box<Sleep>>> {
        self.timer
    }
}

pin_project! {
    /// A future run under an optional deadline: `None` when the deadline
    /// passes first. A plain struct rather than an `async fn`, so that the
    /// future it wraps is stored once and not moved again.
    pub struct Within<'d, F> {
        #[pin]
        fut: F,
        deadline: &'d mut Option<Deadline>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.deadline {
            Some(d) => {
                if d.poll_expired(cx) {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                }
            }
            None => Poll::Pending,
        }
    }
}

/// Runs `fut` under an optional deadline (None: no limit).
pub fn within<F: Future>(deadline: &mut Option<Deadline>, fut: F) -> Within<'_, F> {
    Within { fut, deadline }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn deadline_in(d: Duration, timer: Option<Pin<Box<Sleep>>>) -> Option<Deadline> {
        Some(Deadline::new(Instant::now() + d, timer))
    }

    #[tokio::test(start_paused = true)]
    async fn ready_future_wins_without_a_timer() {
        let mut d = deadline_in(Duration::from_secs(1), None);
        assert_eq!(within(&mut d, async { 7 }).await, Some(7));
        assert!(
            d.is_some_and(|d| d.timer.is_none()),
            "no timer for a future that was ready at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_never_expires() {
        let mut d = None;
        let slow = tokio::time::sleep(Duration::from_secs(3600));
        assert_eq!(within(&mut d, slow).await, Some(()));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_future_loses_at_the_deadline_and_the_timer_is_reused() {
        let mut d = deadline_in(Duration::from_millis(100), None);
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(within(&mut d, slow).await, None);
        // A later stage sees the same, already expired, deadline.
        assert_eq!(within(&mut d, std::future::pending::<()>()).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recycled_fired_timer_is_reset_to_the_new_deadline() {
        let mut first = deadline_in(Duration::from_millis(10), None);
        assert_eq!(within(&mut first, std::future::pending::<()>()).await, None);
        let timer = first.and_then(Deadline::into_timer);
        assert!(timer.is_some());
        // The old timer has fired; reused for a deadline 1 s away it must
        // not report expiry before then.
        let mut second = deadline_in(Duration::from_secs(1), timer);
        let quick = tokio::time::sleep(Duration::from_millis(500));
        assert_eq!(within(&mut second, quick).await, Some(()));
        assert_eq!(
            within(&mut second, std::future::pending::<()>()).await,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_recycled_earlier_timer_fires_early_and_is_rearmed() {
        // The first request waits a while and ends before its deadline.
        let mut first = deadline_in(Duration::from_secs(30), None);
        let answer = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(within(&mut first, answer).await, Some(()));
        let timer = first.and_then(Deadline::into_timer);
        let old = timer.as_ref().map(|t| t.deadline());
        // The next one's deadline is later; the timer keeps the old time.
        let start = Instant::now();
        let mut second = deadline_in(Duration::from_secs(30), timer);
        let slow = tokio::time::sleep(Duration::from_secs(29) + Duration::from_millis(500));
        assert_eq!(within(&mut second, slow).await, Some(()), "no early expiry");
        assert!(old.is_some_and(|o| o < start + Duration::from_secs(30)));
        assert_eq!(
            within(&mut second, std::future::pending::<()>()).await,
            None
        );
        assert_eq!(Instant::now(), start + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_recycled_later_timer_is_moved_earlier() {
        let mut first = deadline_in(Duration::from_secs(60), None);
        let answer = tokio::time::sleep(Duration::from_millis(1));
        assert_eq!(within(&mut first, answer).await, Some(()));
        let timer = first.and_then(Deadline::into_timer);
        let start = Instant::now();
        let mut second = deadline_in(Duration::from_secs(2), timer);
        assert_eq!(
            within(&mut second, std::future::pending::<()>()).await,
            None
        );
        assert_eq!(Instant::now(), start + Duration::from_secs(2));
    }
}
