//! Every message the actors exchange, one documented struct each.
//!
//! The rule for choosing between `do_send` and `send`: a message that only informs (an accepted
//! connection, a session that opened or ended, a drain order) is sent with `do_send` and costs no
//! round trip; a message whose sender must know the outcome before it goes on (stop accepting
//! during shutdown, drain everything) is sent with `send` and awaited. None of them is sent per
//! request or per frame: the request path reads the route snapshot directly.
//!
//! Backend health flows in one direction: probers ([`MemberHealthChanged`]), resolvers
//! ([`MembersResolved`]) and the data path ([`MemberFailing`]) tell the route table, which
//! republishes its snapshot; each is sent only when something *changed* (a threshold crossed, an
//! address set moved), so their rate does not grow with traffic or with the probe rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Message, Recipient, WeakAddr};
use tether_config::LoadBalancing;

use crate::admission::{ConnectionGuard, ListenerInfo};
use crate::balance::Member;
use crate::http2::HttpProtocol;
use crate::member::{DnsMember, ProbeOutcome};
use crate::outcome::{SessionId, SessionSummary};
// The one import upward, and the one import cycle the crate allows (messages <-> session):
// `SessionOpened` carries a `WeakAddr<SessionActor>` so the route table can drain and query
// sessions. Two boxed recipients (drain, stats) instead would cost two allocations per session,
// and sessions are many and mostly idle (README, "An idle session is about 3.3 KiB of heap").
use crate::session::SessionActor;

/// The data path's report lives with the member it is about (the balancer sends it);
/// re-exported here with the other messages.
pub use crate::member::MemberFailing;
/// Drain reasons belong to shutdown (the vocabulary layer); re-exported here because every drain
/// message carries one.
pub use crate::shutdown::DrainReason;

/// A connection a listener accepted, handed to the worker on the same arbiter (`do_send`, once
/// per connection: a push on a local mailbox, no other thread is woken).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accepted {
    /// The accepted socket, already registered with the runtime of the worker's arbiter (the
    /// listener actor that accepted it runs there), so it is used as is.
    pub stream: tokio::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Which listener accepted it.
    pub listener: Arc<ListenerInfo>,
    /// Counts the connection against the listener's limits for as long as it lives: the worker
    /// keeps it with the connection, and a `101` moves it into the session.
    pub guard: ConnectionGuard,
}

/// Tells one worker's listener actor to stop accepting and drop its copy of the listener's
/// socket (`send` to every copy, awaited by shutdown and reload, so the port is known to be
/// closed once all have answered). Answers how many connections that copy accepted.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct StopAccepting;

/// Sessions that started and ended on one worker since its last report (`do_send` from the
/// worker's [`crate::session::SessionRegistry`] to the route table). Batched per turn of the
/// worker's event loop, so that a busy worker wakes the route table's thread once per batch
/// rather than twice per session. `opened` is applied before `ended`.
#[derive(Message, Default)]
#[rtype(result = "()")]
pub struct SessionsChanged {
    /// Sessions that started, in order.
    pub opened: Vec<SessionOpened>,
    /// Sessions that ended, in order.
    pub ended: Vec<SessionEnded>,
}

/// A WebSocket session started (reported to the route table in a [`SessionsChanged`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    /// The session's id, unique in this process.
    pub id: SessionId,
    /// The routing rule that admitted it.
    pub route: Arc<str>,
    /// The backend member it is connected to (its address in the pool, before the settings'
    /// port override), so the route table can find the sessions on a member.
    pub member: SocketAddr,
    /// The port it is connected to on the member (the settings' override, else the member's).
    pub port: u16,
    /// The HTTP version of the client's handshake (`2`: an RFC 8441 stream).
    pub http_version: HttpProtocol,
    /// The session actor, for drain orders ([`DrainSession`]) and counter queries
    /// ([`SessionStatsQuery`], admin only). Weak: holding it allocates nothing per session, and
    /// it is upgraded only when a message is sent (a stopped session simply does not upgrade).
    pub session: WeakAddr<SessionActor>,
}

