//! Local responses: RFC 9457 problem documents for errors, gRPC
//! trailers-only answers for errors on gRPC calls, and configured direct
//! responses.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::Response;

use super::body::ResponseBody;
use super::error::ProxyError;
use super::grpc::{self, GrpcKind};
use crate::router::DirectReply;

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The problem+json response for an error.
pub fn problem(err: &ProxyError, request_id: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "type": format!("urn:weir:error:{}", err.code),
        "title": err.title(),
        "status": err.status.as_u16(),
        "detail": err.detail,
        "code": err.code,
        "request_id": request_id,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(ResponseBody::full(Bytes::from(bytes)));
    *resp.status_mut() = err.status;
    resp.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    resp
}

/// A whole HTTP/1.1 response, as bytes, for an error that happens before
/// hyper has a request to hand over (the request head timed out): written
/// by the connection's I/O wrapper itself, then the connection is closed.
/// There is no request id to report.
pub fn http1_bytes(err: &ProxyError) -> Bytes {
    let body = serde_json::json!({
        "type": format!("urn:weir:error:{}", err.code),
        "title": err.title(),
        "status": err.status.as_u16(),
        "detail": err.detail,
        "code": err.code,
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The gRPC answer for an error: HTTP 200 whose head carries
/// `grpc-status` and `grpc-message` and ends the call (a "trailers-only"
/// response), as gRPC and gRPC-Web clients expect; the message is the
/// error's code and detail.
pub fn grpc_error(err: &ProxyError, kind: GrpcKind) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, kind.content_type());
    let message = format!("{}: {}", err.code, err.detail);
    grpc::status_headers(headers, err.grpc_status(), &message);
    resp
}

/// A configured direct response.
pub fn direct(reply: &DirectReply) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(reply.body.clone()));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers.clone();
    resp
}
