//! Stage two: the validated configuration. Strong types only; every default is a
//! documented constant below. The values with a written form of their own (members, host and
//! path patterns, hash keys, status ranges) and their parsers are in `values`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod values;

pub(crate) use values::{format_status_range, is_hostname, is_token, parse_status_range};
pub use values::{
    HashKey, HostPattern, Member, PathPattern, PoolMember, DEFAULT_WEIGHT, MAX_WEIGHT,
};

/// `workers` when not set: `0`, which resolves to one worker per available core.
pub const DEFAULT_WORKERS: usize = 0;
/// `shutdown_grace`: how long connections and sessions get to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `shutdown_delay`: how long Tether keeps serving after a shutdown signal with `/readyz` already
/// answering 503, before the drain starts. `0s` by default: outside an orchestrator nothing
/// routes by readiness, and a delay would only slow down every stop. Kubernetes deployments set a
/// few seconds, the time endpoint controllers, kube-proxy and load balancers take to stop sending
/// new connections to a terminating pod (see `examples/kubernetes/`).
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// The longest `shutdown_delay` accepted: it only needs to cover endpoint propagation; a longer
/// one is a typo (`5m` for `5s`) that would hold every rollout.
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);
/// `shutdown_close_code`: the close code sessions get when Tether shuts down — 1001 `going away`
/// (RFC 6455 §7.4.1); 1012 `service restart` (IANA registry) tells clients to reconnect soon.
pub const DEFAULT_SHUTDOWN_CLOSE_CODE: u16 = 1001;
/// `admin.bind`: loopback only, so health, metrics and status are not exposed by default.
pub const DEFAULT_ADMIN_BIND: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
/// `telemetry.service_name`.
pub const DEFAULT_SERVICE_NAME: &str = "tether";
/// `telemetry.log_format`.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// `telemetry.log_level`: a `tracing` filter directive.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// `telemetry.record_query`: off, because query strings often carry secrets (tokens, session
/// ids, signed-URL signatures) that must not end up in logs and traces by default.
pub const DEFAULT_RECORD_QUERY: bool = false;
/// `listeners.NAME.protocol`.
pub const DEFAULT_LISTENER_PROTOCOL: ListenerProtocol = ListenerProtocol::Http;
/// `listeners.NAME.max_request_head_bytes`: request line plus headers.
pub const DEFAULT_MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
/// The smallest accepted `max_request_head_bytes`: a browser's WebSocket handshake with
/// cookies easily takes several KiB, and a limit below this breaks it in confusing ways.
pub const MIN_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// `listeners.NAME.http2_max_concurrent_streams`: streams (requests and WebSockets) one HTTP/2
/// client connection may have open at once, as HAProxy's `tune.h2.max-concurrent-streams`
/// (nginx uses 128): enough for a browser's page load, small enough that one connection cannot
/// take a worker's attention from the others.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// `listeners.NAME.http2_idle_timeout`: an HTTP/2 connection with no open stream for this long
/// gets GOAWAY and closes, as an idle HTTP/1.1 keep-alive connection would (nginx keeps idle
/// connections 75 s, load balancers commonly 60 s): a browser keeps its connection across page
/// loads, while thousands of abandoned ones do not hold descriptors and memory for ever.
pub const DEFAULT_HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `listeners.NAME.max_headers`.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// `listeners.NAME.request_head_timeout`: how long a client may take to send its request
/// head (a guard against slow-header attacks).
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// `listeners.NAME.request_body_timeout`: the longest a client may leave between two reads of
/// its request body (as nginx's `client_body_timeout`); past it the client gets `408` and the
/// connection is closed.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// `backend_pools.NAME.load_balancing`: least connections, because WebSocket sessions are
/// long-lived and uneven — round robin spreads *new* sessions evenly, not the load they carry.
pub const DEFAULT_LOAD_BALANCING: LoadBalancing = LoadBalancing::LeastConnections;
/// `backend_pools.NAME.hash_key`: what `consistent_hash` hashes when nothing else is said.
pub const DEFAULT_HASH_KEY: HashKey = HashKey::ClientIp;
/// `backend_pools.NAME.passive.failures`: consecutive connect or gateway failures that eject a
/// member (as Envoy's outlier detection counts them); `0` turns passive health off.
pub const DEFAULT_PASSIVE_FAILURES: u32 = 5;
/// `backend_pools.NAME.passive.ejection`: how long the first ejection lasts; each repeat doubles it.
pub const DEFAULT_PASSIVE_EJECTION: Duration = Duration::from_secs(30);
/// `backend_pools.NAME.passive.max_ejection`: the cap of the doubling ejection time.
pub const DEFAULT_PASSIVE_MAX_EJECTION: Duration = Duration::from_secs(300);
/// `dns.min_ttl`: a DNS answer is re-resolved no sooner than this, whatever its TTL says, so a
/// zero TTL cannot turn the resolver into a busy loop.
pub const DEFAULT_DNS_MIN_TTL: Duration = Duration::from_secs(5);
/// `dns.max_ttl`: a DNS answer is re-resolved at least this often, whatever its TTL says, so a
/// moved backend is noticed even behind a long TTL.
pub const DEFAULT_DNS_MAX_TTL: Duration = Duration::from_secs(300);
/// The port of a `dns.name_servers` entry written without one.
pub const DEFAULT_DNS_PORT: u16 = 53;
/// `backend_settings.NAME.protocol`.
pub const DEFAULT_BACKEND_PROTOCOL: BackendProtocol = BackendProtocol::Http;
/// `backend_settings.NAME.request_timeout`. As in Application Gateway it also bounds how long
/// a WebSocket session may stay idle, so it must exceed the rules' keepalive interval.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `backend_settings.NAME.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `backend_settings.NAME.source_addresses`: none, so the kernel picks the source address (and
/// port) of each backend connection, as for any client socket. One source address reaches one
/// member IP:port over at most the ephemeral port range (`net.ipv4.ip_local_port_range`,
/// 28,232 ports by default); only a sidecar that holds more connections than that to one member
/// needs more, and only the operator knows which local addresses the host has.
pub const DEFAULT_SOURCE_ADDRESSES: &[IpAddr] = &[];
/// `backend_settings.NAME.retries`: how many *other* members a request or WebSocket upgrade may
/// go to after a failed attempt (see the README's retry rules); `0` turns retries off.
pub const DEFAULT_RETRIES: u32 = 1;
/// The largest accepted `retries`: each one may cost a `connect_timeout`.
pub const MAX_RETRIES: u32 = 10;
/// `probes.NAME.protocol`.
pub const DEFAULT_PROBE_PROTOCOL: BackendProtocol = BackendProtocol::Http;
/// `probes.NAME.kind`.
pub const DEFAULT_PROBE_KIND: ProbeKind = ProbeKind::Http;
/// `probes.NAME.path`.
pub const DEFAULT_PROBE_PATH: &str = "/";
/// `probes.NAME.interval`: time between two probes of one backend.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// `probes.NAME.timeout`: how long one probe may take before it counts as failed.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// `probes.NAME.unhealthy_threshold`: consecutive failures that take a backend out of rotation.
pub const DEFAULT_UNHEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(3).unwrap();
/// `probes.NAME.healthy_threshold`: consecutive successes that bring it back.
pub const DEFAULT_HEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(2).unwrap();
/// `probes.NAME.match_status`: the statuses that count as healthy.
pub const DEFAULT_MATCH_STATUS: RangeInclusive<u16> = 200..=399;
/// `routing_rules.NAME.websocket.require_origin`: whether a handshake without `Origin` is refused.
pub const DEFAULT_REQUIRE_ORIGIN: bool = false;
/// `routing_rules.NAME.websocket.keepalive_interval`: how often the sidecar pings an idle
/// session so intermediaries keep it open; [`Duration::ZERO`] turns pings off.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// `routing_rules.NAME.websocket.inspect`.
pub const DEFAULT_INSPECT: Inspect = Inspect::Frames;
/// `routing_rules.NAME.websocket.on_backend_unhealthy`.
pub const DEFAULT_ON_BACKEND_UNHEALTHY: OnBackendUnhealthy = OnBackendUnhealthy::Keep;
/// `routing_rules.NAME.websocket.drain_grace`: how long sessions get to close on their own
/// when they are drained, before they are cut.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// `routing_rules.NAME.websocket.drain_spread`: the window a drain's close frames are spread
/// over. Off (`0s`, every close at once, as before) by default: the right window depends on
/// how fast the backend takes reconnects and on the grace periods, which only the operator
/// knows; a window that does not fit them is refused at load.
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::ZERO;
/// `routing_rules.NAME.websocket.on_rate_limit`: close the session (1008), the behaviour
/// abusive clients should meet; `delay` is for rules whose clients are trusted but bursty.
pub const DEFAULT_ON_RATE_LIMIT: OnRateLimit = OnRateLimit::Close;
/// `routing_rules.NAME.websocket.slow_consumer_timeout`: a minute. Longer than any stall a
/// healthy peer has (a GC pause, a mobile handover, a laptop lid), far shorter than TCP's own
/// timeouts (minutes to hours) during which a stalled socket would hold a backend's send
/// buffer and 64 KiB of Tether's memory.
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);
/// How far each session's `max_session_age` is moved, up or down, at random: ±10%, so
/// sessions opened together (after a rollout) do not all end together either.
pub const MAX_SESSION_AGE_JITTER: f64 = 0.1;
/// The burst of a rate limit whose burst is not set: `max_new_sessions_per_second` takes a
/// tenth of a second's worth at once (a storm meets the steady rate almost at once);
/// message and byte rates take one second's worth (a client's normal bursts pass).
pub const NEW_SESSIONS_BURST_DIVISOR: u64 = 10;

