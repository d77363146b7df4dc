//! The governance blocks: retries, rate limits, faults, mirroring, weighted
//! splits, health checks, outlier detection, circuit breaking, Redis.

mod common;

use common::*;
use weir_config::{
    HealthCheckKind, OnBackendError, RateBackend, RateKey, RetryOn, StatusRange, Sticky,
};

const UPSTREAMS: &str = "upstreams:
  - name: v1
    targets: [{ address: 127.0.0.1:9001 }]
  - name: v2
    targets: [{ address: 127.0.0.1:9002 }]
";

#[test]
fn every_policy_parses_with_its_defaults() {
    let config = valid(&with_listener(&format!(
        r#"redis: {{ url: "redis://127.0.0.1:6379" }}
routes:
  - name: api
    upstreams: [{{ name: v1, weight: 90 }}, {{ name: v2, weight: 10 }}]
    sticky: cookie:user
    timeouts: {{ per_try: 2s, idle: 30s }}
    retry: {{ attempts: 3, on: [connect_failure, reset, 5xx, "429", 503] }}
    rate_limit: {{ requests: 100, burst: 50, key: "header:X-Api-Key", backend: redis, on_backend_error: deny }}
    fault: {{ delay: {{ duration: 200ms, percent: 10 }}, abort: {{ status: 503, percent: 5 }}, header: x-weir-fault }}
    mirror: {{ upstream: v2, percent: 12.5 }}
{UPSTREAMS}    health_check: {{ path: /healthz, expected_status: [200-299, 404] }}
    outlier_detection: {{ consecutive_5xx: 4 }}
    circuit_breaker: {{ max_requests: 10 }}
"#
    )));
    let route = &config.routes[0];
    let split = route.upstreams.as_ref().expect("split");
    assert_eq!((split[1].name.as_str(), split[1].weight), ("v2", 10));
    assert_eq!(route.sticky, Some(Sticky::Cookie("user".into())));
    assert_eq!(route.timeouts.per_try.map(|d| d.get().as_secs()), Some(2));
    let retry = route.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts, 3);
    assert_eq!(
        retry.on,
        [
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Status5xx,
            RetryOn::Status(429),
            RetryOn::Status(503)
        ]
    );
    assert_eq!(retry.backoff.base.get().as_millis(), 25);
    assert_eq!(retry.budget.ratio.get(), 0.2);
    assert_eq!(retry.budget.min_per_second, 10);
    assert_eq!(retry.max_body.bytes(), 64 * 1024);
    let rl = route.rate_limit.as_ref().expect("rate limit");
    assert_eq!(
        (rl.requests, rl.burst, rl.per.get().as_secs()),
        (100, 50, 1)
    );
    assert_eq!(rl.key, RateKey::Header("x-api-key".into()));
    assert_eq!(rl.backend, RateBackend::Redis);
    assert_eq!(rl.on_backend_error, OnBackendError::Deny);
    let fault = route.fault.as_ref().expect("fault");
    assert_eq!(
        fault.abort.map(|a| (a.status, a.percent.get())),
        Some((503, 5.0))
    );
    let mirror = route.mirror.as_ref().expect("mirror");
    assert_eq!((mirror.percent.get(), mirror.max_in_flight), (12.5, 64));
    let up = &config.upstreams[1];
    let hc = up.health_check.as_ref().expect("health check");
    assert_eq!(hc.kind, HealthCheckKind::Http);
    assert_eq!(
        hc.expected_status,
        [
            StatusRange {
                low: 200,
                high: 299
            },
            StatusRange {
                low: 404,
                high: 404
            }
        ]
    );
    assert_eq!(
        (hc.interval.get().as_secs(), hc.unhealthy_threshold),
        (5, 3)
    );
    let od = up.outlier_detection.expect("outlier");
    assert_eq!(
        (od.consecutive_5xx, od.consecutive_connect_failures),
        (4, 3)
    );
    assert_eq!(od.max_ejection_percent, 50);
    let cb = up.circuit_breaker.expect("breaker");
    assert_eq!(
        (cb.max_connections, cb.max_pending, cb.max_requests),
        (1024, 256, 10)
    );
    assert_eq!(
        config.redis.as_ref().map(|r| r.timeout.get().as_millis()),
        Some(100)
    );
}

