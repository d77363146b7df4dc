//! TLS for tests: a certificate authority and the certificates it issues,
//! generated per test with rcgen and written to a temporary directory; a
//! client that speaks HTTP/1.1 or HTTP/2 (as ALPN settles) over TLS and
//! reports what the handshake settled; and an upstream that serves TLS,
//! optionally requiring a client certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::client::{ClientBody, TestResponse};
use super::{within, BoxError, IO_TIMEOUT};

/// A directory for one test's certificate files, removed on drop.
pub struct CertDir(PathBuf);

impl CertDir {
    pub fn new(label: &str) -> CertDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weir-tls-{}-{n}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create cert dir");
        CertDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` in one step (aside, then renamed), as
    /// certificate renewal tools do.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        let aside = self.path(&format!(".{name}.new"));
        std::fs::write(&aside, text).expect("write cert file");
        std::fs::rename(&aside, &path).expect("rename cert file");
        path.display().to_string()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key`; returns their paths.
    pub fn write(&self, dir: &CertDir, name: &str) -> (String, String) {
        (
            dir.write(&format!("{name}.crt"), &self.cert_pem),
            dir.write(&format!("{name}.key"), &self.key_pem),
        )
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate as `NAME.crt`; returns its path.
    pub fn write(&self, dir: &CertDir, name: &str) -> String {
        dir.write(&format!("{name}.crt"), &self.pem())
    }

    /// A server certificate for `names` (DNS names, or IP addresses).
    pub fn server(&self, cn: &str, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with subject `O=weir tests,CN=cn` (RFC 4514) and `sans`
    /// (URIs such as `spiffe://…`, or DNS names).
    pub fn client(&self, cn: &str, sans: &[&str]) -> Issued {
        self.issue(client_params(cn, sans))
    }

    /// A client certificate that expired last year.
    pub fn expired_client(&self, cn: &str, sans: &[&str]) -> Issued {
        let mut params = client_params(cn, sans);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA root");
        roots
    }
}

fn client_params(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "weir tests");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans.iter().map(|n| san(n)).collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn san(name: &str) -> SanType {
    if let Ok(ip) = name.parse() {
        SanType::IpAddress(ip)
    } else if name.contains("://") {
        SanType::URI(name.try_into().expect("URI SAN"))
    } else {
        SanType::DnsName(name.try_into().expect("DNS SAN"))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// A client configuration trusting `ca`, offering `alpn`, presenting
/// `cert` when given.
pub fn client_config(ca: &Ca, cert: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots());
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain(), c.key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session would report
    // the certificate of the session it resumes.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// What one request over a fresh TLS connection saw.
#[derive(Debug)]
pub struct TlsExchange {
    /// The protocol ALPN settled on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The server's leaf certificate.
    pub server_cert: CertificateDer<'static>,
    pub response: TestResponse,
}

/// Connects to `addr` with server name `name` (a DNS name sends SNI; an IP
/// address does not), then sends `request` over whatever ALPN settled on.
pub async fn exchange(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
    request: Request<ClientBody>,
) -> Result<TlsExchange, BoxError> {
    within(IO_TIMEOUT, "a TLS exchange", async move {
        let stream = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_owned())?;
        let tls = TlsConnector::from(config)
            .connect(server_name, stream)
            .await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let server_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let io = TokioIo::new(tls);
        let response = if alpn.as_deref() == Some(b"h2") {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let mut request = request;
            *request.version_mut() = Version::HTTP_2;
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            *request.uri_mut() = format!("https://{name}{path}").parse()?;
            sender.send_request(request).await?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let mut request = request;
            if !request.headers().contains_key(http::header::HOST) {
                request
                    .headers_mut()
                    .insert(http::header::HOST, name.parse()?);
            }
            sender.send_request(request).await?
        };
        Ok(TlsExchange {
            alpn,
            server_cert,
            response: TestResponse::read(response).await,
        })
    })
    .await
}

/// `GET path` over a fresh TLS connection.
pub async fn get(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<TlsExchange, BoxError> {
    let request = Request::get(path)
        .body(super::client::empty())
        .expect("request");
    exchange(addr, name, config, request).await
}

/// A server configuration for `cert`, offering ALPN `alpn`.
pub fn server_config(cert: &Issued, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(cert.chain(), cert.key())
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An upstream serving HTTPS (HTTP/1.1 and HTTP/2 by ALPN). It answers
/// every request with `tls {version} client={CN of the client cert or -}`.
pub struct TlsUpstream {
    pub addr: SocketAddr,
}

impl TlsUpstream {
    /// Serves `cert`; with `client_ca`, requires a client certificate it
    /// issued.
    pub async fn start(cert: &Issued, client_ca: Option<&Ca>) -> TlsUpstream {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .expect("verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(cert.chain(), cert.key())
            .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let client = session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map_or("-".to_owned(), |der| common_name(der));
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = format!("tls {:?} client={client}", req.version());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        TlsUpstream { addr }
    }
}

/// The CN of a certificate, for the upstream's answer.
fn common_name(der: &CertificateDer<'_>) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        })
        .unwrap_or_else(|| "?".to_owned())
}
