//! Listeners: the addresses weir accepts client connections on, and which
//! HTTP versions each one speaks.

use serde::{Deserialize, Serialize};

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` to bind, e.g. `0.0.0.0:8080` or `[::1]:8080`.
    pub address: String,
    /// HTTP versions accepted on this socket. Default `[http1]`. With
    /// `tls`, ALPN chooses the version instead (`tls.alpn`), and `h2c` is
    /// not allowed.
    #[serde(default = "default_protocols")]
    pub protocols: Vec<ListenerProtocol>,
    /// TLS termination. Absent: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::ListenerTls>,
}

/// A protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 (and 1.0) with keep-alive.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (no `Upgrade: h2c` dance).
    H2c,
}

fn default_protocols() -> Vec<ListenerProtocol> {
    vec![ListenerProtocol::Http1]
}
