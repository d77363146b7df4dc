//! Validation of `upstreams`: names, targets, weights, hashing, keep-alive.

mod common;

use common::*;

// ---- upstreams ----

#[test]
fn upstream_names_and_targets() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: ""
    targets: [{ address: 10.0.0.1:80 }]
  - name: a
    targets: []
  - name: a
    targets: [{ address: 10.0.0.2:80 }]
"#,
        ),
        &[
            ("upstreams[0].name", 3, "must not be empty"),
            ("upstreams[1].targets", 6, "at least one target"),
            ("upstreams[2].name", 7, "duplicate upstream name \"a\""),
        ],
    );
}

#[test]
fn target_addresses_are_host_port() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: a
    targets:
      - address: 10.0.0.1
      - address: 10.0.0.1:0
      - address: "::1:80"
      - address: backend.internal:8080
      - address: "[::1]:8080"
      - address: BACKEND.internal:8080
      - address: 300.1.1.1:80
      - address: "bad host:80"
      - address: "[0::1]:8080"
"#,
        ),
        &[
            ("upstreams[0].targets[0].address", 5, "missing port"),
            ("upstreams[0].targets[1].address", 6, "from 1 to 65535"),
            ("upstreams[0].targets[2].address", 7, "must be in brackets"),
            (
                "upstreams[0].targets[5].address",
                10,
                "duplicate target \"BACKEND.internal:8080\" (already listed as targets[3])",
            ),
            (
                "upstreams[0].targets[6].address",
                11,
                "not a valid IPv4 address",
            ),
            (
                "upstreams[0].targets[7].address",
                12,
                "invalid character ' '",
            ),
            (
                "upstreams[0].targets[8].address",
                13,
                "already listed as targets[4]",
            ),
        ],
    );
}

#[test]
fn target_weights_are_bounded() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: a
    targets:
      - { address: 10.0.0.1:80, weight: 0 }
      - { address: 10.0.0.2:80, weight: 10000 }
      - address: 10.0.0.3:80
        weight: 10001
"#,
        ),
        &[
            ("upstreams[0].targets[0].weight", 5, "between 1 and 10000"),
            ("upstreams[0].targets[2].weight", 8, "got 10001"),
        ],
    );
}

#[test]
fn hash_on_goes_with_consistent_hash() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: a
    targets: [{ address: 10.0.0.1:80 }]
    load_balancing: consistent_hash
  - name: b
    targets: [{ address: 10.0.0.1:80 }]
    hash_on: client_ip
  - name: c
    targets: [{ address: 10.0.0.1:80 }]
    load_balancing: consistent_hash
    hash_on: "cookie:bad name"
  - name: d
    targets: [{ address: 10.0.0.1:80 }]
    load_balancing: consistent_hash
    hash_on: path
"#,
        ),
        &[
            ("upstreams[0].load_balancing", 5, "requires `hash_on`"),
            (
                "upstreams[1].hash_on",
                8,
                "hash_on only applies to load_balancing: consistent_hash",
            ),
            ("upstreams[2].hash_on", 12, "invalid name \"bad name\""),
        ],
    );
}

#[test]
fn keepalive_needs_an_idle_timeout() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: a
    targets: [{ address: 10.0.0.1:80 }]
    keepalive: { idle_timeout: 0s }
  - name: b
    targets: [{ address: 10.0.0.1:80 }]
    keepalive: { max_idle: 0, idle_timeout: 0s }
"#,
        ),
        &[(
            "upstreams[0].keepalive.idle_timeout",
            5,
            "greater than 0 when max_idle > 0",
        )],
    );
}
