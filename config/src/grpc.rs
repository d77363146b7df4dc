//! gRPC and browser settings of a route: the `match.grpc` condition (a
//! service and method, compiled to the path gRPC puts them in) and the
//! `cors` block that answers browsers' preflight requests (needed by
//! gRPC-Web clients, usable on any route).

use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// `match.grpc`: the gRPC service (and optionally method) of a request.
/// gRPC sends a call to `POST /SERVICE/METHOD`, so this is the same
/// condition as `path: /SERVICE/METHOD`, or `path_prefix: /SERVICE/` when
/// `method` is absent, with the same precedence.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    /// Fully qualified service name, package included: `shop.v1.Orders`.
    pub service: String,
    /// Method name (`Get`). Absent = every method of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl GrpcMatch {
    /// The path this condition stands for: `/SERVICE/METHOD` (an exact
    /// path) or `/SERVICE/` (a prefix) without a method.
    pub fn path(&self) -> String {
        match &self.method {
            Some(m) => format!("/{}/{m}", self.service),
            None => format!("/{}/", self.service),
        }
    }

    /// True when the condition is a prefix (no `method`).
    pub fn is_prefix(&self) -> bool {
        self.method.is_none()
    }
}

/// Cross-origin resource sharing for browsers (the Fetch standard's CORS
/// protocol). weir answers preflight requests (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) itself, and adds
/// `Access-Control-Allow-Origin` and `Access-Control-Expose-Headers` to the
/// responses of requests from an allowed origin.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed, as browsers send them (`https://app.example.com`,
    /// scheme and host, port when not the default), or `"*"` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows. Default `[GET, HEAD, POST]`.
    #[serde(default = "default_allow_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows; `"*"` allows whatever the
    /// browser asks for. On a `grpc_web` route, `content-type`,
    /// `x-grpc-web`, `x-user-agent` and `grpc-timeout` are always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers a page may read. On a `grpc_web` route,
    /// `grpc-status`, `grpc-message` and `grpc-status-details-bin` are
    /// always exposed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer
    /// (`Access-Control-Max-Age`, whole seconds). Absent = the browser's
    /// default (5 s in most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether requests with credentials (cookies, HTTP authentication) are
    /// allowed (`Access-Control-Allow-Credentials: true`). Cannot be
    /// combined with the `"*"` origin. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_allow_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(str::to_owned).to_vec()
}