/// `allow_empty`: off, so a reload that would remove every listener or every routing rule is
/// refused (see [`Config::check_replaces`]).
pub const DEFAULT_ALLOW_EMPTY: bool = false;

/// What [`Config::redacted`] writes in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The validated, effective configuration. [`Config::to_toml_string`] writes it back as a file
/// would; it is defined beside the file's mirror (the `raw` stage), which this module does not
/// depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Worker threads; `0` in the sources has been resolved to the number of available cores.
    pub workers: usize,
    /// How long connections and sessions get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a shutdown signal leaves everything serving with `/readyz` at 503 before the
    /// drain starts; default [`DEFAULT_SHUTDOWN_DELAY`].
    pub shutdown_delay: Duration,
    /// Close code sent to both peers of every session at shutdown: 1001 or 1012; default
    /// [`DEFAULT_SHUTDOWN_CLOSE_CODE`].
    pub shutdown_close_code: u16,
    /// The admin endpoint (health, readiness, metrics, status page).
    pub admin: AdminConfig,
    /// Tracing and logging.
    pub telemetry: TelemetryConfig,
    /// Listeners by name.
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// Backend pools by name.
    pub backend_pools: BTreeMap<String, BackendPoolConfig>,
    /// Backend settings by name.
    pub backend_settings: BTreeMap<String, BackendSettingsConfig>,
    /// Health probes by name.
    pub probes: BTreeMap<String, ProbeConfig>,
    /// Routing rules by name.
    pub routing_rules: BTreeMap<String, RoutingRuleConfig>,
    /// How DNS members are resolved.
    pub dns: DnsConfig,
    /// Whether a reload may put this configuration in force even though it removes every
    /// listener or every routing rule of the running one; default [`DEFAULT_ALLOW_EMPTY`].
    pub allow_empty: bool,
}

