//! One upgraded WebSocket: [`SessionActor`] owns both sockets and the pump between them,
//! answers [`DrainSession`], and reports how the session ended.
//!
//! Lifecycle: `started` (registers with the route table, starts the pump) → `pumping` → `ended`
//! (see `crate::pump` for every way a session ends and the close codes Tether sends) → reports
//! [`SessionEnded`] with a [`SessionSummary`] and stops. While pumping, the bytes and messages
//! moved are added to the process's counters as they go (see [`Pumping`]), and once more when
//! it ends.
//! The actor runs on the worker that accepted the client, so the pump never crosses threads, and
//! no message is exchanged per frame.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFuture, AsyncContext, Context, Handler, Recipient};
use tracing::Span;

use crate::admission::{SessionPlace, SessionSlot};
use crate::balance::MemberLease;
use crate::messages::{
    DrainSession, SessionEnded, SessionOpened, SessionStats, SessionStatsQuery, SessionsChanged,
};
use crate::metrics::{Metrics, RouteCounters};
use crate::outcome::{EndCause, Initiator, Outcome};
pub use crate::outcome::{SessionId, SessionSummary};
use crate::pump::{PumpConfig, Pumping, SessionLimits, Shared};
use crate::shutdown::{ShutdownSignal, TrackToken};
use crate::trace;
use crate::transport::SessionStreams;

/// Where the sessions of one worker report their start and end: the route table, in batches.
///
/// Reports are collected during a turn of the worker's event loop and sent as one
/// [`SessionsChanged`] by a task that runs once the turn's other ready tasks have run, so a busy
/// worker wakes the route table's thread once per batch, not twice per session (each wake-up is
/// a cross-thread notification and, with the threads on one core, two context switches). A
/// registry is built per worker (`clone` gives an empty batch) and lives behind an `Rc` there.
pub struct SessionRegistry {
    route_table: Recipient<SessionsChanged>,
    batch: RefCell<SessionsChanged>,
    flush_scheduled: Cell<bool>,
}

impl Clone for SessionRegistry {
    fn clone(&self) -> SessionRegistry {
        SessionRegistry::new(self.route_table.clone())
    }
}

impl SessionRegistry {
    /// A registry reporting to `route_table`.
    pub fn new(route_table: Recipient<SessionsChanged>) -> SessionRegistry {
        SessionRegistry {
            route_table,
            batch: RefCell::new(SessionsChanged::default()),
            flush_scheduled: Cell::new(false),
        }
    }

    /// Reports a session that started.
    pub fn opened(self: &Rc<Self>, msg: SessionOpened) {
        self.batch.borrow_mut().opened.push(msg);
        self.schedule_flush();
    }

    /// Reports a session that ended.
    pub fn ended(self: &Rc<Self>, msg: SessionEnded) {
        self.batch.borrow_mut().ended.push(msg);
        self.schedule_flush();
    }

    fn schedule_flush(self: &Rc<Self>) {
        if self.flush_scheduled.replace(true) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_local(async move {
            // Let every task already woken in this turn add its reports first.
            tokio::task::yield_now().await;
            this.flush_scheduled.set(false);
            let batch = this.batch.take();
            this.route_table.do_send(batch);
        });
    }
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
    /// The HTTP version of the client's handshake.
    pub http_version: crate::http2::HttpProtocol,
}

/// Owns one upgraded WebSocket.
///
/// # Memory
/// An idle session is this actor in its actix context (one tokio task of 768 bytes: the task
/// is rounded up to 128-byte steps, so the actor keeps under 304 bytes), its pump (one boxed
/// [`Pumping`], polled by the context with this actor at hand, so counters and drain orders
/// are plain fields here, with no `Rc` or waker between them), its mailbox, and tokio's two
/// socket registrations.
pub struct SessionActor {
    id: SessionId,
    info: SessionInfo,
    started: Instant,
    /// What the pump starts from, until it starts (boxed: the actor lives as long as the
    /// session, and these would be dead weight in it).
    start: Option<Box<Start>>,
    /// Counters and drain orders, read and written by the pump whenever it is polled.
    shared: Shared,
    env: Env,
    /// Total bytes at the last [`SessionStatsQuery`] and when they were first seen at that
    /// total: how `idle_ms` is sampled without touching the pump.
    last_look: Cell<(u64, Instant)>,
}

