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
use tether_config::{Inspect, OnRateLimit, MAX_SESSION_AGE_JITTER};
use tokio::net::TcpStream;
use tracing::{Instrument as _, Span};

use crate::access_log::{self, AccessLine, LogSettings};
use crate::admission::{ConnectionGuard, ListenerInfo, SessionSlot};
use crate::balance::MemberLease;
use crate::body::{ClientBodyError, RequestBody, UploadProbe};
use crate::error::ProxyError;
use crate::first_request::Prefixed;
use crate::grpc;
use crate::handshake;
use crate::headers;
use crate::http2::HttpProtocol;
use crate::jitter;
use crate::metrics::{ConnectFailure, Metrics, RetryReason, RouteCounters};
use crate::pump::{OverLimit, PumpConfig, SessionLimits};
use crate::response::ProxyBody;
use crate::route_table::{Route, SharedRoutes};
use crate::session::{SessionActor, SessionEnv, SessionInfo, SessionRegistry};
use crate::shutdown::{ShutdownSignal, TrackToken, Tracker};
use crate::token_bucket::Rate;
use crate::trace::{self, HandshakeOutcome};
use crate::transport::{SessionIo, SessionStreams, StreamIo, TlsIo};
use crate::upgrade::UpgradeAnswer;
use crate::upstream::{self, SendFailure, UpstreamBody, UpstreamPool};

mod attempts;
mod http_request;
mod websocket;

use http_request::forward_http;
use websocket::forward_websocket;
pub(crate) use websocket::tls_session;
pub use websocket::SessionStart;

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
    /// dropped with it, or taken into the session when the connection upgrades (a `101`). An
    /// HTTP/2 connection keeps it: its WebSockets are streams of it.
    pub guard: RefCell<Option<ConnectionGuard>>,
    /// An HTTP/2 connection's own state; `None` on HTTP/1.1, which pays nothing for it.
    pub http2: Option<Rc<crate::http2::Http2Conn>>,
}

impl Connection {
    /// HTTP/1.1 or HTTP/2.
    pub fn protocol(&self) -> HttpProtocol {
        if self.http2.is_some() {
            HttpProtocol::Http2
        } else {
            HttpProtocol::Http1
        }
    }
}

/// What the access log and the span learn while a request is handled.
#[derive(Debug, Default)]
struct RequestFacts {
    route: Option<Arc<str>>,
    /// The matched rule's counters (`None`: no rule matched, counted as `route=""`).
    counters: Option<Arc<RouteCounters>>,
    backend: Option<SocketAddr>,
    /// For a handshake: the backend's answer was not a 101.
    refused: bool,
    /// Attempts on other members after the first failed.
    retries: u32,
    /// What the access log and spans record.
    log: LogSettings,
    /// Counts the request body's bytes (requests with a body).
    upload: Option<UploadProbe>,
    /// Time to open the backend connection of the answered attempt (none when pooled).
    connect: Option<Duration>,
    /// From sending the answered attempt to the backend's response head.
    ttfb: Option<Duration>,
    /// A WebSocket the backend accepted: the session to start.
    session: Option<SessionStart>,
}

/// A client request's body as the request path sees it.
#[derive(Debug)]
pub enum ClientBody {
    /// The body as hyper's server reads it (possibly empty).
    Incoming(Incoming),
    /// No body: a request whose head the worker read itself (a WebSocket handshake, which has
    /// none: see [`crate::first_request`]).
    Empty,
}

impl ClientBody {
    /// Nothing (more) comes: an empty body.
    pub fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Incoming(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }
}

/// The service's only error: the client left before its request was complete, so its
/// connection is closed without a response (nobody would read one).
#[derive(Debug, thiserror::Error)]
#[error("client closed the connection before its request was complete")]
pub struct ClientGone;

