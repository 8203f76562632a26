//! HTTP/2 on client connections: which protocol a connection speaks, the server settings and
//! limits every HTTP/2 connection gets, and the guard against streams opened and cancelled in
//! bulk (RFC 9113; the rapid-reset attack, CVE-2023-44487).
//!
//! # Which protocol
//! * **HTTPS**: ALPN decides (RFC 9113 §3.2): `h2` when the client offered it and the listener
//!   has `http2` on, HTTP/1.1 otherwise.
//! * **HTTP**: "prior knowledge" (RFC 9113 §3.3): a connection whose first bytes are the
//!   client connection preface is HTTP/2, any other is HTTP/1.1 ([`preface_match`]). The worker
//!   reads the first bytes itself ([`crate::first_request`]) and hands them to whichever server
//!   serves the connection, ahead of the socket, so either reads the connection from its start. The
//!   HTTP/1.1 `Upgrade: h2c` dance (removed from HTTP/2 by RFC 9113 §3.1) is not offered: such
//!   a request is served as HTTP/1.1 and its `Upgrade: h2c` is dropped like any other hop-by-hop
//!   header.
//!
//! # Limits
//! | attack | bound |
//! |---|---|
//! | many streams at once | `http2_max_concurrent_streams` (SETTINGS_MAX_CONCURRENT_STREAMS) |
//! | huge header lists, CONTINUATION floods (CVE-2024-27316 family) | the header list is capped at `max_request_head_bytes` (SETTINGS_MAX_HEADER_LIST_SIZE): a larger one is answered `431`; endless CONTINUATION frames close the connection |
//! | rapid reset in one burst | [`MAX_PENDING_ACCEPT_RESETS`] streams reset before they were served close the connection (GOAWAY `ENHANCE_YOUR_CALM`) |
//! | rapid reset paced to be served first | [`ResetBudget`]: more than [`RESET_BUDGET`] requests cancelled by the client beyond half of those it let finish, and the connection gets GOAWAY |
//! | streams the client makes fail | [`MAX_LOCAL_ERROR_RESETS`] resets of ours close the connection |
//! | PING and SETTINGS floods | each needs its answer written before more frames are read, so a client that does not read stops being read: TCP backpressure, no queue |
//! | a silent connection | HTTP/2 PING every [`KEEPALIVE_INTERVAL`]; no answer within [`KEEPALIVE_TIMEOUT`] closes it |
//! | an idle connection | no open stream (request or WebSocket, see [`OpenStreams`]) for `http2_idle_timeout`: GOAWAY |
//!
//! Connection-level errors are counted by their HTTP/2 error code (`Metrics::http2_error`).

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::TokioTimer;
use tether_config::ListenerConfig;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may reset before they were served (hyper's default, stated here).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams Tether may reset because of the client's errors before the connection is closed.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Requests a client may cancel beyond half of the ones it let finish (see [`ResetBudget`]).
pub const RESET_BUDGET: u32 = 200;
/// How often an HTTP/2 connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may wait for its answer.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP version a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum HttpProtocol {
    /// HTTP/1.x.
    #[default]
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 (h2 over TLS, or h2c with prior knowledge).
    #[serde(rename = "2")]
    Http2,
}

impl HttpProtocol {
    /// As a metric label and `network.protocol.version`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpProtocol::Http1 => "1.1",
            HttpProtocol::Http2 => "2",
        }
    }
}

/// How far the bytes seen so far match the preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Cannot be the preface.
    No,
    /// The whole preface.
    Full,
    /// A proper prefix of it: more bytes decide.
    Partial,
}

/// How far `seen`, a connection's first bytes, match the client connection preface.
pub fn preface_match(seen: &[u8]) -> Match {
    let n = seen.len().min(PREFACE.len());
    if seen[..n] != PREFACE[..n] {
        Match::No
    } else if n == PREFACE.len() {
        Match::Full
    } else {
        Match::Partial
    }
}

/// Runs hyper's HTTP/2 background tasks (one per stream body and upgraded stream) on the
/// worker's own thread: the request path's futures hold `Rc`s and never move between threads.
#[derive(Debug, Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// The HTTP/2 server settings of a listener (see the module doc's limits).
pub fn builder(limits: &ListenerConfig) -> http2::Builder<LocalExec> {
    let mut builder = http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_request_head_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    if limits.http2_websockets {
        // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, only where extended CONNECT works.
        builder.enable_connect_protocol();
    }
    builder
}

/// Requests a client cancelled (reset their stream) before the answer was complete, against
/// those that completed, on one HTTP/2 connection. A browser cancels a few (navigation, closed
/// tabs); an attacker pacing the rapid-reset attack cancels nearly all. Once cancellations
/// exceed [`RESET_BUDGET`] plus half of the completed requests, the connection is told to go
/// away (GOAWAY, then it closes when its streams in flight are done).
#[derive(Debug, Default)]
pub struct ResetBudget {
    cancelled: Cell<u32>,
    completed: Cell<u32>,
}

