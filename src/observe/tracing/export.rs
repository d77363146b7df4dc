//! The trace exporter: one Tokio task that batches finished spans and posts
//! them to the collector as OTLP/HTTP protobuf (`POST .../v1/traces`).
//!
//! It owns the collector connection and the OTLP encoding. It must not reach
//! back into the request path: it only reads the queue the [`Tracer`] fills,
//! and a failed or slow export costs dropped spans, never a waiting request.
//!
//! [`Tracer`]: super::Tracer

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use weir_config::OtlpEndpoint;

use super::otlp::{self, Encoder};
use super::{FinishedSpan, TracerError};

/// At most one warning per this long about failed exports; the others are
/// counted into the next one.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// Largest collector answer read; a bigger one fails the export.
const MAX_ANSWER: usize = 64 * 1024;

/// What the [`super::Tracer`] sends the exporter task.
#[derive(Debug)]
pub(super) enum Message {
    /// A sampled span to export.
    Span(FinishedSpan),
    /// Export what is queued, then acknowledge.
    Flush(oneshot::Sender<()>),
    /// Export what is queued, acknowledge, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// The exporter task's state.
pub(super) struct Export {
    uri: Uri,
    host: HeaderValue,
    endpoint: OtlpEndpoint,
    batch_size: usize,
    flush_interval: Duration,
    timeout: Duration,
    encoder: Encoder,
    dropped: Counter,
    /// The kept-alive collector connection, if any.
    conn: Option<SendRequest<Full<Bytes>>>,
    failures: FailureLog,
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the collector answered {0}")]
    Status(StatusCode),
    #[error("reading the collector's answer failed: {0}")]
    Answer(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Rate-limits the warnings about failed exports.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

// === impl Export ===

impl Export {
    pub(super) fn new(
        cfg: &weir_config::Tracing,
        endpoint: OtlpEndpoint,
        dropped: Counter,
    ) -> Result<Export, TracerError> {
        let bad = |what: &str| TracerError::Endpoint(format!("{what} {:?}", cfg.otlp_endpoint));
        let uri =
            Uri::try_from(endpoint.traces_path.as_str()).map_err(|_| bad("invalid path in"))?;
        let host =
            HeaderValue::from_str(&endpoint.authority).map_err(|_| bad("invalid authority in"))?;
        let version = env!("CARGO_PKG_VERSION");
        Ok(Export {
            uri,
            host,
            endpoint,
            batch_size: cfg.batch_size.max(1),
            flush_interval: cfg.flush_interval.get(),
            timeout: cfg.timeout.get(),
            encoder: Encoder::new(&cfg.service_name, version),
            dropped,
            conn: None,
            failures: FailureLog::default(),
        })
    }

    /// Runs until shut down or until every [`super::Tracer`] is gone.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut batch: Vec<FinishedSpan> = Vec::with_capacity(self.batch_size);
        // When the oldest waiting span must be sent even if the batch is not full.
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let message = match due {
                Some(at) => tokio::select! {
                    message = rx.recv() => message,
                    () = tokio::time::sleep_until(at) => {
                        self.export(&mut batch).await;
                        due = None;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match message {
                Some(Message::Span(span)) => {
                    if batch.is_empty() {
                        due = Some(tokio::time::Instant::now() + self.flush_interval);
                    }
                    batch.push(span);
                    if batch.len() >= self.batch_size {
                        self.export(&mut batch).await;
                        due = None;
                    }
                }
                Some(Message::Flush(ack)) => {
                    self.export(&mut batch).await;
                    due = None;
                    // The caller may have stopped waiting.
                    let _ = ack.send(());
                }
                Some(Message::Shutdown(ack)) => {
                    self.drain(rx, batch, ack).await;
                    return;
                }
                None => {
                    self.export(&mut batch).await;
                    return;
                }
            }
        }
    }

    /// Exports everything still queued, then acknowledges every waiting
    /// flush or shutdown.
    async fn drain(
        &mut self,
        mut rx: mpsc::Receiver<Message>,
        mut batch: Vec<FinishedSpan>,
        ack: oneshot::Sender<()>,
    ) {
        // Closing first makes `recv` end once the queue is empty, and makes
        // later `record`s fail fast (and count as dropped).
        rx.close();
        let mut acks = vec![ack];
        while let Some(message) = rx.recv().await {
            match message {
                Message::Span(span) => {
                    batch.push(span);
                    if batch.len() >= self.batch_size {
                        self.export(&mut batch).await;
                    }
                }
                Message::Flush(ack) | Message::Shutdown(ack) => acks.push(ack),
            }
        }
        self.export(&mut batch).await;
        for ack in acks {
            let _ = ack.send(());
        }
    }

    /// Sends `batch` (emptying it); a failure drops and counts its spans.
    async fn export(&mut self, batch: &mut Vec<FinishedSpan>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len();
        let body = self.encode(batch.drain(..));
        let outcome = match tokio::time::timeout(self.timeout, self.post(body)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ExportError::Timeout(self.timeout)),
        };
        match outcome {
            Ok(0) => {}
            Ok(rejected) => {
                self.dropped.inc_by(rejected);
                self.failures.report(
                    &self.endpoint,
                    &"the collector rejected some spans",
                    rejected,
                );
            }
            Err(error) => {
                // The connection's state is unknown after a failure.
                self.conn = None;
                let count = count as u64;
                self.dropped.inc_by(count);
                self.failures.report(&self.endpoint, &error, count);
            }
        }
    }

    /// Posts one export request; returns how many spans the collector said
    /// it rejected.
    async fn post(&mut self, body: Bytes) -> Result<u64, ExportError> {
        let (mut sender, reused) = match self.conn.take() {
            Some(sender) if !sender.is_closed() => (sender, true),
            _ => (self.connect().await?, false),
        };
        let response = match send(&mut sender, self.request(body.clone())).await {
            Ok(response) => response,
            // A kept-alive connection may have been closed by the collector
            // just as it was reused: one try on a fresh one.
            Err(_) if reused => {
                sender = self.connect().await?;
                send(&mut sender, self.request(body)).await?
            }
            Err(e) => return Err(e.into()),
        };
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ExportError::Answer(e.to_string()))?
            .to_bytes();
        // The answer was read to the end, so the connection can carry the next export.
        self.conn = Some(sender);
        if !status.is_success() {
            return Err(ExportError::Status(status));
        }
        Ok(otlp::rejected_spans(&answer))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ExportError> {
        let address = (self.endpoint.host.as_str(), self.endpoint.port);
        let stream = TcpStream::connect(address)
            .await
            .map_err(ExportError::Connect)?;
        // Export requests are single writes; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                ::tracing::debug!(error = %e, "collector connection ended");
            }
        });
        Ok(sender)
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("weir/", env!("CARGO_PKG_VERSION"))),
        );
        request
    }

    fn encode(&mut self, spans: impl Iterator<Item = FinishedSpan>) -> Bytes {
        self.encoder.encode(spans)
    }
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(request).await
}

// === impl FailureLog ===

impl FailureLog {
    fn report(&mut self, endpoint: &OtlpEndpoint, error: &dyn fmt::Display, spans: u64) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        ::tracing::warn!(
            collector = %format_args!("{}:{}", endpoint.host, endpoint.port),
            error = %error,
            dropped_spans = spans,
            earlier_failures_not_logged = self.suppressed,
            "trace export failed",
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}
