//! The request path: route, validate, forward, and hand upgraded WebSockets to a session.
//!
//! 1. Establish the one host the request is for ([`headers::request_host`]: missing, repeated
//!    or invalid `Host` → 400; an absolute-form target's authority replaces `Host`), then look
//!    the request up in the current route snapshot (no route → 404).
//! 2. A WebSocket handshake is validated (RFC 6455 §4.2.1) and its `Origin` checked against the
//!    rule before anything reaches a backend (400/426/403).
//! 3. Pick a member (none in rotation → 503).
//! 4. Strip hop-by-hop headers, add `X-Forwarded-*`, forward with `connect_timeout` (→ 502) and
//!    wait for the head within `request_timeout` (→ 504). The client's body goes through a
//!    [`RequestBody`] that enforces the listener's `request_body_timeout` (→ 408) and tags the
//!    client's failures (bad framing → 400; a client that left → connection closed, no answer),
//!    so they never count against the member.
//! 5. A failed attempt counts against its member (passive health); the request may then go to
//!    another member in rotation, up to the settings' `retries` (see `Attempts`).
//! 6. A WebSocket handshake goes to the backend over a fresh connection with no HTTP client on
//!    it ([`crate::upgrade`]). A `101` goes back unchanged; the backend socket and the client's
//!    upgraded one go to a new [`SessionActor`] on this worker. A refusal is relayed with its
//!    body read in full (bounded); any other answer to a plain request is relayed with its body
//!    streamed.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tether_config::Inspect;
use tokio::net::TcpStream;
use tracing::{Instrument as _, Span};

use crate::admission::{ConnectionGuard, ListenerInfo};
use crate::balance::MemberLease;
use crate::body::{ClientBodyError, RequestBody, UploadProbe};
use crate::error::ProxyError;
use crate::handshake;
use crate::headers;
use crate::metrics::{Metrics, RetryReason};
use crate::pump::PumpConfig;
use crate::response::ProxyBody;
use crate::route_table::{Route, SharedRoutes};
use crate::session::{SessionActor, SessionEnv, SessionInfo, SessionRegistry};
use crate::shutdown::{ShutdownSignal, Tracker};
use crate::trace::{self, HandshakeOutcome};
use crate::transport::{SessionIo, SessionStreams, TlsIo};
use crate::upgrade::UpgradeAnswer;
use crate::upstream::{self, SendFailure, UpstreamBody, UpstreamPool};

/// What every connection on one worker shares.
pub struct WorkerContext {
    /// The worker's index (for logs).
    pub index: usize,
    /// The published route table.
    pub routes: SharedRoutes,
    /// Idle backend connections of this worker.
    pub upstream: Rc<UpstreamPool>,
    /// Where sessions register (shared by every session on this worker: one pointer each).
    pub registry: Rc<SessionRegistry>,
    /// Fires when the sidecar shuts down.
    pub shutdown: ShutdownSignal,
    /// Counts live connections and sessions.
    pub tracker: Tracker,
    /// How long sessions get to finish their close handshake when Tether shuts down.
    pub shutdown_grace: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// One client connection, as the request path sees it.
#[derive(Debug)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener that accepted it.
    pub listener: Arc<ListenerInfo>,
    /// Counts the connection against its listener's limits. It lives as long as the connection:
    /// dropped with it, or taken into the session when the connection upgrades (a `101`).
    pub guard: RefCell<Option<ConnectionGuard>>,
}

/// What the access log and the span learn while a request is handled.
#[derive(Debug, Default)]
struct RequestFacts {
    route: Option<Arc<str>>,
    backend: Option<SocketAddr>,
    /// For a handshake: the backend's answer was not a 101.
    refused: bool,
    /// Attempts on other members after the first failed.
    retries: u32,
}

/// The service's only error: the client left before its request was complete, so its
/// connection is closed without a response (nobody would read one).
#[derive(Debug, thiserror::Error)]
#[error("client closed the connection before its request was complete")]
pub struct ClientGone;

