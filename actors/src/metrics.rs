//! Counters for operators: handshakes by outcome, sessions closed by cause and close code, bytes
//! and messages per direction, requests and their latency by status class, retries on another
//! backend member by reason.
//!
//! Every counter is a relaxed atomic in a fixed array indexed by an enum, so the request path
//! pays a few uncontended-in-practice increments and never a lock or an allocation. The
//! registry renders the Prometheus text format; what only the control plane knows (live sessions
//! per route, member health, dropped spans) is appended by the caller at render time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::outcome::{EndCause, Initiator, Outcome};
use crate::trace::HandshakeOutcome;

/// Every session end cause, in the order of the counters' rows.
pub const CAUSES: [EndCause; EndCause::ALL.len()] = EndCause::ALL;

/// Close-code buckets: 1000–1015 one each, then application codes (3000–4999), then "none".
const CODE_BUCKETS: usize = 18;
/// Upper bounds of the request-latency histogram, in seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a request or WebSocket upgrade went to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection (or its TLS handshake) to the member failed: nothing was sent.
    Connect,
    /// An idempotent request without a body was sent and the connection closed or reset before
    /// any response byte.
    Reset,
}

impl RetryReason {
    /// Every reason, in a fixed order (metrics index by it).
    pub const ALL: [RetryReason; 2] = [RetryReason::Connect, RetryReason::Reset];

    /// As recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
        }
    }
}

/// The process's (one sidecar's) counters.
#[derive(Debug)]
pub struct Metrics {
    handshakes: [AtomicU64; HandshakeOutcome::ALL.len()],
    sessions_closed: [[AtomicU64; CODE_BUCKETS]; CAUSES.len()],
    bytes: [AtomicU64; 2],
    messages: [AtomicU64; 2],
    requests: [AtomicU64; 5],
    latency_buckets: [[AtomicU64; LATENCY_BOUNDS.len()]; 5],
    latency_sum_us: [AtomicU64; 5],
    retries: [AtomicU64; RetryReason::ALL.len()],
    /// Upgrades our own temporary limits turned away (see [`RefusedUpgrades`]).
    refused_upgrades: RefusedUpgrades,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            handshakes: std::array::from_fn(|_| AtomicU64::new(0)),
            sessions_closed: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            messages: std::array::from_fn(|_| AtomicU64::new(0)),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_us: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
            refused_upgrades: RefusedUpgrades::default(),
        }
    }
}

fn code_bucket(code: Option<u16>) -> usize {
    match code {
        Some(c @ 1000..=1015) => usize::from(c - 1000),
        Some(3000..=4999) => 16,
        _ => 17,
    }
}

fn bucket_label(i: usize) -> String {
    match i {
        0..=15 => (1000 + i).to_string(),
        16 => "3000-4999".into(),
        _ => "none".into(),
    }
}

