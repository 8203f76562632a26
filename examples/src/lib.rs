//! Runnable examples for Tether.
//!
//! * [`echo`]: a small HTTP/1.1 + WebSocket echo backend with a browser page,
//!   used as the upstream behind the sidecar in demos and browser tests.
//! * [`load`]: the benchmark's load tool and fast echo backend (the `load` and `fast_echo`
//!   binaries, driven by `bench/run.sh`).

pub mod echo;
pub mod load;