/// Handles one request: the service function of every client connection. Every error becomes
/// a response here, except a client that left ([`ClientGone`]): its connection is closed.
pub async fn handle(
    ctx: Rc<WorkerContext>,
    conn: Rc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ClientGone> {
    let started = Instant::now();
    let websocket = handshake::wants_websocket(req.headers());
    let method = req.method().clone();
    let span = if websocket {
        trace::handshake(
            req.uri().path(),
            &conn.listener.name,
            conn.peer,
            req.headers(),
        )
    } else {
        trace::http_server(
            method.as_str(),
            req.uri().path(),
            &conn.listener.name,
            conn.peer,
        )
    };
    trace::adopt_parent(&span, req.headers());
    let path_for_log = access_log_enabled().then(|| req.uri().path().to_owned());
    let mut facts = RequestFacts::default();
    let result = route_and_forward(&ctx, &conn, req, websocket, &span, &mut facts)
        .instrument(span.clone())
        .await;
    let (resp, error) = match result {
        Ok(resp) => (Ok(resp), None),
        Err(err) => {
            let status = err.status();
            let side = err.side().as_str();
            if status.is_server_error() {
                tracing::warn!(client = %conn.peer, %method, status = status.as_u16(), side, retries = facts.retries, error = %err, "request failed");
            } else {
                tracing::debug!(client = %conn.peer, %method, status = status.as_u16(), side, error = %err, "request refused");
            }
            if !span.is_none() {
                span.record("tether.error.side", side);
            }
            let outcome = err.handshake_outcome();
            let resp = if err.closes_silently() {
                Err(status)
            } else {
                Ok(err.into_response())
            };
            (resp, Some(outcome))
        }
    };
    let status = match &resp {
        Ok(resp) => resp.status().as_u16(),
        Err(status) => status.as_u16(),
    };
    let elapsed = started.elapsed();
    if websocket {
        let outcome = match error {
            Some(outcome) => outcome,
            None if facts.refused => HandshakeOutcome::BackendRefused,
            None => HandshakeOutcome::Upgraded,
        };
        ctx.metrics.handshake(outcome);
        if !span.is_none() {
            span.record("tether.outcome", outcome.as_str());
            let negotiated = resp.as_ref().ok().and_then(|r| {
                r.headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|p| p.to_str().ok())
            });
            if let Some(p) = negotiated {
                span.record("websocket.subprotocol.negotiated", p);
            }
        }
    } else {
        ctx.metrics.request(status, elapsed);
    }
    if !span.is_none() {
        span.record("http.response.status_code", i64::from(status));
        if let Some(route) = &facts.route {
            span.record(
                if websocket {
                    "tether.route"
                } else {
                    "http.route"
                },
                &**route,
            );
        }
        if let Some(backend) = facts.backend {
            span.record("tether.backend", backend.to_string());
        }
        if facts.retries > 0 {
            span.record("tether.retries", i64::from(facts.retries));
        }
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
    }
    if let Some(path) = path_for_log {
        tracing::info!(
            target: "tether::access",
            client = %conn.peer,
            listener = %conn.listener.name,
            method = %method,
            path = %path,
            status,
            duration_us = elapsed.as_micros() as u64,
            route = facts.route.as_deref(),
            backend = facts.backend.map(tracing::field::display),
            retries = facts.retries,
            websocket,
            trace_id = trace::trace_id(&span),
            "request"
        );
    }
    resp.map_err(|_| ClientGone)
}

/// True when access-log lines would be written (checked once per request).
fn access_log_enabled() -> bool {
    tracing::enabled!(target: "tether::access", tracing::Level::INFO)
}

