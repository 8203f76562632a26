//! Routes and matching: the immutable [`RouteSnapshot`] the request path reads, and how a request
//! finds its rule in it.
//!
//! Matching order (documented in the README): listener → host (exact name, then the longest
//! `*.suffix`, then rules with no host) → path (an exact path, then the longest `/prefix/*`). A
//! more specific host that has no matching path falls through to the less specific ones. Hosts
//! are compared without port, trailing dot or case ([`normalize_host`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tether_config::{
    BackendSettingsConfig, Config, HostPattern, PathPattern, RoutingRuleConfig, WebSocketConfig,
};

use crate::access_log::LogSettings;
use crate::admission::SessionSlot;
use crate::balance::Pool;
use crate::headers;
use crate::metrics::{Metrics, RouteCounters};
use crate::token_bucket::SharedTokenBucket;

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
    /// This rule's handshake, session and request counters (`route` label), the same block
    /// across republishes while the rule exists.
    pub metrics: Arc<RouteCounters>,
    /// `websocket.max_new_sessions_per_second`, shared by every worker; carried across
    /// republishes by rule name while the rate is unchanged (a reload does not refill it).
    pub new_sessions: Option<Arc<SharedTokenBucket>>,
}

impl Route {
    /// Takes a place in this rule's `websocket.max_sessions`, or `None` when they are all taken
    /// ([`SessionSlot::acquire`]).
    pub fn session_slot(&self) -> Option<SessionSlot> {
        SessionSlot::acquire(&self.sessions, self.websocket.max_sessions)
    }
}

/// Rules for one path table (one host pattern on one listener). Each rule is stored with the
/// pattern it was found by, in its written form (`/chat`, `/chat/*`): the request's span
/// records it as `http.route`.
#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<String, Matched>,
    /// Sorted longest prefix first.
    prefixes: Vec<(String, Matched)>,
}

/// A rule as a lookup found it: the rule and the path pattern that matched.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The rule.
    pub route: Arc<Route>,
    /// The path pattern that matched, as written in the configuration (`/*` for a rule with
    /// no `paths`).
    pub template: Arc<str>,
}

impl PathTable {
    fn insert(&mut self, pattern: &PathPattern, route: Arc<Route>) {
        let matched = Matched {
            route,
            template: pattern.to_string().into(),
        };
        match pattern {
            PathPattern::Exact(p) => {
                self.exact.insert(p.clone(), matched);
            }
            PathPattern::Prefix(p) => {
                self.prefixes.push((p.clone(), matched));
                self.prefixes
                    .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            }
        }
    }

    fn lookup(&self, path: &str) -> Option<&Matched> {
        if let Some(matched) = self.exact.get(path) {
            return Some(matched);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, matched)| matched)
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
    /// What the access log and spans record (`[telemetry]`), read with the routes so a reload
    /// applies it to the next request.
    pub log: LogSettings,
}

