//! The access log: one JSON line per finished request, written by a dedicated
//! thread so that a slow disk or a blocked stdout never stalls a request.
//! Lines are queued in a bounded channel; when it is full the line is dropped
//! and counted (`weir_access_log_dropped_total`) rather than waited for.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// How many lines may wait for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Everything the access log says about one request.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 UTC time at which the request arrived.
    pub time: String,
    /// The `x-request-id` sent upstream and returned to the client.
    pub request_id: &'a str,
    /// Client socket address.
    pub client: SocketAddr,
    /// Request method.
    pub method: &'a str,
    /// Host the client asked for (authority or Host header).
    pub host: &'a str,
    /// Request path (without the query).
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Milliseconds from arrival to the end of the response.
    pub duration_ms: f64,
    /// Matched route, if any.
    pub route: &'a str,
    /// Upstream name, if the request was forwarded.
    pub upstream: &'a str,
    /// Target address that served it.
    pub upstream_target: &'a str,
    /// Milliseconds until the upstream's response headers arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_duration_ms: Option<f64>,
    /// Stable error code when weir produced an error response or cut the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'a str>,
    /// Tries made upstream: 1 without retries, 0 when nothing was forwarded.
    pub attempts: u32,
    /// W3C trace id of the request, when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// weir's span id for the request, when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<&'a str>,
}

/// Handle to the access log writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread for stdout (`path` None) or an appended file.
    pub fn start(path: Option<&str>, dropped: Counter) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
            None => Box::new(io::stdout()),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.inc();
        }
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        if out.write_all(&line).is_err() {
            continue;
        }
        // Drain whatever else is queued before paying for a flush.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
// well-known algorithm, written out from its description).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_396_645_123);
        assert_eq!(rfc3339(t), "2026-12-04T15:04:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