async fn route_and_forward(
    ctx: &Rc<WorkerContext>,
    conn: &Rc<Connection>,
    mut req: Request<Incoming>,
    websocket: bool,
    span: &Span,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    // One host per request, before anything else reads one (RFC 9112 §3.2, §3.2.2): a target's
    // authority replaces `Host`, so the rule chosen and the backend's `Host` always agree.
    let replacement = headers::request_host(req.version(), req.uri(), req.headers())?.1;
    if let Some(host) = replacement {
        req.headers_mut().insert(header::HOST, host);
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if let Some(port) = conn.listener.redirect_port {
        if websocket {
            return Err(ProxyError::InsecureWebSocket { port });
        }
        return Ok(redirect_to_https(
            &req,
            host,
            port,
            conn.listener.local_addr,
        ));
    }
    let route = {
        let snapshot = ctx.routes.load();
        snapshot
            .lookup(&conn.listener.name, host, req.uri().path())
            .cloned()
            .ok_or(ProxyError::NoRoute)?
    };
    facts.route = Some(route.name.clone());
    if websocket {
        forward_websocket(ctx, conn, route, req, span, facts).await
    } else {
        forward_http(ctx, conn, &route, req, span, facts).await
    }
}

/// `308 Permanent Redirect` to the same host (`host`, checked by [`headers::request_host`]),
/// path and query on the https listener's `port` (308 keeps the method and body, unlike 301).
fn redirect_to_https<B>(
    req: &Request<B>,
    host: Option<&str>,
    port: u16,
    local: SocketAddr,
) -> Response<ProxyBody> {
    // The port is dropped; an IPv6 literal goes back in brackets.
    let host = match host.and_then(headers::parse_authority) {
        Some(a) if a.host.contains(':') => format!("[{}]", a.host),
        Some(a) => a.host.to_owned(),
        None => match local.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Picks the member for this request with the pool's balancing policy (over the members in
/// rotation in the current snapshot: no lock, no message) and applies the settings' port
/// override. The lease counts the request on the member (for `least_connections`) until it is
/// dropped, or becomes a session count after a `101`.
fn pick_backend(
    route: &Route,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(SocketAddr, MemberLease), ProxyError> {
    pick_other(route, conn, headers, &[]).ok_or_else(|| ProxyError::NoHealthyBackend {
        pool: route.pool.name.clone(),
    })
}

/// [`pick_backend`] for a retry: a member in rotation not yet `tried`, if any.
fn pick_other(
    route: &Route,
    conn: &Connection,
    headers: &http::HeaderMap,
    tried: &[SocketAddr],
) -> Option<(SocketAddr, MemberLease)> {
    let lease = route.pool.pick_other(conn.peer.ip(), headers, tried)?;
    let mut backend = lease.addr();
    if let Some(port) = route.settings.port {
        backend.set_port(port);
    }
    Some((backend, lease))
}

/// Passive health, on failure: only what the backend did counts against the member
/// ([`ProxyError::counts_against_member`]). One relaxed atomic add; only the failure that
/// reaches the pool's threshold sends a message.
fn report_failure(lease: &MemberLease, err: &ProxyError) {
    if err.counts_against_member() {
        lease.member().passive_failure(err);
    }
}

/// The retry budget of one request: which members were tried, and whether the one retry after
/// a reset has been spent.
///
/// Lifecycle: every failed attempt is reported against its member first; then
/// [`Attempts::next`] decides. A retry is allowed while fewer than the settings' `retries` were
/// made, there is an untried member in rotation, and either nothing reached the failed member
/// (its connect or TLS handshake failed: any request, and WebSocket upgrades) or the request is
/// idempotent (RFC 9110 §9.2.2) with no body and its connection closed before any response byte
/// (once per request). Never after body bytes or response bytes were exchanged.
struct Attempts<'a> {
    ctx: &'a WorkerContext,
    route: &'a Route,
    conn: &'a Connection,
    budget: u32,
    /// Members already tried (allocated only when a retry happens).
    tried: Vec<SocketAddr>,
    reset_retry_spent: bool,
}

impl<'a> Attempts<'a> {
    fn new(ctx: &'a WorkerContext, route: &'a Route, conn: &'a Connection) -> Attempts<'a> {
        Attempts {
            ctx,
            route,
            conn,
            budget: route.settings.retries,
            tried: Vec::new(),
            reset_retry_spent: false,
        }
    }

    /// Whether a failure for `reason` may be retried at all (budget and, for a reset, the
    /// one-per-request rule), before looking for a member.
    fn allows(&self, facts: &RequestFacts, reason: RetryReason) -> bool {
        facts.retries < self.budget && !(reason == RetryReason::Reset && self.reset_retry_spent)
    }

    /// The next member after `failed` failed for `reason`, counted in metrics and `facts`;
    /// `None` when no untried member is in rotation.
    fn next(
        &mut self,
        headers: &http::HeaderMap,
        failed: &MemberLease,
        reason: RetryReason,
        facts: &mut RequestFacts,
    ) -> Option<(SocketAddr, MemberLease)> {
        self.tried.push(failed.addr());
        let (backend, lease) = pick_other(self.route, self.conn, headers, &self.tried)?;
        if reason == RetryReason::Reset {
            self.reset_retry_spent = true;
        }
        facts.retries += 1;
        facts.backend = Some(backend);
        self.ctx.metrics.retry(reason);
        tracing::debug!(failed = %failed.addr(), next = %backend, reason = reason.as_str(), "retrying on another member");
        Some((backend, lease))
    }
}

/// RFC 9110 §9.2.2: the methods whose repetition has the same effect as one request.
fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// A copy of a prepared request head, kept to send a bodyless idempotent request again.
fn copy_head(parts: &http::request::Parts) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy
}

/// The client's fault behind a backend's `request_timeout`: the backend was still waiting for
/// the request body, and so were we.
fn blame(error: ProxyError, upload: Option<&UploadProbe>) -> ProxyError {
    match error {
        ProxyError::ResponseTimeout { after, .. }
            if upload.is_some_and(UploadProbe::waiting_on_client) =>
        {
            ClientBodyError::TooSlow(after).into()
        }
        other => other,
    }
}

/// Passive health, on an answer: a gateway failure the backend reports itself (502, 503, 504)
/// counts against the member; any other answer proves it is serving and starts the count over.
fn report_answer(lease: &MemberLease, backend: SocketAddr, status: StatusCode) {
    match status {
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            lease
                .member()
                .passive_failure(&format_args!("backend {backend} answered {status}"))
        }
        _ => lease.member().passive_success(),
    }
}

/// Rewrites the request head for the backend: origin-form URI, HTTP/1.1, hop-by-hop headers
/// removed, `X-Forwarded-*` added, `Host` overridden when configured.
fn prepare_head(parts: &mut http::request::Parts, conn: &Connection, route: &Route) {
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.listener.scheme,
        host.as_ref(),
    );
    if let Some(override_host) = &route.settings.host_override {
        if let Ok(v) = HeaderValue::from_str(override_host) {
            parts.headers.insert(header::HOST, v);
        }
    } else if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
}

async fn forward_http(
    ctx: &Rc<WorkerContext>,
    conn: &Connection,
    route: &Route,
    req: Request<Incoming>,
    span: &Span,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut backend, mut lease) = pick_backend(route, conn, req.headers())?;
    facts.backend = Some(backend);
    let (mut parts, body) = req.into_parts();
    prepare_head(&mut parts, conn, route);
    let (body, upload): (UpstreamBody, _) = if body.is_end_stream() {
        (RequestBody::empty(), None)
    } else {
        let (body, probe) = RequestBody::client(body, conn.listener.config.request_body_timeout);
        (body, Some(probe))
    };
    let mut attempts = Attempts::new(ctx, route, conn);
    // Only a bodyless idempotent request may be sent again after it was written, so only its
    // head is kept, and only when there is another member to send it to.
    let mut replay = (upload.is_none()
        && attempts.budget > 0
        && idempotent(&parts.method)
        && route.pool.members().len() > 1)
        .then(|| copy_head(&parts));
    let mut req = Request::from_parts(parts, body);
    let (resp, pooled) = loop {
        let client_span = trace::http_client(span, req.method().as_str(), backend);
        trace::inject(&client_span, req.headers_mut());
        let tls = ctx
            .upstream
            .tls_for(&route.settings, backend)
            .inspect_err(|e| report_failure(&lease, e))?;
        let sent = ctx
            .upstream
            .send(
                backend,
                tls.as_ref(),
                req,
                route.settings.connect_timeout,
                route.settings.request_timeout,
            )
            .instrument(client_span.clone())
            .await;
        let SendFailure {
            error,
            unsent,
            reset_before_response,
        } = match sent {
            Ok(answer) => {
                client_span.record(
                    "http.response.status_code",
                    i64::from(answer.0.status().as_u16()),
                );
                break answer;
            }
            Err(failure) => failure,
        };
        let error = blame(error, upload.as_ref());
        report_failure(&lease, &error);
        client_span.record("otel.status_code", "ERROR");
        let again = match unsent {
            Some(unsent)
                if error.counts_against_member()
                    && attempts.allows(facts, RetryReason::Connect) =>
            {
                Some((unsent, RetryReason::Connect))
            }
            None if reset_before_response
                && error.counts_against_member()
                && attempts.allows(facts, RetryReason::Reset) =>
            {
                replay.take().map(|head| {
                    let (parts, ()) = head.into_parts();
                    (
                        Request::from_parts(parts, RequestBody::empty()),
                        RetryReason::Reset,
                    )
                })
            }
            _ => None,
        };
        let Some((again, reason)) = again else {
            return Err(error);
        };
        let Some(next) = attempts.next(again.headers(), &lease, reason, facts) else {
            return Err(error);
        };
        (backend, lease) = next;
        req = again;
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let err = ProxyError::UnrequestedUpgrade { backend };
        report_failure(&lease, &err);
        return Err(err);
    }
    report_answer(&lease, backend, resp.status());
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The lease rides with the connection until the body is done: a streaming response is
    // in flight for least_connections as long as it streams.
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(body, Some(pooled.holding(lease))),
    ))
}

