//! A lock-free latency histogram for the request path.
//!
//! prometheus-client's own `Histogram` takes a mutex on every observation; with
//! one route carrying all traffic that mutex is effectively global, so the hot
//! path uses this one instead: fixed buckets, one relaxed atomic add per
//! observation, and the sum kept in whole microseconds.
//!
//! Each bucket also keeps an exemplar: the latest observation of a request
//! whose trace was sampled (so the trace exists in the tracing backend),
//! with its trace and span ids. Unsampled requests never touch it; a sampled
//! one tries its bucket's lock once and skips the exemplar when another
//! thread holds it. prometheus-client only builds exemplars inside its own
//! locked histogram types, so [`annotate`] writes them into the OpenMetrics
//! text after encoding.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds, in seconds, shared by every latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

#[derive(Debug, Default)]
struct Inner {
    // One more than LATENCY_BUCKETS: the last slot is +Inf.
    buckets: [AtomicU64; SLOTS],
    count: AtomicU64,
    sum_micros: AtomicU64,
    exemplars: [Mutex<Option<Exemplar>>; SLOTS],
}

/// A sampled observation that links a bucket to a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exemplar {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// The span's id.
    pub span_id: [u8; 8],
    /// The observed duration.
    pub value: Duration,
    /// When it was observed.
    pub at: SystemTime,
}

