//! The route table: which rule serves a request, and which backend members it may use.
//!
//! [`RouteTableActor`] owns the configuration's routes, each pool's membership (which addresses
//! exist, their probe health, their passive ejections) and the registry of live WebSocket
//! sessions. It *publishes* an immutable [`RouteSnapshot`] through an [`ArcSwap`]: the request
//! path loads the current snapshot (lock-free, no mailbox) and matches against it; when
//! membership or configuration changes the actor builds a new snapshot and swaps it in, and
//! requests already holding the old one finish with it.
//!
//! Membership changes arrive as messages, each only when something changed:
//!
//! * [`MemberHealthChanged`] from a pool's prober — a member crossed a probe threshold. When it
//!   turns unhealthy, sessions on it are drained with `DrainSession` if their rule says
//!   `on_backend_unhealthy = "drain"`.
//! * [`MemberFailing`] from the data path — `passive.failures` consecutive failures: the member
//!   is ejected (see the lifecycle note in `membership.rs`).
//! * [`MembersResolved`] from a pool's resolver — a DNS member's address set moved.
//!
//! The parts, each in its own file:
//!
//! * `routes.rs` — the snapshot and matching (pure; what the request path reads);
//! * `membership.rs` — pools, members, probe health as last reported, passive ejection;
//! * `sessions.rs` — the live-session registry, recent endings, drain selection;
//! * `status.rs` — the `GET /backends` answer (its types are in [`crate::messages`]).
//!
//! This file is the actor: it applies each message to those parts and republishes.

mod membership;
mod routes;
mod sessions;
mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context, Handler, MessageResult, Recipient};
use arc_swap::ArcSwap;
use tether_config::{Config, OnBackendUnhealthy};

pub use crate::balance::Pool;
use crate::drain_schedule::DrainPlan;
use crate::member::DnsMember;
use crate::member::Health;
/// `GET /backends`' answer, defined with its message ([`BackendsReport`]).
pub use crate::messages::BackendsStatus;
use crate::messages::{
    AttachProber, BackendsReport, ConfigChange, ConfigReplaced, DrainAll, DrainMemberSessions,
    DrainReason, DrainSession, LiveSessions, MemberFailing, MemberHealthChanged, MembersResolved,
    RecentEndings, SessionsChanged, SessionsReport,
};
use crate::metrics::Metrics;
use crate::token_bucket::{Rate, SharedTokenBucket};
use membership::{pool_entries, PoolState};
pub use routes::{Matched, Route, RouteSnapshot, SharedRoutes};
use sessions::Sessions;
pub use sessions::{RECENT_ENDINGS, SESSION_STATS_TIMEOUT};

/// Owns routes, pool membership and the live-session registry; publishes [`RouteSnapshot`]s.
///
/// Runs on the System arbiter. Nothing on the request path waits for it.
pub struct RouteTableActor {
    config: Arc<Config>,
    pools: BTreeMap<String, PoolState>,
    shared: SharedRoutes,
    sessions: Sessions,
    /// Where members report crossed passive thresholds (this actor, once started).
    reporter: Option<Recipient<MemberFailing>>,
    /// How long building the last snapshot took.
    last_build: Duration,
    /// Live sessions per rule (see [`Route::sessions`]).
    route_sessions: BTreeMap<String, Arc<AtomicUsize>>,
    /// Where each rule's counters live (see [`Route::metrics`]).
    metrics: Arc<Metrics>,
    /// Each rule's `max_new_sessions_per_second` bucket (see [`Route::new_sessions`]).
    route_rates: BTreeMap<String, Arc<SharedTokenBucket>>,
}

