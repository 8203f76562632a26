//! The admin endpoint on `admin.bind`: operational views of the running sidecar over plain
//! HTTP/1.1, kept apart from the listeners (its own socket, loopback by default).
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the status page: one self-contained HTML page that polls the JSON endpoints |
//! | `GET /healthz` | `200 ok` while the process serves (liveness) |
//! | `GET /readyz` | `200 ready`, or `503` with the reason: draining, listeners not bound, or a routed pool with no member in rotation |
//! | `GET /drained` | `200 drained` once shutdown has closed every connection and session (or its grace ran out); until then the request is held (at most [`drained_hold`]), then `503`: what an app container's `preStop` waits on |
//! | `GET /config` | the effective configuration as TOML, secrets redacted |
//! | `GET /status` | listeners (bound addresses), routes, readiness, reloads applied and refused, as JSON ([`StatusReport`]) |
//! | `GET /backends` | every pool and member with its state, as JSON ([`BackendsStatus`]) |
//! | `GET /sessions` | live sessions (route, backend, age, bytes, idle time) and the recent endings with their close codes, as JSON ([`SessionsList`]) |
//! | `GET /metrics` | Prometheus text |
//! | `POST /backends/{pool}/{member}/drain?fraction=F&over=D` | closes `F` (0 to 1) of the member's sessions, oldest first, their close frames (1001 `rebalance`) spread over `D`; answers how many, as JSON ([`MemberDrain`]) |
//!
//! With `admin.token` set, every request but `/healthz`, `/readyz` and `/drained` (which
//! orchestrators and `preStop` hooks ask without credentials; none reveals anything) needs
//! `Authorization: Bearer TOKEN` (the scheme in any case), else `401`.
//!
//! The endpoint shares the process, and its descriptors, with the data path, and inside a pod
//! every container reaches 127.0.0.1: its own limits keep admin load from starving the
//! listeners. At most [`MAX_CONNECTIONS`] connections at once (the next ones are closed as soon
//! as they are accepted); a request head must arrive within [`HEAD_TIMEOUT`], which also ends a
//! keep-alive connection idle that long; heads are bounded by [`MAX_HEAD_BYTES`] and
//! [`MAX_HEADERS`] (431); no request takes a body, so one announcing a body over
//! [`MAX_BODY_BYTES`] gets `413` and the connection is closed without reading it.
//!
//! Each answer is computed by asking the actor that owns the state (`send`, awaited): the admin
//! path may wait on a mailbox, the request path never does. Routes are matched in [`route`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use actix::Recipient;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;

use tether_actors::messages::{
    BackendsReport, DrainMemberSessions, EndedSessionInfo, LiveSessionInfo, RecentEndings,
    SessionsReport,
};
use tether_actors::metrics::Metrics;
use tether_config::{Config, HostPattern, ListenerProtocol, PathPattern};

use crate::telemetry::ExportStats;
#[cfg(doc)]
use tether_actors::route_table::BackendsStatus;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Admin connections served at once; a connection accepted beyond this is closed at once.
/// Probes, scrapes and a few status pages need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// How long an admin client may take to send a request head, counted from the connection's
/// start or the end of the previous response (so it is also the keep-alive idle timeout), as
/// `request_head_timeout` is on a listener.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest admin request head (request line and headers); larger gets `431`.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most header lines an admin request may carry; more gets `431`.
pub const MAX_HEADERS: usize = 100;

/// The largest request body the admin endpoint accepts: none of its requests takes one. A
/// request announcing a body gets `413` and the connection is closed without reading it.
pub const MAX_BODY_BYTES: u64 = 0;

/// How long `GET /drained` holds a request before answering `503`: as long as a whole shutdown
/// may take (`shutdown_delay` + `shutdown_grace`) and a margin. A `preStop` hook that asks at the
/// moment the pod's termination begins (before Tether has even seen its SIGTERM) is thus
/// answered when the drain is over, never before; and a request made while no shutdown comes
/// does not hold a connection for ever.
pub fn drained_hold(config: &Config) -> Duration {
    config.shutdown_delay + config.shutdown_grace + DRAINED_HOLD_MARGIN
}

