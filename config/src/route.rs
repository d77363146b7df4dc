//! Routes: how a request is matched, and what weir does with it once matched
//! (forward it to an upstream, or answer it directly).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{Fault, Mirror, RateLimit, Retry, Sticky, WeightedUpstream};
use crate::units::{ByteSize, Duration};

/// One route. Routes are tried in precedence order (see `docs/configuration.md`),
/// not in file order; file order only breaks ties.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in logs, metrics and `GET /routes`.
    pub name: String,
    /// What the request must look like. Absent = every request.
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    /// Name of the upstream to forward to. Exactly one of `upstream`,
    /// `upstreams` and `direct_response` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// A weighted split over several upstreams (canary releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<WeightedUpstream>>,
    /// Keeps a user on one side of `upstreams`: `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Answer locally instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Path rewrite applied before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Deadlines for this route.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Header edits on the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Header edits on the response sent to the client.
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// Retries of failed tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Injected delays and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Copies of requests sent to a shadow upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Largest request body on this route; larger gets 413. Absent = the
    /// top-level `limits.max_request_body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// Whether an HTTP/1.1 WebSocket upgrade (`Upgrade: websocket`) is
    /// proxied on this route. When true, the handshake goes to the upstream
    /// and, once it answers `101 Switching Protocols`, frames stream both
    /// ways until either side closes. When false, such a request is refused
    /// with 403 `websocket_not_allowed` (as Envoy refuses an upgrade a route
    /// does not enable). Plain requests are not affected. Default `true`.
    #[serde(default = "default_websocket")]
    pub websocket: bool,
    /// Closes a WebSocket through which no byte has passed, in either
    /// direction, for this long: both sides get a close frame with code 1001
    /// (going away). Pings and pongs count as traffic. Absent = no limit: a
    /// silent connection stays open until a side closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_idle_timeout: Option<Duration>,
    /// Translates gRPC-Web (`application/grpc-web`, `application/grpc-web-text`)
    /// from browsers into gRPC towards the upstream, which must speak
    /// HTTP/2 (`protocol: h2c` or `h2`), and the answers back, trailers
    /// included. Default false: gRPC-Web requests are forwarded as they
    /// are.
    #[serde(default)]
    pub grpc_web: bool,
    /// Answers browsers' CORS preflight requests and marks responses for
    /// allowed origins. Absent = weir leaves CORS to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::Cors>,
}

fn default_websocket() -> bool {
    true
}

/// Match conditions; all present conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact host (`api.example.com`) or a wildcard (`*.example.com`, which
    /// matches any non-empty label sequence before `.example.com`). The port of
    /// the `Host` header is ignored; comparison is case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exact path (query excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix. A prefix ending in `/` matches any path that starts with it;
    /// otherwise it matches the path itself or the path followed by `/...`, so
    /// `/api` matches `/api` and `/api/x` but not `/apix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Regular expression that must match the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Allowed methods (upper case). Absent = any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Request headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// The verified client certificate (mutual TLS on the listener). A
    /// request that matches every other condition of the route but not
    /// this one, and no other route, gets `403 client_cert_forbidden`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<crate::ClientCertMatch>,
    /// A gRPC service and method: the same as the path gRPC sends them in
    /// (`/SERVICE/METHOD`, or the prefix `/SERVICE/`). Cannot be combined
    /// with `path`, `path_prefix` or `path_regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<crate::GrpcMatch>,
}

/// A response weir writes itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// HTTP status code (200-599).
    pub status: u16,
    /// Response body. Default empty.
    #[serde(default)]
    pub body: String,
    /// Response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Path rewriting.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path matched by `match.path_prefix`.
    pub path_prefix: String,
}

/// Per-route deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Time allowed to open a TCP connection to a target. Default `5s`.
    #[serde(default = "default_connect")]
    pub connect: Duration,
    /// Deadline for the whole response, from the request's arrival to the last
    /// byte of the response body. `0s` disables it. Default `60s`.
    #[serde(default = "default_request")]
    pub request: Duration,
    /// Deadline of each try when the route retries; also the default of
    /// `retry.per_try_timeout`. Absent = each try may use the whole `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
    /// Longest silence while the response streams: when no byte arrives from
    /// the target for this long, the exchange is cut. Absent = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            request: default_request(),
            per_try: None,
            idle: None,
        }
    }
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}

fn default_request() -> Duration {
    Duration::from_secs(60)
}

/// Header edits. Applied in the order remove, set, add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to set, replacing any existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}