impl RouteTableActor {
    /// Creates the actor for `config` with the start-up resolution of its DNS members, and the
    /// shared handle the workers read from (already holding the first snapshot). Members report
    /// passive failures to `reporter`; `None` turns passive health off (tests of pure routing).
    pub fn new(
        config: Arc<Config>,
        resolved: &[(Arc<str>, Vec<DnsMember>)],
        reporter: Option<Recipient<MemberFailing>>,
        metrics: Arc<Metrics>,
    ) -> (RouteTableActor, SharedRoutes) {
        let mut pools = BTreeMap::new();
        for (name, pool) in &config.backend_pools {
            let probe = config.pool_probe(name).map(|p| p.probe.name.clone());
            let mut state = PoolState::new(name, pool, probe, pool_entries(name, pool, resolved));
            state.sync_members(&reporter);
            pools.insert(name.clone(), state);
        }
        let shared: SharedRoutes = Arc::new(ArcSwap::from_pointee(RouteSnapshot::default()));
        let mut actor = RouteTableActor {
            config,
            pools,
            shared: shared.clone(),
            sessions: Sessions::default(),
            reporter,
            last_build: Duration::ZERO,
            route_sessions: BTreeMap::new(),
            metrics,
            route_rates: BTreeMap::new(),
        };
        actor.publish();
        (actor, shared)
    }

    /// Starts the actor on the current arbiter, its members reporting passive failures to it;
    /// each rule's counters live in `metrics`.
    pub fn start(
        config: Arc<Config>,
        resolved: &[(Arc<str>, Vec<DnsMember>)],
        metrics: Arc<Metrics>,
    ) -> (Addr<RouteTableActor>, SharedRoutes) {
        let mut routes = None;
        let addr = RouteTableActor::create(|ctx| {
            let (actor, shared) =
                RouteTableActor::new(config, resolved, Some(ctx.address().recipient()), metrics);
            routes = Some(shared);
            actor
        });
        (addr, routes.expect("create runs its closure at once"))
    }

    /// Builds and publishes a snapshot from the current configuration and membership.
    fn publish(&mut self) {
        let started = Instant::now();
        let generation = self.shared.load().generation + 1;
        let pools: BTreeMap<String, Arc<Pool>> = self
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), Arc::new(pool.snapshot())))
            .collect();
        for name in self.config.routing_rules.keys() {
            self.route_sessions.entry(name.clone()).or_default();
        }
        self.metrics
            .keep_routes(self.config.routing_rules.keys().map(String::as_str));
        let rules = &self.config.routing_rules;
        self.route_rates.retain(|name, bucket| {
            rules
                .get(name)
                .and_then(|r| r.websocket.max_new_sessions_per_second)
                == Some(limit_of(bucket))
        });
        for (name, rule) in rules {
            if let Some(limit) = rule.websocket.max_new_sessions_per_second {
                self.route_rates.entry(name.clone()).or_insert_with(|| {
                    Arc::new(SharedTokenBucket::new(Rate {
                        per_second: limit.per_second,
                        burst: limit.burst,
                    }))
                });
            }
        }
        let snapshot = RouteSnapshot::build(
            &self.config,
            &pools,
            &self.route_sessions,
            &self.metrics,
            &self.route_rates,
            generation,
        );
        self.shared.store(Arc::new(snapshot));
        self.last_build = started.elapsed();
        tracing::debug!(
            generation,
            build_us = self.last_build.as_micros() as u64,
            "route snapshot published"
        );
    }

    /// Asks every session on `member` of `pool` whose rule says `on_backend_unhealthy =
    /// "drain"` to end.
    fn drain_sessions_on(&mut self, pool: &str, member: SocketAddr) -> usize {
        let config = &self.config;
        self.sessions.drain_where(|live| {
            let rule = config.routing_rules.get(&*live.route)?;
            let ws = &rule.websocket;
            (live.member == member
                && rule.backend_pool == pool
                && ws.on_backend_unhealthy == OnBackendUnhealthy::Drain)
                .then(|| {
                    DrainPlan::after_grace(
                        DrainReason::BackendUnhealthy,
                        ws.drain_grace,
                        ws.drain_spread,
                    )
                })
        })
    }

    /// Ends an ejection (if `epoch` is still the current one).
    fn readmit(&mut self, pool: &str, addr: SocketAddr, epoch: u64) {
        let Some(member) = self
            .pools
            .get_mut(pool)
            .and_then(|state| state.members.get_mut(&addr))
        else {
            return;
        };
        if !member.ejection.readmit(epoch, Instant::now()) {
            return;
        }
        member.shared.reset_passive();
        let back = member.in_rotation();
        tracing::info!(
            pool,
            member = %addr,
            after = ?member.ejection.length,
            in_rotation = back,
            "ejection over"
        );
        if back {
            self.publish();
        }
    }
}

