//! Unit tests of trace context parsing, propagation, sampling and the server
//! span's attributes. Export is tested end to end in `tests/tracing_export.rs`.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Version};

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append((*name).clone(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn with_parent(traceparent: &str) -> TraceContext {
    let h = headers(&[
        (&TRACEPARENT, traceparent),
        (&TRACESTATE, "congo=t61rcWkgMzE"),
    ]);
    TraceContext::from_request(&h, &Sampler::new(1.0))
}

fn trace_id(low: u64) -> [u8; 16] {
    let mut id = [0xab; 16];
    id[8..].copy_from_slice(&low.to_be_bytes());
    id
}

#[test]
fn continues_a_valid_traceparent_with_a_new_span() {
    let ctx = with_parent(&format!("00-{TRACE}-{PARENT}-01"));
    assert_eq!(ctx.trace_id_hex().as_str(), TRACE);
    assert_eq!(ctx.parent_span_id(), unhex::<8>(PARENT.as_bytes()));
    assert_ne!(ctx.span_id(), [0; 8]);
    assert_ne!(ctx.span_id_hex().as_str(), PARENT);
    assert!(ctx.is_sampled());
    assert_eq!(
        ctx.tracestate().map(HeaderValue::as_bytes),
        Some(&b"congo=t61rcWkgMzE"[..])
    );
}

#[test]
fn upstream_traceparent_names_weirs_span_as_parent() {
    let ctx = with_parent(&format!("00-{TRACE}-{PARENT}-01"));
    let expected = format!("00-{TRACE}-{}-01", ctx.span_id_hex());
    assert_eq!(ctx.traceparent(), expected.as_str());

    let mut upstream = headers(&[
        (&TRACEPARENT, &format!("00-{TRACE}-{PARENT}-01")),
        (&TRACESTATE, "congo=t61rcWkgMzE"),
    ]);
    ctx.propagate(&mut upstream);
    assert_eq!(upstream.get_all(&TRACEPARENT).iter().count(), 1);
    assert_eq!(upstream[&TRACEPARENT], expected.as_str());
    assert_eq!(upstream[&TRACESTATE], "congo=t61rcWkgMzE");
}

#[test]
fn sampled_flag_is_read_and_other_unknown_flags_are_not_passed_on() {
    let unsampled = with_parent(&format!("00-{TRACE}-{PARENT}-00"));
    assert!(!unsampled.is_sampled());
    assert!(unsampled.traceparent().to_str().unwrap().ends_with("-00"));
    // 0x02 (random, W3C level 2) is kept; 0x80 means nothing yet.
    let flagged = with_parent(&format!("00-{TRACE}-{PARENT}-83"));
    assert!(flagged.is_sampled());
    assert_eq!(flagged.flags(), 0x03);
}

#[test]
fn malformed_traceparents_start_a_new_trace_without_tracestate() {
    let upper_trace = TRACE.to_uppercase();
    let upper_parent = PARENT.to_uppercase();
    let zeros_trace = "0".repeat(32);
    let zeros_parent = "0".repeat(16);
    let bad = [
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("0g-{TRACE}-{PARENT}-01"),
        format!("0A-{TRACE}-{PARENT}-01"),
        format!("00-{upper_trace}-{PARENT}-01"),
        format!("00-{TRACE}-{upper_parent}-01"),
        format!("00-{TRACE}-{PARENT}-0A"),
        format!("00-{zeros_trace}-{PARENT}-01"),
        format!("00-{TRACE}-{zeros_parent}-01"),
        format!("00-{TRACE}-{PARENT}-01-extra"),
        format!("00-{TRACE}-{PARENT}-1"),
        format!("00_{TRACE}-{PARENT}-01"),
        format!("00-{TRACE}_{PARENT}-01"),
        format!("00-{TRACE}-{PARENT}_01"),
        format!("01-{TRACE}-{PARENT}-01x"),
        format!("00-{}-{PARENT}-01", &TRACE[1..]),
        String::new(),
        "garbage".into(),
    ];
    for value in bad {
        let ctx = with_parent(&value);
        assert_eq!(ctx.parent_span_id(), None, "{value:?} should be rejected");
        assert_ne!(ctx.trace_id_hex().as_str(), TRACE, "{value:?}");
        assert_eq!(ctx.tracestate(), None, "{value:?}");
        let mut upstream = headers(&[(&TRACESTATE, "congo=t61rcWkgMzE")]);
        ctx.propagate(&mut upstream);
        assert!(upstream.get(&TRACESTATE).is_none(), "{value:?}");
    }
}

#[test]
fn a_later_version_is_read_as_version_00() {
    let ctx = with_parent(&format!("cc-{TRACE}-{PARENT}-01-what-the-future-holds"));
    assert_eq!(ctx.trace_id_hex().as_str(), TRACE);
    assert!(ctx.traceparent().to_str().unwrap().starts_with("00-"));
    let exact = with_parent(&format!("cc-{TRACE}-{PARENT}-01"));
    assert_eq!(exact.trace_id_hex().as_str(), TRACE);
}

#[test]
fn repeated_traceparent_headers_start_a_new_trace() {
    let value = format!("00-{TRACE}-{PARENT}-01");
    let h = headers(&[(&TRACEPARENT, &value), (&TRACEPARENT, &value)]);
    let ctx = TraceContext::from_request(&h, &Sampler::new(1.0));
    assert_eq!(ctx.parent_span_id(), None);
}

#[test]
fn several_tracestate_lines_are_joined() {
    let h = headers(&[
        (&TRACEPARENT, &format!("00-{TRACE}-{PARENT}-01")),
        (&TRACESTATE, "a=1"),
        (&TRACESTATE, ""),
        (&TRACESTATE, "b=2,c=3"),
    ]);
    let ctx = TraceContext::from_request(&h, &Sampler::new(1.0));
    assert_eq!(
        ctx.tracestate().map(HeaderValue::as_bytes),
        Some(&b"a=1,b=2,c=3"[..])
    );
}

#[test]
fn a_new_trace_has_random_nonzero_ids_and_the_samplers_flag() {
    let none = HeaderMap::new();
    let kept = TraceContext::from_request(&none, &Sampler::new(1.0));
    let other = TraceContext::from_request(&none, &Sampler::new(1.0));
    assert_ne!(kept.trace_id(), other.trace_id());
    assert_ne!(kept.trace_id(), [0; 16]);
    assert_eq!(kept.parent_span_id(), None);
    assert!(kept.is_sampled());
    let text = kept.traceparent();
    let text = text.to_str().unwrap();
    assert_eq!(text.len(), 55);
    assert_eq!(
        parse_traceparent(text.as_bytes()).map(|p| p.0),
        Some(kept.trace_id())
    );
    assert!(text.ends_with("-01"));

    let skipped = TraceContext::from_request(&none, &Sampler::new(0.0));
    assert!(!skipped.is_sampled());
    assert!(skipped.traceparent().to_str().unwrap().ends_with("-00"));
}

#[test]
fn ratio_zero_keeps_no_new_trace_and_one_keeps_all() {
    let never = Sampler::new(0.0);
    let always = Sampler::new(1.0);
    for low in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        assert!(!never.sample_root(&trace_id(low)), "{low:x}");
        assert!(always.sample_root(&trace_id(low)), "{low:x}");
    }
    // Out-of-range ratios are clamped rather than trusted.
    assert!(Sampler::new(7.0).sample_root(&trace_id(u64::MAX)));
    assert!(!Sampler::new(-1.0).sample_root(&trace_id(0)));
    assert!(!Sampler::new(f64::NAN).sample_root(&trace_id(0)));
}

#[test]
fn ratio_half_decides_from_the_trace_ids_low_bytes() {
    let half = Sampler::new(0.5);
    // (low >> 1) < 2^62 exactly when low < 2^63.
    assert!(half.sample_root(&trace_id((1 << 63) - 1)));
    assert!(!half.sample_root(&trace_id(1 << 63)));
    // The high bytes play no part.
    let mut id = trace_id(5);
    id[..8].copy_from_slice(&[0xff; 8]);
    assert!(half.sample_root(&id));
    // Evenly spread ids: exactly half are kept, every time.
    for _ in 0..2 {
        let kept = (0..256u64)
            .filter(|k| half.sample_root(&trace_id(k << 56)))
            .count();
        assert_eq!(kept, 128);
    }
}

#[test]
fn a_trace_kept_at_a_lower_ratio_is_kept_at_a_higher_one() {
    let ratios = [0.01, 0.1, 0.25, 0.5, 0.9];
    for k in 0..512u64 {
        let id = trace_id(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let decisions: Vec<bool> = ratios
            .iter()
            .map(|r| Sampler::new(*r).sample_root(&id))
            .collect();
        assert!(decisions.windows(2).all(|w| !w[0] || w[1]), "{decisions:?}");
    }
}

#[test]
fn sampling_follows_the_parent_whatever_the_ratio() {
    let id = trace_id(0);
    assert!(Sampler::new(0.0).sample(Some(true), &id));
    assert!(!Sampler::new(1.0).sample(Some(false), &id));
    assert!(Sampler::new(1.0).sample(None, &id));

    let h = |flags: &str| headers(&[(&TRACEPARENT, &format!("00-{TRACE}-{PARENT}-{flags}"))]);
    assert!(TraceContext::from_request(&h("01"), &Sampler::new(0.0)).is_sampled());
    assert!(!TraceContext::from_request(&h("00"), &Sampler::new(1.0)).is_sampled());
}

fn facts<'a>(method: &'a Method, status: Option<u16>) -> ServerSpanFacts<'a> {
    ServerSpanFacts {
        method,
        scheme: "http",
        path: "/api/users/7",
        host: Some("api.example.com:8080"),
        version: Version::HTTP_11,
        http_route: Some("/api/"),
        route: Some("api"),
        upstream: Some("users"),
        status,
        attempts: 2,
        error_code: None,
    }
}

