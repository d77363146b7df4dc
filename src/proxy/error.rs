//! `ProxyError`: every way a request can fail inside weir, with who caused it
//! and the one status and stable code the client sees. All mapping from a
//! failure to a response happens here and in `respond.rs`, nowhere else:
//! the HTTP status and code here, and for a gRPC call the gRPC status
//! (`grpc_status`, the table in `docs/protocols.md`).

use http::StatusCode;

use super::grpc::code;

/// Code of the refusal of a WebSocket upgrade on a route that does not
/// allow it (counted apart in `weir_websocket_upgrades_total`).
pub const WEBSOCKET_NOT_ALLOWED: &str = "websocket_not_allowed";

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client sent something weir will not forward.
    Downstream,
    /// The configuration has no answer for the request.
    Config,
    /// A target failed or was unreachable.
    Upstream,
}

/// A failure that ends a request with an error response.
#[derive(Debug)]
pub struct ProxyError {
    /// Stable machine-readable code (`docs/errors.md`).
    pub code: &'static str,
    /// HTTP status sent.
    pub status: StatusCode,
    /// Who caused it.
    pub source: Source,
    /// Human-readable explanation for this occurrence.
    pub detail: String,
}

impl ProxyError {
    fn new(code: &'static str, status: StatusCode, source: Source, detail: String) -> Self {
        ProxyError {
            code,
            status,
            source,
            detail,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            "bad_request",
            StatusCode::BAD_REQUEST,
            Source::Downstream,
            detail.into(),
        )
    }

