//! Spans for requests, handshakes and sessions, and W3C trace-context propagation.
//!
//! Every span here uses the target `tether::trace`, which only the OpenTelemetry layer listens
//! to, and is created only once an exporter is configured ([`enable`]); with telemetry off a
//! request pays one relaxed atomic load and no span. Addresses are passed as values and formatted
//! only into a span that exists, so a request without tracing allocates nothing here.
//!
//! The trace model, per the anchors' advice (a 101 span that never ends is a known bug
//! elsewhere): a short `websocket.handshake` SERVER span that ends with the 101, and a
//! `websocket.session` span, its child, from the 101 to the last byte, carrying the close codes.
//! Ordinary requests get an HTTP SERVER span and a CLIENT span for the backend request.
//! `traceparent`/`tracestate` from the client become the parent, and the backend receives ours.

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
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
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
/// so the backend's spans join the trace.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() {
        return;
    }
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The SERVER span of an ordinary request.
pub fn http_server(method: &str, path: &str, listener: &str, client: SocketAddr) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: "tether::trace",
        "HTTP request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.path = path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        client.address = %client,
        tether.listener = listener,
        tether.backend = tracing::field::Empty,
        tether.retries = tracing::field::Empty,
        tether.error.side = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// The CLIENT span of the request to the backend.
pub fn http_client(parent: &Span, method: &str, backend: SocketAddr) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: "tether::trace",
        parent: parent,
        "backend request",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        server.address = %backend,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The `websocket.handshake` SERVER span.
pub fn handshake(path: &str, listener: &str, client: SocketAddr, headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    tracing::info_span!(
        target: "tether::trace",
        "websocket.handshake",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = "GET",
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        client.address = %client,
        tether.listener = listener,
        tether.route = tracing::field::Empty,
        tether.backend = tracing::field::Empty,
        tether.retries = tracing::field::Empty,
        tether.error.side = tracing::field::Empty,
        websocket.origin = header("origin"),
        websocket.subprotocol.requested = header("sec-websocket-protocol"),
        websocket.subprotocol.negotiated = tracing::field::Empty,
        tether.outcome = tracing::field::Empty,
    )
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
