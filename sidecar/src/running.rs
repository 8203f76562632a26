//! The running sidecar: every actor, arbiter and listener one `run` started, as one value.
//!
//! # Lifecycle of [`Running`]
//!
//! ```text
//! BoundListeners --start--> Running --reload(new): Ok(report)--> Running (new config in force)
//!                              │    --reload(new): Err(refusal)--> Running (nothing changed)
//!                              └--shutdown--> RunReport (every thread joined)
//! ```
//!
//! `start` fails only before anything accepts (a socket that cannot be duplicated, an admin
//! endpoint that cannot serve). A reload either applies whole or changes nothing: everything
//! that can fail (loading, the remove-everything check, the listener diff, binding) happens
//! before the first change. `shutdown` consumes the value: nothing runs after it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter, Recipient};
use tether_actors::admission::{ConnectionLimit, ListenerInfo};
use tether_actors::listener::ListenerActor;
use tether_actors::messages::{Accepted, ConfigReplaced, DrainAll, StopAccepting};
use tether_actors::metrics::{ListenerGauges, Metrics};
use tether_actors::route_table::RouteTableActor;
use tether_actors::session::SessionRegistry;
use tether_actors::shutdown::Shutdown;
use tether_actors::tls::{self, ListenerTls};
use tether_actors::worker::{WorkerActor, WorkerSetup};
use tether_config::Config;

use crate::admin::{AdminServer, AdminState, Lifecycle};
use crate::background::{resolve_dns, Background};
use crate::reload::{keep_restart_settings, ListenerDiff, ReloadError, ReloadReport};
use crate::telemetry::Telemetry;
use crate::{listen, BoundListeners, ReloadRefusal, ReloadRequest, RunError, RunReport};

/// The sidecar between start and shutdown (see the module's lifecycle).
pub(crate) struct Running {
    /// The configuration in force (the last applied reload's).
    config: Arc<Config>,
    /// Readiness, the configuration and the bound listeners as the admin endpoint reports them.
    lifecycle: Arc<Lifecycle>,
    /// Fired at shutdown: connections finish their request, sessions drain.
    stop: Shutdown,
    /// The route table, on the System arbiter.
    route_table: Addr<RouteTableActor>,
    /// The pools' probers and resolvers.
    background: Background,
    /// Where the probers run: a thread of their own, so that probe I/O never delays the route
    /// table.
    probe_arbiter: Arbiter,
    /// One per worker thread, in order: listener `i`'s actor number `n` runs on worker `n`.
    workers: Vec<Worker>,
    /// Every listener that accepts, by name.
    listeners: BTreeMap<String, RunningListener>,
    /// Connections accepted by the listeners reloads removed, for the report.
    retired: u64,
    /// Serves until dropped.
    admin: AdminServer,
    /// The process's counters: listeners are added and removed as they start and stop.
    metrics: Arc<Metrics>,
    /// Flushed at the end.
    telemetry: Option<Arc<Telemetry>>,
}

/// One listener that accepts: an actor on every worker over its own duplicate of the socket.
struct RunningListener {
    /// One accept loop per worker, in worker order.
    actors: Vec<Addr<ListenerActor>>,
    /// The address bound (the real port when configured as `:0`).
    addr: SocketAddr,
}

/// A worker arbiter and the worker actor on it: where the listener actors feeding that worker
/// run.
struct Worker {
    /// The worker's thread.
    arbiter: Arbiter,
    /// The worker actor's mailbox for accepted connections.
    accepted: Recipient<Accepted>,
}

/// A listener bound and duplicated for every worker, not started yet.
struct Fresh {
    name: String,
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    tls: Option<Arc<ListenerTls>>,
}