impl ResetBudget {
    /// Counts a request that was answered.
    pub fn completed(&self) {
        self.completed.set(self.completed.get().saturating_add(1));
    }

    /// Counts a request the client cancelled; true when the connection is now over budget.
    pub fn cancelled(&self) -> bool {
        let cancelled = self.cancelled.get().saturating_add(1);
        self.cancelled.set(cancelled);
        cancelled > RESET_BUDGET.saturating_add(self.completed.get() / 2)
    }
}

/// What an HTTP/2 client connection keeps that an HTTP/1.1 one does not need (an HTTP/1.1
/// connection carries none of it).
#[derive(Debug, Default)]
pub struct Http2Conn {
    /// The streams open on the connection (its idle timer runs while there are none).
    pub streams: Rc<OpenStreams>,
    /// Requests the client cancelled against those answered.
    pub resets: ResetBudget,
    /// Woken when the connection should go away (its reset budget is spent).
    pub goaway: tokio::sync::Notify,
}

/// The streams open on one HTTP/2 connection: requests being answered, and WebSockets (RFC
/// 8441) whose sessions outlive their request. Each holds a [`StreamGuard`]; the connection's
/// idle timer runs only while there are none ([`idle`]).
#[derive(Debug, Default)]
pub struct OpenStreams {
    count: Cell<usize>,
    changed: tokio::sync::Notify,
}

/// One open stream of an [`OpenStreams`]; dropping it closes the stream's account.
#[derive(Debug)]
pub struct StreamGuard(Rc<OpenStreams>);

impl OpenStreams {
    /// Counts a stream as open until the guard is dropped.
    pub fn open(self: &Rc<Self>) -> StreamGuard {
        self.count.set(self.count.get() + 1);
        StreamGuard(self.clone())
    }

    /// Streams open now.
    pub fn count(&self) -> usize {
        self.count.get()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let count = self.0.count.get().saturating_sub(1);
        self.0.count.set(count);
        if count == 0 {
            self.0.changed.notify_one();
        }
    }
}

/// Resolves once the connection has had no open stream for `timeout` (never when `timeout` is
/// zero). Woken only when the last stream closes, so a busy connection costs nothing here.
pub async fn idle(streams: &OpenStreams, timeout: std::time::Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    loop {
        if streams.count() == 0 {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    if streams.count() == 0 {
                        return;
                    }
                }
                _ = streams.changed.notified() => {}
            }
        } else {
            streams.changed.notified().await;
        }
    }
}

/// An HTTP/2 error code as a metric label (RFC 9113 §7); codes no peer should send are `other`.
pub fn reason_label(reason: h2::Reason) -> &'static str {
    match reason {
        h2::Reason::NO_ERROR => "no_error",
        h2::Reason::PROTOCOL_ERROR => "protocol_error",
        h2::Reason::INTERNAL_ERROR => "internal_error",
        h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
        h2::Reason::SETTINGS_TIMEOUT => "settings_timeout",
        h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
        h2::Reason::COMPRESSION_ERROR => "compression_error",
        h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
        _ => "other",
    }
}

/// Every label [`reason_label`] gives, plus `io` (the connection failed below HTTP/2) and
/// `keepalive_timeout`, in the order of the metric's rows.
pub const ERROR_LABELS: [&str; 11] = [
    "no_error",
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "settings_timeout",
    "frame_size_error",
    "compression_error",
    "enhance_your_calm",
    "other",
    "io",
    "keepalive_timeout",
];

/// The label of a failed HTTP/2 connection: its HTTP/2 error code when the failure carries one.
pub fn error_label(error: &hyper::Error) -> &'static str {
    if error.is_timeout() {
        return "keepalive_timeout";
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(reason) => reason_label(reason),
                None => "io",
            };
        }
        source = e.source();
    }
    "io"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preface_is_recognised_from_its_bytes() {
        assert_eq!(preface_match(PREFACE), Match::Full);
        assert_eq!(preface_match(&PREFACE[..3]), Match::Partial);
        assert_eq!(preface_match(b"P"), Match::Partial);
        assert_eq!(preface_match(b"POST / HTTP/1.1\r\n"), Match::No);
        assert_eq!(preface_match(b"PUT"), Match::No);
        assert_eq!(preface_match(b"GET / HTTP/1.1\r\n"), Match::No);
        assert_eq!(
            preface_match(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"),
            Match::No
        );
    }

    #[test]
    fn reset_budget_tolerates_a_browser_and_stops_an_attacker() {
        let browser = ResetBudget::default();
        for i in 0..10_000 {
            browser.completed();
            if i % 10 == 0 {
                assert!(!browser.cancelled(), "a browser cancelling 10% is fine");
            }
        }
        let attacker = ResetBudget::default();
        let over = (0..1_000).position(|_| attacker.cancelled());
        assert_eq!(over, Some(RESET_BUDGET as usize));
    }

    #[test]
    fn every_reason_label_has_a_row() {
        for r in 0..=0xd {
            assert!(ERROR_LABELS.contains(&reason_label(h2::Reason::from(r))));
        }
    }
}