impl Actor for RouteTableActor {
    type Context = Context<Self>;
}

impl Handler<SessionsChanged> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: SessionsChanged, _: &mut Context<Self>) {
        for opened in msg.opened {
            self.sessions.opened(opened);
        }
        for ended in msg.ended {
            self.sessions.ended(ended);
        }
    }
}

/// The configured limit a bucket was built for.
fn limit_of(bucket: &SharedTokenBucket) -> tether_config::RateLimit {
    let rate = bucket.rate();
    tether_config::RateLimit {
        per_second: rate.per_second,
        burst: rate.burst,
    }
}

impl Handler<DrainAll> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: DrainAll, _: &mut Context<Self>) {
        let late = DrainSession {
            reason: msg.reason,
            close_in: Duration::ZERO,
            answer_within: msg.grace,
        };
        let config = &self.config;
        self.sessions.drain_all(late, |live| {
            let spread = config
                .routing_rules
                .get(&*live.route)
                .map_or(Duration::ZERO, |r| r.websocket.drain_spread);
            DrainPlan::shutdown(msg.reason, msg.grace, spread)
        });
        tracing::info!(sessions = self.sessions.len(), reason = ?msg.reason, "draining every session");
    }
}

impl Handler<RecentEndings> for RouteTableActor {
    type Result = MessageResult<RecentEndings>;

    fn handle(&mut self, _: RecentEndings, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sessions.recent_endings(Instant::now()))
    }
}

impl Handler<LiveSessions> for RouteTableActor {
    type Result = MessageResult<LiveSessions>;

    fn handle(&mut self, _: LiveSessions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sessions.len())
    }
}

impl Handler<DrainMemberSessions> for RouteTableActor {
    type Result = Option<usize>;

    fn handle(&mut self, msg: DrainMemberSessions, _: &mut Context<Self>) -> Option<usize> {
        let known = self
            .pools
            .get(&msg.pool)
            .is_some_and(|p| p.members.contains_key(&msg.member));
        if !known {
            return None;
        }
        let config = &self.config;
        let plan = DrainPlan::over(DrainReason::Rebalance, msg.over);
        let drained = self.sessions.drain_fraction(msg.fraction, plan, |live| {
            live.member == msg.member
                && config
                    .routing_rules
                    .get(&*live.route)
                    .is_some_and(|r| r.backend_pool == msg.pool)
        });
        tracing::info!(pool = %msg.pool, member = %msg.member, fraction = msg.fraction, over = ?msg.over, sessions = drained, "draining a fraction of a member's sessions");
        Some(drained)
    }
}

impl Handler<SessionsReport> for RouteTableActor {
    type Result = actix::ResponseFuture<Vec<crate::messages::LiveSessionInfo>>;

    fn handle(&mut self, msg: SessionsReport, _: &mut Context<Self>) -> Self::Result {
        self.sessions.report(msg.stats)
    }
}

impl Handler<BackendsReport> for RouteTableActor {
    type Result = MessageResult<BackendsReport>;

    fn handle(&mut self, _: BackendsReport, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        MessageResult(BackendsStatus {
            generation: self.shared.load().generation,
            snapshot_build_us: self.last_build.as_micros() as u64,
            live_sessions: self.sessions.len(),
            pools: self
                .pools
                .values()
                .map(|pool| status::pool_status(pool, &self.config, now))
                .collect(),
        })
    }
}

