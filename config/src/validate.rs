//! Semantic validation: everything the types alone cannot express (unique
//! names, references between sections, address syntax, header rules...).
//!
//! Every problem is collected rather than stopping at the first, so a user
//! fixes a file in one pass.

mod grpc;
mod policy;
mod syntax;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::lines::LineIndex;
use crate::route::{DirectResponse, HeaderOps, Route};
use crate::upstream::{HashOn, LoadBalancing, Upstream};
use crate::{Config, ConfigError, ListenerProtocol};
use syntax::{
    canonical_host, did_you_mean, host_problem, is_token, quoted, regex_reason, reserved_header,
    STANDARD_METHODS,
};

pub use syntax::parse_target_address;

const MAX_THREADS: usize = 1024;
const MAX_WEIGHT: u32 = 10_000;

/// Checks `config` and returns every problem found, in document order.
pub(crate) fn validate(config: &Config, index: &LineIndex) -> Vec<ConfigError> {
    let mut v = Validator {
        index,
        errors: Vec::new(),
    };
    v.runtime(config);
    let listener_addrs = v.listeners(config);
    v.admin(config, &listener_addrs);
    if let Some(path) = &config.access_log.path {
        if path.trim().is_empty() {
            v.error(
                "access_log.path",
                "must not be empty (omit it to log to standard output)",
            );
        }
    }
    for (path, message) in crate::limits::validate_limits(&config.limits) {
        v.error(path, message);
    }
    for (i, net) in config.trusted_proxies.iter().enumerate() {
        if let Err(message) = parse_cidr(net) {
            v.error(format!("trusted_proxies[{i}]"), message);
        }
    }
    v.routes(config);
    v.upstreams(config);
    v.redis(config);
    if let Some(tracing) = &config.tracing {
        for (path, message) in crate::observability::validate_tracing(tracing) {
            v.error(path, message);
        }
    }
    let mut errors = v.errors;
    // Checks run section by section, but the file may order sections (and map
    // keys, which the model stores sorted) differently. The sort is stable, so
    // errors about the same node stay in the order they were found.
    errors.sort_by_key(|(pos, _)| pos.unwrap_or((0, 0)));
    errors.into_iter().map(|(_, e)| e).collect()
}

struct Validator<'a> {
    index: &'a LineIndex,
    /// Each error with the (line, column) it sorts by.
    errors: Vec<(Option<(u64, u64)>, ConfigError)>,
}

