//! [`WorkerActor`]: one per worker arbiter (thread). It serves the HTTP/1.1 connections handed to
//! it and hosts the sessions upgraded on them, so a connection's bytes never cross threads.
//!
//! Connections reach it from the listener actors on its own arbiter (one per listener, see
//! [`crate::listener`]): accepted on this thread and registered with this thread's runtime, so
//! [`Accepted`] carries a ready tokio socket and nothing moves between runtimes.
//!
//! A connection speaks HTTP/1.1 or HTTP/2 ([`crate::http2`] says which and how HTTP/2 is
//! bounded); both go through the same request path ([`proxy::handle`]).
//!
//! Everything a worker shares between its connections lives in one `WorkerContext` (defined
//! with the request path that reads it) behind an
//! `Rc`: the route snapshot handle, the backend connection pool and the session registry. None of
//! it needs a lock because only this thread touches it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Context, Handler};
use http::Response;
use http_body_util::BodyExt as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::first_request::{self, First, Prefixed};
use crate::http2::{self, HttpProtocol};
use crate::messages::Accepted;
use crate::metrics::Metrics;
use crate::proxy::{self, ClientBody, Connection, WorkerContext};
use crate::route_table::SharedRoutes;
use crate::session::SessionRegistry;
use crate::shutdown::{ShutdownSignal, TrackToken, Tracker};
use crate::tls::{self, TLS_HANDSHAKE_TIMEOUT};
use crate::transport::SessionIo;
use crate::upstream::UpstreamPool;

/// The parts of a `WorkerContext` that can be sent to the worker's thread.
#[derive(Clone)]
pub struct WorkerSetup {
    /// The published route table.
    pub routes: SharedRoutes,
    /// Where sessions register.
    pub registry: SessionRegistry,
    /// Fires when the sidecar shuts down.
    pub shutdown: ShutdownSignal,
    /// Counts live connections and sessions.
    pub tracker: Tracker,
    /// How long sessions get to finish their close handshake when Tether shuts down.
    pub shutdown_grace: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The tracing dispatcher of this sidecar, installed on the worker's thread.
    pub dispatch: Option<tracing::Dispatch>,
}

/// Serves connections on one worker thread.
pub struct WorkerActor {
    ctx: Rc<WorkerContext>,
    /// Keeps this sidecar's dispatcher the default on the worker's thread.
    _dispatch: Option<tracing::dispatcher::DefaultGuard>,
}

impl WorkerActor {
    /// Builds the worker; call on the worker's own arbiter (inside `start_in_arbiter`).
    pub fn new(index: usize, setup: WorkerSetup) -> WorkerActor {
        WorkerActor {
            ctx: Rc::new(WorkerContext {
                index,
                routes: setup.routes,
                upstream: Rc::new(UpstreamPool::new(setup.metrics.clone())),
                registry: Rc::new(setup.registry),
                shutdown: setup.shutdown,
                tracker: setup.tracker,
                shutdown_grace: setup.shutdown_grace,
                metrics: setup.metrics,
            }),
            _dispatch: setup
                .dispatch
                .as_ref()
                .map(tracing::dispatcher::set_default),
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;
}

impl Handler<Accepted> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Accepted, _: &mut Context<Self>) {
        let token = self.ctx.tracker.token();
        tokio::task::spawn_local(serve(self.ctx.clone(), msg, token));
    }
}

/// Resolves when shutdown should interrupt a connection's setup (preface, TLS handshake): for
/// a connection accepted before the shutdown fired. One accepted during the drain (the listeners
/// stay open until the drain is over) is served to its first answer instead — a WebSocket
/// upgrade gets `503` with `Retry-After` — bounded by the head and handshake timeouts.
async fn interrupted_by_shutdown(ctx: &WorkerContext, late: bool) {
    if late {
        return std::future::pending().await;
    }
    ctx.shutdown.clone().fired().await
}

/// Serves one client connection until it closes, upgrades, or shutdown ends it gracefully.
async fn serve(ctx: Rc<WorkerContext>, accepted: Accepted, _token: TrackToken) {
    let Accepted {
        stream,
        peer,
        listener,
        guard,
    } = accepted;
    let _ = stream.set_nodelay(true);
    let late = ctx.shutdown.is_fired();
    // The guard goes with the connection: dropped with it, or moved into its session.
    let conn = Connection {
        peer,
        listener,
        guard: RefCell::new(Some(guard)),
        http2: None,
    };
    let config = &conn.listener.config;
    let limits = first_request::Limits {
        max_head_bytes: config.max_request_head_bytes,
        max_headers: config.max_headers,
        // Prior knowledge (h2c): the first bytes say HTTP/2 or not.
        http2_preface: config.http2,
    };
    match conn.listener.tls.clone() {
        None => serve_first(ctx, stream, conn, limits, late).await,
        // Boxed: a TLS handshake's state is large, and a plain connection should not carry
        // room for it while it waits for its first bytes.
        Some(tls) => Box::pin(serve_tls(ctx, stream, conn, tls, limits, late)).await,
    }
}

