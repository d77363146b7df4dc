//! The admin (operator) listener: liveness, readiness, metrics, and read-only
//! views of the effective configuration, routes and upstreams. It reads
//! through the shared `State` and never changes request-path state itself.

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
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
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
        })),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; try /healthz /ready /metrics /config /routes /upstreams /status\n",
        ),
    }
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
