//! The pools' background work: one prober per probed pool (all on the probe arbiter) and one
//! resolver per pool with DNS members, each with a stop signal of its own so that a reload
//! restarts only the pools it changed.
//!
//! Lifecycle of one pool's prober or resolver: started by `Running::start` (or by the reload
//! that adds or changes the pool) → kept by every reload that leaves its pool's probe (for a
//! resolver: the pool and `[dns]`) as it was → stopped by the reload that removes or changes it,
//! or at shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter};
use tether_actors::member::DnsMember;
use tether_actors::messages::AttachProber;
use tether_actors::prober::{ProbePlan, ProberActor};
use tether_actors::resolver::{self, DnsResolver, ResolverActor};
use tether_actors::route_table::RouteTableActor;
use tether_actors::shutdown::Shutdown;
use tether_config::{Config, Member};

/// Every pool's DNS members, resolved once.
pub(crate) type Resolved = Vec<(Arc<str>, Vec<DnsMember>)>;

/// Resolves every DNS member once (start-up), with the resolver the pools' resolver actors
/// keep using. Without DNS members no resolver is built. A resolver that cannot be built is
/// logged: its pools then have only their IP members.
pub(crate) async fn resolve_dns(config: &Config) -> (Option<Arc<DnsResolver>>, Resolved) {
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

/// The probers and resolvers of every pool, each with a stop signal of its own so that a
/// reload can stop one pool's without touching the others.
#[derive(Default)]
pub(crate) struct Background {
    probers: BTreeMap<String, Shutdown>,
    resolvers: BTreeMap<String, Shutdown>,
}

impl Background {
    /// Starts a prober for every pool of `config` whose probe differs from `old`'s (every
    /// probed pool when `old` is `None`), and a resolver for every pool with DNS members that
    /// is new or changed; stops those of pools that are gone or changed.
    pub(crate) fn start(
        &mut self,
        config: &Config,
        old: Option<&Config>,
        route_table: &Addr<RouteTableActor>,
        probe_arbiter: &Arbiter,
        dns: Option<&Arc<DnsResolver>>,
        resolved: Resolved,
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

    /// Stops every prober and resolver (shutdown).
    pub(crate) fn stop_all(&mut self) {
        for (_, stop) in std::mem::take(&mut self.probers) {
            stop.fire();
        }
        for (_, stop) in std::mem::take(&mut self.resolvers) {
            stop.fire();
        }
    }
}
