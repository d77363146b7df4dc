//! The HTTP/2 control-frame flood guard (SETTINGS and PING floods,
//! CVE-2019-9515 and CVE-2019-9512). `H2Guard` wraps an HTTP/2 client
//! connection's socket and reads the 9-byte header of every frame the client
//! sends as the bytes pass to hyper (no copy, no buffering of payloads). Each
//! SETTINGS or PING that is not an acknowledgement asks weir for an answer;
//! those are counted against a budget that grows with time, with the streams
//! the client opens and with the bytes weir sends it (a client receiving a
//! large response may probe the bandwidth with PINGs, as gRPC's does). A
//! client that spends more is cut off: GOAWAY(ENHANCE_YOUR_CALM) when it can
//! be written between two of hyper's frames without waiting, then the
//! connection is closed.
//!
//! Owns the frame scan and the budget. Must not change the bytes either way
//! (the one thing it writes is that last GOAWAY), nor decide anything about
//! streams: hyper's HTTP/2 server (the h2 crate) does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::observe::Metrics;

/// Control frames a client may send up front, whatever else it does. A
/// well-behaved client sends a handful: its SETTINGS, their changes, and
/// keep-alive or bandwidth PINGs.
const BURST: u64 = 500;
/// Further control frames allowed per second of the connection's life.
const PER_SECOND: u64 = 50;
/// Further control frames allowed per stream the client opens.
const PER_STREAM: u64 = 2;
/// Bytes weir sends per further control frame allowed.
const BYTES_PER_FRAME: u64 = 4096;

/// The client connection preface (RFC 9113 §3.4), not a frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The reason counted in `weir_downstream_rejected_total`.
pub(super) const REASON: &str = "h2_control_flood";

/// Finds frame headers in the bytes a client sends, across reads.
#[derive(Debug)]
struct FrameScan {
    /// Bytes still to pass before the next frame header: the preface, then
    /// each frame's payload.
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    /// Bytes of `header` received so far.
    have: usize,
}

impl FrameScan {
    fn new() -> Self {
        FrameScan {
            skip: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            have: 0,
        }
    }

    /// Feeds received bytes; calls `frame(type, flags, stream id)` for each
    /// complete frame header.
    fn feed(&mut self, mut data: &[u8], mut frame: impl FnMut(u8, u8, u32)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == FRAME_HEADER_LEN {
                self.have = 0;
                let h = self.header;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                frame(h[3], h[4], stream);
            }
        }
    }
}

/// The control-frame budget of one connection.
#[derive(Debug)]
struct Budget {
    start: Instant,
    /// Control frames received.
    spent: u64,
    /// What was allowed when last worked out; worked out again only when
    /// `spent` passes it, so a connection within it never reads the clock.
    allowed: u64,
    /// Streams the client has opened.
    streams: u64,
    /// Highest stream id the client has opened.
    last_stream: u32,
    /// Bytes written to the client.
    written: u64,
}

impl Budget {
    fn new() -> Self {
        Budget {
            start: Instant::now(),
            spent: 0,
            allowed: BURST,
            streams: 0,
            last_stream: 0,
            written: 0,
        }
    }

    /// Counts one frame; false once the client has spent its budget.
    fn admit(&mut self, kind: u8, flags: u8, stream: u32) -> bool {
        match kind {
            HEADERS if stream > self.last_stream => {
                self.last_stream = stream;
                self.streams += 1;
                true
            }
            SETTINGS | PING if flags & FLAG_ACK == 0 => {
                self.spent += 1;
                if self.spent <= self.allowed {
                    return true;
                }
                self.allowed = BURST
                    + PER_SECOND * self.start.elapsed().as_secs()
                    + PER_STREAM * self.streams
                    + self.written / BYTES_PER_FRAME;
                self.spent <= self.allowed
            }
            _ => true,
        }
    }
}

/// An HTTP/2 client connection's socket, with the control-frame budget.
#[derive(Debug)]
pub(super) struct H2Guard<S> {
    inner: S,
    scan: FrameScan,
    budget: Budget,
    metrics: Arc<Metrics>,
    /// Everything hyper wrote has been flushed: hyper writes whole frames
    /// before it flushes, so a frame written now starts on a frame boundary.
    flushed: bool,
    tripped: bool,
}

