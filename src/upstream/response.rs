//! The body of a target's response as the proxy streams it: read by weir's
//! own HTTP/1.1 codec, or by hyper (HTTP/2 targets and WebSocket
//! handshakes). One concrete enum, so the forward path has no trait object.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1::{self, Http1Conn};

/// A target's response body.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Read over an HTTP/1.1 connection by weir's codec.
    H1(h1::ResponseBody),
    /// Read by hyper.
    Hyper(Incoming),
}

impl UpstreamBody {
    /// The HTTP/1.1 connection under the body, when the body has ended and
    /// the connection can carry another request.
    pub fn take_reusable(&mut self) -> Option<Http1Conn> {
        match self {
            UpstreamBody::H1(b) => b.take_reusable(),
            UpstreamBody::Hyper(_) => None,
        }
    }

    /// hyper's body, when hyper read the response.
    pub fn into_hyper(self) -> Option<Incoming> {
        match self {
            UpstreamBody::Hyper(b) => Some(b),
            UpstreamBody::H1(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h1::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::Error>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(h1::Error::Hyper),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}
