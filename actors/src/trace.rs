//! Spans for requests, handshakes and sessions, and W3C trace-context propagation.
//!
//! Every span here uses the target `tether::trace`, which only the OpenTelemetry layer listens
//! to, and is created only once an exporter is configured ([`enable`]); with telemetry off a
//! request pays one relaxed atomic load and no span. Addresses are passed as values and formatted
//! only into a span that exists, so a request without tracing allocates nothing here.
//!
//! The trace model, per the anchors' advice (a 101 span that never ends is a known bug
//! elsewhere): a short SERVER span for the handshake that ends with the 101, and a
//! `websocket.session` span, its child, from the 101 to the last byte, carrying the close codes.
//! Ordinary requests get an HTTP SERVER span and a CLIENT span per backend attempt.
//! `traceparent`/`tracestate` from the client become the parent, and the backend receives ours.
//!
//! Attributes follow OpenTelemetry's HTTP semantic conventions (stable): SERVER spans are named
//! `{method} {http.route}` once a rule matched ([`record_route`]), CLIENT spans `{method}`;
//! `error.type` is the status code of a 5xx or a short failure class; an attribute with no
//! value is left out rather than recorded empty.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span creation on (called once an exporter is running).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// True when spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How a WebSocket handshake ended, as recorded on its span and counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The backend answered 101 and a session started.
    Upgraded,
    /// No rule matched.
    NoRoute,
    /// The handshake was malformed (400/426).
    BadHandshake,
    /// The `Origin` was refused (403).
    RejectedOrigin,
    /// The offered subprotocols were refused (400).
    RejectedSubprotocol,
    /// The route's session limit was reached (503).
    SessionLimit,
    /// A plain-text upgrade on a listener that redirects to HTTPS (403).
    RejectedInsecure,
    /// No healthy member (503).
    NoBackend,
    /// The backend could not be reached or did not answer (502/504).
    BackendError,
    /// The backend answered something other than 101, relayed as is.
    BackendRefused,
    /// The route's `max_new_sessions_per_second` was reached (503 + `Retry-After`).
    RateLimited,
    /// Tether is draining for shutdown (503 + `Retry-After`).
    Draining,
}

impl HandshakeOutcome {
    /// Every outcome, in a fixed order (metrics index by it).
    pub const ALL: [HandshakeOutcome; 12] = [
        HandshakeOutcome::Upgraded,
        HandshakeOutcome::NoRoute,
        HandshakeOutcome::BadHandshake,
        HandshakeOutcome::RejectedOrigin,
        HandshakeOutcome::RejectedSubprotocol,
        HandshakeOutcome::SessionLimit,
        HandshakeOutcome::RejectedInsecure,
        HandshakeOutcome::NoBackend,
        HandshakeOutcome::BackendError,
        HandshakeOutcome::BackendRefused,
        HandshakeOutcome::RateLimited,
        HandshakeOutcome::Draining,
    ];

    /// As recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeOutcome::Upgraded => "upgraded",
            HandshakeOutcome::NoRoute => "no_route",
            HandshakeOutcome::BadHandshake => "bad_handshake",
            HandshakeOutcome::RejectedOrigin => "rejected_origin",
            HandshakeOutcome::RejectedSubprotocol => "rejected_subprotocol",
            HandshakeOutcome::SessionLimit => "session_limit",
            HandshakeOutcome::RejectedInsecure => "rejected_insecure",
            HandshakeOutcome::NoBackend => "no_backend",
            HandshakeOutcome::BackendError => "backend_error",
            HandshakeOutcome::BackendRefused => "backend_refused",
            HandshakeOutcome::RateLimited => "rate_limited",
            HandshakeOutcome::Draining => "draining",
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        // An empty `tracestate` is not sent (W3C Trace Context §3.3: no list members, no
        // header); the client's own is replaced or removed, never passed on stale.
        match HeaderValue::from_str(&value) {
            Ok(value) if !value.is_empty() => {
                self.0.insert(name, value);
            }
            _ => {
                self.0.remove(name);
            }
        }
    }
}