/// A WebSocket session ended (reported to the route table in a [`SessionsChanged`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    /// The id given in [`SessionOpened`].
    pub id: SessionId,
    /// How it went and how it ended.
    pub summary: SessionSummary,
}

/// Asks one session to end (`do_send` from the route table to a session actor).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct DrainSession {
    /// Why.
    pub reason: DrainReason,
    /// When to send the close frames, from now (zero: at once). Spread over a drain's
    /// sessions by [`crate::drain_schedule::DrainPlan`].
    pub close_in: Duration,
    /// How long the peers get to answer a close sent at once before the sockets are closed
    /// (a close sent later gives them `CLOSE_HANDSHAKE_TIMEOUT`).
    pub answer_within: Duration,
}

/// Drains `fraction` of the sessions on one member of a pool, their close frames spread over
/// `over` (`send` from the admin endpoint's `POST /backends/{pool}/{member}/drain`): a canary
/// shift or a hot member, without a stampede. Answers how many sessions were picked, or `None`
/// when the pool has no such member.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Option<usize>")]
pub struct DrainMemberSessions {
    /// The pool's name.
    pub pool: String,
    /// The member's address (as `GET /backends` lists it).
    pub member: SocketAddr,
    /// The share of its sessions to move, from 0 to 1 (rounded up to whole sessions).
    pub fraction: f64,
    /// The window their close frames are spread over.
    pub over: Duration,
}

/// Drains every registered session (`do_send` from shutdown to the route table, right after
/// the shutdown signal fired). A session that registers after this message was handled saw the
/// signal fired when it started, and drains itself.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct DrainAll {
    /// [`DrainReason::Shutdown`] or [`DrainReason::Restart`].
    pub reason: DrainReason,
    /// How long the peers get to answer the close.
    pub grace: Duration,
}

/// Asks the route table how many WebSocket sessions are live (`send`; used by shutdown and
/// tests, never by the request path).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct LiveSessions;

/// A probed member crossed a threshold (`do_send` from a pool's prober to the route table, once
/// per flip, never per probe): `unhealthy_threshold` consecutive failures, or
/// `healthy_threshold` consecutive successes (one success for a member not yet known).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct MemberHealthChanged {
    /// The pool.
    pub pool: Arc<str>,
    /// The member's address (as configured or resolved; before any port override).
    pub member: SocketAddr,
    /// Its new state.
    pub healthy: bool,
    /// How many probes in a row said so.
    pub consecutive: u32,
    /// The last probe's result: `status 200`, `connection refused`, `timed out after 2s`, ...
    pub last_result: String,
}

/// A pool's DNS member resolved to a (possibly) new address set (`do_send` from the pool's
/// resolver to the route table, only when the set changed).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct MembersResolved {
    /// The pool.
    pub pool: Arc<str>,
    /// Index of the DNS member in `backend_pools.NAME.members`.
    pub entry: usize,
    /// Every address it resolves to now, with the member's port.
    pub addrs: Vec<SocketAddr>,
}

/// The members a prober must probe (`do_send` from the route table to the pool's prober, at
/// attach time and whenever the member set changes). Members not listed any more stop being
/// probed; new ones start unknown.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ProbeTargets {
    /// Every member of the pool, in rotation or not.
    pub members: Vec<Arc<Member>>,
}

/// One probe finished (`do_send` from a member's probe loop to its own prober, once per probe;
/// stays inside the prober, which forwards only flips).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ProbeCompleted {
    /// The member probed.
    pub member: SocketAddr,
    /// The prober's id for the member's current probe loop (a stale loop's results are ignored).
    pub id: u64,
    /// What the probe found.
    pub outcome: ProbeOutcome,
    /// How long it took, connection included.
    pub latency: Duration,
}

/// Hands the route table the prober of a pool (`do_send` at start-up, before any traffic).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachProber {
    /// The pool it probes.
    pub pool: Arc<str>,
    /// Where the route table sends [`ProbeTargets`].
    pub prober: Recipient<ProbeTargets>,
}

