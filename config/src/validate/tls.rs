//! Validation of the TLS blocks (`listeners[].tls`, `upstreams[].tls`,
//! `routes[].match.client_cert`): combinations the types cannot express, and
//! the named files, which must be readable and hold what they are for (PEM
//! certificates, a private key), so that `weir check` reports a wrong path
//! with its line. Whether a key belongs to its certificate is checked when
//! the gateway loads them.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Validator;
use crate::listener::{Listener, ListenerProtocol};
use crate::tls::{CertificateFiles, ClientCertMatch};
use crate::upstream::{Upstream, UpstreamProtocol};

impl Validator<'_> {
    /// `listeners[i].tls`, and protocols that conflict with it.
    pub(super) fn listener_tls(&mut self, base: &str, listener: &Listener) {
        let Some(tls) = &listener.tls else { return };
        if let Some(j) = listener
            .protocols
            .iter()
            .position(|p| *p == ListenerProtocol::H2c)
        {
            self.error(
                format!("{base}.protocols[{j}]"),
                "h2c is HTTP/2 without TLS; with `tls`, offer HTTP/2 through `tls.alpn: [h2, http/1.1]`",
            );
        }
        let base = format!("{base}.tls");
        if tls.certificates.is_empty() {
            self.error(
                format!("{base}.certificates"),
                "must list at least one certificate ({ cert: FILE, key: FILE })",
            );
        }
        for (j, files) in tls.certificates.iter().enumerate() {
            self.certificate_files(&format!("{base}.certificates[{j}]"), files);
        }
        if tls.alpn.is_empty() {
            self.error(
                format!("{base}.alpn"),
                "must offer at least one protocol (h2, http/1.1)",
            );
        }
        for (j, p) in tls.alpn.iter().enumerate() {
            if tls.alpn[..j].contains(p) {
                self.error(
                    format!("{base}.alpn[{j}]"),
                    format!("duplicate protocol {}", String::from_utf8_lossy(p.id())),
                );
            }
        }
        if let Some(auth) = &tls.client_auth {
            self.ca_file(&format!("{base}.client_auth.ca"), &auth.ca);
        }
    }

    /// `upstreams[i].tls`, and protocols that need or exclude it.
    pub(super) fn upstream_tls(&mut self, base: &str, up: &Upstream) {
        match (&up.tls, up.protocol) {
            (None, UpstreamProtocol::H2) => self.error(
                format!("{base}.protocol"),
                "h2 is HTTP/2 over TLS: add a `tls` block (or use h2c for cleartext HTTP/2)",
            ),
            (Some(_), UpstreamProtocol::H2c) => self.error(
                format!("{base}.protocol"),
                "h2c is HTTP/2 without TLS; use `protocol: h2` for HTTP/2 over TLS",
            ),
            _ => {}
        }
        let Some(tls) = &up.tls else { return };
        let base = format!("{base}.tls");
        if let Some(ca) = &tls.ca {
            self.ca_file(&format!("{base}.ca"), ca);
        }
        if let Some(sni) = &tls.sni {
            if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
                self.error(
                    format!("{base}.sni"),
                    format!("{sni:?} is not a valid DNS name or IP address"),
                );
            }
        }
        if let Some(files) = &tls.client_cert {
            self.certificate_files(&format!("{base}.client_cert"), files);
        }
    }

    /// `routes[i].match.client_cert`.
    pub(super) fn client_cert_match(&mut self, base: &str, m: &ClientCertMatch) {
        let base = format!("{base}.client_cert");
        if m.san.is_none() && m.subject.is_none() {
            self.error(&base, "must name a `san` or a `subject` to match");
        }
        for (field, value) in [("san", &m.san), ("subject", &m.subject)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                self.error(format!("{base}.{field}"), "must not be empty");
            }
        }
    }

    fn certificate_files(&mut self, base: &str, files: &CertificateFiles) {
        self.ca_file(&format!("{base}.cert"), &files.cert);
        let path = format!("{base}.key");
        if let Some(message) = read_problem(&files.key) {
            self.error(path, message);
        } else if let Err(e) = PrivateKeyDer::from_pem_file(&files.key) {
            self.error(
                path,
                format!(
                    "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                    files.key
                ),
            );
        }
    }

    /// A PEM file that must hold at least one certificate.
    fn ca_file(&mut self, path: &str, file: &str) {
        if let Some(message) = read_problem(file) {
            self.error(path, message);
            return;
        }
        let certs = CertificateDer::pem_file_iter(file).map(|it| it.collect::<Result<Vec<_>, _>>());
        match certs {
            Ok(Ok(certs)) if !certs.is_empty() => {}
            Ok(Ok(_)) => self.error(path, format!("{file}: no PEM certificate in the file")),
            Ok(Err(e)) | Err(e) => {
                self.error(path, format!("{file}: not a PEM certificate file: {e}"))
            }
        }
    }
}

/// Why `file` cannot be used, if it cannot: empty path, missing, unreadable.
fn read_problem(file: &str) -> Option<String> {
    if file.trim().is_empty() {
        return Some("must not be empty".into());
    }
    match std::fs::File::open(Path::new(file)) {
        Ok(_) => None,
        Err(e) => Some(format!("cannot read {file}: {e}")),
    }
}