fn attribute<'s>(span: &'s FinishedSpan, key: &str) -> Option<&'s AttributeValue> {
    span.attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn s(text: &'static str) -> AttributeValue {
    AttributeValue::Str(Cow::Borrowed(text))
}

#[test]
fn server_span_carries_the_http_semantic_conventions_and_weirs_attributes() {
    let ctx = TraceContext::from_request(&HeaderMap::new(), &Sampler::new(1.0));
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let end = start + Duration::from_millis(12);
    let span = FinishedSpan::server(ctx.clone(), start, end, &facts(&Method::GET, Some(200)));
    assert_eq!(span.name, "GET /api/");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!((span.start, span.end), (start, end));
    assert_eq!(span.ctx, ctx);
    assert_eq!(span.status, SpanStatus::Unset);
    let expected = [
        ("http.request.method", s("GET")),
        ("url.scheme", s("http")),
        ("url.path", s("/api/users/7")),
        ("server.address", s("api.example.com")),
        ("server.port", AttributeValue::Int(8080)),
        ("network.protocol.version", s("1.1")),
        ("http.route", s("/api/")),
        ("http.response.status_code", AttributeValue::Int(200)),
        ("weir.route", s("api")),
        ("weir.upstream", s("users")),
        ("weir.attempts", AttributeValue::Int(2)),
    ];
    assert_eq!(span.attributes, expected);
}

