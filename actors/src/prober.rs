//! Active health probes: one [`ProberActor`] per backend pool that has a probe.
//!
//! The prober probes every member of its pool (in rotation or not) every `interval`, each
//! member on its own jittered schedule, and keeps each member's [`HealthCounter`]. It tells the
//! route table only when a member *flips* ([`MemberHealthChanged`]); each probe's result is
//! written into the member's shared status for `GET /backends`, which costs no message.
//!
//! # Probe health lifecycle
//!
//! ```text
//!             1 success                      healthy_threshold successes in a row
//!   Unknown ───────────────▶ Healthy ◀──────────────────────────────────────────┐
//!      │                       │                                                │
//!      │ unhealthy_threshold   │ unhealthy_threshold failures in a row          │
//!      │ failures in a row     ▼                                                │
//!      └─────────────────▶ Unhealthy ───────────────────────────────────────────┘
//! ```
//!
//! * A member starts **Unknown** and is *not* in rotation: a backend that was never seen
//!   answering gets no traffic. Its first probe is sent at once (spread over a few tens of
//!   milliseconds), so the unknown window at start-up is one probe round trip, and the first
//!   success is enough to bring it in — waiting for `healthy_threshold` successes would keep a
//!   freshly started sidecar answering 503 for several intervals.
//! * **Healthy** → **Unhealthy** after exactly `unhealthy_threshold` consecutive failures; a
//!   success in between starts the count over.
//! * **Unhealthy** → **Healthy** after exactly `healthy_threshold` consecutive successes.
//! * A member of a pool without a probe has no lifecycle: it is always in rotation.
//! * A probe Tether could not send — no local port left toward the member from its source
//!   addresses ([`crate::error::ProxyError::NoLocalPort`]) — is no event: the state and both
//!   counts stay as they were (Tether's limit says nothing about the member).
//!
//! A probe is `GET path` (`kind = "http"`): healthy when the status is in `match_status` and,
//! if set, the body contains `match_body`. Or a real WebSocket opening handshake
//! (`kind = "websocket"`): healthy on `101 Switching Protocols` with the right
//! `Sec-WebSocket-Accept` (RFC 6455 §4.2.2), after which the probe closes with 1000. Every probe
//! must finish within `timeout`, connection included. With `protocol = "https"` the probe
//! runs over TLS with its backend settings' trust (CA file or system roots, `server_name`,
//! client certificate): a certificate that does not verify makes the member unhealthy.
//!
//! Jitter: after a probe starts, the next one for the member starts `interval` × a random factor
//! in [0.9, 1.1] later, so sidecars started together drift apart instead of probing a backend
//! in lockstep.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Recipient, WrapFuture,
};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sha1::{Digest, Sha1};
use tether_config::{BackendProtocol, BackendSettingsConfig, ProbeConfig, ProbeKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::balance::Member;
use crate::error::ProxyError;
use crate::member::{Health, ProbeOutcome, ProbeReport};
use crate::messages::{MemberHealthChanged, ProbeCompleted, ProbeTargets};
use crate::shutdown::ShutdownSignal;

/// The probe-health state machine of one member (see the module's lifecycle note). Pure: no
/// I/O and no clock, so every transition is unit-tested.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    state: Health,
    successes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl HealthCounter {
    /// An unknown member with the given thresholds (each at least 1).
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> HealthCounter {
        HealthCounter {
            state: Health::Unknown,
            successes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    /// Records one probe result; returns the new state when it flipped.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        let next = if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            match self.state {
                Health::Unknown => Health::Healthy,
                Health::Unhealthy if self.successes >= self.healthy_threshold => Health::Healthy,
                state => state,
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            match self.state {
                Health::Unknown | Health::Healthy if self.failures >= self.unhealthy_threshold => {
                    Health::Unhealthy
                }
                state => state,
            }
        };
        let flipped = next != self.state;
        self.state = next;
        flipped.then_some(next)
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Consecutive successes so far.
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// How an https probe connects: the client configuration (or why it could not be built), and
/// the name verified when it is not the member's IP address.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    /// Trusted roots and client certificate of the backend settings.
    pub config: Result<Arc<ClientConfig>, String>,
    /// `server_name`, else the probe's `host`, else the settings' host override.
    pub server_name: Option<ServerName<'static>>,
}

/// What a pool's prober does: the probe, where it is sent, and the `Host` it names.
#[derive(Debug, Clone)]
pub struct ProbePlan {
    /// The pool whose members are probed.
    pub pool: Arc<str>,
    /// The probe's settings.
    pub probe: ProbeConfig,
    /// The port probed when set (the probe's, else the backend settings'); else each member's.
    pub port: Option<u16>,
    /// `protocol = "https"`: the client configuration (or why it could not be built), and the
    /// name verified when it is not the member's IP address.
    pub tls: Option<ProbeTls>,
    /// The settings' `source_addresses`: probes leave from the addresses the traffic does.
    pub sources: Vec<IpAddr>,
}

impl ProbePlan {
    /// The plan for `pool` from its probe and the settings that name it.
    pub fn new(pool: Arc<str>, probe: &ProbeConfig, settings: &BackendSettingsConfig) -> Self {
        let h2 = probe.protocol == BackendProtocol::H2 && probe.kind != ProbeKind::WebSocket;
        let tls = probe.protocol.uses_tls().then(|| {
            let config = crate::upstream::backend_client_config(settings)
                .map(|config| {
                    if !h2 {
                        return config;
                    }
                    let mut alpn_h2 = (*config).clone();
                    alpn_h2.alpn_protocols = vec![b"h2".to_vec()];
                    Arc::new(alpn_h2)
                })
                .map_err(|e| e.to_string());
            let name = settings
                .server_name
                .as_deref()
                .or(probe.host.as_deref())
                .or(settings.host_override.as_deref())
                .map(|h| crate::headers::parse_authority(h).map_or(h, |a| a.host))
                .and_then(|n| ServerName::try_from(n.to_owned()).ok());
            ProbeTls {
                config,
                server_name: name,
            }
        });
        ProbePlan {
            pool,
            probe: probe.clone(),
            port: probe.port.or(settings.port),
            tls,
            sources: settings.source_addresses.clone(),
        }
    }

    /// Whether the probe speaks HTTP/2 (`h2c`/`h2`, except WebSocket probes: upgrades go over
    /// HTTP/1.1 like the data path's).
    fn speaks_h2(&self) -> bool {
        self.probe.protocol.is_http2() && self.probe.kind != ProbeKind::WebSocket
    }

    /// Where a member is probed.
    pub fn target(&self, member: SocketAddr) -> SocketAddr {
        let mut target = member;
        if let Some(port) = self.port {
            target.set_port(port);
        }
        target
    }
}

/// Probes `member` once under `plan`, within the probe's timeout. The connection is opened as
/// the data path opens its own ([`crate::upstream::connect`], from the settings' source
/// addresses); a probe that found no local port toward the member is not counted
/// ([`ProbeOutcome::counts`]): that is Tether's limit, not the member's health.
pub async fn probe_once(plan: &ProbePlan, member: SocketAddr) -> ProbeOutcome {
    let target = plan.target(member);
    let deadline = tokio::time::Instant::now() + plan.probe.timeout;
    let timed_out = || ProbeOutcome {
        ok: false,
        counts: true,
        detail: format!("timed out after {:?}", plan.probe.timeout),
    };
    let stream = match crate::upstream::connect(target, &plan.sources, plan.probe.timeout).await {
        Ok(stream) => stream,
        Err(ProxyError::ConnectTimeout { .. }) => return timed_out(),
        Err(ProxyError::ConnectFailed { cause, .. }) => {
            return ProbeOutcome {
                ok: false,
                counts: true,
                detail: format!("connect to {target} failed: {cause}"),
            }
        }
        Err(other) => {
            return ProbeOutcome {
                ok: false,
                counts: other.counts_against_member(),
                detail: format!("not probed: {other}"),
            }
        }
    };
    let verdict = match plan.probe.kind {
        ProbeKind::Http if plan.speaks_h2() => {
            tokio::time::timeout_at(deadline, h2_http_probe(plan, target, stream)).await
        }
        ProbeKind::Http => {
            tokio::time::timeout_at(deadline, http_probe(plan, target, stream)).await
        }
        ProbeKind::Grpc => {
            tokio::time::timeout_at(deadline, grpc_probe(plan, target, stream)).await
        }
        ProbeKind::WebSocket => {
            tokio::time::timeout_at(deadline, websocket_probe(plan, target, stream, deadline)).await
        }
    };
    match verdict {
        Ok(Ok(detail)) => ProbeOutcome {
            ok: true,
            counts: true,
            detail,
        },
        Ok(Err(detail)) => ProbeOutcome {
            ok: false,
            counts: true,
            detail,
        },
        Err(_) => timed_out(),
    }
}

/// Aborts the probe's connection task when the probe ends or is cancelled by its timeout.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type ProbeSender = http1::SendRequest<Empty<Bytes>>;

/// A probe's connection: TCP, or TLS over TCP.
trait ProbeStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ProbeStream for T {}

/// The probe's connection over `stream` (connected): as it is, or TLS when the probe is https.
async fn probe_io(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
) -> Result<TokioIo<Box<dyn ProbeStream>>, String> {
    let Some(ProbeTls {
        config,
        server_name: name,
    }) = &plan.tls
    else {
        return Ok(TokioIo::new(Box::new(stream)));
    };
    let config = config.as_ref().map_err(Clone::clone)?;
    let name = name
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .map_err(|e| {
            format!(
                "TLS with {target} failed: {}",
                crate::tls::describe_io_error(&e)
            )
        })?;
    if plan.speaks_h2() && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!(
            "TLS with {target}: the backend did not select ALPN \"h2\""
        ));
    }
    Ok(TokioIo::new(Box::new(tls)))
}

