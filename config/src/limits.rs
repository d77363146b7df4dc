//! `limits:`: the bounds weir puts on what one client may send and hold
//! (request head and body sizes, header and body timeouts, connections and
//! requests per connection, HTTP/2 windows and streams). The defaults follow
//! what NGINX and Envoy ship for edge proxies.

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

/// Resource limits on client connections and requests. Every key has a
/// default; the block may be absent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest request line (method, target, version); longer gets 414.
    /// Default `8KiB`.
    pub max_request_line: ByteSize,
    /// Largest request head (request line and every header); larger gets
    /// 431. Default `64KiB`.
    pub max_header_bytes: ByteSize,
    /// Largest single header line (name and value); larger gets 431.
    /// Default `16KiB`.
    pub max_header_field: ByteSize,
    /// Most header fields in one request; more gets 431. Default `100`.
    pub max_headers: usize,
    /// Largest request body, unless the route sets its own; larger gets
    /// 413. Default `10MiB`.
    pub max_request_body: ByteSize,
    /// How long a client may take from the first byte of a request head
    /// to the complete head (HTTP/1.x), and, on a new connection, to send
    /// its first bytes. A head cut short gets 408 `header_read_timeout`
    /// and the connection is closed. Default `15s`.
    pub header_read_timeout: Duration,
    /// How long a client connection may stay idle between requests: an
    /// HTTP/1.x connection with no request in progress and no byte of the
    /// next one is closed quietly; an HTTP/2 connection with no open stream
    /// is ended with GOAWAY. Default `60s`.
    pub keepalive_idle: Duration,
    /// How long a request body may go without a byte while weir waits for
    /// it; the request then gets 408 and the connection is closed. Default
    /// `30s`.
    pub body_idle_timeout: Duration,
    /// How long a TLS client may take to complete the handshake. Default
    /// `10s`.
    pub tls_handshake_timeout: Duration,
    /// Requests served on one HTTP/1.x client connection before it is
    /// closed (`Connection: close` on the last response). Default `1000`.
    pub max_requests_per_connection: u64,
    /// Streams served on one HTTP/2 client connection before it is ended
    /// with GOAWAY once the last has started, letting those in flight
    /// finish. Default: no cap, as an HTTP/2 connection multiplexes and
    /// not every client opens a new one after a GOAWAY.
    pub h2_max_requests_per_connection: Option<u64>,
    /// Client connections open at once; connections beyond are accepted
    /// and closed at once. Default `10000`.
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once on a connection.
    /// Default `100`.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 initial flow-control window of each stream. Default `64KiB`.
    pub h2_stream_window: ByteSize,
    /// HTTP/2 flow-control window of a whole connection. Default `1MiB`.
    pub h2_connection_window: ByteSize,
    /// Largest HTTP/2 header list (decoded) a client may send. Default
    /// `64KiB`.
    pub h2_max_header_list_size: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: ByteSize(8 << 10),
            max_header_bytes: ByteSize(64 << 10),
            max_header_field: ByteSize(16 << 10),
            max_headers: 100,
            max_request_body: ByteSize(10 << 20),
            header_read_timeout: Duration::from_secs(15),
            keepalive_idle: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_requests_per_connection: 1000,
            h2_max_requests_per_connection: None,
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_stream_window: ByteSize(64 << 10),
            h2_connection_window: ByteSize(1 << 20),
            h2_max_header_list_size: ByteSize(64 << 10),
        }
    }
}

/// Problems with a `limits:` block, each as (YAML path, message).
pub(crate) fn validate_limits(l: &Limits) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |key: &str, message: &str| {
        out.push((format!("limits.{key}"), message.to_owned()));
    };
    // hyper cannot buffer a request head in less than 8KiB.
    if l.max_header_bytes.bytes() < 8192 {
        err("max_header_bytes", "must be at least 8KiB");
    }
    if l.max_request_line.bytes() == 0 {
        err("max_request_line", "must be greater than zero");
    }
    if l.max_request_line > l.max_header_bytes {
        err(
            "max_request_line",
            "must not exceed max_header_bytes (the request line is part of the head)",
        );
    }
    if l.max_header_field.bytes() == 0 {
        err("max_header_field", "must be greater than zero");
    }
    if l.max_headers == 0 {
        err("max_headers", "must be greater than zero");
    }
    for (key, d) in [
        ("header_read_timeout", l.header_read_timeout),
        ("keepalive_idle", l.keepalive_idle),
        ("body_idle_timeout", l.body_idle_timeout),
        ("tls_handshake_timeout", l.tls_handshake_timeout),
    ] {
        if d.is_zero() {
            err(key, "must be greater than zero");
        }
    }
    if l.max_requests_per_connection == 0 {
        err("max_requests_per_connection", "must be greater than zero");
    }
    if l.max_connections == 0 {
        err("max_connections", "must be greater than zero");
    }
    if l.h2_max_requests_per_connection == Some(0) {
        err(
            "h2_max_requests_per_connection",
            "must be greater than zero",
        );
    }
    if l.h2_max_concurrent_streams == 0 {
        err("h2_max_concurrent_streams", "must be greater than zero");
    }
    // RFC 9113 §6.9.2: a window is at most 2^31-1 and the initial one at
    // least the 65,535 every peer starts with for the connection.
    const MAX_WINDOW: u64 = (1 << 31) - 1;
    if l.h2_stream_window.bytes() == 0 || l.h2_stream_window.bytes() > MAX_WINDOW {
        err("h2_stream_window", "must be between 1 and 2147483647 bytes");
    }
    if l.h2_connection_window.bytes() < 65_535 || l.h2_connection_window.bytes() > MAX_WINDOW {
        err(
            "h2_connection_window",
            "must be between 65535 and 2147483647 bytes",
        );
    }
    if l.h2_max_header_list_size.bytes() == 0 || l.h2_max_header_list_size.bytes() > u32::MAX as u64
    {
        err("h2_max_header_list_size", "must be between 1 byte and 4GiB");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_idle_defaults_to_a_minute() {
        assert_eq!(Limits::default().keepalive_idle, Duration::from_secs(60));
        assert!(validate_limits(&Limits::default()).is_empty());
    }

    #[test]
    fn a_zero_keepalive_idle_is_refused() {
        let l = Limits {
            keepalive_idle: Duration::from_secs(0),
            header_read_timeout: Duration::from_secs(0),
            ..Limits::default()
        };
        let errors = validate_limits(&l);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["limits.header_read_timeout", "limits.keepalive_idle"]
        );
        assert!(errors.iter().all(|(_, m)| m == "must be greater than zero"));
    }
}
