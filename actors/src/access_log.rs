//! The access log of requests: one line per request (target `tether::access`, level INFO).
//!
//! Lifecycle of a line: [`proxy::handle`](crate::proxy::handle) gathers what it learns about a
//! request into an [`AccessLine`] (only when the target is enabled: otherwise nothing is
//! gathered), then hands the line to the response body ([`crate::response::ProxyBody`]), which
//! counts the bytes it sends and writes the line when it is dropped: after its last byte went
//! out, or when the client left mid-body. Only then are `bytes_out` and `duration_us` known.
//! A request that gets no response at all (the client left first) is written at once.
//!
//! Which fields a line carries is `telemetry.access_log_fields`; a field with no value (no route
//! matched, no body, a pooled backend connection) is left out rather than written empty. With
//! `log_format = "json"` every field is a top-level key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri, Version};
use tether_config::{AccessLogField, TelemetryConfig};

use crate::body::UploadProbe;
use crate::trace;

/// The configured fields, as a bit set the request path tests without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    fields: u32,
    /// Whether query strings go to the log and to spans (`telemetry.record_query`).
    pub record_query: bool,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            fields: AccessLogField::ALL.iter().fold(0, |m, f| m | bit(*f)),
            record_query: tether_config::DEFAULT_RECORD_QUERY,
        }
    }
}

fn bit(field: AccessLogField) -> u32 {
    let at = AccessLogField::ALL
        .iter()
        .position(|f| *f == field)
        .unwrap_or(0);
    1 << at
}

impl LogSettings {
    /// The settings of `telemetry`.
    pub fn new(telemetry: &TelemetryConfig) -> LogSettings {
        LogSettings {
            fields: telemetry
                .access_log_fields
                .iter()
                .fold(0, |m, f| m | bit(*f)),
            record_query: telemetry.record_query,
        }
    }

    /// Whether lines carry `field`.
    pub fn has(&self, field: AccessLogField) -> bool {
        self.fields & bit(field) != 0
    }
}

/// True when access-log lines would be written (checked once per request).
pub fn enabled() -> bool {
    tracing::enabled!(target: "tether::access", tracing::Level::INFO)
}

/// Everything one request's line says. Built only when the access log is enabled; every value
/// here is a reference-counted clone of the request's own (URI, header values), not a copy.
#[derive(Debug)]
pub struct AccessLine {
    /// Which fields to write.
    pub(crate) settings: LogSettings,
    /// When the request head arrived.
    pub(crate) started: Instant,
    /// The client.
    pub(crate) client: SocketAddr,
    /// The listener's name.
    pub(crate) listener: Arc<str>,
    /// The method.
    pub(crate) method: Method,
    /// The target as received.
    pub(crate) uri: Uri,
    /// The client's HTTP version.
    pub(crate) version: Version,
    /// The `Host` the request was for.
    pub(crate) host: Option<HeaderValue>,
    /// `User-Agent`.
    pub(crate) user_agent: Option<HeaderValue>,
    /// `X-Request-Id` (the client's, or the one Tether generated).
    pub(crate) request_id: Option<HeaderValue>,
    /// The status sent (or logged, for a client that left: 499).
    pub(crate) status: u16,
    /// Whether it was a WebSocket handshake.
    pub(crate) websocket: bool,
    /// The routing rule.
    pub(crate) route: Option<Arc<str>>,
    /// The member that answered or was tried last.
    pub(crate) backend: Option<SocketAddr>,
    /// Attempts on other members.
    pub(crate) retries: u32,
    /// Counts the request body's bytes.
    pub(crate) upload: Option<UploadProbe>,
    /// Time to open the backend connection (none when pooled).
    pub(crate) connect: Option<Duration>,
    /// From sending to the backend to its response head.
    pub(crate) ttfb: Option<Duration>,
    /// The trace id, when traced.
    pub(crate) trace_id: Option<String>,
}

