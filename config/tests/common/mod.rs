//! Helpers shared by the validation test files.
#![allow(dead_code)]

use weir_config::{Config, ConfigError};

pub const FULL_EXAMPLE: &str = r#"runtime:
  threads: 2
  shutdown_grace: 10s
listeners:
  - name: public
    address: 0.0.0.0:8080
    protocols: [http1, h2c]
admin:
  address: 127.0.0.1:9901
access_log:
  enabled: true
routes:
  - name: api
    match:
      host: api.example.com
      path_prefix: /api/
      methods: [GET, POST]
      headers: { x-env: canary }
      query: { version: "2" }
    upstream: api
    rewrite: { path_prefix: /v2/ }
    timeouts: { connect: 1s, request: 30s }
    request_headers:  { set: {}, add: {}, remove: [] }
    response_headers: { set: {}, add: {}, remove: [] }
  - name: hello
    match: { path: /hello }
    direct_response: { status: 200, body: "hello from weir\n", headers: { content-type: text/plain } }
upstreams:
  - name: api
    targets:
      - address: 127.0.0.1:9000
        weight: 1
    load_balancing: consistent_hash
    hash_on: header:x-user-id
    protocol: http1
    keepalive: { max_idle: 128, idle_timeout: 60s }
"#;

/// One listener on line 1, so that the rest of each test document starts on line 2.
pub const LISTENER: &str = "listeners: [{ name: web, address: 127.0.0.1:8080 }]\n";

pub fn errors(yaml: &str) -> Vec<ConfigError> {
    match Config::from_yaml(yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => {
            assert!(!e.errors.is_empty(), "ConfigErrors must never be empty");
            e.errors
        }
    }
}

/// Asserts exactly these errors, in this order: (path, line, phrase in the message).
#[track_caller]
pub fn expect(yaml: &str, expected: &[(&str, u64, &str)]) {
    let got = errors(yaml);
    let summary: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), expected.len(), "got {summary:#?}");
    for (e, &(path, line, phrase)) in got.iter().zip(expected) {
        assert_eq!(e.path, path, "got {summary:#?}");
        assert_eq!(
            e.line,
            Some(line),
            "wrong line for {path}; got {summary:#?}"
        );
        assert!(
            e.message.contains(phrase),
            "{:?} should contain {phrase:?}",
            e.message
        );
    }
}

/// `LISTENER` followed by `rest`.
pub fn with_listener(rest: &str) -> String {
    format!("{LISTENER}{rest}")
}

#[track_caller]
pub fn valid(yaml: &str) -> Config {
    match Config::from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got {e}"),
    }
}