impl Running {
    /// Starts everything over `listeners` (see the crate docs for the order). Sockets are
    /// duplicated first, so that a failure there leaves nothing running.
    pub(crate) async fn start(
        config: Config,
        listeners: BoundListeners,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Running, RunError> {
        let worker_count = config.workers.max(1);
        let (fresh, admin_socket) = duplicate_all(listeners, worker_count)?;
        let config = Arc::new(config);
        let lifecycle = Arc::new(Lifecycle::new(config.clone()));
        let stop = Shutdown::with_close_code(config.shutdown_close_code);
        let (dns, resolved) = resolve_dns(&config).await;
        let metrics = Arc::new(Metrics::default());
        let (route_table, routes) =
            RouteTableActor::start(config.clone(), &resolved, metrics.clone());
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
        if let Some(telemetry) = &telemetry {
            telemetry.observe(&metrics);
        }
        let admin = AdminServer::start(
            admin_socket,
            AdminState {
                backends: route_table.clone().recipient(),
                sessions: route_table.clone().recipient(),
                endings: route_table.clone().recipient(),
                drains: route_table.clone().recipient(),
                lifecycle: lifecycle.clone(),
                metrics: metrics.clone(),
                export: telemetry.as_ref().map(|t| t.stats.clone()),
            },
        )
        .map_err(RunError::Admin)?;
        let setup = WorkerSetup {
            routes,
            registry: SessionRegistry::new(route_table.clone().recipient()),
            shutdown: stop.signal(),
            tracker: stop.tracker().clone(),
            shutdown_grace: config.shutdown_grace,
            metrics: metrics.clone(),
            dispatch: telemetry.as_ref().map(|t| t.dispatch.clone()),
        };
        // New connections get reloaded certificates; the watcher stops at shutdown.
        actix::spawn(tls::watch(
            fresh.iter().filter_map(|f| f.tls.clone()).collect(),
            stop.signal(),
        ));
        let mut running = Running {
            workers: start_workers(worker_count, &setup),
            config,
            lifecycle,
            stop,
            route_table,
            background,
            probe_arbiter,
            listeners: BTreeMap::new(),
            retired: 0,
            admin,
            metrics,
            telemetry,
        };
        running.start_listeners(fresh);
        tracing::info!(
            workers = running.workers.len(),
            listeners = running.listeners.len(),
            "tether is running"
        );
        Ok(running)
    }

    /// Serves one reload request: applies or refuses it, logs the outcome, counts it in
    /// `GET /status` and answers the requester.
    pub(crate) async fn serve_reload(&mut self, request: ReloadRequest) {
        let outcome = match request.config {
            Ok(new) => self.reload(new).await,
            Err(problems) => Err(ReloadError::Invalid(problems)),
        }
        .map_err(|error| ReloadRefusal {
            error,
            origin: request.origin,
        });
        if let Err(refusal) = &outcome {
            tracing::error!("reload refused; the running configuration keeps serving:");
            for line in refusal.to_string().lines() {
                tracing::error!("  {line}");
            }
        }
        self.lifecycle.record_reload(&outcome);
        let _ = request.done.send(outcome);
    }

    /// Puts `new` in force: refuses a configuration that would remove every listener or every
    /// routing rule without `allow_empty = true` ([`Config::check_replaces`]) or change an
    /// https listener ([`ListenerDiff`]), binds added or moved listeners (a bind failure
    /// refuses the whole reload, nothing changed), then swaps routes and pools in the route
    /// table, restarts the probers and resolvers of changed pools, stops removed and moved
    /// listeners and starts the new ones. Settings that only a restart applies (`workers`,
    /// `admin`, `telemetry`, a listener's settings on the same address) are kept, with a
    /// warning.
    pub(crate) async fn reload(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let old = self.config.clone();
        new.check_replaces(&old)?;
        let mut new = new;
        let deferred = keep_restart_settings(&old, &mut new);
        for field in &deferred {
            tracing::warn!(
                field,
                "reload: this setting takes effect at the next restart"
            );
        }
        let diff = ListenerDiff::new(&old, &new)?;
        for name in diff.deferred() {
            tracing::warn!(listener = %name, "reload: listener settings change at the next restart");
        }
        // Listeners: bind what is new or moved before anything changes.
        let fresh = diff
            .to_start()
            .map(|name| self.bind(&new, name))
            .collect::<Result<Vec<_>, _>>()?;
        let new = Arc::new(new);
        let (dns, resolved) = resolve_dns(&new).await;
        let routes = self
            .route_table
            .send(ConfigReplaced {
                config: new.clone(),
                resolved: resolved.clone(),
            })
            .await
            .map_err(|_| ReloadError::RouteTableGone)?;
        self.background.start(
            &new,
            Some(&old),
            &self.route_table,
            &self.probe_arbiter,
            dns.as_ref(),
            resolved,
        );
        self.config = new;
        // Listeners removed or moved stop accepting; their open connections finish.
        for name in diff.to_stop() {
            if let Some(listener) = self.listeners.remove(name) {
                self.retired += stop_accepting(name, &listener.actors).await;
                self.metrics.listener_stopped(name);
            }
        }
        self.start_listeners(fresh);
        tracing::info!(
            pools_added = ?routes.pools_added,
            pools_removed = ?routes.pools_removed,
            sessions_drained = routes.sessions_drained,
            listeners = ?self.listeners.keys().collect::<Vec<_>>(),
            "reload applied"
        );
        self.lifecycle.set_config(self.config.clone());
        Ok(ReloadReport {
            routes,
            listeners: diff,
            deferred,
        })
    }

    /// Binds listener `name` of `config` and duplicates its socket for every worker.
    fn bind(&self, config: &Config, name: &str) -> Result<Fresh, ReloadError> {
        let bind = config.listeners[name].bind;
        let (addr, socket) = listen(bind).map_err(|source| ReloadError::Bind {
            listener: name.to_owned(),
            addr: bind,
            source,
        })?;
        let sockets =
            duplicate(socket, self.workers.len()).map_err(|source| ReloadError::Duplicate {
                listener: name.to_owned(),
                source,
            })?;
        Ok(Fresh {
            name: name.to_owned(),
            addr,
            sockets,
            tls: None,
        })
    }

    /// Starts `fresh` on every worker, then tells the admin endpoint every listener's address.
    fn start_listeners(&mut self, fresh: Vec<Fresh>) {
        // Redirects name their target's port: every listener's, the fresh ones included.
        let mut bound = self.bound();
        bound.extend(fresh.iter().map(|f| (f.name.clone(), f.addr)));
        for f in fresh {
            let listener = start_listener(&self.config, f, &bound, &self.workers, &self.metrics);
            self.listeners.insert(listener.0, listener.1);
        }
        self.lifecycle.set_listening(self.bound());
    }

    /// Every listener's bound address, by name.
    fn bound(&self) -> BTreeMap<String, SocketAddr> {
        self.listeners
            .iter()
            .map(|(name, l)| (name.clone(), l.addr))
            .collect()
    }

    /// Keeps serving for `shutdown_delay` with `/readyz` at 503, then stops accepting, drains
    /// every connection and session within `shutdown_grace`, says so on `/drained`, stops every
    /// thread and flushes telemetry (see the crate docs for the order).
    pub(crate) async fn shutdown(self) -> RunReport {
        // Readiness turns false before anything else happens, so that a load balancer polling
        // /readyz stops sending new clients while everything still serves (the delay) and then
        // while the listeners are being closed.
        self.lifecycle.set_draining();
        let delay = self.config.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutting down: /readyz answers 503; still serving until the delay is over"
            );
            tokio::time::sleep(delay).await;
        }
        let grace = self.config.shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: draining; new connections get one answer (an upgrade: 503 with Retry-After)"
        );
        let mut report = RunReport {
            accepted: self.retired,
            ..RunReport::default()
        };
        let mut background = self.background;
        background.stop_all();
        self.stop.fire();
        self.route_table.do_send(DrainAll {
            reason: self.stop.reason(),
            grace,
        });
        // The listeners stay open while the sessions drain, so that a client reconnecting in
        // that time is told when to come back (503 + Retry-After) instead of being refused; a
        // connection accepted now is served to its first answer and closed.
        let tracker = self.stop.tracker().clone();
        if tokio::time::timeout(grace, tracker.wait_idle())
            .await
            .is_err()
        {
            report.forced = tracker.live();
            tracing::warn!(
                open = report.forced,
                "grace period over; closing what is still open"
            );
        }
        tracing::info!("shutting down: no longer accepting");
        for (name, listener) in &self.listeners {
            report.accepted += stop_accepting(name, &listener.actors).await;
        }
        // What was still open is closed by stopping the workers, next: nothing the app behind
        // us serves is in use any more, which is what an app's preStop waits for.
        self.lifecycle.set_drained();
        let mut threads: Vec<Arbiter> = self.workers.into_iter().map(|w| w.arbiter).collect();
        threads.push(self.probe_arbiter);
        for thread in &threads {
            thread.stop();
        }
        // Joining blocks, so it happens off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        drop(self.admin);
        tracing::info!(accepted = report.accepted, "tether stopped");
        if let Some(telemetry) = self.telemetry {
            // Flushing blocks on the exporter: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        report
    }
}

