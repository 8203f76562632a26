//! Counters for operators: handshakes by outcome, sessions closed by cause and close code, bytes
//! and messages per direction, requests and their latency by status class, retries on another
//! backend member by reason, and per listener the
//! connections accepted and open against `max_connections` and the TLS handshakes.
//!
//! Every counter is a relaxed atomic in a fixed array indexed by an enum, so the request path
//! pays a few uncontended-in-practice increments and never a lock or an allocation. WebSocket
//! traffic is not counted per frame here: each session keeps its own plain counters and adds what
//! moved since its last report on its keep-alive tick, every 64 KiB and when it ends (four atomic
//! adds per report; see `pump::Reported`). The listeners' table is written only
//! when listeners start or stop and read only by a scrape.
//!
//! The registry renders the Prometheus text format (names and units per the Prometheus naming
//! conventions: `_total` counters, `_seconds`, `_bytes`; one `HELP` and `TYPE` per family; label
//! sets that do not change with a value); what only the control plane knows (live sessions per
//! route, member health, reloads, build, process, dropped spans) is appended by the caller at
//! render time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::admission::ConnectionLimit;
use crate::error::ProxyError;
use crate::http2::HttpProtocol;
use crate::outcome::{EndCause, Initiator, Outcome};
use crate::tls::ListenerTls;
use crate::trace::HandshakeOutcome;

/// How many bytes (both directions together) a live session moves before it adds them to
/// `tether_websocket_bytes_total` (and its messages to `tether_websocket_messages_total`),
/// besides doing so on each keep-alive tick and at its end: big enough that a busy session
/// reports rarely, small enough that a busy session without a keep-alive still shows as it
/// flows.
pub const TRAFFIC_REPORT_BYTES: u64 = 64 * 1024;

/// Every state `tether_backend_state` reports a member in (`GET /backends` says the same).
pub const BACKEND_STATES: [&str; 4] = ["healthy", "unhealthy", "unknown", "ejected"];

/// Why a connection to a backend member failed, for `tether_backend_connect_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused, unreachable or reset during the TCP connect.
    Error,
    /// Not connected (TCP and, for https, TLS) within `connect_timeout`.
    Timeout,
    /// The TLS handshake with the backend failed (certificate, protocol).
    Tls,
    /// No local port was left toward the member from any source address
    /// ([`ProxyError::NoLocalPort`]): Tether's limit, never counted against the member's health.
    NoLocalPort,
}

impl ConnectFailure {
    /// Every reason, in a fixed order (metrics index by it).
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Error,
        ConnectFailure::Timeout,
        ConnectFailure::Tls,
        ConnectFailure::NoLocalPort,
    ];

    /// As the `reason` label says it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Error => "error",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Tls => "tls",
            ConnectFailure::NoLocalPort => "no_local_port",
        }
    }

    /// The connect failure `error` is, if it is one.
    pub fn of(error: &ProxyError) -> Option<ConnectFailure> {
        match error {
            ProxyError::ConnectFailed { .. } => Some(ConnectFailure::Error),
            ProxyError::ConnectTimeout { .. } => Some(ConnectFailure::Timeout),
            ProxyError::TlsFailed { .. } => Some(ConnectFailure::Tls),
            ProxyError::NoLocalPort { .. } => Some(ConnectFailure::NoLocalPort),
            _ => None,
        }
    }
}

/// What a scrape reads of one listener: its connection count and limit, and its TLS counters.
#[derive(Debug, Clone)]
pub struct ListenerGauges {
    /// Counts open connections (and sessions) and accepted ones.
    pub limit: ConnectionLimit,
    /// `max_connections` (`0` = no limit: no `tether_listener_connections_max` sample).
    pub max_connections: usize,
    /// Its TLS side, for an https listener.
    pub tls: Option<Arc<ListenerTls>>,
}

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

/// One routing rule's counters: handshakes, finished sessions and ordinary requests with their
/// latency. The route snapshot hands each route's block to the data path (an `Arc` in the
/// route, no lookup); requests and handshakes no rule matched count in the block with the empty
/// name.
#[derive(Debug)]
pub struct RouteCounters {
    handshakes: [AtomicU64; HandshakeOutcome::ALL.len()],
    sessions_closed: [[AtomicU64; CODE_BUCKETS]; CAUSES.len()],
    requests: [AtomicU64; 5],
    latency_buckets: [[AtomicU64; LATENCY_BOUNDS.len()]; 5],
    latency_sum_us: [AtomicU64; 5],
}

