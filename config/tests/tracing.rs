//! The `tracing:` block: defaults, the endpoint parser shared with the
//! gateway, and the errors a wrong block reports.

mod common;

use common::*;
use weir_config::{Duration, Number, OtlpEndpoint, Tracing};

#[test]
fn tracing_is_off_when_the_block_is_absent() {
    let config = valid(LISTENER);
    assert_eq!(config.tracing, None);
}

#[test]
fn an_empty_block_takes_every_default() {
    let config = valid(&with_listener("tracing: {}\n"));
    let t = config.tracing.expect("tracing block");
    assert_eq!(t, Tracing::default());
    assert_eq!(t.otlp_endpoint, "http://127.0.0.1:4318");
    assert_eq!(t.sample_ratio, Number(1.0));
    assert_eq!(t.service_name, "weir");
    assert_eq!((t.batch_size, t.queue_size), (512, 2048));
    assert_eq!(t.flush_interval, Duration::from_secs(5));
    assert_eq!(t.timeout, Duration::from_secs(10));
}

#[test]
fn every_key_is_read() {
    let config = valid(&with_listener(
        "tracing:
  otlp_endpoint: http://collector.internal:4318/otlp
  sample_ratio: 0.01
  service_name: edge-gateway
  batch_size: 100
  queue_size: 1000
  flush_interval: 250ms
  timeout: 2s
",
    ));
    let t = config.tracing.expect("tracing block");
    assert_eq!(t.otlp_endpoint, "http://collector.internal:4318/otlp");
    assert_eq!(t.sample_ratio.get(), 0.01);
    assert_eq!(t.service_name, "edge-gateway");
    assert_eq!((t.batch_size, t.queue_size), (100, 1000));
    assert_eq!(t.flush_interval, Duration::from_millis(250));
    assert_eq!(t.timeout, Duration::from_secs(2));
}

#[test]
fn the_issue_example_is_valid() {
    let config = valid(&with_listener(
        "tracing: { otlp_endpoint: \"http://127.0.0.1:4318\", sample_ratio: 0.01, service_name: weir }\n",
    ));
    assert_eq!(config.tracing.map(|t| t.sample_ratio.get()), Some(0.01));
}

#[test]
fn unknown_tracing_keys_are_rejected_with_their_line() {
    let errs = errors(&with_listener("tracing:\n  sample_rate: 0.1\n"));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(3));
    assert!(
        errs[0].message.contains("unknown field `sample_rate`"),
        "{}",
        errs[0].message
    );
}

#[test]
fn endpoint_gives_host_port_and_traces_path() {
    let endpoint = |url: &str| {
        Tracing {
            otlp_endpoint: url.into(),
            ..Tracing::default()
        }
        .endpoint()
    };
    assert_eq!(
        endpoint("http://127.0.0.1:4318"),
        Ok(OtlpEndpoint {
            host: "127.0.0.1".into(),
            port: 4318,
            traces_path: "/v1/traces".into(),
            authority: "127.0.0.1:4318".into(),
        })
    );
    let with_path = endpoint("http://otel.example:80/prefix/").expect("valid");
    assert_eq!(with_path.traces_path, "/prefix/v1/traces");
    assert_eq!(with_path.authority, "otel.example:80");
    let v6 = endpoint("http://[::1]:4318/").expect("valid");
    assert_eq!((v6.host.as_str(), v6.port), ("::1", 4318));
    assert_eq!(v6.traces_path, "/v1/traces");
}

#[test]
fn endpoint_rejects_what_the_exporter_cannot_reach() {
    let problem = |url: &str| {
        Tracing {
            otlp_endpoint: url.into(),
            ..Tracing::default()
        }
        .endpoint()
        .expect_err(url)
    };
    assert!(problem("https://127.0.0.1:4318").contains("https is not supported"));
    assert!(problem("HTTPS://127.0.0.1:4318").contains("https is not supported"));
    assert!(problem("127.0.0.1:4318").contains("must start with http://"));
    assert!(problem("grpc://127.0.0.1:4317").contains("must start with http://"));
    assert!(problem("http://127.0.0.1").contains("missing port"));
    assert!(problem("http://:4318").contains("missing host"));
    assert!(problem("http://127.0.0.1:0").contains("port"));
    assert!(problem("http://127.0.0.1:4318/v1?x=1").contains("'?' is not allowed"));
    assert!(problem("http://user@127.0.0.1:4318").contains("'@' is not allowed"));
    assert!(problem("http://127.0.0.1:4318/a b").contains("' ' is not allowed"));
    assert!(problem("http://é:4318").contains("is not allowed"));
}

#[test]
fn every_wrong_value_is_reported_with_its_path_and_line() {
    expect(
        &with_listener(
            "tracing:
  otlp_endpoint: https://collector:4318
  sample_ratio: 1.5
  service_name: \" \"
  batch_size: 0
  queue_size: 0
  flush_interval: 0
  timeout: 0
",
        ),
        &[
            ("tracing.otlp_endpoint", 3, "https is not supported"),
            ("tracing.sample_ratio", 4, "between 0 and 1 (got 1.5)"),
            ("tracing.service_name", 5, "must not be empty"),
            ("tracing.batch_size", 6, "at least 1"),
            ("tracing.queue_size", 7, "between 1 and"),
            ("tracing.flush_interval", 8, "greater than 0"),
            ("tracing.timeout", 9, "greater than 0"),
        ],
    );
}

#[test]
fn negative_ratio_and_oversized_batch_are_rejected() {
    expect(
        &with_listener(
            "tracing:
  sample_ratio: -0.1
  batch_size: 4096
",
        ),
        &[
            ("tracing.sample_ratio", 3, "between 0 and 1"),
            (
                "tracing.batch_size",
                4,
                "must not exceed queue_size (2048) (got 4096)",
            ),
        ],
    );
    // Only the batch is wrong once the queue is large enough.
    valid(&with_listener(
        "tracing: { batch_size: 4096, queue_size: 4096 }\n",
    ));
}

#[test]
fn ratio_bounds_are_inclusive() {
    for ratio in ["0", "0.0", "1", "1.0", "0.5"] {
        valid(&with_listener(&format!(
            "tracing: {{ sample_ratio: {ratio} }}\n"
        )));
    }
}
