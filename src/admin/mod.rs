//! The admin (operator) listener: liveness, readiness, metrics, read-only
//! views of the effective configuration, routes and upstreams, and the
//! operator actions: reload the configuration (through `reload`, the one
//! reload path) and drain a target. It reads through the shared `State`;
//! its only writes are a target's drain mark and asking for a reload.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::State;

/// Serves the admin API until `stop` flips.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
                "result": if report.changes.is_empty() { "unchanged" } else { "success" },
                "hash": report.hash,
                "changes": report.changes,
            })),
            Err(e) => with_status(
                StatusCode::UNPROCESSABLE_ENTITY,
                json(&serde_json::json!({ "result": "failure", "errors": e.messages() })),
            ),
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
