use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use weir_config::Config;

use super::matcher::normalize_host;
use super::*;

// Compiled per-route settings (rewrite, header edits, replies, timeouts,
// describe) and build errors; this file keeps matching and precedence.
mod settings;

const PREAMBLE: &str = "\
listeners: [{ name: web, address: \"127.0.0.1:8080\" }]
upstreams:
  - { name: a, targets: [{ address: \"127.0.0.1:9001\" }] }
  - { name: b, targets: [{ address: \"127.0.0.1:9002\" }] }
routes:
";

/// Parses a config whose `routes:` list is `routes` (YAML list items).
fn config(routes: &str) -> Config {
    Config::from_yaml(&format!("{PREAMBLE}{routes}")).expect("test config is valid")
}

fn build(routes: &str) -> RouteTable {
    RouteTable::build(&config(routes)).expect("routes compile")
}

/// A table of forwarding routes, each given as (name, flow-mapping body of `match`).
fn table(routes: &[(&str, &str)]) -> RouteTable {
    let yaml: String = routes
        .iter()
        .map(|(name, m)| format!("  - {{ name: {name}, match: {{ {m} }}, upstream: a }}\n"))
        .collect();
    build(&yaml)
}

fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// What [`pick`] and [`get`] return when no route matches.
const NONE: &str = "(no route)";

/// Name of the route chosen for a request; `target` may carry `?query`.
fn pick(
    table: &RouteTable,
    method: Method,
    host: Option<&str>,
    target: &str,
    headers: &HeaderMap,
) -> String {
    let (path, query) = split_target(target);
    let route = table.route(&method, host, path, query, headers, None);
    route.map_or_else(|| NONE.to_owned(), |route| route.name.to_string())
}

fn get(table: &RouteTable, host: Option<&str>, target: &str) -> String {
    pick(table, Method::GET, host, target, &HeaderMap::new())
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

// ---- precedence ----

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let t = table(&[
        ("any", "path_prefix: /"),
        ("wild", "host: \"*.example.com\""),
        ("exact", "host: api.example.com"),
    ]);
    assert_eq!(get(&t, Some("api.example.com"), "/"), "exact");
    assert_eq!(get(&t, Some("www.example.com"), "/"), "wild");
    assert_eq!(get(&t, Some("other.org"), "/"), "any");
}

#[test]
fn longer_wildcard_suffix_beats_shorter() {
    let t = table(&[
        ("short", "host: \"*.example.com\""),
        ("long", "host: \"*.eu.example.com\""),
    ]);
    assert_eq!(get(&t, Some("a.eu.example.com"), "/"), "long");
    assert_eq!(get(&t, Some("a.us.example.com"), "/"), "short");
}

#[test]
fn host_rank_outranks_path_rank() {
    let t = table(&[
        ("exact-path", "path: /login"),
        ("host-only", "host: api.example.com"),
    ]);
    assert_eq!(get(&t, Some("api.example.com"), "/login"), "host-only");
}

#[test]
fn exact_path_beats_prefix() {
    let t = table(&[
        ("prefix", "path_prefix: /api/users"),
        ("exact", "path: /api/users"),
    ]);
    assert_eq!(get(&t, None, "/api/users"), "exact");
    assert_eq!(get(&t, None, "/api/users/7"), "prefix");
}

#[test]
fn longer_prefix_beats_shorter_prefix() {
    let t = table(&[
        ("short", "path_prefix: /api"),
        ("long", "path_prefix: /api/admin"),
    ]);
    assert_eq!(get(&t, None, "/api/admin/x"), "long");
    assert_eq!(get(&t, None, "/api/users"), "short");
}

#[test]
fn prefix_beats_regex_beats_no_path() {
    let t = table(&[
        ("none", "methods: [GET]"),
        ("regex", "path_regex: \"/api/.*\""),
        ("prefix", "path_prefix: /api/v1"),
    ]);
    assert_eq!(get(&t, None, "/api/v1/x"), "prefix");
    assert_eq!(get(&t, None, "/api/v2/x"), "regex");
    assert_eq!(get(&t, None, "/other"), "none");
}

#[test]
fn method_condition_beats_none() {
    let t = table(&[("any", "path: /x"), ("post", "path: /x, methods: [POST]")]);
    let none = HeaderMap::new();
    assert_eq!(pick(&t, Method::POST, None, "/x", &none), "post");
    assert_eq!(pick(&t, Method::GET, None, "/x", &none), "any");
}

#[test]
fn two_headers_beat_one() {
    let t = table(&[
        ("one", "headers: { x-a: \"1\" }"),
        ("two", "headers: { x-a: \"1\", x-b: \"2\" }"),
    ]);
    let both = headers(&[("x-a", "1"), ("x-b", "2")]);
    assert_eq!(pick(&t, Method::GET, None, "/", &both), "two");
    let only_a = headers(&[("x-a", "1")]);
    assert_eq!(pick(&t, Method::GET, None, "/", &only_a), "one");
}

#[test]
fn two_query_params_beat_one() {
    let t = table(&[
        ("one", "query: { a: \"1\" }"),
        ("two", "query: { a: \"1\", b: \"2\" }"),
    ]);
    assert_eq!(get(&t, None, "/?a=1&b=2"), "two");
    assert_eq!(get(&t, None, "/?a=1"), "one");
}

#[test]
fn file_order_breaks_ties() {
    let t = table(&[
        ("zeta", "methods: [GET]"),
        ("alpha", "methods: [GET]"),
        ("mid", "methods: [POST]"),
    ]);
    assert_eq!(get(&t, None, "/"), "zeta");
    let names: Vec<&str> = t.routes().iter().map(|r| r.name.as_ref()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
}

#[test]
fn specific_host_with_non_matching_path_falls_through() {
    let t = table(&[
        ("fallback", "path_prefix: /"),
        ("api", "host: api.example.com, path_prefix: /v1"),
    ]);
    assert_eq!(get(&t, Some("api.example.com"), "/v1/x"), "api");
    assert_eq!(get(&t, Some("api.example.com"), "/v2/x"), "fallback");
}

#[test]
fn routes_are_listed_in_precedence_order() {
    let t = table(&[
        ("any", ""),
        ("prefix", "path_prefix: /a"),
        ("exact-host", "host: a.example.com"),
    ]);
    let names: Vec<&str> = t.routes().iter().map(|r| r.name.as_ref()).collect();
    assert_eq!(names, ["exact-host", "prefix", "any"]);
}

// ---- host ----

#[test]
fn wildcard_does_not_match_bare_domain() {
    let t = table(&[("wild", "host: \"*.example.com\"")]);
    assert_eq!(get(&t, Some("example.com"), "/"), NONE);
    assert_eq!(get(&t, Some("badexample.com"), "/"), NONE);
    assert_eq!(get(&t, Some("a.example.com"), "/"), "wild");
    assert_eq!(get(&t, Some("a.b.example.com"), "/"), "wild");
}

#[test]
fn host_comparison_ignores_case() {
    let t = table(&[
        ("exact", "host: Api.Example.com"),
        ("wild", "host: \"*.EXAMPLE.org\""),
    ]);
    assert_eq!(get(&t, Some("API.example.COM"), "/"), "exact");
    assert_eq!(get(&t, Some("Www.Example.Org"), "/"), "wild");
}

#[test]
fn host_port_is_ignored() {
    let t = table(&[("api", "host: api.example.com"), ("ip", "host: 127.0.0.1")]);
    assert_eq!(get(&t, Some("api.example.com:8443"), "/"), "api");
    assert_eq!(get(&t, Some("127.0.0.1:8080"), "/"), "ip");
    assert_eq!(get(&t, Some("api.example.com."), "/"), "api");
}

#[test]
fn normalize_host_strips_port_including_ipv6() {
    assert_eq!(normalize_host("example.com:80"), "example.com");
    assert_eq!(normalize_host("example.com"), "example.com");
    assert_eq!(normalize_host("[::1]:80"), "::1");
    assert_eq!(normalize_host("[::1]"), "::1");
    assert_eq!(normalize_host("::1"), "::1");
    assert_eq!(normalize_host("user@example.com:80"), "example.com");
    assert_eq!(normalize_host("[::1"), "::1");
    assert_eq!(normalize_host(""), "");
    assert_eq!(normalize_host("u:p@example.com:80"), "example.com");
    assert_eq!(normalize_host("example.com.:8080"), "example.com");
    assert_eq!(normalize_host("fe80::1"), "fe80::1");
    assert_eq!(normalize_host("u@[::1]:443"), "::1");
}

#[test]
fn hostless_route_matches_missing_host_but_host_route_does_not() {
    let t = table(&[("api", "host: api.example.com")]);
    assert_eq!(get(&t, None, "/"), NONE);
    let any = table(&[("any", "")]);
    assert_eq!(get(&any, None, "/"), "any");
}

// ---- path ----

#[test]
fn prefix_without_slash_matches_whole_segments_only() {
    let t = table(&[("api", "path_prefix: /api")]);
    assert_eq!(get(&t, None, "/api"), "api");
    assert_eq!(get(&t, None, "/api/"), "api");
    assert_eq!(get(&t, None, "/api/x"), "api");
    assert_eq!(get(&t, None, "/apix"), NONE);
}

#[test]
fn prefix_with_trailing_slash_needs_the_slash() {
    let t = table(&[("api", "path_prefix: /api/")]);
    assert_eq!(get(&t, None, "/api/x"), "api");
    assert_eq!(get(&t, None, "/api"), NONE);
}

#[test]
fn root_prefix_matches_everything() {
    let t = table(&[("root", "path_prefix: /")]);
    for path in ["/", "/a", "/a/b", "*"] {
        assert_eq!(get(&t, None, path), "root", "{path}");
    }
}

#[test]
fn regex_must_match_the_whole_path() {
    let t = table(&[("re", "path_regex: \"/users/[0-9]+\"")]);
    assert_eq!(get(&t, None, "/users/42"), "re");
    assert_eq!(get(&t, None, "/users/42/edit"), NONE);
    assert_eq!(get(&t, None, "/v1/users/42"), NONE);
    let alt = table(&[("alt", "path_regex: \"/a|/b\"")]);
    assert_eq!(get(&alt, None, "/a/x"), NONE);
    assert_eq!(get(&alt, None, "/x/b"), NONE);
}

#[test]
fn exact_path_is_exact() {
    let t = table(&[("x", "path: /x")]);
    assert_eq!(get(&t, None, "/x/"), NONE);
    assert_eq!(get(&t, None, "/x?q=1"), "x");
}

// ---- methods, headers, query ----

#[test]
fn method_list_is_respected() {
    let t = table(&[("rw", "methods: [PUT, DELETE]")]);
    let none = HeaderMap::new();
    assert_eq!(pick(&t, Method::DELETE, None, "/", &none), "rw");
    assert_eq!(pick(&t, Method::GET, None, "/", &none), NONE);
}

#[test]
fn header_condition_accepts_any_repeated_value_and_any_name_case() {
    let t = table(&[("h", "headers: { X-Env: canary }")]);
    let repeated = headers(&[("x-env", "prod"), ("x-env", "canary")]);
    assert_eq!(pick(&t, Method::GET, None, "/", &repeated), "h");
    let wrong_case_value = headers(&[("x-env", "Canary")]);
    assert_eq!(pick(&t, Method::GET, None, "/", &wrong_case_value), NONE);
    assert_eq!(pick(&t, Method::GET, None, "/", &HeaderMap::new()), NONE);
}

#[test]
fn query_keys_and_values_are_percent_decoded() {
    let t = table(&[("q", "query: { \"full name\": \"a b/c\" }")]);
    assert_eq!(get(&t, None, "/?full+name=a%20b%2Fc"), "q");
    assert_eq!(get(&t, None, "/?full%20name=a+b%2fc"), "q");
    assert_eq!(get(&t, None, "/?full+name=a+b"), NONE);
    assert_eq!(get(&t, None, "/"), NONE);
}

#[test]
fn query_repeated_key_matches_any_value() {
    let t = table(&[("q", "query: { tag: b }")]);
    assert_eq!(get(&t, None, "/?tag=a&tag=b"), "q");
    assert_eq!(get(&t, None, "/?tag=a&tag=c"), NONE);
}

#[test]
fn query_edge_cases_do_not_panic() {
    let t = table(&[("q", "query: { flag: \"\", pct: \"%zz\" }")]);
    assert_eq!(get(&t, None, "/?&&flag&pct=%zz&x=%"), "q");
    assert_eq!(get(&t, None, "/?flag=&pct=%25zz"), "q");
    assert_eq!(get(&t, None, "/?flag=1&pct=%zz"), NONE);
    // Decodes to a lone 0xff byte, which is not UTF-8.
    assert_eq!(get(&t, None, "/?flag&pct=%ff"), NONE);
}
