//! TLS through real sockets: certificates chosen by SNI, ALPN both ways,
//! mutual TLS accepted and refused, routes matched on the client
//! certificate and its identity passed upstream (never forged), TLS and
//! mutual TLS to upstreams, certificate rotation under load, and the
//! expiry metric. Every certificate is generated per test.

mod support;

use http::Request;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use support::client;
use support::tls::{self, Ca, CertDir, TlsUpstream};
use support::{eventually, TestGateway, Upstream, IO_TIMEOUT};

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// A gateway whose `main` listener terminates TLS with `tls` (a YAML flow
/// mapping) in front of the echo upstream `up`; `routes` replaces the
/// default catch-all route when given.
async fn gateway(tls: &str, up: &Upstream, routes: Option<&str>) -> TestGateway {
    let routes = routes.unwrap_or("  - name: all\n    upstream: up\n");
    TestGateway::start(&format!(
        "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    tls: {tls}\n\
         admin:\n  address: 127.0.0.1:0\n\
         routes:\n{routes}\
         upstreams:\n  - name: up\n    targets: [{{ address: \"{}\" }}]\n",
        up.addr()
    ))
    .await
}

#[tokio::test]
async fn sni_picks_the_certificate_by_name_and_clients_without_sni_get_the_first() {
    let dir = CertDir::new("sni");
    let ca = Ca::new("weir test CA");
    let first = ca.server("first", &["a.test", "127.0.0.1"]);
    let second = ca.server("second", &["b.test", "*.wild.test"]);
    let (c1, k1) = first.write(&dir, "first");
    let (c2, k2) = second.write(&dir, "second");
    let up = Upstream::echo().await;
    let gw = gateway(
        &format!("{{ certificates: [{{ cert: {c1}, key: {k1} }}, {{ cert: {c2}, key: {k2} }}] }}"),
        &up,
        None,
    )
    .await;
    let config = tls::client_config(&ca, None, H2_H1);
    for (name, want) in [
        ("a.test", &first),
        ("b.test", &second),
        ("api.wild.test", &second),
        // An IP address sends no SNI: the first certificate.
        ("127.0.0.1", &first),
    ] {
        let got = tls::get(gw.addr(), name, config.clone(), "/")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.server_cert, want.der, "certificate for {name}");
        assert_eq!(got.response.status, 200, "{name}");
        let echoed = got.response.echoed();
        assert_eq!(echoed.header("x-forwarded-proto"), Some("https"));
    }
    // A wildcard covers one label only.
    let deep = tls::get(gw.addr(), "x.api.wild.test", config, "/").await;
    assert!(
        deep.is_err(),
        "the first certificate does not cover x.api.wild.test"
    );
}

#[tokio::test]
async fn alpn_serves_http2_when_offered_and_http11_only_keeps_clients_on_http11() {
    let dir = CertDir::new("alpn");
    let ca = Ca::new("weir test CA");
    let (cert, key) = ca.server("edge", &["edge.test"]).write(&dir, "edge");
    let up = Upstream::echo().await;
    let both = gateway(
        &format!("{{ certificates: [{{ cert: {cert}, key: {key} }}] }}"),
        &up,
        None,
    )
    .await;
    let h1_only = gateway(
        &format!("{{ certificates: [{{ cert: {cert}, key: {key} }}], alpn: [http/1.1] }}"),
        &up,
        None,
    )
    .await;

    let h2 = tls::get(
        both.addr(),
        "edge.test",
        tls::client_config(&ca, None, H2_H1),
        "/x",
    )
    .await
    .expect("h2 exchange");
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.response.version, http::Version::HTTP_2);
    assert_eq!(h2.response.echoed().path, "/x");

    let kept = tls::get(
        h1_only.addr(),
        "edge.test",
        tls::client_config(&ca, None, H2_H1),
        "/y",
    )
    .await
    .expect("h1 exchange");
    assert_eq!(kept.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(kept.response.version, http::Version::HTTP_11);
    assert_eq!(kept.response.echoed().path, "/y");

    // No ALPN at all: HTTP/1.1.
    let plain = tls::get(
        both.addr(),
        "edge.test",
        tls::client_config(&ca, None, &[]),
        "/z",
    )
    .await
    .expect("no-ALPN exchange");
    assert_eq!(plain.alpn, None);
    assert_eq!(plain.response.version, http::Version::HTTP_11);

    // A client that speaks only h2 to an http/1.1-only listener is refused
    // in the handshake (RFC 7301 §3.2), not served the wrong protocol.
    let h2_only = tls::get(
        h1_only.addr(),
        "edge.test",
        tls::client_config(&ca, None, &[b"h2"]),
        "/",
    )
    .await;
    assert!(h2_only.is_err(), "{h2_only:?}");
}