#[test]
fn server_errors_set_error_status_and_type() {
    let ctx = TraceContext::from_request(&HeaderMap::new(), &Sampler::new(1.0));
    let now = SystemTime::now();
    let bare = FinishedSpan::server(ctx.clone(), now, now, &facts(&Method::GET, Some(502)));
    assert_eq!(bare.status, SpanStatus::Error);
    assert_eq!(attribute(&bare, "error.type"), Some(&s("502")));

    let mut with_code = facts(&Method::GET, Some(504));
    with_code.error_code = Some("upstream_timeout");
    let coded = FinishedSpan::server(ctx.clone(), now, now, &with_code);
    assert_eq!(coded.status, SpanStatus::Error);
    assert_eq!(
        attribute(&coded, "error.type"),
        Some(&s("upstream_timeout"))
    );

    // A 4xx is the client's doing: no error status, no error.type.
    let not_found = FinishedSpan::server(ctx.clone(), now, now, &facts(&Method::GET, Some(404)));
    assert_eq!(not_found.status, SpanStatus::Unset);
    assert_eq!(attribute(&not_found, "error.type"), None);

    // No response at all: no status code, but the error code is kept.
    let mut cut = facts(&Method::GET, None);
    cut.error_code = Some("client_closed");
    let cut = FinishedSpan::server(ctx, now, now, &cut);
    assert_eq!(attribute(&cut, "http.response.status_code"), None);
    assert_eq!(attribute(&cut, "error.type"), Some(&s("client_closed")));
    assert_eq!(cut.status, SpanStatus::Unset);
}

#[test]
fn unknown_methods_and_missing_parts_keep_cardinality_low() {
    let ctx = TraceContext::from_request(&HeaderMap::new(), &Sampler::new(1.0));
    let now = SystemTime::now();
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let mut f = facts(&purge, Some(200));
    f.http_route = None;
    f.route = None;
    f.upstream = None;
    f.host = Some("[::1]:8443");
    f.version = Version::HTTP_2;
    let span = FinishedSpan::server(ctx, now, now, &f);
    assert_eq!(span.name, "HTTP");
    assert_eq!(attribute(&span, "http.request.method"), Some(&s("_OTHER")));
    assert_eq!(
        attribute(&span, "http.request.method_original"),
        Some(&s("PURGE"))
    );
    assert_eq!(attribute(&span, "server.address"), Some(&s("::1")));
    assert_eq!(
        attribute(&span, "server.port"),
        Some(&AttributeValue::Int(8443))
    );
    assert_eq!(attribute(&span, "network.protocol.version"), Some(&s("2")));
    for absent in ["http.route", "weir.route", "weir.upstream"] {
        assert_eq!(attribute(&span, absent), None, "{absent}");
    }
}

#[test]
fn hosts_split_into_address_and_port() {
    assert_eq!(split_host("example.com"), Some(("example.com", None)));
    assert_eq!(
        split_host("example.com:80"),
        Some(("example.com", Some(80)))
    );
    assert_eq!(split_host("[::1]"), Some(("::1", None)));
    assert_eq!(split_host("[::1]:9"), Some(("::1", Some(9))));
    assert_eq!(split_host("example.com:http"), Some(("example.com", None)));
    assert_eq!(split_host(""), None);
    assert_eq!(split_host("[::1"), None);
}

