//! Governance decisions, sans-io: rate limits, circuit breaking, retries and
//! their budget, outlier detection, fault injection and deadline propagation.
//!
//! Each file owns one policy as plain structs that take `now` (or a random
//! roll) and an outcome and return a decision. Nothing here performs I/O, reads
//! a clock by itself or knows about hyper connections or tokio: the proxy
//! pipeline asks, acts on the answer and reports the outcome back, which keeps
//! every policy testable with a fake clock.

pub mod circuit_breaker;
pub mod deadline;
pub mod fault;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
