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
//!   is ejected for `passive.ejection`, doubled for each repeat (capped at `max_ejection`); a
//!   member that stays in rotation `max_ejection` after returning starts again from the base.
//! * [`MembersResolved`] from a pool's resolver — a DNS member's address set moved.
//!
//! A member is in rotation when its probe says healthy (always, for a pool without a probe) and
//! it is not ejected. Each member's [`Member`] record (load counters, passive count, last probe)
//! is created once per address and carried into every snapshot, so counters survive republishing.
//!
//! Matching order (documented in the README): listener → host (exact name, then the longest
//! `*.suffix`, then rules with no host) → path (an exact path, then the longest `/prefix/*`). A
//! more specific host that has no matching path falls through to the less specific ones.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context, Handler, MessageResult, Recipient, WeakAddr};
use arc_swap::ArcSwap;
use serde::Serialize;
use tether_config::{
    BackendPoolConfig, BackendSettingsConfig, Config, HostPattern, LoadBalancing,
    OnBackendUnhealthy, PathPattern, RoutingRuleConfig, WebSocketConfig,
};

use crate::balance::Member;
pub use crate::balance::Pool;
use crate::headers;
use crate::messages::{
    AttachProber, BackendsReport, ConfigChange, ConfigReplaced, DrainAll, DrainReason,
    DrainSession, EndedSessionInfo, ListenerLimits, LiveSessionInfo, LiveSessions, MemberFailing,
    MemberHealthChanged, MembersResolved, ProbeTargets, RecentEndings, SessionEnded, SessionOpened,
    SessionStatsQuery, SessionsChanged, SessionsReport,
};
use crate::outcome::SessionId;
use crate::prober::Health;
use crate::resolver::DnsMember;
use crate::session::SessionActor;

/// The shared handle through which the route table publishes snapshots and everyone else reads
/// them.
pub type SharedRoutes = Arc<ArcSwap<RouteSnapshot>>;

/// One routing rule, resolved: the pool it sends to and the settings it uses.
#[derive(Debug)]
pub struct Route {
    /// The routing rule's name.
    pub name: Arc<str>,
    /// The pool requests go to.
    pub pool: Arc<Pool>,
    /// Timeouts, port and host override for the backend request.
    pub settings: Arc<BackendSettingsConfig>,
    /// The rule's WebSocket policy.
    pub websocket: Arc<WebSocketConfig>,
    /// Live sessions on this rule, for `websocket.max_sessions`; carried across republishes
    /// by rule name, so a new snapshot does not forget the sessions already running.
    pub sessions: Arc<AtomicUsize>,
}

/// Rules for one path table (one host pattern on one listener).
#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<String, Arc<Route>>,
    /// Sorted longest prefix first.
    prefixes: Vec<(String, Arc<Route>)>,
}

impl PathTable {
    fn insert(&mut self, pattern: &PathPattern, route: Arc<Route>) {
        match pattern {
            PathPattern::Exact(p) => {
                self.exact.insert(p.clone(), route);
            }
            PathPattern::Prefix(p) => {
                self.prefixes.push((p.clone(), route));
                self.prefixes
                    .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            }
        }
    }

    fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, route)| route)
    }
}

/// Rules of one listener, by host.
#[derive(Debug, Default)]
struct ListenerRoutes {
    exact_hosts: HashMap<String, PathTable>,
    /// `(".example.com", table)`, sorted longest suffix first.
    suffix_hosts: Vec<(String, PathTable)>,
    any_host: PathTable,
}

/// An immutable view of every route and pool, swapped whole when anything changes.
#[derive(Debug, Default)]
pub struct RouteSnapshot {
    listeners: HashMap<String, ListenerRoutes>,
    /// Incremented with every published snapshot.
    pub generation: u64,
}

