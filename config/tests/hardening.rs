//! The hardening settings: the `limits:` block (defaults, overrides,
//! per-route body limits, validation, restart), `trusted_proxies` and
//! `admin.auth_token_file`.

mod common;

use common::*;
use weir_config::{ByteSize, ConfigDiff, Duration, Limits};

#[test]
fn defaults_apply_when_the_block_is_absent() {
    let config = valid(&with_listener(""));
    let l = &config.limits;
    assert_eq!(l, &Limits::default());
    assert_eq!(l.max_request_line, ByteSize(8 * 1024));
    assert_eq!(l.max_header_bytes, ByteSize(64 * 1024));
    assert_eq!(l.max_header_field, ByteSize(16 * 1024));
    assert_eq!(l.max_headers, 100);
    assert_eq!(l.max_request_body, ByteSize(10 * 1024 * 1024));
    assert_eq!(l.header_read_timeout, Duration::from_secs(15));
    assert_eq!(l.keepalive_idle, Duration::from_secs(60));
    assert_eq!(l.body_idle_timeout, Duration::from_secs(30));
    assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.max_requests_per_connection, 1000);
    assert_eq!(l.h2_max_requests_per_connection, None);
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.h2_max_concurrent_streams, 100);
    assert_eq!(l.h2_stream_window, ByteSize(64 * 1024));
    assert_eq!(l.h2_connection_window, ByteSize(1024 * 1024));
    assert_eq!(l.h2_max_header_list_size, ByteSize(64 * 1024));
}

#[test]
fn keys_override_one_by_one_and_routes_set_their_own_body_limit() {
    let config = valid(&with_listener(
        "limits: { max_request_body: 1MiB, header_read_timeout: 5s, keepalive_idle: 2m, max_connections: 50 }
routes:
  - name: upload
    direct_response: { status: 200 }
    max_request_body: 100MiB
",
    ));
    assert_eq!(config.limits.max_request_body, ByteSize(1 << 20));
    assert_eq!(config.limits.header_read_timeout, Duration::from_secs(5));
    assert_eq!(config.limits.keepalive_idle, Duration::from_secs(120));
    assert_eq!(config.limits.max_connections, 50);
    assert_eq!(config.limits.max_headers, 100);
    assert_eq!(config.routes[0].max_request_body, Some(ByteSize(100 << 20)));
}

#[test]
fn unknown_keys_are_refused() {
    let e = errors(&with_listener("limits: { max_body: 1MiB }\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].to_string().contains("max_body"), "{}", e[0]);
}

#[test]
fn invalid_values_are_reported_with_their_path() {
    expect(
        &with_listener(
            "limits:
  max_header_bytes: 4KiB
  max_request_line: 16KiB
  max_headers: 0
  header_read_timeout: 0
  max_connections: 0
  h2_stream_window: 3GiB
  h2_connection_window: 1KiB
  keepalive_idle: 0
  h2_max_requests_per_connection: 0
",
        ),
        &[
            ("limits.max_header_bytes", 3, "at least 8KiB"),
            (
                "limits.max_request_line",
                4,
                "must not exceed max_header_bytes",
            ),
            ("limits.max_headers", 5, "greater than zero"),
            ("limits.header_read_timeout", 6, "greater than zero"),
            ("limits.max_connections", 7, "greater than zero"),
            ("limits.h2_stream_window", 8, "between 1 and 2147483647"),
            ("limits.h2_connection_window", 9, "between 65535"),
            ("limits.keepalive_idle", 10, "greater than zero"),
            (
                "limits.h2_max_requests_per_connection",
                11,
                "greater than zero",
            ),
        ],
    );
}

#[test]
fn changing_limits_needs_a_restart_but_a_route_body_limit_is_live() {
    let old = valid(&with_listener(
        "routes: [{ name: r, direct_response: { status: 200 } }]\n",
    ));
    let new = valid(&with_listener(
        "limits: { max_connections: 5 }\nroutes: [{ name: r, direct_response: { status: 200 } }]\n",
    ));
    let d = ConfigDiff::between(&old, &new);
    assert_eq!(d.restart, vec!["limits: changed".to_owned()]);
    let route = valid(&with_listener(
        "routes: [{ name: r, direct_response: { status: 200 }, max_request_body: 1KiB }]\n",
    ));
    let d = ConfigDiff::between(&old, &route);
    assert!(d.is_live(), "{d:?}");
    assert!(!d.live.is_empty());
}

#[test]
fn trusted_proxies_take_ipv4_and_ipv6_networks_and_addresses() {
    let config = valid(&with_listener(
        "trusted_proxies: [10.0.0.0/8, \"fd00::/8\", 192.0.2.7, \"::1\"]\n",
    ));
    assert_eq!(config.trusted_proxies.len(), 4);
    assert_eq!(
        weir_config::parse_cidr("fd00::/8"),
        Ok(("fd00::".parse().unwrap(), 8))
    );
    assert_eq!(
        weir_config::parse_cidr("192.0.2.7"),
        Ok(("192.0.2.7".parse().unwrap(), 32))
    );
    expect(
        &with_listener("trusted_proxies:\n  - 10.0.0.0/33\n  - example.com\n  - \"::/129\"\n"),
        &[
            ("trusted_proxies[0]", 3, "at most /32"),
            ("trusted_proxies[1]", 4, "invalid network"),
            ("trusted_proxies[2]", 5, "at most /128"),
        ],
    );
    let old = valid(&with_listener(""));
    let new = valid(&with_listener("trusted_proxies: [10.0.0.0/8]\n"));
    assert_eq!(
        ConfigDiff::between(&old, &new).restart,
        vec!["trusted_proxies: changed".to_owned()]
    );
}

#[test]
fn an_empty_admin_token_file_is_refused() {
    expect(
        &with_listener("admin:\n  address: 127.0.0.1:9901\n  auth_token_file: \"\"\n"),
        &[("admin.auth_token_file", 4, "must not be empty")],
    );
    let config = valid(&with_listener(
        "admin: { address: 127.0.0.1:9901, auth_token_file: /etc/weir/admin.token }\n",
    ));
    assert_eq!(
        config.admin.and_then(|a| a.auth_token_file).as_deref(),
        Some("/etc/weir/admin.token")
    );
}
