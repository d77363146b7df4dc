//! The route table: turns the configuration's `routes` into compiled routes
//! sorted by precedence, picks the route for a request, and holds each route's
//! precompiled settings (action, rewrite, timeouts, header edits).
//!
//! It owns matching and those compiled per-route settings only. It is sans-io
//! and must not touch the network, files, clocks or upstream state: no tokio,
//! no hyper. The proxy layer feeds it request parts and acts on the answer.

mod cors;
mod matcher;
mod split;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use weir_config::{Config, HeaderOps, Route};

pub use cors::Cors;
use matcher::{Matcher, PathMatch, Request};
pub use split::{cookie, Side, Split};

/// The identity in a verified client certificate, as routes match it and
/// upstreams receive it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject in RFC 4514 form (`CN=api,O=Example`).
    pub subject: String,
    /// Subject alternative names: URIs (SPIFFE ids), DNS names, e-mail
    /// addresses and IP addresses, in certificate order.
    pub sans: Vec<String>,
}

/// The compiled routes of one configuration, in precedence order. Immutable:
/// a reload builds a new table.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<CompiledRoute>>,
}

impl RouteTable {
    /// Compiles the config's routes. `upstream_index` of Forward = position of
    /// the named upstream in `config.upstreams`.
    pub fn build(config: &Config) -> Result<RouteTable, RouterError> {
        // One shared name per upstream, so every route forwarding to it points
        // at the same allocation.
        let mut upstreams: HashMap<&str, (usize, Arc<str>)> = HashMap::new();
        for (index, upstream) in config.upstreams.iter().enumerate() {
            upstreams
                .entry(upstream.name.as_str())
                .or_insert_with(|| (index, Arc::from(upstream.name.as_str())));
        }
        let mut routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(order, route)| CompiledRoute::compile(route, order, &upstreams).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        // Sorted once so that a lookup is a first-match scan; `order` in the key
        // makes the file-order tie-break explicit rather than relying on the
        // sort's stability alone.
        routes.sort_by_key(|route| (route.matcher.precedence(), route.order));
        Ok(RouteTable { routes })
    }

    /// First route in precedence order that matches. `host` is the request
    /// authority/Host header value, possibly with a port (stripped, IPv6
    /// `[::1]:80` too), compared case-insensitively. `path` excludes the query;
    /// `query` is the raw query string without `?`.
    /// `client_cert` is the verified client certificate, with mutual TLS.
    pub fn route(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        client_cert: Option<&ClientCert>,
    ) -> Option<&Arc<CompiledRoute>> {
        let request = Request::new(method, host, path, query, headers, client_cert);
        self.routes
            .iter()
            .find(|route| route.matcher.matches(&request))
    }

    /// After [`RouteTable::route`] found nothing: true when some route
    /// matches the request in everything but its client certificate (the
    /// client is known to the table, but not allowed there: 403, not 404).
    pub fn forbids_client_cert(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        client_cert: Option<&ClientCert>,
    ) -> bool {
        let request = Request::new(method, host, path, query, headers, client_cert);
        self.routes.iter().any(|route| {
            route.matcher.rejects_client_cert(client_cert)
                && route.matcher.matches_request(&request)
        })
    }

    /// Routes in precedence order.
    pub fn routes(&self) -> &[Arc<CompiledRoute>] {
        &self.routes
    }
}

/// One route, compiled: how to recognise its requests and what to do with them.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route's unique name, for logs, metrics and the admin API.
    pub name: Arc<str>,
    /// Index of the route in the configuration file.
    pub order: usize,
    /// Forward upstream or answer directly.
    pub action: RouteAction,
    /// Time allowed to open a connection to a target.
    pub connect_timeout: Duration,
    /// Deadline for the whole exchange; `None` when the config says `0s`.
    pub request_timeout: Option<Duration>,
    /// Edits on the request sent upstream.
    pub request_headers: HeaderEdits,
    /// Edits on the response sent to the client.
    pub response_headers: HeaderEdits,
    /// gRPC-Web requests are translated into gRPC (`grpc_web`).
    pub grpc_web: bool,
    /// The route's own request body limit (`max_request_body`), in bytes.
    pub max_request_body: Option<u64>,
    /// The route's CORS settings, when it has a `cors` block.
    pub cors: Option<Cors>,
    matcher: Matcher,
    rewrite: Option<PrefixRewrite>,
}