impl Default for RouteCounters {
    fn default() -> Self {
        RouteCounters {
            handshakes: std::array::from_fn(|_| AtomicU64::new(0)),
            sessions_closed: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_us: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RouteCounters {
    /// Counts a handshake's outcome.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        self.handshakes[handshake_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished session: its cause and the close code of whoever closed first (its
    /// traffic is added by [`Metrics::session_traffic`] as it goes).
    pub fn session_ended(&self, outcome: &Outcome) {
        let code = match outcome.initiator {
            Some(Initiator::Client) => outcome.client_close.as_ref().and_then(|c| c.code),
            Some(Initiator::Backend) => outcome.backend_close.as_ref().and_then(|c| c.code),
            Some(Initiator::Tether) => outcome.tether_close,
            None => None,
        };
        self.sessions_closed[outcome.cause.index()][code_bucket(code)]
            .fetch_add(1, Ordering::Relaxed);
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
}

fn handshake_index(outcome: HandshakeOutcome) -> usize {
    HandshakeOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(0)
}

/// The process's (one sidecar's) counters.
#[derive(Debug)]
pub struct Metrics {
    /// Every routing rule's counters by name (written when the route table publishes a
    /// snapshot, read by a scrape).
    routes: RwLock<BTreeMap<Arc<str>, Arc<RouteCounters>>>,
    /// What no rule matched (`route=""`).
    unrouted: Arc<RouteCounters>,
    bytes: [AtomicU64; 2],
    messages: [AtomicU64; 2],
    retries: [AtomicU64; RetryReason::ALL.len()],
    http_connections: [AtomicU64; 2],
    http2_errors: [AtomicU64; crate::http2::ERROR_LABELS.len()],
    http2_reset_budget: AtomicU64,
    /// Every listener that accepts, by name (written when listeners start and stop).
    listeners: RwLock<BTreeMap<String, ListenerGauges>>,
    /// HTTP/2 backend connections and streams.
    pub upstream_h2: UpstreamH2Counters,
    /// Upgrades our own temporary limits turned away (see [`RefusedUpgrades`]).
    refused_upgrades: RefusedUpgrades,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: RwLock::new(BTreeMap::new()),
            unrouted: Arc::default(),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            messages: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
            http_connections: std::array::from_fn(|_| AtomicU64::new(0)),
            http2_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            http2_reset_budget: AtomicU64::new(0),
            listeners: RwLock::new(BTreeMap::new()),
            upstream_h2: UpstreamH2Counters::default(),
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
    /// The counters of routing rule `route`, the same block for as long as the rule exists
    /// (a reload that keeps the rule keeps its counts). Called when a route snapshot is built.
    pub fn route(&self, route: &str) -> Arc<RouteCounters> {
        if let Some(c) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return c.clone();
        }
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.into())
            .or_default()
            .clone()
    }

    /// Counts an upgrade our own temporary limits turned away (`tether_upgrades_refused_total`);
    /// other outcomes are not counted here.
    pub fn refused_upgrade(&self, outcome: HandshakeOutcome) {
        self.refused_upgrades.count(outcome);
    }

    /// Keeps the counters of these rules only: a rule a reload removed loses its samples (its
    /// live sessions still count into their block, unseen).
    pub fn keep_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = routes.into_iter().collect();
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| keep.contains(&**name));
    }

    /// The counters of requests and handshakes no rule matched.
    pub fn unrouted(&self) -> &Arc<RouteCounters> {
        &self.unrouted
    }