#[test]
fn hex_round_trips() {
    let id = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x10, 0xab];
    let text: [u8; 16] = hex(&id);
    assert_eq!(&text, b"00017f80feff10ab");
    assert_eq!(unhex::<8>(&text), Some(id));
    assert_eq!(unhex::<8>(b"00017F80FEFF10AB"), None);
    assert_eq!(unhex::<8>(b"00017f80feff10a"), None);
}

mod otlp_encoding {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::{span, status};
    use prost::Message as _;

    use super::*;
    use crate::observe::tracing::otlp::{rejected_spans, Encoder};

    fn finished(parent: bool, status: SpanStatus) -> FinishedSpan {
        let ctx = if parent {
            with_parent(&format!("00-{TRACE}-{PARENT}-01"))
        } else {
            TraceContext::from_request(&HeaderMap::new(), &Sampler::new(1.0))
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_733_380_000_123_456_789);
        FinishedSpan {
            ctx,
            name: Cow::Borrowed("GET /api/"),
            kind: SpanKind::Server,
            start,
            end: start + Duration::from_micros(1500),
            attributes: vec![
                ("http.request.method", AttributeValue::Str("GET".into())),
                ("empty", AttributeValue::Str("".into())),
                ("http.response.status_code", AttributeValue::Int(503)),
                ("zero", AttributeValue::Int(0)),
                ("negative", AttributeValue::Int(-7)),
                ("flag", AttributeValue::Bool(false)),
            ],
            status,
        }
    }

    #[test]
    fn what_weir_writes_decodes_as_the_otlp_messages() {
        let mut encoder = Encoder::new("edge", "1.2.3");
        let spans = vec![
            finished(true, SpanStatus::Error),
            finished(false, SpanStatus::Unset),
        ];
        let expected: Vec<_> = spans
            .iter()
            .map(|s| (s.ctx.trace_id(), s.ctx.span_id()))
            .collect();
        let bytes = encoder.encode(spans.into_iter());
        let request = ExportTraceServiceRequest::decode(bytes).expect("valid protobuf");
        assert_eq!(request.resource_spans.len(), 1);
        let rs = &request.resource_spans[0];
        let resource = rs.resource.as_ref().expect("resource");
        let attr = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str| {
            kvs.iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(Value::StringValue("edge".into()))
        );
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().expect("scope");
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("weir", "1.2.3")
        );
        assert_eq!(ss.spans.len(), 2);

        let first = &ss.spans[0];
        assert_eq!(first.trace_id, expected[0].0);
        assert_eq!(first.span_id, expected[0].1);
        assert_eq!(first.parent_span_id, hex_bytes(PARENT));
        assert_eq!(first.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(first.name, "GET /api/");
        assert_eq!(first.kind, span::SpanKind::Server as i32);
        assert_eq!(first.start_time_unix_nano, 1_733_380_000_123_456_789);
        assert_eq!(first.end_time_unix_nano, 1_733_380_000_124_956_789);
        assert_eq!(first.flags, 0x01 | 0x100 | 0x200);
        assert_eq!(
            first.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        for (key, want) in [
            ("http.request.method", Value::StringValue("GET".into())),
            ("empty", Value::StringValue(String::new())),
            ("http.response.status_code", Value::IntValue(503)),
            ("zero", Value::IntValue(0)),
            ("negative", Value::IntValue(-7)),
            ("flag", Value::BoolValue(false)),
        ] {
            assert_eq!(attr(&first.attributes, key), Some(want), "{key}");
        }

        let second = &ss.spans[1];
        assert_eq!(second.trace_id, expected[1].0);
        assert!(second.parent_span_id.is_empty());
        assert!(second.trace_state.is_empty());
        assert_eq!(second.flags, 0x01 | 0x100);
        assert_eq!(second.status, None);

        // The buffers are reused: a second batch is whole on its own.
        let again = encoder.encode(std::iter::once(finished(false, SpanStatus::Unset)));
        let request = ExportTraceServiceRequest::decode(again).expect("valid protobuf");
        assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), 1);
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_collectors_rejected_count_is_read() {
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 42,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(rejected_spans(&answer), 42);
        assert_eq!(rejected_spans(&[]), 0);
        assert_eq!(
            rejected_spans(&ExportTraceServiceResponse::default().encode_to_vec()),
            0
        );
        // Garbage is full success, as OTLP/HTTP says an undecodable answer is.
        assert_eq!(rejected_spans(&[0xff, 0xff, 0xff]), 0);
        assert_eq!(rejected_spans(&[0x0a, 0x05, 0x08]), 0);
    }
}
