//! Runnable examples for Tether.
//!
//! * [`echo`]: a small HTTP/1.1 + WebSocket echo backend with a browser page,
//!   used as the upstream behind the sidecar in demos and browser tests.
//! * [`load`]: the benchmark's load tool and fast echo backend (the `load` and `fast_echo`
//!   binaries, driven by `bench/run.sh`).

//! * [`chat`]: a chat backend that broadcasts every message to every connected tab, with its
//!   page; `examples/chat/tether.toml` is its annotated Tether configuration.

pub mod chat;
pub mod echo;
pub mod load;