impl Handler<MemberHealthChanged> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: MemberHealthChanged, _: &mut Context<Self>) {
        let Some(member) = self
            .pools
            .get_mut(&*msg.pool)
            .and_then(|pool| pool.members.get_mut(&msg.member))
        else {
            return; // removed (DNS) while the probe ran
        };
        let before = member.health;
        let was_in = member.in_rotation();
        member.flip(
            msg.healthy,
            msg.consecutive,
            msg.last_result.clone(),
            Instant::now(),
        );
        let now_in = member.in_rotation();
        if msg.healthy {
            tracing::info!(
                pool = %msg.pool,
                member = %msg.member,
                successes = msg.consecutive,
                last_probe = %msg.last_result,
                in_rotation = now_in,
                "backend member is healthy"
            );
        } else {
            tracing::warn!(
                pool = %msg.pool,
                member = %msg.member,
                failures = msg.consecutive,
                last_probe = %msg.last_result,
                "backend member is unhealthy; no new requests or sessions go to it"
            );
        }
        if was_in != now_in {
            self.publish();
        }
        if !msg.healthy && before == Health::Healthy {
            let drained = self.drain_sessions_on(&msg.pool, msg.member);
            if drained > 0 {
                tracing::info!(pool = %msg.pool, member = %msg.member, sessions = drained, "draining sessions on the unhealthy member");
            }
        }
    }
}

impl Handler<MemberFailing> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: MemberFailing, ctx: &mut Context<Self>) {
        let Some(pool) = self.pools.get_mut(&*msg.pool) else {
            return;
        };
        let Some(member) = pool.members.get_mut(&msg.member) else {
            return;
        };
        let ejected =
            member
                .ejection
                .eject(&pool.config.passive, Instant::now(), msg.last_error.clone());
        let Some((length, epoch)) = ejected else {
            return;
        };
        tracing::warn!(
            pool = %msg.pool,
            member = %msg.member,
            failures = msg.failures,
            last_error = %msg.last_error,
            ejected_for = ?length,
            "backend member ejected by passive health"
        );
        let pool_name = msg.pool.clone();
        let addr = msg.member;
        ctx.run_later(length, move |act, _| act.readmit(&pool_name, addr, epoch));
        self.publish();
    }
}

impl Handler<MembersResolved> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: MembersResolved, _: &mut Context<Self>) {
        let Some(pool) = self.pools.get_mut(&*msg.pool) else {
            return;
        };
        let Some(slot) = pool.entries.get_mut(msg.entry) else {
            return;
        };
        *slot = msg.addrs;
        if pool.sync_members(&self.reporter) {
            pool.tell_prober();
            self.publish();
        }
    }
}

impl Handler<AttachProber> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: AttachProber, _: &mut Context<Self>) {
        if let Some(pool) = self.pools.get_mut(&*msg.pool) {
            pool.prober = Some(msg.prober);
            pool.tell_prober();
        }
    }
}

impl Handler<ConfigReplaced> for RouteTableActor {
    type Result = MessageResult<ConfigReplaced>;