/// Serves a connection of an https listener: the TLS handshake here, on the worker, bounded (a
/// failure concerns this connection only; shutdown abandons handshakes still in progress),
/// then HTTP/2 or HTTP/1.1 as ALPN (RFC 7301) chose.
async fn serve_tls(
    ctx: Rc<WorkerContext>,
    stream: TcpStream,
    conn: Connection,
    tls: Arc<tls::ListenerTls>,
    mut limits: first_request::Limits,
    late: bool,
) {
    let peer = conn.peer;
    let accept = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let handshake = tokio::select! {
        r = accept => r,
        _ = interrupted_by_shutdown(&ctx, late) => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            tls.handshakes.fetch_add(1, Ordering::Relaxed);
            // ALPN offers h2 only when the listener has http2 on.
            if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
                ctx.metrics.http_connection(HttpProtocol::Http2);
                Box::pin(serve_h2(ctx, TokioIo::new(stream), conn)).await
            } else {
                limits.http2_preface = false;
                Box::pin(serve_first(ctx, stream, conn, limits, late)).await
            }
        }
        Ok(Err(e)) => tls::handshake_failed(&tls, peer, &e),
        Err(_) => tls::handshake_failed(&tls, peer, &"timed out"),
    }
}

/// A client connection whose first request the worker reads itself: plain TCP, or TLS that
/// negotiated HTTP/1.1.
trait ClientConnection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The connection as an upgraded session's client side.
    fn into_session_io(self) -> SessionIo;
}

impl ClientConnection for TcpStream {
    fn into_session_io(self) -> SessionIo {
        SessionIo::Plain(self)
    }
}

impl ClientConnection for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_session_io(self) -> SessionIo {
        proxy::tls_session(self)
    }
}

/// Reads a connection's first request head ([`first_request`]) and serves the connection by
/// what it is: a WebSocket handshake is answered here, anything else goes to hyper's HTTP/1.1
/// or HTTP/2 server with the bytes already read in front. Bounded like a request head; a client
/// silent or too slow until then is closed without an answer, as hyper does.
async fn serve_first<S: ClientConnection>(
    ctx: Rc<WorkerContext>,
    mut io: S,
    conn: Connection,
    limits: first_request::Limits,
    late: bool,
) {
    let head_timeout = conn.listener.config.request_head_timeout;
    let deadline = tokio::time::Instant::now() + head_timeout;
    // A connection that has sent nothing when shutdown fires is closed; one whose request is
    // arriving is read to its end and answered (a handshake gets 503 with Retry-After).
    let started = tokio::select! {
        // Bytes already there win over a shutdown that fired meanwhile.
        biased;
        r = tokio::time::timeout_at(deadline, first_request::first_bytes(&mut io, limits)) => r,
        _ = interrupted_by_shutdown(&ctx, late) => return,
    };
    let Ok(Some(read)) = started else { return };
    let first =
        tokio::time::timeout_at(deadline, first_request::read_head(&mut io, read, limits)).await;
    let late = late || ctx.shutdown.is_fired();
    // What serves the connection from here is boxed: a connection waiting for its first bytes
    // then holds only this small future, not the largest of the servers' states.
    match first {
        // Silent or too slow: closed without an answer, as hyper does.
        Err(_) => {}
        Ok(First::Http2(read)) => {
            ctx.metrics.http_connection(HttpProtocol::Http2);
            Box::pin(serve_h2(ctx, TokioIo::new(Prefixed::new(read, io)), conn)).await
        }
        Ok(First::Http1(read)) => {
            ctx.metrics.http_connection(HttpProtocol::Http1);
            let io = TokioIo::new(Prefixed::new(read, io));
            Box::pin(serve_http(ctx, io, Rc::new(conn))).await
        }
        Ok(First::WebSocket(handshake)) => {
            ctx.metrics.http_connection(HttpProtocol::Http1);
            Box::pin(serve_handshake(ctx, io, Rc::new(conn), handshake, late)).await
        }
    }
}

