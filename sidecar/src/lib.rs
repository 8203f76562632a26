//! Tether: a WebSocket-aware service-mesh sidecar.
//!
//! The binary (`src/main.rs`) is thin: it parses arguments, loads the configuration
//! ([`tether_config`]), binds the listeners with [`bind_listeners`] and calls [`run`] inside an
//! actix System. [`run`] takes already-bound listeners, so tests and embedders bind
//! `127.0.0.1:0`; [`Sidecar`] does all of that on a thread of its own.
//!
//! Start-up: duplicate every listener's socket once per worker → resolve DNS members once →
//! start the route table → start one prober per probed pool (all on one probe arbiter) and one
//! resolver per pool with DNS members → serve the admin endpoint → start one worker actor per
//! worker arbiter → on every worker arbiter, start one listener actor per listener over its own
//! duplicate of the socket, so each worker accepts its connections on its own thread (see
//! `tether_actors::listener`). Shutdown: stop accepting (every actor of every listener; the
//! port closes with the last) → fire the shutdown signal (HTTP connections finish their
//! request, sessions drain, probers and resolvers stop) → wait for every connection and session
//! up to `shutdown_grace` → stop the workers, closing what is left → stop the admin endpoint.
//! Readiness (`/readyz`) turns false the moment shutdown begins, before the listeners close.
//!
//! Reload ([`run_reloadable`], [`Sidecar::reload`]; the binary's [`reloader::ConfigWatcher`] on
//! SIGHUP or a changed `--config` file once it holds still): refuse a configuration that could
//! not be loaded, or that removes every listener or every routing rule without
//! `allow_empty = true` (every refusal logged and counted in `GET /status`; nothing changed) →
//! bind added or moved listeners and duplicate their sockets (a failure refuses the reload,
//! nothing changed) → `ConfigReplaced` to the route table (one new
//! snapshot; live sessions untouched unless their route is gone, then drained with 1001 after
//! `drain_grace`) → stop the probers and resolvers of removed or changed pools, start new ones →
//! stop accepting on removed listeners (all their actors; the port closes with the last) →
//! start the added ones on every worker.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use actix::Recipient;
use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use tether_actors::listener::ConnectionLimit;
use tether_actors::listener::{ListenerActor, ListenerInfo};
use tether_actors::messages::Accepted;
use tether_actors::messages::{AttachProber, ConfigReplaced, DrainAll, StopAccepting};
use tether_actors::prober::{ProbePlan, ProberActor};
use tether_actors::resolver::{self, DnsResolver, ResolverActor};
use tether_actors::route_table::RouteTableActor;
use tether_actors::session::SessionRegistry;
use tether_actors::shutdown::Shutdown;
use tether_actors::tls::{self, ListenerTls, TlsError};
use tether_actors::worker::{WorkerActor, WorkerSetup};
use tether_config::{Config, ListenerProtocol, Member};
use tokio::sync::{mpsc, oneshot};

pub mod admin;
pub mod build_info;
pub mod reloader;
pub mod telemetry;

use telemetry::Telemetry;

/// Backlog of every listening socket: connections beyond the accept rate wait here.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Why the sidecar could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener's address could not be bound.
    #[error("listener \"{listener}\": cannot bind {addr}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The admin endpoint's address could not be bound.
    #[error("admin endpoint: cannot bind {addr}: {source}")]
    AdminBind {
        /// The configured `admin.bind`.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An HTTPS listener's certificates, key or client CA could not be loaded.
    #[error("listener \"{listener}\": {source}")]
    Tls {
        /// The listener's name.
        listener: String,
        /// Which file, and why.
        source: TlsError,
    },
    /// The runtime could not be built or the sidecar thread died.
    #[error("runtime failure: {0}")]
    Runtime(String),
}

/// Listening sockets bound from a configuration, before the sidecar runs: every listener's and
/// the admin endpoint's.
#[derive(Debug)]
pub struct BoundListeners {
    sockets: Vec<(String, SocketAddr, std::net::TcpListener)>,
    /// The TLS of each HTTPS listener, loaded before anything is bound.
    tls: BTreeMap<String, Arc<ListenerTls>>,
    admin: (SocketAddr, std::net::TcpListener),
}

