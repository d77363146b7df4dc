//! weir: an API gateway and traffic-governance proxy.
//!
//! Module map (and dependency rules, enforced in review):
//! - `router`: compiled route table and per-route settings; sans-io (no tokio, no hyper I/O).
//! - `upstream`: targets, load balancing, connection pools; knows nothing about `proxy`.
//! - `policy`: governance decisions (rate limit, breaker, retry, outlier, fault, deadline); sans-io.
//! - `store`: state shared across instances through an external server (Redis).
//! - `observe`: metrics (all declared in `observe/metrics.rs`) and the access log.
//! - `proxy`: the request pipeline; the only module that drives hyper bodies
//!   and stitches the others together.
//! - `reload`: the one path every configuration reload takes (file watch, SIGHUP, admin).
//! - `upgrade`: zero-downtime binary upgrade (listening sockets handed to a new
//!   process over a Unix control socket) and systemd socket activation.
//! - `snapshot` / `state`: the compiled config and the process-wide handle to it.
//! - `server`: listeners, accept loops, graceful shutdown. `admin`: the operator API.
//! - `cli`: the command line; the only place that uses `anyhow`.
//! - `decimal`: integers formatted for HTTP heads without allocating.
//!
//! The configuration contract itself lives in the `weir-config` crate.

pub mod admin;
pub mod cli;
pub mod decimal;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod tls;
pub mod upgrade;
pub mod upstream;

pub use server::Gateway;
pub use weir_config as config;
