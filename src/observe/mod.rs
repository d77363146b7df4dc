//! Observability: metrics (all declared in `metrics.rs`) and the access log.
//! This module records what happened; it never decides anything about a
//! request.

pub mod access_log;
pub mod histogram;
pub mod metrics;
pub mod tracing;

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::{Metrics, RouteMetrics, UpstreamMetrics};
