//! Entry points for the fuzz targets in `fuzz/` and for their smoke runs in
//! the test suite (`tests/fuzz_smoke.rs`). They feed untrusted bytes to the
//! code weir runs on a request head before anything is forwarded: the
//! header scan, the Host and strictness checks, the deadline headers, the
//! `traceparent` parser and route matching; and to the configuration
//! parser and route compiler. Not a stable API: hidden from the docs.

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::observe::tracing::{Sampler, TraceContext};
use crate::policy::deadline;
use crate::router::RouteTable;

/// The route table requests are matched against: every kind of condition.
const ROUTES: &str = r#"
listeners:
  - name: main
    address: 127.0.0.1:0
routes:
  - name: exact-host
    match: { host: api.example.com, path_prefix: /v1/ }
    upstream: up
  - name: wildcard-host
    match: { host: "*.example.com" }
    upstream: up
  - name: headers
    match: { path_prefix: /users, headers: { x-env: canary } }
    upstream: up
  - name: methods
    match: { path_prefix: /users, methods: [POST, PUT] }
    upstream: up
  - name: query
    match: { path: /search, query: { version: "2" } }
    upstream: up
  - name: regex
    match: { path_regex: "/docs/(en|de)/.+" }
    upstream: up
  - name: grpc
    match: { grpc: { service: helloworld.Greeter } }
    upstream: up
  - name: rest
    match: { path_prefix: / }
    upstream: up
upstreams:
  - name: up
    targets:
      - address: 127.0.0.1:9
"#;

/// The request-head target's fixed state.
pub struct HeadTarget {
    table: RouteTable,
    sampler: Sampler,
}

impl HeadTarget {
    /// Compiles the route table used for matching.
    pub fn new() -> HeadTarget {
        let config = weir_config::Config::from_yaml(ROUTES).expect("the fuzzing route table");
        HeadTarget {
            table: RouteTable::build(&config).expect("the fuzzing route table compiles"),
            sampler: Sampler::new(1.0),
        }
    }

    /// Decodes `data` into a request head and runs weir's head code on it.
    /// The first byte picks the version; the rest is lines: `METHOD TARGET`
    /// then `name:value` (lines that are not a valid header are skipped, as
    /// hyper would have refused them). Returns whether weir would route it.
    pub fn run(&self, data: &[u8]) -> bool {
        let Some((&first, rest)) = data.split_first() else {
            return false;
        };
        let version = match first % 3 {
            0 => Version::HTTP_10,
            1 => Version::HTTP_11,
            _ => Version::HTTP_2,
        };
        let mut lines = rest.split(|b| *b == b'\n');
        let request_line = lines.next().unwrap_or_default();
        let mut words = request_line.splitn(2, |b| *b == b' ');
        let Ok(method) = Method::from_bytes(words.next().unwrap_or_default()) else {
            return false;
        };
        let Ok(request) = Request::builder()
            .method(method)
            .uri(words.next().unwrap_or_default())
            .version(version)
            .body(())
        else {
            return false;
        };
        let (mut parts, ()) = request.into_parts();
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(&line[colon + 1..]),
            ) else {
                continue;
            };
            parts.headers.append(name, value);
        }

        let mask = super::forward::scan(&parts.headers);
        let _ = super::forward::grpc_kind(mask);
        let _ = deadline::incoming(&parts.headers);
        let trace = TraceContext::from_request(&parts.headers, &self.sampler);
        let _ = trace.traceparent();
        let Ok(host) = super::request_host(&parts) else {
            return false;
        };
        if super::strict::check(&parts, mask).is_err() {
            return false;
        }
        let host = host.as_ref().and_then(|h| h.to_str().ok());
        self.table
            .route(
                &parts.method,
                host,
                parts.uri.path(),
                parts.uri.query(),
                &parts.headers,
                None,
            )
            .is_some()
    }
}

impl Default for HeadTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses `data` as a configuration file and, when it is valid, compiles
/// its routes. Returns whether it was valid.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match weir_config::Config::from_yaml(text) {
        Ok(config) => {
            let _ = RouteTable::build(&config);
            true
        }
        Err(_) => false,
    }
}