/// What [`drained_hold`] adds to the longest shutdown.
pub const DRAINED_HOLD_MARGIN: Duration = Duration::from_secs(5);

/// The status page, served at `GET /` (inline CSS and JS, no external assets).
pub const STATUS_PAGE: &str = include_str!("status.html");

/// The sidecar's lifecycle as the admin endpoint reports it; `run` updates it, the admin
/// endpoint only reads it.
///
/// ```text
/// starting --set_listening--> serving --set_draining--> draining --set_drained--> drained
///  /readyz 503                 200 (if pools ok)          503 (delay, then the drain)  503
///  /drained held               held                       held                         200
/// ```
///
/// Each step is one-way: nothing turns readiness back on once shutdown began.
#[derive(Debug)]
pub struct Lifecycle {
    /// Set once the listeners accept connections.
    listening: AtomicBool,
    /// Set the moment shutdown begins (before the listeners stop accepting).
    draining: AtomicBool,
    /// Set once the drain is over: every connection and session closed, or the grace ran out.
    drained: AtomicBool,
    /// Wakes the `GET /drained` requests held until `drained` is set.
    drained_signal: tokio::sync::Notify,
    /// The configuration in force (replaced by a reload).
    config: RwLock<Arc<Config>>,
    /// Every listener's bound address, by name.
    listeners: RwLock<BTreeMap<String, SocketAddr>>,
    /// What the reloads so far came to.
    reloads: RwLock<ReloadStatus>,
}

/// What the reloads since start-up came to, in [`StatusReport`]: how operators (and tests) see
/// that a reload was refused and why, without reading logs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReloadStatus {
    /// Reloads put in force.
    pub applied: u64,
    /// Reloads refused (the running configuration kept serving).
    pub refused: u64,
    /// Why the last refused reload was refused: every problem, one per line, each naming its
    /// file.
    pub last_refusal: Option<String>,
    /// When the configuration in force was loaded: start-up, then each applied reload (Unix
    /// seconds; `tether_config_last_reload_success_timestamp_seconds`).
    #[serde(skip)]
    pub last_success_unix: f64,
}

impl Lifecycle {
    /// A sidecar that is starting with `config` and has not bound its listeners yet.
    pub fn new(config: Arc<Config>) -> Lifecycle {
        Lifecycle {
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            drained_signal: tokio::sync::Notify::new(),
            config: RwLock::new(config),
            listeners: RwLock::new(BTreeMap::new()),
            reloads: RwLock::new(ReloadStatus {
                last_success_unix: unix_now(),
                ..ReloadStatus::default()
            }),
        }
    }

    /// The listeners accept connections at these addresses.
    pub fn set_listening(&self, listeners: BTreeMap<String, SocketAddr>) {
        *self.listeners.write().unwrap_or_else(|e| e.into_inner()) = listeners;
        self.listening.store(true, Ordering::Release);
    }

    /// Shutdown began: readiness turns false for good.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The drain is over: nothing the listeners accepted is open any more (or the grace ran
    /// out); `/drained` answers 200 from now on.
    pub fn set_drained(&self) {
        self.drained.store(true, Ordering::Release);
        self.drained_signal.notify_waiters();
    }

    /// Resolves once the drain is over (at once if it is), or after `hold`; answers whether
    /// it is over.
    pub async fn wait_drained(&self, hold: Duration) -> bool {
        let notified = self.drained_signal.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a `set_drained` in between is not missed.
        notified.as_mut().enable();
        if self.is_drained() {
            return true;
        }
        let _ = tokio::time::timeout(hold, notified).await;
        self.is_drained()
    }

