//! `Deadline`: a request's deadline, shared by every stage that waits
//! (connect, response headers, response body). Its timer is created only the
//! first time a stage actually has to wait, and then reused by the later
//! stages, so a request costs at most one timer registration, and a response
//! that is ready at once costs none. The timer itself is recycled through the
//! client connection (`ConnCtx`), so a keep-alive connection allocates it
//! once rather than once per request.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A point in time after which the request fails.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    // False while `timer` is a recycled one not yet set to `at`.
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

    /// True once the deadline has passed; registers `cx` to be woken then.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let timer = match &mut self.timer {
            Some(t) => {
                if !self.armed {
                    t.as_mut().reset(at);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        self.armed = true;
        timer.as_mut().poll(cx).is_ready()
    }

    /// The timer, for reuse by a later request.
    pub fn into_timer(self) -> Option<Pin<Box<Sleep>>> {
        self.timer
    }

    /// Runs `fut` to completion unless the deadline passes first (None).
    pub async fn run<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if self.poll_expired(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// Runs `fut` under an optional deadline (None: no limit).
pub async fn within<F: Future>(deadline: &mut Option<Deadline>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => d.run(fut).await,
        None => Some(fut.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn ready_future_wins_without_a_timer() {
        let mut d = Deadline::new(Instant::now() + Duration::from_secs(1), None);
        assert_eq!(d.run(async { 7 }).await, Some(7));
        assert!(
            d.timer.is_none(),
            "no timer for a future that was ready at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_future_loses_at_the_deadline_and_the_timer_is_reused() {
        let mut d = Deadline::new(Instant::now() + Duration::from_millis(100), None);
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(d.run(slow).await, None);
        // A later stage sees the same, already expired, deadline.
        assert_eq!(d.run(std::future::pending::<()>()).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recycled_timer_is_reset_to_the_new_deadline() {
        let mut first = Deadline::new(Instant::now() + Duration::from_millis(10), None);
        assert_eq!(first.run(std::future::pending::<()>()).await, None);
        let timer = first.into_timer();
        assert!(timer.is_some());
        // The old timer has fired; reused for a deadline 1 s away it must
        // not report expiry before then.
        let mut second = Deadline::new(Instant::now() + Duration::from_secs(1), timer);
        let quick = tokio::time::sleep(Duration::from_millis(500));
        assert_eq!(second.run(quick).await, Some(()));
        assert_eq!(second.run(std::future::pending::<()>()).await, None);
    }
}