/// A reload put a new, valid configuration in force (`send` from the sidecar's reload path,
/// awaited; never from the request path). The route table swaps routes and pools in one
/// published snapshot: pools that stay keep their members' records (health, counters) for
/// addresses that stay; sessions keep running on their backend whatever happened to their
/// route, except that sessions whose route is gone are drained ([`DrainReason::RouteRemoved`]
/// after the old rule's `drain_grace`). Starting and stopping probers and resolvers is the
/// sender's job; it re-attaches new probers with [`AttachProber`].
#[derive(Message)]
#[rtype(result = "ConfigChange")]
pub struct ConfigReplaced {
    /// The new configuration.
    pub config: Arc<tether_config::Config>,
    /// The new configuration's DNS members, resolved once.
    pub resolved: Vec<(Arc<str>, Vec<DnsMember>)>,
}

/// What a [`ConfigReplaced`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// Pools that did not exist before.
    pub pools_added: Vec<String>,
    /// Pools that no longer exist.
    pub pools_removed: Vec<String>,
    /// Sessions asked to drain because their route was removed.
    pub sessions_drained: usize,
}

/// Asks the route table for every pool and member with its state (`send`, awaited by the admin
/// endpoint's `GET /backends`; never by the request path).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "BackendsStatus")]
pub struct BackendsReport;

/// `GET /backends`: every pool and member with its state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendsStatus {
    /// The generation of the published snapshot.
    pub generation: u64,
    /// How long building the last snapshot took, in microseconds.
    pub snapshot_build_us: u64,
    /// WebSocket sessions registered with the route table.
    pub live_sessions: usize,
    /// Every pool, by name.
    pub pools: Vec<PoolStatus>,
}

/// One pool in `GET /backends`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Whether a routing rule sends traffic to it (readiness needs a member in rotation in
    /// every routed pool).
    pub routed: bool,
    /// Its balancing policy.
    pub load_balancing: LoadBalancing,
    /// What `consistent_hash` hashes (only for that policy).
    pub hash_key: Option<String>,
    /// The probe checking its members, if any.
    pub probe: Option<String>,
    /// `passive.failures` (0 = passive health off).
    pub passive_failures: u32,
    /// How many members are in rotation.
    pub in_rotation: usize,
    /// Every member, in rotation or not, by address.
    pub members: Vec<MemberStatus>,
}

/// One member in `GET /backends`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    /// The address traffic goes to (before a settings' port override).
    pub address: SocketAddr,
    /// The configured member it comes from, as written (`10.0.0.5:5000`,
    /// `chat.internal:5000 weight=2`).
    pub configured_as: String,
    /// Its weight.
    pub weight: u32,
    /// `healthy`, `unhealthy`, `unknown` (not probed successfully yet) or `ejected`.
    pub state: &'static str,
    /// Whether new requests and sessions may go to it.
    pub in_rotation: bool,
    /// WebSocket sessions on it now.
    pub live_sessions: usize,
    /// Requests (and handshakes) in flight to it now.
    pub in_flight_requests: usize,
    /// Consecutive successful probes.
    pub consecutive_successes: u32,
    /// Consecutive failed probes.
    pub consecutive_failures: u32,
    /// The latest probe, if probed.
    pub last_probe: Option<LastProbe>,
    /// The latest health flip, if any.
    pub last_change: Option<LastChange>,
    /// Passive health.
    pub passive: PassiveStatus,
    /// Connections to it that failed since start-up, by reason.
    pub connect_failures: ConnectFailures,
}

/// Failed connections to a member, by reason (`tether_backend_connect_failures_total`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnectFailures {
    /// Refused, unreachable or reset during the TCP connect.
    pub error: u64,
    /// Not connected (TCP and, for https, TLS) within `connect_timeout`.
    pub timeout: u64,
    /// The TLS handshake with it failed.
    pub tls: u64,
    /// No local port was left toward it (Tether's limit, not the member's failure).
    pub no_local_port: u64,
}

/// The latest probe of a member.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastProbe {
    /// Whether it passed.
    pub ok: bool,
    /// What happened (`status 200`, `connect to … failed: Connection refused`, …).
    pub result: String,
    /// How long it took.
    pub latency_ms: f64,
    /// How long ago it finished.
    pub ago_ms: u64,
}