impl AccessLine {
    /// Writes the line, with `bytes_out` response body bytes sent.
    pub fn write(&self, bytes_out: u64) {
        let s = &self.settings;
        let on = |f| s.has(f);
        let us = |d: Duration| d.as_micros() as u64;
        tracing::info!(
            target: "tether::access",
            client = on(AccessLogField::Client).then(|| tracing::field::display(self.client)),
            listener = on(AccessLogField::Listener).then_some(&*self.listener),
            method = on(AccessLogField::Method).then_some(self.method.as_str()),
            host = text(&self.host).filter(|_| on(AccessLogField::Host)),
            path = on(AccessLogField::Path).then_some(self.uri.path()),
            query = self
                .uri
                .query()
                .filter(|_| s.record_query && on(AccessLogField::Query)),
            version = on(AccessLogField::Version).then_some(trace::protocol_version(self.version)),
            status = on(AccessLogField::Status).then_some(self.status),
            duration_us = on(AccessLogField::DurationUs).then(|| us(self.started.elapsed())),
            route = self.route.as_deref().filter(|_| on(AccessLogField::Route)),
            backend = self
                .backend
                .filter(|_| on(AccessLogField::Backend))
                .map(tracing::field::display),
            retries = on(AccessLogField::Retries).then_some(self.retries),
            websocket = on(AccessLogField::Websocket).then_some(self.websocket),
            request_id = text(&self.request_id).filter(|_| on(AccessLogField::RequestId)),
            user_agent = text(&self.user_agent).filter(|_| on(AccessLogField::UserAgent)),
            bytes_in = on(AccessLogField::BytesIn)
                .then(|| self.upload.as_ref().map_or(0, UploadProbe::bytes)),
            bytes_out = on(AccessLogField::BytesOut).then_some(bytes_out),
            connect_us = self.connect.filter(|_| on(AccessLogField::ConnectUs)).map(us),
            ttfb_us = self.ttfb.filter(|_| on(AccessLogField::TtfbUs)).map(us),
            trace_id = self.trace_id.as_deref().filter(|_| on(AccessLogField::TraceId)),
            "request"
        );
    }
}

/// A header value as text, if it is visible ASCII.
fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

/// `X-Request-Id`: the client's when it sent exactly one that looks like an id (see
/// [`acceptable_request_id`]), otherwise a new random id (32 hex digits, 128 bits) that
/// replaces whatever the client sent, so the backend and the log always get one well-formed id.
/// Returns the value.
pub fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(id), None) = (sent.next(), sent.next()) {
        if acceptable_request_id(id.as_bytes()) {
            return id.clone();
        }
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// The longest client-supplied request id kept (a UUID is 36, a W3C trace id 32).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A client's request id is kept when it is 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII
/// other than `"` and `\`: every id format in use (UUIDs, hex, base64, ULIDs) passes, while an
/// id that could bloat every log line or break out of a quoted log field is replaced.
fn acceptable_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The `X-Request-Id` header.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_or_made() {
        let mut headers = http::HeaderMap::new();
        let made = ensure_request_id(&mut headers);
        assert_eq!(made.len(), 32);
        assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(headers[X_REQUEST_ID], made);
        assert_ne!(ensure_request_id(&mut http::HeaderMap::new()), made);
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut headers), "abc");
    }

    #[test]
    fn a_hostile_request_id_is_replaced() {
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in ["", "has space", "quote\"d", "back\\slash", long.as_str()] {
            let mut headers = http::HeaderMap::new();
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = ensure_request_id(&mut headers);
            assert_eq!(id.len(), 32, "{bad:?} kept");
            assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
        }
        // Two ids: neither is trusted, the backend gets one.
        let mut headers = http::HeaderMap::new();
        headers.append(X_REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("two"));
        let id = ensure_request_id(&mut headers);
        assert_eq!(id.len(), 32);
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static(uuid));
        assert_eq!(ensure_request_id(&mut headers), uuid);
    }

    #[test]
    fn settings_hold_exactly_the_configured_fields() {
        let toml = "[telemetry]\naccess_log_fields = [\"status\", \"trace_id\"]\n\
                    [listeners.public]\nbind = \"127.0.0.1:0\"\n";
        let telemetry = tether_config::from_toml_str(toml)
            .unwrap_or_else(|e| panic!("{e}"))
            .telemetry;
        let s = LogSettings::new(&telemetry);
        for f in AccessLogField::ALL {
            assert_eq!(
                s.has(f),
                matches!(f, AccessLogField::Status | AccessLogField::TraceId),
                "{f}"
            );
        }
        assert!(AccessLogField::ALL
            .into_iter()
            .all(|f| LogSettings::default().has(f)));
    }
}