#[test]
fn the_bench_policy_config_is_valid() {
    valid(
        "runtime: { threads: 1 }
listeners: [{ name: bench, address: 127.0.0.1:8080, protocols: [http1, h2c] }]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
    timeouts: { connect: 1s, request: 10s }
    retry: { attempts: 2, on: [connect_failure, reset, 502, 503], budget: { ratio: 0.2, min_per_second: 10 } }
    rate_limit: { requests: 100000000, per: 1s, burst: 10000000, key: client_ip }
upstreams:
  - name: origin
    targets: [{ address: 127.0.0.1:9000 }]
    keepalive: { max_idle: 256, idle_timeout: 60s }
    health_check: { path: /small, interval: 1s, timeout: 1s }
    outlier_detection: { consecutive_5xx: 5 }
    circuit_breaker: { max_connections: 100000, max_pending: 100000, max_requests: 100000 }
",
    );
}

#[test]
fn retry_errors_name_their_field() {
    expect(
        &with_listener(&format!(
            r#"routes:
  - name: a
    upstream: v1
    retry:
      attempts: 0
      on: [reset, 200, timeout, reset]
      backoff: {{ base: 100ms, max: 10ms }}
      budget: {{ ratio: 1.5 }}
{UPSTREAMS}"#
        )),
        &[
            ("routes[0].retry.attempts", 6, "between 1 and 10"),
            ("routes[0].retry.on", 7, "needs `per_try_timeout`"),
            ("routes[0].retry.on[1]", 7, "only 4xx and 5xx"),
            ("routes[0].retry.on[3]", 7, "duplicate condition reset"),
            ("routes[0].retry.backoff.max", 8, "must not be less than"),
            ("routes[0].retry.budget.ratio", 9, "between 0 and 1"),
        ],
    );
}

#[test]
fn unknown_retry_condition_is_a_parse_error() {
    let errs = errors(&with_listener(&format!(
        "routes:\n  - name: a\n    upstream: v1\n    retry: {{ on: [gateway_error] }}\n{UPSTREAMS}"
    )));
    assert!(
        errs[0].message.contains("invalid retry condition"),
        "{errs:?}"
    );
}

#[test]
fn split_and_mirror_references_are_checked() {
    expect(
        &with_listener(&format!(
            r#"routes:
  - name: a
    upstream: v1
    upstreams: [{{ name: v1, weight: 0 }}, {{ name: v3, weight: 0 }}, {{ name: v1, weight: 0 }}]
    mirror: {{ upstream: v9, percent: 120 }}
  - name: b
    direct_response: {{ status: 200 }}
    sticky: header:x-user
    retry: {{ attempts: 2 }}
{UPSTREAMS}"#
        )),
        &[
            ("routes[0].upstreams", 5, "mutually exclusive"),
            ("routes[0].upstreams", 5, "at least one weight"),
            ("routes[0].upstreams[1].name", 5, "no upstream named \"v3\""),
            (
                "routes[0].upstreams[2].name",
                5,
                "already listed as upstreams[0]",
            ),
            ("routes[0].mirror.upstream", 6, "no upstream named \"v9\""),
            ("routes[0].mirror.percent", 6, "between 0 and 100"),
            ("routes[1].sticky", 9, "only applies to a weighted split"),
            ("routes[1].retry", 10, "only applies to routes that forward"),
        ],
    );
}

#[test]
fn rate_limit_and_fault_errors() {
    expect(
        &with_listener(&format!(
            r#"routes:
  - name: a
    upstream: v1
    rate_limit: {{ requests: 0, per: 0s, backend: redis }}
    fault: {{ abort: {{ status: 200, percent: -1 }}, header: "bad header" }}
  - name: b
    upstream: v1
    fault: {{}}
{UPSTREAMS}"#
        )),
        &[
            ("routes[0].rate_limit.requests", 5, "at least 1"),
            ("routes[0].rate_limit.per", 5, "greater than 0"),
            (
                "routes[0].rate_limit.backend",
                5,
                "needs a top-level `redis",
            ),
            ("routes[0].fault.abort.status", 6, "between 400 and 599"),
            ("routes[0].fault.abort.percent", 6, "between 0 and 100"),
            ("routes[0].fault.header", 6, "invalid header name"),
            ("routes[1].fault", 9, "needs `delay`, `abort` or both"),
        ],
    );
}