/// What the pump starts from, and what only the start needs.
struct Start {
    streams: SessionStreams,
    cfg: PumpConfig,
    limits: SessionLimits,
    shutdown: ShutdownSignal,
    shutdown_grace: Duration,
}

/// The parts of [`SessionEnv`] the actor keeps for its whole life.
struct Env {
    registry: Rc<SessionRegistry>,
    metrics: Arc<Metrics>,
    route_metrics: Arc<RouteCounters>,
    span: Span,
    // Held for their drop: the shutdown tracker's count, the rule's `max_sessions` place and
    // the listener's `max_connections` place are given back when the session ends.
    _token: TrackToken,
    _slot: SessionSlot,
    _connection: Option<SessionPlace>,
}

/// What a session needs from the worker that starts it.
pub struct SessionEnv {
    /// Where it reports its start and end.
    pub registry: Rc<SessionRegistry>,
    /// Fires when Tether shuts down.
    pub shutdown: ShutdownSignal,
    /// How long the close handshake may take at shutdown.
    pub shutdown_grace: Duration,
    /// Counters its pump adds its traffic to as it goes.
    pub metrics: Arc<Metrics>,
    /// Its route's counters, which count its ending.
    pub route_metrics: Arc<RouteCounters>,
    /// Its `websocket.session` span (`Span::none()` when not tracing).
    pub span: Span,
    /// Keeps it counted by the shutdown tracker.
    pub token: TrackToken,
    /// Its place in the route's `max_sessions`, given back when the session ends.
    pub slot: SessionSlot,
    /// Its connection's place in the listener's `max_connections`, held by the connection
    /// through its HTTP phase, moved here on the `101` and given back when the session ends.
    pub connection: Option<SessionPlace>,
}

impl SessionActor {
    /// A session over `streams`, pumped as `pump` says; it starts when the actor starts.
    pub fn new(
        info: SessionInfo,
        streams: SessionStreams,
        pump: PumpConfig,
        limits: SessionLimits,
        env: SessionEnv,
    ) -> SessionActor {
        let SessionEnv {
            registry,
            shutdown,
            shutdown_grace,
            metrics,
            route_metrics,
            span,
            token,
            slot,
            connection,
        } = env;
        SessionActor {
            id: SessionId::next(),
            info,
            started: Instant::now(),
            start: Some(Box::new(Start {
                streams,
                cfg: pump,
                limits,
                shutdown,
                shutdown_grace,
            })),
            shared: Shared::default(),
            env: Env {
                registry,
                metrics,
                route_metrics,
                span,
                _token: token,
                _slot: slot,
                _connection: connection,
            },
            last_look: Cell::new((0, Instant::now())),
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let counters = &self.shared.counters;
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
        self.env.route_metrics.session_ended(o);
        record_on_span(&self.env.span, &summary);
        tracing::info!(
            target: "tether::access",
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
            trace_id = trace::trace_id(&self.env.span),
            "websocket session ended"
        );
        // Ending the span here: it covers the 101 to the last byte.
        self.env.span = Span::none();
        self.env.registry.ended(SessionEnded {
            id: self.id,
            summary,
        });
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.env.registry.opened(SessionOpened {
            id: self.id,
            route: self.info.route.clone(),
            member: self
                .info
                .lease
                .as_ref()
                .map_or(self.info.backend, MemberLease::addr),
            port: self.info.backend.port(),
            http_version: self.info.http_version,
            session: ctx.address().downgrade(),
        });
        let Some(start) = self.start.take() else {
            return;
        };
        let Start {
            streams,
            cfg,
            limits,
            shutdown,
            shutdown_grace,
        } = *start;
        // Shutdown drains every registered session through the route table; one that started
        // after the signal fired learns it here.
        if shutdown.is_fired() {
            self.shared
                .drain(shutdown.reason(), Duration::ZERO, shutdown_grace);
        }
        let pump = Pumping::new(streams, cfg, limits, &self.shared);
        // A boxed item of this context (not a task of its own: a tokio task is a 128-byte
        // aligned allocation with a header, a box is just the pump).
        ctx.spawn(PumpTask { pump });
    }
}

pin_project_lite::pin_project! {
    /// The pump as an item of the actor's context: polled with the actor at hand (after the
    /// mailbox, in the same poll, so a drain order handled there is seen at once), and the
    /// end of the session once it resolves.
    struct PumpTask {
        #[pin]
        pump: Pumping,
    }
}

impl ActorFuture<SessionActor> for PumpTask {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut SessionActor,
        ctx: &mut Context<SessionActor>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let pump = self.project().pump;
        match pump.poll_pump(&act.shared, &act.env.metrics, task) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(outcome) => {
                act.finish(outcome);
                ctx.stop();
                Poll::Ready(())
            }
        }
    }
}

