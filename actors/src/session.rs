//! One upgraded WebSocket: [`SessionActor`] owns both sockets and the pump between them,
//! answers [`DrainSession`], and reports how the session ended.
//!
//! Lifecycle: `started` (registers with the route table, starts the pump) → `pumping` → `ended`
//! (see [`crate::pump`] for every way a session ends and the close codes Tether sends) → reports
//! [`SessionEnded`] with a [`SessionSummary`] and stops.
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

use crate::messages::{DrainReason, DrainSession, SessionEnded, SessionOpened};
use crate::pump::{self, Counters, Initiator, Outcome, PumpConfig, PumpControl};
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
}

/// State the actor shares with its pump (same thread: `Rc` and `Cell`, no lock).
#[derive(Debug, Default)]
struct Control {
    counters: Counters,
    drain: Cell<Option<(DrainReason, Duration)>>,
    wake: Notify,
}

/// Owns one upgraded WebSocket.
pub struct SessionActor {
    id: SessionId,
    info: SessionInfo,
    started: Instant,
    streams: Option<SessionStreams>,
    pump: PumpConfig,
    shutdown_grace: Duration,
    control: Rc<Control>,
    registry: SessionRegistry,
    shutdown: ShutdownSignal,
    _token: TrackToken,
}

impl SessionActor {
    /// A session over `streams`, pumped as `pump` says; it starts when the actor starts.
    /// `shutdown_grace` bounds the close handshake when Tether shuts down.
    pub fn new(
        info: SessionInfo,
        streams: SessionStreams,
        pump: PumpConfig,
        registry: SessionRegistry,
        shutdown: (ShutdownSignal, Duration),
        token: TrackToken,
    ) -> SessionActor {
        let (shutdown, shutdown_grace) = shutdown;
        SessionActor {
            id: SessionId::next(),
            info,
            started: Instant::now(),
            streams: Some(streams),
            pump,
            shutdown_grace,
            control: Rc::new(Control::default()),
            registry,
            shutdown,
            _token: token,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let counters = &self.control.counters;
        let summary = SessionSummary {
            route: self.info.route.clone(),
            backend: self.info.backend,
            client: self.info.client,
            duration: self.started.elapsed(),
            client_bytes: counters.client_bytes.get(),
            backend_bytes: counters.backend_bytes.get(),
            client_messages: counters.client_messages.get(),
            backend_messages: counters.backend_messages.get(),
            outcome,
        };
        let o = &summary.outcome;
        tracing::info!(
            session = self.id.0,
            route = %summary.route,
            backend = %summary.backend,
            client = %summary.client,
            cause = o.cause.as_str(),
            initiator = o.initiator.map(Initiator::as_str),
            client_close_code = o.client_close.as_ref().and_then(|c| c.code),
            backend_close_code = o.backend_close.as_ref().and_then(|c| c.code),
            tether_close_code = o.tether_close,
            duration_ms = summary.duration.as_millis() as u64,
            client_bytes = summary.client_bytes,
            backend_bytes = summary.backend_bytes,
            client_messages = summary.client_messages,
            backend_messages = summary.backend_messages,
            ping_rtt_ms = o.ping_rtt_last.map(|d| d.as_secs_f64() * 1e3),
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
        let cfg = self.pump;
        let grace = self.shutdown_grace;
        let pump = async move {
            let pump_control = PumpControl {
                shutdown,
                wake: &control.wake,
                drain: &control.drain,
                shutdown_grace: grace,
            };
            pump::run(streams, cfg, &control.counters, pump_control).await
        };
        ctx.spawn(pump.into_actor(self).map(|outcome, act, ctx| {
            act.finish(outcome);
            ctx.stop();
        }));
    }
}

impl Handler<DrainSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: DrainSession, _: &mut Context<Self>) {
        self.control.drain.set(Some((msg.reason, msg.grace)));
        self.control.wake.notify_one();
    }
}
