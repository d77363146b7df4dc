//! TLS: certificates and keys read from PEM files, the certificate chosen by
//! SNI, client certificate verification and the identity it yields, the hot
//! reload of those files, and the client side towards upstreams.
//!
//! Owns every rustls configuration weir builds. Must not touch HTTP: the
//! accept loop (`server`) runs the handshake with the configuration this
//! module hands out, and the router matches the plain [`ClientCert`] it
//! extracts.

mod client;
mod files;
mod identity;
mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use crate::router::ClientCert;
pub use client::ClientTls;
pub use identity::client_cert;
pub use server::{ServerTls, TlsSession};

/// Why TLS settings could not be loaded; the message names the setting's
/// YAML path and the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The setting, e.g. `listeners[0].tls.certificates[1].key`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl TlsError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> TlsError {
        TlsError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The cryptography every configuration uses: ring's, built once.
///
/// ring offers no post-quantum key exchange (rustls deprecates its provider
/// for that reason); aws-lc-rs does, at the cost of a C and assembly build
/// several times longer. Recorded in docs/security.md.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[allow(deprecated)]
            let provider = rustls::crypto::ring::default_provider();
            Arc::new(provider)
        })
        .clone()
}