impl Config {
    /// The probe that checks `pool`'s members, with the port it probes when the probe names
    /// none: the probe of the backend settings the pool's routing rules use (the first rule by
    /// name decides; validation refuses a pool that two rules would probe differently).
    /// `None` when no rule's settings name a probe: the members are then always in rotation.
    pub fn pool_probe(&self, pool: &str) -> Option<PoolProbe<'_>> {
        self.routing_rules
            .values()
            .filter(|rule| rule.backend_pool == pool)
            .filter_map(|rule| {
                let settings = self.backend_settings.get(&rule.backend_settings)?;
                let probe = self.probes.get(settings.probe.as_deref()?)?;
                Some(PoolProbe {
                    probe,
                    settings,
                    port: probe.port.or(settings.port),
                })
            })
            .next()
    }

    /// The configuration with its secrets replaced by [`REDACTED`]: what the admin endpoint's
    /// `GET /config` shows. Secrets are values that grant access (`admin.token`); file paths
    /// (certificate and key files) are not.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.admin.token.is_some() {
            c.admin.token = Some(REDACTED.to_owned());
        }
        c
    }
}

/// The probe a pool's members get, and where it is sent (see [`Config::pool_probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolProbe<'a> {
    /// The probe.
    pub probe: &'a ProbeConfig,
    /// The backend settings that name it (their protocol and host override).
    pub settings: &'a BackendSettingsConfig,
    /// The port probed: the probe's `port`, else the settings' `port`; `None` = each member's own.
    pub port: Option<u16>,
}

