//! Every message the actors exchange, one documented struct each.
//!
//! The rule for choosing between `do_send` and `send`: a message that only informs (an accepted
//! connection, a session that opened or ended, a drain order) is sent with `do_send` and costs no
//! round trip; a message whose sender must know the outcome before it goes on (stop accepting
//! during shutdown, drain everything) is sent with `send` and awaited. None of them is sent per
//! request or per frame: the request path reads the route snapshot directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Message, Recipient};

use crate::listener::ListenerInfo;
use crate::session::{SessionId, SessionSummary};

/// A connection a listener accepted, handed to a worker (`do_send`, once per connection). The
/// stream is a std socket because a tokio socket is tied to the runtime that registered it; the
/// worker registers it with its own.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accepted {
    /// The accepted socket, still in non-blocking mode.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Which listener accepted it.
    pub listener: Arc<ListenerInfo>,
}

/// Tells a listener to close its socket and stop accepting (`send`, awaited by shutdown so the
/// port is known to be closed before draining starts). Answers how many connections it accepted.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct StopAccepting;

/// A WebSocket session started (`do_send` from the session actor to the route table).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    /// The session's id, unique in this process.
    pub id: SessionId,
    /// The routing rule that admitted it.
    pub route: Arc<str>,
    /// The backend member it is connected to.
    pub backend: SocketAddr,
    /// Where to send a drain order for this session.
    pub control: Recipient<DrainSession>,
}

/// A WebSocket session ended (`do_send` from the session actor to the route table).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    /// The id given in [`SessionOpened`].
    pub id: SessionId,
    /// How it went and how it ended.
    pub summary: SessionSummary,
}

/// Why a session is asked to end before either peer closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// The sidecar is shutting down.
    Shutdown,
    /// The session's backend member was marked unhealthy and its rule says
    /// `on_backend_unhealthy = "drain"`.
    BackendUnhealthy,
    /// A configuration reload removed the session's route.
    RouteRemoved,
}

/// Asks one session to end (`do_send` from the route table to a session actor).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct DrainSession {
    /// Why.
    pub reason: DrainReason,
    /// How long the peers get to answer a close before the sockets are closed.
    pub grace: Duration,
}

/// Asks the route table how many WebSocket sessions are live (`send`; used by shutdown and
/// tests, never by the request path).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct LiveSessions;