#[test]
fn upstream_policy_errors() {
    expect(
        &with_listener(
            r#"redis: { url: "http://127.0.0.1:6379", timeout: 0s }
upstreams:
  - name: a
    targets: [{ address: 127.0.0.1:9001 }]
    health_check: { type: tcp, path: /x, interval: 0s, unhealthy_threshold: 0 }
    outlier_detection: { consecutive_5xx: 0, consecutive_connect_failures: 0, max_ejection_percent: 101 }
    circuit_breaker: { max_pending: 0 }
  - name: b
    targets: [{ address: 127.0.0.1:9002 }]
    health_check: { path: healthz, expected_status: [299-200] }
"#,
        ),
        &[
            ("redis.url", 2, "must start with redis://"),
            ("redis.timeout", 2, "greater than 0"),
            (
                "upstreams[0].health_check.path",
                6,
                "only applies to `type: http`",
            ),
            ("upstreams[0].health_check.interval", 6, "greater than 0"),
            (
                "upstreams[0].health_check.unhealthy_threshold",
                6,
                "at least 1",
            ),
            ("upstreams[0].outlier_detection", 7, "both rules are off"),
            (
                "upstreams[0].outlier_detection.max_ejection_percent",
                7,
                "between 0 and 100",
            ),
            ("upstreams[0].circuit_breaker.max_pending", 8, "at least 1"),
            ("upstreams[1].health_check.path", 11, "must start with `/`"),
            (
                "upstreams[1].health_check.expected_status[0]",
                11,
                "invalid status range 299-200",
            ),
        ],
    );
}

#[test]
fn policy_blocks_reject_unknown_keys() {
    let errs = errors(&with_listener(&format!(
        "routes:\n  - name: a\n    upstream: v1\n    retry: {{ attempts: 2, retries: 3 }}\n{UPSTREAMS}"
    )));
    assert!(errs[0].message.contains("retries"), "{errs:?}");
    assert_eq!(errs[0].line, Some(5), "{errs:?}");
}

#[test]
fn websocket_keys_parse_with_their_defaults() {
    let config = valid(&with_listener(&format!(
        "routes:
  - name: plain
    upstream: v1
  - name: chat
    upstream: v1
    websocket_idle_timeout: 5m
  - name: nows
    upstream: v2
    websocket: false
{UPSTREAMS}"
    )));
    let [plain, chat, nows] = &config.routes[..] else {
        panic!("three routes")
    };
    assert!(plain.websocket, "WebSocket is allowed by default");
    assert_eq!(plain.websocket_idle_timeout, None);
    assert!(chat.websocket);
    assert_eq!(
        chat.websocket_idle_timeout.map(|d| d.get().as_secs()),
        Some(300)
    );
    assert!(!nows.websocket);
}

#[test]
fn websocket_errors_name_their_field() {
    expect(
        &with_listener(&format!(
            "routes:
  - name: zero
    upstream: v1
    websocket_idle_timeout: 0s
  - name: off
    upstream: v1
    websocket: false
    websocket_idle_timeout: 1m
  - name: local
    direct_response: {{ status: 200 }}
    websocket_idle_timeout: 1m
{UPSTREAMS}"
        )),
        &[
            ("routes[0].websocket_idle_timeout", 5, "greater than 0"),
            ("routes[1].websocket_idle_timeout", 9, "no effect"),
            ("routes[2].websocket_idle_timeout", 12, "only applies"),
        ],
    );
    let errs = errors(&with_listener(&format!(
        "routes:\n  - name: a\n    upstream: v1\n    websocket: maybe\n{UPSTREAMS}"
    )));
    assert_eq!(errs[0].line, Some(5), "{errs:?}");
}
