//! The TLS blocks: listener termination, upstream origination, the client
//! certificate route condition, and the PEM files they name (which `weir
//! check` reads, so a wrong path is reported with its line).

mod common;

use std::path::PathBuf;

use common::*;
use weir_config::{Alpn, ClientAuthMode, TlsVersion, UpstreamProtocol};

/// A directory with a CA, a certificate and its key, removed on drop.
struct Files {
    dir: PathBuf,
    cert: String,
    key: String,
    ca: String,
}

impl Files {
    fn new(label: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("weir-config-tls-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["edge.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        Files {
            cert: write("edge.crt", &cert.pem()),
            key: write("edge.key", &key.serialize_pem()),
            ca: write("ca.crt", &cert.pem()),
            dir,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn tls_blocks_parse_with_their_defaults() {
    let f = Files::new("defaults");
    let config = valid(&format!(
        "listeners:
  - name: edge
    address: 127.0.0.1:8443
    tls:
      certificates: [{{ cert: {cert}, key: {key} }}]
      client_auth: {{ ca: {ca} }}
routes:
  - name: pay
    match: {{ client_cert: {{ san: \"spiffe://example.org/pay\" }} }}
    upstream: api
upstreams:
  - name: api
    protocol: h2
    targets: [{{ address: 127.0.0.1:9443 }}]
    tls: {{ ca: {ca}, sni: api.internal, client_cert: {{ cert: {cert}, key: {key} }} }}
",
        cert = f.cert,
        key = f.key,
        ca = f.ca
    ));
    let tls = config.listeners[0].tls.as_ref().expect("listener tls");
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.alpn, [Alpn::H2, Alpn::Http11]);
    assert_eq!(
        tls.client_auth.as_ref().map(|a| a.mode),
        Some(ClientAuthMode::Require)
    );
    let up = &config.upstreams[0];
    assert_eq!(up.protocol, UpstreamProtocol::H2);
    let up_tls = up.tls.as_ref().expect("upstream tls");
    assert!(up_tls.verify);
    assert_eq!(up_tls.sni.as_deref(), Some("api.internal"));
    assert_eq!(
        config.routes[0]
            .matches
            .client_cert
            .as_ref()
            .and_then(|c| c.san.as_deref()),
        Some("spiffe://example.org/pay")
    );
}

#[test]
fn missing_and_wrong_files_are_reported_with_their_lines() {
    let f = Files::new("files");
    expect(
        &format!(
            "listeners:
  - name: edge
    address: 127.0.0.1:8443
    tls:
      certificates:
        - {{ cert: /nonexistent/edge.crt, key: {key} }}
        - {{ cert: {key}, key: {cert} }}
      client_auth: {{ ca: /nonexistent/ca.crt }}
",
            cert = f.cert,
            key = f.key
        ),
        &[
            (
                "listeners[0].tls.certificates[0].cert",
                6,
                "cannot read /nonexistent/edge.crt",
            ),
            (
                "listeners[0].tls.certificates[1].cert",
                7,
                "no PEM certificate",
            ),
            (
                "listeners[0].tls.certificates[1].key",
                7,
                "no usable private key",
            ),
            (
                "listeners[0].tls.client_auth.ca",
                8,
                "cannot read /nonexistent/ca.crt",
            ),
        ],
    );
}

#[test]
fn protocols_that_contradict_tls_are_errors() {
    let f = Files::new("protocols");
    expect(
        &format!(
            "listeners:
  - name: edge
    address: 127.0.0.1:8443
    protocols: [http1, h2c]
    tls: {{ certificates: [{{ cert: {cert}, key: {key} }}], alpn: [h2, h2] }}
upstreams:
  - name: clear
    protocol: h2
    targets: [{{ address: 127.0.0.1:9000 }}]
  - name: secure
    protocol: h2c
    targets: [{{ address: 127.0.0.1:9001 }}]
    tls: {{ sni: \"not a name\" }}
",
            cert = f.cert,
            key = f.key
        ),
        &[
            ("listeners[0].protocols[1]", 4, "h2c is HTTP/2 without TLS"),
            ("listeners[0].tls.alpn[1]", 5, "duplicate protocol h2"),
            ("upstreams[0].protocol", 8, "add a `tls` block"),
            ("upstreams[1].protocol", 11, "use `protocol: h2`"),
            ("upstreams[1].tls.sni", 13, "not a valid DNS name"),
        ],
    );
}

#[test]
fn an_empty_certificate_list_and_an_empty_client_cert_match_are_errors() {
    expect(
        &with_listener(
            "routes:
  - name: a
    match: { client_cert: {} }
    direct_response: { status: 200 }
",
        ),
        &[(
            "routes[0].match.client_cert",
            4,
            "must name a `san` or a `subject`",
        )],
    );
    expect(
        "listeners:
  - name: edge
    address: 127.0.0.1:8443
    tls: { certificates: [] }
",
        &[(
            "listeners[0].tls.certificates",
            4,
            "at least one certificate",
        )],
    );
}