/// Connects and performs the HTTP/1.1 client handshake for an upgrade; the connection runs in
/// a task (an upgrade needs it driven while the response is awaited) that ends with the probe.
async fn connect_for_upgrade(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
) -> Result<(ProbeSender, AbortOnDrop), String> {
    let (sender, conn) = http1::handshake(probe_io(plan, target, stream).await?)
        .await
        .map_err(|e| format!("HTTP handshake with {target} failed: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok((sender, AbortOnDrop(task)))
}

fn request(plan: &ProbePlan, target: SocketAddr) -> http::request::Builder {
    let host = match &plan.probe.host {
        Some(host) => host.clone(),
        None => target.to_string(),
    };
    Request::get(plan.probe.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "tether-probe")
}

/// The written form of `match_status`, for failure details.
fn ranges(probe: &ProbeConfig) -> String {
    let mut out = String::new();
    for (i, r) in probe.match_status.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if r.start() == r.end() {
            let _ = write!(out, "{}", r.start());
        } else {
            let _ = write!(out, "{}-{}", r.start(), r.end());
        }
    }
    out
}

/// The largest body a `match_body` check reads.
const MAX_PROBE_BODY: usize = 64 * 1024;

async fn http_probe(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
) -> Result<String, String> {
    let io = probe_io(plan, target, stream).await?;
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP handshake with {target} failed: {e}"))?;
    let req = request(plan, target)
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("bad probe request: {e}"))?;
    // The exchange and the connection are driven together on this task: no spawn, no hop to
    // another thread. The connection ends once the exchange drops its sender.
    let exchange = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request to {target} failed: {e}"))?;
        drop(sender);
        check_response(plan, resp).await
    };
    let (verdict, _) = tokio::join!(exchange, conn);
    verdict
}

