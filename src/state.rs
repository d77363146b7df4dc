//! Process-wide state shared by every connection: the current snapshot (swapped
//! atomically), metrics, the access log and lifecycle flags. Passed around as
//! one `Arc<State>`; there are no global statics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::observe::tracing::Tracer;
use crate::observe::{AccessLog, Metrics};
use crate::proxy::Tunnels;
use crate::snapshot::Snapshot;

/// Shared state of a running gateway.
#[derive(Debug)]
pub struct State {
    /// The snapshot new requests use.
    pub snapshot: ArcSwap<Snapshot>,
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    /// Where access log lines go, when enabled.
    pub access_log: Option<AccessLog>,
    /// When the process started.
    pub started: Instant,
    /// Exports request spans, when `tracing` is configured (a restart-only
    /// setting, so it lives here rather than in the snapshot).
    pub tracer: Option<Arc<Tracer>>,
    /// Reloads the configuration file, when weir was started from one.
    pub reloader: std::sync::OnceLock<Arc<crate::reload::Reloader>>,
    /// The TLS side of every TLS listener, for reloads of their files.
    pub tls: std::sync::OnceLock<Vec<Arc<crate::tls::ServerTls>>>,
    /// Open WebSocket tunnels, which a shutdown waits for and then closes.
    pub websockets: Tunnels,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl State {
    /// New state around a first snapshot; not ready until `set_ready`.
    /// Must run inside the runtime: the tracer's exporter is a task.
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>, access_log: Option<AccessLog>) -> State {
        let tracer = snapshot.config.tracing.as_ref().and_then(|cfg| {
            match Tracer::new(cfg, metrics.tracing_spans_dropped()) {
                Ok(t) => Some(Arc::new(t)),
                // Validation accepted the settings, so this is unexpected:
                // serve without tracing rather than not at all.
                Err(e) => {
                    tracing::error!(error = %e, "tracing is off: cannot start the span exporter");
                    None
                }
            }
        });
        State {
            tracer,
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            access_log,
            started: Instant::now(),
            reloader: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
            websockets: Tunnels::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Listeners are bound and the config is loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Shutdown has begun: stop accepting, finish what is in flight.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// True when the gateway should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }
}