async fn forward_websocket(
    ctx: &Rc<WorkerContext>,
    conn: &Connection,
    route: Arc<Route>,
    mut req: Request<Incoming>,
    span: &Span,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    handshake::validate(&req, req.body().is_end_stream())?;
    check_origin(&route, &req)?;
    check_subprotocols(&route, &req)?;
    let slot = route
        .session_slot()
        .ok_or_else(|| ProxyError::SessionLimit {
            route: route.name.clone(),
        })?;
    let (mut backend, mut lease) = pick_backend(&route, conn, req.headers())?;
    facts.backend = Some(backend);
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    prepare_head(&mut parts, conn, &route);
    headers::set_websocket_upgrade(&mut parts.headers);
    trace::inject(span, &mut parts.headers);
    let mut attempts = Attempts::new(ctx, &route, conn);
    let answer = loop {
        let tls = ctx
            .upstream
            .tls_for(&route.settings, backend)
            .inspect_err(|e| report_failure(&lease, e))?;
        let error = match upstream::send_upgrade(
            backend,
            tls.as_ref(),
            &parts,
            route.settings.connect_timeout,
            route.settings.request_timeout,
        )
        .await
        {
            Ok(answer) => break answer,
            Err(error) => error,
        };
        report_failure(&lease, &error);
        // Only an upgrade that reached no backend goes elsewhere.
        if !(error.before_sending() && attempts.allows(facts, RetryReason::Connect)) {
            return Err(error);
        }
        let reason = RetryReason::Connect;
        let Some(next) = attempts.next(&parts.headers, &lease, reason, facts) else {
            return Err(error);
        };
        (backend, lease) = next;
    };
    report_answer(&lease, backend, answer.status());
    let (head, backend_io, backend_prefix) = match answer {
        UpgradeAnswer::Switched { head, io, prefix } => (head, io, prefix),
        UpgradeAnswer::Refused(resp) => {
            // The backend refused the upgrade: relay its answer, read in full. Its backend
            // connection is already closed.
            facts.refused = true;
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            return Ok(Response::from_parts(parts, ProxyBody::full(body)));
        }
    };
    let info = SessionInfo {
        route: route.name.clone(),
        backend,
        client: conn.peer,
        lease: Some(lease.into_session()),
    };
    // The connection's place in `max_connections` goes with its sockets into the session.
    let connection = conn.guard.borrow_mut().take();
    let pump = pump_config(&route);
    let token = ctx.tracker.token();
    let ctx = ctx.clone();
    let handshake_span = span.clone();
    tokio::task::spawn_local(async move {
        // Only the client side goes through hyper's upgrade; the backend socket is ready.
        let client = match client_upgrade.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(client = %info.client, error = %e, "upgrade did not complete");
                return;
            }
        };
        let Some((client, client_prefix)) = into_tcp(client) else {
            tracing::error!("upgraded client connection is not a TCP stream");
            return;
        };
        let connection = connection.and_then(ConnectionGuard::into_session);
        let span = trace::session(&handshake_span, &info.route, info.backend);
        let env = SessionEnv {
            registry: ctx.registry.clone(),
            shutdown: ctx.shutdown.clone(),
            shutdown_grace: ctx.shutdown_grace,
            metrics: ctx.metrics.clone(),
            span,
            token,
            slot,
            connection,
        };
        let streams = SessionStreams {
            client,
            client_prefix,
            backend: backend_io,
            backend_prefix,
        };
        SessionActor::new(info, streams, pump, env).start();
    });
    // The backend's 101 goes back unchanged: accept key, subprotocol and extensions included.
    let (parts, ()) = head.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// Recovers the client's connection under its upgraded one (TCP, or TCP + the rustls state of