/// Makes the client's `traceparent`/`tracestate` (if any) the parent of `span`.
pub fn adopt_parent(span: &Span, headers: &HeaderMap) {
    if span.is_none() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Writes `span`'s context into `headers` as `traceparent`/`tracestate`, replacing the client's,
/// so the backend's spans join the trace. `tracestate` is left out when there is none.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() {
        return;
    }
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Where a request arrived: what the SERVER span records about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The client's address (`client.*` and `network.peer.*`).
    pub client: SocketAddr,
    /// The listener's own address (`server.*` when the request names no host).
    pub local: SocketAddr,
}

/// The method as OpenTelemetry's HTTP conventions want it: one of the RFC 9110 §9 methods and
/// PATCH, or `_OTHER` (the original then goes in `http.request.method_original`).
fn known_method(method: &http::Method) -> Option<&'static str> {
    use http::Method;
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

/// `network.protocol.version` of an HTTP version.
pub fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_11 => "1.1",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "",
    }
}

/// The SERVER span of a request: an ordinary one, or a WebSocket handshake (`websocket`), which
/// also carries the origin, the subprotocols and `tether.outcome`. Named `{method}` until the
/// route is known ([`record_route`]). Attributes follow OpenTelemetry's HTTP server conventions;
/// the query is recorded only with `record_query` (it often carries secrets); an attribute with
/// no value is left out, never an empty string.
pub fn http_server<B>(
    req: &http::Request<B>,
    at: Arrival<'_>,
    websocket: bool,
    record_query: bool,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let method = known_method(req.method());
    let name = method.unwrap_or("HTTP");
    let span = tracing::info_span!(
        target: "tether::trace",
        "HTTP request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method.unwrap_or("_OTHER"),
        http.request.method_original = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.scheme = at.scheme,
        url.path = req.uri().path(),
        url.query = tracing::field::Empty,
        client.address = %at.client.ip(),
        client.port = i64::from(at.client.port()),
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        network.peer.address = %at.client.ip(),
        network.peer.port = i64::from(at.client.port()),
        network.protocol.version = protocol_version(req.version()),
        user_agent.original = tracing::field::Empty,
        error.type = tracing::field::Empty,
        tether.listener = at.listener,
        tether.route = tracing::field::Empty,
        tether.backend = tracing::field::Empty,
        tether.retries = tracing::field::Empty,
        tether.error.side = tracing::field::Empty,
        tether.outcome = tracing::field::Empty,
        websocket.origin = tracing::field::Empty,
        websocket.subprotocol.requested = tracing::field::Empty,
        websocket.subprotocol.negotiated = tracing::field::Empty,
    );
    if method.is_none() {
        span.record("http.request.method_original", req.method().as_str());
    }
    if record_query {
        if let Some(query) = req.uri().query() {
            span.record("url.query", query);
        }
    }
    let header = |name: http::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    // `server.*` is the authority the client addressed (RFC 9110 §7.2), else our own socket.
    let authority = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| header(http::header::HOST))
        .and_then(crate::headers::parse_authority);
    match authority {
        Some(a) => {
            span.record("server.address", a.host);
            let default = if at.scheme == "https" { 443 } else { 80 };
            span.record("server.port", i64::from(a.port.unwrap_or(default)));
        }
        None => {
            span.record("server.address", tracing::field::display(at.local.ip()));
            span.record("server.port", i64::from(at.local.port()));
        }
    }
    if let Some(agent) = header(http::header::USER_AGENT) {
        span.record("user_agent.original", agent);
    }
    if websocket {
        if let Some(origin) = header(http::header::ORIGIN) {
            span.record("websocket.origin", origin);
        }
        if let Some(offered) = header(http::header::SEC_WEBSOCKET_PROTOCOL) {
            span.record("websocket.subprotocol.requested", offered);
        }
    }
    span
}

