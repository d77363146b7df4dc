//! TLS towards an upstream's targets: trust anchors, the server name to
//! send and verify, a client certificate for mutual TLS, ALPN for the
//! upstream's protocol.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use weir_config::{UpstreamProtocol, UpstreamTls};

use super::files;
use super::{provider, TlsError};

/// Where Debian-family systems keep the system's trust anchors.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client side of TLS for one upstream.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// `tls.sni`, when set: sent and verified for every target.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Builds the client configuration of `settings` (at YAML `path`) for
    /// `protocol`.
    pub fn build(
        path: &str,
        settings: &UpstreamTls,
        protocol: UpstreamProtocol,
    ) -> Result<ClientTls, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(path, e.to_string()))?;
        let builder = if settings.verify {
            let (ca_path, ca) = match &settings.ca {
                Some(ca) => (format!("{path}.ca"), ca.as_str()),
                None => (format!("{path}.ca (default)"), SYSTEM_CA_BUNDLE),
            };
            builder.with_root_certificates(files::roots(&ca_path, ca)?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        };
        let mut config = match &settings.client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let cert_path = format!("{path}.client_cert");
                let key = files::certified_key(&cert_path, &files.cert, &files.key)?;
                builder.with_client_cert_resolver(Arc::new(ClientCertificate(key)))
            }
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        let sni = match &settings.sni {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| TlsError::new(format!("{path}.sni"), e.to_string()))?,
            ),
            None => None,
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
        })
    }

    /// Runs the handshake on `stream` to the target whose configured host
    /// is `host` (a name or an IP address).
    pub async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.sni {
            Some(name) => name.clone(),
            None => server_name(host)?,
        };
        self.connector.connect(name, stream).await
    }
}

fn server_name(host: &str) -> std::io::Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_owned()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name: {e}"),
        )
    })
}

/// The one client certificate an upstream gets, whatever CA it hints at.
#[derive(Debug)]
struct ClientCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify: false`: any certificate is accepted, but the handshake's
/// signatures are still checked, so the session is at least bound to the
/// key of the certificate presented.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
