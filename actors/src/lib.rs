//! Tether's actors, their typed messages, and the data path they drive.
//!
//! # Actor map
//!
//! ```text
//!                      ┌──────────────────────┐  publishes Arc<RouteSnapshot> (ArcSwap)
//!                      │   RouteTableActor    │─────────────────────────────┐
//!                      │ (System arbiter)     │◀── SessionsChanged ──────┐  │ load() per request,
//!                      └──────────────────────┘── DrainSession/All ─┐   │  │ no mailbox
//!   worker arbiter × N (one thread each)                            │   │  ▼
//!  ┌──────────────────────────────────────────────────────────────────────────────────────┐
//!  │ ListenerActor ── Accepted ──▶ WorkerActor ──▶ first request: a WebSocket handshake   │
//!  │ (one per listener,  (same thread)  │          is answered by the worker, anything     │
//!  │  on a dup of its socket)           │          else by hyper (HTTP/1.1, HTTP/2); both  │
//!  │                                    │          through proxy::answer                   │
//!  │                                    └─ on 101 ─▶ SessionActor (one per WebSocket)     │
//!  └──────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! * [`listener::ListenerActor`] runs on every worker arbiter, once per listener, over a
//!   duplicate of the listener's bound socket; it accepts on the worker's own thread and hands
//!   each connection to that worker, so a connection never changes threads.
//! * [`worker::WorkerActor`] lives on its own arbiter (thread) and serves the connections it is
//!   handed; the sessions upgraded on them stay on that thread, so the data path never hops
//!   threads and needs no lock.
//! * [`route_table::RouteTableActor`] owns routes, pool membership and the session registry, and
//!   publishes an immutable [`route_table::RouteSnapshot`] the request path reads directly.
//! * [`session::SessionActor`] owns both sockets of one upgraded WebSocket and the
//!   pump between them, and reports how the session ended.
//! * [`prober::ProberActor`] (one per pool with a probe) probes every member on a jittered
//!   interval and sends `MemberHealthChanged` to the route table only when a member flips.
//! * [`resolver::ResolverActor`] (one per pool with DNS members) re-resolves names on their
//!   TTL and sends `MembersResolved` only when an address set changes.
//!
//! Backend health reaches the request path through the snapshot: the route table republishes
//! when a member enters or leaves rotation, and [`balance`] picks among the members in the
//! snapshot with per-member atomic counters — no lock and no message per request. The one
//! message the data path sends, `MemberFailing`, goes out when a member's consecutive failures
//! *reach* the pool's passive threshold, not per failure.
//!
//! Every message is a documented struct in [`messages`]. Actor types stay behind these message
//! types (and `Recipient`s), so the actor crate could be replaced without touching the data path.
//!
//! # Layers
//!
//! A module imports only from the rows below it, and within a row only along the arrows
//! (checked in CI by `.ci/layers.py`):
//!
//! ```text
//! actors      worker ─▶ proxy ─▶ route_table ─▶ session     listener   prober   resolver
//!                │ send and handle
//! messages    messages        (one edge up: SessionOpened holds a WeakAddr<SessionActor>)
//!                │
//! data path   response ─▶ upstream ─▶ error ─▶ body   balance   admission   pump ─▶ outcome ◀─ metrics
//!             response ─▶ access_log ─▶ body
//!                │
//! wire        first_request ─▶ handshake   frame   headers   upgrade   transport   tls
//!                │
//! vocabulary  shutdown (drain reasons)   member (backend health, probes, DNS)   trace
//! ```
//!
//! `proxy` is the request path a worker runs on each connection; `pump` is the session's data
//! loop, which its [`session::SessionActor`] drives: a core without I/O (`pump::machine`) and a
//! thin driver over the sockets. `outcome` is how a session ended, which the pump records and
//! `metrics`, spans and `/sessions` report.
//!
//! # Public façade
//!
//! The modules other crates use are `pub`: the actors the sidecar starts ([`listener`],
//! [`worker`], [`route_table`], [`prober`], [`resolver`], [`session`]'s registry), the
//! [`messages`] it sends them and the values they carry ([`admission`], [`member`],
//! [`balance`], [`shutdown`], [`metrics`], [`tls`], [`trace`]), and the parsers the fuzz targets
//! drive ([`frame`], [`first_request`], [`handshake`], [`headers`], [`upgrade`]). The request path (`proxy`,
//! `upstream`, `body`, `response`, `error`), the session pump and the socket transports are
//! crate-private, so the compiler reports what nothing uses.

pub mod access_log;
pub mod admission;
pub mod balance;
mod body;
pub mod drain_schedule;
mod error;
pub mod first_request;
pub mod frame;
pub mod grpc;
pub mod handshake;
pub mod headers;
pub mod http2;
pub mod jitter;
pub mod listener;
pub mod member;
pub mod messages;
pub mod metrics;
pub mod outcome;
pub mod prober;
mod proxy;
mod pump;
pub mod resolver;
mod response;
pub mod route_table;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod token_bucket;
pub mod trace;
mod transport;
pub mod upgrade;
mod upstream;
pub mod worker;