impl BoundListeners {
    /// The address the admin endpoint actually bound (the real port when `admin.bind` said `:0`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.0
    }

    /// The address a listener actually bound (the real port when the config said `:0`).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .find(|(name, _, _)| name == listener)
            .map(|(_, addr, _)| *addr)
    }

    /// Every listener's bound address, by name.
    pub fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.sockets
            .iter()
            .map(|(name, addr, _)| (name.clone(), *addr))
            .collect()
    }
}

/// Binds a listening socket: non-blocking, `SO_REUSEADDR`, backlog [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<(SocketAddr, std::net::TcpListener)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    let listener: std::net::TcpListener = socket.into();
    Ok((listener.local_addr()?, listener))
}

/// Binds every listener of `config` and the admin endpoint (non-blocking, `SO_REUSEADDR`,
/// backlog [`LISTEN_BACKLOG`]). Nothing is accepted until [`run`] starts.
pub fn bind_listeners(config: &Config) -> Result<BoundListeners, RunError> {
    let mut sockets = Vec::with_capacity(config.listeners.len());
    let mut tls = BTreeMap::new();
    for (name, listener) in &config.listeners {
        if listener.protocol == ListenerProtocol::Https {
            let loaded = ListenerTls::new(listener).map_err(|source| RunError::Tls {
                listener: name.clone(),
                source,
            })?;
            tls.insert(name.clone(), Arc::new(loaded));
        }
    }
    for (name, listener) in &config.listeners {
        let (addr, socket) = listen(listener.bind).map_err(|source| RunError::Bind {
            listener: name.clone(),
            addr: listener.bind,
            source,
        })?;
        sockets.push((name.clone(), addr, socket));
    }
    let admin = listen(config.admin.bind).map_err(|source| RunError::AdminBind {
        addr: config.admin.bind,
        source,
    })?;
    Ok(BoundListeners {
        sockets,
        tls,
        admin,
    })
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunReport {
    /// Connections accepted over the whole run, on every worker, by every listener (those a
    /// reload removed included); connections refused with 429 are not counted.
    pub accepted: u64,
    /// Connections and sessions still open when the grace period ran out (closed by force).
    pub forced: usize,
}

/// Resolves every DNS member once (start-up), with the resolver the pools' resolver actors
/// keep using. Without DNS members no resolver is built. A resolver that cannot be built is
/// logged: its pools then have only their IP members.
async fn resolve_dns(
    config: &Config,
) -> (
    Option<Arc<DnsResolver>>,
    Vec<(Arc<str>, Vec<resolver::DnsMember>)>,
) {
    let has_dns = config.backend_pools.values().any(|p| {
        p.members
            .iter()
            .any(|m| matches!(m.address, Member::Dns { .. }))
    });
    if !has_dns {
        return (None, Vec::new());
    }
    match DnsResolver::new(&config.dns) {
        Ok(dns) => {
            let resolved = resolver::resolve_all(config, &dns).await;
            (Some(Arc::new(dns)), resolved)
        }
        Err(error) => {
            tracing::error!(%error, "DNS members get no traffic");
            (None, Vec::new())
        }
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains within `config.shutdown_grace`.
///
/// Must be called inside an actix System (see [`Sidecar`] or `main`).
pub async fn run(
    config: Config,
    listeners: BoundListeners,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    run_with(config, listeners, None, shutdown).await
}

/// [`run`] with a telemetry pipeline: its dispatcher becomes the default on every thread of
/// this sidecar (so several sidecars in one process keep their traces apart), and it is flushed
/// at the end.
pub async fn run_with(
    config: Config,
    listeners: BoundListeners,
    telemetry: Option<Arc<Telemetry>>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    run_reloadable(config, listeners, telemetry, None, shutdown).await
}

/// A request to put a new configuration in force, and where to say how it went.
///
/// A configuration that could not be loaded is sent too (as `Err`), so that every refused
/// reload, whatever refused it, is logged and counted in one place (`GET /status`).
#[derive(Debug)]
pub struct ReloadRequest {
    /// The new configuration (loaded and validated), or every problem found loading it, one per
    /// line, each naming its file.
    pub config: Result<Config, String>,
    /// Where the configuration came from, as a source label (`file ./tether.toml`, `inline`):
    /// appended to the reasons a reload is refused for.
    pub origin: String,
    /// Answered once the reload is applied (`Ok`) or refused (`Err` with the reason; the old
    /// configuration keeps serving).
    pub done: oneshot::Sender<Result<(), String>>,
}

/// [`run_with`] that also applies the configurations arriving on `reloads` (see
/// [`ReloadRequest`]): routes, pools, probers, resolvers and listeners are swapped while
/// sessions keep running.
pub async fn run_reloadable(
    config: Config,
    listeners: BoundListeners,
    telemetry: Option<Arc<Telemetry>>,
    reloads: Option<mpsc::UnboundedReceiver<ReloadRequest>>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let _dispatch = telemetry
        .as_ref()
        .map(|t| tracing::dispatcher::set_default(&t.dispatch));
    let mut bound = listeners.addrs();
    // Every worker accepts on a duplicate of each listener's socket. Duplicated before anything
    // starts, so that a failure leaves nothing running.
    let worker_count = config.workers.max(1);
    let sockets = listeners
        .sockets
        .into_iter()
        .map(
            |(name, addr, socket)| match duplicate(socket, worker_count) {
                Ok(dups) => Ok((name, addr, dups)),
                Err(e) => Err(RunError::Runtime(format!(
                    "listener \"{name}\": cannot duplicate its socket: {e}"
                ))),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let config = Arc::new(config);
    let lifecycle = Arc::new(admin::Lifecycle::new(config.clone()));
    let stop = Shutdown::with_close_code(config.shutdown_close_code);
    let (dns, resolved) = resolve_dns(&config).await;

    let (route_table, routes) = RouteTableActor::start(config.clone(), &resolved);
    let registry = SessionRegistry::new(route_table.clone().recipient());
    // Probers get an arbiter (thread and current-thread runtime) of their own: probe I/O is
    // driven where it is handled, without a wake-up hop per event, and a thousand members'
    // probes never delay the route table's updates on the System arbiter.
    let probe_arbiter = Arbiter::new();
    let mut background = Background::default();
    background.start(
        &config,
        None,
        &route_table,
        &probe_arbiter,
        dns.as_ref(),
        resolved,
    );
    let metrics = Arc::new(tether_actors::metrics::Metrics::default());
    if let Some(telemetry) = &telemetry {
        telemetry.observe(&metrics);
    }
    let (_, admin_socket) = listeners.admin;
    let admin = admin::AdminServer::start(
        admin_socket,
        admin::AdminState {
            backends: route_table.clone().recipient(),
            sessions: route_table.clone().recipient(),
            endings: route_table.clone().recipient(),
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            export: telemetry.as_ref().map(|t| t.stats.clone()),
        },
    )
    .map_err(|e| RunError::Runtime(format!("admin endpoint: {e}")))?;

    let setup = WorkerSetup {
        routes,
        registry,
        shutdown: stop.signal(),
        tracker: stop.tracker().clone(),
        shutdown_grace: config.shutdown_grace,
        metrics: metrics.clone(),
        dispatch: telemetry.as_ref().map(|t| t.dispatch.clone()),
    };
    let workers: Vec<Arbiter> = (0..worker_count).map(|_| Arbiter::new()).collect();
    let worker_addrs: Vec<Worker> = workers
        .iter()
        .enumerate()
        .map(|(index, arbiter)| {
            let setup = setup.clone();
            let handle = arbiter.handle();
            let accepted =
                WorkerActor::start_in_arbiter(&handle, move |_| WorkerActor::new(index, setup))
                    .recipient();
            Worker {
                arbiter: handle,
                accepted,
            }
        })
        .collect();

    // New connections get reloaded certificates; the watcher stops at shutdown.
    actix::spawn(tls::watch(
        listeners.tls.values().cloned().collect(),
        stop.signal(),
    ));
    let mut listener_tls = listeners.tls;
    let mut limits = std::collections::HashMap::new();
    let mut listener_addrs: BTreeMap<String, Vec<Addr<ListenerActor>>> = sockets
        .into_iter()
        .map(|(name, local_addr, sockets)| {
            let tls = listener_tls.remove(&name);
            let (actors, limit) = start_listener(
                &config,
                &name,
                (local_addr, sockets),
                tls,
                &bound,
                &worker_addrs,
            );
            limits.insert(name.clone(), limit);
            (name, actors)
        })
        .collect();
    lifecycle.set_listening(bound.clone());
    tracing::info!(
        workers = workers.len(),
        listeners = listener_addrs.len(),
        "tether is running"
    );

    // Connections accepted by listeners that reloads removed, for the report.
    let mut retired = 0u64;
    let mut config = config;
    let mut reloads = reloads;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(request) = async { reloads.as_mut()?.recv().await } => {
                let outcome = match request.config {
                    Err(problems) => Err(problems),
                    Ok(new) => reload(ReloadContext {
                        config: &mut config,
                        route_table: &route_table,
                        background: &mut background,
                        probe_arbiter: &probe_arbiter,
                        listeners: &mut listener_addrs,
                        retired: &mut retired,
                        limits: &mut limits,
                        bound: &mut bound,
                        workers: &worker_addrs,
                    }, new)
                    .await
                    .map_err(|reason| format!("{reason} [{}]", request.origin)),
                };
                match &outcome {
                    Ok(()) => {
                        lifecycle.set_config(config.clone());
                        lifecycle.set_listening(bound.clone());
                    }
                    Err(reason) => {
                        tracing::error!("reload refused; the running configuration keeps serving:");
                        for line in reason.lines() {
                            tracing::error!("  {line}");
                        }
                    }
                }
                lifecycle.record_reload(&outcome);
                let _ = request.done.send(outcome);
            }
        }
    }
    // Readiness turns false before anything else happens, so that a load balancer polling
    // /readyz stops sending new clients while the listeners are being closed.
    lifecycle.set_draining();
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: no longer accepting");
    let mut report = RunReport {
        accepted: retired,
        ..RunReport::default()
    };
    for (name, actors) in &listener_addrs {
        report.accepted += stop_accepting(name, actors).await;
    }
    background.stop_all();
    stop.fire();
    route_table.do_send(DrainAll {
        reason: stop.reason(),
        grace: config.shutdown_grace,
    });
    let tracker = stop.tracker().clone();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait_idle())
        .await
        .is_err()
    {
        report.forced = tracker.live();
        tracing::warn!(
            open = report.forced,
            "grace period over; closing what is still open"
        );
    }
    for worker in &workers {
        worker.stop();
    }
    probe_arbiter.stop();
    // Joining blocks, so it happens off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
        let _ = probe_arbiter.join();
    })
    .await;
    drop(admin);
    tracing::info!(accepted = report.accepted, "tether stopped");
    if let Some(telemetry) = telemetry {
        // Flushing blocks on the exporter: off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    Ok(report)
}

/// A worker arbiter and the worker actor on it: where the listener actors feeding that worker
/// run.
struct Worker {
    /// The worker's arbiter (thread).
    arbiter: ArbiterHandle,
    /// The worker actor's mailbox for accepted connections.
    accepted: Recipient<Accepted>,
}

/// `n` handles on one listening socket: `n - 1` duplicates (`try_clone`) and the socket itself,
/// so that once the `n` are dropped nothing keeps the port open.
fn duplicate(
    socket: std::net::TcpListener,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut all = Vec::with_capacity(n.max(1));
    for _ in 1..n {
        all.push(socket.try_clone()?);
    }
    all.push(socket);
    Ok(all)
}

/// Starts the listener actors of `name`, one on each worker's arbiter over one of `sockets`
/// (duplicates of the listener's socket, one per worker), all counting against one
/// [`ConnectionLimit`], which is returned for the route table.
fn start_listener(
    config: &Config,
    name: &str,
    (local_addr, sockets): (SocketAddr, Vec<std::net::TcpListener>),
    tls: Option<Arc<ListenerTls>>,
    bound: &BTreeMap<String, SocketAddr>,
    workers: &[Worker],
) -> (Vec<Addr<ListenerActor>>, ConnectionLimit) {
    assert_eq!(
        sockets.len(),
        workers.len(),
        "one socket per worker for listener {name:?}"
    );
    let listener = &config.listeners[name];
    let limit = ConnectionLimit::new(listener.max_connections, listener.max_handshakes_per_ip);
    let info = Arc::new(ListenerInfo {
        name: name.into(),
        local_addr,
        scheme: if tls.is_some() { "https" } else { "http" },
        redirect_port: listener
            .redirect_to
            .as_ref()
            .and_then(|target| bound.get(target))
            .map(SocketAddr::port),
        config: listener.clone(),
        tls,
    });
    tracing::info!(
        listener = %info.name,
        addr = %info.local_addr,
        scheme = info.scheme,
        workers = workers.len(),
        "listening"
    );
    let actors = sockets
        .into_iter()
        .zip(workers)
        .enumerate()
        .map(|(index, (socket, worker))| {
            let info = info.clone();
            let limit = limit.clone();
            let accepted = worker.accepted.clone();
            ListenerActor::start_in_arbiter(&worker.arbiter, move |_| {
                ListenerActor::new(info, socket, accepted, index).with_limit(limit)
            })
        })
        .collect();
    (actors, limit)
}

/// Stops every accept loop of listener `name` (one per worker): each drops its duplicate of the
/// socket, and the port closes with the last. Answers how many connections they accepted in all.
async fn stop_accepting(name: &str, actors: &[Addr<ListenerActor>]) -> u64 {
    // Every order goes out before the first answer is awaited: the workers stop in parallel.
    let answers: Vec<_> = actors.iter().map(|a| a.send(StopAccepting)).collect();
    let mut accepted = 0;
    for answer in answers {
        accepted += answer.await.unwrap_or(0);
    }
    tracing::info!(listener = name, accepted, "stopped accepting");
    accepted
}

/// The probers and resolvers of every pool, each with a stop signal of its own so that a
/// reload can stop one pool's without touching the others.
#[derive(Default)]
struct Background {
    probers: BTreeMap<String, Shutdown>,
    resolvers: BTreeMap<String, Shutdown>,
}

impl Background {
    /// Starts a prober for every pool of `config` whose probe differs from `old`'s (every
    /// probed pool when `old` is `None`), and a resolver for every pool with DNS members that
    /// is new or changed; stops those of pools that are gone or changed.
    fn start(
        &mut self,
        config: &Config,
        old: Option<&Config>,
        route_table: &Addr<RouteTableActor>,
        probe_arbiter: &Arbiter,
        dns: Option<&Arc<DnsResolver>>,
        resolved: Vec<(Arc<str>, Vec<resolver::DnsMember>)>,
    ) {
        for (name, stop) in std::mem::take(&mut self.probers) {
            let same = old.is_some_and(|old| old.pool_probe(&name) == config.pool_probe(&name));
            if same && config.pool_probe(&name).is_some() {
                self.probers.insert(name, stop);
            } else {
                stop.fire();
            }
        }
        for name in config.backend_pools.keys() {
            let Some(probe) = config.pool_probe(name) else {
                continue;
            };
            if self.probers.contains_key(name) {
                continue;
            }
            let pool: Arc<str> = name.as_str().into();
            let plan = ProbePlan::new(pool.clone(), probe.probe, probe.settings);
            let table = route_table.clone().recipient();
            let stop = Shutdown::new();
            let signal = stop.signal();
            let prober = ProberActor::start_in_arbiter(&probe_arbiter.handle(), move |_| {
                ProberActor::new(plan, table, signal)
            });
            route_table.do_send(AttachProber {
                pool,
                prober: prober.recipient(),
            });
            self.probers.insert(name.clone(), stop);
        }
        for (name, stop) in std::mem::take(&mut self.resolvers) {
            let same = old.is_some_and(|old| {
                old.backend_pools.get(&name) == config.backend_pools.get(&name)
                    && old.dns == config.dns
            });
            if same {
                self.resolvers.insert(name, stop);
            } else {
                stop.fire();
            }
        }
        if let Some(dns) = dns {
            for (pool, members) in resolved {
                if self.resolvers.contains_key(&*pool) {
                    continue;
                }
                let stop = Shutdown::new();
                ResolverActor::new(
                    pool.clone(),
                    members,
                    dns.clone(),
                    route_table.clone().recipient(),
                    stop.signal(),
                )
                .start();
                self.resolvers.insert(pool.to_string(), stop);
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, stop) in std::mem::take(&mut self.probers) {
            stop.fire();
        }
        for (_, stop) in std::mem::take(&mut self.resolvers) {
            stop.fire();
        }
    }
}

/// What a reload may change.
struct ReloadContext<'a> {
    config: &'a mut Arc<Config>,
    route_table: &'a Addr<RouteTableActor>,
    background: &'a mut Background,
    probe_arbiter: &'a Arbiter,
    listeners: &'a mut BTreeMap<String, Vec<Addr<ListenerActor>>>,
    /// Connections accepted by the listeners reloads removed.
    retired: &'a mut u64,
    limits: &'a mut std::collections::HashMap<String, ConnectionLimit>,
    bound: &'a mut BTreeMap<String, SocketAddr>,
    workers: &'a [Worker],
}

/// Puts `new` in force: refuses a configuration that would remove every listener or every
/// routing rule without `allow_empty = true` ([`Config::check_replaces`]), binds added or moved
/// listeners first (a bind failure refuses the whole reload, nothing changed), then swaps routes
/// and pools in the route table, restarts the probers and resolvers of changed pools, and
/// closes removed listeners. Settings that only a restart applies (`workers`, `admin`,
/// `telemetry`) are kept, with a warning.
async fn reload(cx: ReloadContext<'_>, new: Config) -> Result<(), String> {
    let old = cx.config.clone();
    new.check_replaces(&old).map_err(|e| e.to_string())?;
    let mut new = new;
    for (field, differs) in [
        ("workers", old.workers != new.workers),
        ("admin", old.admin.bind != new.admin.bind),
        ("telemetry", old.telemetry != new.telemetry),
    ] {
        if differs {
            tracing::warn!(
                field,
                "reload: this setting takes effect at the next restart"
            );
        }
    }
    new.workers = old.workers;
    new.admin.bind = old.admin.bind;
    new.telemetry = old.telemetry.clone();
    // Listeners: (re)bind what is new or moved before anything changes.
    let mut fresh = Vec::new();
    for (name, listener) in &new.listeners {
        let same = old
            .listeners
            .get(name)
            .is_some_and(|o| o.bind == listener.bind && o.protocol == listener.protocol);
        if same && old.listeners[name] == *listener {
            continue;
        }
        if listener.protocol == ListenerProtocol::Https {
            return Err(format!(
                "listener \"{name}\": adding or moving an https listener takes a restart (its certificates are loaded at start-up)"
            ));
        }
        if same {
            // Only limits changed: a new actor over a new socket would race the old one for
            // the port, so the listener is restarted with its new settings on the same port.
            tracing::warn!(listener = %name, "reload: listener settings change at the next restart");
            continue;
        }
        let (addr, socket) = listen(listener.bind)
            .map_err(|e| format!("listener \"{name}\": cannot bind {}: {e}", listener.bind))?;
        let sockets = duplicate(socket, cx.workers.len())
            .map_err(|e| format!("listener \"{name}\": cannot duplicate its socket: {e}"))?;
        fresh.push((name.clone(), addr, sockets));
    }
    let new = Arc::new(new);
    let (dns, resolved) = resolve_dns(&new).await;
    let change = cx
        .route_table
        .send(ConfigReplaced {
            config: new.clone(),
            resolved: resolved.clone(),
        })
        .await
        .map_err(|_| "the route table is not running".to_owned())?;
    cx.background.start(
        &new,
        Some(&old),
        cx.route_table,
        cx.probe_arbiter,
        dns.as_ref(),
        resolved,
    );
    // Listeners removed or moved stop accepting; their open connections finish.
    let gone: Vec<String> = cx
        .listeners
        .keys()
        .filter(|name| {
            new.listeners
                .get(*name)
                .is_none_or(|l| l.bind != old.listeners[*name].bind)
        })
        .cloned()
        .collect();
    for name in gone {
        if let Some(actors) = cx.listeners.remove(&name) {
            *cx.retired += stop_accepting(&name, &actors).await;
        }
        cx.bound.remove(&name);
        cx.limits.remove(&name);
    }
    for (name, addr, sockets) in fresh {
        let (actors, limit) =
            start_listener(&new, &name, (addr, sockets), None, cx.bound, cx.workers);
        cx.listeners.insert(name.clone(), actors);
        cx.limits.insert(name.clone(), limit);
        cx.bound.insert(name, addr);
    }
    tracing::info!(
        pools_added = ?change.pools_added,
        pools_removed = ?change.pools_removed,
        sessions_drained = change.sessions_drained,
        listeners = ?cx.bound.keys().collect::<Vec<_>>(),
        "reload applied"
    );
    *cx.config = new;
    Ok(())
}

/// Builds the actix System every Tether instance runs in: the System arbiter on the calling
/// thread, over a small multi-thread tokio runtime for work that is not on the data path.
pub fn system() -> actix::SystemRunner {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tether-runtime")
            .enable_all()
            .build()
            .expect("cannot build the tokio runtime")
    })
}