impl Metrics {
    /// Counts a handshake's outcome.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        let i = HandshakeOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.handshakes[i].fetch_add(1, Ordering::Relaxed);
        self.refused_upgrades.count(outcome);
    }

    /// Counts a finished session: its cause, the close code of whoever closed first, and its
    /// traffic.
    pub fn session_ended(&self, outcome: &Outcome, traffic: [u64; 4]) {
        let code = match outcome.initiator {
            Some(Initiator::Client) => outcome.client_close.as_ref().and_then(|c| c.code),
            Some(Initiator::Backend) => outcome.backend_close.as_ref().and_then(|c| c.code),
            Some(Initiator::Tether) => outcome.tether_close,
            None => None,
        };
        self.sessions_closed[outcome.cause.index()][code_bucket(code)]
            .fetch_add(1, Ordering::Relaxed);
        let [client_bytes, backend_bytes, client_messages, backend_messages] = traffic;
        self.bytes[0].fetch_add(client_bytes, Ordering::Relaxed);
        self.bytes[1].fetch_add(backend_bytes, Ordering::Relaxed);
        self.messages[0].fetch_add(client_messages, Ordering::Relaxed);
        self.messages[1].fetch_add(backend_messages, Ordering::Relaxed);
    }

    /// Counts an ordinary request by status class, with its latency.
    pub fn request(&self, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = LATENCY_BOUNDS.iter().position(|bound| secs <= *bound) {
            self.latency_buckets[class][b].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us[class].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts one retry on another member.
    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Retries by reason (for the OTLP export).
    pub fn retry_counts(&self) -> impl Iterator<Item = (RetryReason, u64)> + '_ {
        RetryReason::ALL
            .iter()
            .zip(&self.retries)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    /// How many handshakes ended with `outcome`.
    pub fn handshakes(&self, outcome: HandshakeOutcome) -> u64 {
        let i = HandshakeOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.handshakes[i].load(Ordering::Relaxed)
    }

    /// Handshake counts by outcome (for the OTLP export).
    pub fn handshake_counts(&self) -> impl Iterator<Item = (HandshakeOutcome, u64)> + '_ {
        HandshakeOutcome::ALL
            .iter()
            .zip(&self.handshakes)
            .map(|(o, n)| (*o, n.load(Ordering::Relaxed)))
    }

    /// Finished sessions by cause and close-code bucket, non-zero only (for the OTLP export).
    pub fn closed_counts(&self) -> Vec<(EndCause, String, u64)> {
        let mut out = Vec::new();
        for (c, cause) in CAUSES.iter().enumerate() {
            for (b, counter) in self.sessions_closed[c].iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((*cause, bucket_label(b), n));
                }
            }
        }
        out
    }

    /// Bytes and messages of finished sessions, `[client, backend]` each (for the OTLP export).
    pub fn traffic(&self) -> ([u64; 2], [u64; 2]) {
        let load =
            |a: &[AtomicU64; 2]| [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)];
        (load(&self.bytes), load(&self.messages))
    }

    /// Ordinary requests by status class 1xx..5xx (for the OTLP export).
    pub fn request_counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Renders every counter in the Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP tether_websocket_handshakes_total WebSocket handshakes by outcome.\n");
        out.push_str("# TYPE tether_websocket_handshakes_total counter\n");
        for (i, o) in HandshakeOutcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "tether_websocket_handshakes_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                load(&self.handshakes[i])
            );
        }
        out.push_str(
            "# HELP tether_websocket_sessions_closed_total Finished sessions by cause and by the close code of whoever closed first.\n",
        );
        out.push_str("# TYPE tether_websocket_sessions_closed_total counter\n");
        for (c, cause) in CAUSES.iter().enumerate() {
            for (b, counter) in self.sessions_closed[c].iter().enumerate() {
                let n = load(counter);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tether_websocket_sessions_closed_total{{cause=\"{}\",code=\"{}\"}} {n}",
                        cause.as_str(),
                        bucket_label(b)
                    );
                }
            }
        }
        for (name, help, values) in [
            (
                "tether_websocket_bytes_total",
                "Bytes carried by finished sessions, by sender.",
                &self.bytes,
            ),
            (
                "tether_websocket_messages_total",
                "Messages carried by finished sessions, by sender (frames mode).",
                &self.messages,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{from=\"client\"}} {}", load(&values[0]));
            let _ = writeln!(out, "{name}{{from=\"backend\"}} {}", load(&values[1]));
        }
        out.push_str("# HELP tether_http_requests_total Ordinary HTTP requests by status class.\n");
        out.push_str("# TYPE tether_http_requests_total counter\n");
        for class in 0..5 {
            let _ = writeln!(
                out,
                "tether_http_requests_total{{status_class=\"{}xx\"}} {}",
                class + 1,
                load(&self.requests[class])
            );
        }
        out.push_str("# HELP tether_backend_retries_total Requests and WebSocket upgrades sent again to another member, by reason.\n");
        out.push_str("# TYPE tether_backend_retries_total counter\n");
        for (reason, n) in self.retry_counts() {
            let _ = writeln!(
                out,
                "tether_backend_retries_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
        out.push_str(
            "# HELP tether_http_request_duration_seconds Time to the response head, by status class.\n",
        );
        out.push_str("# TYPE tether_http_request_duration_seconds histogram\n");
        for class in 0..5 {
            let mut cumulative = 0;
            for (b, bound) in LATENCY_BOUNDS.iter().enumerate() {
                cumulative += load(&self.latency_buckets[class][b]);
                let _ = writeln!(
                    out,
                    "tether_http_request_duration_seconds_bucket{{status_class=\"{}xx\",le=\"{bound}\"}} {cumulative}",
                    class + 1
                );
            }
            let count = load(&self.requests[class]);
            let _ = writeln!(
                out,
                "tether_http_request_duration_seconds_bucket{{status_class=\"{}xx\",le=\"+Inf\"}} {count}",
                class + 1
            );
            let _ = writeln!(
                out,
                "tether_http_request_duration_seconds_sum{{status_class=\"{}xx\"}} {}",
                class + 1,
                load(&self.latency_sum_us[class]) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "tether_http_request_duration_seconds_count{{status_class=\"{}xx\"}} {count}",
                class + 1
            );
        }
        self.refused_upgrades.render(out);
    }
}

// ---- Session admission and limits: upgrades turned away by `max_new_sessions_per_second` or
// a drain (503 + Retry-After). Sessions ended by a per-session limit are counted by cause in
// `tether_websocket_sessions_closed_total` (`message_rate`, `byte_rate`, `slow_consumer`,
// `max_session_age`, `rebalance`).

/// `tether_upgrades_refused_total{reason}`: upgrades answered `503` with `Retry-After` by our
/// own temporary limits; `reason` is `rate_limit` or `draining` (bounded).
#[derive(Debug, Default)]
struct RefusedUpgrades {
    /// `[rate_limit, draining]`.
    counts: [AtomicU64; 2],
}

impl RefusedUpgrades {
    const REASONS: [&'static str; 2] = ["rate_limit", "draining"];

    fn count(&self, outcome: HandshakeOutcome) {
        let i = match outcome {
            HandshakeOutcome::RateLimited => 0,
            HandshakeOutcome::Draining => 1,
            _ => return,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        out.push_str("# HELP tether_upgrades_refused_total WebSocket upgrades answered 503 with Retry-After by Tether's own temporary limits, by reason.\n");
        out.push_str("# TYPE tether_upgrades_refused_total counter\n");
        for (reason, n) in Self::REASONS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "tether_upgrades_refused_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.handshake(HandshakeOutcome::Upgraded);
        m.request(200, Duration::from_micros(700));
        m.request(200, Duration::from_millis(20));
        m.request(502, Duration::from_millis(3));
        m.retry(RetryReason::Connect);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("tether_websocket_handshakes_total{outcome=\"upgraded\"} 1"));
        assert!(out.contains("tether_http_requests_total{status_class=\"2xx\"} 2"));
        assert!(out.contains(
            "tether_http_request_duration_seconds_bucket{status_class=\"2xx\",le=\"0.001\"} 1"
        ));
        assert!(out.contains(
            "tether_http_request_duration_seconds_bucket{status_class=\"2xx\",le=\"0.025\"} 2"
        ));
        assert!(out.contains("tether_http_request_duration_seconds_count{status_class=\"5xx\"} 1"));
        assert!(out.contains("tether_backend_retries_total{reason=\"connect\"} 1"));
        assert!(out.contains("tether_backend_retries_total{reason=\"reset\"} 0"));
    }

    #[test]
    fn close_codes_fall_into_buckets() {
        assert_eq!(bucket_label(code_bucket(Some(1001))), "1001");
        assert_eq!(bucket_label(code_bucket(Some(4001))), "3000-4999");
        assert_eq!(bucket_label(code_bucket(None)), "none");
    }
}