impl RouteSnapshot {
    /// Builds the snapshot for `config` over the given pool snapshots (the route table's
    /// current view of who is in rotation).
    pub fn build(
        config: &Config,
        pools: &BTreeMap<String, Arc<Pool>>,
        route_sessions: &BTreeMap<String, Arc<AtomicUsize>>,
        metrics: &Metrics,
        route_rates: &BTreeMap<String, Arc<SharedTokenBucket>>,
        generation: u64,
    ) -> RouteSnapshot {
        let mut listeners: HashMap<String, ListenerRoutes> = HashMap::new();
        for rule in config.routing_rules.values() {
            let sessions = route_sessions.get(&rule.name).cloned().unwrap_or_default();
            let counters = metrics.route(&rule.name);
            let rate = route_rates.get(&rule.name).cloned();
            let Some(route) = resolve_rule(config, rule, pools, sessions, counters, rate) else {
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
            log: LogSettings::new(&config.telemetry),
        }
    }

    /// Finds the route for a request on `listener` with `host` (the `Host` header or URI
    /// authority, port and case as sent) and `path`.
    pub fn lookup(&self, listener: &str, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.lookup_matched(listener, host, path).map(|m| &m.route)
    }

    /// [`RouteSnapshot::lookup`], with the path pattern that matched.
    pub fn lookup_matched(
        &self,
        listener: &str,
        host: Option<&str>,
        path: &str,
    ) -> Option<&Matched> {
        let routes = self.listeners.get(listener)?;
        let mut buf = [0u8; 256];
        let host = host.and_then(|h| normalize_host(h, &mut buf));
        if let Some(host) = host {
            if let Some(found) = routes.exact_hosts.get(host).and_then(|t| t.lookup(path)) {
                return Some(found);
            }
            for (suffix, table) in &routes.suffix_hosts {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(found) = table.lookup(path) {
                        return Some(found);
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
    metrics: Arc<RouteCounters>,
    new_sessions: Option<Arc<SharedTokenBucket>>,
) -> Option<Arc<Route>> {
    Some(Arc::new(Route {
        name: rule.name.as_str().into(),
        pool: pools.get(&rule.backend_pool)?.clone(),
        settings: Arc::new(config.backend_settings.get(&rule.backend_settings)?.clone()),
        websocket: Arc::new(rule.websocket.clone()),
        sessions,
        metrics,
        new_sessions,
    }))
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

    /// The snapshot of `config` with every pool empty.
    fn snapshot(config: &Config) -> RouteSnapshot {
        let pools = config
            .backend_pools
            .iter()
            .map(|(name, p)| {
                let pool = Pool::new(name.as_str().into(), p.load_balancing, &p.hash_key, vec![]);
                (name.clone(), Arc::new(pool))
            })
            .collect();
        RouteSnapshot::build(
            config,
            &pools,
            &BTreeMap::new(),
            &Metrics::default(),
            &BTreeMap::new(),
            1,
        )
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
        let snap = snapshot(&cfg);
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

        // The pattern that matched, as written: what spans record as `http.route`.
        let template = |host: Option<&str>, path: &str| {
            snap.lookup_matched("public", host, path)
                .map(|m| (m.route.name.to_string(), m.template.to_string()))
                .unwrap()
        };
        assert_eq!(template(None, "/x"), ("any".into(), "/*".into()));
        assert_eq!(template(None, "/chat/x"), ("chat".into(), "/chat/*".into()));
        assert_eq!(
            template(None, "/chat/lobby"),
            ("chat_exact".into(), "/chat/lobby".into())
        );
        assert_eq!(
            template(Some("api.example.com"), "/v1/users"),
            ("api".into(), "/v1/*".into())
        );
    }

    const HOSTS: [Option<&str>; 5] = [
        None,
        Some("a.example.com"),
        Some("b.a.example.com"),
        Some("*.example.com"),
        Some("*.a.example.com"),
    ];
    const PATHS: [Option<&str>; 5] = [
        None,
        Some("/chat/*"),
        Some("/chat/lobby"),
        Some("/chat/lobby/*"),
        Some("/v1/*"),
    ];

    /// The README's matching order written as a ranking: among the rules whose host and path
    /// both match, the best host (exact, then the longest suffix, then any), then the best path
    /// (exact, then the longest prefix).
    fn expected(
        rules: &[(Option<&str>, Option<&str>)],
        host: Option<&str>,
        path: &str,
    ) -> Option<usize> {
        let host = host.map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase());
        let host_rank = |pattern: Option<&str>| -> Option<(u8, isize)> {
            match (pattern, &host) {
                (None, _) => Some((2, 0)),
                (Some(p), Some(h)) if p.starts_with("*.") => {
                    let suffix = &p[1..];
                    (h.len() > suffix.len() && h.ends_with(suffix))
                        .then(|| (1, -(suffix.len() as isize)))
                }
                (Some(p), Some(h)) => (p == h).then_some((0, 0)),
                (Some(_), None) => None,
            }
        };
        let path_rank = |pattern: Option<&str>| -> Option<(u8, isize)> {
            match pattern {
                None => Some((1, -1)),
                Some(p) => match p.strip_suffix('*') {
                    Some(prefix) => path
                        .starts_with(prefix)
                        .then(|| (1, -(prefix.len() as isize))),
                    None => (p == path).then_some((0, 0)),
                },
            }
        };
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, (h, p))| Some(((host_rank(*h)?, path_rank(*p)?), i)))
            .min()
            .map(|(_, i)| i)
    }

    proptest::proptest! {
        #[test]
        fn lookup_follows_the_documented_matching_order(
            chosen in proptest::sample::subsequence((0..25).collect::<Vec<usize>>(), 1..25),
            host in proptest::sample::select(vec![
                None,
                Some("a.example.com"),
                Some("B.A.example.com:8080"),
                Some("c.a.example.com"),
                Some("c.example.com"),
                Some("example.com"),
                Some("other.org"),
            ]),
            path in proptest::sample::select(vec![
                "/", "/chat/", "/chat/x", "/chat/lobby", "/chat/lobby/", "/chat/lobby/x",
                "/v1/users", "/v2",
            ]),
        ) {
            let rules: Vec<(Option<&str>, Option<&str>)> =
                chosen.iter().map(|i| (HOSTS[i / 5], PATHS[i % 5])).collect();
            let mut toml = String::from(
                "[listeners.public]\nbind = \"127.0.0.1:0\"\n[backend_pools.p]\nmembers = [\"127.0.0.1:1\"]\n[backend_settings.s]\n",
            );
            for (i, (h, p)) in rules.iter().enumerate() {
                toml.push_str(&format!(
                    "[routing_rules.r{i}]\nlistener = \"public\"\nbackend_pool = \"p\"\nbackend_settings = \"s\"\n"
                ));
                if let Some(h) = h {
                    toml.push_str(&format!("hosts = [\"{h}\"]\n"));
                }
                if let Some(p) = p {
                    toml.push_str(&format!("paths = [\"{p}\"]\n"));
                }
            }
            let snap = snapshot(&config(&toml));
            let got = snap.lookup("public", host, path).map(|r| r.name.to_string());
            let want = expected(&rules, host, path).map(|i| format!("r{i}"));
            proptest::prop_assert_eq!(got, want);
        }
    }
}