/// `[dns]`: how `host:port` members are resolved and re-resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers asked, in order (`ip` or `ip:port`); empty = the system's
    /// (`/etc/resolv.conf`).
    pub name_servers: Vec<SocketAddr>,
    /// Shortest time between two resolutions of a name; default [`DEFAULT_DNS_MIN_TTL`].
    pub min_ttl: Duration,
    /// Longest time between two resolutions of a name; default [`DEFAULT_DNS_MAX_TTL`].
    pub max_ttl: Duration,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin endpoint; default [`DEFAULT_ADMIN_BIND`].
    pub bind: SocketAddr,
    /// Bearer token every admin request but `/healthz` and `/readyz` must carry
    /// (`Authorization: Bearer TOKEN`); `None` = no token needed. A secret: redacted by
    /// [`Config::redacted`].
    pub token: Option<String>,
}

/// `[telemetry]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans; default [`DEFAULT_SERVICE_NAME`].
    pub service_name: String,
    /// OTLP collector URL (`http://` or `https://`); `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// Log line format; default [`DEFAULT_LOG_FORMAT`].
    pub log_format: LogFormat,
    /// `tracing` filter directive; default [`DEFAULT_LOG_LEVEL`].
    pub log_level: String,
    /// The fields each access-log line carries (written in the order of
    /// [`AccessLogField::ALL`]); default every field.
    pub access_log_fields: Vec<AccessLogField>,
    /// Whether query strings are written to the access log (`query`) and to spans
    /// (`url.query`, the query of `url.full`); default [`DEFAULT_RECORD_QUERY`].
    pub record_query: bool,
}

/// A field of the access-log line of a request (`telemetry.access_log_fields`). The README's
/// access-log table documents each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessLogField {
    /// `client`: the client's address and port.
    Client,
    /// `listener`: the listener's name.
    Listener,
    /// `method`.
    Method,
    /// `host`: the host the request was for.
    Host,
    /// `path`.
    Path,
    /// `query` (only with `record_query`).
    Query,
    /// `version`: the client's HTTP version.
    Version,
    /// `status`.
    Status,
    /// `duration_us`: from the request head to the last byte of the response body.
    DurationUs,
    /// `route`: the routing rule.
    Route,
    /// `backend`: the member that answered (or was tried last).
    Backend,
    /// `retries`.
    Retries,
    /// `websocket`: whether the request was a WebSocket handshake.
    Websocket,
    /// `request_id`: the `X-Request-Id`.
    RequestId,
    /// `user_agent`.
    UserAgent,
    /// `bytes_in`: request body bytes received from the client.
    BytesIn,
    /// `bytes_out`: response body bytes sent to the client.
    BytesOut,
    /// `connect_us`: time to open the backend connection (absent when a pooled one was used).
    ConnectUs,
    /// `ttfb_us`: from sending to the backend to its response head.
    TtfbUs,
    /// `trace_id`: when tracing.
    TraceId,
}

