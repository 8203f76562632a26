//! Tether: a WebSocket-aware service-mesh sidecar.
//!
//! The binary (`src/main.rs`) is thin: it parses arguments, loads the configuration
//! ([`tether_config`]), binds the listeners with [`bind_listeners`] and calls [`run`] inside an
//! actix System. [`run`] takes already-bound listeners, so tests and embedders bind
//! `127.0.0.1:0`; [`Sidecar`] does all of that on a thread of its own.
//!
//! [`run_reloadable`] (what [`run`] and [`run_with`] come down to) is a short loop over one
//! value, `Running` (`running.rs`), which owns every actor, arbiter and listener of the run:
//!
//! ```text
//! BoundListeners --start--> Running --reload(new)--> Ok(ReloadReport): new config in force
//!                              │                 --> Err(ReloadError): nothing changed
//!                              └--shutdown--> RunReport (every thread joined)
//! ```
//!
//! Start-up: duplicate every listener's socket once per worker → resolve DNS members once →
//! start the route table → start one prober per probed pool (all on one probe arbiter) and one
//! resolver per pool with DNS members → serve the admin endpoint → start one worker actor per
//! worker arbiter → on every worker arbiter, start one listener actor per listener over its own
//! duplicate of the socket, so each worker accepts its connections on its own thread (see
//! `tether_actors::listener`). Shutdown: `/readyz` turns 503 → keep serving everything for
//! `shutdown_delay` (load balancers stop sending new clients meanwhile) → fire the shutdown
//! signal (HTTP connections finish their request, sessions drain, probers and resolvers stop; a
//! connection accepted from now on gets one answer — an upgrade `503` with `Retry-After` — and
//! closes) → wait for every connection and session up to `shutdown_grace` → stop accepting
//! (every actor of every listener; the port closes with the last) → `/drained` turns 200 → stop
//! the workers, closing what is left → stop the admin endpoint.
//!
//! Reload ([`run_reloadable`], [`Sidecar::reload`]; the binary's [`reloader::ConfigWatcher`] on
//! SIGHUP or a changed `--config` file once it holds still): refuse a configuration that could
//! not be loaded, that removes every listener or every routing rule without
//! `allow_empty = true`, or that adds, moves or changes an https listener ([`ListenerDiff`]) →
//! bind added or moved listeners and duplicate their sockets (a failure refuses the reload) →
//! `ConfigReplaced` to the route table (one new snapshot; live sessions untouched unless their
//! route is gone, then drained with 1001 after `drain_grace`) → stop the probers and resolvers
//! of removed or changed pools, start new ones → stop accepting on removed and moved listeners
//! (all their actors; the port closes with the last) → start the added and moved ones on every
//! worker. Every refusal is a [`ReloadError`], logged and counted in `GET /status` as its
//! [`ReloadRefusal`] text, and changes nothing: whatever can fail happens before the first
//! change.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tether_actors::tls::{ListenerTls, TlsError};
use tether_config::{Config, ConfigErrors, ListenerProtocol};
use tokio::sync::{mpsc, oneshot};

pub mod admin;
mod background;
pub mod build_info;
pub mod process;
mod reload;
pub mod reloader;
mod running;
pub mod telemetry;

pub use reload::{ListenerChange, ListenerDiff, ReloadError, ReloadRefusal, ReloadReport};
use running::Running;
use telemetry::{Telemetry, TelemetryError};

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
    /// A listener's socket could not be duplicated for every worker.
    #[error("listener \"{listener}\": cannot duplicate its socket: {source}")]
    Duplicate {
        /// The listener's name.
        listener: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The admin endpoint could not serve its bound socket.
    #[error("admin endpoint: {0}")]
    Admin(std::io::Error),
    /// The telemetry pipeline could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// The sidecar's thread died before it answered.
    #[error("runtime failure: the sidecar thread died")]
    ThreadDied,
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
    /// The new configuration (loaded and validated), or every problem found loading it, each
    /// naming its file.
    pub config: Result<Config, ConfigErrors>,
    /// Where the configuration came from, as a source label (`file ./tether.toml`, `inline`):
    /// appended to the reason a reload is refused for (see [`ReloadRefusal`]).
    pub origin: String,
    /// Answered once the reload is applied (`Ok` with what it changed) or refused (`Err` with
    /// the reason; the old configuration keeps serving).
    pub done: oneshot::Sender<Result<ReloadReport, ReloadRefusal>>,
}

/// [`run_with`] that also applies the configurations arriving on `reloads` (see
/// [`ReloadRequest`]): routes, pools, probers, resolvers and listeners are swapped while
/// sessions keep running.
pub async fn run_reloadable(
    config: Config,
    listeners: BoundListeners,
    telemetry: Option<Arc<Telemetry>>,
    mut reloads: Option<mpsc::UnboundedReceiver<ReloadRequest>>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let _dispatch = telemetry
        .as_ref()
        .map(|t| tracing::dispatcher::set_default(&t.dispatch));
    let mut running = Running::start(config, listeners, telemetry).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(request) = async { reloads.as_mut()?.recv().await } => {
                running.serve_reload(request).await;
            }
        }
    }
    Ok(running.shutdown().await)
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
            .map_err(RunError::Telemetry)?;
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
                        Some(s) => Some(Arc::new(Telemetry::start(&s, false)?)),
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
    /// running. `Ok` says what changed; `Err` says why it was refused, as the log and
    /// `GET /status` do ([`ReloadRefusal`]'s text); the old configuration then keeps serving.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, String> {
        self.request_reload(Ok(config)).await
    }

    /// Validates `toml` as a whole configuration and reloads it; an invalid configuration is
    /// refused with every problem (one per line) and nothing changes.
    pub async fn reload_toml(&self, toml: &str) -> Result<ReloadReport, String> {
        self.request_reload(tether_config::from_toml_str(toml))
            .await
    }

    async fn request_reload(
        &self,
        config: Result<Config, ConfigErrors>,
    ) -> Result<ReloadReport, String> {
        let (done, answer) = oneshot::channel();
        self.reloads
            .send(ReloadRequest {
                config,
                origin: "inline".to_owned(),
                done,
            })
            .map_err(|_| "the sidecar is not running".to_owned())?;
        let outcome = answer
            .await
            .map_err(|_| "the sidecar stopped during the reload".to_owned())?;
        outcome.map_err(|refusal| refusal.to_string())
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
        let result = done.await.map_err(|_| RunError::ThreadDied)?;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// How long [`Sidecar::stop`] may take at most: the delay and the grace period plus a
    /// margin.
    pub fn stop_bound(config: &Config) -> Duration {
        config.shutdown_delay + config.shutdown_grace + Duration::from_secs(5)
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