    /// 414: the request line is longer than `limits.max_request_line`.
    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            "uri_too_long",
            StatusCode::URI_TOO_LONG,
            Source::Downstream,
            format!("the request line is longer than {limit} bytes"),
        )
    }

    /// 431: a header line is longer than `limits.max_header_field`.
    pub fn header_too_large(limit: usize) -> Self {
        Self::new(
            "header_too_large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Source::Downstream,
            format!("a header line is longer than {limit} bytes"),
        )
    }

    /// 413: the request body is larger than the route allows.
    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            "body_too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            Source::Downstream,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 408: the client stopped sending its body for `limits.body_idle_timeout`.
    pub fn body_idle_timeout(idle: std::time::Duration) -> Self {
        Self::new(
            "body_idle_timeout",
            StatusCode::REQUEST_TIMEOUT,
            Source::Downstream,
            format!("no request body byte arrived for {idle:?}"),
        )
    }

    /// 408: a request head was begun but not completed within
    /// `limits.header_read_timeout`.
    pub fn header_read_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            "header_read_timeout",
            StatusCode::REQUEST_TIMEOUT,
            Source::Downstream,
            format!("the request head did not arrive within {timeout:?}"),
        )
    }

    /// 404: no route matches.
    pub fn route_not_found(method: &str, host: &str, path: &str) -> Self {
        Self::new(
            "route_not_found",
            StatusCode::NOT_FOUND,
            Source::Config,
            format!("no route matches {method} {path} for host {host:?}"),
        )
    }

    /// 403: a route matches, but the client certificate is not one it
    /// allows (or there is none).
    pub fn client_cert_forbidden(method: &str, path: &str) -> Self {
        Self::new(
            "client_cert_forbidden",
            StatusCode::FORBIDDEN,
            Source::Downstream,
            format!("the client certificate is not allowed to {method} {path}"),
        )
    }

    /// 501: a method weir does not proxy.
    pub fn not_implemented(detail: impl Into<String>) -> Self {
        Self::new(
            "not_implemented",
            StatusCode::NOT_IMPLEMENTED,
            Source::Downstream,
            detail.into(),
        )
    }

    /// 502: no connection could be opened to the target.
    pub fn connect_failed(detail: impl Into<String>) -> Self {
        Self::new(
            "upstream_connect_failed",
            StatusCode::BAD_GATEWAY,
            Source::Upstream,
            detail.into(),
        )
    }

    /// 502: the target closed or reset the connection before a full response.
    pub fn reset(detail: impl Into<String>) -> Self {
        Self::new(
            "upstream_reset",
            StatusCode::BAD_GATEWAY,
            Source::Upstream,
            detail.into(),
        )
    }

    /// 504: the route's deadline passed.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(
            "upstream_timeout",
            StatusCode::GATEWAY_TIMEOUT,
            Source::Upstream,
            detail.into(),
        )
    }

    /// 503: no target can take the request.
    pub fn no_healthy_upstream(upstream: &str) -> Self {
        Self::new(
            "no_healthy_upstream",
            StatusCode::SERVICE_UNAVAILABLE,
            Source::Upstream,
            format!("upstream {upstream:?} has no available target"),
        )
    }

    /// 503: no target can take the request, with a specific reason.
    pub fn no_healthy_upstream_detail(detail: String) -> Self {
        Self::new(
            "no_healthy_upstream",
            StatusCode::SERVICE_UNAVAILABLE,
            Source::Upstream,
            detail,
        )
    }

    /// 429: a rate limit refused the request.
    pub fn rate_limited(detail: impl Into<String>) -> Self {
        Self::new(
            "rate_limited",
            StatusCode::TOO_MANY_REQUESTS,
            Source::Downstream,
            detail.into(),
        )
    }

    /// 503: the upstream's circuit breaker is at one of its limits.
    pub fn circuit_open(upstream: &str, limit: &str) -> Self {
        Self::new(
            "circuit_open",
            StatusCode::SERVICE_UNAVAILABLE,
            Source::Upstream,
            format!("upstream {upstream:?} is at its {limit} limit; the request was not queued"),
        )
    }

    /// The route's fault injection answered with `status` on purpose.
    pub fn fault_injected(status: StatusCode) -> Self {
        Self::new(
            "fault_injected",
            status,
            Source::Config,
            "fault injection is enabled on this route and aborted the request".to_owned(),
        )
    }

    /// 403: a WebSocket upgrade on a route with `websocket: false`.
    pub fn websocket_not_allowed(route: &str) -> Self {
        Self::new(
            WEBSOCKET_NOT_ALLOWED,
            StatusCode::FORBIDDEN,
            Source::Config,
            format!("route {route:?} does not allow WebSocket upgrades (websocket: false)"),
        )
    }

    /// 501: a WebSocket upgrade to an upstream that cannot take one.
    pub fn websocket_unsupported(upstream: &str) -> Self {
        Self::new(
            "websocket_unsupported",
            StatusCode::NOT_IMPLEMENTED,
            Source::Config,
            format!(
                "upstream {upstream:?} speaks h2c; a WebSocket upgrade needs an HTTP/1.1 upstream"
            ),
        )
    }

    /// 403: a CORS preflight from an origin the route does not allow.
    pub fn cors_origin_not_allowed(route: &str) -> Self {
        Self::new(
            "cors_origin_not_allowed",
            StatusCode::FORBIDDEN,
            Source::Downstream,
            format!("route {route:?} does not allow this Origin (cors.allow_origins)"),
        )
    }

    /// The gRPC status a gRPC call that fails this way ends with.
    pub fn grpc_status(&self) -> u16 {
        grpc_status(self.code, self.status)
    }

    /// Short title for the status/code pair.
    pub fn title(&self) -> &'static str {
        match self.code {
            "bad_request" => "Bad request",
            "route_not_found" => "No route for this request",
            "client_cert_forbidden" => "Client certificate not allowed",
            "not_implemented" => "Not implemented",
            "upstream_connect_failed" => "Could not connect to the upstream",
            "upstream_reset" => "The upstream closed the connection",
            "upstream_timeout" => "The upstream did not answer in time",
            "no_healthy_upstream" => "No upstream target available",
            "rate_limited" => "Too many requests",
            "circuit_open" => "The upstream is at capacity",
            "fault_injected" => "Injected fault",
            WEBSOCKET_NOT_ALLOWED => "WebSocket not allowed on this route",
            "websocket_unsupported" => "The upstream cannot take a WebSocket",
            "cors_origin_not_allowed" => "Origin not allowed",
            "uri_too_long" => "Request line too long",
            "header_too_large" => "Request header too large",
            "body_too_large" => "Request body too large",
            "body_idle_timeout" => "Request body too slow",
            "header_read_timeout" => "Request head too slow",
            _ => "Gateway error",
        }
    }
}

/// The gRPC status for weir's error `code` (sent with HTTP `status` to
/// other clients). The one place this mapping is decided; keep the table in
/// `docs/protocols.md` in step.
pub fn grpc_status(code: &str, status: StatusCode) -> u16 {
    match code {
        "route_not_found" | "not_implemented" | "websocket_unsupported" => code::UNIMPLEMENTED,
        "bad_request" => code::INTERNAL,
        "client_cert_forbidden" | "cors_origin_not_allowed" | WEBSOCKET_NOT_ALLOWED => {
            code::PERMISSION_DENIED
        }
        "upstream_timeout" | "body_idle_timeout" => code::DEADLINE_EXCEEDED,
        "rate_limited" | "body_too_large" | "header_too_large" | "uri_too_long" => {
            code::RESOURCE_EXHAUSTED
        }
        "upstream_connect_failed"
        | "upstream_reset"
        | "upstream_idle_timeout"
        | "no_healthy_upstream"
        | "circuit_open" => code::UNAVAILABLE,
        // `fault_injected` and anything new: what a gRPC client makes of
        // the HTTP status.
        _ => grpc_status_of_http(status),
    }
}

/// The gRPC specification's mapping of an HTTP status to the gRPC status
/// a client reports when a response carries no `grpc-status`.
pub fn grpc_status_of_http(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}