/// Opens an HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN `h2`) and sends
/// `req` on it; the connection task ends with the probe.
async fn h2_send(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
    req: Request<Full<Bytes>>,
) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), String> {
    let (mut sender, conn) =
        http2::handshake(TokioExecutor::new(), probe_io(plan, target, stream).await?)
            .await
            .map_err(|e| format!("HTTP/2 handshake with {target} failed: {e}"))?;
    let task = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request to {target} failed: {e}"))?;
    Ok((resp, task))
}

/// The absolute target of an HTTP/2 probe request (RFC 9113 §8.3.1: `:scheme`, `:authority`).
fn h2_request(plan: &ProbePlan, target: SocketAddr, path: &str) -> http::request::Builder {
    let scheme = if plan.probe.protocol.uses_tls() {
        "https"
    } else {
        "http"
    };
    let authority = plan
        .probe
        .host
        .clone()
        .unwrap_or_else(|| target.to_string());
    Request::builder()
        .uri(format!("{scheme}://{authority}{path}"))
        .version(http::Version::HTTP_2)
        .header(header::USER_AGENT, "tether-probe")
}

async fn h2_http_probe(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
) -> Result<String, String> {
    let req = h2_request(plan, target, &plan.probe.path)
        .body(Full::default())
        .map_err(|e| format!("bad probe request: {e}"))?;
    let (resp, _conn) = h2_send(plan, target, stream, req).await?;
    check_response(plan, resp).await
}

