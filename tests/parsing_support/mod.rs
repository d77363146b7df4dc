//! Harness for the request-parsing corpus: a recording relay in front of an
//! echo upstream (every byte weir sends upstream is kept, every connection
//! counted), a raw-socket exchange that reports whether weir closed the
//! connection, and a hand-written HTTP/2 frame writer for the requests the
//! `h2` client refuses to send.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::Upstream;

/// A TCP relay in front of an echo upstream that records what weir sends.
pub struct Recorder {
    addr: SocketAddr,
    pub upstream: Upstream,
    connections: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Binds `127.0.0.1:0` and relays to a fresh echo upstream.
    pub async fn start() -> Recorder {
        let upstream = Upstream::echo().await;
        let target = upstream.addr();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (c, b) = (connections.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let Ok(up) = TcpStream::connect(target).await else {
                    continue;
                };
                let b = b.clone();
                tokio::spawn(async move {
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let inbound = async move {
                        let mut chunk = [0u8; 16 * 1024];
                        loop {
                            match dr.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                                    if uw.write_all(&chunk[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let outbound = async move {
                        let _ = tokio::io::copy(&mut ur, &mut dw).await;
                        let _ = dw.shutdown().await;
                    };
                    tokio::join!(inbound, outbound);
                });
            }
        });
        Recorder {
            addr,
            upstream,
            connections,
            bytes,
            task,
        }
    }

    /// The address weir forwards to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections weir opened to the upstream.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Bytes weir sent upstream so far.
    pub fn len(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }

    /// The bytes weir sent upstream from offset `from` on.
    pub fn since(&self, from: usize) -> Vec<u8> {
        self.bytes.lock().unwrap()[from..].to_vec()
    }
}

/// What one raw exchange produced.
#[derive(Debug)]
pub struct Exchange {
    /// Everything weir wrote back.
    pub bytes: Vec<u8>,
    /// Whether weir closed the connection (EOF or reset) within the bound.
    pub closed: bool,
}

impl Exchange {
    /// The status of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        crate::support::status_of(&self.bytes)
    }

    /// Every status line's code, in order (pipelined responses).
    pub fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.match_indices("HTTP/1.")
            .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    /// The first response's head, lower-cased.
    pub fn head(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).to_ascii_lowercase();
        text.split("\r\n\r\n").next().unwrap_or("").to_owned()
    }

    /// The text after the first response's head.
    pub fn body(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

/// Writes `request` on a new connection and reads until weir closes it or
/// `limit` passes; `limit` bounds how long a close may take.
pub async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Exchange {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to weir");
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let request = request.to_vec();
    // Write errors are ignored: weir may answer and close before it reads
    // everything. The write half stays open so that weir never sees an EOF
    // that would end the exchange for it.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    };
    writer.abort();
    Exchange { bytes, closed }
}

/// HTTP/2 frame types used by the hand-written frames.
pub mod frame {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;

    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
}

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 9-byte header then the payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal (no Huffman), length as a 7-bit prefix integer.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of "literal without indexing, new name" fields: any bytes,
/// in any order, uppercase or duplicated, exactly as given.
pub fn hpack_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_string(&mut out, name);
        hpack_string(&mut out, value);
    }
    out
}

/// The preface and an empty SETTINGS frame.
pub fn h2_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(h2_frame(frame::SETTINGS, 0, 0, &[]));
    out
}

/// A frame read back from weir.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Reads frames from an HTTP/2 connection.
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader { buf: Vec::new() }
    }

    /// The next frame, or None on EOF, reset or when `deadline` passes.
    pub async fn next<R: AsyncReadExt + Unpin>(
        &mut self,
        rd: &mut R,
        deadline: Instant,
    ) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(left, rd.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

/// The resident set size of this process (weir runs in it), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `:status` at the start of a response header block, for the forms a
/// server uses for it: an indexed static entry, or a literal with a static
/// name (plain or Huffman-coded digits).
pub fn h2_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let name = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&name) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = (len_byte & 0x7f) as usize;
    let value = block.get(2..2 + len)?;
    let text = if len_byte & 0x80 == 0 {
        String::from_utf8(value.to_vec()).ok()?
    } else {
        huffman_digits(value)?
    };
    text.parse().ok()
}

/// Decodes Huffman-coded decimal digits (RFC 7541 Appendix B: 0-2 have
/// 5-bit codes 00000-00010, 3-9 6-bit codes 011001-011111).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while out.len() < 3 {
        let take = |n: usize| -> Option<u8> {
            bits.get(i..i + n)
                .map(|s| s.iter().fold(0u8, |acc, b| acc << 1 | b))
        };
        let five = take(5)?;
        if five <= 2 {
            out.push((b'0' + five) as char);
            i += 5;
            continue;
        }
        let six = take(6)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push((b'3' + (six - 0b011001)) as char);
            i += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

/// How an HPACK field representation asks the decoder to treat its table
/// (RFC 7541 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackKind {
    /// An entry of the static or dynamic table.
    Indexed,
    /// A literal the decoder adds to its dynamic table.
    Incremental,
    /// A literal not added to the table.
    WithoutIndexing,
    /// A literal never to be added to any table, here or further on.
    NeverIndexed,
}

/// One field representation of a header block, read structurally: table
/// indexes and the raw (possibly Huffman-coded) bytes of literal strings.
#[derive(Debug)]
pub struct HpackField {
    pub kind: HpackKind,
    /// The table index of the field (`Indexed`) or of its name; 0 when the
    /// name is a literal.
    pub index: usize,
    /// The literal name, when there is one: (Huffman-coded, bytes).
    pub name: Option<(bool, Vec<u8>)>,
}

fn read_hpack_int(block: &[u8], at: &mut usize, prefix: u8) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let mut n = usize::from(*block.get(*at)?) & max;
    *at += 1;
    if n < max {
        return Some(n);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*at)?;
        *at += 1;
        n += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
        shift += 7;
    }
}

fn read_hpack_string(block: &[u8], at: &mut usize) -> Option<(bool, Vec<u8>)> {
    let huffman = *block.get(*at)? & 0x80 != 0;
    let len = read_hpack_int(block, at, 7)?;
    let bytes = block.get(*at..*at + len)?.to_vec();
    *at += len;
    Some((huffman, bytes))
}

/// The field representations of a header block, or None when it is not
/// well formed. Dynamic table size updates are skipped.
pub fn hpack_fields(block: &[u8]) -> Option<Vec<HpackField>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < block.len() {
        let first = block[at];
        let (kind, prefix) = if first & 0x80 != 0 {
            (HpackKind::Indexed, 7)
        } else if first & 0x40 != 0 {
            (HpackKind::Incremental, 6)
        } else if first & 0x20 != 0 {
            read_hpack_int(block, &mut at, 5)?;
            continue;
        } else if first & 0x10 != 0 {
            (HpackKind::NeverIndexed, 4)
        } else {
            (HpackKind::WithoutIndexing, 4)
        };
        let index = read_hpack_int(block, &mut at, prefix)?;
        let mut name = None;
        if kind != HpackKind::Indexed {
            if index == 0 {
                name = Some(read_hpack_string(block, &mut at)?);
            }
            read_hpack_string(block, &mut at)?;
        }
        out.push(HpackField { kind, index, name });
    }
    Some(out)
}
