//! Behaviour of `Config::from_yaml`: the documented example parses, and every
//! validation rule reports the right YAML path, line and reason.

mod common;

use common::*;
use weir_config::LoadBalancing;

#[test]
fn full_example_parses() {
    let config = valid(FULL_EXAMPLE);
    assert_eq!(config.runtime.threads, Some(2));
    assert_eq!(config.listeners[0].address, "0.0.0.0:8080");
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].matches.headers["x-env"], "canary");
    assert_eq!(
        config.routes[1].direct_response.as_ref().map(|d| d.status),
        Some(200)
    );
    let api = config.upstream("api").expect("upstream api");
    assert_eq!(api.load_balancing, LoadBalancing::ConsistentHash);
    assert_eq!(
        weir_config::parse_target_address(&api.targets[0].address),
        Ok(("127.0.0.1".into(), 9000))
    );
}

// ---- listeners, admin, runtime, access log ----

#[test]
fn listeners_are_required() {
    expect(
        "listeners: []\n",
        &[("listeners", 1, "at least one listener")],
    );
}

#[test]
fn listener_names_are_non_empty_and_unique() {
    expect(
        r#"listeners:
  - name: web
    address: 127.0.0.1:8080
  - name: ""
    address: 127.0.0.1:8081
  - name: web
    address: 127.0.0.1:8082
"#,
        &[
            ("listeners[1].name", 4, "must not be empty"),
            ("listeners[2].name", 6, "duplicate listener name \"web\""),
        ],
    );
}

#[test]
fn listener_addresses_are_socket_addresses_and_distinct() {
    expect(
        r#"listeners:
  - name: a
    address: localhost:8080
  - name: b
    address: "[::1]:8080"
  - name: c
    address: "[0:0::1]:8080"
  - name: d
    address: 127.0.0.1
"#,
        &[
            ("listeners[0].address", 3, "expected ip:port"),
            ("listeners[2].address", 7, "already used by listeners[1]"),
            ("listeners[3].address", 9, "expected ip:port"),
        ],
    );
}

#[test]
fn listener_protocols_are_non_empty_and_distinct() {
    expect(
        r#"listeners:
  - name: a
    address: 127.0.0.1:8080
    protocols: []
  - name: b
    address: 127.0.0.1:8081
    protocols:
      - h2c
      - http1
      - h2c
"#,
        &[
            ("listeners[0].protocols", 4, "at least one protocol"),
            ("listeners[1].protocols[2]", 10, "duplicate protocol h2c"),
        ],
    );
}

#[test]
fn admin_address_is_valid_and_not_a_listener_address() {
    expect(
        &with_listener("admin:\n  address: 127.0.0.1:8080\n"),
        &[("admin.address", 3, "already used by listeners[0]")],
    );
    expect(
        &with_listener("admin: { address: \"9901\" }\n"),
        &[("admin.address", 2, "expected ip:port")],
    );
}

#[test]
fn runtime_threads_are_bounded() {
    expect(
        &with_listener("runtime:\n  threads: 0\n"),
        &[("runtime.threads", 3, "between 1 and 1024")],
    );
    expect(
        &with_listener("runtime: { threads: 1025 }\n"),
        &[("runtime.threads", 2, "between 1 and 1024")],
    );
    valid(&with_listener(
        "runtime: { threads: 1024, shutdown_grace: 0 }\n",
    ));
}

#[test]
fn access_log_path_is_not_empty() {
    expect(
        &with_listener("access_log:\n  enabled: true\n  path: \"\"\n"),
        &[("access_log.path", 4, "must not be empty")],
    );
    valid(&with_listener(
        "access_log: { enabled: true, path: /var/log/weir.log }\n",
    ));
}

// ---- routes ----

#[test]
fn route_names_are_non_empty_and_unique() {
    expect(
        &with_listener(
            r#"routes:
  - name: ""
    direct_response: { status: 200 }
  - name: a
    direct_response: { status: 200 }
  - name: a
    direct_response: { status: 200 }
"#,
        ),
        &[
            ("routes[0].name", 3, "must not be empty"),
            (
                "routes[2].name",
                7,
                "duplicate route name \"a\" (already used by routes[1])",
            ),
        ],
    );
}

#[test]
fn route_needs_exactly_one_action() {
    expect(
        &with_listener(
            r#"upstreams: [{ name: api, targets: [{ address: 127.0.0.1:9000 }] }]
routes:
  - name: nothing
  - name: both
    upstream: api
    direct_response: { status: 200 }
"#,
        ),
        &[
            (
                "routes[0]",
                4,
                "needs `upstream`, `upstreams` or `direct_response`",
            ),
            ("routes[1].direct_response", 7, "mutually exclusive"),
        ],
    );
}