/// Every bound listener duplicated once per worker (with its TLS), and the admin socket.
fn duplicate_all(
    listeners: BoundListeners,
    workers: usize,
) -> Result<(Vec<Fresh>, std::net::TcpListener), RunError> {
    let BoundListeners {
        sockets,
        mut tls,
        admin: (_, admin),
    } = listeners;
    let fresh = sockets
        .into_iter()
        .map(|(name, addr, socket)| {
            let sockets = duplicate(socket, workers).map_err(|source| RunError::Duplicate {
                listener: name.clone(),
                source,
            })?;
            let tls = tls.remove(&name);
            Ok(Fresh {
                name,
                addr,
                sockets,
                tls,
            })
        })
        .collect::<Result<Vec<_>, RunError>>()?;
    Ok((fresh, admin))
}

/// Starts `count` worker arbiters, each with its worker actor.
fn start_workers(count: usize, setup: &WorkerSetup) -> Vec<Worker> {
    (0..count)
        .map(|index| {
            let arbiter = Arbiter::new();
            let setup = setup.clone();
            let accepted = WorkerActor::start_in_arbiter(&arbiter.handle(), move |_| {
                WorkerActor::new(index, setup)
            })
            .recipient();
            Worker { arbiter, accepted }
        })
        .collect()
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

/// Starts the listener actors of `fresh`, one on each worker's arbiter over one of its sockets
/// (duplicates of the listener's socket, one per worker), all counting against one
/// [`ConnectionLimit`]. `bound` gives the port of a listener this one redirects to.
fn start_listener(
    config: &Config,
    fresh: Fresh,
    bound: &BTreeMap<String, SocketAddr>,
    workers: &[Worker],
    metrics: &Metrics,
) -> (String, RunningListener) {
    let Fresh {
        name,
        addr,
        sockets,
        tls,
    } = fresh;
    assert_eq!(
        sockets.len(),
        workers.len(),
        "one socket per worker for listener {name:?}"
    );
    let listener = &config.listeners[&name];
    let limit = ConnectionLimit::new(listener.max_connections, listener.max_handshakes_per_ip);
    let info = Arc::new(ListenerInfo {
        name: name.as_str().into(),
        local_addr: addr,
        scheme: if tls.is_some() { "https" } else { "http" },
        redirect_port: listener
            .redirect_to
            .as_ref()
            .and_then(|target| bound.get(target))
            .map(SocketAddr::port),
        config: listener.clone(),
        tls: tls.clone(),
    });
    metrics.listener_started(
        &name,
        ListenerGauges {
            limit: limit.clone(),
            max_connections: listener.max_connections,
            tls,
        },
    );
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
            ListenerActor::start_in_arbiter(&worker.arbiter.handle(), move |_| {
                ListenerActor::new(info, socket, accepted, index).with_limit(limit)
            })
        })
        .collect();
    (name, RunningListener { actors, addr })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_share_one_port_and_the_last_closes_it() {
        let (addr, socket) = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let all = duplicate(socket, 3).unwrap();
        assert_eq!(all.len(), 3);
        for s in &all {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
        drop(all);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "nothing listens once every handle is dropped"
        );
    }
}