impl CompiledRoute {
    fn compile(
        route: &Route,
        order: usize,
        upstreams: &HashMap<&str, (usize, Arc<str>)>,
    ) -> Result<CompiledRoute, RouterError> {
        let name = route.name.as_str();
        let mut matcher = Matcher::compile(name, &route.matches)?;
        // A preflight names the method it asks about in a header; it must
        // reach the route that will answer it even when `methods` leaves
        // OPTIONS out.
        matcher.preflight_by_requested_method = route.cors.is_some();
        let action = match (&route.upstream, &route.direct_response) {
            (None, None) if route.upstreams.is_some() => {
                let mut sides = Vec::new();
                for side in route.upstreams.iter().flatten() {
                    let Some((index, shared)) = upstreams.get(side.name.as_str()) else {
                        return Err(RouterError::UnknownUpstream {
                            route: name.to_owned(),
                            upstream: side.name.clone(),
                        });
                    };
                    sides.push(Side {
                        upstream: Arc::clone(shared),
                        upstream_index: *index,
                        weight: side.weight,
                    });
                }
                if sides.iter().all(|s| s.weight == 0) {
                    return Err(RouterError::InvalidAction {
                        route: name.to_owned(),
                    });
                }
                RouteAction::Split(Split::new(sides, route.sticky.clone()))
            }
            (Some(upstream), None) => match upstreams.get(upstream.as_str()) {
                Some((index, shared)) => RouteAction::Forward {
                    upstream: Arc::clone(shared),
                    upstream_index: *index,
                },
                None => {
                    return Err(RouterError::UnknownUpstream {
                        route: name.to_owned(),
                        upstream: upstream.clone(),
                    })
                }
            },
            (None, Some(direct)) => RouteAction::Direct(DirectReply::compile(name, direct)?),
            _ => {
                return Err(RouterError::InvalidAction {
                    route: name.to_owned(),
                })
            }
        };
        let rewrite = match (&route.rewrite, matcher.path()) {
            (None, _) => None,
            (Some(rewrite), Some(PathMatch::Prefix(prefix))) => Some(PrefixRewrite {
                prefix: prefix.clone(),
                replacement: rewrite.path_prefix.as_str().into(),
            }),
            (Some(_), _) => {
                return Err(RouterError::RewriteWithoutPrefix {
                    route: name.to_owned(),
                })
            }
        };
        let request_timeout = route.timeouts.request.get();
        Ok(CompiledRoute {
            name: Arc::from(name),
            order,
            action,
            connect_timeout: route.timeouts.connect.get(),
            request_timeout: (!request_timeout.is_zero()).then_some(request_timeout),
            request_headers: HeaderEdits::compile(name, "request_headers", &route.request_headers)?,
            response_headers: HeaderEdits::compile(
                name,
                "response_headers",
                &route.response_headers,
            )?,
            grpc_web: route.grpc_web,
            max_request_body: route.max_request_body.map(|b| b.bytes()),
            cors: route
                .cors
                .as_ref()
                .map(|c| Cors::compile(name, c, route.grpc_web))
                .transpose()?,
            matcher,
            rewrite,
        })
    }