#[test]
fn route_upstream_must_exist() {
    let yaml = with_listener(
        r#"upstreams: [{ name: api, targets: [{ address: 127.0.0.1:9000 }] }]
routes:
  - name: a
    upstream: apii
  - name: b
    upstream: payments
"#,
    );
    expect(
        &yaml,
        &[
            ("routes[0].upstream", 5, "did you mean \"api\"?"),
            ("routes[1].upstream", 7, "no upstream named \"payments\""),
        ],
    );
    let errs = errors(&yaml);
    assert_eq!(
        errs[0].message,
        "no upstream named \"apii\" (did you mean \"api\"?)"
    );
    assert!(!errs[1].message.contains("did you mean"));
}

#[test]
fn unused_upstreams_are_fine() {
    valid(&with_listener(
        "upstreams: [{ name: idle, targets: [{ address: 10.0.0.1:80 }] }]\n",
    ));
}

#[test]
fn path_matchers_are_exclusive_and_well_formed() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    match:
      path: /a
      path_prefix: /b
      path_regex: /c
    direct_response: { status: 200 }
  - name: b
    match: { path: nope }
    direct_response: { status: 200 }
  - name: c
    match: { path_prefix: api/ }
    direct_response: { status: 200 }
"#,
        ),
        &[
            (
                "routes[0].match.path_prefix",
                6,
                "conflicts with `match.path`",
            ),
            (
                "routes[0].match.path_regex",
                7,
                "conflicts with `match.path`",
            ),
            ("routes[1].match.path", 10, "must start with `/`"),
            ("routes[2].match.path_prefix", 13, "must start with `/`"),
        ],
    );
}

#[test]
fn path_regex_must_compile() {
    let yaml = with_listener("routes:\n  - name: a\n    match:\n      path_regex: \"/users/(\\\\d+\"\n    direct_response: { status: 200 }\n");
    expect(
        &yaml,
        &[(
            "routes[0].match.path_regex",
            5,
            "invalid regex: unclosed group",
        )],
    );
    valid(&with_listener("routes: [{ name: a, match: { path_regex: '^/users/\\d+$' }, direct_response: { status: 200 } }]\n"));
}

#[test]
fn hosts_are_names_or_leading_wildcards() {
    expect(
        &with_listener(
            r#"routes:
  - { name: a, match: { host: "*.example.com" }, direct_response: { status: 200 } }
  - { name: b, match: { host: "api.*.com" }, direct_response: { status: 200 } }
  - { name: c, match: { host: "api.example.com:8080" }, direct_response: { status: 200 } }
  - { name: d, match: { host: "api_v2.example.com" }, direct_response: { status: 200 } }
  - { name: e, match: { host: "api..com" }, direct_response: { status: 200 } }
  - { name: f, match: { host: "*" }, direct_response: { status: 200 } }
"#,
        ),
        &[
            (
                "routes[1].match.host",
                4,
                "wildcard is only allowed as a leading `*.`",
            ),
            ("routes[2].match.host", 5, "must not include a port"),
            ("routes[3].match.host", 6, "invalid character '_'"),
            ("routes[4].match.host", 7, "empty label"),
            ("routes[5].match.host", 8, "wildcard is only allowed"),
        ],
    );
}

#[test]
fn methods_are_distinct_tokens() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    match: { methods: [] }
    direct_response: { status: 200 }
  - name: b
    match:
      methods:
        - GET
        - "BAD METHOD"
        - GET
        - post
        - PURGE
    direct_response: { status: 200 }
"#,
        ),
        &[
            ("routes[0].match.methods", 4, "must not be empty"),
            (
                "routes[1].match.methods[1]",
                10,
                "invalid method \"BAD METHOD\"",
            ),
            ("routes[1].match.methods[2]", 11, "duplicate method \"GET\""),
            ("routes[1].match.methods[3]", 12, "did you mean POST?"),
        ],
    );
}

#[test]
fn match_headers_and_query_are_well_formed() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    match:
      headers:
        "x bad": v
        x-ok: "line\nbreak"
        x-fine: "tab\tand spaces"
      query: { "": x, ok: "" }
    direct_response: { status: 200 }
"#,
        ),
        &[
            (
                "routes[0].match.headers.x bad",
                6,
                "invalid header name \"x bad\"",
            ),
            (
                "routes[0].match.headers.x-ok",
                7,
                "cannot contain line breaks",
            ),
            ("routes[0].match.query", 9, "names must not be empty"),
        ],
    );
}

