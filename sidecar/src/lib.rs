//! Tether: a WebSocket-aware service-mesh sidecar.
//!
//! The binary (`src/main.rs`) is thin: it parses arguments, loads the configuration
//! ([`tether_config`]), binds the listeners with [`bind_listeners`] and calls [`run`] inside an
//! actix System. [`run`] takes already-bound listeners, so tests and embedders bind
//! `127.0.0.1:0`; [`Sidecar`] does all of that on a thread of its own.
//!
//! Start-up: resolve pool members → start the route table → start one worker actor per worker
//! arbiter → start one listener actor per listener. Shutdown: stop accepting → fire the shutdown
//! signal (HTTP connections finish their request, sessions drain) → wait for every connection and
//! session up to `shutdown_grace` → stop the workers, closing what is left.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use actix::{Actor, Arbiter};
use tether_actors::listener::{ListenerActor, ListenerInfo};
use tether_actors::messages::StopAccepting;
use tether_actors::route_table::RouteTableActor;
use tether_actors::session::SessionRegistry;
use tether_actors::shutdown::Shutdown;
use tether_actors::worker::{WorkerActor, WorkerSetup};
use tether_config::{Config, ListenerProtocol, Member};
use tokio::sync::oneshot;

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

/// Listening sockets bound from a configuration, before the sidecar runs.
#[derive(Debug)]
pub struct BoundListeners {
    sockets: Vec<(String, SocketAddr, std::net::TcpListener)>,
}

impl BoundListeners {
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

/// Binds every listener of `config` (non-blocking, `SO_REUSEADDR`, backlog
/// [`LISTEN_BACKLOG`]). Nothing is accepted until [`run`] starts.
pub fn bind_listeners(config: &Config) -> Result<BoundListeners, RunError> {
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for (name, listener) in &config.listeners {
        if listener.protocol == ListenerProtocol::Https {
            return Err(RunError::Unsupported {
                listener: name.clone(),
                reason: "protocol \"https\" is not supported by this build yet; use \"http\"",
            });
        }
        let bind_err = |source| RunError::Bind {
            listener: name.clone(),
            addr: listener.bind,
            source,
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listener.bind),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(bind_err)?;
        socket.set_reuse_address(true).map_err(bind_err)?;
        socket.bind(&listener.bind.into()).map_err(bind_err)?;
        socket.listen(LISTEN_BACKLOG).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let std_listener: std::net::TcpListener = socket.into();
        let addr = std_listener.local_addr().map_err(bind_err)?;
        sockets.push((name.clone(), addr, std_listener));
    }
    Ok(BoundListeners { sockets })
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunReport {
    /// Connections accepted over the whole run.
    pub accepted: u64,
    /// Connections and sessions still open when the grace period ran out (closed by force).
    pub forced: usize,
}

/// Resolves every pool's members to addresses. DNS names are looked up once here.
async fn resolve_members(config: &Config) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut out = BTreeMap::new();
    for (name, pool) in &config.backend_pools {
        let mut addrs = Vec::with_capacity(pool.members.len());
        for member in &pool.members {
            match member {
                Member::Addr(addr) => addrs.push(*addr),
                Member::Dns { host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(found) => addrs.extend(found),
                        Err(e) => tracing::warn!(
                            pool = %name, member = %member, error = %e,
                            "cannot resolve member; it gets no traffic"
                        ),
                    }
                }
            }
        }
        out.insert(name.clone(), addrs);
    }
    out
}

/// Runs the sidecar until `shutdown` resolves, then drains within `config.shutdown_grace`.
///
/// Must be called inside an actix System (see [`Sidecar`] or `main`).
pub async fn run(
    config: Config,
    listeners: BoundListeners,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let config = Arc::new(config);
    let members = resolve_members(&config).await;

    let (route_table, routes) = RouteTableActor::new(config.clone(), members);
    let route_table = route_table.start();
    let registry = SessionRegistry {
        opened: route_table.clone().recipient(),
        ended: route_table.clone().recipient(),
    };

    let stop = Shutdown::new();
    let metrics = Arc::new(tether_actors::metrics::Metrics::default());
    let setup = WorkerSetup {
        routes,
        registry,
        shutdown: stop.signal(),
        tracker: stop.tracker().clone(),
        shutdown_grace: config.shutdown_grace,
        metrics: metrics.clone(),
        dispatch: None,
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
    tracing::info!(
        workers = workers.len(),
        listeners = listener_addrs.len(),
        "tether is running"
    );

    shutdown.await;
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
    // Joining blocks, so it happens off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await;
    tracing::info!(accepted = report.accepted, "tether stopped");
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

    /// Starts the sidecar over listeners bound already.
    pub fn start_with(config: Config, listeners: BoundListeners) -> Sidecar {
        let addrs = listeners.addrs();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("tether-main".into())
            .spawn(move || {
                let result = system().block_on(run(config, listeners, async move {
                    let _ = stop_rx.await;
                }));
                let _ = done_tx.send(result);
            })
            .expect("cannot spawn the sidecar thread");
        Sidecar {
            addrs,
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
