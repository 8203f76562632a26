//! One upgraded WebSocket: [`SessionActor`] owns both sockets and the pump between them,
//! answers [`DrainSession`], and reports how the session ended.
//!
//! Lifecycle: `started` (registers with the route table, starts the pump) → `pumping` (both
//! directions; one may already be half-closed) → `ended` (both directions done, a drain order or
//! shutdown, or a socket error) → reports [`SessionEnded`] with a [`SessionSummary`] and stops.
//! The actor runs on the worker that accepted the client, so the pump never crosses threads, and
//! no message is exchanged per frame.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Recipient, WrapFuture,
};
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::balance::MemberLease;
use crate::messages::{DrainSession, SessionEnded, SessionOpened};
use crate::pump::{self, DirectionEnd};
use crate::shutdown::{ShutdownSignal, TrackToken};

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

/// Why a session ended. The names are the `cause` recorded in logs and, later, spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// Both peers finished (both directions reached end of stream).
    Normal,
    /// The backend's connection failed.
    BackendLost,
    /// The client's connection failed.
    ClientLost,
    /// Tether drained the session (shutdown or a drain order).
    Drain,
}

impl EndCause {
    /// The cause as recorded (`normal`, `backend_lost`, `client_lost`, `drain`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Normal => "normal",
            EndCause::BackendLost => "backend_lost",
            EndCause::ClientLost => "client_lost",
            EndCause::Drain => "drain",
        }
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
    /// Bytes delivered from the client to the backend.
    pub client_to_backend: u64,
    /// Bytes delivered from the backend to the client.
    pub backend_to_client: u64,
    /// Why it ended.
    pub cause: EndCause,
}

/// Where a session reports its start and end (the route table, behind recipients).
#[derive(Clone)]
pub struct SessionRegistry {
    /// Receives [`SessionOpened`].
    pub opened: Recipient<SessionOpened>,
    /// Receives [`SessionEnded`].
    pub ended: Recipient<SessionEnded>,
}

/// Both upgraded sockets, with any bytes the HTTP layer had already read past the handshake.
#[derive(Debug)]
pub struct SessionStreams {
    /// The client's socket.
    pub client: TcpStream,
    /// Bytes the client sent right after its handshake, already read by the HTTP server.
    pub client_prefix: Bytes,
    /// The backend's socket.
    pub backend: TcpStream,
    /// Bytes the backend sent right after its 101, already read by the HTTP client.
    pub backend_prefix: Bytes,
}

/// Who the session is, for registration and the summary.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The routing rule.
    pub route: Arc<str>,
    /// The backend member.
    pub backend: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
    /// Counts this session on its backend member while the session lives (least_connections
    /// and `GET /backends` read it); dropped with the actor.
    pub lease: Option<MemberLease>,
}

/// State the actor shares with its pump (same thread: `Rc` and `Cell`, no lock).
#[derive(Debug, Default)]
struct Control {
    client_to_backend: Cell<u64>,
    backend_to_client: Cell<u64>,
    drain: Cell<Option<DrainSession>>,
    wake: Notify,
}

/// Owns one upgraded WebSocket.
pub struct SessionActor {
    id: SessionId,
    info: SessionInfo,
    started: Instant,
    streams: Option<SessionStreams>,
    control: Rc<Control>,
    registry: SessionRegistry,
    shutdown: ShutdownSignal,
    _token: TrackToken,
}

impl SessionActor {
    /// A session over `streams`; it starts pumping when the actor starts.
    pub fn new(
        info: SessionInfo,
        streams: SessionStreams,
        registry: SessionRegistry,
        shutdown: ShutdownSignal,
        token: TrackToken,
    ) -> SessionActor {
        SessionActor {
            id: SessionId::next(),
            info,
            started: Instant::now(),
            streams: Some(streams),
            control: Rc::new(Control::default()),
            registry,
            shutdown,
            _token: token,
        }
    }

    fn finish(&mut self, cause: EndCause) {
        let summary = SessionSummary {
            route: self.info.route.clone(),
            backend: self.info.backend,
            client: self.info.client,
            duration: self.started.elapsed(),
            client_to_backend: self.control.client_to_backend.get(),
            backend_to_client: self.control.backend_to_client.get(),
            cause,
        };
        tracing::info!(
            session = self.id.0,
            route = %summary.route,
            backend = %summary.backend,
            client = %summary.client,
            cause = cause.as_str(),
            duration_ms = summary.duration.as_millis() as u64,
            client_to_backend = summary.client_to_backend,
            backend_to_client = summary.backend_to_client,
            "websocket session ended"
        );
        self.registry.ended.do_send(SessionEnded {
            id: self.id,
            summary,
        });
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.registry.opened.do_send(SessionOpened {
            id: self.id,
            route: self.info.route.clone(),
            backend: self.info.backend,
            control: ctx.address().recipient(),
        });
        let Some(streams) = self.streams.take() else {
            return;
        };
        let control = self.control.clone();
        let shutdown = self.shutdown.clone();
        let pump = run_pump(streams, control, shutdown);
        ctx.spawn(pump.into_actor(self).map(|cause, act, ctx| {
            act.finish(cause);
            ctx.stop();
        }));
    }
}

impl Handler<DrainSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: DrainSession, _: &mut Context<Self>) {
        self.control.drain.set(Some(msg));
        self.control.wake.notify_one();
    }
}

/// Runs both directions until the session is over and says why it ended.
async fn run_pump(
    streams: SessionStreams,
    control: Rc<Control>,
    mut shutdown: ShutdownSignal,
) -> EndCause {
    let SessionStreams {
        client,
        client_prefix,
        backend,
        backend_prefix,
    } = streams;
    let up = pump::pipe(&client, &backend, client_prefix, &control.client_to_backend);
    let down = pump::pipe(
        &backend,
        &client,
        backend_prefix,
        &control.backend_to_client,
    );
    tokio::pin!(up, down);
    let mut up_done = false;
    let mut down_done = false;
    loop {
        tokio::select! {
            end = &mut up, if !up_done => {
                up_done = true;
                match end {
                    DirectionEnd::Eof => {}
                    DirectionEnd::ReadFailed(_) => return EndCause::ClientLost,
                    DirectionEnd::WriteFailed(_) => return EndCause::BackendLost,
                }
            }
            end = &mut down, if !down_done => {
                down_done = true;
                match end {
                    DirectionEnd::Eof => {}
                    DirectionEnd::ReadFailed(_) => return EndCause::BackendLost,
                    DirectionEnd::WriteFailed(_) => return EndCause::ClientLost,
                }
            }
            _ = control.wake.notified() => {
                if control.drain.get().is_some() {
                    return EndCause::Drain;
                }
            }
            _ = shutdown.fired() => return EndCause::Drain,
        }
        if up_done && down_done {
            return EndCause::Normal;
        }
    }
}
