//! The admin (operator) listener: liveness, readiness, metrics, read-only
//! views of the effective configuration, routes and upstreams, and the
//! operator actions: reload the configuration (through `reload`, the one
//! reload path) and drain a target. It reads through the shared `State`;
//! its only writes are a target's drain mark and asking for a reload.
//! With `admin.auth_token_file`, it also checks each request's bearer
//! token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::reload::ReloadError;
use crate::state::State;

/// How long requests in flight on the admin API may take to finish once it
/// stops (a reload that starts a binary upgrade answers within this).
const DRAIN: Duration = Duration::from_secs(10);

/// Serves the admin API until `stop` flips, then lets the requests in
/// flight finish (bounded by `DRAIN`) and closes idle connections. A
/// connection accepted just before the stop is served if its request
/// arrives within the proxy listeners' grace (`server::first_bytes`):
/// during a binary upgrade the socket never stops listening, so a client
/// cannot tell it reached the old process.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    token: Option<AdminToken>,
    mut stop: watch::Receiver<bool>,
) {
    let token = token.map(Arc::new);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => r,
        };
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let token = token.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            if !crate::server::first_bytes(&stream, stop.clone(), FIRST_REQUEST).await {
                return;
            }
            let service = service_fn(move |req| {
                let state = state.clone();
                let token = token.clone();
                async move {
                    if let Some(refused) = token.as_deref().and_then(|t| t.refuse(&req)) {
                        return Ok::<_, Infallible>(refused);
                    }
                    Ok::<_, Infallible>(answer(&state, &req).await)
                }
            });
            serve_connection(TokioIo::new(stream), service, stop).await;
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN, drained).await;
}

/// How long a new admin connection may take to send its first bytes.
const FIRST_REQUEST: Duration = Duration::from_secs(10);

/// Serves one connection until it ends; once `stop` flips, the request in
/// flight is answered and the connection closed.
async fn serve_connection<S>(io: TokioIo<TcpStream>, service: S, mut stop: watch::Receiver<bool>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    // Polled first: the request whose bytes have arrived is read, so that
    // the graceful shutdown below finishes it instead of closing an
    // unread connection.
    tokio::select! {
        biased;
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|stopping| *stopping) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The admin API's bearer token.
pub struct AdminToken(Vec<u8>);

/// Reads the token from `path`: the file's content without surrounding
/// whitespace (a trailing newline is usual). An empty token is refused.
pub fn read_token(path: &str) -> Result<AdminToken, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let token = text.trim_ascii();
    if token.is_empty() {
        return Err("the file holds no token".to_owned());
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".to_owned());
    }
    Ok(AdminToken(token.to_vec()))
}

impl AdminToken {
    /// The 401 answer for a request without the right token; None when it
    /// may go on. Liveness and readiness stay open: probes carry no token
    /// and learn nothing secret there.
    fn refuse(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        if matches!(req.uri().path(), "/healthz" | "/ready") {
            return None;
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        if given.is_some_and(|g| same(g, &self.0)) {
            return None;
        }
        let mut resp = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
        );
        Some(resp)
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares in time that depends only on the lengths, so that the answer
/// time does not tell how much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

async fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() == Method::POST {
        return action(state, path).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET for views, POST for /config/reload and target drains\n",
        );
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if state.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/config" => {
            json(&serde_json::to_value(&*state.snapshot.load().config).unwrap_or_default())
        }
        "/routes" => {
            let snap = state.snapshot.load();
            let routes: Vec<_> = snap.routes.routes().iter().map(|r| r.describe()).collect();
            json(&serde_json::Value::Array(routes))
        }
        "/upstreams" => {
            let snap = state.snapshot.load();
            let ups: Vec<_> = snap.upstreams.iter().map(|u| u.describe()).collect();
            json(&serde_json::Value::Array(ups))
        }
        "/status" => json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": state.started.elapsed().as_secs(),
            "ready": state.is_ready(),
            "draining": state.is_draining(),
            "connections": state.metrics.downstream_active(),
            "config_hash": &*state.snapshot.load().hash,
            "config_file": state.reloader.get().map(|r| r.path().display().to_string()),
        })),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; try /healthz /ready /metrics /config /routes /upstreams /status\n",
        ),
    }
}

/// `POST` endpoints: `/config/reload` and
/// `/upstreams/{name}/targets/{address}/drain` (or `/undrain`).
async fn action(state: &State, path: &str) -> Response<Full<Bytes>> {
    if path == "/config/reload" {
        let Some(reloader) = state.reloader.get() else {
            return with_status(
                StatusCode::CONFLICT,
                json(&serde_json::json!({
                    "result": "failure",
                    "errors": ["weir was not started from a configuration file: nothing to reload"],
                })),
            );
        };
        return match reloader.reload("admin").await {
            Ok(report) => json(&serde_json::json!({
                "result": match (report.upgraded_to, report.changes.is_empty()) {
                    (Some(_), _) => "upgraded",
                    (None, true) => "unchanged",
                    (None, false) => "success",
                },
                "hash": report.hash,
                "changes": report.changes,
                "pid": report.upgraded_to.unwrap_or_else(std::process::id),
            })),
            Err(e) => {
                let status = match e {
                    ReloadError::HandedOver(_) => StatusCode::CONFLICT,
                    ReloadError::Upgrade(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                with_status(
                    status,
                    json(&serde_json::json!({ "result": "failure", "errors": e.messages() })),
                )
            }
        };
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["upstreams", name, "targets", address, verb @ ("drain" | "undrain")] = parts[..] {
        let snapshot = state.snapshot.load();
        let Some(set) = snapshot.upstreams.iter().find(|u| &*u.name == name) else {
            return text(StatusCode::NOT_FOUND, "no such upstream\n");
        };
        let draining = verb == "drain";
        if !set.set_draining(address, draining) {
            return text(StatusCode::NOT_FOUND, "no such target in this upstream\n");
        }
        return json(&serde_json::json!({
            "upstream": name,
            "target": address,
            "draining": draining,
        }));
    }
    text(
        StatusCode::NOT_FOUND,
        "unknown admin action; try POST /config/reload or /upstreams/NAME/targets/ADDRESS/drain\n",
    )
}

fn with_status(status: StatusCode, mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