#[test]
fn header_ops_are_well_formed() {
    expect(
        &with_listener(
            r#"upstreams: [{ name: api, targets: [{ address: 127.0.0.1:9000 }] }]
routes:
  - name: a
    upstream: api
    request_headers:
      set:
        x-foo: "caf\u00e9"
        "x:y": v
      add:
        x-trace: "1"
      remove: [x-internal, "bad name"]
    response_headers:
      set: { x-served-by: weir }
"#,
        ),
        &[
            ("routes[0].request_headers.set.x-foo", 8, "visible ASCII"),
            (
                "routes[0].request_headers.set.x:y",
                9,
                "invalid header name",
            ),
            (
                "routes[0].request_headers.remove[1]",
                12,
                "invalid header name \"bad name\"",
            ),
        ],
    );
}

#[test]
fn header_ops_cannot_touch_managed_headers() {
    expect(
        &with_listener(
            r#"upstreams: [{ name: api, targets: [{ address: 127.0.0.1:9000 }] }]
routes:
  - name: a
    upstream: api
    request_headers:
      set: { host: example.com, Connection: close }
      add: { te: trailers }
      remove: [connection]
    response_headers:
      add:
        content-length: "0"
        transfer-encoding: chunked
        upgrade: h2c
        keep-alive: "5"
        trailer: x
        proxy-connection: close
"#,
        ),
        &[
            // Same line: in the order written, not the model's sorted order.
            (
                "routes[0].request_headers.set.host",
                7,
                "cannot set `host`: weir sets it",
            ),
            (
                "routes[0].request_headers.set.Connection",
                7,
                "cannot set `Connection`: it is a hop-by-hop header",
            ),
            ("routes[0].request_headers.add.te", 8, "cannot add `te`"),
            (
                "routes[0].response_headers.add.content-length",
                12,
                "weir computes it from the body",
            ),
            (
                "routes[0].response_headers.add.transfer-encoding",
                13,
                "hop-by-hop",
            ),
            ("routes[0].response_headers.add.upgrade", 14, "hop-by-hop"),
            (
                "routes[0].response_headers.add.keep-alive",
                15,
                "hop-by-hop",
            ),
            ("routes[0].response_headers.add.trailer", 16, "hop-by-hop"),
            (
                "routes[0].response_headers.add.proxy-connection",
                17,
                "hop-by-hop",
            ),
        ],
    );
}

#[test]
fn direct_response_is_checked() {
    expect(
        &with_listener(
            r#"routes:
  - name: a
    direct_response:
      status: 101
  - name: b
    direct_response: { status: 600 }
  - name: c
    direct_response:
      status: 204
      headers:
        content-length: "10"
        "bad header": x
        x-ok: "new\nline"
"#,
        ),
        &[
            (
                "routes[0].direct_response.status",
                5,
                "1xx cannot be a final response",
            ),
            ("routes[1].direct_response.status", 7, "between 200 and 599"),
            (
                "routes[2].direct_response.headers.content-length",
                12,
                "cannot set `content-length`",
            ),
            (
                "routes[2].direct_response.headers.bad header",
                13,
                "invalid header name",
            ),
            ("routes[2].direct_response.headers.x-ok", 14, "line breaks"),
        ],
    );
}

#[test]
fn rewrite_needs_a_prefix_match_and_a_forward() {
    expect(
        &with_listener(
            r#"upstreams: [{ name: api, targets: [{ address: 127.0.0.1:9000 }] }]
routes:
  - name: a
    match: { path: /exact }
    upstream: api
    rewrite: { path_prefix: /v2/ }
  - name: b
    match: { path_prefix: /api/ }
    upstream: api
    rewrite:
      path_prefix: v2/
  - name: c
    match: { path_prefix: /x/ }
    direct_response: { status: 200 }
    rewrite: { path_prefix: /y/ }
"#,
        ),
        &[
            ("routes[0].rewrite", 7, "requires `match.path_prefix`"),
            ("routes[1].rewrite.path_prefix", 12, "must start with `/`"),
            (
                "routes[2].rewrite",
                16,
                "cannot be combined with `direct_response`",
            ),
        ],
    );
}

#[test]
fn connect_timeout_is_positive() {
    expect(
        &with_listener("routes:\n  - name: a\n    direct_response: { status: 200 }\n    timeouts:\n      connect: 0s\n      request: 0s\n"),
        &[("routes[0].timeouts.connect", 6, "greater than 0")],
    );
}