impl AccessLogField {
    /// Every field, in the default order.
    pub const ALL: [AccessLogField; 20] = [
        AccessLogField::Client,
        AccessLogField::Listener,
        AccessLogField::Method,
        AccessLogField::Host,
        AccessLogField::Path,
        AccessLogField::Query,
        AccessLogField::Version,
        AccessLogField::Status,
        AccessLogField::DurationUs,
        AccessLogField::Route,
        AccessLogField::Backend,
        AccessLogField::Retries,
        AccessLogField::Websocket,
        AccessLogField::RequestId,
        AccessLogField::UserAgent,
        AccessLogField::BytesIn,
        AccessLogField::BytesOut,
        AccessLogField::ConnectUs,
        AccessLogField::TtfbUs,
        AccessLogField::TraceId,
    ];

    /// The field's name, as configured and as written in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogField::Client => "client",
            AccessLogField::Listener => "listener",
            AccessLogField::Method => "method",
            AccessLogField::Host => "host",
            AccessLogField::Path => "path",
            AccessLogField::Query => "query",
            AccessLogField::Version => "version",
            AccessLogField::Status => "status",
            AccessLogField::DurationUs => "duration_us",
            AccessLogField::Route => "route",
            AccessLogField::Backend => "backend",
            AccessLogField::Retries => "retries",
            AccessLogField::Websocket => "websocket",
            AccessLogField::RequestId => "request_id",
            AccessLogField::UserAgent => "user_agent",
            AccessLogField::BytesIn => "bytes_in",
            AccessLogField::BytesOut => "bytes_out",
            AccessLogField::ConnectUs => "connect_us",
            AccessLogField::TtfbUs => "ttfb_us",
            AccessLogField::TraceId => "trace_id",
        }
    }

    /// The field named `name`.
    pub fn from_name(name: &str) -> Option<AccessLogField> {
        AccessLogField::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl std::fmt::Display for AccessLogField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[listeners.NAME]`: a port the sidecar accepts HTTP requests and WebSocket upgrades on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The listener's name (its key in `listeners`).
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Plain HTTP or TLS; default [`DEFAULT_LISTENER_PROTOCOL`].
    pub protocol: ListenerProtocol,
    /// Certificates for an HTTPS listener (at least one); chosen by SNI.
    pub certificates: Vec<CertificateConfig>,
    /// Largest accepted request head; default [`DEFAULT_MAX_REQUEST_HEAD_BYTES`],
    /// at least [`MIN_MAX_REQUEST_HEAD_BYTES`].
    pub max_request_head_bytes: usize,
    /// Most headers in one request; default [`DEFAULT_MAX_HEADERS`].
    pub max_headers: usize,
    /// Time allowed to receive a request head; default [`DEFAULT_REQUEST_HEAD_TIMEOUT`].
    pub request_head_timeout: Duration,
    /// Longest gap allowed between two reads of a request body; default
    /// [`DEFAULT_REQUEST_BODY_TIMEOUT`].
    pub request_body_timeout: Duration,
    /// HTTPS only: PEM bundle of the CAs client certificates must chain to (mTLS); `None` = no
    /// client authentication.
    pub client_ca: Option<PathBuf>,
    /// HTTP only: every request is redirected (308) to this HTTPS listener's port; WebSocket
    /// upgrades get 403, since browsers do not follow redirects for WebSockets.
    pub redirect_to: Option<String>,
    /// Most client connections open at once (WebSocket sessions included); beyond it new
    /// connections wait in the accept queue. `0` (default) = no limit.
    pub max_connections: usize,
    /// Most connections from one client IP that are still in their HTTP phase (handshakes and
    /// plain requests, not upgraded sessions); more get `429` and are closed. `0` (default) =
    /// no limit.
    pub max_handshakes_per_ip: usize,
    /// HTTP/2 next to HTTP/1.1 on the same port (default on): ALPN `h2` on an HTTPS listener,
    /// the connection preface ("prior knowledge", RFC 9113 §3.3) on an HTTP one.
    pub http2: bool,
    /// WebSockets over HTTP/2 (RFC 8441): `SETTINGS_ENABLE_CONNECT_PROTOCOL` is advertised and
    /// extended CONNECT handshakes are served (default on; only with `http2`).
    pub http2_websockets: bool,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` announced to HTTP/2 clients; default
    /// [`DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS`].
    pub http2_max_concurrent_streams: u32,
    /// How long an HTTP/2 connection may stay without an open stream (request or WebSocket)
    /// before it is sent away with GOAWAY; default [`DEFAULT_HTTP2_IDLE_TIMEOUT`], `0s` = never.
    pub http2_idle_timeout: Duration,
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Plain HTTP/1.1 (and `ws://` upgrades).
    Http,
    /// HTTP/1.1 over TLS (and `wss://` upgrades).
    Https,
}