    /// Whether the drain is over.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// A reload put `config` in force.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// A reload was applied (`Ok`) or refused (`Err` with the reason, kept as it displays).
    pub fn record_reload<T, E: std::fmt::Display>(&self, outcome: &Result<T, E>) {
        let mut reloads = self.reloads.write().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(_) => {
                reloads.applied += 1;
                reloads.last_success_unix = unix_now();
            }
            Err(reason) => {
                reloads.refused += 1;
                reloads.last_refusal = Some(reason.to_string());
            }
        }
    }

    /// What the reloads so far came to.
    pub fn reloads(&self) -> ReloadStatus {
        self.reloads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every listener's bound address.
    pub fn listeners(&self) -> BTreeMap<String, SocketAddr> {
        self.listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Now, in seconds since the Unix epoch (as Prometheus timestamps are).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What the admin endpoint asks for its answers.
#[derive(Clone)]
pub struct AdminState {
    /// The route table, for `GET /backends`.
    pub backends: Recipient<BackendsReport>,
    /// The route table, for live sessions.
    pub sessions: Recipient<SessionsReport>,
    /// The route table, for recent session endings.
    pub endings: Recipient<RecentEndings>,
    /// The route table, for draining a fraction of a member's sessions.
    pub drains: Recipient<DrainMemberSessions>,
    /// Readiness, the configuration in force and the bound listeners.
    pub lifecycle: Arc<Lifecycle>,
    /// The data path's counters, for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Span export counters, when tracing is on.
    pub export: Option<Arc<ExportStats>>,
}

/// The running admin endpoint; stops serving (open connections included) when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Serves `listener` (already bound, non-blocking) until dropped. Must be called inside a
    /// tokio runtime.
    pub fn start(
        listener: std::net::TcpListener,
        state: AdminState,
    ) -> std::io::Result<AdminServer> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(%addr, "admin endpoint listening");
        let task = tokio::spawn(async move {
            // Connections live in the set, so dropping the server (aborting this task) closes
            // them too. Each holds a permit until it ends.
            let mut connections = JoinSet::new();
            let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_header_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                .keep_alive(true);
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let Ok(permit) = permits.clone().try_acquire_owned() else {
                                tracing::debug!(%peer, limit = MAX_CONNECTIONS, "admin endpoint: connection limit reached; closed");
                                drop(stream);
                                continue;
                            };
                            let state = state.clone();
                            let conn = builder.serve_connection(
                                TokioIo::new(stream),
                                hyper::service::service_fn(move |req| {
                                    let state = state.clone();
                                    async move { Ok::<_, Infallible>(route(&state, req).await) }
                                }),
                            );
                            connections.spawn(async move {
                                if let Err(e) = conn.await {
                                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                                }
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin endpoint: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(AdminServer { addr, task })
    }

    /// The address it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Paths the admin endpoint serves (all with `GET` and `HEAD`).
const PATHS: &[&str] = &[
    "/",
    "/healthz",
    "/readyz",
    "/drained",
    "/config",
    "/status",
    "/backends",
    "/sessions",
    "/metrics",
];

/// Answers one admin request.
pub async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.body().size_hint().lower() > MAX_BODY_BYTES
        || (MAX_BODY_BYTES == 0 && !req.body().is_end_stream())
    {
        // Announced too large (Content-Length), or any body when none is accepted (chunked
        // included): refused unread, and the connection closes rather than drain it.
        let mut resp = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "admin requests take no body\n",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let path = req.uri().path();
    if let Some((pool, member)) = member_drain_path(path) {
        if req.method() != Method::POST {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        if !authorized(state, &req) {
            return unauthorized();
        }
        return drain_member(state, pool, member, req.uri().query().unwrap_or("")).await;
    }
    if !PATHS.contains(&path) {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try GET / (status page), /healthz, /readyz, /drained, /config, /status, /backends, /sessions or /metrics\n",
        );
    }
    if !matches!(req.method(), &Method::GET | &Method::HEAD) {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let open = matches!(path, "/healthz" | "/readyz" | "/drained");
    if !open && !authorized(state, &req) {
        return unauthorized();
    }
    answer(state, path).await
}

/// `401` with the scheme to use.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::UNAUTHORIZED,
        "admin.token is set: send Authorization: Bearer TOKEN\n",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tether-admin\""),
    );
    resp
}

/// `/backends/{pool}/{member}/drain` split into its pool and member.
fn member_drain_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/backends/")?.strip_suffix("/drain")?;
    let (pool, member) = rest.split_once('/')?;
    (!pool.is_empty() && !member.is_empty() && !member.contains('/')).then_some((pool, member))
}

/// What `POST /backends/{pool}/{member}/drain` answers.
#[derive(Debug, serde::Serialize)]
pub struct MemberDrain {
    /// The pool.
    pub pool: String,
    /// The member.
    pub member: SocketAddr,
    /// Sessions picked (their closes go out over `over_ms`).
    pub sessions: usize,
    /// The window the closes are spread over, in milliseconds.
    pub over_ms: u64,
}

/// Drains a fraction of a member's sessions over a window (see [`MemberDrain`]).
async fn drain_member(
    state: &AdminState,
    pool: &str,
    member: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let Ok(member) = member.parse::<SocketAddr>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "the member is an address as GET /backends lists it, e.g. 10.0.0.7:8080\n",
        );
    };
    let mut fraction = None;
    let mut over = Some(Duration::ZERO);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("fraction", v)) => {
                fraction = v.parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f));
                if fraction.is_none() {
                    return text(StatusCode::BAD_REQUEST, "fraction: a number from 0 to 1\n");
                }
            }
            Some(("over", v)) => {
                over = tether_config::units::parse_duration(v).ok();
                if over.is_none() {
                    return text(StatusCode::BAD_REQUEST, "over: a duration, e.g. 60s\n");
                }
            }
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the query takes fraction=F (0 to 1) and over=D (e.g. 60s)\n",
                )
            }
        }
    }
    let (Some(fraction), Some(over)) = (fraction, over) else {
        return text(StatusCode::BAD_REQUEST, "fraction=F (0 to 1) is required\n");
    };
    let order = DrainMemberSessions {
        pool: pool.to_owned(),
        member,
        fraction,
        over,
    };
    match state.drains.send(order).await {
        Ok(Some(sessions)) => json(&MemberDrain {
            pool: pool.to_owned(),
            member,
            sessions,
            over_ms: over.as_millis() as u64,
        }),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            &format!("pool \"{pool}\" has no member {member}\n"),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the route table is not running\n",
        ),
    }
}