/// A sidecar running on a thread of its own: what tests, examples and embedders use.
pub struct Sidecar {
    addrs: BTreeMap<String, SocketAddr>,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    reloads: mpsc::UnboundedSender<ReloadRequest>,
    done: Option<oneshot::Receiver<Result<RunReport, RunError>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sidecar {
    /// Binds `config`'s listeners and starts the sidecar on a new thread.
    pub fn start(config: Config) -> Result<Sidecar, RunError> {
        let listeners = bind_listeners(&config)?;
        Ok(Sidecar::start_with(config, listeners))
    }

    /// Binds `config`'s listeners and starts the sidecar with telemetry: `[telemetry]` plus the
    /// `OTEL_*` variables of `env` (logs go to the test writer).
    pub fn start_traced(config: Config, env: &[(String, String)]) -> Result<Sidecar, RunError> {
        let settings = telemetry::TelemetrySettings::resolve(&config.telemetry, env)
            .map_err(RunError::Runtime)?;
        let listeners = bind_listeners(&config)?;
        Ok(Sidecar::spawn(config, listeners, Some(settings)))
    }

    /// Starts the sidecar over listeners bound already.
    pub fn start_with(config: Config, listeners: BoundListeners) -> Sidecar {
        Sidecar::spawn(config, listeners, None)
    }

    fn spawn(
        config: Config,
        listeners: BoundListeners,
        settings: Option<telemetry::TelemetrySettings>,
    ) -> Sidecar {
        let addrs = listeners.addrs();
        let admin = listeners.admin_addr();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("tether-main".into())
            .spawn(move || {
                let result = system().block_on(async move {
                    let telemetry = match settings {
                        Some(s) => Some(Arc::new(
                            Telemetry::start(&s, false).map_err(RunError::Runtime)?,
                        )),
                        None => None,
                    };
                    run_reloadable(config, listeners, telemetry, Some(reload_rx), async move {
                        let _ = stop_rx.await;
                    })
                    .await
                });
                let _ = done_tx.send(result);
            })
            .expect("cannot spawn the sidecar thread");
        Sidecar {
            addrs,
            admin,
            stop: Some(stop_tx),
            reloads: reload_tx,
            done: Some(done_rx),
            thread: Some(thread),
        }
    }

    /// The bound address of a listener. Panics on an unknown name (a test bug).
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .addrs
            .get(listener)
            .unwrap_or_else(|| panic!("no listener named {listener:?}"))
    }