/// The gRPC health check (`grpc.health.v1.Health/Check`, service `""`): healthy when the call
/// ends with `grpc-status: 0` and the answer is `SERVING`.
async fn grpc_probe(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
) -> Result<String, String> {
    let req = h2_request(plan, target, crate::grpc::HEALTH_CHECK_PATH)
        .method(http::Method::POST)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(crate::grpc::HEALTH_CHECK_REQUEST))
        .map_err(|e| format!("bad probe request: {e}"))?;
    let (resp, _conn) = h2_send(plan, target, stream, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(format!(
            "health check answered HTTP {}",
            resp.status().as_u16()
        ));
    }
    let head_status = resp.headers().get(crate::grpc::GRPC_STATUS).cloned();
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    let mut trailer_status = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the health check answer failed: {e}"))?;
        match frame.into_data() {
            Ok(data) => {
                seen.extend_from_slice(&data);
                if seen.len() > MAX_PROBE_BODY {
                    return Err("health check answer too large".into());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    trailer_status = trailers.get(crate::grpc::GRPC_STATUS).cloned();
                }
            }
        }
    }
    match trailer_status.or(head_status) {
        Some(s) if s == "0" => {}
        Some(s) => {
            return Err(format!(
                "health check failed with grpc-status {}",
                String::from_utf8_lossy(s.as_bytes())
            ))
        }
        None => return Err("health check answer has no grpc-status".into()),
    }
    if crate::grpc::health_is_serving(&seen) {
        Ok("SERVING".into())
    } else {
        Err("health check says not SERVING".into())
    }
}