/// `[[listeners.NAME.certificates]]`: one certificate of an HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// SNI names this certificate serves (`*.example.com` allowed); empty = the default certificate.
    pub server_names: Vec<String>,
}

/// `[backend_pools.NAME]`: the backends a rule forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPoolConfig {
    /// The pool's name (its key in `backend_pools`).
    pub name: String,
    /// At least one member.
    pub members: Vec<PoolMember>,
    /// How a member is picked; default [`DEFAULT_LOAD_BALANCING`].
    pub load_balancing: LoadBalancing,
    /// What `consistent_hash` hashes; default [`DEFAULT_HASH_KEY`]. Unused by other policies.
    pub hash_key: HashKey,
    /// Ejection of members the data path sees failing.
    pub passive: PassiveHealthConfig,
}

/// `[backend_pools.NAME.passive]`: passive health. The data path counts each member's
/// consecutive connect failures and gateway failures (502/503/504 from the backend, a reset, a
/// response-head timeout) and ejects the member when the count reaches `failures`,
/// independently of any probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealthConfig {
    /// Consecutive failures that eject a member; `0` = passive health off; default
    /// [`DEFAULT_PASSIVE_FAILURES`].
    pub failures: u32,
    /// The first ejection's length; it doubles with each repeat; default
    /// [`DEFAULT_PASSIVE_EJECTION`].
    pub ejection: Duration,
    /// The longest ejection; default [`DEFAULT_PASSIVE_MAX_EJECTION`]. A member that stays in
    /// rotation this long after an ejection starts again from `ejection`.
    pub max_ejection: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            failures: DEFAULT_PASSIVE_FAILURES,
            ejection: DEFAULT_PASSIVE_EJECTION,
            max_ejection: DEFAULT_PASSIVE_MAX_EJECTION,
        }
    }
}

/// How a pool picks a member for a new request or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Each healthy member in turn.
    RoundRobin,
    /// The healthy member with the fewest open connections and sessions.
    LeastConnections,
    /// A stable member per client, so reconnects land on the same backend.
    ConsistentHash,
}