    /// The upstream request target after `rewrite` (path + "?" + query when
    /// query is Some), or None when the route has no rewrite (caller keeps the
    /// original URI untouched). Replaces the matched path_prefix with the
    /// rewrite prefix and always yields an origin-form target starting with
    /// `/`, without doubling slashes at the seam: with prefix `/api/` and
    /// rewrite `/v2/`, `/api/users?x=1` becomes `/v2/users?x=1`; with `/api`
    /// and `/`, `/api` becomes `/` and `/api/x` becomes `/x`. A path the
    /// prefix does not match also yields None.
    pub fn rewrite(&self, path: &str, query: Option<&str>) -> Option<String> {
        let rewrite = self.rewrite.as_ref()?;
        // Both sides are treated as ending at a segment boundary: whatever the
        // trailing slashes, the remainder is empty or starts with `/`, which
        // is what keeps `/api/` → `/v2` from yielding `/v2users`.
        let prefix = rewrite.prefix.trim_end_matches('/');
        let rest = path.strip_prefix(prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let replacement = rewrite.replacement.trim_end_matches('/');
        let query_len = query.map_or(0, |q| q.len() + 1);
        let mut target = String::with_capacity(replacement.len() + rest.len() + query_len + 1);
        // Covers an empty result and a replacement written without its `/`.
        let first = if replacement.is_empty() {
            rest
        } else {
            replacement
        };
        if !first.starts_with('/') {
            target.push('/');
        }
        target.push_str(replacement);
        target.push_str(rest);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Some(target)
    }

    /// JSON description for the admin `GET /routes`: name, order, match
    /// conditions, action (upstream name or direct status), rewrite, timeouts.
    pub fn describe(&self) -> Value {
        let action = match &self.action {
            RouteAction::Forward { upstream, .. } => json!({ "upstream": &**upstream }),
            RouteAction::Split(split) => json!({
                "upstreams": split.sides().iter().map(|s| json!({
                    "name": &*s.upstream,
                    "weight": s.weight,
                })).collect::<Vec<_>>(),
                "sticky": split.sticky().map(ToString::to_string),
            }),
            RouteAction::Direct(reply) => {
                json!({ "direct_response": { "status": reply.status.as_u16() } })
            }
        };
        let rewrite = self
            .rewrite
            .as_ref()
            .map(|r| json!({ "path_prefix": &*r.replacement }));
        let request = self.request_timeout.unwrap_or(Duration::ZERO);
        json!({
            "name": &*self.name,
            "order": self.order,
            "match": self.matcher.describe(),
            "action": action,
            "rewrite": rewrite,
            "timeouts": {
                "connect": weir_config::Duration(self.connect_timeout).to_string(),
                "request": weir_config::Duration(request).to_string(),
            },
        })
    }
}

/// `rewrite.path_prefix`, with the `match.path_prefix` it replaces.
#[derive(Debug)]
struct PrefixRewrite {
    prefix: Box<str>,
    replacement: Box<str>,
}

/// What a matched route does with the request.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Proxy the request to an upstream.
    Forward {
        /// The upstream's name.
        upstream: Arc<str>,
        /// Position of the upstream in `Config::upstreams`.
        upstream_index: usize,
    },
    /// Proxy the request to one of several upstreams, by weight.
    Split(Split),
    /// Answer locally with a fixed response.
    Direct(DirectReply),
}

impl RouteAction {
    /// The upstreams this action may forward to: (name, index) pairs, one for
    /// a plain forward, one per side for a split, none for a direct reply.
    pub fn upstreams(&self) -> Vec<(Arc<str>, usize)> {
        match self {
            RouteAction::Forward {
                upstream,
                upstream_index,
            } => vec![(upstream.clone(), *upstream_index)],
            RouteAction::Split(split) => split
                .sides()
                .iter()
                .map(|s| (s.upstream.clone(), s.upstream_index))
                .collect(),
            RouteAction::Direct(_) => Vec::new(),
        }
    }
}

/// A fixed response, ready to send.
#[derive(Debug, Clone)]
pub struct DirectReply {
    /// Response status.
    pub status: StatusCode,
    /// Response body; cloning it is cheap.
    pub body: Bytes,
    /// Response headers, as configured.
    pub headers: HeaderMap,
}

impl DirectReply {
    fn compile(route: &str, direct: &weir_config::DirectResponse) -> Result<Self, RouterError> {
        let status = StatusCode::from_u16(direct.status)
            .ok()
            // Informational codes cannot end an exchange, so they are no reply.
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or(RouterError::InvalidStatus {
                route: route.to_owned(),
                status: direct.status,
            })?;
        let mut headers = HeaderMap::with_capacity(direct.headers.len());
        for (name, value) in &direct.headers {
            let (name, value) = header_pair(route, "direct_response.headers", name, value)?;
            headers.append(name, value);
        }
        Ok(DirectReply {
            status,
            body: Bytes::from(direct.body.clone()),
            headers,
        })
    }
}