/// A latency histogram; clones share the same counts.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.record(d);
    }

    /// Records one observation of a sampled trace and keeps it as its
    /// bucket's exemplar.
    pub fn observe_traced(&self, d: Duration, trace_id: [u8; 16], span_id: [u8; 8]) {
        let idx = self.record(d);
        // A scrape or another sampled request holds it: this one is not
        // needed, the bucket has a recent exemplar either way.
        if let Ok(mut slot) = self.inner.exemplars[idx].try_lock() {
            *slot = Some(Exemplar {
                trace_id,
                span_id,
                value: d,
                at: SystemTime::now(),
            });
        }
    }

    fn record(&self, d: Duration) -> usize {
        let secs = d.as_secs_f64();
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.inner.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.inner.sum_micros.fetch_add(micros, Ordering::Relaxed);
        idx
    }

    /// The exemplar of bucket `index` (0-based, in [`LATENCY_BUCKETS`]
    /// order, the last being +Inf), if a sampled request landed there.
    pub fn exemplar(&self, index: usize) -> Option<Exemplar> {
        let slot = self.inner.exemplars.get(index)?;
        // A poisoned slot still holds a whole value: it is a plain copy.
        let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder takes per-bucket counts and accumulates them itself.
        let mut total = 0u64;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, slot) in self.inner.buckets.iter().enumerate() {
            let n = slot.load(Ordering::Relaxed);
            total += n;
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        // The count is the bucket total so that count == +Inf bucket even
        // while observations race with the scrape.
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Appends each bucket's exemplar to the `NAME_bucket` lines of the
/// OpenMetrics `text`: `… 12 # {trace_id="…",span_id="…"} 0.0042 1733380000.123`.
/// `lookup` returns the histogram of one series from its label text (the
/// labels between the braces, `le` removed). Buckets are matched by their
/// position within the series, as the encoder writes them in order.
pub fn annotate(
    text: &str,
    name: &str,
    lookup: impl Fn(&str) -> Option<LatencyHistogram>,
) -> String {
    let prefix = format!("{name}_bucket{{");
    let mut out = String::with_capacity(text.len() + 256);
    let mut series: Option<(String, Option<LatencyHistogram>)> = None;
    let mut index = 0usize;
    for line in text.split_inclusive('\n') {
        let Some(rest) = line.strip_prefix(&prefix) else {
            out.push_str(line);
            continue;
        };
        let labels = rest.rsplit_once('}').map_or("", |(l, _)| l);
        let key = without_le(labels);
        match &series {
            Some((k, _)) if *k == key => index += 1,
            _ => {
                let histogram = lookup(&key);
                series = Some((key, histogram));
                index = 0;
            }
        }
        let exemplar = series
            .as_ref()
            .and_then(|(_, h)| h.as_ref())
            .and_then(|h| h.exemplar(index));
        match exemplar {
            Some(e) => {
                out.push_str(line.trim_end_matches('\n'));
                let at = e.at.duration_since(UNIX_EPOCH).unwrap_or_default();
                let _ = writeln!(
                    out,
                    " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}.{:03}",
                    hex(&e.trace_id),
                    hex(&e.span_id),
                    e.value.as_secs_f64(),
                    at.as_secs(),
                    at.subsec_millis()
                );
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The label text of a bucket line without its `le` label.
fn without_le(labels: &str) -> String {
    let Some(at) = labels.find("le=\"") else {
        return labels.to_owned();
    };
    // `le` holds a number or +Inf: no escapes, so the next quote ends it.
    let value_end = labels[at + 4..]
        .find('"')
        .map_or(labels.len(), |i| at + 4 + i + 1);
    let before = labels[..at].trim_end_matches(',');
    let after = labels[value_end..].trim_start_matches(',');
    match (before.is_empty(), after.is_empty()) {
        (true, _) => after.to_owned(),
        (_, true) => before.to_owned(),
        _ => format!("{before},{after}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 3);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("lat_seconds", "test", h);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("lat_seconds_bucket{le=\"0.0005\"} 1"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.01\"} 2"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("lat_seconds_count 3"), "{out}");
    }

    #[test]
    fn exemplars_are_written_on_their_bucket_lines_only() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe_traced(Duration::from_millis(7), [0xab; 16], [0xcd; 8]);
        h.observe(Duration::from_millis(8));
        let other = LatencyHistogram::default();
        other.observe(Duration::from_millis(7));
        let text = "\
# TYPE x_seconds histogram
x_seconds_bucket{route=\"a\",le=\"0.0005\"} 1
x_seconds_bucket{route=\"a\",le=\"0.001\"} 1
x_seconds_bucket{route=\"a\",le=\"0.0025\"} 1
x_seconds_bucket{route=\"a\",le=\"0.005\"} 1
x_seconds_bucket{route=\"a\",le=\"0.01\"} 3
x_seconds_bucket{route=\"b\",le=\"0.0005\"} 0
x_seconds_bucket{route=\"b\",le=\"0.001\"} 0
x_seconds_bucket{route=\"b\",le=\"0.0025\"} 0
x_seconds_bucket{route=\"b\",le=\"0.005\"} 0
x_seconds_bucket{route=\"b\",le=\"0.01\"} 1
x_seconds_count{route=\"a\"} 3
";
        let out = annotate(text, "x_seconds", |labels| match labels {
            "route=\"a\"" => Some(h.clone()),
            "route=\"b\"" => Some(other.clone()),
            _ => None,
        });
        let annotated: Vec<&str> = out.lines().filter(|l| l.contains(" # {")).collect();
        assert_eq!(annotated.len(), 1, "{out}");
        let line = annotated[0];
        let trace = "ab".repeat(16);
        let span = "cd".repeat(8);
        assert!(
            line.starts_with(&format!(
                "x_seconds_bucket{{route=\"a\",le=\"0.01\"}} 3 # {{trace_id=\"{trace}\",span_id=\"{span}\"}} 0.007 "
            )),
            "{line}"
        );
        assert_eq!(out.lines().count(), text.lines().count());
    }

    #[test]
    fn le_is_removed_wherever_it_stands() {
        assert_eq!(without_le("le=\"0.1\""), "");
        assert_eq!(without_le("route=\"a\",le=\"0.1\""), "route=\"a\"");
        assert_eq!(without_le("le=\"+Inf\",route=\"a\""), "route=\"a\"");
        assert_eq!(without_le("a=\"1\",le=\"0.1\",b=\"2\""), "a=\"1\",b=\"2\"");
    }
}
