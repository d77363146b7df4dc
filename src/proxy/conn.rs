//! `ConnCtx`: what weir keeps per client connection. Besides the client
//! address it holds the HTTP/1.1 upstream connection this client used last:
//! a keep-alive client's next request most often goes to the same target, and
//! then it reuses that connection without touching the target's pool. When the
//! client connection closes, the cached connection returns to the pool.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use hyper::client::conn::http1;
use tokio::time::Sleep;

use crate::state::State;
use crate::tls::TlsSession;
use crate::upstream::{OutboundBody, Target};

/// Per client connection state.
#[derive(Debug)]
pub struct ConnCtx {
    /// Process-wide state.
    pub state: Arc<State>,
    /// The client's socket address.
    pub client: SocketAddr,
    /// The client's IP as a header value, formatted once per connection for
    /// `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// What the TLS handshake settled, on a TLS listener.
    pub tls: Option<TlsSession>,
    /// The limits checked on each request of this connection.
    pub limits: Arc<RequestLimits>,
    requests: AtomicU64,
    cached: Mutex<Option<(Arc<Target>, http1::SendRequest<OutboundBody>)>>,
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ConnCtx {
    /// State for a newly accepted client connection.
    pub fn new(state: Arc<State>, client: SocketAddr, limits: Arc<RequestLimits>) -> Self {
        let client_ip = HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnCtx {
            state,
            client,
            client_ip,
            tls: None,
            limits,
            requests: AtomicU64::new(0),
            cached: Mutex::new(None),
            timer: Mutex::new(None),
        }
    }

    /// Counts a request; true when it is the last one this connection may
    /// carry (`limits.max_requests_per_connection`).
    pub fn count_request(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        n >= self.limits.max_requests_per_connection
    }

    /// The same, for a connection that arrived over TLS.
    pub fn with_tls(mut self, session: TlsSession) -> Self {
        self.tls = Some(session);
        self
    }

    /// Takes the cached connection if it goes to `target`; a cached
    /// connection to another target goes back to that target's pool.
    pub fn take(&self, target: &Arc<Target>) -> Option<http1::SendRequest<OutboundBody>> {
        let mut slot = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some((t, sender)) if Arc::ptr_eq(&t, target) => Some(sender),
            Some((t, sender)) => {
                t.http1.checkin(sender);
                None
            }
            None => None,
        }
    }

    /// Returns the cached connection, if any, to its target's pool: the
    /// client connection will send no more requests (it became a WebSocket).
    pub fn release_cached(&self) {
        let taken = self.cached.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((target, sender)) = taken {
            target.http1.checkin(sender);
        }
    }

    /// Keeps a connection whose response has been fully read: cached when
    /// the slot is free (the common, sequential HTTP/1.1 case), otherwise
    /// pooled (concurrent HTTP/2 streams on one client connection).
    pub fn give_back(&self, target: &Arc<Target>, sender: http1::SendRequest<OutboundBody>) {
        // max_idle 0 means no reuse at all, cached or pooled.
        if sender.is_closed() || target.http1.max_idle() == 0 {
            return;
        }
        let mut slot = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((target.clone(), sender));
        } else {
            drop(slot);
            target.http1.checkin(sender);
        }
    }
}

/// The per-request part of `limits:`, checked by the pipeline (the
/// connection builders enforce the rest).
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Longest HTTP/1.x request line, in bytes.
    pub max_request_line: usize,
    /// Longest single header line (name, `: `, value), in bytes.
    pub max_header_field: usize,
    /// Largest request body when the route sets none, in bytes.
    pub max_request_body: u64,
    /// Requests per connection.
    pub max_requests_per_connection: u64,
}

impl RequestLimits {
    /// The per-request limits of `limits`.
    pub fn of(limits: &weir_config::Limits) -> Self {
        RequestLimits {
            max_request_line: usize::try_from(limits.max_request_line.bytes())
                .unwrap_or(usize::MAX),
            max_header_field: usize::try_from(limits.max_header_field.bytes())
                .unwrap_or(usize::MAX),
            max_request_body: limits.max_request_body.bytes(),
            max_requests_per_connection: limits.max_requests_per_connection,
        }
    }
}

impl ConnCtx {
    /// A deadline timer left by an earlier request on this connection.
    pub fn take_timer(&self) -> Option<Pin<Box<Sleep>>> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Keeps a request's deadline timer for the next request.
    pub fn recycle_timer(&self, timer: Pin<Box<Sleep>>) {
        let mut slot = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(timer);
        }
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        let slot = self.cached.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((target, sender)) = slot.take() {
            target.http1.checkin(sender);
        }
    }
}