impl Validator<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let pos = self.index.position(&path);
        let line = self.index.line(&path);
        self.errors.push((
            pos,
            ConfigError {
                path,
                line,
                message: message.into(),
            },
        ));
    }

    fn runtime(&mut self, config: &Config) {
        if let Some(threads) = config.runtime.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                self.error(
                    "runtime.threads",
                    format!("must be between 1 and {MAX_THREADS} (got {threads}); omit it to use one per CPU"),
                );
            }
        }
    }

    /// Returns the listeners' parsed addresses, for the admin check.
    fn listeners(&mut self, config: &Config) -> Vec<(usize, SocketAddr)> {
        if config.listeners.is_empty() {
            self.error("listeners", "at least one listener is required");
        }
        let mut names = HashMap::new();
        let mut addrs: Vec<(usize, SocketAddr)> = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let base = format!("listeners[{i}]");
            self.unique_name(&base, &l.name, "listener", "listeners", &mut names, i);
            match parse_socket_addr(&l.address) {
                Ok(addr) => {
                    // Port 0 asks the OS for a fresh port each time: never a clash.
                    if let Some((j, _)) = addrs.iter().find(|(_, a)| *a == addr && addr.port() != 0)
                    {
                        self.error(
                            format!("{base}.address"),
                            format!("address {addr} is already used by listeners[{j}]"),
                        );
                    } else {
                        addrs.push((i, addr));
                    }
                }
                Err(msg) => self.error(format!("{base}.address"), msg),
            }
            if l.protocols.is_empty() {
                self.error(
                    format!("{base}.protocols"),
                    "must list at least one protocol (http1, h2c)",
                );
            }
            self.listener_tls(&base, l);
            for (j, p) in l.protocols.iter().enumerate() {
                if l.protocols[..j].contains(p) {
                    let name = match p {
                        ListenerProtocol::Http1 => "http1",
                        ListenerProtocol::H2c => "h2c",
                    };
                    self.error(
                        format!("{base}.protocols[{j}]"),
                        format!("duplicate protocol {name}"),
                    );
                }
            }
        }
        addrs
    }

    fn admin(&mut self, config: &Config, listener_addrs: &[(usize, SocketAddr)]) {
        let Some(admin) = &config.admin else { return };
        match parse_socket_addr(&admin.address) {
            Ok(addr) => {
                if let Some((i, _)) = listener_addrs
                    .iter()
                    .find(|(_, a)| *a == addr && addr.port() != 0)
                {
                    self.error(
                        "admin.address",
                        format!("address {addr} is already used by listeners[{i}]; the admin API needs its own port"),
                    );
                }
            }
            Err(msg) => self.error("admin.address", msg),
        }
        if admin
            .auth_token_file
            .as_ref()
            .is_some_and(|f| f.trim().is_empty())
        {
            self.error(
                "admin.auth_token_file",
                "must not be empty (omit it for no authentication)",
            );
        }
    }

    /// Reports an empty or repeated name; `seen` maps names to their first index.
    fn unique_name(
        &mut self,
        base: &str,
        name: &str,
        kind: &str,
        section: &str,
        seen: &mut HashMap<String, usize>,
        i: usize,
    ) {
        if name.trim().is_empty() {
            self.error(
                format!("{base}.name"),
                format!("{kind} name must not be empty"),
            );
        } else if let Some(first) = seen.get(name) {
            self.error(
                format!("{base}.name"),
                format!(
                    "duplicate {kind} name {} (already used by {section}[{first}])",
                    quoted(name)
                ),
            );
        } else {
            seen.insert(name.to_owned(), i);
        }
    }

    fn routes(&mut self, config: &Config) {
        let mut names = HashMap::new();
        let upstream_names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        for (i, route) in config.routes.iter().enumerate() {
            let base = format!("routes[{i}]");
            self.unique_name(&base, &route.name, "route", "routes", &mut names, i);
            let forwards = route.upstream.is_some() || route.upstreams.is_some();
            match (forwards, &route.direct_response) {
                (false, None) => self.error(
                    &*base,
                    "a route needs `upstream`, `upstreams` or `direct_response`",
                ),
                (true, Some(_)) => self.error(
                    format!("{base}.direct_response"),
                    "`upstream`/`upstreams` and `direct_response` are mutually exclusive",
                ),
                _ => {}
            }
            if let Some(name) = &route.upstream {
                if !upstream_names.contains(&name.as_str()) {
                    let mut msg = format!("no upstream named {}", quoted(name));
                    if let Some(s) = did_you_mean(name, &upstream_names) {
                        msg.push_str(&format!(" (did you mean {}?)", quoted(s)));
                    }
                    self.error(format!("{base}.upstream"), msg);
                }
            }
            self.route_match(&base, route);
            self.rewrite(&base, route);
            if let Some(dr) = &route.direct_response {
                self.direct_response(&base, dr);
            }
            if route.timeouts.connect.is_zero() {
                self.error(format!("{base}.timeouts.connect"), "must be greater than 0");
            }
            self.header_ops(&format!("{base}.request_headers"), &route.request_headers);
            self.header_ops(&format!("{base}.response_headers"), &route.response_headers);
            self.route_policies(config, &base, route);
            self.grpc_route(config, &base, route);
        }
    }

    fn route_match(&mut self, base: &str, route: &Route) {
        let m = &route.matches;
        let base = format!("{base}.match");
        if let Some(cc) = &m.client_cert {
            self.client_cert_match(&base, cc);
        }
        let kinds = [
            ("path", &m.path),
            ("path_prefix", &m.path_prefix),
            ("path_regex", &m.path_regex),
        ];
        let mut first: Option<&str> = None;
        for (field, value) in kinds {
            if value.is_none() {
                continue;
            }
            match first {
                Some(other) => self.error(
                    format!("{base}.{field}"),
                    format!("conflicts with `match.{other}`: use only one of path, path_prefix, path_regex"),
                ),
                None => first = Some(field),
            }
        }
        for (field, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(p) = value {
                if !p.starts_with('/') {
                    self.error(
                        format!("{base}.{field}"),
                        format!("must start with `/` (got {})", quoted(p)),
                    );
                }
            }
        }
        if let Some(re) = &m.path_regex {
            if let Err(e) = regex::Regex::new(re) {
                self.error(
                    format!("{base}.path_regex"),
                    format!("invalid regex: {}", regex_reason(&e)),
                );
            }
        }
        if let Some(host) = &m.host {
            if let Some(msg) = host_problem(host) {
                self.error(
                    format!("{base}.host"),
                    format!("invalid host {}: {msg}", quoted(host)),
                );
            }
        }
        if let Some(methods) = &m.methods {
            if methods.is_empty() {
                self.error(
                    format!("{base}.methods"),
                    "must not be empty (omit `methods` to allow any method)",
                );
            }
            for (j, method) in methods.iter().enumerate() {
                let path = format!("{base}.methods[{j}]");
                let upper = method.to_ascii_uppercase();
                if !is_token(method) {
                    self.error(
                        path,
                        format!("invalid method {} (not an HTTP token)", quoted(method)),
                    );
                } else if methods[..j].contains(method) {
                    self.error(path, format!("duplicate method {}", quoted(method)));
                } else if upper != *method && STANDARD_METHODS.contains(&upper.as_str()) {
                    self.error(
                        path,
                        format!("methods are case-sensitive: did you mean {upper}?"),
                    );
                }
            }
        }
        for (name, value) in &m.headers {
            let path = child(&format!("{base}.headers"), name);
            self.header_name(&path, name);
            self.header_value(&path, value);
        }
        if m.query.keys().any(|k| k.is_empty()) {
            self.error(
                format!("{base}.query"),
                "query parameter names must not be empty",
            );
        }
    }

    fn rewrite(&mut self, base: &str, route: &Route) {
        let Some(rw) = &route.rewrite else { return };
        if route.direct_response.is_some() {
            self.error(
                format!("{base}.rewrite"),
                "`rewrite` cannot be combined with `direct_response` (nothing is forwarded)",
            );
        } else if route.matches.path_prefix.is_none() {
            self.error(
                format!("{base}.rewrite"),
                "`rewrite` requires `match.path_prefix` (it replaces the matched prefix)",
            );
        }
        if !rw.path_prefix.starts_with('/') {
            self.error(
                format!("{base}.rewrite.path_prefix"),
                format!("must start with `/` (got {})", quoted(&rw.path_prefix)),
            );
        }
    }

    fn direct_response(&mut self, base: &str, dr: &DirectResponse) {
        let base = format!("{base}.direct_response");
        if !(200..=599).contains(&dr.status) {
            let why = if (100..200).contains(&dr.status) {
                "; 1xx cannot be a final response"
            } else {
                ""
            };
            self.error(
                format!("{base}.status"),
                format!("must be between 200 and 599 (got {}{why})", dr.status),
            );
        }
        for (name, value) in &dr.headers {
            let path = child(&format!("{base}.headers"), name);
            if self.header_name(&path, name) {
                if let Some(why) =
                    reserved_header(name).filter(|_| !name.eq_ignore_ascii_case("host"))
                {
                    self.error(&*path, format!("cannot set `{name}`: {why}"));
                }
            }
            self.header_value(&path, value);
        }
    }

    fn header_ops(&mut self, base: &str, ops: &HeaderOps) {
        for (verb, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                let path = child(&format!("{base}.{verb}"), name);
                if self.header_name(&path, name) {
                    if let Some(why) = reserved_header(name) {
                        self.error(&*path, format!("cannot {verb} `{name}`: {why}"));
                    }
                }
                self.header_value(&path, value);
            }
        }
        for (j, name) in ops.remove.iter().enumerate() {
            self.header_name(&format!("{base}.remove[{j}]"), name);
        }
    }

    /// Reports an invalid header name; returns whether it was valid.
    fn header_name(&mut self, path: &str, name: &str) -> bool {
        if name.is_empty() {
            self.error(path, "header names must not be empty");
            false
        } else if !is_token(name) {
            self.error(
                path,
                format!(
                    "invalid header name {} (letters, digits and !#$%&'*+-.^_`|~ only)",
                    quoted(name)
                ),
            );
            false
        } else {
            true
        }
    }

    fn header_value(&mut self, path: &str, value: &str) {
        if value.contains(['\r', '\n']) {
            self.error(path, "header values cannot contain line breaks");
        } else if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            self.error(
                path,
                "header values may only contain visible ASCII, spaces and tabs",
            );
        }
    }

    fn upstreams(&mut self, config: &Config) {
        let mut names = HashMap::new();
        for (i, up) in config.upstreams.iter().enumerate() {
            let base = format!("upstreams[{i}]");
            self.unique_name(&base, &up.name, "upstream", "upstreams", &mut names, i);
            self.targets(&base, up);
            self.hash_on(&base, up);
            self.upstream_policies(&base, up);
            self.upstream_tls(&base, up);
            if up.keepalive.max_idle > 0 && up.keepalive.idle_timeout.is_zero() {
                self.error(
                    format!("{base}.keepalive.idle_timeout"),
                    "must be greater than 0 when max_idle > 0 (set max_idle: 0 to disable reuse)",
                );
            }
        }
    }

    fn hash_on(&mut self, base: &str, up: &Upstream) {
        let consistent = up.load_balancing == LoadBalancing::ConsistentHash;
        match &up.hash_on {
            None if consistent => self.error(
                format!("{base}.load_balancing"),
                "consistent_hash requires `hash_on` (header:NAME, cookie:NAME, client_ip or path)",
            ),
            Some(_) if !consistent => self.error(
                format!("{base}.hash_on"),
                "hash_on only applies to load_balancing: consistent_hash",
            ),
            Some(HashOn::Header(name) | HashOn::Cookie(name)) if !is_token(name) => self.error(
                format!("{base}.hash_on"),
                format!("invalid name {} (not an HTTP token)", quoted(name)),
            ),
            _ => {}
        }
    }

    fn targets(&mut self, base: &str, up: &Upstream) {
        if up.targets.is_empty() {
            self.error(format!("{base}.targets"), "at least one target is required");
        }
        let mut seen: HashMap<(String, u16), usize> = HashMap::new();
        for (j, t) in up.targets.iter().enumerate() {
            let path = format!("{base}.targets[{j}]");
            match parse_target_address(&t.address) {
                Ok((host, port)) => {
                    let key = (canonical_host(&host), port);
                    if let Some(first) = seen.get(&key) {
                        self.error(
                            format!("{path}.address"),
                            format!(
                                "duplicate target {} (already listed as targets[{first}])",
                                quoted(&t.address)
                            ),
                        );
                    } else {
                        seen.insert(key, j);
                    }
                }
                Err(msg) => self.error(format!("{path}.address"), msg),
            }
            if !(1..=MAX_WEIGHT).contains(&t.weight) {
                self.error(
                    format!("{path}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT} (got {})", t.weight),
                );
            }
        }
    }
}

/// `parent.key`, or `parent` itself when the key is empty (an empty key has
/// no line of its own, and `parent.` reads like a typo).
fn child(parent: &str, key: &str) -> String {
    if key.is_empty() {
        parent.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "invalid address {}: expected ip:port, e.g. 0.0.0.0:8080 or [::1]:8080",
            quoted(s)
        )
    })
}

/// Parses a network written `ADDRESS/PREFIX` (IPv4 or IPv6) or a single
/// address, into the address and the prefix length. Bits of the address
/// past the prefix are ignored.
pub fn parse_cidr(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    let bad =
        || format!("invalid network {text:?} (expected e.g. 10.0.0.0/8, fd00::/8 or 192.0.2.1)");
    let (addr, prefix) = match text.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text.trim(), None),
    };
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if prefix > max {
        return Err(format!(
            "invalid network {text:?}: the prefix is at most /{max}"
        ));
    }
    Ok((addr, prefix))
}
