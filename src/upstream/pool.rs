//! Per-target connection pools. HTTP/1.1 connections carry one request at a
//! time, so each target keeps a short LIFO list of idle ones (the most recently
//! used first: warmest, least likely to have been closed by the peer). HTTP/2
//! connections multiplex, so each target shares one.
//!
//! Each pool has its own small mutex held only to push or pop; there is no
//! lock shared between targets. The proxy additionally keeps the connection a
//! client connection last used (see `proxy::conn`), so most requests on a
//! keep-alive client never touch the pool at all.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http2;

use super::h1::Http1Conn;

/// Idle HTTP/1.1 connections of one target.
#[derive(Debug)]
pub struct Http1Pool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    conn: Http1Conn,
    since: Instant,
}

impl Http1Pool {
    /// An empty pool keeping at most `max_idle` connections for `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Http1Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Takes the most recently returned connection that has not expired.
    /// The caller checks that the target has not closed it meanwhile
    /// (`Http1Conn::is_idle_open`), outside the lock.
    pub fn checkout(&self) -> Option<Http1Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) < self.idle_timeout {
                return Some(entry.conn);
            }
            // Stale: dropping it closes it.
        }
        None
    }

    /// Returns a connection whose last response has been fully read; it is
    /// dropped (closed) when the pool keeps no connections.
    pub fn checkin(&self, conn: Http1Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            // Keep the newest connections: drop the oldest.
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than the idle timeout, and those
    /// the target has closed.
    pub fn evict_expired(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|e| {
            now.duration_since(e.since) < self.idle_timeout && e.conn.is_idle_open()
        });
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Most idle connections kept.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }
}

/// The shared HTTP/2 connection of one target.
#[derive(Debug)]
pub struct Http2Pool<B> {
    conn: Mutex<Option<http2::SendRequest<B>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl<B> Default for Http2Pool<B> {
    fn default() -> Self {
        Http2Pool {
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }
}

impl<B> Http2Pool<B> {
    /// A handle on the shared connection, if it is open.
    pub fn get(&self) -> Option<http2::SendRequest<B>> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Held while opening the shared connection, so that only one request
    /// opens it while the others wait for it.
    pub async fn lock_connecting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.connecting.lock().await
    }

    /// Installs a newly opened connection as the shared one.
    pub fn set(&self, sender: http2::SendRequest<B>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// Drops the shared connection if it has closed.
    pub fn evict_closed(&self) {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if conn.as_ref().is_some_and(|s| s.is_closed()) {
            *conn = None;
        }
    }
}