/// an https listener's connection), with the bytes hyper had read past the handshake. hyper's
/// own read buffer and tokio-rustls' wrapper are dropped here, so they do not live as long as
/// the session.
fn into_tcp(upgraded: Upgraded) -> Option<(SessionIo, Bytes)> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return Some((SessionIo::Plain(parts.io.into_inner()), parts.read_buf)),
        Err(upgraded) => upgraded,
    };
    let parts = upgraded
        .downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>()
        .ok()?;
    let (tcp, conn) = parts.io.into_inner().into_inner();
    Some((
        SessionIo::Tls(Box::new(TlsIo::new(tcp, conn))),
        parts.read_buf,
    ))
}

/// How a session on `route` is pumped: its inspection mode and bounds.
fn pump_config(route: &Route) -> PumpConfig {
    let ws = &route.websocket;
    PumpConfig {
        frames: ws.inspect == Inspect::Frames,
        idle_timeout: route.settings.request_timeout,
        keepalive: (!ws.keepalive_interval.is_zero()).then_some(ws.keepalive_interval),
        max_message_size: ws.max_message_size,
    }
}

/// Enforces the rule's `subprotocols` allow-list: a handshake that offers subprotocols, none of
/// them allowed, is refused. Offers are otherwise passed through untouched, and the backend
/// chooses.
fn check_subprotocols<B>(route: &Route, req: &Request<B>) -> Result<(), ProxyError> {
    let allowed = &route.websocket.subprotocols;
    if allowed.is_empty() {
        return Ok(());
    }
    let mut offered_any = false;
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for offer in value.as_bytes().split(|&b| b == b',') {
            let offer = offer.trim_ascii();
            if offer.is_empty() {
                continue;
            }
            offered_any = true;
            if allowed.iter().any(|a| a.as_bytes() == offer) {
                return Ok(());
            }
        }
    }
    if offered_any {
        Err(ProxyError::SubprotocolNotAllowed)
    } else {
        Ok(())
    }
}

/// Enforces the rule's `allowed_origins` (CORS does not cover WebSockets; this is the only
/// origin guard, as ASP.NET Core's `AllowedOrigins`).
fn check_origin<B>(route: &Route, req: &Request<B>) -> Result<(), ProxyError> {
    let policy = &route.websocket;
    let origin = req.headers().get(header::ORIGIN);
    match origin {
        None if policy.require_origin => Err(ProxyError::OriginRequired),
        None => Ok(()),
        Some(origin) => {
            if policy.allowed_origins.is_empty()
                || policy.allowed_origins.iter().any(|allowed| {
                    allowed == "*" || allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes())
                })
            {
                Ok(())
            } else {
                Err(ProxyError::OriginNotAllowed)
            }
        }
    }
}
