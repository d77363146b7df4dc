//! Whole-document behaviour: several errors in order, parse and type errors
//! with their lines, hostile input, display.

mod common;

use common::*;
use weir_config::{Config, ConfigErrors};

// ---- several errors, order, parse errors ----

#[test]
fn reports_every_error_in_document_order() {
    // Upstreams come before routes in the file, so their errors come first.
    let yaml = r#"runtime:
  threads: 0
upstreams:
  - name: api
    targets:
      - address: 10.0.0.1
listeners:
  - name: web
    address: 127.0.0.1:8080
routes:
  - name: a
    upstream: apj
  - name: b
    match: { path_regex: "(" }
    direct_response: { status: 99 }
"#;
    expect(
        yaml,
        &[
            ("runtime.threads", 2, "between 1 and 1024"),
            ("upstreams[0].targets[0].address", 6, "missing port"),
            ("routes[0].upstream", 12, "did you mean \"api\"?"),
            ("routes[1].match.path_regex", 14, "invalid regex"),
            (
                "routes[1].direct_response.status",
                15,
                "between 200 and 599",
            ),
        ],
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let yaml = with_listener(
        "routes:\n  - name: a\n    direct_response: { status: 200 }\n    upstream_name: api\n",
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(5));
    assert!(
        errs[0].message.contains("unknown field `upstream_name`"),
        "{}",
        errs[0].message
    );
    assert!(!errs[0].message.contains('\n'));

    let errs = errors("listeners: []\nlistenerz: []\n");
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("unknown field `listenerz`"));
}

#[test]
fn bad_durations_are_rejected_with_their_line() {
    let yaml = with_listener("routes:\n  - name: a\n    direct_response: { status: 200 }\n    timeouts:\n      connect: \"5x\"\n");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(6));
    assert!(
        errs[0].message.contains("invalid duration \"5x\""),
        "{}",
        errs[0].message
    );
}

#[test]
fn type_errors_are_rejected_with_their_line() {
    let errs = errors(&with_listener(
        "routes:\n  - name: a\n    direct_response: { status: ok }\n",
    ));
    assert_eq!(errs[0].line, Some(4));
    assert!(
        errs[0].message.contains("whole number"),
        "{}",
        errs[0].message
    );

    let errs = errors(&with_listener("upstreams:\n  - name: a\n    targets: [{ address: 10.0.0.1:80 }]\n    load_balancing: fastest\n"));
    assert_eq!(errs[0].line, Some(5));
    assert!(
        errs[0].message.contains("unknown variant `fastest`"),
        "{}",
        errs[0].message
    );

    let errs = errors("listeners:\n  - address: 127.0.0.1:80\n");
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("missing field `name`"));
}

#[test]
fn garbage_never_panics() {
    let deep_flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_block: String = (0..5_000)
        .map(|i| format!("{}- \n", "  ".repeat(i)))
        .collect();
    let deep_in_key = format!("listeners: {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let binary: String = (0u8..=255).map(char::from).collect();
    let big = "x".repeat(1 << 20);
    let big_value =
        format!("{LISTENER}routes: [{{ name: a, timeouts: {{ connect: \"{big}\" }} }}]\n");
    let inputs = [
        String::new(),
        "[]".into(),
        ":::".into(),
        "~".into(),
        "\u{0}\u{1}\u{2}".into(),
        "listeners: [".into(),
        "a: &x [*x]".into(),
        "--- 1\n--- 2\n".into(),
        "\t\tlisteners:\n".into(),
        deep_flow,
        deep_block,
        deep_in_key,
        binary,
        big.clone(),
        big_value,
    ];
    for input in &inputs {
        let result = std::panic::catch_unwind(|| Config::from_yaml(input));
        let shown: String = input.chars().take(40).collect();
        match result {
            Ok(Err(e)) => {
                assert!(!e.errors.is_empty());
                for err in &e.errors {
                    assert!(err.message.len() < 1_000, "message too long for {shown:?}");
                }
            }
            Ok(Ok(_)) => panic!("{shown:?} should not be a valid config"),
            Err(_) => panic!("panicked on {shown:?}"),
        }
    }
}

#[test]
fn long_values_are_shortened_in_messages() {
    let long = "x".repeat(1 << 20);
    let yaml = with_listener(&format!(
        "routes: [{{ name: a, match: {{ path: \"{long}\" }}, upstream: \"{long}\" }}]\n"
    ));
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 2);
    for e in &errs {
        assert_eq!(e.line, Some(2));
        assert!(e.message.len() < 200, "{}", e.message);
        assert!(e.message.contains("\"..."), "{}", e.message);
    }
}

#[test]
fn aliased_nodes_point_at_their_use() {
    expect(
        &with_listener(
            r#"upstreams:
  - name: a
    targets: &shared
      - address: nope
  - name: b
    targets: *shared
"#,
        ),
        &[
            ("upstreams[0].targets[0].address", 5, "missing port"),
            ("upstreams[1].targets[0].address", 7, "missing port"),
        ],
    );
}

#[test]
fn unreadable_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("weir-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("binary.yaml");
    std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).expect("write");
    let err = Config::load(&path).expect_err("invalid UTF-8");
    assert_eq!(
        err.file.as_deref(),
        Some(path.display().to_string().as_str())
    );
    assert!(err.errors[0].message.starts_with("cannot read"));

    let path = dir.join("bad.yaml");
    std::fs::write(&path, "listeners: []\n").expect("write");
    let err = Config::load(&path).expect_err("no listener");
    assert!(err.to_string().contains(&format!(
        "{}:1: listeners: at least one listener",
        path.display()
    )));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn display_lists_every_error() {
    let err = Config::from_yaml("listeners: []\nroutes:\n  - name: a\n    upstream: api\n")
        .expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "2 errors in configuration:\n\
         \x20 config:1: listeners: at least one listener is required\n\
         \x20 config:4: routes[0].upstream: no upstream named \"api\"\n"
    );
    assert_eq!(
        err.errors[1].to_string(),
        "line 4: routes[0].upstream: no upstream named \"api\""
    );

    let one = ConfigErrors {
        file: Some("weir.yaml".into()),
        errors: vec![err.errors[0].clone()],
    };
    assert_eq!(
        one.to_string(),
        "1 error in weir.yaml:\n  weir.yaml:1: listeners: at least one listener is required\n"
    );
    let single = ConfigErrors::single(None, "cannot read: gone");
    assert_eq!(
        single.to_string(),
        "1 error in configuration:\n  config: cannot read: gone\n"
    );
}