async fn check_response(
    plan: &ProbePlan,
    resp: http::Response<hyper::body::Incoming>,
) -> Result<String, String> {
    let status = resp.status().as_u16();
    if !plan.probe.match_status.iter().any(|r| r.contains(&status)) {
        return Err(format!(
            "status {status} (expected {})",
            ranges(&plan.probe)
        ));
    }
    let Some(needle) = &plan.probe.match_body else {
        return Ok(format!("status {status}"));
    };
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
            if contains(&seen, needle.as_bytes()) {
                return Ok(format!("status {status}, body matched"));
            }
            if seen.len() > MAX_PROBE_BODY {
                break;
            }
        }
    }
    Err(format!(
        "status {status} but the body does not contain {needle:?}"
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The GUID of RFC 6455 §1.3, appended to the key for `Sec-WebSocket-Accept`.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A masked close frame with code 1000 and no reason (RFC 6455 §5.5.1; clients mask, §5.3).
fn close_frame() -> [u8; 8] {
    let mask = fastrand::u32(..).to_be_bytes();
    let code = 1000u16.to_be_bytes();
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ]
}

async fn websocket_probe(
    plan: &ProbePlan,
    target: SocketAddr,
    stream: TcpStream,
    deadline: tokio::time::Instant,
) -> Result<String, String> {
    let (mut sender, _conn) = connect_for_upgrade(plan, target, stream).await?;
    let mut nonce = [0u8; 16];
    fastrand::fill(&mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let req = request(plan, target)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .body(Empty::new())
        .map_err(|e| format!("bad probe request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("handshake with {target} failed: {e}"))?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!(
            "expected 101 Switching Protocols, got {}",
            status.as_u16()
        ));
    }
    let expected = accept_key(&key);
    if resp.headers().get(header::SEC_WEBSOCKET_ACCEPT)
        != Some(&HeaderValue::from_str(&expected).unwrap_or(HeaderValue::from_static("-")))
    {
        return Err("101 with a missing or wrong Sec-WebSocket-Accept".into());
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| format!("upgrade failed: {e}"))?;
    let mut io = TokioIo::new(upgraded);
    // Close politely with 1000 and give the backend the rest of the timeout to answer; the
    // verdict is already in, so a slow close does not fail the probe.
    let _ = tokio::time::timeout_at(deadline, async {
        io.write_all(&close_frame()).await?;
        let mut buf = [0u8; 256];
        loop {
            let n = io.read(&mut buf).await?;
            if n == 0 || buf[..n].contains(&0x88) {
                break;
            }
        }
        io.shutdown().await
    })
    .await;
    Ok("101 Switching Protocols".into())
}

/// The next probe of a member starts `interval` × [0.9, 1.1] after the previous one started.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// The first probe of a member waits at most this long, so start-up is one probe round trip
/// while a thousand members still do not connect in the same millisecond.
const FIRST_PROBE_SPREAD: Duration = Duration::from_millis(50);

/// One member under probe. Its probe loop is a task of its own on the prober's arbiter, not a
/// future inside the actor's context: actix polls every future of a context on each wake-up,
/// so a thousand members' timers there would make each probe event cost a thousand polls.
struct Target {
    member: Arc<Member>,
    health: HealthCounter,
    /// The member's probe loop; aborted when the target is dropped.
    task: tokio::task::JoinHandle<()>,
    /// Distinguishes this target from an earlier one at the same address (removed, re-added).
    id: u64,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Probes one member forever: first after `first`, then every jittered interval measured from
/// the start of the previous probe, reporting each result to the prober.
async fn probe_loop(
    plan: Arc<ProbePlan>,
    addr: SocketAddr,
    id: u64,
    first: Duration,
    prober: actix::Addr<ProberActor>,
) {
    let mut next = tokio::time::Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let started = tokio::time::Instant::now();
        let outcome = probe_once(&plan, addr).await;
        prober.do_send(ProbeCompleted {
            member: addr,
            id,
            outcome,
            latency: started.elapsed(),
        });
        next = started + jittered(plan.probe.interval);
    }
}

/// Probes every member of one pool.
pub struct ProberActor {
    plan: Arc<ProbePlan>,
    table: Recipient<MemberHealthChanged>,
    targets: HashMap<SocketAddr, Target>,
    next_id: u64,
    shutdown: ShutdownSignal,
}

impl ProberActor {
    /// A prober for `plan` that reports flips to `table` and stops when `shutdown` fires. It
    /// probes nothing until it receives [`ProbeTargets`].
    pub fn new(
        plan: ProbePlan,
        table: Recipient<MemberHealthChanged>,
        shutdown: ShutdownSignal,
    ) -> ProberActor {
        ProberActor {
            plan: Arc::new(plan),
            table,
            targets: HashMap::new(),
            next_id: 0,
            shutdown,
        }
    }
}

impl Actor for ProberActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut shutdown = self.shutdown.clone();
        ctx.spawn(
            async move { shutdown.fired().await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        );
        tracing::debug!(pool = %self.plan.pool, probe = %self.plan.probe.name, "prober started");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Dropping the targets aborts their probe loops.
        self.targets.clear();
    }
}

impl Handler<ProbeTargets> for ProberActor {
    type Result = ();