impl<S> H2Guard<S> {
    /// Wraps a connection whose first bytes are the client preface.
    pub(super) fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        H2Guard {
            inner,
            scan: FrameScan::new(),
            budget: Budget::new(),
            metrics,
            flushed: true,
            tripped: false,
        }
    }
}

fn flood() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 control frame flood",
    )
}

impl<S: AsyncWrite + Unpin> H2Guard<S> {
    /// Writes GOAWAY(ENHANCE_YOUR_CALM) if the socket takes all of it now,
    /// between two of hyper's frames; a client that reads nothing is closed
    /// without it.
    fn say_goaway(&mut self, cx: &mut Context<'_>, last_stream: u32) {
        if !self.flushed {
            return;
        }
        let mut frame = [0u8; FRAME_HEADER_LEN + 8];
        frame[2] = 8;
        frame[3] = GOAWAY;
        frame[9..13].copy_from_slice(&last_stream.to_be_bytes());
        frame[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        if let Poll::Ready(Ok(n)) = Pin::new(&mut self.inner).poll_write(cx, &frame) {
            if n == frame.len() {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(flood()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            // The last stream hyper may have acted on: none of the bytes
            // read now reaches it if they overspend.
            let delivered = this.budget.last_stream;
            let budget = &mut this.budget;
            let mut within = true;
            this.scan
                .feed(&buf.filled()[before..], |kind, flags, stream| {
                    within &= budget.admit(kind, flags, stream);
                });
            if !within {
                // None of these bytes reaches hyper.
                buf.set_filled(before);
                this.tripped = true;
                this.metrics.rejected(REASON);
                this.say_goaway(cx, delivered);
                return Poll::Ready(Err(flood()));
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(flood()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.budget.written += n as u64;
            this.flushed &= n == 0;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(flood()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.budget.written += n as u64;
            this.flushed &= n == 0;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.flushed = true;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend(std::iter::repeat_n(0xaa, len));
        v
    }

    #[test]
    fn frame_headers_are_found_across_any_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, 12));
        bytes.extend(frame(HEADERS, 0x4, 1, 30));
        bytes.extend(frame(PING, FLAG_ACK, 0, 8));
        bytes.extend(frame(0x0, 0x1, 1, 0));
        let want = vec![
            (SETTINGS, 0, 0),
            (HEADERS, 0x4, 1),
            (PING, FLAG_ACK, 0),
            (0, 1, 1),
        ];
        for chunk in [1, 2, 5, 9, 10, 17, bytes.len()] {
            let mut scan = FrameScan::new();
            let mut seen = Vec::new();
            for part in bytes.chunks(chunk) {
                scan.feed(part, |k, f, s| seen.push((k, f, s)));
            }
            assert_eq!(seen, want, "chunks of {chunk}");
        }
    }

    #[test]
    fn the_budget_counts_unacknowledged_settings_and_pings_only() {
        let mut b = Budget::new();
        for _ in 0..10_000 {
            assert!(b.admit(PING, FLAG_ACK, 0));
            assert!(b.admit(SETTINGS, FLAG_ACK, 0));
            assert!(b.admit(0x8, 0, 0));
        }
        for i in 0..BURST {
            assert!(b.admit(if i % 2 == 0 { PING } else { SETTINGS }, 0, 0));
        }
        assert!(!b.admit(PING, 0, 0));
    }

    #[test]
    fn streams_and_bytes_sent_raise_the_budget() {
        let mut b = Budget::new();
        for i in 0..100 {
            assert!(b.admit(HEADERS, 0x4, 1 + 2 * i));
        }
        // A HEADERS frame on a stream already open is not a new stream.
        assert!(b.admit(HEADERS, 0x5, 1));
        assert_eq!(b.streams, 100);
        assert_eq!(b.last_stream, 199);
        b.written = 100 * BYTES_PER_FRAME;
        for _ in 0..BURST + 100 * PER_STREAM + 100 {
            assert!(b.admit(PING, 0, 0));
        }
        assert!(!b.admit(PING, 0, 0));
    }
}
