//! `ConnCtx`: what weir keeps per client connection. Besides the client
//! address it holds the HTTP/1.1 upstream connection this client used last:
//! a keep-alive client's next request most often goes to the same target, and
//! then it reuses that connection without touching the target's pool. When the
//! client connection closes, the cached connection returns to the pool.
//! It also tells the connection's idle timers (`server`) whether a request
//! is in progress and when the last one ended.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::decimal::Decimal;
use crate::state::State;
use crate::tls::TlsSession;
use crate::upstream::{Http1Conn, Target};

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
    /// `client_ip` hashed as a rate-limit key, on first use.
    client_key: OnceLock<u64>,
    /// What the TLS handshake settled, on a TLS listener.
    pub tls: Option<TlsSession>,
    /// The limits checked on each request of this connection.
    pub limits: Arc<RequestLimits>,
    /// Set when the peer is one of `trusted_proxies`: its
    /// `X-Forwarded-For` is then believed and extended.
    pub trusted: Option<Arc<TrustedProxies>>,
    requests: AtomicU64,
    /// When the connection was accepted: the origin of `idle_since`.
    origin: Instant,
    /// Requests started whose response has not ended yet.
    open: AtomicU32,
    /// When a request last ended, in microseconds since `origin`.
    idle_since: AtomicU64,
    /// Woken when the last request this connection may carry starts.
    spent: Notify,
    cached: Mutex<Option<(Arc<Target>, Http1Conn)>>,
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ConnCtx {
    /// State for a newly accepted client connection.
    pub fn new(state: Arc<State>, client: SocketAddr, limits: Arc<RequestLimits>) -> Self {
        let client_ip = ip_value(client.ip());
        ConnCtx {
            state,
            client,
            client_ip,
            client_key: OnceLock::new(),
            tls: None,
            limits,
            trusted: None,
            requests: AtomicU64::new(0),
            origin: Instant::now(),
            open: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            spent: Notify::new(),
            cached: Mutex::new(None),
            timer: Mutex::new(None),
        }
    }

    /// `client_ip` as a rate-limit key, hashed once per connection.
    pub fn client_key(&self) -> u64 {
        *self
            .client_key
            .get_or_init(|| crate::policy::rate_limit::key_hash(self.client_ip.as_bytes()))
    }

    /// Counts a request; true when it is the last one this connection may
    /// carry (`limits.max_requests_per_connection`, or on HTTP/2
    /// `limits.h2_max_requests_per_connection`).
    pub fn count_request(&self, h2: bool) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if h2 {
            self.limits
                .h2_max_requests_per_connection
                .is_some_and(|max| n >= max)
        } else {
            n >= self.limits.max_requests_per_connection
        }
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Marks a request in progress; `request_ended` closes it (the
    /// request's `Completion` does, however the response ends).
    pub fn request_started(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request's response as ended at `at`.
    pub fn request_ended(&self, at: Instant) {
        let us = at.saturating_duration_since(self.origin).as_micros();
        // Stored before the count drops, so that whoever sees no request
        // open also sees when the last one ended.
        self.idle_since
            .fetch_max(u64::try_from(us).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Release);
    }

    /// Since when no request has been in progress; None while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let us = self.idle_since.load(Ordering::Relaxed);
        Some(self.origin + Duration::from_micros(us))
    }

    /// Says that the last request this connection may carry has started.
    pub fn mark_spent(&self) {
        self.spent.notify_one();
    }

    /// Resolves once `mark_spent` has been called.
    pub async fn spent(&self) {
        self.spent.notified().await;
    }

    /// The same, with the trusted proxies: kept when the peer is one.
    pub fn with_trusted(mut self, trusted: &Arc<TrustedProxies>) -> Self {
        if trusted.contains(self.client.ip()) {
            self.trusted = Some(trusted.clone());
        }
        self
    }

    /// The same, for a connection that arrived over TLS.
    pub fn with_tls(mut self, session: TlsSession) -> Self {
        self.tls = Some(session);
        self
    }

    /// Takes the cached connection if it goes to `target`; a cached
    /// connection to another target goes back to that target's pool.
    pub fn take(&self, target: &Arc<Target>) -> Option<Http1Conn> {
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
    pub fn give_back(&self, target: &Arc<Target>, sender: Http1Conn) {
        // max_idle 0 means no reuse at all, cached or pooled.
        if target.http1.max_idle() == 0 {
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
    /// Requests per HTTP/1.x connection.
    pub max_requests_per_connection: u64,
    /// Streams per HTTP/2 connection, when capped.
    pub h2_max_requests_per_connection: Option<u64>,
    /// How long a request body may go without a byte.
    pub body_idle_timeout: std::time::Duration,
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
            h2_max_requests_per_connection: limits.h2_max_requests_per_connection,
            body_idle_timeout: limits.body_idle_timeout.get(),
        }
    }
}

/// The `trusted_proxies` networks.
#[derive(Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// The networks of `trusted_proxies` (validated by the configuration;
    /// an invalid entry is skipped).
    pub fn new(nets: &[String]) -> Self {
        TrustedProxies {
            nets: nets
                .iter()
                .filter_map(|n| weir_config::parse_cidr(n).ok())
                .collect(),
        }
    }

    /// True when there is no trusted proxy.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` is within one of the networks. An IPv4-mapped IPv6
    /// address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets
            .iter()
            .any(|&(net, prefix)| within(ip, net, prefix))
    }

    /// The client address of a request that came through a trusted peer
    /// with these `X-Forwarded-For` values: the rightmost address that is
    /// not a trusted proxy (each trusted hop appended the address it saw).
    /// When every address is trusted, the leftmost; when an entry is not an
    /// address, the hop after it (no one trusted vouches for it). None when
    /// there is no usable entry.
    pub fn client<'a>(&self, values: impl DoubleEndedIterator<Item = &'a [u8]>) -> Option<IpAddr> {
        let mut last = None;
        for value in values.rev() {
            let text = std::str::from_utf8(value).ok();
            for entry in text.into_iter().flat_map(|t| t.rsplit(',')) {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = parse_forwarded_ip(entry) else {
                    return last;
                };
                if !self.contains(ip) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

fn within(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net.to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
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

/// An address as a header value (`X-Forwarded-For`, the rate-limit key).
/// IPv4 is written by hand: `Display` costs about 1,200 instructions, and
/// every new client connection formats its peer.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = Decimal::new(u64::from(octet));
                let digits = digits.as_bytes();
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            HeaderValue::from_bytes(&buf[..len])
        }
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()),
    };
    text.unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_values_read_like_display() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.0.2.7",
            "9.99.100.199",
            "::1",
            "2001:db8::1",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str(), "{text}");
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix() {
        let t = TrustedProxies::new(&[
            "10.0.0.0/8".into(),
            "192.0.2.7".into(),
            "fd00::/8".into(),
            "0.0.0.0/0".into(),
        ]);
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("fe80::1")));
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "192.0.2.7".into()]);
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(!t.contains(ip("11.0.0.1")));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let one = |v: &'static str| t.client([v.as_bytes()].into_iter());
        assert_eq!(one("1.1.1.1, 2.2.2.2, 10.0.0.1"), Some(ip("2.2.2.2")));
        assert_eq!(one("10.0.0.2, 10.0.0.1"), Some(ip("10.0.0.2")));
        assert_eq!(one("1.1.1.1, junk, 10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(one("[2001:db8::1]:80, 10.0.0.1:5"), Some(ip("2001:db8::1")));
        assert_eq!(one(""), None);
        // Several header lines form one list.
        let lines = [&b"1.1.1.1"[..], &b"3.3.3.3, 10.9.9.9"[..]];
        assert_eq!(t.client(lines.into_iter()), Some(ip("3.3.3.3")));
    }
}