/// Header edits precompiled to HeaderName/HeaderValue. apply: remove, then set
/// (replace), then add (append).
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderEdits {
    fn compile(route: &str, field: &'static str, ops: &HeaderOps) -> Result<Self, RouterError> {
        let remove = ops
            .remove
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    RouterError::InvalidHeaderName {
                        route: route.to_owned(),
                        field,
                        name: name.clone(),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .map(|(name, value)| header_pair(route, field, name, value))
                .collect::<Result<Box<[_]>, _>>()
        };
        Ok(HeaderEdits {
            remove,
            set: pairs(&ops.set)?,
            add: pairs(&ops.add)?,
        })
    }

    /// Applies the edits: removals, then replacements, then appends.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// True when there is nothing to do, so callers can skip the header map.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Parses a configured header; `field` names the YAML key for the error.
fn header_pair(
    route: &str,
    field: &'static str,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), RouterError> {
    let header_name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| RouterError::InvalidHeaderName {
            route: route.to_owned(),
            field,
            name: name.to_owned(),
        })?;
    let header_value =
        HeaderValue::from_str(value).map_err(|_| RouterError::InvalidHeaderValue {
            route: route.to_owned(),
            field,
            name: name.to_owned(),
        })?;
    Ok((header_name, header_value))
}

/// Why a configuration's routes could not be compiled. Each names the route.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// `upstream` names no entry of `upstreams`.
    #[error("route {route:?}: upstream {upstream:?} is not defined")]
    UnknownUpstream {
        /// The route.
        route: String,
        /// The missing upstream.
        upstream: String,
    },
    /// Not exactly one of `upstream`, `upstreams` and `direct_response` is
    /// set, or a split has no positive weight.
    #[error("route {route:?}: set exactly one of upstream, upstreams (with a positive weight) and direct_response")]
    InvalidAction {
        /// The route.
        route: String,
    },
    /// `direct_response.status` is not a final HTTP status.
    #[error("route {route:?}: invalid direct_response status {status} (expected 200-599)")]
    InvalidStatus {
        /// The route.
        route: String,
        /// The configured status.
        status: u16,
    },
    /// `match.host` is empty or has a misplaced `*`.
    #[error("route {route:?}: invalid match.host {host:?} (expected a host name or *.domain)")]
    InvalidHost {
        /// The route.
        route: String,
        /// The configured host.
        host: String,
    },
    /// More than one of `path`, `path_prefix`, `path_regex` and `grpc`.
    #[error("route {route:?}: set at most one of match.path, match.path_prefix, match.path_regex, match.grpc")]
    ConflictingPaths {
        /// The route.
        route: String,
    },
    /// `match.path_regex` does not compile.
    #[error("route {route:?}: invalid match.path_regex {regex:?}: {error}")]
    InvalidRegex {
        /// The route.
        route: String,
        /// The configured expression.
        regex: String,
        /// The regex compiler's message.
        error: String,
    },
    /// `match.methods` is an empty list, which no request could match.
    #[error("route {route:?}: match.methods is empty (omit it to allow any method)")]
    EmptyMethods {
        /// The route.
        route: String,
    },
    /// An entry of `match.methods` is not an HTTP method token.
    #[error("route {route:?}: invalid method {method:?} in match.methods")]
    InvalidMethod {
        /// The route.
        route: String,
        /// The configured method.
        method: String,
    },
    /// A configured header name is not a valid HTTP field name.
    #[error("route {route:?}: {field}: invalid header name {name:?}")]
    InvalidHeaderName {
        /// The route.
        route: String,
        /// The YAML key holding the header, e.g. `request_headers`.
        field: &'static str,
        /// The configured name.
        name: String,
    },
    /// A configured header value contains forbidden characters.
    #[error("route {route:?}: {field}: invalid value for header {name:?}")]
    InvalidHeaderValue {
        /// The route.
        route: String,
        /// The YAML key holding the header, e.g. `request_headers`.
        field: &'static str,
        /// The header whose value is invalid.
        name: String,
    },
    /// A `cors` value that cannot be sent in a header.
    #[error("route {route:?}: cors: invalid value {what:?}")]
    InvalidCors {
        /// The route.
        route: String,
        /// The offending value.
        what: String,
    },
    /// `rewrite` without `match.path_prefix`: there is no prefix to replace.
    #[error("route {route:?}: rewrite requires match.path_prefix")]
    RewriteWithoutPrefix {
        /// The route.
        route: String,
    },
}