#[tokio::test]
async fn mutual_tls_accepts_a_valid_client_and_refuses_the_rest() {
    let dir = CertDir::new("mtls");
    let ca = Ca::new("weir test CA");
    let clients = Ca::new("client CA");
    let other = Ca::new("other CA");
    let (cert, key) = ca.server("edge", &["edge.test"]).write(&dir, "edge");
    let client_ca = clients.write(&dir, "clients");
    let up = Upstream::echo().await;
    let gw = gateway(
        &format!(
            "{{ certificates: [{{ cert: {cert}, key: {key} }}], client_auth: {{ ca: {client_ca} }} }}"
        ),
        &up,
        None,
    )
    .await;

    let good = clients.client("shop", &["spiffe://example.org/shop"]);
    let request = Request::get("/who")
        // Forged identity headers must never reach the upstream.
        .header("x-client-cert-san", "spiffe://example.org/admin")
        .header("x-client-cert-anything", "forged")
        .body(client::empty())
        .unwrap();
    let ok = tls::exchange(
        gw.addr(),
        "edge.test",
        tls::client_config(&ca, Some(&good), H2_H1),
        request,
    )
    .await
    .expect("a valid client certificate");
    assert_eq!(ok.response.status, 200);
    let echoed = ok.response.echoed();
    assert_eq!(
        echoed.header("x-client-cert-san"),
        Some("spiffe://example.org/shop")
    );
    assert_eq!(
        echoed.header("x-client-cert-subject"),
        Some("O=weir tests,CN=shop")
    );
    assert_eq!(echoed.header("x-client-cert-anything"), None);

    for (what, cert) in [
        ("no certificate", None),
        (
            "a certificate from another CA",
            Some(other.client("shop", &["spiffe://example.org/shop"])),
        ),
        (
            "an expired certificate",
            Some(clients.expired_client("shop", &["spiffe://example.org/shop"])),
        ),
    ] {
        let config = tls::client_config(&ca, cert.as_ref(), H2_H1);
        let refused = tls::get(gw.addr(), "edge.test", config, "/who").await;
        assert!(refused.is_err(), "{what} was let in: {refused:?}");
    }
    assert_eq!(
        up.requests().len(),
        1,
        "only the valid client reached the upstream"
    );
    gw.metric_reaches(
        "weir_tls_handshake_errors_total",
        &[("listener", "main")],
        3.0,
    )
    .await;
}

