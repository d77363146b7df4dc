//! `Deadline`: a request's deadline, shared by every stage that waits
//! (connect, response headers, response body). Its timer is created only the
//! first time a stage actually has to wait, and then reused by the later
//! stages, so a request costs at most one timer registration, and a response
//! that is ready at once costs none.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A point in time after which the request fails.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// A deadline at `at`; no timer yet.
    pub fn new(at: Instant) -> Self {
        Deadline { at, timer: None }
    }

    /// True once the deadline has passed; registers `cx` to be woken then.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(cx).is_ready()
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
        let mut d = Deadline::new(Instant::now() + Duration::from_secs(1));
        assert_eq!(d.run(async { 7 }).await, Some(7));
        assert!(
            d.timer.is_none(),
            "no timer for a future that was ready at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_future_loses_at_the_deadline_and_the_timer_is_reused() {
        let mut d = Deadline::new(Instant::now() + Duration::from_millis(100));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(d.run(slow).await, None);
        // A later stage sees the same, already expired, deadline.
        assert_eq!(d.run(std::future::pending::<()>()).await, None);
    }
}
