use std::time::Duration;

use http::StatusCode;
use weir_config::Config;

use super::super::{RouteAction, RouteTable, RouterError};
use super::{build, config, get, headers, split_target, table, NONE};

// ---- rewrite ----

/// Checks `(request target, expected upstream target)` pairs for one rewrite.
fn assert_rewrites(prefix: &str, replacement: &str, cases: &[(&str, Option<&str>)]) {
    let t = build(&format!(
        "  - {{ name: rw, match: {{ path_prefix: \"{prefix}\" }}, upstream: a, \
         rewrite: {{ path_prefix: \"{replacement}\" }} }}\n"
    ));
    for (target, want) in cases {
        let (path, query) = split_target(target);
        let got = t.routes()[0].rewrite(path, query);
        assert_eq!(
            got.as_deref(),
            *want,
            "{prefix} -> {replacement} on {target}"
        );
    }
}

#[test]
fn rewrite_replaces_the_prefix_and_keeps_the_query() {
    assert_rewrites(
        "/api/",
        "/v2/",
        &[
            ("/api/users?x=1", Some("/v2/users?x=1")),
            ("/api/users", Some("/v2/users")),
            ("/api/", Some("/v2/")),
        ],
    );
    assert_rewrites("/api", "/v2", &[("/api/a/b?", Some("/v2/a/b?"))]);
}

#[test]
fn rewrite_to_root_avoids_double_and_missing_slashes() {
    let api = [
        ("/api", Some("/")),
        ("/api/x", Some("/x")),
        ("/api/", Some("/")),
    ];
    assert_rewrites("/api", "/", &api);
    assert_rewrites("/api/", "/", &[("/api/x", Some("/x"))]);
    assert_rewrites(
        "/",
        "/v2/",
        &[("/", Some("/v2/")), ("/x?y", Some("/v2/x?y"))],
    );
}

#[test]
fn rewrite_mixes_trailing_slashes_without_joining_segments() {
    assert_rewrites("/api/", "/v2", &[("/api/users", Some("/v2/users"))]);
    let cases = [("/api/users", Some("/v2/users")), ("/api", Some("/v2"))];
    assert_rewrites("/api", "/v2/", &cases);
    assert_rewrites("/api", "/v2", &[("/api/", Some("/v2/"))]);
}

#[test]
fn rewrite_is_none_without_rewrite_or_for_foreign_paths() {
    let t = table(&[("plain", "path_prefix: /api")]);
    assert_eq!(t.routes()[0].rewrite("/api/x", Some("q")), None);
    assert_rewrites("/api", "/v2", &[("/apix", None), ("/other", None)]);
}

// ---- compiled settings ----

