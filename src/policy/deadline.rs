//! Deadline propagation: reads the client's time budget from `grpc-timeout`
//! (gRPC over HTTP/2: up to 8 ASCII digits and one unit out of `H M S m u n`)
//! or `x-request-timeout` (whole milliseconds), combines it with the route's
//! timeout, and rewrites those headers to the budget left when the request
//! goes upstream, so that every hop stops when the client has stopped waiting.
//!
//! This file owns header parsing and formatting only. It must not read a
//! clock or enforce the deadline: the proxy measures the remaining time and
//! runs the timer.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

#[cfg(test)]
mod tests;

/// `grpc-timeout`, the gRPC deadline header.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `x-request-timeout`, a time budget in whole milliseconds.
pub static X_REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");

// The gRPC spec allows at most 8 digits in a timeout value.
const GRPC_MAX_DIGITS: usize = 8;
const GRPC_MAX_VALUE: u64 = 99_999_999;

// gRPC units from the finest to the coarsest, with their length in nanoseconds.
const GRPC_UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// The smallest valid budget the request carries in either header, if any.
///
/// Invalid values are ignored rather than refused: the headers are advisory,
/// the route's own timeout still bounds the request, and answering 400 (or
/// reading garbage as "no time left") would break a client over a header the
/// upstream may not even use.
pub fn incoming(headers: &HeaderMap) -> Option<Duration> {
    let grpc = headers
        .get_all(&GRPC_TIMEOUT)
        .iter()
        .filter_map(|v| parse_grpc_timeout(v.as_bytes()));
    let ms = headers
        .get_all(&X_REQUEST_TIMEOUT)
        .iter()
        .filter_map(|v| parse_millis(v.as_bytes()));
    grpc.chain(ms).min()
}

/// The budget that applies: the smaller of the route's timeout and the
/// client's, or whichever one is present.
pub fn effective(route: Option<Duration>, incoming: Option<Duration>) -> Option<Duration> {
    match (route, incoming) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A `grpc-timeout` value for `d`, in the finest unit whose count fits in 8
/// digits. The count is rounded down, so the value never promises more time
/// than is left, and a positive `d` never comes out as zero (the finest unit
/// is one nanosecond, and each coarser unit is only chosen when the finer one
/// overflows, so its count is large). Beyond 99999999 hours it saturates.
pub fn grpc_timeout_value(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos();
    let (unit, count) = GRPC_UNITS
        .iter()
        .map(|&(unit, len)| (unit, nanos / u128::from(len)))
        .find(|&(_, count)| count <= u128::from(GRPC_MAX_VALUE))
        .unwrap_or((b'H', u128::from(GRPC_MAX_VALUE)));
    let text = format!("{count}{}", char::from(unit));
    // Digits and one ASCII letter are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// An `x-request-timeout` value for `d`: whole milliseconds, rounded down.
pub fn ms_value(d: Duration) -> HeaderValue {
    HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Rewrites whichever of `grpc-timeout` and `x-request-timeout` the request
/// carries to `remaining`, leaving an absent header absent (an upstream that
/// was not sent a deadline should not start receiving one).
pub fn propagate(headers: &mut HeaderMap, remaining: Duration) {
    if headers.contains_key(&GRPC_TIMEOUT) {
        headers.insert(GRPC_TIMEOUT.clone(), grpc_timeout_value(remaining));
    }
    if headers.contains_key(&X_REQUEST_TIMEOUT) {
        headers.insert(X_REQUEST_TIMEOUT.clone(), ms_value(remaining));
    }
}

fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > GRPC_MAX_DIGITS {
        return None;
    }
    let count = parse_digits(digits)?;
    let len = GRPC_UNITS.iter().find(|(u, _)| *u == unit)?.1;
    // 8 digits of hours is about 3.6e20 ns, past u64; go through u128.
    let nanos = u128::from(count) * u128::from(len);
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

fn parse_millis(value: &[u8]) -> Option<Duration> {
    parse_digits(value).map(Duration::from_millis)
}

// ASCII digits only: `str::parse` would also take a leading `+`.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}
