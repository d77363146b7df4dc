//! Validation of the gRPC and browser settings of routes and upstreams:
//! `match.grpc` (names, and no other path condition beside it),
//! `grpc_web` (an HTTP/2 upstream), `cors`, and `health_check` with
//! `type: grpc`.

use super::syntax::{is_token, quoted};
use super::Validator;
use crate::policy::HealthCheck;
use crate::route::Route;
use crate::upstream::Upstream;
use crate::Config;

impl Validator<'_> {
    /// `match.grpc`, `grpc_web` and `cors` of `routes[i]`.
    pub(super) fn grpc_route(&mut self, config: &Config, base: &str, route: &Route) {
        let m = &route.matches;
        if let Some(grpc) = &m.grpc {
            let at = format!("{base}.match.grpc");
            for (field, set) in [
                ("path", m.path.is_some()),
                ("path_prefix", m.path_prefix.is_some()),
                ("path_regex", m.path_regex.is_some()),
            ] {
                if set {
                    self.error(
                        &*at,
                        format!("conflicts with `match.{field}`: `grpc` is itself a path condition (/SERVICE/METHOD)"),
                    );
                }
            }
            if !is_qualified_name(&grpc.service) {
                self.error(
                    format!("{at}.service"),
                    format!(
                        "invalid service name {} (expected a fully qualified name such as pkg.v1.Service)",
                        quoted(&grpc.service)
                    ),
                );
            }
            if let Some(method) = &grpc.method {
                if !is_identifier(method) {
                    self.error(
                        format!("{at}.method"),
                        format!(
                            "invalid method name {} (letters, digits and _, not starting with a digit)",
                            quoted(method)
                        ),
                    );
                }
            }
        }
        if route.grpc_web {
            self.grpc_web_upstreams(config, base, route);
        }
        if let Some(cors) = &route.cors {
            let at = format!("{base}.cors");
            if cors.allow_origins.is_empty() {
                self.error(
                    format!("{at}.allow_origins"),
                    "must list at least one origin (or \"*\")",
                );
            }
            for (j, origin) in cors.allow_origins.iter().enumerate() {
                let path = format!("{at}.allow_origins[{j}]");
                if origin == "*" {
                    if cors.allow_credentials {
                        self.error(
                            path,
                            "\"*\" cannot be combined with allow_credentials: true (browsers refuse it); list the origins",
                        );
                    }
                } else if let Some(why) = origin_problem(origin) {
                    self.error(path, format!("invalid origin {}: {why}", quoted(origin)));
                }
            }
            for (j, method) in cors.allow_methods.iter().enumerate() {
                if !is_token(method) {
                    self.error(
                        format!("{at}.allow_methods[{j}]"),
                        format!("invalid method {} (not an HTTP token)", quoted(method)),
                    );
                }
            }
            for (field, list) in [
                ("allow_headers", &cors.allow_headers),
                ("expose_headers", &cors.expose_headers),
            ] {
                for (j, name) in list.iter().enumerate() {
                    if !(is_token(name) || (field == "allow_headers" && name == "*")) {
                        self.error(
                            format!("{at}.{field}[{j}]"),
                            format!("invalid header name {}", quoted(name)),
                        );
                    }
                }
            }
        }
    }

    /// gRPC-Web is translated into gRPC, which needs HTTP/2 to the target.
    fn grpc_web_upstreams(&mut self, config: &Config, base: &str, route: &Route) {
        if route.direct_response.is_some() {
            self.error(
                format!("{base}.grpc_web"),
                "`grpc_web` translates requests for an upstream; a direct_response route has none",
            );
            return;
        }
        let names = route
            .upstream
            .iter()
            .chain(route.upstreams.iter().flatten().map(|w| &w.name));
        for name in names {
            let Some(up) = config.upstreams.iter().find(|u| &u.name == name) else {
                continue; // reported with the route's upstream
            };
            if !up.protocol.is_http2() {
                self.error(
                    format!("{base}.grpc_web"),
                    format!(
                        "gRPC-Web is translated into gRPC, which needs HTTP/2: upstream {} must have `protocol: h2c` or `h2`",
                        quoted(name)
                    ),
                );
            }
        }
    }

    /// `health_check` with `type: grpc` of `upstreams[i]`.
    pub(super) fn grpc_health_check(&mut self, base: &str, hc: &HealthCheck, up: &Upstream) {
        if hc.path.is_some() {
            self.error(
                format!("{base}.path"),
                "gRPC checks always call /grpc.health.v1.Health/Check; use `service` to name what is checked",
            );
        }
        if let Some(host) = &hc.host {
            self.header_value(&format!("{base}.host"), host);
        }
        if let Some(service) = &hc.service {
            if !service.is_empty() && !is_qualified_name(service) {
                self.error(
                    format!("{base}.service"),
                    format!(
                        "invalid service name {} (a fully qualified name such as pkg.v1.Service, or \"\" for the whole server)",
                        quoted(service)
                    ),
                );
            }
        }
        if !up.protocol.is_http2() {
            self.error(
                format!("{base}.type"),
                "gRPC checks need HTTP/2: set the upstream's `protocol: h2c` (or `h2` with `tls`)",
            );
        }
    }
}

/// A protobuf full name: identifiers joined by dots (`pkg.v1.Service`).
fn is_qualified_name(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}

/// A protobuf identifier: a letter or `_`, then letters, digits or `_`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why `origin` is not a serialized origin (`scheme://host[:port]`).
fn origin_problem(origin: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Some("expected scheme://host[:port], e.g. https://app.example.com");
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Some("invalid scheme");
    }
    if rest.is_empty() {
        return Some("missing host");
    }
    if rest.contains('/') {
        return Some("an origin has no path (drop everything from the `/`)");
    }
    if rest.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'*') {
        return Some("spaces, control characters and `*` are not allowed");
    }
    None
}
