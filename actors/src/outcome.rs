//! How a session ends, in words every layer shares: the end cause, who closed first, the live
//! counters and the summary reported when a session is over.
//!
//! This is the bottom of the actors crate: it imports no actor, message or I/O module (only the
//! pure [`CloseInfo`] of [`crate::frame`]), so the pump that decides an outcome, the session
//! actor that reports it, the route table that lists it and the metrics that count it all
//! depend on it, and it on none of them.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::frame::CloseInfo;

/// Why a session ended. The names are the `cause` recorded in logs and spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// A peer sent a close frame and both sides finished.
    Normal,
    /// No frame either way for `request_timeout`.
    IdleTimeout,
    /// The client answered no ping for 2 × `keepalive_interval`.
    ClientUnresponsive,
    /// The backend's connection ended without a close frame.
    BackendLost,
    /// The client's connection ended without a close frame.
    ClientLost,
    /// A message exceeded `max_message_size`.
    MessageTooBig,
    /// Drained by shutdown or a configuration change.
    Drain,
    /// Drained because its backend was marked unhealthy.
    BackendUnhealthy,
    /// The client sent messages faster than `max_messages_per_second` allows.
    MessageRate,
    /// The client sent payload bytes faster than `max_bytes_per_second` allows.
    ByteRate,
    /// A peer read nothing while its buffer was full for `slow_consumer_timeout`.
    SlowConsumer,
    /// The session reached its rule's `max_session_age` (jittered).
    MaxSessionAge,
    /// Moved off its member by an admin drain of a fraction of the member's sessions.
    Rebalance,
}

impl EndCause {
    /// Every cause, in a fixed order: the order of the metrics' rows. [`EndCause::index`] is the
    /// position here, written as an exhaustive match so a new variant cannot be forgotten.
    pub const ALL: [EndCause; 13] = [
        EndCause::Normal,
        EndCause::IdleTimeout,
        EndCause::ClientUnresponsive,
        EndCause::BackendLost,
        EndCause::ClientLost,
        EndCause::MessageTooBig,
        EndCause::Drain,
        EndCause::BackendUnhealthy,
        EndCause::MessageRate,
        EndCause::ByteRate,
        EndCause::SlowConsumer,
        EndCause::MaxSessionAge,
        EndCause::Rebalance,
    ];

    /// This cause's position in [`EndCause::ALL`] (a unit test checks the two agree).
    pub const fn index(self) -> usize {
        match self {
            EndCause::Normal => 0,
            EndCause::IdleTimeout => 1,
            EndCause::ClientUnresponsive => 2,
            EndCause::BackendLost => 3,
            EndCause::ClientLost => 4,
            EndCause::MessageTooBig => 5,
            EndCause::Drain => 6,
            EndCause::BackendUnhealthy => 7,
            EndCause::MessageRate => 8,
            EndCause::ByteRate => 9,
            EndCause::SlowConsumer => 10,
            EndCause::MaxSessionAge => 11,
            EndCause::Rebalance => 12,
        }
    }

    /// The cause as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Normal => "normal",
            EndCause::IdleTimeout => "idle_timeout",
            EndCause::ClientUnresponsive => "client_unresponsive",
            EndCause::BackendLost => "backend_lost",
            EndCause::ClientLost => "client_lost",
            EndCause::MessageTooBig => "message_too_big",
            EndCause::Drain => "drain",
            EndCause::BackendUnhealthy => "backend_unhealthy",
            EndCause::MessageRate => "message_rate",
            EndCause::ByteRate => "byte_rate",
            EndCause::SlowConsumer => "slow_consumer",
            EndCause::MaxSessionAge => "max_session_age",
            EndCause::Rebalance => "rebalance",
        }
    }
}

/// Who sent the first close frame of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The client.
    Client,
    /// The backend.
    Backend,
    /// Tether itself.
    Tether,
}

impl Initiator {
    /// As recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Backend => "backend",
            Initiator::Tether => "tether",
        }
    }
}

/// Live counters of a session, shared by its pump and its actor (same thread, so `Cell`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from the client.
    pub client_bytes: Cell<u64>,
    /// Bytes read from the backend.
    pub backend_bytes: Cell<u64>,
    /// Complete messages from the client (frames mode).
    pub client_messages: Cell<u64>,
    /// Complete messages from the backend (frames mode).
    pub backend_messages: Cell<u64>,
}

/// How a session went, as reported when it ends.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it ended.
    pub cause: EndCause,
    /// The client's close frame, if it sent one.
    pub client_close: Option<CloseInfo>,
    /// The backend's close frame, if it sent one.
    pub backend_close: Option<CloseInfo>,
    /// The close code Tether sent, if it closed the session itself.
    pub tether_close: Option<u16>,
    /// Who closed first.
    pub initiator: Option<Initiator>,
    /// Round-trip time of the last answered keep-alive ping.
    pub ping_rtt_last: Option<Duration>,
    /// Longest keep-alive round trip seen.
    pub ping_rtt_max: Option<Duration>,
}

/// A session's process-wide id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// The next unused id.
    pub fn next() -> SessionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What is known about a session when it ends.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// The routing rule.
    pub route: Arc<str>,
    /// The backend member.
    pub backend: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
    /// From the 101 to the end.
    pub duration: Duration,
    /// Bytes the client sent.
    pub client_bytes: u64,
    /// Bytes the backend sent.
    pub backend_bytes: u64,
    /// Messages the client sent (frames mode).
    pub client_messages: u64,
    /// Messages the backend sent (frames mode).
    pub backend_messages: u64,
    /// Cause, close frames, initiator and ping round trips.
    pub outcome: Outcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_sits_at_its_index_once() {
        for (i, cause) in EndCause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), i, "{cause:?}");
        }
        let names: std::collections::HashSet<_> =
            EndCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), EndCause::ALL.len(), "distinct names");
    }
}
