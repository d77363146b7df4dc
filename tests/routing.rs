//! Route selection through real sockets. Every route answers with its own
//! name, and routes are listed in the file in the *opposite* of their
//! precedence, so that file order alone can never explain a result.

mod support;

use http::Method;
use support::*;

/// A route named `name` with `match` conditions `m` answering its name.
fn route(name: &str, m: &str) -> String {
    format!(
        "  - name: {name}\n    match: {m}\n    direct_response: {{ status: 200, body: {name} }}\n"
    )
}

async fn gateway(routes: &[String]) -> TestGateway {
    TestGateway::with(&format!("routes:\n{}", routes.concat()), &[]).await
}

/// The name of the route that answers.
async fn hit(
    gw: &TestGateway,
    method: Method,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut b = req(method, target).header("host", host);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = send(gw.addr(), b.body(empty()).unwrap()).await;
    assert_eq!(resp.status, 200, "{target} on {host}: {}", resp.text());
    resp.text()
}

async fn get_on(gw: &TestGateway, host: &str, target: &str) -> String {
    hit(gw, Method::GET, host, target, &[]).await
}

#[tokio::test]
async fn exact_host_beats_wildcard_beats_any_host() {
    let gw = gateway(&[
        route("any", "{}"),
        route("wild", "{ host: \"*.example.com\" }"),
        route("exact", "{ host: api.example.com }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "api.example.com", "/").await, "exact");
    // Port and case do not matter.
    assert_eq!(get_on(&gw, "API.Example.com:8443", "/").await, "exact");
    assert_eq!(get_on(&gw, "web.example.com", "/").await, "wild");
    assert_eq!(get_on(&gw, "a.b.example.com", "/").await, "wild");
    // The wildcard needs at least one label.
    assert_eq!(get_on(&gw, "example.com", "/").await, "any");
    assert_eq!(get_on(&gw, "other.org", "/").await, "any");
}

#[tokio::test]
async fn longer_wildcard_host_wins() {
    let gw = gateway(&[
        route("short", "{ host: \"*.example.com\" }"),
        route("long", "{ host: \"*.api.example.com\" }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "v1.api.example.com", "/").await, "long");
    assert_eq!(get_on(&gw, "www.example.com", "/").await, "short");
}

#[tokio::test]
async fn host_is_compared_before_path() {
    let gw = gateway(&[
        route("any_host_exact_path", "{ path: /p }"),
        route("exact_host_any_path", "{ host: h.example }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h.example", "/p").await, "exact_host_any_path");
    assert_eq!(
        get_on(&gw, "other.example", "/p").await,
        "any_host_exact_path"
    );
}

#[tokio::test]
async fn exact_path_beats_prefix() {
    let gw = gateway(&[
        route("prefix", "{ path_prefix: /a/b/c }"),
        route("exact", "{ path: /a/b/c }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h", "/a/b/c").await, "exact");
    assert_eq!(get_on(&gw, "h", "/a/b/c/d").await, "prefix");
}

#[tokio::test]
async fn longer_prefix_beats_shorter_prefix() {
    let gw = gateway(&[
        route("short", "{ path_prefix: /a }"),
        route("long", "{ path_prefix: /a/b }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h", "/a/b/x").await, "long");
    assert_eq!(get_on(&gw, "h", "/a/b").await, "long");
    assert_eq!(get_on(&gw, "h", "/a/x").await, "short");
    // Segment boundary: /a/bc is not under /a/b.
    assert_eq!(get_on(&gw, "h", "/a/bc").await, "short");
}

#[tokio::test]
async fn prefix_beats_regex_beats_no_path() {
    let gw = gateway(&[
        route("none", "{}"),
        route("regex", "{ path_regex: \"/items/[0-9]+\" }"),
        route("prefix", "{ path_prefix: /items/1 }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h", "/items/1").await, "prefix");
    assert_eq!(get_on(&gw, "h", "/items/22").await, "regex");
    // The regex must match the whole path.
    assert_eq!(get_on(&gw, "h", "/items/22/x").await, "none");
}

#[tokio::test]
async fn route_with_methods_beats_route_without() {
    let gw = gateway(&[
        route("any_method", "{ path: /m }"),
        route("post_put", "{ path: /m, methods: [POST, PUT] }"),
    ])
    .await;
    assert_eq!(hit(&gw, Method::POST, "h", "/m", &[]).await, "post_put");
    assert_eq!(hit(&gw, Method::PUT, "h", "/m", &[]).await, "post_put");
    assert_eq!(hit(&gw, Method::GET, "h", "/m", &[]).await, "any_method");
}

#[tokio::test]
async fn more_header_conditions_win() {
    let gw = gateway(&[
        route("none", "{ path: /h }"),
        route("one", "{ path: /h, headers: { x-a: \"1\" } }"),
        route("two", "{ path: /h, headers: { x-a: \"1\", x-b: \"2\" } }"),
    ])
    .await;
    let both = [("x-a", "1"), ("x-b", "2")];
    assert_eq!(hit(&gw, Method::GET, "h", "/h", &both).await, "two");
    assert_eq!(
        hit(&gw, Method::GET, "h", "/h", &[("x-a", "1")]).await,
        "one"
    );
    assert_eq!(
        hit(&gw, Method::GET, "h", "/h", &[("x-a", "9")]).await,
        "none"
    );
}

#[tokio::test]
async fn more_query_conditions_win() {
    let gw = gateway(&[
        route("none", "{ path: /q }"),
        route("one", "{ path: /q, query: { a: \"1\" } }"),
        route("two", "{ path: /q, query: { a: \"1\", b: \"x y\" } }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h", "/q?b=x+y&a=1").await, "two");
    assert_eq!(get_on(&gw, "h", "/q?a=1&b=%78%20y").await, "two");
    assert_eq!(get_on(&gw, "h", "/q?a=1").await, "one");
    assert_eq!(get_on(&gw, "h", "/q?a=2&b=x+y").await, "none");
}

#[tokio::test]
async fn file_order_breaks_ties() {
    let gw = gateway(&[
        route("first", "{ path_prefix: /t }"),
        route("second", "{ path_prefix: /t }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h", "/t").await, "first");
    let gw = gateway(&[
        route("second", "{ path_prefix: /t }"),
        route("first", "{ path_prefix: /t }"),
    ])
    .await;
    assert_eq!(get_on(&gw, "h", "/t").await, "second");
}

#[tokio::test]
async fn rewrite_replaces_path_prefix() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(
        "routes:
  - name: api
    match: { path_prefix: /api/ }
    upstream: up
    rewrite: { path_prefix: /v2/ }
  - name: strip
    match: { path_prefix: /strip }
    upstream: up
    rewrite: { path_prefix: / }
upstreams:
  - name: up
    targets: [{ address: \"{up}\" }]
",
        &[("up", &up.addr())],
    )
    .await;
    let e = get(gw.addr(), "/api/users/7?x=1&y=2").await.echoed();
    assert_eq!(e.uri, "/v2/users/7?x=1&y=2");
    let e = get(gw.addr(), "/api/").await.echoed();
    assert_eq!(e.uri, "/v2/");
    let e = get(gw.addr(), "/strip/x").await.echoed();
    assert_eq!(e.uri, "/x");
    let e = get(gw.addr(), "/strip").await.echoed();
    assert_eq!(e.uri, "/");
}

#[tokio::test]
async fn direct_response_sends_status_body_and_headers() {
    let gw = TestGateway::with(
        "routes:
  - name: teapot
    match: { path: /tea }
    direct_response:
      status: 418
      body: \"short and stout\\n\"
      headers: { content-type: text/plain, x-pot: brewing }
",
        &[],
    )
    .await;
    let resp = get(gw.addr(), "/tea").await;
    assert_eq!(resp.status, 418);
    assert_eq!(resp.text(), "short and stout\n");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("x-pot"), Some("brewing"));
    assert_eq!(resp.header("content-length"), Some("16"));
    assert_eq!(resp.header("x-request-id").map(str::len), Some(32));
}
