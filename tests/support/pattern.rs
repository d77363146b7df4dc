//! Deterministic large bodies, generated on the fly and verified at memcmp
//! speed (a per-byte checksum loop runs at ~250 MiB/s in a debug build, far too
//! slow for a GiB in both directions).
//!
//! Byte `i` of every pattern stream is `PATTERN[i % PERIOD]`. The period is a
//! prime, so it never lines up with chunk or frame sizes: a dropped, repeated or
//! reordered chunk shifts every later byte and is detected.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;

/// Length of the repeating pattern (prime).
pub const PERIOD: usize = 65_521;
/// Largest chunk a pattern body yields.
pub const CHUNK: usize = 128 * 1024;

/// The pattern followed by enough of its own repetition to cut any chunk of
/// up to `CHUNK` bytes starting anywhere in the period, so chunks are
/// zero-copy slices.
fn buffer() -> &'static Bytes {
    static BUF: OnceLock<Bytes> = OnceLock::new();
    BUF.get_or_init(|| {
        let mut period = Vec::with_capacity(PERIOD);
        let mut x: u32 = 0x9E37_79B9;
        for _ in 0..PERIOD {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            period.push((x >> 24) as u8);
        }
        let mut buf = Vec::with_capacity(PERIOD + CHUNK);
        while buf.len() < PERIOD + CHUNK {
            let take = (PERIOD + CHUNK - buf.len()).min(PERIOD);
            buf.extend_from_slice(&period[..take]);
        }
        Bytes::from(buf)
    })
}

/// `len` (<= CHUNK) pattern bytes starting at stream offset `pos`.
pub fn chunk(pos: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK);
    let off = (pos % PERIOD as u64) as usize;
    buffer().slice(off..off + len)
}

/// The first `len` pattern bytes, in memory (for small bodies).
pub fn bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut pos = 0u64;
    while out.len() < len {
        let n = (len - out.len()).min(CHUNK);
        out.extend_from_slice(&chunk(pos, n));
        pos += n as u64;
    }
    out
}

/// Verifies that a stream, fed in arbitrary pieces, is the pattern.
#[derive(Debug, Default, Clone)]
pub struct PatternCheck {
    len: u64,
    first_mismatch: Option<u64>,
}

impl PatternCheck {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let pattern = buffer();
        while !data.is_empty() {
            let off = (self.len % PERIOD as u64) as usize;
            let n = data.len().min(PERIOD - off);
            if self.first_mismatch.is_none() && data[..n] != pattern[off..off + n] {
                let i = (0..n).find(|&i| data[i] != pattern[off + i]).unwrap_or(0);
                self.first_mismatch = Some(self.len + i as u64);
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Offset of the first byte that differs from the pattern.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }

    /// True when every byte seen so far matched.
    pub fn ok(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

/// A body of `len` pattern bytes, generated as it is polled. With `exact`
/// it announces its length (Content-Length); otherwise it is sent chunked.
#[derive(Debug)]
pub struct PatternBody {
    pos: u64,
    end: u64,
    exact: bool,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody {
            pos: 0,
            end: len,
            exact: true,
        }
    }

    pub fn chunked(len: u64) -> Self {
        PatternBody {
            exact: false,
            ..Self::new(len)
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        let n = ((this.end - this.pos) as usize).min(CHUNK);
        let data = chunk(this.pos, n);
        this.pos += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.end - self.pos)
        } else {
            SizeHint::default()
        }
    }
}

/// FNV-1a 64, for small bodies.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