/// The answer to an authorized `GET` of `path`, one of [`PATHS`].
async fn answer(state: &AdminState, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness(state).await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {reason}\n"),
            ),
        },
        "/drained" => {
            let lifecycle = &state.lifecycle;
            if lifecycle
                .wait_drained(drained_hold(&lifecycle.config()))
                .await
            {
                text(StatusCode::OK, "drained\n")
            } else if lifecycle.is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not drained: still draining\n",
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not drained: serving (no shutdown began)\n",
                )
            }
        }
        "/config" => {
            let body = state.lifecycle.config().redacted().to_toml_string();
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/toml; charset=utf-8"),
            );
            resp
        }
        "/status" => {
            let ready = readiness(state).await;
            json(&StatusReport::new(&state.lifecycle, ready))
        }
        "/sessions" => {
            let live = state.sessions.send(SessionsReport { stats: true }).await;
            let ended = state.endings.send(RecentEndings).await;
            match (live, ended) {
                (Ok(live), Ok(recent_endings)) => json(&SessionsList {
                    live,
                    recent_endings,
                }),
                _ => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the route table is not running\n",
                ),
            }
        }
        "/backends" => match state.backends.send(BackendsReport).await {
            Ok(status) => json(&status),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the route table is not running\n",
            ),
        },
        _ => {
            // "/metrics"
            let mut body = String::with_capacity(8192);
            state.metrics.render(&mut body);
            render_control_plane(state, &mut body).await;
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
    }
}

/// Whether the request carries the admin token (always, when none is configured). The
/// comparison takes the same time wherever the first difference is.
fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let config = state.lifecycle.config();
    let Some(token) = config.admin.token.as_deref() else {
        return true;
    };
    let Some(sent) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()))
    else {
        return false;
    };
    let (a, b) = (sent, token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization: Bearer …` value: the scheme is matched without regard
/// to case (RFC 9110 §11.1) and separated by one or more spaces (§11.4, `1*SP`); surrounding
/// whitespace is dropped. `None` for another scheme or no credentials.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(b"bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let credentials = rest.trim_ascii_start();
    (!credentials.is_empty()).then_some(credentials)
}

/// Why `/readyz` answers `503` (and `not_ready_reason` in `GET /status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Shutdown began.
    #[error("draining (shutting down)")]
    Draining,
    /// The listeners are not bound yet.
    #[error("listeners are not accepting yet")]
    NotListening,
    /// The route table no longer answers.
    #[error("the route table is not running")]
    RouteTableGone,
    /// These routed pools have no member in rotation.
    #[error(
        "no member in rotation in pool{} {}",
        if .0.len() > 1 { "s" } else { "" },
        .0.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ")
    )]
    NoMemberInRotation(Vec<String>),
}

