//! Runnable examples for Tether.
//!
//! * [`echo`]: a small HTTP/1.1 + WebSocket echo backend with a browser page,
//!   used as the upstream behind the sidecar in demos and browser tests.

pub mod echo;