    /// The bound address of the admin endpoint (`GET /backends`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Puts `config` in force as a reload does (the binary reloads on SIGHUP or a changed
    /// `--config` file): routes, pools, probers and listeners are swapped, live sessions keep
    /// running. `Err` says why it was refused; the old configuration then keeps serving.
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        self.request_reload(Ok(config)).await
    }

    /// Validates `toml` as a whole configuration and reloads it; an invalid configuration is
    /// refused with every problem (one per line) and nothing changes.
    pub async fn reload_toml(&self, toml: &str) -> Result<(), String> {
        self.request_reload(tether_config::from_toml_str(toml).map_err(|e| e.to_string()))
            .await
    }

    async fn request_reload(&self, config: Result<Config, String>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.reloads
            .send(ReloadRequest {
                config,
                origin: "inline".to_owned(),
                done,
            })
            .map_err(|_| "the sidecar is not running".to_owned())?;
        answer
            .await
            .map_err(|_| "the sidecar stopped during the reload".to_owned())?
    }

    /// Where reload requests go: what a [`reloader::ConfigWatcher`] runs against, as the
    /// binary's does.
    pub fn reloads(&self) -> mpsc::UnboundedSender<ReloadRequest> {
        self.reloads.clone()
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn stop(mut self) -> Result<RunReport, RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = self.done.take().expect("stop is called once");
        let result = done
            .await
            .map_err(|_| RunError::Runtime("the sidecar thread died".into()))?;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// How long [`Sidecar::stop`] may take at most: the grace period plus a margin.
    pub fn stop_bound(config: &Config) -> Duration {
        config.shutdown_grace + Duration::from_secs(5)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // A dropped handle still shuts the sidecar down; it just does not wait.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