/// Ready: listeners bound, not draining, and every pool a rule routes to has a member in
/// rotation. `Err` says why not.
async fn readiness(state: &AdminState) -> Result<(), NotReady> {
    let lifecycle = &state.lifecycle;
    if lifecycle.is_draining() {
        return Err(NotReady::Draining);
    }
    if !lifecycle.listening.load(Ordering::Acquire) {
        return Err(NotReady::NotListening);
    }
    let status = state
        .backends
        .send(BackendsReport)
        .await
        .map_err(|_| NotReady::RouteTableGone)?;
    let empty: Vec<String> = status
        .pools
        .iter()
        .filter(|p| p.routed && p.in_rotation == 0)
        .map(|p| p.name.clone())
        .collect();
    if !empty.is_empty() {
        return Err(NotReady::NoMemberInRotation(empty));
    }
    Ok(())
}

/// `GET /sessions`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionsList {
    /// Every live session, oldest id first.
    pub live: Vec<LiveSessionInfo>,
    /// The most recent endings, newest first.
    pub recent_endings: Vec<EndedSessionInfo>,
}

/// `GET /status`: what the status page shows besides pools and sessions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    /// Tether's version.
    pub version: &'static str,
    /// The git commit it was built from (12 hex digits), or `unknown`.
    pub commit: &'static str,
    /// Whether `/readyz` says ready.
    pub ready: bool,
    /// Why not, when not.
    pub not_ready_reason: Option<String>,
    /// Whether shutdown began.
    pub draining: bool,
    /// Whether the drain is over (`GET /drained`).
    pub drained: bool,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every routing rule.
    pub routes: Vec<RouteStatus>,
    /// Reloads applied and refused since start-up, and why the last refusal was.
    pub reloads: ReloadStatus,
}

/// One listener in [`StatusReport`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerStatus {
    /// Its name.
    pub name: String,
    /// The address it is bound to (the real port when configured as `:0`); `None` until bound.
    pub address: Option<SocketAddr>,
    /// `http` or `https`.
    pub protocol: &'static str,
}

/// One routing rule in [`StatusReport`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteStatus {
    /// Its name.
    pub name: String,
    /// The listener it belongs to.
    pub listener: String,
    /// Host patterns as written (empty = any host).
    pub hosts: Vec<String>,
    /// Path patterns as written (empty = everything).
    pub paths: Vec<String>,
    /// The pool it sends to.
    pub backend_pool: String,
    /// The backend settings it uses.
    pub backend_settings: String,
}

impl StatusReport {
    fn new(lifecycle: &Lifecycle, ready: Result<(), NotReady>) -> StatusReport {
        let config = lifecycle.config();
        let bound = lifecycle.listeners();
        StatusReport {
            version: crate::build_info::VERSION,
            commit: crate::build_info::COMMIT,
            ready: ready.is_ok(),
            not_ready_reason: ready.err().map(|reason| reason.to_string()),
            draining: lifecycle.is_draining(),
            drained: lifecycle.is_drained(),
            listeners: config
                .listeners
                .values()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    address: bound.get(&l.name).copied(),
                    protocol: match l.protocol {
                        ListenerProtocol::Http => "http",
                        ListenerProtocol::Https => "https",
                    },
                })
                .collect(),
            routes: config
                .routing_rules
                .values()
                .map(|r| RouteStatus {
                    name: r.name.clone(),
                    listener: r.listener.clone(),
                    hosts: r.hosts.iter().map(HostPattern::to_string).collect(),
                    paths: r.paths.iter().map(PathPattern::to_string).collect(),
                    backend_pool: r.backend_pool.clone(),
                    backend_settings: r.backend_settings.clone(),
                })
                .collect(),
            reloads: lifecycle.reloads(),
        }
    }
}

