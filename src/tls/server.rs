//! TLS termination on a listener: the server configuration built from a
//! `tls` block, swapped whole when its files change (certificates, keys,
//! client CA), and what a finished handshake tells the proxy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use weir_config::{ClientAuthMode, ListenerTls, TlsVersion};

use super::files::{self, Stamps};
use super::identity;
use super::{provider, ClientCert, TlsError};
use crate::observe::Metrics;

/// How often the files are looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the files must stay unchanged before they are read: a renewal
/// writes the certificate and the key one after the other.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Sessions remembered for TLS 1.2 resumption, per listener.
const SESSION_CACHE: usize = 4096;

/// The TLS side of one listener. New handshakes use the configuration
/// current when they start; connections already open keep theirs, so a
/// reload drops nothing.
pub struct ServerTls {
    listener: String,
    path: String,
    settings: ListenerTls,
    current: ArcSwap<ServerConfig>,
    // Shared by every configuration this listener builds, so resumption
    // survives a certificate reload.
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
    stamps: Mutex<Stamps>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// What a client connection's handshake settled, as the proxy needs it.
#[derive(Debug, Default)]
pub struct TlsSession {
    /// The verified client certificate's identity, with mutual TLS.
    pub client_cert: Option<ClientCert>,
    /// `x-client-cert-san` for the upstream: every SAN, comma-separated.
    pub san_header: Option<HeaderValue>,
    /// `x-client-cert-subject` for the upstream.
    pub subject_header: Option<HeaderValue>,
}

impl TlsSession {
    /// Reads the session of a finished handshake.
    pub fn of(conn: &ServerConnection) -> TlsSession {
        let client_cert = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| identity::client_cert(leaf));
        let san_header = client_cert
            .as_ref()
            .filter(|c| !c.sans.is_empty())
            .and_then(|c| HeaderValue::from_str(&c.sans.join(",")).ok());
        let subject_header = client_cert
            .as_ref()
            .filter(|c| !c.subject.is_empty())
            .and_then(|c| HeaderValue::from_str(&c.subject).ok());
        TlsSession {
            client_cert,
            san_header,
            subject_header,
        }
    }
}

impl ServerTls {
    /// Loads the files of `settings` for `listener` (`path` is the block's
    /// YAML path, for errors) and records each certificate's expiry.
    pub fn load(
        listener: &str,
        path: &str,
        settings: &ListenerTls,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::new(path, format!("cannot create a session ticketer: {e}")))?;
        let stamps = Stamps::of(&watched_files(settings));
        let (config, expiries) = build(path, settings, &sessions, &tickets)?;
        let tls = ServerTls {
            listener: listener.to_owned(),
            path: path.to_owned(),
            settings: settings.clone(),
            current: ArcSwap::from_pointee(config),
            sessions,
            tickets,
            stamps: Mutex::new(stamps),
            metrics: metrics.clone(),
        };
        tls.record_expiries(&expiries);
        Ok(Arc::new(tls))
    }

    /// The configuration for a new handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again and, when they are valid, swaps the new
    /// configuration in; a broken file leaves the old one serving.
    pub fn reload(&self, trigger: &str) -> Result<(), TlsError> {
        let stamps = Stamps::of(&watched_files(&self.settings));
        let built = build(&self.path, &self.settings, &self.sessions, &self.tickets);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        match built {
            Ok((config, expiries)) => {
                self.current.store(Arc::new(config));
                self.record_expiries(&expiries);
                self.metrics.tls_reloaded(&self.listener, true);
                tracing::info!(listener = %self.listener, trigger, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.tls_reloaded(&self.listener, false);
                tracing::error!(
                    listener = %self.listener,
                    trigger,
                    error = %e,
                    "TLS reload rejected; the previous certificates stay in use"
                );
                Err(e)
            }
        }
    }

    /// Watches the files and reloads when one changes, until the last
    /// other reference to this listener's TLS is gone.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let files = watched_files(&self.settings);
        loop {
            tick.tick().await;
            if Arc::strong_count(&self) == 1 {
                return;
            }
            let now = Stamps::of(&files);
            if now == *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) {
                continue;
            }
            tokio::time::sleep(DEBOUNCE).await;
            if Stamps::of(&files) != now {
                continue;
            }
            let _ = self.reload("file");
        }
    }

    fn record_expiries(&self, expiries: &[(String, i64)]) {
        for (file, at) in expiries {
            self.metrics
                .tls_certificate_expiry(&self.listener, file, *at);
        }
    }
}

/// Every file a listener's TLS reads.
fn watched_files(settings: &ListenerTls) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = settings
        .certificates
        .iter()
        .flat_map(|c| [PathBuf::from(&c.cert), PathBuf::from(&c.key)])
        .collect();
    if let Some(auth) = &settings.client_auth {
        files.push(PathBuf::from(&auth.ca));
    }
    files
}

/// The server configuration of `settings`, and each certificate file's
/// expiry.
fn build(
    path: &str,
    settings: &ListenerTls,
    sessions: &Arc<dyn StoresServerSessions>,
    tickets: &Arc<dyn ProducesTickets>,
) -> Result<(ServerConfig, Vec<(String, i64)>), TlsError> {
    let mut resolver = SniResolver::default();
    let mut expiries = Vec::new();
    for (i, files) in settings.certificates.iter().enumerate() {
        let key = files::certified_key(
            &format!("{path}.certificates[{i}]"),
            &files.cert,
            &files.key,
        )?;
        if let Some(leaf) = key.cert.first() {
            if let Some(at) = identity::not_after(leaf) {
                expiries.push((files.cert.clone(), at));
            }
            for name in identity::dns_names(leaf) {
                resolver.add(name, &key);
            }
        }
        resolver.default.get_or_insert(key);
    }
    let Some(default) = resolver.default.clone() else {
        return Err(TlsError::new(
            format!("{path}.certificates"),
            "must list at least one certificate",
        ));
    };
    resolver.default = Some(default);
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::new(format!("{path}.min_version"), e.to_string()))?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let ca_path = format!("{path}.client_auth.ca");
            let roots = Arc::new(files::roots(&ca_path, &auth.ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = match auth.mode {
                ClientAuthMode::Require => verifier,
                ClientAuthMode::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::new(&ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = settings.alpn.iter().map(|p| p.id().to_vec()).collect();
    config.session_storage = sessions.clone();
    config.ticketer = tickets.clone();
    Ok((config, expiries))
}

/// Picks the certificate for a client's SNI: an exact name, else a
/// wildcard covering it (one label deep, as RFC 6125 allows), else the
/// first certificate.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The first certificate listed for a name wins.
    fn add(&mut self, name: String, key: &Arc<CertifiedKey>) {
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_owned()),
            None => self.exact.entry(name),
        }
        .or_insert_with(|| key.clone());
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.exact.get(&sni).or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
        });
        chosen.or(self.default.as_ref()).cloned()
    }
}