    fn handle(&mut self, msg: ConfigReplaced, _: &mut Context<Self>) -> Self::Result {
        let old = std::mem::replace(&mut self.config, msg.config);
        let config = self.config.clone();
        let mut change = ConfigChange::default();
        let mut pools = BTreeMap::new();
        for (name, pool) in &config.backend_pools {
            let probe = config.pool_probe(name).map(|p| p.probe.name.clone());
            let entries = pool_entries(name, pool, &msg.resolved);
            let (state, changed) = match self.pools.remove(name) {
                Some(mut state) => {
                    // Its probe health carries over; the sender starts a changed probe's
                    // prober and attaches it.
                    let new_prober = old.pool_probe(name) != config.pool_probe(name);
                    let changed =
                        state.reconfigure(pool, probe, new_prober, entries, &self.reporter);
                    (state, changed)
                }
                None => {
                    change.pools_added.push(name.clone());
                    let mut state = PoolState::new(name, pool, probe, entries);
                    let changed = state.sync_members(&self.reporter);
                    (state, changed)
                }
            };
            if changed {
                state.tell_prober();
            }
            pools.insert(name.clone(), state);
        }
        change.pools_removed = self.pools.keys().cloned().collect();
        self.pools = pools;
        // Sessions run on, on their backend, unless their rule is gone.
        change.sessions_drained = self.sessions.drain_where(|live| {
            if config.routing_rules.contains_key(&*live.route) {
                return None;
            }
            let (grace, spread) = old
                .routing_rules
                .get(&*live.route)
                .map_or((config.shutdown_grace, Duration::ZERO), |r| {
                    (r.websocket.drain_grace, r.websocket.drain_spread)
                });
            Some(DrainPlan::after_grace(
                DrainReason::RouteRemoved,
                grace,
                spread,
            ))
        });
        self.publish();
        tracing::info!(
            generation = self.shared.load().generation,
            pools_added = ?change.pools_added,
            pools_removed = ?change.pools_removed,
            sessions_drained = change.sessions_drained,
            "configuration replaced"
        );
        MessageResult(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        tether_config::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO_PROBED: &str = r#"
        [listeners.public]
        bind = "127.0.0.1:0"
        [backend_pools.p]
        members = ["127.0.0.1:1", "127.0.0.1:2 weight=2"]
        load_balancing = "round_robin"
        passive = { failures = 2, ejection = "40ms", max_ejection = "100ms" }
        [backend_settings.s]
        probe = "h"
        [probes.h]
        interval = "1h"
        timeout = "1s"
        [routing_rules.r]
        listener = "public"
        backend_pool = "p"
        backend_settings = "s"
        "#;

    fn in_rotation(routes: &SharedRoutes) -> Vec<u16> {
        let snap = routes.load();
        let route = snap.lookup("public", None, "/").expect("route");
        route.pool.members().iter().map(|m| m.addr.port()).collect()
    }

    fn flip(port: u16, healthy: bool) -> MemberHealthChanged {
        MemberHealthChanged {
            pool: "p".into(),
            member: SocketAddr::from(([127, 0, 0, 1], port)),
            healthy,
            consecutive: if healthy { 1 } else { 3 },
            last_result: if healthy {
                "status 200"
            } else {
                "status 500 (expected 200-399)"
            }
            .into(),
        }
    }

    /// Waits (bounded) until `f` holds for the published routes.
    async fn until(routes: &SharedRoutes, what: &str, f: impl Fn(&SharedRoutes) -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !f(routes) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 5s"));
    }

    #[actix::test]
    async fn probe_flips_move_members_in_and_out_of_rotation() {
        let (table, routes) =
            RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[], Default::default());
        // Probed members start unknown: nothing in rotation.
        assert!(in_rotation(&routes).is_empty());
        table.send(flip(2, true)).await.unwrap();
        assert_eq!(in_rotation(&routes), [2]);
        table.send(flip(1, true)).await.unwrap();
        assert_eq!(in_rotation(&routes), [1, 2]);
        table.send(flip(1, false)).await.unwrap();
        assert_eq!(in_rotation(&routes), [2]);
        let status = table.send(BackendsReport).await.unwrap();
        let pool = &status.pools[0];
        assert_eq!((pool.name.as_str(), pool.in_rotation), ("p", 1));
        assert_eq!(pool.members[0].state, "unhealthy");
        let change = pool.members[0].last_change.as_ref().unwrap();
        assert_eq!((change.to, change.after), ("unhealthy", 3));
        assert_eq!(change.reason, "status 500 (expected 200-399)");
        assert_eq!(
            (pool.members[1].state, pool.members[1].weight),
            ("healthy", 2)
        );
    }

    #[actix::test]
    async fn a_reload_that_rebuilds_a_member_keeps_its_probe_health() {
        let (table, routes) =
            RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[], Default::default());
        table.send(flip(1, true)).await.unwrap();
        table.send(flip(2, true)).await.unwrap();
        assert_eq!(in_rotation(&routes), [1, 2]);
        // Member 2's weight changes: a fresh record, and its prober (unchanged, so it reports
        // no flip) goes on from "healthy".
        let reweighted = TWO_PROBED.replace("127.0.0.1:2 weight=2", "127.0.0.1:2 weight=5");
        table
            .send(ConfigReplaced {
                config: Arc::new(config(&reweighted)),
                resolved: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(in_rotation(&routes), [1, 2]);
        let status = table.send(BackendsReport).await.unwrap();
        let member = &status.pools[0].members[1];
        assert_eq!((member.weight, member.state), (5, "healthy"));
        assert_eq!(member.last_change.as_ref().map(|c| c.to), Some("healthy"));
    }

    #[actix::test]
    async fn passive_ejection_doubles_on_repeat_up_to_the_cap() {
        let (table, routes) =
            RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[], Default::default());
        table.send(flip(1, true)).await.unwrap();
        table.send(flip(2, true)).await.unwrap();
        let member_1 = || {
            routes
                .load()
                .lookup("public", None, "/")
                .unwrap()
                .pool
                .members()[0]
                .clone()
        };
        let mut lengths = Vec::new();
        for _ in 0..3 {
            // Two failures on the data path: the second crosses the threshold and reports.
            let m = member_1();
            assert_eq!(m.addr.port(), 1);
            m.passive_failure(&"connection refused");
            m.passive_failure(&"connection refused");
            until(&routes, "ejected", |r| in_rotation(r) == [2]).await;
            let status = table.send(BackendsReport).await.unwrap();
            let passive = &status.pools[0].members[0].passive;
            assert_eq!(status.pools[0].members[0].state, "ejected");
            assert_eq!(passive.last_error.as_deref(), Some("connection refused"));
            lengths.push(passive.ejection_ms.unwrap());
            until(&routes, "re-admitted", |r| in_rotation(r) == [1, 2]).await;
            assert_eq!(member_1().passive_failures(), 0);
        }
        assert_eq!(lengths, [40, 80, 100]);
        let status = table.send(BackendsReport).await.unwrap();
        assert_eq!(status.pools[0].members[0].passive.ejections, 3);
    }

    #[actix::test]
    async fn a_failure_below_the_threshold_sends_nothing_and_success_resets() {
        let (table, routes) =
            RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[], Default::default());
        table.send(flip(1, true)).await.unwrap();
        let m = routes
            .load()
            .lookup("public", None, "/")
            .unwrap()
            .pool
            .members()[0]
            .clone();
        m.passive_failure(&"refused");
        m.passive_success();
        m.passive_failure(&"refused");
        assert_eq!(m.passive_failures(), 1);
        // A round trip through the mailbox: had anything been reported, it is handled by now.
        let status = table.send(BackendsReport).await.unwrap();
        assert_eq!(status.pools[0].members[0].passive.ejections, 0);
        assert_eq!(in_rotation(&routes), [1]);
    }