#[test]
fn header_edits_remove_then_set_then_add() {
    let t = build(
        "  - name: h
    upstream: a
    request_headers:
      remove: [x-gone, x-set]
      set: { x-set: new, x-replace: only }
      add: { x-set: extra, x-keep: more }
",
    );
    let edits = &t.routes()[0].request_headers;
    assert!(!edits.is_empty());
    assert!(t.routes()[0].response_headers.is_empty());
    let mut map = headers(&[
        ("x-gone", "1"),
        ("x-set", "old"),
        ("x-replace", "a"),
        ("x-replace", "b"),
        ("x-keep", "k"),
    ]);
    edits.apply(&mut map);
    let all = |n: &str| -> Vec<String> {
        map.get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert!(all("x-gone").is_empty());
    // Removed, then set, then appended: so set and add both survive, in order.
    assert_eq!(all("x-set"), ["new", "extra"]);
    assert_eq!(all("x-replace"), ["only"]);
    assert_eq!(all("x-keep"), ["k", "more"]);
}

#[test]
fn direct_reply_has_status_body_and_headers() {
    let t = build(
        "  - name: teapot
    direct_response:
      status: 418
      body: short and stout
      headers: { Content-Type: text/plain, x-why: tea }
",
    );
    let route = &t.routes()[0];
    let RouteAction::Direct(reply) = &route.action else {
        panic!("expected a direct reply, got {:?}", route.action);
    };
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(&reply.body[..], b"short and stout");
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert_eq!(reply.headers["x-why"], "tea");
}

#[test]
fn forward_action_points_at_the_upstream_position() {
    let t = build("  - { name: r, upstream: b }\n");
    match &t.routes()[0].action {
        RouteAction::Forward {
            upstream,
            upstream_index,
        } => {
            assert_eq!(&**upstream, "b");
            assert_eq!(*upstream_index, 1);
        }
        other => panic!("expected forward, got {other:?}"),
    }
}

#[test]
fn timeouts_are_compiled_and_zero_request_timeout_disables_it() {
    let t = build(
        "  - { name: slow, upstream: a, timeouts: { connect: 250ms, request: 0s } }
  - { name: default, upstream: a, match: { path: /d } }
",
    );
    let slow = t
        .routes()
        .iter()
        .find(|r| &*r.name == "slow")
        .expect("slow");
    assert_eq!(slow.connect_timeout, Duration::from_millis(250));
    assert_eq!(slow.request_timeout, None);
    let default = t
        .routes()
        .iter()
        .find(|r| &*r.name == "default")
        .expect("default");
    assert_eq!(default.connect_timeout, Duration::from_secs(5));
    assert_eq!(default.request_timeout, Some(Duration::from_secs(60)));
}

#[test]
fn describe_reports_name_match_action_rewrite_and_timeouts() {
    let t = build(
        "  - name: users
    match: { host: \"*.example.com\", path_prefix: /api, methods: [GET], headers: { X-A: \"1\" }, query: { v: \"2\" } }
    upstream: b
    rewrite: { path_prefix: /v2 }
  - { name: gone, match: { path_regex: \"/old/.*\" }, direct_response: { status: 410 } }
",
    );
    let users = t.routes()[0].describe();
    assert_eq!(users["name"], "users");
    assert_eq!(users["order"], 0);
    assert_eq!(users["match"]["host"], "*.example.com");
    assert_eq!(users["match"]["path_prefix"], "/api");
    assert_eq!(users["match"]["methods"][0], "GET");
    assert_eq!(users["match"]["headers"]["x-a"], "1");
    assert_eq!(users["match"]["query"]["v"], "2");
    assert_eq!(users["action"]["upstream"], "b");
    assert_eq!(users["rewrite"]["path_prefix"], "/v2");
    assert_eq!(users["timeouts"]["connect"], "5s");
    assert_eq!(users["timeouts"]["request"], "1m");
    let gone = t.routes()[1].describe();
    assert_eq!(gone["name"], "gone");
    assert_eq!(gone["match"]["path_regex"], "/old/.*");
    assert_eq!(gone["action"]["direct_response"]["status"], 410);
    assert!(gone["rewrite"].is_null());
}

// ---- build errors ----

/// A valid single-route config, for tests to break after validation.
fn one_route() -> Config {
    config("  - { name: r, match: { path_prefix: /p }, upstream: a }\n")
}

fn build_error(mutate: impl FnOnce(&mut weir_config::Route)) -> RouterError {
    let mut config = one_route();
    mutate(&mut config.routes[0]);
    RouteTable::build(&config).expect_err("build should fail")
}

#[test]
fn build_errors_are_returned_not_panicked() {
    let err = build_error(|r| r.upstream = Some("missing".into()));
    assert!(matches!(err, RouterError::UnknownUpstream { .. }), "{err}");
    assert!(err.to_string().contains("\"r\""), "{err}");

    let err = build_error(|r| {
        r.matches.path_prefix = None;
        r.matches.path_regex = Some("(".into());
    });
    assert!(matches!(err, RouterError::InvalidRegex { .. }), "{err}");

    // Valid only once wrapped; must not slip through unanchored.
    let err = build_error(|r| {
        r.matches.path_prefix = None;
        r.matches.path_regex = Some("a)|(b".into());
    });
    assert!(matches!(err, RouterError::InvalidRegex { .. }), "{err}");

    let err = build_error(|r| {
        r.matches.headers.insert("bad name".into(), "v".into());
    });
    assert!(
        matches!(err, RouterError::InvalidHeaderName { .. }),
        "{err}"
    );

    let err = build_error(|r| {
        r.request_headers
            .set
            .insert("x-ok".into(), "line\nbreak".into());
    });
    assert!(
        matches!(err, RouterError::InvalidHeaderValue { .. }),
        "{err}"
    );

    let err = build_error(|r| r.matches.methods = Some(vec!["GE T".into()]));
    assert!(matches!(err, RouterError::InvalidMethod { .. }), "{err}");

    let err = build_error(|r| r.matches.methods = Some(Vec::new()));
    assert!(matches!(err, RouterError::EmptyMethods { .. }), "{err}");

    let err = build_error(|r| r.matches.host = Some("a.*.com".into()));
    assert!(matches!(err, RouterError::InvalidHost { .. }), "{err}");

    let err = build_error(|r| r.matches.path = Some("/x".into()));
    assert!(matches!(err, RouterError::ConflictingPaths { .. }), "{err}");

    let err = build_error(|r| {
        r.matches.path_prefix = None;
        r.rewrite = Some(weir_config::Rewrite {
            path_prefix: "/v2".into(),
        });
    });
    assert!(
        matches!(err, RouterError::RewriteWithoutPrefix { .. }),
        "{err}"
    );

    let err = build_error(|r| r.upstream = None);
    assert!(matches!(err, RouterError::InvalidAction { .. }), "{err}");

    let err = build_error(|r| {
        r.upstream = None;
        r.direct_response = Some(weir_config::DirectResponse {
            status: 103,
            body: String::new(),
            headers: Default::default(),
        });
    });
    assert!(
        matches!(err, RouterError::InvalidStatus { status: 103, .. }),
        "{err}"
    );
}

#[test]
fn regex_with_trailing_extended_comment_is_still_anchored() {
    let mut config = one_route();
    let m = &mut config.routes[0].matches;
    m.path_prefix = None;
    m.path_regex = Some("(?x) /a/ [0-9]+ # digits".into());
    let t = RouteTable::build(&config).expect("builds");
    assert_eq!(get(&t, None, "/a/12"), "r");
    assert_eq!(get(&t, None, "/a/12/x"), NONE);
}