#[tokio::test]
async fn optional_client_auth_lets_anonymous_clients_in_without_identity_headers() {
    let dir = CertDir::new("optional");
    let ca = Ca::new("weir test CA");
    let clients = Ca::new("client CA");
    let (cert, key) = ca.server("edge", &["edge.test"]).write(&dir, "edge");
    let client_ca = clients.write(&dir, "clients");
    let up = Upstream::echo().await;
    let gw = gateway(
        &format!(
            "{{ certificates: [{{ cert: {cert}, key: {key} }}], client_auth: {{ ca: {client_ca}, mode: optional }} }}"
        ),
        &up,
        None,
    )
    .await;
    let request = Request::get("/")
        .header("x-client-cert-san", "spiffe://example.org/admin")
        .body(client::empty())
        .unwrap();
    let anonymous = tls::exchange(
        gw.addr(),
        "edge.test",
        tls::client_config(&ca, None, H1),
        request,
    )
    .await
    .expect("anonymous client");
    assert_eq!(
        anonymous.response.echoed().header("x-client-cert-san"),
        None
    );

    let known = clients.client("shop", &["spiffe://example.org/shop", "shop.internal"]);
    let named = tls::get(
        gw.addr(),
        "edge.test",
        tls::client_config(&ca, Some(&known), H1),
        "/",
    )
    .await
    .expect("client with a certificate");
    assert_eq!(
        named.response.echoed().header("x-client-cert-san"),
        Some("spiffe://example.org/shop,shop.internal")
    );
    // A certificate that is presented must still be valid.
    let wrong = Ca::new("other CA").client("x", &[]);
    let refused = tls::get(
        gw.addr(),
        "edge.test",
        tls::client_config(&ca, Some(&wrong), H1),
        "/",
    )
    .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn routes_admit_only_the_client_certificates_they_name() {
    let dir = CertDir::new("route-san");
    let ca = Ca::new("weir test CA");
    let clients = Ca::new("client CA");
    let (cert, key) = ca.server("edge", &["edge.test"]).write(&dir, "edge");
    let client_ca = clients.write(&dir, "clients");
    let up = Upstream::echo().await;
    let routes = "  - name: payments\n    match: { path_prefix: /pay, client_cert: { san: \"spiffe://example.org/payments\" } }\n    upstream: up\n\
                  \x20 - name: admin\n    match: { path_prefix: /admin, client_cert: { subject: \"O=weir tests,CN=ops\" } }\n    upstream: up\n\
                  \x20 - name: public\n    match: { path_prefix: /public }\n    upstream: up\n";
    let gw = gateway(
        &format!(
            "{{ certificates: [{{ cert: {cert}, key: {key} }}], client_auth: {{ ca: {client_ca} }} }}"
        ),
        &up,
        Some(routes),
    )
    .await;
    let payments = clients.client("pay", &["spiffe://example.org/payments"]);
    let shop = clients.client("shop", &["spiffe://example.org/shop"]);
    let ops = clients.client("ops", &[]);
    let call = |cert: &support::tls::Issued, path: &'static str| {
        let config = tls::client_config(&ca, Some(cert), H2_H1);
        let addr = gw.addr();
        async move {
            tls::get(addr, "edge.test", config, path)
                .await
                .expect("exchange")
                .response
        }
    };
    assert_eq!(call(&payments, "/pay/1").await.status, 200);
    let denied = call(&shop, "/pay/1").await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(
        denied.text().contains("client_cert_forbidden"),
        "{}",
        denied.text()
    );
    assert_eq!(call(&ops, "/admin").await.status, 200);
    assert_eq!(call(&payments, "/admin").await.status, 403);
    // A route without the condition serves everyone; no route at all is 404.
    assert_eq!(call(&shop, "/public").await.status, 200);
    assert_eq!(call(&shop, "/nowhere").await.status, 404);
}