/// `[backend_settings.NAME]`: how requests are sent to a pool's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSettingsConfig {
    /// The settings' name (its key in `backend_settings`).
    pub name: String,
    /// HTTP/1.1 or HTTP/2, plain or over TLS, to the backend; default
    /// [`DEFAULT_BACKEND_PROTOCOL`].
    pub protocol: BackendProtocol,
    /// Overrides the members' port when set.
    pub port: Option<u16>,
    /// `Host` sent to the backend (before the upgrade only) when set.
    pub host_override: Option<String>,
    /// Request timeout and WebSocket idle timeout; default [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// TCP (and TLS) connect timeout; default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Other members tried after a failed attempt; default [`DEFAULT_RETRIES`], at most
    /// [`MAX_RETRIES`].
    pub retries: u32,
    /// Name of the probe that checks the members; `None` = members are always healthy.
    pub probe: Option<String>,
    /// HTTPS only: PEM bundle of trusted CAs; `None` = the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// HTTPS only: the name sent as SNI and verified in the backend's certificate; `None` = the
    /// host override, else the member's DNS name or IP address.
    pub server_name: Option<String>,
    /// HTTPS only: client certificate chain presented to the backend (mTLS), with its key.
    pub client_cert_file: Option<PathBuf>,
    /// HTTPS only: the key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Local addresses backend connections start from, taken in turn; empty (the default,
    /// [`DEFAULT_SOURCE_ADDRESSES`]) = the kernel picks, as for any client socket. Each address
    /// adds one ephemeral port range's worth of connections to every member IP:port.
    pub source_addresses: Vec<IpAddr>,
}

/// The protocol spoken to a backend or a probe target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendProtocol {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over plain TCP with prior knowledge (RFC 9113 §3.3): the connection starts with
    /// the HTTP/2 preface, no `Upgrade: h2c`.
    H2c,
    /// HTTP/2 over TLS, negotiated with ALPN `h2` (RFC 9113 §3.2); a backend that does not
    /// select `h2` is refused, never spoken to in HTTP/1.1.
    H2,
}

impl BackendProtocol {
    /// Whether connections run over TLS (`https`, `h2`).
    pub fn uses_tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::H2)
    }

    /// Whether ordinary requests go over multiplexed HTTP/2 connections (`h2c`, `h2`).
    pub fn is_http2(self) -> bool {
        matches!(self, BackendProtocol::H2c | BackendProtocol::H2)
    }
}

/// `[probes.NAME]`: a health probe run against every member of the pools that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The probe's name (its key in `probes`).
    pub name: String,
    /// HTTP/1.1 or HTTP/2, plain or over TLS; default [`DEFAULT_PROBE_PROTOCOL`].
    pub protocol: BackendProtocol,
    /// Request path; default [`DEFAULT_PROBE_PATH`].
    pub path: String,
    /// `Host` of the probe request; `None` = the member's address.
    pub host: Option<String>,
    /// Port to probe; `None` = the member's (or the settings') port.
    pub port: Option<u16>,
    /// Time between probes; default [`DEFAULT_PROBE_INTERVAL`].
    pub interval: Duration,
    /// Time allowed for one probe; default [`DEFAULT_PROBE_TIMEOUT`]; never above `interval`.
    pub timeout: Duration,
    /// Failures in a row that mark a member unhealthy; default [`DEFAULT_UNHEALTHY_THRESHOLD`].
    pub unhealthy_threshold: NonZeroU32,
    /// Successes in a row that mark it healthy again; default [`DEFAULT_HEALTHY_THRESHOLD`].
    pub healthy_threshold: NonZeroU32,
    /// Healthy statuses; default [`DEFAULT_MATCH_STATUS`]. Written `["200-399", "404"]`.
    pub match_status: Vec<RangeInclusive<u16>>,
    /// When set, the response body must contain this text.
    pub match_body: Option<String>,
    /// A plain request, or a WebSocket handshake; default [`DEFAULT_PROBE_KIND`].
    pub kind: ProbeKind,
}

/// What a probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A `GET` of the probe path.
    Http,
    /// A WebSocket handshake on the probe path; healthy on `101 Switching Protocols`.
    #[serde(rename = "websocket")]
    WebSocket,
    /// The gRPC health check (`grpc.health.v1.Health/Check` for the whole server, service
    /// `""`); healthy when the answer is `SERVING`. Needs `protocol = "h2c"` or `"h2"`.
    Grpc,
}