    fn handle(&mut self, msg: ProbeTargets, ctx: &mut Context<Self>) {
        let wanted: HashMap<SocketAddr, Arc<Member>> =
            msg.members.into_iter().map(|m| (m.addr, m)).collect();
        self.targets.retain(|addr, _| wanted.contains_key(addr));
        let spread = FIRST_PROBE_SPREAD.min(self.plan.probe.interval);
        for (addr, member) in wanted {
            if let Some(target) = self.targets.get_mut(&addr) {
                // Same address, possibly a new shared record (rebuilt by the route table).
                target.member = member;
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            let task = actix::spawn(probe_loop(
                self.plan.clone(),
                addr,
                id,
                spread.mul_f64(fastrand::f64()),
                ctx.address(),
            ));
            self.targets.insert(
                addr,
                Target {
                    member,
                    health: HealthCounter::new(
                        self.plan.probe.healthy_threshold.get(),
                        self.plan.probe.unhealthy_threshold.get(),
                    ),
                    task,
                    id,
                },
            );
        }
    }
}

impl Handler<ProbeCompleted> for ProberActor {
    type Result = ();

    fn handle(&mut self, msg: ProbeCompleted, _: &mut Context<Self>) {
        let ProbeCompleted {
            member: addr,
            id,
            outcome,
            latency,
        } = msg;
        let Some(target) = self.targets.get_mut(&addr).filter(|t| t.id == id) else {
            return; // removed (or replaced) while the probe ran
        };
        // A probe Tether could not send (no local port) leaves the member's health as it was.
        let flipped = if outcome.counts {
            target.health.record(outcome.ok)
        } else {
            None
        };
        target.member.set_probe_report(ProbeReport {
            ok: outcome.ok,
            detail: outcome.detail.clone(),
            latency,
            at: Instant::now(),
            consecutive_successes: target.health.successes(),
            consecutive_failures: target.health.failures(),
        });
        tracing::debug!(
            pool = %self.plan.pool,
            member = %addr,
            ok = outcome.ok,
            detail = %outcome.detail,
            latency_ms = latency.as_secs_f64() * 1e3,
            "probe"
        );
        if let Some(health) = flipped {
            let consecutive = match health {
                Health::Healthy => target.health.successes(),
                _ => target.health.failures(),
            };
            self.table.do_send(MemberHealthChanged {
                pool: self.plan.pool.clone(),
                member: addr,
                healthy: health == Health::Healthy,
                consecutive,
                last_result: outcome.detail,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_member_is_healthy_after_one_success() {
        let mut h = HealthCounter::new(2, 3);
        assert_eq!(h.state(), Health::Unknown);
        assert_eq!(h.record(true), Some(Health::Healthy));
        assert_eq!(h.record(true), None);
    }

    #[test]
    fn unknown_member_is_unhealthy_after_the_failure_threshold() {
        let mut h = HealthCounter::new(2, 3);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.state(), Health::Unknown);
        assert_eq!(h.record(false), Some(Health::Unhealthy));
        // Coming back from unhealthy needs the full healthy threshold.
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Healthy));
    }

    #[test]
    fn healthy_member_flips_after_exactly_the_thresholds() {
        let mut h = HealthCounter::new(2, 3);
        h.record(true);
        // Two failures, a success: the count starts over.
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!((h.failures(), h.successes()), (0, 1));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Health::Unhealthy));
        assert_eq!(h.failures(), 3);
        assert_eq!(h.record(false), None);
        // One success, a failure: still unhealthy, and the success count starts over.
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Healthy));
        assert_eq!(h.successes(), 2);
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change() {
        let mut h = HealthCounter::new(1, 1);
        assert_eq!(h.record(false), Some(Health::Unhealthy));
        assert_eq!(h.record(true), Some(Health::Healthy));
        assert_eq!(h.record(false), Some(Health::Unhealthy));
    }

    #[test]
    fn accept_key_matches_rfc_6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn close_frame_unmasks_to_1000() {
        let f = close_frame();
        assert_eq!(&f[..2], &[0x88, 0x82]);
        let code = [f[6] ^ f[2], f[7] ^ f[3]];
        assert_eq!(u16::from_be_bytes(code), 1000);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
    }
}
