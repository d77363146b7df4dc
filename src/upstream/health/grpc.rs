//! The gRPC health check: one `grpc.health.v1.Health/Check` call over
//! HTTP/2 (h2c, or h2 on a TLS upstream), as the gRPC health checking
//! protocol defines it. The target is healthy when the call ends with
//! `grpc-status: 0` and the answer's status is `SERVING`.
//!
//! The two messages are one field each, so they are encoded and decoded
//! here by hand rather than through generated code:
//! `HealthCheckRequest { string service = 1; }` and
//! `HealthCheckResponse { ServingStatus status = 1; }`.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{AbortOnDrop, Probed, CHECK_USER_AGENT, MAX_BODY};

/// The method every check calls.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// `ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Calls `Health/Check` for `service` on `stream`; Ok when it is serving.
pub(super) async fn check(
    addr: SocketAddr,
    stream: Probed,
    authority: &str,
    service: &str,
) -> Result<(), String> {
    let scheme = match stream {
        Probed::Plain(_) => "http",
        Probed::Tls(_) => "https",
    };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(CHECK_PATH)
        .build()
        .map_err(|e| format!("invalid check request: {e}"))?;
    let request = Request::post(uri)
        .version(http::Version::HTTP_2)
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .header(USER_AGENT, CHECK_USER_AGENT)
        .body(Full::new(request_message(service)))
        .map_err(|e| format!("invalid check request: {e}"))?;
    let (response, _conn) = match stream {
        Probed::Plain(s) => send(addr, TokioIo::new(s), request).await?,
        Probed::Tls(s) => send(addr, TokioIo::new(s), request).await?,
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!("status {}", response.status().as_u16()));
    }
    // A trailers-only answer (an error) carries the status in the head.
    if let Some(result) = grpc_status(response.headers()) {
        result?;
    }
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer failed: {e}"))?;
        match frame.into_data() {
            Ok(d) if data.len() + d.len() <= MAX_BODY => data.extend_from_slice(&d),
            Ok(_) => return Err("answer too large".to_owned()),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    match trailers.as_ref().and_then(grpc_status) {
        Some(result) => result?,
        None => return Err("the answer has no grpc-status".to_owned()),
    }
    match serving_status(data.freeze())? {
        SERVING => Ok(()),
        other => Err(format!("not serving ({})", status_name(other))),
    }
}

async fn send<I>(
    addr: SocketAddr,
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "health check connection ended");
        }
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok((response, conn))
}

/// `grpc-status` in `headers`: None when absent, Ok for 0, else why not.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), String>> {
    let status = headers.get("grpc-status")?;
    if status.as_bytes() == b"0" {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(Err(format!(
        "grpc-status {} {message}",
        String::from_utf8_lossy(status.as_bytes())
    )))
}

/// A length-prefixed `HealthCheckRequest`.
fn request_message(service: &str) -> Bytes {
    let mut message = BytesMut::with_capacity(service.len() + 16);
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited); proto3 omits "".
        message.put_u8(0x0a);
        prost::encoding::encode_varint(service.len() as u64, &mut message);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

/// The `status` of the one length-prefixed `HealthCheckResponse` in `data`.
fn serving_status(mut data: Bytes) -> Result<u64, String> {
    if data.len() < 5 {
        return Err("the answer has no message".to_owned());
    }
    if data.get_u8() != 0 {
        return Err("the answer is compressed".to_owned());
    }
    let len = data.get_u32() as usize;
    if data.len() < len {
        return Err("the answer's message is cut short".to_owned());
    }
    let mut message = data.split_to(len);
    let bad = |_| "the answer's message is not a HealthCheckResponse".to_owned();
    // proto3 leaves out a field at its default: no field 1 is UNKNOWN (0).
    let mut status = 0;
    while message.has_remaining() {
        let key = prost::encoding::decode_varint(&mut message).map_err(bad)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let v = prost::encoding::decode_varint(&mut message).map_err(bad)?;
                if field == 1 {
                    status = v;
                }
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if message.remaining() < n {
                    return Err("the answer's message is cut short".to_owned());
                }
                message.advance(n);
            }
            2 => {
                let n = prost::encoding::decode_varint(&mut message).map_err(bad)? as usize;
                if message.remaining() < n {
                    return Err("the answer's message is cut short".to_owned());
                }
                message.advance(n);
            }
            _ => return Err("the answer's message is not a HealthCheckResponse".to_owned()),
        }
    }
    Ok(status)
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Bytes {
        let mut b = vec![0u8];
        b.extend_from_slice(&(message.len() as u32).to_be_bytes());
        b.extend_from_slice(message);
        Bytes::from(b)
    }

    #[test]
    fn request_names_the_service_or_nothing() {
        assert_eq!(&request_message("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("a.B")[..],
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
    }

    #[test]
    fn response_status_is_read_past_unknown_fields() {
        assert_eq!(serving_status(framed(&[0x08, 1])), Ok(1));
        assert_eq!(serving_status(framed(&[])), Ok(0), "default is UNKNOWN");
        // field 2 (length-delimited, 2 bytes), then status NOT_SERVING.
        assert_eq!(serving_status(framed(&[0x12, 2, 7, 7, 0x08, 2])), Ok(2));
        assert!(serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 8])).is_err());
        assert!(serving_status(framed(&[0x12, 9])).is_err());
    }
}
