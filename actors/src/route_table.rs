//! The route table: which rule serves a request, and which backend members it may use.
//!
//! [`RouteTableActor`] owns the configuration's routes, each pool's member list and the registry
//! of live WebSocket sessions. It *publishes* an immutable [`RouteSnapshot`] through an
//! [`ArcSwap`]: the request path loads the current snapshot (lock-free, no mailbox) and matches
//! against it; when membership or configuration changes the actor builds a new snapshot and swaps
//! it in, and requests already holding the old one finish with it.
//!
//! Matching order (documented in the README): listener → host (exact name, then the longest
//! `*.suffix`, then rules with no host) → path (an exact path, then the longest `/prefix/*`). A
//! more specific host that has no matching path falls through to the less specific ones.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Context, Handler, MessageResult, Recipient};
use arc_swap::ArcSwap;
use tether_config::{
    BackendSettingsConfig, Config, HostPattern, PathPattern, RoutingRuleConfig, WebSocketConfig,
};

use crate::messages::{DrainSession, LiveSessions, SessionEnded, SessionOpened};
use crate::session::SessionId;

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
}

/// A backend pool as the request path sees it: the members currently in rotation.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name (used in the 503 body).
    pub name: Arc<str>,
    /// Members in rotation.
    pub members: Vec<SocketAddr>,
    /// Round-robin cursor, shared by every worker (one relaxed atomic add per pick).
    cursor: AtomicUsize,
}

impl Pool {
    /// Builds a pool snapshot.
    pub fn new(name: Arc<str>, members: Vec<SocketAddr>) -> Pool {
        Pool {
            name,
            members,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Picks the next member round-robin, or `None` when no member is in rotation.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.members.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        Some(self.members[n % self.members.len()])
    }
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
    /// Builds the snapshot for `config` with the given members per pool (the route table's
    /// current view of who is in rotation).
    pub fn build(
        config: &Config,
        members: &BTreeMap<String, Vec<SocketAddr>>,
        generation: u64,
    ) -> RouteSnapshot {
        let pools: HashMap<&str, Arc<Pool>> = config
            .backend_pools
            .keys()
            .map(|name| {
                let list = members.get(name).cloned().unwrap_or_default();
                (
                    name.as_str(),
                    Arc::new(Pool::new(name.as_str().into(), list)),
                )
            })
            .collect();
        let mut listeners: HashMap<String, ListenerRoutes> = HashMap::new();
        for rule in config.routing_rules.values() {
            let Some(route) = resolve_rule(config, rule, &pools) else {
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
    pools: &HashMap<&str, Arc<Pool>>,
) -> Option<Arc<Route>> {
    Some(Arc::new(Route {
        name: rule.name.as_str().into(),
        pool: pools.get(rule.backend_pool.as_str())?.clone(),
        settings: Arc::new(config.backend_settings.get(&rule.backend_settings)?.clone()),
        websocket: Arc::new(rule.websocket.clone()),
    }))
}

/// Strips the port (and IPv6 brackets) from a `Host` value and lowercases it into `buf`, without
/// allocating. Returns `None` for an empty or over-long host.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// What the route table knows of one live session.
struct LiveSession {
    route: Arc<str>,
    backend: SocketAddr,
    opened: Instant,
    #[allow(dead_code)] // read when routes are removed or members turn unhealthy (drain orders)
    control: Recipient<DrainSession>,
}

/// Owns routes, pool membership and the live-session registry; publishes [`RouteSnapshot`]s.
///
/// Runs on the System arbiter. Nothing on the request path waits for it.
pub struct RouteTableActor {
    config: Arc<Config>,
    members: BTreeMap<String, Vec<SocketAddr>>,
    shared: SharedRoutes,
    sessions: HashMap<SessionId, LiveSession>,
}

impl RouteTableActor {
    /// Creates the actor for `config` with the resolved members of every pool, and the shared
    /// handle the workers read from (already holding the first snapshot).
    pub fn new(
        config: Arc<Config>,
        members: BTreeMap<String, Vec<SocketAddr>>,
    ) -> (RouteTableActor, SharedRoutes) {
        let first = RouteSnapshot::build(&config, &members, 1);
        let shared: SharedRoutes = Arc::new(ArcSwap::from_pointee(first));
        let actor = RouteTableActor {
            config,
            members,
            shared: shared.clone(),
            sessions: HashMap::new(),
        };
        (actor, shared)
    }

    /// Builds and publishes a snapshot from the current configuration and membership.
    #[allow(dead_code)] // used by membership and reload messages as they land
    fn publish(&mut self) {
        let generation = self.shared.load().generation + 1;
        let snapshot = RouteSnapshot::build(&self.config, &self.members, generation);
        self.shared.store(Arc::new(snapshot));
    }
}

impl Actor for RouteTableActor {
    type Context = Context<Self>;
}

impl Handler<SessionOpened> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: SessionOpened, _: &mut Context<Self>) {
        self.sessions.insert(
            msg.id,
            LiveSession {
                route: msg.route,
                backend: msg.backend,
                opened: Instant::now(),
                control: msg.control,
            },
        );
    }
}

impl Handler<SessionEnded> for RouteTableActor {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, _: &mut Context<Self>) {
        if let Some(live) = self.sessions.remove(&msg.id) {
            tracing::debug!(
                session = msg.id.0,
                route = %live.route,
                backend = %live.backend,
                registered_for = ?live.opened.elapsed(),
                "session deregistered"
            );
        }
    }
}

impl Handler<LiveSessions> for RouteTableActor {
    type Result = MessageResult<LiveSessions>;

    fn handle(&mut self, _: LiveSessions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sessions.len())
    }
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

    #[test]
    fn pool_round_robin_and_empty() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let pool = Pool::new("p".into(), vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| pool.pick().unwrap()).collect();
        assert_eq!(picks, vec![a, b, a, b]);
        assert_eq!(Pool::new("e".into(), vec![]).pick(), None);
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
        let members = BTreeMap::from([("p".to_string(), vec!["127.0.0.1:1".parse().unwrap()])]);
        let snap = RouteSnapshot::build(&cfg, &members, 1);
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
}