/// Records the matched rule on a SERVER span: `http.route` is the path pattern that matched
/// (`/chat`, `/api/*`), `tether.route` the rule's name, and the span is renamed
/// `{method} {http.route}`.
pub fn record_route<B>(span: &Span, req: &http::Request<B>, rule: &str, template: &str) {
    if span.is_none() {
        return;
    }
    span.record("http.route", template);
    span.record("tether.route", rule);
    let method = known_method(req.method()).unwrap_or("HTTP");
    // On the OpenTelemetry span itself: once entered, a recorded `otel.name` is ignored.
    use opentelemetry::trace::TraceContextExt as _;
    span.context()
        .span()
        .update_name(format!("{method} {template}"));
}

/// The CLIENT span of one attempt at the backend request `req` (its head already prepared for
/// the backend, so its URI is origin-form): OpenTelemetry's HTTP client conventions, named
/// `{method}`. `url.full` carries the query only with `record_query`.
pub fn http_client<B>(
    parent: &Span,
    req: &http::Request<B>,
    backend: SocketAddr,
    tls: bool,
    record_query: bool,
) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    let method = known_method(req.method());
    let scheme = if tls { "https" } else { "http" };
    let target = match (record_query, req.uri().query()) {
        (true, Some(_)) => req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        _ => req.uri().path(),
    };
    let host = match backend {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let span = tracing::info_span!(
        target: "tether::trace",
        parent: parent,
        "backend request",
        otel.name = method.unwrap_or("HTTP"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method.unwrap_or("_OTHER"),
        http.request.method_original = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.full = format!("{scheme}://{host}:{}{target}", backend.port()),
        server.address = %backend.ip(),
        server.port = i64::from(backend.port()),
        network.peer.address = %backend.ip(),
        network.peer.port = i64::from(backend.port()),
        network.protocol.version = protocol_version(req.version()),
        error.type = tracing::field::Empty,
    );
    if method.is_none() {
        span.record("http.request.method_original", req.method().as_str());
    }
    span
}

/// Records the status of an answer on a SERVER or CLIENT span; a 5xx is an error whose
/// `error.type` is the status code (OpenTelemetry HTTP conventions: 4xx are not a server's
/// errors).
pub fn record_status(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        let code = http::StatusCode::from_u16(status);
        record_error(
            span,
            code.as_ref().map_or("_OTHER", http::StatusCode::as_str),
        );
    }
}

/// Marks `span` failed with a short, low-cardinality `error.type` (a status code or an error
/// class such as `connect_timeout`).
pub fn record_error(span: &Span, error_type: &str) {
    if span.is_none() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

/// The `websocket.session` span, child of the handshake's.
pub fn session(handshake: &Span, route: &str, backend: SocketAddr) -> Span {
    if handshake.is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: "tether::trace",
        parent: handshake,
        "websocket.session",
        otel.kind = "internal",
        tether.route = route,
        tether.backend = %backend,
        websocket.close.cause = tracing::field::Empty,
        websocket.close.initiator = tracing::field::Empty,
        websocket.close.client.code = tracing::field::Empty,
        websocket.close.client.reason = tracing::field::Empty,
        websocket.close.backend.code = tracing::field::Empty,
        websocket.close.backend.reason = tracing::field::Empty,
        websocket.close.tether.code = tracing::field::Empty,
        websocket.client.messages = tracing::field::Empty,
        websocket.client.bytes = tracing::field::Empty,
        websocket.backend.messages = tracing::field::Empty,
        websocket.backend.bytes = tracing::field::Empty,
        websocket.ping.rtt_ms.last = tracing::field::Empty,
        websocket.ping.rtt_ms.max = tracing::field::Empty,
        websocket.duration_ms = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        tether.drain.close_at_ms = tracing::field::Empty,
    )
}

/// The current trace id of `span` as 32 hex digits, for access logs (`None` when not traced).
pub fn trace_id(span: &Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let id = cx.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}
