//! What is known about one backend member, in the words every layer above shares: its probe
//! health ([`Health`]), its latest probe ([`ProbeReport`], [`ProbeOutcome`]), the data path's
//! passive-threshold report ([`MemberFailing`]) and a DNS member's last resolution
//! ([`DnsMember`]).
//!
//! Vocabulary only: no I/O and no actor. The balancer, the route table, the prober and the
//! resolver all name these types, so they live below all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Message;
use serde::Serialize;

/// A member's health as its probe sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not probed successfully yet; not in rotation.
    Unknown,
    /// In rotation (unless ejected by passive health).
    Healthy,
    /// Out of rotation until `healthy_threshold` successes.
    Unhealthy,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Whether the member passed.
    pub ok: bool,
    /// Whether the result says anything about the member: `false` when Tether could not send
    /// the probe for a limit of its own (no local port toward the member), and the member's
    /// probe health stays as it was.
    pub counts: bool,
    /// What happened, for logs and `GET /backends`.
    pub detail: String,
}

/// The latest probe of a member, as `GET /backends` shows it.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Whether the probe passed.
    pub ok: bool,
    /// What happened: `status 200`, `connection refused`, `timed out after 2s`, ...
    pub detail: String,
    /// From the start of the probe (connect included) to its verdict.
    pub latency: Duration,
    /// When it finished.
    pub at: Instant,
    /// Consecutive successes after it.
    pub consecutive_successes: u32,
    /// Consecutive failures after it.
    pub consecutive_failures: u32,
}

/// The data path saw `passive.failures` consecutive failures on a member (`do_send` from
/// whichever worker saw the one failure that reached the threshold; never per request).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct MemberFailing {
    /// The pool.
    pub pool: Arc<str>,
    /// The member's address.
    pub member: SocketAddr,
    /// The consecutive failures counted.
    pub failures: u32,
    /// The failure that reached the threshold.
    pub last_error: String,
}

/// One DNS member of a pool and its last good resolution.
#[derive(Debug, Clone)]
pub struct DnsMember {
    /// Index in `backend_pools.NAME.members`.
    pub entry: usize,
    /// The name.
    pub host: String,
    /// The member's port.
    pub port: u16,
    /// The last good address set (empty until one resolution succeeds).
    pub addrs: Vec<SocketAddr>,
    /// When to resolve next, from now.
    pub refresh: Duration,
}
