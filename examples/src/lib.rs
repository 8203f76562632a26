//! Runnable examples for Tether.
//!
//! * [`echo`]: a small HTTP/1.1 + WebSocket echo backend with a browser page,
//!   used as the upstream behind the sidecar in demos and browser tests.

//! * [`chat`]: a chat backend that broadcasts every message to every connected tab, with its
//!   page; `examples/chat/tether.toml` is its annotated Tether configuration.

pub mod chat;
pub mod echo;