/// Handles one request: the service function of every hyper-served client connection. Every
/// error becomes a response here, except a client that left ([`ClientGone`]): its connection is
/// closed. A WebSocket whose backend answered `101` starts once hyper hands the connection over.
pub async fn handle(
    ctx: Rc<WorkerContext>,
    conn: Rc<Connection>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ClientGone> {
    // Present only on a request that asked to upgrade (HTTP/1.1) or an extended CONNECT.
    let upgrade = hyper::upgrade::on(&mut req);
    let (resp, session) = answer(&ctx, &conn, req.map(ClientBody::Incoming)).await;
    if let Some(session) = session {
        tokio::task::spawn_local(session.start_upgraded(upgrade));
    }
    resp
}

/// Answers one request, on any connection: routes, validates, forwards, logs and counts it.
/// On a WebSocket handshake the backend accepted, the answer is the `101` (over HTTP/2 a
/// `200`) to send, and the session to start once it is on its way ([`SessionStart`]).
pub async fn answer(
    ctx: &Rc<WorkerContext>,
    conn: &Rc<Connection>,
    mut req: Request<ClientBody>,
) -> (
    Result<Response<ProxyBody>, ClientGone>,
    Option<SessionStart>,
) {
    let started = Instant::now();
    let websocket = match conn.protocol() {
        HttpProtocol::Http1 => handshake::wants_websocket(req.headers()),
        HttpProtocol::Http2 => handshake::is_h2_websocket(&req),
    };
    let method = req.method().clone();
    let mut facts = RequestFacts {
        log: ctx.routes.load().log,
        ..RequestFacts::default()
    };
    let request_id = access_log::ensure_request_id(req.headers_mut());
    let arrival = trace::Arrival {
        listener: &conn.listener.name,
        scheme: conn.listener.scheme,
        client: conn.peer,
        local: conn.listener.local_addr,
    };
    let span = trace::http_server(&req, arrival, websocket, facts.log.record_query);
    trace::adopt_parent(&span, req.headers());
    let line = access_log::enabled().then(|| {
        Box::new(AccessLine {
            settings: facts.log,
            started,
            client: conn.peer,
            listener: conn.listener.name.clone(),
            method: method.clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: req.headers().get(header::HOST).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            request_id: Some(request_id.clone()),
            status: 0,
            websocket,
            route: None,
            backend: None,
            retries: 0,
            upload: None,
            connect: None,
            ttfb: None,
            trace_id: None,
        })
    });
    // Boxed: the request's future is a few KiB, and instrumenting and awaiting it inline copies
    // it three times; one allocation costs less.
    let result = Box::pin(route_and_forward(
        ctx, conn, req, websocket, &span, &mut facts,
    ))
    .instrument(span.clone())
    .await;
    let (mut resp, error) = match result {
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
                trace::record_error(&span, err.error_type());
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
    // The request id goes back to the client too (not on a 101, which is relayed unchanged).
    if let Ok(resp) = &mut resp {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .entry(access_log::X_REQUEST_ID)
                .or_insert(request_id);
        }
    }
    let elapsed = started.elapsed();
    if websocket {
        let outcome = match error {
            Some(outcome) => outcome,
            None if facts.refused => HandshakeOutcome::BackendRefused,
            None => HandshakeOutcome::Upgraded,
        };
        facts
            .counters
            .as_ref()
            .unwrap_or(ctx.metrics.unrouted())
            .handshake(outcome);
        ctx.metrics.refused_upgrade(outcome);
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
        facts
            .counters
            .as_ref()
            .unwrap_or(ctx.metrics.unrouted())
            .request(status, elapsed);
    }
    if !span.is_none() {
        trace::record_status(&span, status);
        if let Some(backend) = facts.backend {
            span.record("tether.backend", backend.to_string());
        }
        if facts.retries > 0 {
            span.record("tether.retries", i64::from(facts.retries));
        }
    }
    if let Some(mut line) = line {
        line.status = status;
        line.route = facts.route.take();
        line.backend = facts.backend;
        line.retries = facts.retries;
        line.upload = facts.upload.take();
        line.connect = facts.connect;
        line.ttfb = facts.ttfb;
        line.trace_id = trace::trace_id(&span);
        match &mut resp {
            // Written when the body has been sent (or abandoned): see `access_log`.
            Ok(resp) => {
                let body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
                *resp.body_mut() = body.log_when_done(line);
            }
            Err(_) => line.write(0),
        }
    }
    (resp.map_err(|_| ClientGone), facts.session.take())
}

async fn route_and_forward(
    ctx: &Rc<WorkerContext>,
    conn: &Rc<Connection>,
    mut req: Request<ClientBody>,
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
        let matched = snapshot
            .lookup_matched(&conn.listener.name, host, req.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        trace::record_route(span, &req, &matched.route.name, &matched.template);
        matched.route.clone()
    };
    facts.route = Some(route.name.clone());
    facts.counters = Some(route.metrics.clone());
    if websocket {
        // Boxed: the handshake's future (backend exchange, TLS, session start) is large, and
        // every plain request's future would otherwise carry its size and be copied at it.
        Box::pin(forward_websocket(ctx, conn, route, req, span, facts)).await
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
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
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