impl RouteSnapshot {
    /// Builds the snapshot for `config` over the given pool snapshots (the route table's
    /// current view of who is in rotation).
    pub fn build(
        config: &Config,
        pools: &BTreeMap<String, Arc<Pool>>,
        route_sessions: &BTreeMap<String, Arc<AtomicUsize>>,
        generation: u64,
    ) -> RouteSnapshot {
        let mut listeners: HashMap<String, ListenerRoutes> = HashMap::new();
        for rule in config.routing_rules.values() {
            let sessions = route_sessions.get(&rule.name).cloned().unwrap_or_default();
            let Some(route) = resolve_rule(config, rule, pools, sessions) else {
                continue; // validation guarantees references resolve; be defensive anyway
            };
            let routes = listeners.entry(rule.listener.clone()).or_default();
            if rule.hosts.is_empty() {
                insert_paths(&mut routes.any_host, &rule.paths, &route);
            }
            for host in &rule.hosts {
                let table = match host {
                    HostPattern::Exact(h) => routes.exact_hosts.entry(h.clone()).or_default(),
                    HostPattern::Suffix(suffix) => {
                        let at = match routes.suffix_hosts.iter().position(|(s, _)| s == suffix) {
                            Some(at) => at,
                            None => {
                                routes
                                    .suffix_hosts
                                    .push((suffix.clone(), PathTable::default()));
                                routes.suffix_hosts.len() - 1
                            }
                        };
                        &mut routes.suffix_hosts[at].1
                    }
                };
                insert_paths(table, &rule.paths, &route);
            }
        }
        for routes in listeners.values_mut() {
            routes
                .suffix_hosts
                .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        }
        RouteSnapshot {
            listeners,
            generation,
        }
    }

    /// Finds the route for a request on `listener` with `host` (the `Host` header or URI
    /// authority, port and case as sent) and `path`.
    pub fn lookup(&self, listener: &str, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let routes = self.listeners.get(listener)?;
        let mut buf = [0u8; 256];
        let host = host.and_then(|h| normalize_host(h, &mut buf));
        if let Some(host) = host {
            if let Some(route) = routes.exact_hosts.get(host).and_then(|t| t.lookup(path)) {
                return Some(route);
            }
            for (suffix, table) in &routes.suffix_hosts {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(route) = table.lookup(path) {
                        return Some(route);
                    }
                }
            }
        }
        routes.any_host.lookup(path)
    }
}

fn insert_paths(table: &mut PathTable, paths: &[PathPattern], route: &Arc<Route>) {
    if paths.is_empty() {
        // A basic rule: everything on the listener.
        table.insert(&PathPattern::Prefix("/".into()), route.clone());
    } else {
        for p in paths {
            table.insert(p, route.clone());
        }
    }
}

fn resolve_rule(
    config: &Config,
    rule: &RoutingRuleConfig,
    pools: &BTreeMap<String, Arc<Pool>>,
    sessions: Arc<AtomicUsize>,
) -> Option<Arc<Route>> {
    Some(Arc::new(Route {
        name: rule.name.as_str().into(),
        pool: pools.get(&rule.backend_pool)?.clone(),
        settings: Arc::new(config.backend_settings.get(&rule.backend_settings)?.clone()),
        websocket: Arc::new(rule.websocket.clone()),
        sessions,
    }))
}

/// A place in a rule's `max_sessions`, held from the handshake to the session's end.
#[derive(Debug)]
pub struct SessionSlot(Arc<AtomicUsize>);

