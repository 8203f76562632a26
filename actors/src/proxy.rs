//! The request path: route, validate, forward, and hand upgraded WebSockets to a session.
//!
//! 1. Look the request up in the current route snapshot (no route → 404).
//! 2. A WebSocket handshake is validated (RFC 6455 §4.2.1) and its `Origin` checked against the
//!    rule before anything reaches a backend (400/426/403).
//! 3. Pick a member (none in rotation → 503).
//! 4. Strip hop-by-hop headers, add `X-Forwarded-*`, forward with `connect_timeout` (→ 502) and
//!    wait for the head within `request_timeout` (→ 504).
//! 5. A `101` goes back unchanged and both upgraded sockets go to a new [`SessionActor`] on this
//!    worker; any other answer is relayed with its body streamed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix::Actor;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tether_config::Inspect;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::handshake;
use crate::headers;
use crate::listener::ListenerInfo;
use crate::pump::PumpConfig;
use crate::route_table::Route;
use crate::session::{SessionActor, SessionInfo, SessionStreams};
use crate::upstream::{self, UpstreamBody};
use crate::worker::WorkerContext;

/// One client connection, as the request path sees it.
#[derive(Debug)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener that accepted it.
    pub listener: Arc<ListenerInfo>,
}

/// Handles one request: the service function of every client connection. Never fails: every
/// error becomes a response here.
pub async fn handle(
    ctx: Rc<WorkerContext>,
    conn: Rc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let method = req.method().clone();
    let result = route_and_forward(&ctx, &conn, req).await;
    Ok(match result {
        Ok(resp) => resp,
        Err(err) => {
            let status = err.status();
            if status.is_server_error() {
                tracing::warn!(client = %conn.peer, %method, status = status.as_u16(), side = ?err.side(), error = %err, "request failed");
            } else {
                tracing::debug!(client = %conn.peer, %method, status = status.as_u16(), side = ?err.side(), error = %err, "request refused");
            }
            err.into_response()
        }
    })
}

async fn route_and_forward(
    ctx: &Rc<WorkerContext>,
    conn: &Rc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let route = {
        let snapshot = ctx.routes.load();
        let host = request_host(&req);
        snapshot
            .lookup(&conn.listener.name, host, req.uri().path())
            .cloned()
            .ok_or(ProxyError::NoRoute)?
    };
    if handshake::wants_websocket(req.headers()) {
        forward_websocket(ctx, conn, route, req).await
    } else {
        forward_http(ctx, conn, &route, req).await
    }
}

/// The host a request is for: the URI authority (absolute-form) or the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Picks the member for this request and applies the settings' port override.
fn pick_backend(route: &Route) -> Result<SocketAddr, ProxyError> {
    let mut backend = route
        .pool
        .pick()
        .ok_or_else(|| ProxyError::NoHealthyBackend {
            pool: route.pool.name.clone(),
        })?;
    if let Some(port) = route.settings.port {
        backend.set_port(port);
    }
    Ok(backend)
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
) -> Result<Response<ProxyBody>, ProxyError> {
    let backend = pick_backend(route)?;
    let (mut parts, body) = req.into_parts();
    prepare_head(&mut parts, conn, route);
    let body: UpstreamBody = if body.is_end_stream() {
        Either::Right(Empty::new())
    } else {
        Either::Left(body)
    };
    let (resp, pooled) = ctx
        .upstream
        .send(
            backend,
            Request::from_parts(parts, body),
            route.settings.connect_timeout,
            route.settings.request_timeout,
        )
        .await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UnrequestedUpgrade { backend });
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(body, Some(pooled)),
    ))
}

async fn forward_websocket(
    ctx: &Rc<WorkerContext>,
    conn: &Connection,
    route: Arc<Route>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    handshake::validate(&req, req.body().is_end_stream())?;
    check_origin(&route, &req)?;
    check_subprotocols(&route, &req)?;
    let backend = pick_backend(&route)?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    prepare_head(&mut parts, conn, &route);
    headers::set_websocket_upgrade(&mut parts.headers);
    let upstream_req = Request::from_parts(parts, Either::Right(Empty::<Bytes>::new()));
    let mut resp = upstream::send_upgrade(
        backend,
        upstream_req,
        route.settings.connect_timeout,
        route.settings.request_timeout,
    )
    .await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused the upgrade: relay its answer as it is.
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, ProxyBody::upstream(body, None)));
    }
    let backend_upgrade = hyper::upgrade::on(&mut resp);
    let (parts, _) = resp.into_parts();
    let info = SessionInfo {
        route: route.name.clone(),
        backend,
        client: conn.peer,
    };
    let pump = pump_config(&route);
    let token = ctx.tracker.token();
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        match tokio::try_join!(client_upgrade, backend_upgrade) {
            Ok((client, backend_io)) => match (into_tcp(client), into_tcp(backend_io)) {
                (Some((client, client_prefix)), Some((backend_sock, backend_prefix))) => {
                    SessionActor::new(
                        info,
                        SessionStreams {
                            client,
                            client_prefix,
                            backend: backend_sock,
                            backend_prefix,
                        },
                        pump,
                        ctx.registry.clone(),
                        (ctx.shutdown.clone(), ctx.shutdown_grace),
                        token,
                    )
                    .start();
                }
                _ => tracing::error!("upgraded connection is not a TCP stream"),
            },
            Err(e) => {
                tracing::debug!(client = %info.client, error = %e, "upgrade did not complete")
            }
        }
    });
    // The backend's 101 goes back unchanged: accept key, subprotocol and extensions included.
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// Recovers the TCP socket under an upgraded connection, with the bytes hyper had read past the
/// handshake. hyper's own read buffer is dropped here, so it does not live as long as the
/// session.
fn into_tcp(upgraded: Upgraded) -> Option<(TcpStream, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
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