/// `[routing_rules.NAME]`: binds a listener (optionally only some hosts and paths) to a pool
/// and its settings. With no paths it is a basic rule that takes everything on the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRuleConfig {
    /// The rule's name (its key in `routing_rules`).
    pub name: String,
    /// The listener this rule serves.
    pub listener: String,
    /// Hosts this rule matches; empty = any host.
    pub hosts: Vec<HostPattern>,
    /// Paths this rule matches; empty = every path (a basic rule).
    pub paths: Vec<PathPattern>,
    /// Where matching requests go.
    pub backend_pool: String,
    /// How they are sent there.
    pub backend_settings: String,
    /// WebSocket behaviour for upgrades this rule matches.
    pub websocket: WebSocketConfig,
}

/// `[routing_rules.NAME.websocket]`: what happens to WebSocket upgrades a rule matches.
/// There is no switch to turn WebSockets on: every rule accepts upgrades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// Origins allowed to open a session (`scheme://host[:port]`, lowercase), or `*`;
    /// empty = any. CORS does not protect WebSockets, this does.
    pub allowed_origins: Vec<String>,
    /// Refuse handshakes without an `Origin` header; default [`DEFAULT_REQUIRE_ORIGIN`].
    pub require_origin: bool,
    /// Ping period for idle sessions; [`Duration::ZERO`] = off; default [`DEFAULT_KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// Largest message in bytes; `None` = no limit.
    pub max_message_size: Option<u64>,
    /// Whether frames are parsed or bytes are copied; default [`DEFAULT_INSPECT`].
    pub inspect: Inspect,
    /// Subprotocols offered to clients (`Sec-WebSocket-Protocol` tokens); empty = pass through.
    pub subprotocols: Vec<String>,
    /// Most concurrent sessions on this rule; `None` = no limit.
    pub max_sessions: Option<u32>,
    /// What happens to open sessions when their backend turns unhealthy; default
    /// [`DEFAULT_ON_BACKEND_UNHEALTHY`].
    pub on_backend_unhealthy: OnBackendUnhealthy,
    /// Time sessions get to close when drained; default [`DEFAULT_DRAIN_GRACE`].
    pub drain_grace: Duration,
    /// Window a drain's close frames are spread over; default [`DEFAULT_DRAIN_SPREAD`].
    pub drain_spread: Duration,
    /// New sessions admitted per second (token bucket); `None` = no limit.
    pub max_new_sessions_per_second: Option<RateLimit>,
    /// Messages per second a client may send on one session; `None` = no limit.
    pub max_messages_per_second: Option<RateLimit>,
    /// Payload bytes per second a client may send on one session; `None` = no limit.
    pub max_bytes_per_second: Option<RateLimit>,
    /// What a client over its message or byte rate gets; default [`DEFAULT_ON_RATE_LIMIT`].
    pub on_rate_limit: OnRateLimit,
    /// How long a peer may leave a full buffer unread; [`Duration::ZERO`] = never ends a
    /// session; default [`DEFAULT_SLOW_CONSUMER_TIMEOUT`].
    pub slow_consumer_timeout: Duration,
    /// Sessions are closed (1001) after about this long (±[`MAX_SESSION_AGE_JITTER`]);
    /// `None` = never.
    pub max_session_age: Option<Duration>,
}

/// A token-bucket rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The sustained rate (at least 1).
    pub per_second: u64,
    /// The most taken at once (at least 1).
    pub burst: u64,
}

/// What happens to a client over its message or byte rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRateLimit {
    /// Close with `1008 Policy Violation` (the reason names the limit); `1001` to the backend.
    Close,
    /// Stop reading the client until its bucket refills (backpressure); nothing is closed.
    Delay,
}

/// How much of a WebSocket session the sidecar looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inspect {
    /// Parse frames: enables keepalive pings, message limits and per-message counts.
    Frames,
    /// Copy bytes both ways untouched: cheapest, but no pings or message limits.
    Opaque,
}

/// What happens to open sessions when their backend is taken out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendUnhealthy {
    /// Leave them open; only new sessions avoid the backend.
    Keep,
    /// Close them with `1001 Going Away` after `drain_grace`, so clients reconnect elsewhere.
    Drain,
}