impl SessionSlot {
    /// Takes a slot on `route`, or `None` when its `max_sessions` are all taken (one atomic
    /// add; undone at once when over the limit).
    pub fn acquire(route: &Route) -> Option<SessionSlot> {
        let before = route.sessions.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = route.websocket.max_sessions {
            if before >= max as usize {
                route.sessions.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        Some(SessionSlot(route.sessions.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Strips the port (and IPv6 brackets) from a `Host` value ([`headers::parse_authority`]) and
/// lowercases it into `buf`, without allocating. Returns `None` for an invalid, empty or
/// over-long host.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let name = headers::parse_authority(host.trim())?.host;
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// How many ended sessions the route table remembers for `GET /sessions` and the status page.
pub const RECENT_ENDINGS: usize = 100;

/// How long `GET /sessions` waits for a session to report its counters (a session on a busy
/// worker answers late; it is then listed without counters).
pub const SESSION_STATS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the route table knows of one live session.
struct LiveSession {
    route: Arc<str>,
    backend: SocketAddr,
    opened: Instant,
    /// The session actor (weak: see [`SessionOpened::session`]).
    session: WeakAddr<SessionActor>,
    /// Counts the session against its listener's `max_connections`.
    _guard: Option<crate::listener::ConnectionGuard>,
}

/// The last probe-health flip of a member, for `GET /backends`.
#[derive(Debug, Clone)]
struct Flip {
    healthy: bool,
    after: u32,
    reason: String,
    at: Instant,
}

/// Passive-health state of a member.
#[derive(Debug, Clone, Default)]
struct Ejection {
    /// Set while ejected.
    until: Option<Instant>,
    /// Ejections in a row (each doubles the next one's length).
    streak: u32,
    /// Ejections since start-up.
    total: u64,
    /// When the last ejection ended.
    last_return: Option<Instant>,
    /// Length of the current (or last) ejection.
    length: Duration,
    /// The failure that caused the last ejection.
    last_error: Option<String>,
    /// Identifies the current ejection, so a stale re-admission timer does nothing.
    epoch: u64,
}

/// The route table's view of one member.
struct MemberState {
    shared: Arc<Member>,
    /// Index of the configured member it comes from (a DNS name may give several addresses).
    entry: usize,
    health: Health,
    last_flip: Option<Flip>,
    ejection: Ejection,
}

impl MemberState {
    fn in_rotation(&self) -> bool {
        self.health == Health::Healthy && self.ejection.until.is_none()
    }

    fn state(&self) -> &'static str {
        match (self.ejection.until, self.health) {
            (Some(_), _) => "ejected",
            (None, Health::Healthy) => "healthy",
            (None, Health::Unhealthy) => "unhealthy",
            (None, Health::Unknown) => "unknown",
        }
    }
}

/// The route table's view of one pool.
struct PoolState {
    name: Arc<str>,
    config: BackendPoolConfig,
    /// The probe checking the members, if any.
    probe: Option<String>,
    /// The addresses each configured member stands for: itself, or a DNS name's last good set.
    entries: Vec<Vec<SocketAddr>>,
    members: BTreeMap<SocketAddr, MemberState>,
    prober: Option<Recipient<ProbeTargets>>,
}

impl PoolState {
    /// The pool's snapshot: its members in rotation, in address order.
    fn snapshot(&self) -> Pool {
        let members = self
            .members
            .values()
            .filter(|m| m.in_rotation())
            .map(|m| m.shared.clone())
            .collect();
        Pool::new(
            self.name.clone(),
            self.config.load_balancing,
            &self.config.hash_key,
            members,
        )
    }

    /// Makes `members` match `entries`: new addresses get a fresh record (unknown when
    /// probed), vanished ones are dropped. An address listed twice counts once (the first
    /// entry's weight wins). Returns whether the set changed.
    fn sync_members(&mut self, reporter: &Option<Recipient<MemberFailing>>) -> bool {
        let mut wanted: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (entry, addrs) in self.entries.iter().enumerate() {
            for addr in addrs {
                wanted.entry(*addr).or_insert(entry);
            }
        }
        let before = self.members.len();
        self.members.retain(|addr, _| wanted.contains_key(addr));
        let mut changed = self.members.len() != before;
        for (addr, entry) in wanted {
            if self.members.contains_key(&addr) {
                continue;
            }
            changed = true;
            let shared = Arc::new(Member::new(
                addr,
                self.config.members[entry].weight.get(),
                self.name.clone(),
                self.config.passive.failures,
                reporter.clone(),
            ));
            let health = if self.probe.is_some() {
                Health::Unknown
            } else {
                Health::Healthy
            };
            self.members.insert(
                addr,
                MemberState {
                    shared,
                    entry,
                    health,
                    last_flip: None,
                    ejection: Ejection::default(),
                },
            );
        }
        changed
    }

    fn tell_prober(&self) {
        if let Some(prober) = &self.prober {
            prober.do_send(ProbeTargets {
                members: self.members.values().map(|m| m.shared.clone()).collect(),
            });
        }
    }
}

/// The addresses each configured member of `pool` stands for: an IP member itself, a DNS
/// member its start-up (or reload) resolution.
fn pool_entries(
    name: &str,
    pool: &BackendPoolConfig,
    resolved: &[(Arc<str>, Vec<DnsMember>)],
) -> Vec<Vec<SocketAddr>> {
    let mut entries: Vec<Vec<SocketAddr>> = pool
        .members
        .iter()
        .map(|m| match m.address {
            tether_config::Member::Addr(addr) => vec![addr],
            tether_config::Member::Dns { .. } => Vec::new(),
        })
        .collect();
    for (_, dns) in resolved.iter().filter(|(pool, _)| **pool == *name) {
        for member in dns {
            if let Some(slot) = entries.get_mut(member.entry) {
                slot.clone_from(&member.addrs);
            }
        }
    }
    entries
}

/// Owns routes, pool membership and the live-session registry; publishes [`RouteSnapshot`]s.
///
/// Runs on the System arbiter. Nothing on the request path waits for it.
pub struct RouteTableActor {
    config: Arc<Config>,
    pools: BTreeMap<String, PoolState>,
    shared: SharedRoutes,
    sessions: HashMap<SessionId, LiveSession>,
    /// Each listener's connection limit (sessions count against it).
    limits: HashMap<String, crate::listener::ConnectionLimit>,
    /// The last [`RECENT_ENDINGS`] sessions that ended, oldest first, with when they ended.
    recent: VecDeque<(Instant, EndedSessionInfo)>,
    /// Where members report crossed passive thresholds (this actor, once started).
    reporter: Option<Recipient<MemberFailing>>,
    /// How long building the last snapshot took.
    last_build: Duration,
    /// Live sessions per rule (see [`Route::sessions`]).
    route_sessions: BTreeMap<String, Arc<AtomicUsize>>,
    /// Set by [`DrainAll`]: sessions reported after it are drained as they register.
    draining: Option<DrainSession>,
}

impl RouteTableActor {
    /// Creates the actor for `config` with the start-up resolution of its DNS members, and the
    /// shared handle the workers read from (already holding the first snapshot). Members report
    /// passive failures to `reporter`; `None` turns passive health off (tests of pure routing).
    pub fn new(
        config: Arc<Config>,
        resolved: &[(Arc<str>, Vec<DnsMember>)],
        reporter: Option<Recipient<MemberFailing>>,
    ) -> (RouteTableActor, SharedRoutes) {
        let mut pools = BTreeMap::new();
        for (name, pool) in &config.backend_pools {
            let mut state = PoolState {
                name: name.as_str().into(),
                config: pool.clone(),
                probe: config.pool_probe(name).map(|p| p.probe.name.clone()),
                entries: pool_entries(name, pool, resolved),
                members: BTreeMap::new(),
                prober: None,
            };
            state.sync_members(&reporter);
            pools.insert(name.clone(), state);
        }
        let shared: SharedRoutes = Arc::new(ArcSwap::from_pointee(RouteSnapshot::default()));
        let mut actor = RouteTableActor {
            config,
            pools,
            shared: shared.clone(),
            sessions: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT_ENDINGS),
            limits: HashMap::new(),
            reporter,
            last_build: Duration::ZERO,
            route_sessions: BTreeMap::new(),
            draining: None,
        };
        actor.publish();
        (actor, shared)
    }

    /// Starts the actor on the current arbiter, its members reporting passive failures to it.
    pub fn start(
        config: Arc<Config>,
        resolved: &[(Arc<str>, Vec<DnsMember>)],
    ) -> (Addr<RouteTableActor>, SharedRoutes) {
        let mut routes = None;
        let addr = RouteTableActor::create(|ctx| {
            let (actor, shared) =
                RouteTableActor::new(config, resolved, Some(ctx.address().recipient()));
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
        let snapshot = RouteSnapshot::build(&self.config, &pools, &self.route_sessions, generation);
        self.shared.store(Arc::new(snapshot));
        self.last_build = started.elapsed();
        tracing::debug!(
            generation,
            build_us = self.last_build.as_micros() as u64,
            "route snapshot published"
        );
    }

    /// Asks every session on `member` of `pool` whose rule says `on_backend_unhealthy =
    /// "drain"` to end. A session's backend address carries its settings' port override, so
    /// the member is compared under each rule's override.
    fn drain_sessions_on(&self, pool: &str, member: SocketAddr) -> usize {
        let mut drained = 0;
        for live in self.sessions.values() {
            let Some(rule) = self.config.routing_rules.get(&*live.route) else {
                continue;
            };
            if rule.backend_pool != pool
                || rule.websocket.on_backend_unhealthy != OnBackendUnhealthy::Drain
            {
                continue;
            }
            let mut target = member;
            if let Some(port) = self
                .config
                .backend_settings
                .get(&rule.backend_settings)
                .and_then(|s| s.port)
            {
                target.set_port(port);
            }
            if live.backend == target {
                drain(
                    &live.session,
                    DrainSession {
                        reason: DrainReason::BackendUnhealthy,
                        grace: rule.websocket.drain_grace,
                    },
                );
                drained += 1;
            }
        }
        drained
    }

    /// Ends an ejection (if `epoch` is still the current one).
    fn readmit(&mut self, pool: &str, addr: SocketAddr, epoch: u64) {
        let Some(state) = self.pools.get_mut(pool) else {
            return;
        };
        let Some(member) = state.members.get_mut(&addr) else {
            return;
        };
        if member.ejection.epoch != epoch || member.ejection.until.is_none() {
            return;
        }
        member.ejection.until = None;
        member.ejection.last_return = Some(Instant::now());
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

    /// Every pool and member with its state, for `GET /backends`.
    fn status(&self) -> BackendsStatus {
        let now = Instant::now();
        let ms = |d: Duration| d.as_millis() as u64;
        let pools = self
            .pools
            .values()
            .map(|pool| {
                let members: Vec<MemberStatus> = pool
                    .members
                    .values()
                    .map(|m| {
                        let probe = m.shared.probe_report();
                        MemberStatus {
                            address: m.shared.addr,
                            configured_as: pool.config.members[m.entry].to_string(),
                            weight: m.shared.weight,
                            state: m.state(),
                            in_rotation: m.in_rotation(),
                            live_sessions: m.shared.sessions(),
                            in_flight_requests: m.shared.requests(),
                            consecutive_successes: probe
                                .as_ref()
                                .map_or(0, |p| p.consecutive_successes),
                            consecutive_failures: probe
                                .as_ref()
                                .map_or(0, |p| p.consecutive_failures),
                            last_probe: probe.map(|p| LastProbe {
                                ok: p.ok,
                                result: p.detail,
                                latency_ms: p.latency.as_secs_f64() * 1e3,
                                ago_ms: ms(now.saturating_duration_since(p.at)),
                            }),
                            last_change: m.last_flip.as_ref().map(|f| LastChange {
                                to: if f.healthy { "healthy" } else { "unhealthy" },
                                after: f.after,
                                reason: f.reason.clone(),
                                ago_ms: ms(now.saturating_duration_since(f.at)),
                            }),
                            passive: PassiveStatus {
                                consecutive_failures: m.shared.passive_failures(),
                                ejections: m.ejection.total,
                                ejection_ms: (m.ejection.total > 0).then(|| ms(m.ejection.length)),
                                ejected_for_ms: m
                                    .ejection
                                    .until
                                    .map(|until| ms(until.saturating_duration_since(now))),
                                last_error: m.ejection.last_error.clone(),
                            },
                        }
                    })
                    .collect();
                PoolStatus {
                    routed: self
                        .config
                        .routing_rules
                        .values()
                        .any(|r| r.backend_pool == *pool.name),
                    name: pool.name.to_string(),
                    load_balancing: pool.config.load_balancing,
                    hash_key: (pool.config.load_balancing == LoadBalancing::ConsistentHash)
                        .then(|| pool.config.hash_key.to_string()),
                    probe: pool.probe.clone(),
                    passive_failures: pool.config.passive.failures,
                    in_rotation: members.iter().filter(|m| m.in_rotation).count(),
                    members,
                }
            })
            .collect();
        BackendsStatus {
            generation: self.shared.load().generation,
            snapshot_build_us: self.last_build.as_micros() as u64,
            live_sessions: self.sessions.len(),
            pools,
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
            self.session_opened(opened);
        }
        for ended in msg.ended {
            self.session_ended(ended);
        }
    }
}

impl RouteTableActor {
    fn session_opened(&mut self, msg: SessionOpened) {
        if let Some(order) = self.draining {
            // Reported after every session was drained for shutdown: this one started before
            // it could see the signal, so it is drained now.
            drain(&msg.session, order);
        }
        let guard = self
            .config
            .routing_rules
            .get(&*msg.route)
            .and_then(|rule| self.limits.get(&rule.listener))
            .map(crate::listener::ConnectionLimit::session);
        self.sessions.insert(
            msg.id,
            LiveSession {
                route: msg.route,
                backend: msg.backend,
                opened: Instant::now(),
                session: msg.session,
                _guard: guard,
            },
        );
    }
}

/// Sends `order` to a session that is still running (one that ended meanwhile is skipped).
fn drain(session: &WeakAddr<SessionActor>, order: DrainSession) {
    if let Some(session) = session.upgrade() {
        session.do_send(order);
    }
}

impl Handler<DrainAll> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: DrainAll, _: &mut Context<Self>) {
        let order = DrainSession {
            reason: msg.reason,
            grace: msg.grace,
        };
        self.draining = Some(order);
        for live in self.sessions.values() {
            drain(&live.session, order);
        }
        tracing::info!(sessions = self.sessions.len(), reason = ?msg.reason, "draining every session");
    }
}

impl RouteTableActor {
    fn session_ended(&mut self, msg: SessionEnded) {
        if let Some(live) = self.sessions.remove(&msg.id) {
            tracing::debug!(
                session = msg.id.0,
                route = %live.route,
                backend = %live.backend,
                registered_for = ?live.opened.elapsed(),
                "session deregistered"
            );
        }
        let summary = &msg.summary;
        let o = &summary.outcome;
        if self.recent.len() == RECENT_ENDINGS {
            self.recent.pop_front();
        }
        self.recent.push_back((
            Instant::now(),
            EndedSessionInfo {
                id: msg.id.0,
                route: summary.route.to_string(),
                backend: summary.backend,
                client: summary.client,
                ended_ms_ago: 0,
                duration_ms: summary.duration.as_millis() as u64,
                cause: o.cause.as_str(),
                initiator: o.initiator.map(crate::outcome::Initiator::as_str),
                client_close_code: o.client_close.as_ref().and_then(|c| c.code),
                backend_close_code: o.backend_close.as_ref().and_then(|c| c.code),
                tether_close_code: o.tether_close,
                client_bytes: summary.client_bytes,
                backend_bytes: summary.backend_bytes,
            },
        ));
    }
}

impl Handler<ListenerLimits> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: ListenerLimits, _: &mut Context<Self>) {
        self.limits = msg.limits;
    }
}

impl Handler<RecentEndings> for RouteTableActor {
    type Result = MessageResult<RecentEndings>;

    fn handle(&mut self, _: RecentEndings, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        MessageResult(
            self.recent
                .iter()
                .rev()
                .map(|(at, info)| EndedSessionInfo {
                    ended_ms_ago: now.saturating_duration_since(*at).as_millis() as u64,
                    ..info.clone()
                })
                .collect(),
        )
    }
}

impl Handler<LiveSessions> for RouteTableActor {
    type Result = MessageResult<LiveSessions>;

    fn handle(&mut self, _: LiveSessions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sessions.len())
    }
}

impl Handler<SessionsReport> for RouteTableActor {
    type Result = actix::ResponseFuture<Vec<LiveSessionInfo>>;

    fn handle(&mut self, msg: SessionsReport, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<(LiveSessionInfo, WeakAddr<SessionActor>)> = self
            .sessions
            .iter()
            .map(|(id, live)| {
                let info = LiveSessionInfo {
                    id: id.0,
                    route: live.route.to_string(),
                    backend: live.backend,
                    age_ms: live.opened.elapsed().as_millis() as u64,
                    stats: None,
                };
                (info, live.session.clone())
            })
            .collect();
        list.sort_by_key(|(s, _)| s.id);
        if !msg.stats {
            return Box::pin(std::future::ready(
                list.into_iter().map(|(info, _)| info).collect(),
            ));
        }
        // Every session is asked at once; the answers are awaited off the actor, so the
        // route table keeps handling messages meanwhile.
        Box::pin(futures_util::future::join_all(list.into_iter().map(
            |(mut info, session)| async move {
                let Some(session) = session.upgrade() else {
                    return info; // ended meanwhile
                };
                let asked = session.send(SessionStatsQuery);
                if let Ok(Ok(stats)) = tokio::time::timeout(SESSION_STATS_TIMEOUT, asked).await {
                    info.stats = Some(stats);
                }
                info
            },
        )))
    }
}

impl Handler<MemberHealthChanged> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: MemberHealthChanged, _: &mut Context<Self>) {
        let Some(pool) = self.pools.get_mut(&*msg.pool) else {
            return;
        };
        let Some(member) = pool.members.get_mut(&msg.member) else {
            return; // removed (DNS) while the probe ran
        };
        let before = member.health;
        let was_in = member.in_rotation();
        member.health = if msg.healthy {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        member.last_flip = Some(Flip {
            healthy: msg.healthy,
            after: msg.consecutive,
            reason: msg.last_result.clone(),
            at: Instant::now(),
        });
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
        let passive = pool.config.passive.clone();
        let Some(member) = pool.members.get_mut(&msg.member) else {
            return;
        };
        if passive.failures == 0 || member.ejection.until.is_some() {
            return;
        }
        let now = Instant::now();
        let ejection = &mut member.ejection;
        if ejection
            .last_return
            .is_some_and(|back| now.saturating_duration_since(back) >= passive.max_ejection)
        {
            ejection.streak = 0;
        }
        let length = passive
            .ejection
            .checked_mul(1u32 << ejection.streak.min(20))
            .unwrap_or(passive.max_ejection)
            .min(passive.max_ejection);
        ejection.streak = ejection.streak.saturating_add(1);
        ejection.total += 1;
        ejection.until = Some(now + length);
        ejection.length = length;
        ejection.last_error = Some(msg.last_error.clone());
        ejection.epoch += 1;
        let epoch = ejection.epoch;
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
            let mut state = match self.pools.remove(name) {
                Some(mut state) => {
                    // A member whose weight or passive threshold changed gets a fresh record
                    // (those live in the record); its probe health carries over.
                    state.members.retain(|_, m| {
                        pool.members
                            .get(m.entry)
                            .is_some_and(|c| c.weight.get() == m.shared.weight)
                            && pool.passive.failures == state.config.passive.failures
                    });
                    if old.pool_probe(name) != config.pool_probe(name) {
                        // The sender starts the new prober and attaches it.
                        state.prober = None;
                    }
                    if probe.is_none() {
                        for m in state.members.values_mut() {
                            m.health = Health::Healthy;
                        }
                    }
                    state.config = pool.clone();
                    state.probe = probe;
                    state.entries = entries;
                    state
                }
                None => {
                    change.pools_added.push(name.clone());
                    PoolState {
                        name: name.as_str().into(),
                        config: pool.clone(),
                        probe,
                        entries,
                        members: BTreeMap::new(),
                        prober: None,
                    }
                }
            };
            if state.sync_members(&self.reporter) {
                state.tell_prober();
            }
            pools.insert(name.clone(), state);
        }
        change.pools_removed = self.pools.keys().cloned().collect();
        self.pools = pools;
        for live in self.sessions.values() {
            if config.routing_rules.contains_key(&*live.route) {
                continue; // kept or changed: it runs on, on its backend
            }
            let grace = old
                .routing_rules
                .get(&*live.route)
                .map_or(config.shutdown_grace, |r| r.websocket.drain_grace);
            drain(
                &live.session,
                DrainSession {
                    reason: DrainReason::RouteRemoved,
                    grace,
                },
            );
            change.sessions_drained += 1;
        }
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

impl Handler<BackendsReport> for RouteTableActor {
    type Result = MessageResult<BackendsReport>;