fn json<T: serde::Serialize>(status: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(status) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialize the status: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Appends what only the control plane knows: live sessions per route, member health and
/// sessions, reloads, the build, the process, span export counts.
async fn render_control_plane(state: &AdminState, out: &mut String) {
    use std::fmt::Write as _;
    use tether_actors::metrics::{escape, BACKEND_STATES};
    let lifecycle = &state.lifecycle;
    let config = lifecycle.config();
    if let Ok(sessions) = state.sessions.send(SessionsReport { stats: false }).await {
        // Every configured route has a sample from the start (0); a route a reload removed
        // keeps one while its sessions last.
        let mut per_route: BTreeMap<&str, usize> = config
            .routing_rules
            .keys()
            .map(|name| (name.as_str(), 0))
            .collect();
        for s in &sessions {
            *per_route.entry(s.route.as_str()).or_default() += 1;
        }
        out.push_str("# HELP tether_websocket_sessions_active Live WebSocket sessions by route.\n");
        out.push_str("# TYPE tether_websocket_sessions_active gauge\n");
        for (route, n) in per_route {
            let _ = writeln!(
                out,
                "tether_websocket_sessions_active{{route=\"{}\"}} {n}",
                escape(route)
            );
        }
    }
    if let Ok(status) = state.backends.send(BackendsReport).await {
        out.push_str("# HELP tether_backend_up 1 when the member is in rotation (healthy and not ejected), else 0.\n");
        out.push_str("# TYPE tether_backend_up gauge\n");
        for pool in &status.pools {
            for m in &pool.members {
                let _ = writeln!(
                    out,
                    "tether_backend_up{{pool=\"{}\",member=\"{}\"}} {}",
                    escape(&pool.name),
                    m.address,
                    u8::from(m.in_rotation)
                );
            }
        }
        out.push_str("# HELP tether_backend_state The member's state: 1 for the state it is in, 0 for the others.\n");
        out.push_str("# TYPE tether_backend_state gauge\n");
        for pool in &status.pools {
            for m in &pool.members {
                for s in BACKEND_STATES {
                    let _ = writeln!(
                        out,
                        "tether_backend_state{{pool=\"{}\",member=\"{}\",state=\"{s}\"}} {}",
                        escape(&pool.name),
                        m.address,
                        u8::from(m.state == s)
                    );
                }
            }
        }
        out.push_str("# HELP tether_backend_connect_failures_total Connections to the member that failed, by reason.\n");
        out.push_str("# TYPE tether_backend_connect_failures_total counter\n");
        for pool in &status.pools {
            for m in &pool.members {
                let f = &m.connect_failures;
                let reasons = [
                    ("error", f.error),
                    ("timeout", f.timeout),
                    ("tls", f.tls),
                    ("no_local_port", f.no_local_port),
                ];
                for (reason, n) in reasons {
                    let _ = writeln!(
                        out,
                        "tether_backend_connect_failures_total{{pool=\"{}\",member=\"{}\",reason=\"{reason}\"}} {n}",
                        escape(&pool.name),
                        m.address
                    );
                }
            }
        }
        out.push_str("# HELP tether_backend_sessions Live WebSocket sessions per member.\n");
        out.push_str("# TYPE tether_backend_sessions gauge\n");
        for pool in &status.pools {
            for m in &pool.members {
                let _ = writeln!(
                    out,
                    "tether_backend_sessions{{pool=\"{}\",member=\"{}\"}} {}",
                    escape(&pool.name),
                    m.address,
                    m.live_sessions
                );
            }
        }
    }
    let reloads = lifecycle.reloads();
    out.push_str("# HELP tether_config_reloads_total Configuration reloads (SIGHUP, a changed file), by result.\n");
    out.push_str("# TYPE tether_config_reloads_total counter\n");
    let _ = writeln!(
        out,
        "tether_config_reloads_total{{result=\"applied\"}} {}\ntether_config_reloads_total{{result=\"refused\"}} {}",
        reloads.applied, reloads.refused
    );
    out.push_str("# HELP tether_config_last_reload_success_timestamp_seconds When the configuration in force was loaded (start-up or the last applied reload).\n");
    out.push_str("# TYPE tether_config_last_reload_success_timestamp_seconds gauge\n");
    let _ = writeln!(
        out,
        "tether_config_last_reload_success_timestamp_seconds {}",
        reloads.last_success_unix
    );
    out.push_str(
        "# HELP tether_draining 1 once shutdown began (readiness is false for good), else 0.\n",
    );
    out.push_str("# TYPE tether_draining gauge\n");
    let _ = writeln!(out, "tether_draining {}", u8::from(lifecycle.is_draining()));
    out.push_str(
        "# HELP tether_build_info What this binary was built from; the value is always 1.\n",
    );
    out.push_str("# TYPE tether_build_info gauge\n");
    let _ = writeln!(
        out,
        "tether_build_info{{version=\"{}\",commit=\"{}\",rustc=\"{}\"}} 1",
        escape(crate::build_info::VERSION),
        escape(crate::build_info::COMMIT),
        escape(
            crate::build_info::RUSTC
                .strip_prefix("rustc ")
                .unwrap_or(crate::build_info::RUSTC)
        )
    );
    if let Some(process) = crate::process::ProcessStats::read() {
        process.render(out);
    }
    if let Some(export) = &state.export {
        use std::sync::atomic::Ordering::Relaxed;
        out.push_str(
            "# HELP tether_otel_spans_dropped_total Spans that never reached the collector.\n",
        );
        out.push_str("# TYPE tether_otel_spans_dropped_total counter\n");
        let _ = writeln!(
            out,
            "tether_otel_spans_dropped_total{{reason=\"queue_full\"}} {}",
            export.dropped.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "tether_otel_spans_dropped_total{{reason=\"export_failed\"}} {}",
            export.failed.load(Relaxed)
        );
        out.push_str("# HELP tether_otel_spans_exported_total Spans the collector accepted.\n");
        out.push_str("# TYPE tether_otel_spans_exported_total counter\n");
        let _ = writeln!(
            out,
            "tether_otel_spans_exported_total {}",
            export.exported.load(Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_credentials_exact() {
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"BEARER   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Bearer"), None);
        assert_eq!(bearer_credentials(b"Bearer "), None);
        assert_eq!(bearer_credentials(b"Bearerabc"), None);
        assert_eq!(bearer_credentials(b"Basic abc"), None);
        assert_eq!(bearer_credentials(b"Bear"), None);
    }

    fn lifecycle() -> Lifecycle {
        let config = tether_config::from_toml_str("allow_empty = true\n").unwrap();
        Lifecycle::new(Arc::new(config))
    }

    #[tokio::test]
    async fn drained_is_held_until_the_drain_is_over_and_bounded() {
        let lifecycle = Arc::new(lifecycle());
        // Nothing drains: the hold runs out and says so.
        assert!(!lifecycle.wait_drained(Duration::from_millis(20)).await);
        // A waiter held before the drain is over is woken by it, whatever the hold.
        let waiter = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.wait_drained(Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        lifecycle.set_draining();
        assert!(!waiter.is_finished());
        lifecycle.set_drained();
        assert!(waiter.await.unwrap());
        // After it, the answer is immediate.
        assert!(lifecycle.wait_drained(Duration::ZERO).await);
    }

    #[test]
    fn the_drained_hold_covers_a_whole_shutdown() {
        let mut config = tether_config::from_toml_str("allow_empty = true\n").unwrap();
        config.shutdown_delay = Duration::from_secs(5);
        config.shutdown_grace = Duration::from_secs(30);
        assert_eq!(drained_hold(&config), Duration::from_secs(40));
    }

    #[test]
    fn not_ready_reasons_read_as_before() {
        let pools = |names: &[&str]| {
            NotReady::NoMemberInRotation(names.iter().map(|n| n.to_string()).collect())
        };
        assert_eq!(
            pools(&["a"]).to_string(),
            "no member in rotation in pool \"a\""
        );
        assert_eq!(
            pools(&["a", "b"]).to_string(),
            "no member in rotation in pools \"a\", \"b\""
        );
        assert_eq!(NotReady::Draining.to_string(), "draining (shutting down)");
    }
}