/// Answers a WebSocket handshake the worker read itself ([`First::WebSocket`]) through the same
/// request path as any other request ([`proxy::answer`]), and writes the answer. On a `101` the
/// connection goes straight to the session (no HTTP server to hand it over); after any other
/// answer the connection goes on as an ordinary HTTP/1.1 connection, unless the client asked
/// to close it or the sidecar is draining.
async fn serve_handshake<S: ClientConnection>(
    ctx: Rc<WorkerContext>,
    mut io: S,
    conn: Rc<Connection>,
    handshake: first_request::Handshake,
    late: bool,
) {
    let first_request::Handshake {
        request,
        rest,
        close,
    } = handshake;
    let (answer, session) = proxy::answer(&ctx, &conn, request.map(|()| ClientBody::Empty)).await;
    // A client that left gets no answer.
    let Ok(answer) = answer else { return };
    let (head, body) = answer.into_parts();
    // Tether's own answers and a refusal read in full: small, and complete. Collecting the body
    // also writes the access line, as sending it would.
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return;
    };
    let closing = session.is_none() && (close || late);
    let bytes = first_request::response_bytes(&Response::from_parts(head, ()), &body, closing);
    // The answer must leave within the head timeout (a client that reads nothing is dropped).
    let timeout = conn.listener.config.request_head_timeout;
    match tokio::time::timeout(timeout, io.write_all(&bytes)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    match session {
        Some(session) => session.start(io.into_session_io(), rest),
        None if closing => {
            let _ = tokio::time::timeout(timeout, io.shutdown()).await;
        }
        None => serve_http(ctx, TokioIo::new(Prefixed::new(rest, io)), conn).await,
    }
}

/// Serves HTTP/1.1 on a connection (plain or TLS) until it closes, upgrades, or shutdown ends it
/// gracefully.
async fn serve_http<I>(ctx: Rc<WorkerContext>, io: I, conn_info: Rc<Connection>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut shutdown = ctx.shutdown.clone();
    // Accepted during the drain: one request, answered, then the connection closes.
    let late = shutdown.is_fired();
    let peer = conn_info.peer;
    let limits = &conn_info.listener.config;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_request_head_bytes)
        .keep_alive(!late);
    let service = {
        let ctx = ctx.clone();
        let conn_info = conn_info.clone();
        service_fn(move |req| proxy::handle(ctx.clone(), conn_info.clone(), req))
    };
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.fired(), if !late => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, worker = ctx.index, error = %e, "client connection ended with an error");
    }
}

/// Serves HTTP/2 on a connection (h2 over TLS, or h2c with prior knowledge) until the client
/// closes it, it fails, or it is told to go away: by shutdown, or by its [`http2::ResetBudget`].
/// Going away sends GOAWAY and lets the streams in flight finish (a WebSocket on one ends when
/// its session does: a drain closes it with 1001).
async fn serve_h2<I>(ctx: Rc<WorkerContext>, io: I, mut conn: Connection)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let h2 = Rc::new(http2::Http2Conn::default());
    conn.http2 = Some(h2.clone());
    let mut shutdown = ctx.shutdown.clone();
    let peer = conn.peer;
    let conn_info = Rc::new(conn);
    let builder = http2::builder(&conn_info.listener.config);
    let service = {
        let ctx = ctx.clone();
        let conn_info = conn_info.clone();
        let h2 = h2.clone();
        service_fn(move |req| {
            // Made before the answer is first polled: a stream reset before hyper ever polled
            // its answer counts as cancelled too.
            let watch = CancelWatch {
                open: Some(h2.streams.open()),
                h2: h2.clone(),
                answered: false,
            };
            let answer = proxy::handle(ctx.clone(), conn_info.clone(), req);
            async move {
                // The whole guard moves in (not just the field the block writes).
                let mut watch = watch;
                let answer = answer.await;
                watch.answered = true;
                // The stream stays open while its body is sent.
                let open = watch.open.take();
                answer.map(|resp| resp.map(|body| body.holding_stream(open)))
            }
        })
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.fired() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = h2.goaway.notified() => {
            ctx.metrics.http2_reset_budget_exceeded();
            tracing::info!(%peer, "HTTP/2 client cancelled too many requests: GOAWAY");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = http2::idle(&h2.streams, conn_info.listener.config.http2_idle_timeout) => {
            tracing::debug!(%peer, "HTTP/2 connection idle: GOAWAY");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let label = http2::error_label(&e);
        ctx.metrics.http2_error(label);
        tracing::debug!(%peer, worker = ctx.index, error = %e, reason = label, "HTTP/2 connection ended with an error");
    }
}

/// Counts how one HTTP/2 request ended against its connection's [`http2::ResetBudget`]: dropped
/// before its answer was ready, the client reset the stream.
struct CancelWatch {
    /// The request's stream, open until its answer's body is done (or the client reset it).
    open: Option<http2::StreamGuard>,
    h2: Rc<http2::Http2Conn>,
    answered: bool,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if self.answered {
            self.h2.resets.completed();
        } else if self.h2.resets.cancelled() {
            self.h2.goaway.notify_one();
        }
    }
}
