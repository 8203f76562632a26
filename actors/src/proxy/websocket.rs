//! Forwarding a WebSocket handshake and handing the upgraded sockets to a session.
//!
//! An HTTP/1.1 handshake goes to the backend as it came (hop-by-hop headers aside) and the
//! backend's `101` comes back unchanged. An HTTP/2 one (RFC 8441 extended CONNECT) goes to the
//! backend as an HTTP/1.1 upgrade with a key Tether makes; the backend's `101` must answer that
//! key, and becomes a `200` on the client's stream, which the session then carries.

use super::attempts::*;
use super::*;

pub(super) async fn forward_websocket(
    ctx: &Rc<WorkerContext>,
    conn: &Connection,
    route: Arc<Route>,
    req: Request<ClientBody>,
    span: &Span,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let over_h2 = conn.http2.is_some();
    if over_h2 {
        // The stream stays open for the WebSocket: no END_STREAM to check for.
        handshake::validate_h2(&req)?;
    } else {
        handshake::validate(&req, req.body().is_end_stream())?;
    }
    check_origin(&route, &req)?;
    check_subprotocols(&route, &req)?;
    if ctx.shutdown.is_fired() {
        // The listeners stopped accepting; a connection already open still asks: it is
        // turned away with a time to come back, not cut.
        return Err(ProxyError::Draining);
    }
    if let Some(bucket) = &route.new_sessions {
        if bucket.take_one(std::time::Instant::now()).is_err() {
            return Err(ProxyError::UpgradeRateLimited {
                route: route.name.clone(),
            });
        }
    }
    let slot = route
        .session_slot()
        .ok_or_else(|| ProxyError::SessionLimit {
            route: route.name.clone(),
        })?;
    let (mut backend, mut lease) = pick_backend(&route, conn, req.headers())?;
    facts.backend = Some(backend);
    let (mut parts, _) = req.into_parts();
    prepare_head(&mut parts, conn, &route);
    headers::set_websocket_upgrade(&mut parts.headers);
    // RFC 8441 §5: the HTTP/2 handshake has no key; the backend gets one of Tether's.
    let key = over_h2.then(|| {
        let key = handshake::new_key();
        parts.method = http::Method::GET;
        if let Ok(value) = HeaderValue::from_bytes(&key) {
            parts.headers.insert(header::SEC_WEBSOCKET_KEY, value);
        }
        key
    });
    trace::inject(span, &mut parts.headers);
    let mut attempts = Attempts::new(ctx, &route, conn);
    let answer = loop {
        let tls = ctx
            .upstream
            .tls_for(&route.settings, backend, true)
            .inspect_err(|e| report_failure(&lease, e))?;
        let error = match upstream::send_upgrade(
            backend,
            tls.as_ref(),
            &parts,
            &route.settings.source_addresses,
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
    if let (Some(key), UpgradeAnswer::Switched { head, .. }) = (&key, &answer) {
        let accept = head.headers().get(header::SEC_WEBSOCKET_ACCEPT);
        if accept.is_none_or(|a| a.as_bytes() != handshake::accept_for(key)) {
            let error = ProxyError::BackendAnswer {
                backend,
                cause: crate::upgrade::AnswerError::BadAccept,
            };
            report_failure(&lease, &error);
            return Err(error);
        }
    }
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
        http_version: conn.protocol(),
    };
    // The connection's place in `max_connections` goes with its sockets into the session; an
    // HTTP/2 connection keeps it (the session is one of its streams).
    let connection = if over_h2 {
        None
    } else {
        conn.guard.borrow_mut().take()
    };
    // Over HTTP/2 the session is a stream of the connection: it counts as open (no idle
    // GOAWAY) for as long as the session lives, past the end of this request.
    let open_stream = conn.http2.as_ref().map(|h2| h2.streams.open());
    facts.session = Some(SessionStart {
        ctx: ctx.clone(),
        info,
        route_metrics: route.metrics.clone(),
        pump: pump_config(&route),
        limits: session_limits(&route),
        token: ctx.tracker.token(),
        slot,
        connection,
        open_stream,
        handshake_span: span.clone(),
        backend: backend_io,
        backend_prefix,
    });
    let (mut parts, ()) = head.into_parts();
    if over_h2 {
        // RFC 8441 §5: a 200 on the stream, with the subprotocol and extensions the backend
        // chose; the accept key answered Tether's key, not the client's.
        parts.status = StatusCode::OK;
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    }
    // Over HTTP/1.1 the backend's 101 goes back unchanged: accept key, subprotocol and
    // extensions included.
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// Everything a session needs but its client connection, made when the backend answered `101`.
/// The connection joins it once the `101` is on its way to the client: at once when the worker
/// wrote the answer itself ([`SessionStart::start`]), or when hyper hands the connection over
/// ([`SessionStart::start_upgraded`]).
pub struct SessionStart {
    ctx: Rc<WorkerContext>,
    info: SessionInfo,
    route_metrics: Arc<RouteCounters>,
    pump: PumpConfig,
    limits: SessionLimits,
    token: TrackToken,
    slot: SessionSlot,
    /// The connection's place in `max_connections` (HTTP/1.1: it moves into the session).
    connection: Option<ConnectionGuard>,
    /// Over HTTP/2: the session's stream, counted open (no idle GOAWAY) while the session lives.
    open_stream: Option<crate::http2::StreamGuard>,
    handshake_span: Span,
    backend: SessionIo,
    backend_prefix: Bytes,
}

impl std::fmt::Debug for SessionStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStart")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl SessionStart {
    /// Starts the session actor on this worker over `client`, with the bytes the client sent
    /// after its handshake (`client_prefix`).
    pub fn start(self, client: SessionIo, client_prefix: Bytes) {
        let SessionStart {
            ctx,
            info,
            route_metrics,
            pump,
            limits,
            token,
            slot,
            connection,
            open_stream: _,
            handshake_span,
            backend,
            backend_prefix,
        } = self;
        let connection = connection.and_then(ConnectionGuard::into_session);
        let span = trace::session(&handshake_span, &info.route, info.backend);
        let env = SessionEnv {
            registry: ctx.registry.clone(),
            shutdown: ctx.shutdown.clone(),
            shutdown_grace: ctx.shutdown_grace,
            metrics: ctx.metrics.clone(),
            route_metrics,
            span,
            token,
            slot,
            connection,
        };
        let streams = SessionStreams {
            client,
            client_prefix,
            backend,
            backend_prefix,
        };
        SessionActor::new(info, streams, pump, limits, env).start();
    }

    /// Waits for hyper to hand over the client's connection (HTTP/1.1: once the `101` is
    /// written; HTTP/2: the stream), then starts the session over it.
    pub async fn start_upgraded(mut self, upgrade: hyper::upgrade::OnUpgrade) {
        let client = match upgrade.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(client = %self.info.client, error = %e, "upgrade did not complete");
                return;
            }
        };
        let (client, client_prefix) = match self.open_stream.take() {
            Some(open) => (
                SessionIo::Stream(Box::new(StreamIo::new(client, open))),
                Bytes::new(),
            ),
            None => {
                let Some(tcp) = into_tcp(client) else {
                    tracing::error!("upgraded client connection is not a TCP stream");
                    return;
                };
                tcp
            }
        };
        self.start(client, client_prefix);
    }
}