    /// Every block, the unrouted one first (as `""`).
    fn all_routes(&self) -> Vec<(Arc<str>, Arc<RouteCounters>)> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once((Arc::<str>::from(""), self.unrouted.clone()))
            .chain(routes.iter().map(|(n, c)| (n.clone(), c.clone())))
            .collect()
    }

    /// Adds what a session moved since its last report: `[client bytes, backend bytes, client
    /// messages, backend messages]`.
    pub fn session_traffic(&self, moved: [u64; 4]) {
        let [client_bytes, backend_bytes, client_messages, backend_messages] = moved;
        self.bytes[0].fetch_add(client_bytes, Ordering::Relaxed);
        self.bytes[1].fetch_add(backend_bytes, Ordering::Relaxed);
        self.messages[0].fetch_add(client_messages, Ordering::Relaxed);
        self.messages[1].fetch_add(backend_messages, Ordering::Relaxed);
    }

    /// Counts a client connection served with `protocol`.
    pub fn http_connection(&self, protocol: HttpProtocol) {
        self.http_connections[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP/2 client connection that ended with an error (`label`: one of
    /// [`crate::http2::ERROR_LABELS`]).
    pub fn http2_error(&self, label: &str) {
        if let Some(i) = crate::http2::ERROR_LABELS.iter().position(|l| *l == label) {
            self.http2_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an HTTP/2 connection sent away for cancelling too many requests.
    pub fn http2_reset_budget_exceeded(&self) {
        self.http2_reset_budget.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one retry on another member.
    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A listener started accepting (or replaced one of the same name).
    pub fn listener_started(&self, name: &str, gauges: ListenerGauges) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), gauges);
    }

    /// A listener stopped accepting: its samples go (a reload removed or moved it).
    pub fn listener_stopped(&self, name: &str) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Retries by reason (for the OTLP export).
    pub fn retry_counts(&self) -> impl Iterator<Item = (RetryReason, u64)> + '_ {
        RetryReason::ALL
            .iter()
            .zip(&self.retries)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    /// How many handshakes ended with `outcome`, over every route.
    pub fn handshakes(&self, outcome: HandshakeOutcome) -> u64 {
        let i = handshake_index(outcome);
        self.all_routes()
            .iter()
            .map(|(_, c)| c.handshakes[i].load(Ordering::Relaxed))
            .sum()
    }

    /// Handshake counts by outcome over every route (for the OTLP export).
    pub fn handshake_counts(&self) -> impl Iterator<Item = (HandshakeOutcome, u64)> + '_ {
        let routes = self.all_routes();
        HandshakeOutcome::ALL.iter().enumerate().map(move |(i, o)| {
            let n = routes
                .iter()
                .map(|(_, c)| c.handshakes[i].load(Ordering::Relaxed))
                .sum();
            (*o, n)
        })
    }

    /// Finished sessions by cause and close-code bucket over every route, non-zero only (for
    /// the OTLP export).
    pub fn closed_counts(&self) -> Vec<(EndCause, String, u64)> {
        let routes = self.all_routes();
        let mut out = Vec::new();
        for (c, cause) in CAUSES.iter().enumerate() {
            for b in 0..CODE_BUCKETS {
                let n: u64 = routes
                    .iter()
                    .map(|(_, r)| r.sessions_closed[c][b].load(Ordering::Relaxed))
                    .sum();
                if n > 0 {
                    out.push((*cause, bucket_label(b), n));
                }
            }
        }
        out
    }

    /// Bytes and messages of sessions as reported so far, `[client, backend]` each (for the
    /// OTLP export).
    pub fn traffic(&self) -> ([u64; 2], [u64; 2]) {
        let load =
            |a: &[AtomicU64; 2]| [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)];
        (load(&self.bytes), load(&self.messages))
    }

    /// Ordinary requests by status class 1xx..5xx over every route (for the OTLP export).
    pub fn request_counts(&self) -> [u64; 5] {
        let routes = self.all_routes();
        std::array::from_fn(|i| {
            routes
                .iter()
                .map(|(_, c)| c.requests[i].load(Ordering::Relaxed))
                .sum()
        })
    }

    /// Renders every counter in the Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let routes = self.all_routes();
        out.push_str("# HELP tether_websocket_handshakes_total WebSocket handshakes by route (empty: no rule matched) and outcome.\n");
        out.push_str("# TYPE tether_websocket_handshakes_total counter\n");
        for (route, c) in &routes {
            for (i, o) in HandshakeOutcome::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tether_websocket_handshakes_total{{route=\"{}\",outcome=\"{}\"}} {}",
                    escape(route),
                    o.as_str(),
                    load(&c.handshakes[i])
                );
            }
        }
        out.push_str(
            "# HELP tether_websocket_sessions_closed_total Finished sessions by route, cause and the close code of whoever closed first (a series appears once it happened).\n",
        );
        out.push_str("# TYPE tether_websocket_sessions_closed_total counter\n");
        for (route, r) in &routes {
            for (c, cause) in CAUSES.iter().enumerate() {
                for (b, counter) in r.sessions_closed[c].iter().enumerate() {
                    let n = load(counter);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "tether_websocket_sessions_closed_total{{route=\"{}\",cause=\"{}\",code=\"{}\"}} {n}",
                            escape(route),
                            cause.as_str(),
                            bucket_label(b)
                        );
                    }
                }
            }
        }
        for (name, help, values) in [
            (
                "tether_websocket_bytes_total",
                "WebSocket bytes read from each side (live sessions report on each keep-alive tick, every 64 KiB and at their end).",
                &self.bytes,
            ),
            (
                "tether_websocket_messages_total",
                "Complete WebSocket messages read from each side, frames mode only (reported as the bytes are).",
                &self.messages,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{from=\"client\"}} {}", load(&values[0]));
            let _ = writeln!(out, "{name}{{from=\"backend\"}} {}", load(&values[1]));
        }
        out.push_str("# HELP tether_http_requests_total Ordinary HTTP requests by route (empty: no rule matched) and status class.\n");
        out.push_str("# TYPE tether_http_requests_total counter\n");
        for (route, c) in &routes {
            for class in 0..5 {
                let _ = writeln!(
                    out,
                    "tether_http_requests_total{{route=\"{}\",status_class=\"{}xx\"}} {}",
                    escape(route),
                    class + 1,
                    load(&c.requests[class])
                );
            }
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
        // HTTP/2 on client connections.
        out.push_str("# HELP tether_http_connections_total Client connections by the HTTP version they speak.\n");
        out.push_str("# TYPE tether_http_connections_total counter\n");
        for p in [HttpProtocol::Http1, HttpProtocol::Http2] {
            let _ = writeln!(
                out,
                "tether_http_connections_total{{protocol_version=\"{}\"}} {}",
                p.as_str(),
                load(&self.http_connections[p as usize])
            );
        }
        out.push_str("# HELP tether_http2_connection_errors_total HTTP/2 client connections that ended with an error, by HTTP/2 error code (io: below HTTP/2).\n");
        out.push_str("# TYPE tether_http2_connection_errors_total counter\n");
        for (i, label) in crate::http2::ERROR_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tether_http2_connection_errors_total{{reason=\"{label}\"}} {}",
                load(&self.http2_errors[i])
            );
        }
        out.push_str("# HELP tether_http2_reset_budget_exceeded_total HTTP/2 client connections sent away (GOAWAY) for cancelling too many requests (rapid reset).\n");
        out.push_str("# TYPE tether_http2_reset_budget_exceeded_total counter\n");
        let _ = writeln!(
            out,
            "tether_http2_reset_budget_exceeded_total {}",
            load(&self.http2_reset_budget)
        );
        self.render_listeners(out);
        out.push_str(
            "# HELP tether_http_request_duration_seconds Time to the response head, by route and status class.\n",
        );
        out.push_str("# TYPE tether_http_request_duration_seconds histogram\n");
        for (route, c) in &routes {
            let route = escape(route);
            for class in 0..5 {
                let labels = format!("route=\"{route}\",status_class=\"{}xx\"", class + 1);
                let mut cumulative = 0;
                for (b, bound) in LATENCY_BOUNDS.iter().enumerate() {
                    cumulative += load(&c.latency_buckets[class][b]);
                    let _ = writeln!(
                        out,
                        "tether_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let count = load(&c.requests[class]);
                let _ = writeln!(
                    out,
                    "tether_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                     tether_http_request_duration_seconds_sum{{{labels}}} {}\n\
                     tether_http_request_duration_seconds_count{{{labels}}} {count}",
                    load(&c.latency_sum_us[class]) as f64 / 1e6
                );
            }
        }
        self.upstream_h2.render(out);
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

/// Counters of HTTP/2 backends (`protocol = "h2c"` or `"h2"`), no labels: connections the
/// workers opened, and streams the backends turned away unprocessed (`REFUSED_STREAM`, or above
/// a GOAWAY's last stream id). Connections opened far faster than requests come means the
/// backends close them, or allow few streams each.
#[derive(Debug, Default)]
pub struct UpstreamH2Counters {
    connections: AtomicU64,
    refused: AtomicU64,
}

impl UpstreamH2Counters {
    /// Counts an HTTP/2 connection opened to a backend.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stream the backend turned away before processing it.
    pub fn stream_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// `(connections opened, streams refused)` so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    fn render(&self, out: &mut String) {
        let (connections, refused) = self.counts();
        let _ = writeln!(
            out,
            "# HELP tether_backend_h2_connections_total HTTP/2 connections opened to backends.\n\
             # TYPE tether_backend_h2_connections_total counter\n\
             tether_backend_h2_connections_total {connections}\n\
             # HELP tether_backend_h2_streams_refused_total HTTP/2 streams a backend turned away unprocessed (REFUSED_STREAM or GOAWAY).\n\
             # TYPE tether_backend_h2_streams_refused_total counter\n\
             tether_backend_h2_streams_refused_total {refused}"
        );
    }
}

/// One per-listener family: name, type, help and how to read a listener's value (`None`: no
/// sample for that listener).
type ListenerFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ListenerGauges) -> Option<u64>,
);

impl Metrics {
    /// The listeners' families: accepted, open and the limit, and TLS handshakes (https only).
    fn render_listeners(&self, out: &mut String) {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        let families: [ListenerFamily; 5] = [
            (
                "tether_listener_connections_accepted_total",
                "counter",
                "Connections the listener accepted.",
                |l| Some(l.limit.accepted()),
            ),
            (
                "tether_listener_connections_active",
                "gauge",
                "Open connections, WebSocket sessions included, counted against max_connections.",
                |l| Some(l.limit.open() as u64),
            ),
            (
                "tether_listener_connections_max",
                "gauge",
                "The listener's max_connections (no sample without a limit).",
                |l| (l.max_connections > 0).then_some(l.max_connections as u64),
            ),
            (
                "tether_tls_handshakes_total",
                "counter",
                "TLS handshakes completed with clients (https listeners).",
                |l| l.tls.as_ref().map(|t| t.handshakes.load(Ordering::Relaxed)),
            ),
            (
                "tether_tls_handshake_failures_total",
                "counter",
                "TLS handshakes with clients that failed or timed out (https listeners).",
                |l| {
                    l.tls
                        .as_ref()
                        .map(|t| t.handshake_failures.load(Ordering::Relaxed))
                },
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (listener, gauges) in listeners.iter() {
                if let Some(v) = value(gauges) {
                    let _ = writeln!(out, "{name}{{listener=\"{}\"}} {v}", escape(listener));
                }
            }
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
/// Names from the configuration never hold them; addresses and reasons might, one day.
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        let chat = m.route("chat");
        chat.handshake(HandshakeOutcome::Upgraded);
        chat.request(200, Duration::from_micros(700));
        chat.request(200, Duration::from_millis(20));
        chat.request(502, Duration::from_millis(3));
        m.unrouted().request(404, Duration::from_millis(1));
        m.retry(RetryReason::Connect);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            r#"tether_websocket_handshakes_total{route="chat",outcome="upgraded"} 1"#,
            r#"tether_websocket_handshakes_total{route="",outcome="upgraded"} 0"#,
            r#"tether_http_requests_total{route="chat",status_class="2xx"} 2"#,
            r#"tether_http_requests_total{route="",status_class="4xx"} 1"#,
            r#"tether_http_request_duration_seconds_bucket{route="chat",status_class="2xx",le="0.001"} 1"#,
            r#"tether_http_request_duration_seconds_bucket{route="chat",status_class="2xx",le="0.025"} 2"#,
            r#"tether_http_request_duration_seconds_count{route="chat",status_class="5xx"} 1"#,
        ] {
            assert!(
                out.contains(&format!("{line}\n")),
                "{line} missing from\n{out}"
            );
        }
        assert_eq!(m.request_counts(), [0, 2, 0, 1, 1]);
        // A reload that drops the rule drops its samples; one that keeps it keeps its counts.
        assert!(Arc::ptr_eq(&chat, &m.route("chat")));
        m.keep_routes(["other"]);
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains(r#"route="chat""#), "{out}");
        assert!(out.contains("tether_backend_retries_total{reason=\"connect\"} 1"));
        assert!(out.contains("tether_backend_retries_total{reason=\"reset\"} 0"));
        m.upstream_h2.connection_opened();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("\ntether_backend_h2_connections_total 1\n"));
        assert!(out.contains("\ntether_backend_h2_streams_refused_total 0\n"));
    }

    #[test]
    fn close_codes_fall_into_buckets() {
        assert_eq!(bucket_label(code_bucket(Some(1001))), "1001");
        assert_eq!(bucket_label(code_bucket(Some(4001))), "3000-4999");
        assert_eq!(bucket_label(code_bucket(None)), "none");
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        assert_eq!(escape("chat"), "chat");
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), "a\\nb");
    }

    #[test]
    fn listeners_come_and_go_and_only_a_limit_has_a_max_sample() {
        let m = Metrics::default();
        let limit = ConnectionLimit::new(0, 0);
        limit.count_accepted();
        m.listener_started(
            "public",
            ListenerGauges {
                limit: limit.clone(),
                max_connections: 0,
                tls: None,
            },
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("tether_listener_connections_accepted_total{listener=\"public\"} 1\n"));
        assert!(out.contains("tether_listener_connections_active{listener=\"public\"} 0\n"));
        assert!(!out.contains("tether_listener_connections_max{"), "{out}");
        assert!(out.contains("# TYPE tether_listener_connections_max gauge\n"));
        m.listener_stopped("public");
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("listener=\"public\""), "{out}");
    }
}
