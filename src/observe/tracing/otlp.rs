//! The OTLP protobuf wire format of an export, written straight from
//! weir's [`FinishedSpan`]s, and the one field of the collector's answer
//! weir reads.
//!
//! Building the generated OTLP message structs first (one `String` per
//! attribute, then prost measuring every nested message again at each
//! level) cost more than the rest of a sampled request; this writes each
//! span once into a reused buffer. Field numbers are those of
//! `opentelemetry/proto/collector/trace/v1` and `trace/v1`; the tests decode
//! the output with the generated types.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{AttributeValue, FinishedSpan, SpanKind, SpanStatus};

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

// `Span.flags` bits (`SpanFlags`).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
// `Span.kind` and `Status.code` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

/// Encodes export requests; keeps its buffers between batches.
#[derive(Debug)]
pub(super) struct Encoder {
    /// `ResourceSpans.resource` and `ScopeSpans.scope`, encoded once.
    resource: Vec<u8>,
    scope: Vec<u8>,
    header: Vec<u8>,
    span: Vec<u8>,
    /// The size of the last request, to allocate the next one at once.
    last_len: usize,
}

impl Encoder {
    /// An encoder for a service called `service_name`.
    pub(super) fn new(service_name: &str, version: &str) -> Encoder {
        let mut attributes = Vec::new();
        key_value(
            &mut attributes,
            1,
            "service.name",
            &AttributeValue::Str(service_name.to_owned().into()),
        );
        key_value(
            &mut attributes,
            1,
            "service.version",
            &AttributeValue::Str(version.to_owned().into()),
        );
        let mut scope = Vec::new();
        string(&mut scope, 1, "weir");
        string(&mut scope, 2, version);
        Encoder {
            resource: attributes,
            scope,
            header: Vec::with_capacity(HEADER_ROOM),
            span: Vec::with_capacity(1024),
            last_len: 0,
        }
    }

    /// One `ExportTraceServiceRequest` carrying `spans`.
    pub(super) fn encode(&mut self, spans: impl Iterator<Item = FinishedSpan>) -> Bytes {
        // The spans are written after room for the request's header, which
        // needs their total length and goes in last. Each span is written
        // to a scratch buffer first and copied behind its length: measuring
        // a span up front costs more than copying it.
        let header_room = HEADER_ROOM + self.resource.len() + self.scope.len();
        let mut out = Vec::with_capacity(header_room + self.last_len);
        out.resize(header_room, 0);
        for span in spans {
            self.span.clear();
            write_span(&mut self.span, &span);
            message(&mut out, 2, &self.span);
        }
        self.last_len = out.len();
        let spans_len = out.len() - header_room;
        // ScopeSpans { scope = 1, spans = 2 }
        let scope_spans_len = len_field_size(1, self.scope.len()) + spans_len;
        // ResourceSpans { resource = 1, scope_spans = 2 }
        let resource_spans_len =
            len_field_size(1, self.resource.len()) + len_field_size(2, scope_spans_len);
        let header = &mut self.header;
        header.clear();
        // ExportTraceServiceRequest { resource_spans = 1 }
        key(header, 1, LEN);
        varint(header, resource_spans_len as u64);
        message(header, 1, &self.resource);
        key(header, 2, LEN);
        varint(header, scope_spans_len as u64);
        message(header, 1, &self.scope);
        let start = header_room - header.len();
        out[start..header_room].copy_from_slice(header);
        Bytes::from(out).slice(start..)
    }
}

/// Room for the request's own keys and lengths (three keys and three
/// varints of at most 10 bytes), besides the resource and scope.
const HEADER_ROOM: usize = 64;