/// Recovers the client's connection under its upgraded one (TCP, or TCP + the rustls state of
/// an https listener's connection), with the bytes hyper had read past the handshake. hyper's
/// own read buffer and tokio-rustls' wrapper are dropped here, so they do not live as long as
/// the session.
fn into_tcp(upgraded: Upgraded) -> Option<(SessionIo, Bytes)> {
    let upgraded = match upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() {
        Ok(parts) => {
            let (tcp, unread) = parts.io.into_inner().into_parts();
            return Some((SessionIo::Plain(tcp), joined(unread, parts.read_buf)));
        }
        Err(upgraded) => upgraded,
    };
    let parts = upgraded
        .downcast::<TokioIo<Prefixed<tokio_rustls::server::TlsStream<TcpStream>>>>()
        .ok()?;
    let (tls, unread) = parts.io.into_inner().into_parts();
    Some((tls_session(tls), joined(unread, parts.read_buf)))
}

/// An https listener's client connection as a session's: TCP plus its rustls state (the
/// tokio-rustls wrapper is dropped, so it does not live as long as the session).
pub(crate) fn tls_session(tls: tokio_rustls::server::TlsStream<TcpStream>) -> SessionIo {
    let (tcp, conn) = tls.into_inner();
    SessionIo::Tls(Box::new(TlsIo::new(tcp, conn)))
}

/// What hyper had read past the handshake, then what it had not yet read of the bytes the
/// worker read before it (in practice one of the two is empty).
fn joined(unread: Bytes, read_buf: Bytes) -> Bytes {
    match (read_buf.is_empty(), unread.is_empty()) {
        (_, true) => read_buf,
        (true, false) => unread,
        (false, false) => {
            let mut all = Vec::with_capacity(read_buf.len() + unread.len());
            all.extend_from_slice(&read_buf);
            all.extend_from_slice(&unread);
            Bytes::from(all)
        }
    }
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

/// The per-session limits of a session on `route`, its `max_session_age` jittered by
/// ±[`MAX_SESSION_AGE_JITTER`].
fn session_limits(route: &Route) -> SessionLimits {
    let ws = &route.websocket;
    let rate = |r: Option<tether_config::RateLimit>| {
        r.map(|r| Rate {
            per_second: r.per_second,
            burst: r.burst,
        })
    };
    SessionLimits {
        messages: rate(ws.max_messages_per_second),
        bytes: rate(ws.max_bytes_per_second),
        over_limit: match ws.on_rate_limit {
            OnRateLimit::Close => OverLimit::Close,
            OnRateLimit::Delay => OverLimit::Delay,
        },
        slow_consumer_timeout: (!ws.slow_consumer_timeout.is_zero())
            .then_some(ws.slow_consumer_timeout),
        max_age: ws
            .max_session_age
            .map(|age| jitter::around(age, MAX_SESSION_AGE_JITTER, jitter::unit())),
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