    fn handle(&mut self, _: BackendsReport, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

/// `GET /backends`: every pool and member with its state.
#[derive(Debug, Clone, Serialize)]
pub struct BackendsStatus {
    /// The generation of the published snapshot.
    pub generation: u64,
    /// How long building the last snapshot took, in microseconds.
    pub snapshot_build_us: u64,
    /// WebSocket sessions registered with the route table.
    pub live_sessions: usize,
    /// Every pool, by name.
    pub pools: Vec<PoolStatus>,
}

/// One pool in `GET /backends`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Whether a routing rule sends traffic to it (readiness needs a member in rotation in
    /// every routed pool).
    pub routed: bool,
    /// Its balancing policy.
    pub load_balancing: LoadBalancing,
    /// What `consistent_hash` hashes (only for that policy).
    pub hash_key: Option<String>,
    /// The probe checking its members, if any.
    pub probe: Option<String>,
    /// `passive.failures` (0 = passive health off).
    pub passive_failures: u32,
    /// How many members are in rotation.
    pub in_rotation: usize,
    /// Every member, in rotation or not, by address.
    pub members: Vec<MemberStatus>,
}

/// One member in `GET /backends`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// The address traffic goes to (before a settings' port override).
    pub address: SocketAddr,
    /// The configured member it comes from, as written (`10.0.0.5:5000`,
    /// `chat.internal:5000 weight=2`).
    pub configured_as: String,
    /// Its weight.
    pub weight: u32,
    /// `healthy`, `unhealthy`, `unknown` (not probed successfully yet) or `ejected`.
    pub state: &'static str,
    /// Whether new requests and sessions may go to it.
    pub in_rotation: bool,
    /// WebSocket sessions on it now.
    pub live_sessions: usize,
    /// Requests (and handshakes) in flight to it now.
    pub in_flight_requests: usize,
    /// Consecutive successful probes.
    pub consecutive_successes: u32,
    /// Consecutive failed probes.
    pub consecutive_failures: u32,
    /// The latest probe, if probed.
    pub last_probe: Option<LastProbe>,
    /// The latest health flip, if any.
    pub last_change: Option<LastChange>,
    /// Passive health.
    pub passive: PassiveStatus,
}

/// The latest probe of a member.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    /// Whether it passed.
    pub ok: bool,
    /// What happened (`status 200`, `connect to … failed: Connection refused`, …).
    pub result: String,
    /// How long it took.
    pub latency_ms: f64,
    /// How long ago it finished.
    pub ago_ms: u64,
}

/// The latest probe-health flip of a member.
#[derive(Debug, Clone, Serialize)]
pub struct LastChange {
    /// `healthy` or `unhealthy`.
    pub to: &'static str,
    /// After how many consecutive probes.
    pub after: u32,
    /// The last probe's result.
    pub reason: String,
    /// How long ago.
    pub ago_ms: u64,
}

/// Passive health of a member.
#[derive(Debug, Clone, Serialize)]
pub struct PassiveStatus {
    /// Consecutive connect or gateway failures the data path has seen.
    pub consecutive_failures: u32,
    /// Ejections since start-up.
    pub ejections: u64,
    /// Length of the current or last ejection.
    pub ejection_ms: Option<u64>,
    /// Time left of the current ejection, if ejected.
    pub ejected_for_ms: Option<u64>,
    /// The failure that caused the last ejection.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        let mut buf = [0u8; 256];
        assert_eq!(
            normalize_host("Chat.Example.COM:8080", &mut buf),
            Some("chat.example.com")
        );
        let mut buf = [0u8; 256];
        assert_eq!(normalize_host("[::1]:8080", &mut buf), Some("::1"));
        let mut buf = [0u8; 256];
        assert_eq!(
            normalize_host("example.com.", &mut buf),
            Some("example.com")
        );
        let mut buf = [0u8; 256];
        assert_eq!(normalize_host("", &mut buf), None);
    }

