//! Tether: a WebSocket-aware service-mesh sidecar.
//!
//! The binary (`src/main.rs`) is thin: it parses arguments, loads the configuration
//! ([`tether_config`]), binds the listeners with [`bind_listeners`] and calls [`run`] inside an
//! actix System. [`run`] takes already-bound listeners, so tests and embedders bind
//! `127.0.0.1:0`; [`Sidecar`] does all of that on a thread of its own.
//!
//! Start-up: resolve DNS members once → start the route table → start one prober per probed
//! pool (all on one probe arbiter) and one resolver per pool with DNS members → serve the admin endpoint → start one worker
//! actor per worker arbiter → start one listener actor per listener. Shutdown: stop accepting →
//! fire the shutdown signal (HTTP connections finish their request, sessions drain, probers and
//! resolvers stop) → wait for every connection and session up to `shutdown_grace` → stop the
//! workers, closing what is left → stop the admin endpoint.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use actix::{Actor, Arbiter};
use tether_actors::listener::{ListenerActor, ListenerInfo};
use tether_actors::messages::{AttachProber, StopAccepting};
use tether_actors::prober::{ProbePlan, ProberActor};
use tether_actors::resolver::{self, DnsResolver, ResolverActor};
use tether_actors::route_table::RouteTableActor;
use tether_actors::session::SessionRegistry;
use tether_actors::shutdown::Shutdown;
use tether_actors::worker::{WorkerActor, WorkerSetup};
use tether_config::{Config, ListenerProtocol, Member};
use tokio::sync::oneshot;

pub mod admin;
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
    /// A listener asks for something this build does not do yet.
    #[error("listener \"{listener}\": {reason}")]
    Unsupported {
        /// The listener's name.
        listener: String,
        /// What is missing.
        reason: &'static str,
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
    for (name, listener) in &config.listeners {
        if listener.protocol == ListenerProtocol::Https {
            return Err(RunError::Unsupported {
                listener: name.clone(),
                reason: "protocol \"https\" is not supported by this build yet; use \"http\"",
            });
        }
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
    Ok(BoundListeners { sockets, admin })
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunReport {
    /// Connections accepted over the whole run.
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
    let _dispatch = telemetry
        .as_ref()
        .map(|t| tracing::dispatcher::set_default(&t.dispatch));
    let config = Arc::new(config);
    let lifecycle = Arc::new(admin::Lifecycle::new(config.clone()));
    let stop = Shutdown::with_close_code(config.shutdown_close_code);
    let (dns, resolved) = resolve_dns(&config).await;

    let (route_table, routes) = RouteTableActor::start(config.clone(), &resolved);
    let registry = SessionRegistry {
        opened: route_table.clone().recipient(),
        ended: route_table.clone().recipient(),
    };
    // Probers get an arbiter (thread and current-thread runtime) of their own: probe I/O is
    // driven where it is handled, without a wake-up hop per event, and a thousand members'
    // probes never delay the route table's updates on the System arbiter.
    let probe_arbiter = Arbiter::new();
    for name in config.backend_pools.keys() {
        let Some(probe) = config.pool_probe(name) else {
            continue;
        };
        let pool: Arc<str> = name.as_str().into();
        let plan = ProbePlan::new(pool.clone(), probe.probe, probe.settings);
        let table = route_table.clone().recipient();
        let signal = stop.signal();
        let prober = ProberActor::start_in_arbiter(&probe_arbiter.handle(), move |_| {
            ProberActor::new(plan, table, signal)
        });
        route_table.do_send(AttachProber {
            pool,
            prober: prober.recipient(),
        });
    }
    if let Some(dns) = &dns {
        for (pool, members) in resolved {
            ResolverActor::new(
                pool,
                members,
                dns.clone(),
                route_table.clone().recipient(),
                stop.signal(),
            )
            .start();
        }
    }
    let metrics = Arc::new(tether_actors::metrics::Metrics::default());
    let bound = listeners.addrs();
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
    let workers: Vec<Arbiter> = (0..config.workers.max(1)).map(|_| Arbiter::new()).collect();
    let worker_addrs: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(index, arbiter)| {
            let setup = setup.clone();
            WorkerActor::start_in_arbiter(&arbiter.handle(), move |_| {
                WorkerActor::new(index, setup)
            })
            .recipient()
        })
        .collect();

    let listener_addrs: Vec<_> = listeners
        .sockets
        .into_iter()
        .map(|(name, local_addr, socket)| {
            let listener_config = config.listeners[&name].clone();
            let info = Arc::new(ListenerInfo {
                name: name.as_str().into(),
                local_addr,
                scheme: "http",
                config: listener_config,
            });
            ListenerActor::new(info, socket, worker_addrs.clone()).start()
        })
        .collect();
    lifecycle.set_listening(bound);
    tracing::info!(
        workers = workers.len(),
        listeners = listener_addrs.len(),
        "tether is running"
    );

    shutdown.await;
    // Readiness turns false before anything else happens, so that a load balancer polling
    // /readyz stops sending new clients while the listeners are being closed.
    lifecycle.set_draining();
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: no longer accepting");
    let mut report = RunReport::default();
    for listener in &listener_addrs {
        report.accepted += listener.send(StopAccepting).await.unwrap_or(0);
    }
    stop.fire();
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
                    run_with(config, listeners, telemetry, async move {
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
