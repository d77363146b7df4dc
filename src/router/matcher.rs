//! The match conditions of one route, compiled for the request hot path, and
//! the precedence key that orders routes in the table.
//!
//! Matching never allocates for host, path, method or header conditions; the
//! query string is parsed at most once per lookup, and only when a route with
//! query conditions is actually tested.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Reverse;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use serde_json::{json, Map, Value};
use weir_config::{ClientCertMatch, GrpcMatch, RouteMatch};

use super::{ClientCert, RouterError};

/// A compiled host condition. Patterns are stored lower-cased, without IPv6
/// brackets or a trailing dot, so they compare directly with [`normalize_host`].
#[derive(Debug)]
enum HostMatch {
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com`.
    Wildcard(Box<str>),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(want) => host.eq_ignore_ascii_case(want),
            HostMatch::Wildcard(suffix) => {
                // Strictly longer: the wildcard needs at least one label, so
                // `*.example.com` does not match `example.com` or `.example.com`.
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// A compiled path condition.
#[derive(Debug)]
pub(super) enum PathMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex { source: Box<str>, regex: Regex },
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(want) => path == &**want,
            PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
            PathMatch::Regex { regex, .. } => regex.is_match(path),
        }
    }
}

/// Segment-aware prefix test.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        // The catch-all prefix also takes the odd non-origin-form targets
        // (`OPTIONS *`), so a `/` route really is a default route.
        return true;
    }
    if !path.starts_with(prefix) {
        return false;
    }
    // A prefix without a trailing slash ends at a segment boundary, so `/api`
    // must not claim `/apix`.
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// A decoded query `(key, value)`; bytes because `%XX` may decode to non-UTF-8.
type QueryPair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Everything a route may test about one request, with the host
/// normalized and the query parsed the first time a route asks (a table
/// without host routes never pays for it).
pub(super) struct Request<'a> {
    method: &'a Method,
    raw_host: Option<&'a str>,
    host: OnceCell<Option<&'a str>>,
    path: &'a str,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    query_pairs: OnceCell<Vec<QueryPair<'a>>>,
    client_cert: Option<&'a ClientCert>,
}

impl<'a> Request<'a> {
    pub(super) fn new(
        method: &'a Method,
        host: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        client_cert: Option<&'a ClientCert>,
    ) -> Self {
        Request {
            method,
            raw_host: host,
            host: OnceCell::new(),
            path,
            headers,
            query,
            query_pairs: OnceCell::new(),
            client_cert,
        }
    }

    /// The request's host without userinfo, port or IPv6 brackets.
    fn host(&self) -> Option<&'a str> {
        *self.host.get_or_init(|| self.raw_host.map(normalize_host))
    }

    /// True for a CORS preflight (`OPTIONS` with `Origin`) whose
    /// `Access-Control-Request-Method` is one of `methods`.
    fn preflight_asks_for(&self, methods: &[Method]) -> bool {
        *self.method == Method::OPTIONS
            && self.headers.contains_key(http::header::ORIGIN)
            && self
                .headers
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .is_some_and(|m| methods.contains(&m))
    }

    fn has_query_param(&self, key: &[u8], value: &[u8]) -> bool {
        let Some(raw) = self.query else {
            return false;
        };
        self.query_pairs
            .get_or_init(|| parse_query(raw))
            .iter()
            .any(|(k, v)| **k == *key && **v == *value)
    }
}

/// Reduces an authority or `Host` value to the bare host: drops userinfo, the
/// port, IPv6 brackets and a trailing root dot. Never allocates.
pub(super) fn normalize_host(authority: &str) -> &str {
    // One pass over the bytes: where the userinfo ends (the last `@`), and
    // how many colons follow it and where the last one is. Every request is
    // routed through here, and the searches of `str` cost a call each.
    let bytes = authority.as_bytes();
    let mut start = 0;
    let mut colons = 0usize;
    let mut last_colon = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if c == b'@' {
            start = i + 1;
            colons = 0;
        } else if c == b':' {
            colons += 1;
            last_colon = i;
        }
    }
    let authority = &authority[start..];
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        match rest.find(']') {
            Some(end) => &rest[..end],
            None => rest,
        }
    } else if colons == 1 {
        // One colon separates the port; more than one is an unbracketed
        // IPv6 address, not a port.
        &authority[..last_colon - start]
    } else {
        authority
    };
    host.strip_suffix('.').unwrap_or(host)
}

fn parse_query(raw: &str) -> Vec<QueryPair<'_>> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Form-style decoding: `%XX` to the byte, `+` to a space; malformed escapes
/// are kept literally rather than rejected, as a lookup must not fail.
fn percent_decode(text: &str) -> Cow<'_, [u8]> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_digit);
                let lo = bytes.get(i + 2).copied().and_then(hex_digit);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Sort key implementing the Gateway API HTTPRoute precedence; smaller sorts
/// first. Field order is significant: the derived `Ord` is lexicographic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Precedence {
    /// 0 exact host, 1 wildcard, 2 any host.
    host_rank: u8,
    host_len: Reverse<usize>,
    /// 0 exact path, 1 prefix, 2 regex, 3 any path.
    path_rank: u8,
    path_len: Reverse<usize>,
    no_methods: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
}

/// All match conditions of one route.
#[derive(Debug)]
pub(super) struct Matcher {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Option<Box<[Method]>>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    query: Box<[(Box<str>, Box<str>)]>,
    client_cert: Option<ClientCertMatch>,
    /// `match.grpc` as configured (compiled into `path`), for `describe`.
    grpc: Option<GrpcMatch>,
    /// The route answers CORS preflights (`cors`): an `OPTIONS` preflight
    /// passes `methods` when the method it asks about does.
    pub(super) preflight_by_requested_method: bool,
}

impl Matcher {
    pub(super) fn compile(route: &str, m: &RouteMatch) -> Result<Matcher, RouterError> {
        let host = m
            .host
            .as_deref()
            .map(|h| compile_host(route, h))
            .transpose()?;
        let path = match (&m.path, &m.path_prefix, &m.path_regex) {
            // gRPC names the service and method in the path.
            (None, None, None) => m.grpc.as_ref().map(|g| {
                if g.is_prefix() {
                    PathMatch::Prefix(g.path().into())
                } else {
                    PathMatch::Exact(g.path().into())
                }
            }),
            _ if m.grpc.is_some() => {
                return Err(RouterError::ConflictingPaths {
                    route: route.to_owned(),
                })
            }
            (Some(p), None, None) => Some(PathMatch::Exact(p.as_str().into())),
            (None, Some(p), None) => Some(PathMatch::Prefix(p.as_str().into())),
            (None, None, Some(re)) => Some(PathMatch::Regex {
                source: re.as_str().into(),
                regex: compile_anchored(route, re)?,
            }),
            _ => {
                return Err(RouterError::ConflictingPaths {
                    route: route.to_owned(),
                })
            }
        };
        let methods = match &m.methods {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(RouterError::EmptyMethods {
                    route: route.to_owned(),
                })
            }
            Some(list) => Some(
                list.iter()
                    .map(|name| {
                        Method::from_bytes(name.as_bytes()).map_err(|_| {
                            RouterError::InvalidMethod {
                                route: route.to_owned(),
                                method: name.clone(),
                            }
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let headers = m
            .headers
            .iter()
            .map(|(name, value)| super::header_pair(route, "match.headers", name, value))
            .collect::<Result<_, _>>()?;
        let query = m
            .query
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        Ok(Matcher {
            host,
            path,
            methods,
            headers,
            query,
            client_cert: m.client_cert.clone(),
            grpc: m.grpc.clone(),
            preflight_by_requested_method: false,
        })
    }

    /// Every condition, the client certificate last.
    pub(super) fn matches(&self, req: &Request<'_>) -> bool {
        self.matches_request(req) && self.client_cert_matches(req.client_cert)
    }

    /// True when the route has a client-certificate condition that `cert`
    /// fails.
    pub(super) fn rejects_client_cert(&self, cert: Option<&ClientCert>) -> bool {
        !self.client_cert_matches(cert)
    }

    fn client_cert_matches(&self, cert: Option<&ClientCert>) -> bool {
        let Some(want) = &self.client_cert else {
            return true;
        };
        let Some(cert) = cert else { return false };
        want.san
            .as_ref()
            .is_none_or(|san| cert.sans.iter().any(|s| s == san))
            && want.subject.as_ref().is_none_or(|s| *s == cert.subject)
    }

    /// Cheapest and most selective conditions first; all but the client
    /// certificate.
    pub(super) fn matches_request(&self, req: &Request<'_>) -> bool {
        if let Some(host) = &self.host {
            match req.host() {
                Some(h) if host.matches(h) => {}
                _ => return false,
            }
        }
        if let Some(methods) = &self.methods {
            let allowed = methods.contains(req.method)
                || (self.preflight_by_requested_method && req.preflight_asks_for(methods));
            if !allowed {
                return false;
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(req.path) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, want)| req.headers.get_all(name).iter().any(|v| v == want))
            && self
                .query
                .iter()
                .all(|(k, v)| req.has_query_param(k.as_bytes(), v.as_bytes()))
    }

    pub(super) fn precedence(&self) -> Precedence {
        let (host_rank, host_len) = match &self.host {
            Some(HostMatch::Exact(_)) => (0, 0),
            Some(HostMatch::Wildcard(suffix)) => (1, suffix.len()),
            None => (2, 0),
        };
        let (path_rank, path_len) = match &self.path {
            Some(PathMatch::Exact(_)) => (0, 0),
            Some(PathMatch::Prefix(prefix)) => (1, prefix.len()),
            Some(PathMatch::Regex { .. }) => (2, 0),
            None => (3, 0),
        };
        Precedence {
            host_rank,
            host_len: Reverse(host_len),
            path_rank,
            path_len: Reverse(path_len),
            no_methods: self.methods.is_none(),
            headers: Reverse(self.headers.len()),
            query: Reverse(self.query.len()),
        }
    }

    pub(super) fn path(&self) -> Option<&PathMatch> {
        self.path.as_ref()
    }

    /// The conditions in the configuration's own vocabulary, for `GET /routes`.
    pub(super) fn describe(&self) -> Value {
        let mut out = Map::new();
        match &self.host {
            Some(HostMatch::Exact(h)) => {
                out.insert("host".into(), json!(h));
            }
            Some(HostMatch::Wildcard(suffix)) => {
                out.insert("host".into(), json!(format!("*{suffix}")));
            }
            None => {}
        }
        match &self.path {
            _ if self.grpc.is_some() => {
                if let Some(g) = &self.grpc {
                    out.insert(
                        "grpc".into(),
                        json!({ "service": g.service, "method": g.method }),
                    );
                }
            }
            Some(PathMatch::Exact(p)) => {
                out.insert("path".into(), json!(p));
            }
            Some(PathMatch::Prefix(p)) => {
                out.insert("path_prefix".into(), json!(p));
            }
            Some(PathMatch::Regex { source, .. }) => {
                out.insert("path_regex".into(), json!(source));
            }
            None => {}
        }
        if let Some(methods) = &self.methods {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            out.insert("methods".into(), json!(names));
        }
        if !self.headers.is_empty() {
            let headers: Map<String, Value> = self
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        json!(String::from_utf8_lossy(v.as_bytes())),
                    )
                })
                .collect();
            out.insert("headers".into(), Value::Object(headers));
        }
        if !self.query.is_empty() {
            let query: Map<String, Value> = self
                .query
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            out.insert("query".into(), Value::Object(query));
        }
        Value::Object(out)
    }
}

fn compile_host(route: &str, pattern: &str) -> Result<HostMatch, RouterError> {
    let invalid = || RouterError::InvalidHost {
        route: route.to_owned(),
        host: pattern.to_owned(),
    };
    let lower = pattern.to_ascii_lowercase();
    let bare = lower
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&lower);
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    if let Some(suffix) = bare.strip_prefix('*') {
        // Only a whole leading label may be a wildcard: `*.example.com`.
        if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
            return Err(invalid());
        }
        return Ok(HostMatch::Wildcard(suffix.into()));
    }
    if bare.is_empty() || bare.contains('*') {
        return Err(invalid());
    }
    Ok(HostMatch::Exact(bare.into()))
}

/// Compiles `re` so that it must match the whole path.
fn compile_anchored(route: &str, re: &str) -> Result<Regex, RouterError> {
    let invalid = |error: regex::Error| RouterError::InvalidRegex {
        route: route.to_owned(),
        regex: re.to_owned(),
        error: error.to_string(),
    };
    // Checked alone first: an unbalanced pattern such as `a)|(b` would become
    // valid, and no longer anchored, once wrapped.
    Regex::new(re).map_err(invalid)?;
    Regex::new(&format!("^(?:{re})$"))
        // A trailing `# comment` under the `x` flag swallows the closing
        // anchor; a newline ends the comment and is ignored in that mode.
        .or_else(|_| Regex::new(&format!("^(?:{re}\n)$")))
        .map_err(invalid)
}
