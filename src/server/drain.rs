//! Graceful drain of client connections: one signal every served connection
//! watches, and a count of the connections still being served. When the
//! signal fires, each connection finishes the request it is serving and
//! closes.
//!
//! hyper-util's `GracefulShutdown` does the same for the connection types it
//! knows, but not for an HTTP/1.1 connection served `with_upgrades()`, which
//! WebSockets need. A connection that upgrades is over for this module (its
//! future completes when hyper hands the socket out); the tunnel that takes
//! it is counted by `proxy::Tunnels`.

use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use tokio::sync::watch;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Starts the drain and waits for the watched connections to end.
#[derive(Debug)]
pub(crate) struct Drain {
    tx: watch::Sender<()>,
    // Set before the signal is sent: lets a connection check for it with
    // one load on each wakeup instead of polling the channel (a lock).
    draining: Arc<AtomicBool>,
}

/// One connection's view of the drain; counted while it lives.
#[derive(Debug)]
pub(crate) struct DrainWatch {
    rx: watch::Receiver<()>,
    draining: Arc<AtomicBool>,
}

/// A hyper server connection that can be asked to finish gracefully.
pub(crate) trait Drainable: Future<Output = Result<(), hyper::Error>> {
    /// Finish the request in progress, then close.
    fn begin_drain(self: Pin<&mut Self>);
}

impl<I, S, B> Drainable for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn begin_drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Drainable for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: Http2ServerConnExec<S::Future, B>,
{
    fn begin_drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            tx: watch::channel(()).0,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // A dropped `Drain` drains as well.
        self.draining.store(true, Ordering::Release);
    }
}

impl Drain {
    /// A watch for one new connection.
    pub(crate) fn watcher(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
            draining: self.draining.clone(),
        }
    }

    /// Connections being served.
    pub(crate) fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Asks every watched connection to finish, and returns once all have.
    pub(crate) async fn run(self) {
        self.draining.store(true, Ordering::Release);
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

impl DrainWatch {
    /// Serves `conn` until it ends, asking it to finish once the drain
    /// starts or `end` resolves (the connection's own reasons: idle, or its
    /// last request started); once asked, it is dropped if `abandon`
    /// resolves first (a client that never completes the goodbye). It is
    /// polled once first: hyper then holds the bytes already received, so a
    /// drain that has begun lets this connection's request finish instead
    /// of closing it unanswered.
    pub(crate) async fn serve<C, E, A>(
        self,
        mut conn: C,
        end: E,
        abandon: A,
    ) -> Result<(), hyper::Error>
    where
        C: Drainable + Unpin,
        E: Future<Output = ()>,
        A: Future<Output = ()>,
    {
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut conn).poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        let DrainWatch { mut rx, draining } = self;
        let mut changed = pin!(rx.changed());
        let mut end = pin!(end);
        // The waker the drain signal holds. Polling the signal takes a
        // lock, so it is polled only to register a new waker or once the
        // flag says it has fired, not on every wakeup of the connection.
        let mut registered: Option<Waker> = None;
        let ended = poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut conn).poll(cx) {
                return Poll::Ready(Some(result));
            }
            let fresh = !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if fresh || draining.load(Ordering::Acquire) {
                // Err: the `Drain` is gone, which drains as well.
                if changed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if fresh {
                    registered = Some(cx.waker().clone());
                }
            }
            if end.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        if let Some(result) = ended {
            return result;
        }
        Pin::new(&mut conn).begin_drain();
        tokio::select! {
            result = conn => result,
            () = abandon => Ok(()),
        }
    }
}