/// The body of one `Span` message.
fn write_span(buf: &mut Vec<u8>, span: &FinishedSpan) {
    let ctx = &span.ctx;
    bytes(buf, 1, &ctx.trace_id);
    bytes(buf, 2, &ctx.span_id);
    if let Some(state) = ctx.tracestate.as_ref().and_then(|v| v.to_str().ok()) {
        string(buf, 3, state);
    }
    if let Some(parent) = &ctx.parent_span_id {
        bytes(buf, 4, parent);
    }
    string(buf, 5, &span.name);
    let kind = match span.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    };
    key(buf, 6, VARINT);
    varint(buf, kind);
    key(buf, 7, FIXED64);
    buf.extend_from_slice(&unix_nanos(span.start).to_le_bytes());
    key(buf, 8, FIXED64);
    buf.extend_from_slice(&unix_nanos(span.end).to_le_bytes());
    for (name, value) in &span.attributes {
        key_value(buf, 9, name, value);
    }
    if span.status == SpanStatus::Error {
        // Status { code = 3 }
        key(buf, 15, LEN);
        varint(buf, 2);
        key(buf, 3, VARINT);
        varint(buf, STATUS_ERROR);
    }
    // The W3C flags, plus whether the parent came from another process (it
    // always does when there is one: weir's caller).
    let mut flags = u32::from(ctx.flags) | HAS_IS_REMOTE;
    if ctx.parent_span_id.is_some() {
        flags |= IS_REMOTE;
    }
    key(buf, 16, FIXED32);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// A `KeyValue { key = 1, value = 2: AnyValue }` as field `field`.
fn key_value(buf: &mut Vec<u8>, field: u32, name: &str, value: &AttributeValue) {
    let any_len = any_value_len(value);
    let kv_len = len_field_size(1, name.len()) + len_field_size(2, any_len);
    key(buf, field, LEN);
    varint(buf, kv_len as u64);
    message(buf, 1, name.as_bytes());
    key(buf, 2, LEN);
    varint(buf, any_len as u64);
    match value {
        AttributeValue::Str(s) => message(buf, 1, s.as_bytes()),
        AttributeValue::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        AttributeValue::Int(i) => {
            key(buf, 3, VARINT);
            // int64: two's complement, so a negative value takes 10 bytes.
            varint(buf, *i as u64);
        }
    }
}

/// The encoded length of an `AnyValue`. Its oneof member is written even
/// when it holds a default (`0`, `false`, `""`): set is not absent there.
fn any_value_len(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::Str(s) => len_field_size(1, s.len()),
        AttributeValue::Bool(_) => 2,
        AttributeValue::Int(i) => 1 + varint_size(*i as u64),
    }
}

/// How many rejected spans the collector's `ExportTraceServiceResponse`
/// reports (`partial_success = 1 { rejected_spans = 1 }`); 0 for an empty
/// or undecodable answer, which OTLP/HTTP treats as full success.
pub(super) fn rejected_spans(answer: &[u8]) -> u64 {
    let Some(partial) = find_len_field(answer, 1) else {
        return 0;
    };
    let mut rest = partial;
    while let Some((field, wire, value, after)) = next_field(rest) {
        if field == 1 && wire == VARINT {
            // int64; a negative count is nonsense: none.
            return u64::try_from(value as i64).unwrap_or(0);
        }
        rest = after;
    }
    0
}

fn find_len_field(mut data: &[u8], wanted: u32) -> Option<&[u8]> {
    while let Some((field, wire, value, after)) = next_field(data) {
        if field == wanted && wire == LEN {
            let start = data.len() - after.len() - value as usize;
            return data.get(start..start + value as usize);
        }
        data = after;
    }
    None
}

/// The next field of a message: (number, wire type, the varint value or
/// the length of a length-delimited field, the bytes after the field).
fn next_field(data: &[u8]) -> Option<(u32, u32, u64, &[u8])> {
    let (tag, rest) = read_varint(data)?;
    let field = u32::try_from(tag >> 3).ok()?;
    let wire = (tag & 7) as u32;
    match wire {
        VARINT => {
            let (v, rest) = read_varint(rest)?;
            Some((field, wire, v, rest))
        }
        FIXED64 => Some((field, wire, 0, rest.get(8..)?)),
        FIXED32 => Some((field, wire, 0, rest.get(4..)?)),
        LEN => {
            let (n, rest) = read_varint(rest)?;
            let n = usize::try_from(n).ok()?;
            Some((field, wire, n as u64, rest.get(n..)?))
        }
        _ => None,
    }
}

fn read_varint(data: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &data[i + 1..]));
        }
    }
    None
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_size(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes taken by a length-delimited field `field` of `len` bytes.
fn len_field_size(field: u32, len: usize) -> usize {
    varint_size(u64::from(field << 3 | LEN)) + varint_size(len as u64) + len
}

fn message(buf: &mut Vec<u8>, field: u32, body: &[u8]) {
    key(buf, field, LEN);
    varint(buf, body.len() as u64);
    buf.extend_from_slice(body);
}

/// A string or bytes field; proto3 leaves an empty one out.
fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        message(buf, field, data);
    }
}

fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes(buf, field, s.as_bytes());
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