#[tokio::test]
async fn upstream_tls_verifies_the_target_and_presents_a_client_certificate() {
    let dir = CertDir::new("upstream");
    let ca = Ca::new("upstream CA");
    let stranger = Ca::new("stranger CA");
    let upstream_ca = ca.write(&dir, "upstream-ca");
    let stranger_ca = stranger.write(&dir, "stranger-ca");
    let server = ca.server("svc", &["svc.internal", "127.0.0.1"]);
    let (client_cert, client_key) = ca
        .client("weir", &["spiffe://example.org/weir"])
        .write(&dir, "weir");
    let mtls = TlsUpstream::start(&server, Some(&ca)).await;
    let plain_tls = TlsUpstream::start(&server, None).await;
    let gw = TestGateway::with(
        "routes:\n\
         \x20 - { name: mtls, match: { path: /mtls }, upstream: mtls }\n\
         \x20 - { name: h2, match: { path: /h2 }, upstream: h2 }\n\
         \x20 - { name: nocert, match: { path: /nocert }, upstream: nocert }\n\
         \x20 - { name: untrusted, match: { path: /untrusted }, upstream: untrusted }\n\
         \x20 - { name: unverified, match: { path: /unverified }, upstream: unverified }\n\
         upstreams:\n\
         \x20 - name: mtls\n    targets: [{ address: \"{mtls}\" }]\n    tls: { ca: {ca}, sni: svc.internal, client_cert: { cert: {cert}, key: {key} } }\n\
         \x20 - name: h2\n    protocol: h2\n    targets: [{ address: \"{plain}\" }]\n    tls: { ca: {ca} }\n\
         \x20 - name: nocert\n    targets: [{ address: \"{mtls}\" }]\n    tls: { ca: {ca}, sni: svc.internal }\n\
         \x20 - name: untrusted\n    targets: [{ address: \"{plain}\" }]\n    tls: { ca: {stranger} }\n\
         \x20 - name: unverified\n    targets: [{ address: \"{plain}\" }]\n    tls: { verify: false }\n",
        &[
            ("mtls", &mtls.addr),
            ("plain", &plain_tls.addr),
            ("ca", &upstream_ca),
            ("stranger", &stranger_ca),
            ("cert", &client_cert),
            ("key", &client_key),
        ],
    )
    .await;
    let mtls = client::get(gw.addr(), "/mtls").await;
    assert_eq!(
        (mtls.status.as_u16(), mtls.text().as_str()),
        (200, "tls HTTP/1.1 client=weir")
    );
    // `protocol: h2`: HTTP/2 negotiated by ALPN; the IP target is verified
    // against the certificate's IP name.
    let h2 = client::get(gw.addr(), "/h2").await;
    assert_eq!(
        (h2.status.as_u16(), h2.text().as_str()),
        (200, "tls HTTP/2.0 client=-")
    );
    // The target refuses weir without a client certificate. In TLS 1.3 it
    // says so after weir's side of the handshake is done, so weir sees the
    // connection fail on its first read.
    let nocert = client::get(gw.addr(), "/nocert").await;
    assert_eq!(nocert.status, 502, "{}", nocert.text());
    // weir refuses a target whose certificate it cannot verify.
    let untrusted = client::get(gw.addr(), "/untrusted").await;
    assert_eq!(untrusted.status, 502, "{}", untrusted.text());
    assert!(
        untrusted.text().contains("TLS handshake"),
        "{}",
        untrusted.text()
    );
    let unverified = client::get(gw.addr(), "/unverified").await;
    assert_eq!(unverified.status, 200, "{}", unverified.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let dir = CertDir::new("rotate");
    let ca = Ca::new("weir test CA");
    let old = ca.server("old", &["edge.test"]);
    let new = ca.server("new", &["edge.test"]);
    let (cert, key) = old.write(&dir, "edge");
    let up = Upstream::echo().await;
    let gw = gateway(
        &format!("{{ certificates: [{{ cert: {cert}, key: {key} }}] }}"),
        &up,
        None,
    )
    .await;
    let addr = gw.addr();
    let config = tls::client_config(&ca, None, H2_H1);

    // Clients that open a new TLS connection per request, so every request
    // is a handshake with whatever certificate is current.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let saw_new = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failures, saw_new, config) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            saw_new.clone(),
            config.clone(),
        );
        let new_der = new.der.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tls::get(addr, "edge.test", config.clone(), "/").await {
                    Ok(x) if x.response.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if x.server_cert == new_der {
                            saw_new.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(x) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", x.response.status)),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    eventually(IO_TIMEOUT, "requests before the rotation", || {
        std::future::ready(ok.load(Ordering::Relaxed) >= 20)
    })
    .await;
    new.write(&dir, "edge");
    eventually(IO_TIMEOUT, "a handshake with the new certificate", || {
        std::future::ready(saw_new.load(Ordering::Relaxed))
    })
    .await;

    // A broken renewal is refused and the new certificate stays in use.
    let before = ok.load(Ordering::Relaxed);
    dir.write(
        "edge.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    gw.metric_reaches(
        "weir_tls_reloads_total",
        &[("listener", "main"), ("result", "failure")],
        1.0,
    )
    .await;
    eventually(IO_TIMEOUT, "requests after the broken renewal", || {
        std::future::ready(ok.load(Ordering::Relaxed) >= before + 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} ok, failures: {:?}",
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    let after = tls::get(addr, "edge.test", config, "/")
        .await
        .expect("after");
    assert_eq!(after.server_cert, new.der);
}

#[tokio::test]
async fn each_certificate_reports_its_expiry() {
    let dir = CertDir::new("expiry");
    let ca = Ca::new("weir test CA");
    let issued = ca.server("edge", &["edge.test"]);
    let (cert, key) = issued.write(&dir, "edge");
    let up = Upstream::echo().await;
    let gw = gateway(
        &format!("{{ certificates: [{{ cert: {cert}, key: {key} }}] }}"),
        &up,
        None,
    )
    .await;
    use x509_parser::prelude::FromDer;
    let (_, parsed) =
        x509_parser::certificate::X509Certificate::from_der(&issued.der).expect("parse");
    let not_after = parsed.validity().not_after.timestamp() as f64;
    gw.metric_reaches(
        "weir_tls_certificate_expiry_timestamp_seconds",
        &[("listener", "main"), ("certificate", cert.as_str())],
        not_after,
    )
    .await;
}
