//! gRPC settings: `match.grpc`, `grpc_web`, `cors` and gRPC health checks.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn grpc_match_and_cors_parse() {
    let config = valid(&with_listener(
        r#"routes:
  - name: orders
    match: { grpc: { service: shop.v1.Orders, method: Get } }
    upstream: grpc
    grpc_web: true
    cors:
      allow_origins: [https://app.example.com]
      allow_headers: [authorization]
      max_age: 10m
  - name: all-orders
    match: { grpc: { service: shop.v1.Orders } }
    upstream: grpc
upstreams:
  - name: grpc
    protocol: h2c
    targets: [{ address: 127.0.0.1:50051 }]
    health_check: { type: grpc, service: shop.v1.Orders }
"#,
    ));
    let route = &config.routes[0];
    let grpc = route.matches.grpc.as_ref().unwrap();
    assert_eq!(grpc.path(), "/shop.v1.Orders/Get");
    assert!(!grpc.is_prefix());
    assert!(route.grpc_web);
    let cors = route.cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins, ["https://app.example.com"]);
    assert_eq!(cors.allow_methods, ["GET", "HEAD", "POST"], "default");
    assert_eq!(cors.max_age.unwrap().get(), Duration::from_secs(600));
    assert!(!cors.allow_credentials);
    let all = config.routes[1].matches.grpc.as_ref().unwrap();
    assert_eq!(all.path(), "/shop.v1.Orders/");
    assert!(all.is_prefix());
    assert!(!config.routes[1].grpc_web, "off by default");
    let hc = config.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(hc.kind, weir_config::HealthCheckKind::Grpc);
    assert_eq!(hc.service.as_deref(), Some("shop.v1.Orders"));
}

#[test]
fn grpc_match_excludes_path_conditions_and_checks_names() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    match:
      path_prefix: /x/
      grpc: { service: pkg.Svc }
    direct_response: { status: 200 }
  - name: b
    match: { grpc: { service: "pkg/Svc", method: "Get/x" } }
    direct_response: { status: 200 }
  - name: c
    match: { grpc: { service: "", method: "1st" } }
    direct_response: { status: 200 }
"#,
        ),
        &[
            (
                "routes[0].match.grpc",
                6,
                "conflicts with `match.path_prefix`",
            ),
            ("routes[1].match.grpc.service", 9, "invalid service name"),
            ("routes[1].match.grpc.method", 9, "invalid method name"),
            ("routes[2].match.grpc.service", 12, "invalid service name"),
            ("routes[2].match.grpc.method", 12, "invalid method name"),
        ],
    );
}

#[test]
fn grpc_web_needs_an_http2_upstream() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    upstream: h1
    grpc_web: true
  - name: b
    upstream: h2
    grpc_web: true
  - name: c
    direct_response: { status: 200 }
    grpc_web: true
upstreams:
  - name: h1
    targets: [{ address: 127.0.0.1:1 }]
  - name: h2
    protocol: h2c
    targets: [{ address: 127.0.0.1:2 }]
"#,
        ),
        &[
            (
                "routes[0].grpc_web",
                5,
                "upstream \"h1\" must have `protocol: h2c`",
            ),
            ("routes[2].grpc_web", 11, "a direct_response route has none"),
        ],
    );
}

#[test]
fn cors_origins_methods_and_headers_are_checked() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    direct_response: { status: 200 }
    cors:
      allow_origins: ["*", app.example.com, "https://app.example.com/", "https://ok.example.com:8443"]
      allow_credentials: true
      allow_methods: ["GET", "P O"]
      allow_headers: ["*", "x y"]
      expose_headers: ["*", grpc-status]
  - name: b
    direct_response: { status: 200 }
    cors: { allow_origins: [] }
"#,
        ),
        &[
            (
                "routes[0].cors.allow_origins[0]",
                6,
                "cannot be combined with allow_credentials",
            ),
            (
                "routes[0].cors.allow_origins[1]",
                6,
                "expected scheme://host",
            ),
            (
                "routes[0].cors.allow_origins[2]",
                6,
                "an origin has no path",
            ),
            ("routes[0].cors.allow_methods[1]", 8, "invalid method"),
            ("routes[0].cors.allow_headers[1]", 9, "invalid header name"),
            ("routes[1].cors.allow_origins", 13, "at least one origin"),
        ],
    );
}

#[test]
fn grpc_health_checks_need_http2_and_take_no_path() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: a
    targets: [{ address: 127.0.0.1:1 }]
    health_check: { type: grpc }
  - name: b
    protocol: h2c
    targets: [{ address: 127.0.0.1:2 }]
    health_check: { type: grpc, path: /healthz, service: "not a name" }
  - name: c
    targets: [{ address: 127.0.0.1:3 }]
    health_check: { type: http, service: x }
  - name: d
    protocol: h2c
    targets: [{ address: 127.0.0.1:4 }]
    health_check: { type: grpc, service: "" }
"#,
        ),
        &[
            ("upstreams[0].health_check.type", 5, "need HTTP/2"),
            (
                "upstreams[1].health_check.path",
                9,
                "always call /grpc.health.v1.Health/Check",
            ),
            (
                "upstreams[1].health_check.service",
                9,
                "invalid service name",
            ),
            (
                "upstreams[2].health_check.service",
                12,
                "only applies to `type: grpc`",
            ),
        ],
    );
}
