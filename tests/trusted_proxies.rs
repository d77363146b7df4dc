//! `trusted_proxies`: `X-Forwarded-For` from a trusted peer is extended and
//! names the client (rate-limit key, consistent hashing, access log); from
//! anyone else it is replaced by the peer address.

mod support;

use http::Method;
use support::*;

/// A gateway with `top` before the routes: `/echo` echoes the request, and
/// `/limited` allows one request per minute per client IP.
async fn gateway(top: &str, log: Option<&TempPath>) -> (Upstream, TestGateway) {
    let up = Upstream::echo().await;
    let access_log = match log {
        Some(p) => format!(
            "access_log: {{ enabled: true, path: \"{}\" }}\n",
            p.as_str()
        ),
        None => String::new(),
    };
    let gw = TestGateway::with(
        &format!(
            "{top}{access_log}routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: up
    rate_limit: {{ requests: 1, per: 1m, key: client_ip }}
  - name: echo
    match: {{ path_prefix: /echo }}
    upstream: up
upstreams:
  - name: up
    targets:
      - address: \"{{up}}\"
"
        ),
        &[("up", &up.addr())],
    )
    .await;
    (up, gw)
}

async fn get_as(gw: &TestGateway, path: &str, forwarded: &[&str]) -> TestResponse {
    let mut r = req(Method::GET, path);
    for f in forwarded {
        r = r.header("x-forwarded-for", *f);
    }
    send(gw.addr(), r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn an_untrusted_peer_cannot_name_another_client() {
    // Loopback is not trusted here: only 10.0.0.0/8 is.
    let (_up, gw) = gateway("trusted_proxies: [10.0.0.0/8]\n", None).await;
    let e = get_as(&gw, "/echo", &["203.0.113.7"]).await.echoed();
    assert_eq!(e.header_all("x-forwarded-for"), ["127.0.0.1"]);
    // The rate limit keys on the peer, whatever it claims.
    assert_eq!(get_as(&gw, "/limited", &["203.0.113.7"]).await.status, 200);
    assert_eq!(get_as(&gw, "/limited", &["198.51.100.9"]).await.status, 429);
}

#[tokio::test]
async fn a_trusted_peer_extends_the_list_and_names_the_client() {
    let log = TempPath::new("trusted-access");
    let (_up, gw) = gateway(
        "trusted_proxies: [127.0.0.0/8, 10.0.0.0/8, \"fd00::/8\"]\n",
        Some(&log),
    )
    .await;
    // Every header line is kept, in order, and the peer added.
    let e = get_as(&gw, "/echo", &["203.0.113.7", "198.51.100.9, 10.1.2.3"])
        .await
        .echoed();
    let all = e.header_all("x-forwarded-for").join(", ");
    assert_eq!(all, "203.0.113.7, 198.51.100.9, 10.1.2.3, 127.0.0.1");
    // The client is the rightmost untrusted address: the rate limit counts
    // each one apart.
    assert_eq!(
        get_as(&gw, "/limited", &["203.0.113.7, 10.0.0.5"])
            .await
            .status,
        200
    );
    assert_eq!(get_as(&gw, "/limited", &["203.0.113.7"]).await.status, 429);
    // A made-up address to the left of the real client does not help.
    assert_eq!(
        get_as(&gw, "/limited", &["192.0.2.1, 203.0.113.7"])
            .await
            .status,
        429
    );
    assert_eq!(get_as(&gw, "/limited", &["198.51.100.9"]).await.status, 200);
    // Without the header, the peer is the client.
    assert_eq!(get_as(&gw, "/limited", &[]).await.status, 200);
    let lines = access_log_lines(&log, 6).await;
    let clients: Vec<&str> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    assert_eq!(clients[0], "198.51.100.9:0", "{clients:?}");
    assert_eq!(clients[1], "203.0.113.7:0", "{clients:?}");
    assert_eq!(clients[4], "198.51.100.9:0", "{clients:?}");
    assert!(clients[5].starts_with("127.0.0.1:"), "{clients:?}");
}

/// A trusted peer's connection carries many clients: each request is counted
/// against the client it names, not the connection.
#[tokio::test]
async fn forwarded_clients_on_one_connection_are_counted_apart() {
    let (_up, gw) = gateway("trusted_proxies: [127.0.0.0/8]\n", None).await;
    let mut conn = H1Client::connect(gw.addr()).await;
    let mut get = async |forwarded: Option<&str>| {
        let mut r = req(Method::GET, "/limited");
        if let Some(f) = forwarded {
            r = r.header("x-forwarded-for", f);
        }
        conn.request(r.body(empty()).unwrap()).await.status
    };
    assert_eq!(get(Some("203.0.113.7")).await, 200);
    assert_eq!(get(Some("198.51.100.9")).await, 200);
    assert_eq!(get(None).await, 200, "the peer itself is one more client");
    assert_eq!(get(Some("203.0.113.7")).await, 429);
    assert_eq!(get(None).await, 429);
    assert_eq!(get(Some("198.51.100.9")).await, 429);
    assert_eq!(get(Some("192.0.2.44")).await, 200);
}

#[tokio::test]
async fn consistent_hashing_on_client_ip_uses_the_forwarded_client() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gw = TestGateway::with(
        "trusted_proxies: [127.0.0.1]
routes:
  - name: all
    upstream: pool
upstreams:
  - name: pool
    load_balancing: consistent_hash
    hash_on: client_ip
    targets:
      - address: \"{up}\"
      - address: \"{up2}\"
",
        &[("up", &a.addr()), ("up2", &b.addr())],
    )
    .await;
    // Every request comes from 127.0.0.1; only the forwarded clients differ.
    for i in 0..20 {
        let client = format!("198.51.100.{i}");
        for _ in 0..3 {
            assert_eq!(get_as(&gw, "/", &[&client]).await.status, 200);
        }
        // The same client always lands on the same target.
        let (na, nb) = (a.requests().len(), b.requests().len());
        assert!(
            na % 3 == 0 && nb % 3 == 0,
            "client {i} was split: {na} / {nb}"
        );
    }
    // Twenty clients on one target would mean the peer was hashed.
    assert!(
        !a.requests().is_empty() && !b.requests().is_empty(),
        "{} / {}",
        a.requests().len(),
        b.requests().len()
    );
}