/// The latest probe-health flip of a member.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastChange {
    /// `healthy` or `unhealthy`.
    pub to: &'static str,
    /// After how many consecutive probes.
    pub after: u32,
    /// The last probe's result.
    pub reason: String,
    /// How long ago.
    pub ago_ms: u64,
}

/// Passive health of a member.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PassiveStatus {
    /// Consecutive connect or gateway failures the data path has seen.
    pub consecutive_failures: u32,
    /// Ejections since start-up.
    pub ejections: u64,
    /// Length of the current or last ejection.
    pub ejection_ms: Option<u64>,
    /// Time left of the current ejection, if ejected.
    pub ejected_for_ms: Option<u64>,
    /// The failure that caused the last ejection.
    pub last_error: Option<String>,
}

/// One live WebSocket session as the route table knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSessionInfo {
    /// The session's id.
    pub id: u64,
    /// Its routing rule.
    pub route: String,
    /// Its backend member.
    pub backend: SocketAddr,
    /// How long ago it started, in milliseconds.
    pub age_ms: u64,
    /// The HTTP version the client opened it with (`"1.1"`, or `"2"` for RFC 8441).
    pub http_version: HttpProtocol,
    /// When a drain scheduled its close frames, in milliseconds from now (negative: already
    /// sent); absent when it is not being drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_in_ms: Option<i64>,
    /// Its counters, when asked for ([`SessionsReport::stats`]) and the session answered.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SessionStats>,
}

/// Asks the route table for every live session (`send`, from the admin endpoint only; never
/// from the request path).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<LiveSessionInfo>")]
pub struct SessionsReport {
    /// Also ask every session for its counters ([`SessionStatsQuery`], one message per
    /// session, answered concurrently); `false` answers from the registry alone.
    pub stats: bool,
}

/// Asks one session for its counters (`send` from the route table while answering
/// [`SessionsReport`]; admin only, never per frame). The session reads the `Cell`s its pump
/// writes on the session's own thread, so the data path takes no lock for it.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "SessionStats")]
pub struct SessionStatsQuery;

/// One session's counters, for `GET /sessions`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SessionStats {
    /// Bytes the client sent.
    pub client_bytes: u64,
    /// Bytes the backend sent.
    pub backend_bytes: u64,
    /// Messages the client sent (frames mode).
    pub client_messages: u64,
    /// Messages the backend sent (frames mode).
    pub backend_messages: u64,
    /// Milliseconds since the byte counters were last seen to move. Sampled when asked: a
    /// session whose counters moved since the previous question says 0, so the resolution is
    /// the interval between questions (the status page asks every 2 s).
    pub idle_ms: u64,
}

/// One ended session, as kept in the route table's ring of recent endings (`GET /sessions`,
/// status page).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndedSessionInfo {
    /// The session's id.
    pub id: u64,
    /// Its routing rule.
    pub route: String,
    /// Its backend member.
    pub backend: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
    /// How long ago it ended, in milliseconds (at the time of the report).
    pub ended_ms_ago: u64,
    /// From the 101 to the end, in milliseconds.
    pub duration_ms: u64,
    /// Why it ended (`normal`, `drain`, `idle_timeout`, `client_lost`, ...).
    pub cause: &'static str,
    /// Who closed first (`client`, `backend`, `tether`), if anyone sent a close frame.
    pub initiator: Option<&'static str>,
    /// The close code the client sent, if any.
    pub client_close_code: Option<u16>,
    /// The close code the backend sent, if any.
    pub backend_close_code: Option<u16>,
    /// The close code Tether sent, if it closed.
    pub tether_close_code: Option<u16>,
    /// Bytes the client sent.
    pub client_bytes: u64,
    /// Bytes the backend sent.
    pub backend_bytes: u64,
}

/// Asks the route table for the most recent session endings, newest first (`send`, admin
/// only). The table keeps at most [`crate::route_table::RECENT_ENDINGS`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<EndedSessionInfo>")]
pub struct RecentEndings;