    fn config(toml: &str) -> Config {
        tether_config::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn matching_prefers_exact_host_then_suffix_then_any_and_longest_path() {
        let cfg = config(
            r#"
            [listeners.public]
            bind = "127.0.0.1:0"
            [backend_pools.p]
            members = ["127.0.0.1:1"]
            [backend_settings.s]
            [routing_rules.any]
            listener = "public"
            backend_pool = "p"
            backend_settings = "s"
            [routing_rules.chat]
            listener = "public"
            paths = ["/chat/*"]
            backend_pool = "p"
            backend_settings = "s"
            [routing_rules.chat_exact]
            listener = "public"
            paths = ["/chat/lobby"]
            backend_pool = "p"
            backend_settings = "s"
            [routing_rules.wild]
            listener = "public"
            hosts = ["*.example.com"]
            paths = ["/chat/*"]
            backend_pool = "p"
            backend_settings = "s"
            [routing_rules.api]
            listener = "public"
            hosts = ["api.example.com"]
            paths = ["/v1/*"]
            backend_pool = "p"
            backend_settings = "s"
            "#,
        );
        let (table, routes) = RouteTableActor::new(Arc::new(cfg), &[], None);
        drop(table);
        let snap = routes.load();
        let name = |host: Option<&str>, path: &str| {
            snap.lookup("public", host, path)
                .map(|r| r.name.to_string())
                .unwrap_or_default()
        };
        assert_eq!(name(None, "/"), "any");
        assert_eq!(name(None, "/chat/x"), "chat");
        assert_eq!(name(None, "/chat/lobby"), "chat_exact");
        assert_eq!(name(Some("a.example.com"), "/chat/x"), "wild");
        assert_eq!(name(Some("API.example.com:80"), "/v1/users"), "api");
        // api.example.com has no /chat/ route of its own: falls through to the suffix rule.
        assert_eq!(name(Some("api.example.com"), "/chat/x"), "wild");
        assert_eq!(name(Some("example.com"), "/chat/x"), "chat");
        assert!(snap.lookup("other", None, "/").is_none());
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
        let (table, routes) = RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[]);
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
    async fn passive_ejection_doubles_on_repeat_up_to_the_cap() {
        let (table, routes) = RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[]);
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
        let (table, routes) = RouteTableActor::start(Arc::new(config(TWO_PROBED)), &[]);
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
        let (table, routes) = RouteTableActor::start(Arc::new(cfg), &resolved);
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
