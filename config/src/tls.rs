//! TLS settings: termination on a listener (certificates chosen by SNI,
//! protocol versions, ALPN, client certificates) and origination towards an
//! upstream (trust anchors, server name, client certificate).
//!
//! This file owns the shape and defaults of those blocks; their checks live
//! in `validate/tls.rs`. Files are named here and read by the gateway.

use serde::{Deserialize, Serialize};

/// TLS termination on a listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains with their keys. A client's SNI picks the
    /// certificate whose names (from the certificate itself: exact or
    /// `*.` wildcard DNS names) match; a client without SNI, or with a name
    /// none covers, gets the first.
    pub certificates: Vec<CertificateFiles>,
    /// Lowest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Application protocols offered by ALPN, in order of preference.
    /// Default `[h2, http/1.1]`; `[http/1.1]` keeps every client on
    /// HTTP/1.1.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<Alpn>,
    /// Client certificates (mutual TLS). Absent: none are asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain: the leaf certificate first, then intermediates.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1). Never shown by the admin
    /// API: only its path is part of the configuration.
    pub key: String,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// An application protocol negotiated by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Alpn {
    /// HTTP/2.
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1.
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    /// The protocol id sent on the wire.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

fn default_alpn() -> Vec<Alpn> {
    vec![Alpn::H2, Alpn::Http11]
}

/// Client certificate verification.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// PEM file of the certificate authorities client certificates must
    /// chain to.
    pub ca: String,
    /// `require` (default): a handshake without a valid client certificate
    /// fails. `optional`: a client may send none, but one it sends must be
    /// valid.
    #[serde(default)]
    pub mode: ClientAuthMode,
}

/// Whether a client certificate is required.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// Every client must present a valid certificate.
    #[default]
    Require,
    /// A certificate is verified when presented.
    Optional,
}

/// TLS towards an upstream's targets.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the certificate authorities the targets' certificates
    /// must chain to. Default: the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Server name sent by SNI and verified against the certificate.
    /// Default: the target's host name, or its IP address (verified against
    /// the certificate's IP names, and no SNI sent) when it is an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the target's certificate (default `true`). `false` accepts
    /// any certificate: for tests only, it defeats TLS's authentication.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// A client certificate for targets that require one (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<CertificateFiles>,
}

fn default_true() -> bool {
    true
}

/// A route condition on the verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertMatch {
    /// One of the certificate's subject alternative names (URI such as
    /// `spiffe://example.org/ns/shop/sa/api`, DNS name, e-mail or IP
    /// address) must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
    /// The certificate's subject in RFC 4514 form (`CN=api,O=Example`, as
    /// `openssl x509 -noout -subject -nameopt RFC2253` prints it) must
    /// equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}
