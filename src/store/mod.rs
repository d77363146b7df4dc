//! State shared with other weir instances through an external server. Today:
//! the Redis-backed rate limiter. This module owns the client side of those
//! servers (connections, scripts, timeouts) and must not know about routes or
//! the proxy pipeline; it answers with the same decisions as `policy`.

pub mod redis;