impl Handler<DrainSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: DrainSession, _: &mut Context<Self>) {
        if !self.env.span.is_none() {
            // When this session's close was scheduled, from its start.
            let at = self.started.elapsed() + msg.close_in;
            self.env
                .span
                .record("tether.drain.close_at_ms", at.as_secs_f64() * 1e3);
        }
        self.shared
            .drain(msg.reason, msg.close_in, msg.answer_within);
    }
}

impl Handler<SessionStatsQuery> for SessionActor {
    type Result = actix::MessageResult<SessionStatsQuery>;

    fn handle(&mut self, _: SessionStatsQuery, _: &mut Context<Self>) -> Self::Result {
        let c = &self.shared.counters;
        let total = c.client_bytes.get() + c.backend_bytes.get();
        let now = Instant::now();
        let (seen, since) = self.last_look.get();
        let since = if total == seen { since } else { now };
        self.last_look.set((total, since));
        actix::MessageResult(SessionStats {
            client_bytes: c.client_bytes.get(),
            backend_bytes: c.backend_bytes.get(),
            client_messages: c.client_messages.get(),
            backend_messages: c.backend_messages.get(),
            idle_ms: now.saturating_duration_since(since).as_millis() as u64,
        })
    }
}

/// Puts a finished session's facts on its span (a no-op when not tracing).
fn record_on_span(span: &Span, summary: &SessionSummary) {
    if span.is_none() {
        return;
    }
    let o = &summary.outcome;
    span.record("websocket.close.cause", o.cause.as_str());
    if let Some(initiator) = o.initiator {
        span.record("websocket.close.initiator", initiator.as_str());
    }
    if let Some(c) = &o.client_close {
        if let Some(code) = c.code {
            span.record("websocket.close.client.code", i64::from(code));
        }
        if !c.reason.is_empty() {
            span.record("websocket.close.client.reason", c.reason.as_str());
        }
    }
    if let Some(c) = &o.backend_close {
        if let Some(code) = c.code {
            span.record("websocket.close.backend.code", i64::from(code));
        }
        if !c.reason.is_empty() {
            span.record("websocket.close.backend.reason", c.reason.as_str());
        }
    }
    if let Some(code) = o.tether_close {
        span.record("websocket.close.tether.code", i64::from(code));
    }
    span.record("websocket.client.messages", summary.client_messages as i64);
    span.record("websocket.client.bytes", summary.client_bytes as i64);
    span.record(
        "websocket.backend.messages",
        summary.backend_messages as i64,
    );
    span.record("websocket.backend.bytes", summary.backend_bytes as i64);
    if let Some(rtt) = o.ping_rtt_last {
        span.record("websocket.ping.rtt_ms.last", rtt.as_secs_f64() * 1e3);
    }
    if let Some(rtt) = o.ping_rtt_max {
        span.record("websocket.ping.rtt_ms.max", rtt.as_secs_f64() * 1e3);
    }
    span.record(
        "websocket.duration_ms",
        summary.duration.as_secs_f64() * 1e3,
    );
    if !matches!(o.cause, EndCause::Normal | EndCause::Drain) {
        trace::record_error(span, o.cause.as_str());
    }
}
