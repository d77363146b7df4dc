//! Following WebSocket frame boundaries in a byte stream (RFC 6455 §5.2),
//! and building the close frame weir sends itself. Sans-io: no tokio, no
//! hyper; bytes in, positions out.
//!
//! Only frame headers are read (FIN, opcode, mask bit, payload length);
//! payloads are skipped by length, never inspected or unmasked. The relay
//! feeds every byte it forwards through a [`FrameTracker`], which is what
//! lets it put a close frame of its own between two frames, never inside
//! one.

/// The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte
/// masking key.
const MAX_HEADER: usize = 14;
/// Opcode of a close frame.
const OPCODE_CLOSE: u8 = 0x8;
/// A control frame's payload is at most this long (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Where a byte stream stands relative to WebSocket frames.
#[derive(Clone, Debug, Default)]
pub struct FrameTracker {
    /// Header bytes collected so far (`have` of them).
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    in_payload: bool,
    close_seen: bool,
    broken: bool,
}

/// The stream is not a sequence of WebSocket frames: boundaries can no
/// longer be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid WebSocket frame header: 64-bit payload length with the most significant bit set")]
pub struct FrameError;

impl FrameTracker {
    /// A tracker at the start of a stream (a frame boundary).
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows all of `data`.
    pub fn advance(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.consume(data, false).map(|_| ())
    }

    /// Follows `data` up to the end of the current frame and stops there.
    /// Returns how many bytes of `data` belong to the current frame: 0 at a
    /// boundary, `data.len()` when the frame goes on past `data`.
    pub fn advance_to_boundary(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        if self.at_boundary() {
            return Ok(0);
        }
        self.consume(data, true)
    }

    /// True between two frames (and at the start).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && !self.in_payload
    }

    /// True once the header of a close frame has gone by.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    fn consume(&mut self, data: &[u8], stop_at_boundary: bool) -> Result<usize, FrameError> {
        if self.broken {
            return Err(FrameError);
        }
        let mut used = 0;
        loop {
            if self.in_payload {
                let left = (data.len() - used) as u64;
                let take = self.remaining.min(left);
                used += take as usize;
                self.remaining -= take;
                if self.remaining > 0 {
                    return Ok(used);
                }
                self.in_payload = false;
                if stop_at_boundary {
                    return Ok(used);
                }
                continue;
            }
            if used == data.len() {
                return Ok(used);
            }
            let need = self.header_len();
            let take = (need - self.have).min(data.len() - used);
            self.header[self.have..self.have + take].copy_from_slice(&data[used..used + take]);
            self.have += take;
            used += take;
            // The first two bytes tell how long the header is.
            if self.have < self.header_len() {
                continue;
            }
            let len = self.payload_len()?;
            if self.header[0] & 0x0f == OPCODE_CLOSE {
                self.close_seen = true;
            }
            self.have = 0;
            self.remaining = len;
            self.in_payload = len > 0;
            if !self.in_payload && stop_at_boundary {
                return Ok(used);
            }
        }
    }

    /// Length of the current header, as far as the bytes collected tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let second = self.header[1];
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// The payload length of a complete header.
    fn payload_len(&mut self) -> Result<u64, FrameError> {
        let h = &self.header;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    self.broken = true;
                    return Err(FrameError);
                }
                len
            }
            n => u64::from(n),
        };
        Ok(len)
    }
}

/// Status code 1001: the endpoint is going away (RFC 6455 §7.4.1).
pub const GOING_AWAY: u16 = 1001;

/// A complete close frame with `code` and `reason` (cut to fit a control
/// frame), masked with `mask` when it goes to a server (a client's frames
/// must be masked, a server's must not, RFC 6455 §5.1).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let len = 2 + reason.len();
    let mut frame = Vec::with_capacity(2 + 4 + len);
    frame.push(0x80 | OPCODE_CLOSE);
    frame.push(if mask.is_some() { 0x80 } else { 0 } | len as u8);
    let start = match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.len()
        }
        None => frame.len(),
    };
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    if let Some(key) = mask {
        for (i, b) in frame[start..].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    frame
}

#[cfg(test)]
mod tests;