    #[actix::test]
    async fn dns_members_follow_their_resolution() {
        let cfg = config(
            r#"
            [listeners.public]
            bind = "127.0.0.1:0"
            [backend_pools.p]
            members = ["127.0.0.1:9", "app.test:80 weight=3"]
            [backend_settings.s]
            [routing_rules.r]
            listener = "public"
            backend_pool = "p"
            backend_settings = "s"
            "#,
        );
        let a: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:80".parse().unwrap();
        let resolved = vec![(
            Arc::<str>::from("p"),
            vec![DnsMember {
                entry: 1,
                host: "app.test".into(),
                port: 80,
                addrs: vec![a],
                refresh: Duration::from_secs(1),
            }],
        )];
        let (table, routes) = RouteTableActor::start(Arc::new(cfg), &resolved, Default::default());
        let addrs = |r: &SharedRoutes| -> Vec<SocketAddr> {
            r.load()
                .lookup("public", None, "/")
                .unwrap()
                .pool
                .members()
                .iter()
                .map(|m| m.addr)
                .collect()
        };
        assert_eq!(addrs(&routes), ["127.0.0.1:9".parse().unwrap(), a]);
        let kept = routes
            .load()
            .lookup("public", None, "/")
            .unwrap()
            .pool
            .members()[0]
            .clone();
        table
            .send(MembersResolved {
                pool: "p".into(),
                entry: 1,
                addrs: vec![b],
            })
            .await
            .unwrap();
        assert_eq!(addrs(&routes), ["127.0.0.1:9".parse().unwrap(), b]);
        // The static member's record (and its counters) carried over.
        let now = routes
            .load()
            .lookup("public", None, "/")
            .unwrap()
            .pool
            .members()[0]
            .clone();
        assert!(Arc::ptr_eq(&kept, &now));
        let status = table.send(BackendsReport).await.unwrap();
        let dns = &status.pools[0].members[1];
        assert_eq!(
            (dns.configured_as.as_str(), dns.weight),
            ("app.test:80 weight=3", 3)
        );
    }
}
