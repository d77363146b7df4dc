//! CORS (the Fetch standard's cross-origin protocol) for a route with a
//! `cors` block: which origins may call it, the answer to a browser's
//! preflight request, and the headers that let a page read a response.
//!
//! Sans-io like the rest of the router: it reads request headers and writes
//! response headers; the proxy decides when to ask and sends the answer.

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::Method;

use super::RouterError;

/// Request headers a gRPC-Web client sends besides the CORS-safelisted
/// ones, always allowed on a `grpc_web` route.
const GRPC_WEB_REQUEST_HEADERS: [&str; 4] =
    ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"];
/// Response headers a gRPC-Web client must read (a trailers-only answer
/// carries the status in them), always exposed on a `grpc_web` route.
const GRPC_WEB_RESPONSE_HEADERS: [&str; 3] =
    ["grpc-status", "grpc-message", "grpc-status-details-bin"];

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const ORIGIN_VARY: HeaderValue = HeaderValue::from_static("origin");

/// A route's compiled `cors` block.
#[derive(Debug)]
pub struct Cors {
    /// None: any origin (`"*"`).
    origins: Option<Box<[HeaderValue]>>,
    methods: HeaderValue,
    /// None: whatever the preflight asks for (`"*"`).
    request_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

impl Cors {
    /// Compiles `cfg` for `route`; `grpc_web` adds the headers gRPC-Web
    /// clients need.
    pub(super) fn compile(
        route: &str,
        cfg: &weir_config::Cors,
        grpc_web: bool,
    ) -> Result<Cors, RouterError> {
        let invalid = |what: &str| RouterError::InvalidCors {
            route: route.to_owned(),
            what: what.to_owned(),
        };
        let origins = if cfg.allow_origins.iter().any(|o| o == "*") {
            None
        } else {
            Some(
                cfg.allow_origins
                    .iter()
                    .map(|o| HeaderValue::from_str(o).map_err(|_| invalid(o)))
                    .collect::<Result<_, _>>()?,
            )
        };
        let join = |names: Vec<&str>| -> Result<Option<HeaderValue>, RouterError> {
            if names.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&names.join(", "))
                .map(Some)
                .map_err(|_| invalid(&names.join(", ")))
        };
        let methods = join(cfg.allow_methods.iter().map(String::as_str).collect())?
            .unwrap_or(HeaderValue::from_static("GET, HEAD, POST"));
        let request_headers = if cfg.allow_headers.iter().any(|h| h == "*") {
            None
        } else {
            let mut names: Vec<&str> = cfg.allow_headers.iter().map(String::as_str).collect();
            if grpc_web {
                names.extend(GRPC_WEB_REQUEST_HEADERS);
            }
            Some(join(dedup(names))?.unwrap_or(HeaderValue::from_static("")))
        };
        let mut exposed: Vec<&str> = cfg.expose_headers.iter().map(String::as_str).collect();
        if grpc_web {
            exposed.extend(GRPC_WEB_RESPONSE_HEADERS);
        }
        Ok(Cors {
            origins,
            methods,
            request_headers,
            expose_headers: join(dedup(exposed))?,
            max_age: cfg.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
            credentials: cfg.allow_credentials,
        })
    }

    /// True for a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The request's `Origin` when this route allows it; None when the
    /// request has none (not a cross-origin request) or it is not allowed.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        match &self.origins {
            None => Some(origin.clone()),
            // Origins are compared as sent: browsers serialize them in one
            // canonical form (lower-case scheme and host, no default port).
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// The headers of the answer to a preflight from `origin` (allowed).
    pub fn preflight(&self, origin: HeaderValue, request: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(7);
        self.allow_origin(origin, &mut out);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        match &self.request_headers {
            Some(list) if !list.is_empty() => {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, list.clone());
            }
            Some(_) => {}
            None => {
                if let Some(asked) = request.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                    out.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
                }
            }
        }
        if let Some(age) = &self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        out
    }

    /// Marks the response to a request from `origin` (allowed) as
    /// readable by the page, with the exposed headers.
    pub fn apply(&self, origin: HeaderValue, headers: &mut HeaderMap) {
        self.allow_origin(origin, headers);
        if let Some(exposed) = &self.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
    }

    fn allow_origin(&self, origin: HeaderValue, headers: &mut HeaderMap) {
        if self.origins.is_none() && !self.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
            return;
        }
        // The answer depends on the Origin: shared caches must key on it.
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(VARY, ORIGIN_VARY);
        if self.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
    }
}

/// `names` without repeats (case-insensitive), first spelling kept.
fn dedup(names: Vec<&str>) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(names.len());
    for n in names {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str, grpc_web: bool) -> Cors {
        let cfg: weir_config::Cors = serde_json::from_str(yaml).unwrap();
        Cors::compile("r", &cfg, grpc_web).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn listed_origins_are_echoed_with_vary() {
        let c = cors(
            r#"{"allow_origins": ["https://app.example.com"], "max_age": "10m"}"#,
            true,
        );
        let req = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &req));
        assert!(!Cors::is_preflight(&Method::POST, &req));
        let origin = c.allowed_origin(&req).expect("allowed");
        let out = c.preflight(origin, &req);
        assert_eq!(
            out["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(out["vary"], "origin");
        assert_eq!(out["access-control-allow-methods"], "GET, HEAD, POST");
        assert_eq!(
            out["access-control-allow-headers"],
            "content-type, x-grpc-web, x-user-agent, grpc-timeout"
        );
        assert_eq!(out["access-control-max-age"], "600");
        let other = headers(&[("origin", "https://evil.example")]);
        assert!(c.allowed_origin(&other).is_none());
        assert!(c.allowed_origin(&HeaderMap::new()).is_none());

        let mut resp = HeaderMap::new();
        c.apply(
            HeaderValue::from_static("https://app.example.com"),
            &mut resp,
        );
        assert_eq!(
            resp["access-control-expose-headers"],
            "grpc-status, grpc-message, grpc-status-details-bin"
        );
    }

    #[test]
    fn any_origin_answers_star_and_reflects_asked_headers() {
        let c = cors(
            r#"{"allow_origins": ["*"], "allow_headers": ["*"], "expose_headers": ["x-a", "X-A"]}"#,
            false,
        );
        let req = headers(&[
            ("origin", "https://x.example"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-b, x-c"),
        ]);
        let out = c.preflight(c.allowed_origin(&req).unwrap(), &req);
        assert_eq!(out["access-control-allow-origin"], "*");
        assert!(
            out.get("vary").is_none(),
            "the same answer for every origin"
        );
        assert_eq!(out["access-control-allow-headers"], "x-b, x-c");
        let mut resp = HeaderMap::new();
        c.apply(HeaderValue::from_static("https://x.example"), &mut resp);
        assert_eq!(resp["access-control-expose-headers"], "x-a");
    }

    #[test]
    fn credentials_are_allowed_only_for_a_named_origin() {
        let c = cors(
            r#"{"allow_origins": ["https://a.example"], "allow_credentials": true}"#,
            false,
        );
        let mut resp = HeaderMap::new();
        c.apply(HeaderValue::from_static("https://a.example"), &mut resp);
        assert_eq!(resp["access-control-allow-origin"], "https://a.example");
        assert_eq!(resp["access-control-allow-credentials"], "true");
    }
}
