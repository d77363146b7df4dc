//! Integration-test harness: weir runs in-process (`gateway.rs`) in front of
//! in-process hyper upstreams (`upstream.rs`); tests talk to it through real
//! sockets (`client.rs`). Every port comes from binding `127.0.0.1:0`, and
//! every wait has a deadline so that a broken weir fails a test instead of
//! hanging it. Set `WEIR_TEST_LOG=debug` to see weir's logs.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gateway;
pub mod pattern;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use client::{
    empty, full, get, raw_exchange, req, send, status_of, H1Client, H2Client, RawConn, TestResponse,
};
pub use gateway::{fill, TestGateway, BASE};
pub use upstream::{Drained, Echoed, Reply, Upstream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Deadline for one network step (connect, a response head, a small body).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns true; fails the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of every sample of metric `name` whose labels include all of
/// `labels`; None when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if all {
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad sample {line:?}"));
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A path in the temp directory unique to this process and call; removed
/// when dropped.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(stem: &str) -> TempPath {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TempPath(std::env::temp_dir().join(format!(
            "weir-test-{stem}-{}-{n}-{nanos}",
            std::process::id()
        )))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until the access log at `log` holds at least `want` lines and
/// returns every line, parsed.
pub async fn access_log_lines(log: &TempPath, want: usize) -> Vec<serde_json::Value> {
    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually(IO_TIMEOUT, &format!("{want} access log lines"), || {
        let text = std::fs::read_to_string(&log.0).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}")))
            .collect();
        std::future::ready(lines.len() >= want)
    })
    .await;
    lines
}

/// An address on which nothing listens: bound, read, released.
pub fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Logs to the test output when `WEIR_TEST_LOG` is set (an env filter).
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("WEIR_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
