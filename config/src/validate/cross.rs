//! Checks that span entries: references between tables, the keepalive/timeout trap,
//! overlapping rules, one prober per pool, clashing binds, and unused tables (warnings). They
//! run on the converted values, after every entry has been converted.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::Checker;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::{Declared, RawConfig, RawRoutingRule};
use crate::units::format_duration;

impl Checker<'_> {
    /// Every name a rule or settings table refers to must exist.
    pub(super) fn references(&mut self, raw: &RawConfig, declared: &Declared) {
        for (name, rule) in &raw.routing_rules {
            let refs = [
                ("listener", &rule.listener, &declared.listeners, "listener"),
                (
                    "backend_pool",
                    &rule.backend_pool,
                    &declared.backend_pools,
                    "backend pool",
                ),
                (
                    "backend_settings",
                    &rule.backend_settings,
                    &declared.backend_settings,
                    "backend settings",
                ),
            ];
            for (field, value, names, what) in refs {
                self.reference(
                    &format!("routing_rules.{name}.{field}"),
                    value.as_deref(),
                    names,
                    what,
                );
            }
        }
        for (name, settings) in &raw.backend_settings {
            let path = format!("backend_settings.{name}.probe");
            self.reference(&path, settings.probe.as_deref(), &declared.probes, "probe");
        }
    }

    pub(super) fn reference(
        &mut self,
        path: &str,
        target: Option<&str>,
        names: &[String],
        what: &str,
    ) {
        if let Some(target) = target {
            if !names.iter().any(|n| n == target) {
                let hint = did_you_mean(target, names.iter().map(String::as_str));
                self.error(path, format!("no {what} named \"{target}\"{hint}"));
            }
        }
    }

    /// Per-session limits that cannot work as written: rate limits need frame boundaries
    /// (`inspect = "frames"`), and a drain's spread must fit in the grace periods it is spread
    /// within (`drain_grace`, and `shutdown_grace` when known).
    pub(super) fn session_limits(
        &mut self,
        rules: &BTreeMap<String, RoutingRuleConfig>,
        shutdown_grace: Option<std::time::Duration>,
    ) {
        for (name, rule) in rules {
            let ws = &rule.websocket;
            let at = |field: &str| format!("routing_rules.{name}.websocket.{field}");
            if ws.inspect == Inspect::Opaque {
                for (field, set) in [
                    (
                        "max_messages_per_second",
                        ws.max_messages_per_second.is_some(),
                    ),
                    ("max_bytes_per_second", ws.max_bytes_per_second.is_some()),
                ] {
                    if set {
                        self.error(
                            &at(field),
                            "needs inspect = \"frames\": an opaque session has no frame boundaries to count at",
                        );
                    }
                }
            }
            let spread = ws.drain_spread;
            if spread.is_zero() {
                continue;
            }
            if spread >= ws.drain_grace {
                self.error(
                    &at("drain_spread"),
                    format!(
                        "must be shorter than drain_grace ({}): the last close frame must go out within it",
                        format_duration(ws.drain_grace)
                    ),
                );
            }
            if let Some(grace) = shutdown_grace.filter(|g| spread >= *g) {
                self.error(
                    &at("drain_spread"),
                    format!(
                        "must be shorter than shutdown_grace ({}): a shutdown drain spreads its close frames within it",
                        format_duration(grace)
                    ),
                );
            }
        }
    }

    /// Application Gateway's documented pitfall, turned into an error: the backend request
    /// timeout also bounds an idle WebSocket session, so it must outlast the ping interval.
    ///
    /// Only a `keepalive_interval` the configuration sets is held to this. When it is left to
    /// its default and the rule's `request_timeout` is not above [`DEFAULT_KEEPALIVE_INTERVAL`]
    /// (an HTTP API with `request_timeout = "5s"`), the default becomes half the request
    /// timeout, so a WebSocket on that rule is still pinged in time; nothing to fix.
    pub(super) fn keepalive_trap(
        &mut self,
        raw: &RawConfig,
        rules: &mut BTreeMap<String, RoutingRuleConfig>,
        settings: &BTreeMap<String, BackendSettingsConfig>,
    ) {
        for (name, rule) in rules.iter_mut() {
            let keepalive = rule.websocket.keepalive_interval;
            let Some(s) = settings.get(&rule.backend_settings) else {
                continue;
            };
            let set = raw
                .routing_rules
                .get(name)
                .and_then(|r| r.websocket.as_ref())
                .is_some_and(|w| w.keepalive_interval.is_some());
            if keepalive.is_zero() || s.request_timeout > keepalive {
                continue;
            }
            if !set {
                rule.websocket.keepalive_interval = s.request_timeout / 2;
                continue;
            }
            self.error(
                &format!("backend_settings.{}.request_timeout", s.name),
                format!(
                    "{} must exceed the keepalive_interval {} of routing rule \"{name}\": an idle \
                     WebSocket session would be cut by the request timeout before the first ping, and \
                     clients would see close code 1006 (the Application Gateway pitfall); raise \
                     request_timeout (e.g. to {}) or lower routing_rules.{name}.websocket.keepalive_interval \
                     (\"0s\" turns pings off, for a rule that serves no WebSockets)",
                    format_duration(s.request_timeout),
                    format_duration(keepalive),
                    format_duration(keepalive.saturating_mul(2)),
                ),
            );
        }
    }

    /// Two rules on one listener must not claim the same (host, path).
    pub(super) fn overlapping_rules(&mut self, rules: &BTreeMap<String, RoutingRuleConfig>) {
        let mut claims = BTreeMap::new();
        let mut reported = BTreeSet::new();
        for (name, rule) in rules {
            // No hosts means any host (`None`); no paths means every path (`None`).
            let hosts: Vec<Option<&HostPattern>> = if rule.hosts.is_empty() {
                vec![None]
            } else {
                rule.hosts.iter().map(Some).collect()
            };
            let paths: Vec<Option<&PathPattern>> = if rule.paths.is_empty() {
                vec![None]
            } else {
                rule.paths.iter().map(Some).collect()
            };
            for &host in &hosts {
                for &path in &paths {
                    let other = match claims.entry((rule.listener.as_str(), host, path)) {
                        Entry::Vacant(e) => {
                            e.insert(name.as_str());
                            continue;
                        }
                        Entry::Occupied(e) => *e.get(),
                    };
                    if !reported.insert((other, name.as_str())) {
                        continue;
                    }
                    let field = match (rule.paths.is_empty(), rule.hosts.is_empty()) {
                        (false, _) => format!("routing_rules.{name}.paths"),
                        (true, false) => format!("routing_rules.{name}.hosts"),
                        (true, true) => format!("routing_rules.{name}"),
                    };
                    let host = host.map_or("any host".to_owned(), |h| format!("host \"{h}\""));
                    let path = path.map_or("every path".to_owned(), |p| format!("path \"{p}\""));
                    self.error(
                        &field,
                        format!(
                            "routing rules \"{other}\" and \"{name}\" both claim {host}, {path} on listener \"{}\"",
                            rule.listener
                        ),
                    );
                }
            }
        }
    }

    /// One pool has one prober: every rule that uses a pool must agree on the probe and the
    /// port it probes, or the pool's health would depend on which rule looked.
    pub(super) fn pool_probes(
        &mut self,
        rules: &BTreeMap<String, RoutingRuleConfig>,
        settings: &BTreeMap<String, BackendSettingsConfig>,
        probes: &BTreeMap<String, ProbeConfig>,
    ) {
        // pool -> (rule, probe name, probed port) of the first rule that probes it
        let mut first: BTreeMap<&str, (&str, &str, Option<u16>)> = BTreeMap::new();
        for (rule_name, rule) in rules {
            let Some(s) = settings.get(&rule.backend_settings) else {
                continue;
            };
            let Some(probe) = s.probe.as_ref().and_then(|p| probes.get(p)) else {
                continue;
            };
            let port = probe.port.or(s.port);
            match first.entry(rule.backend_pool.as_str()) {
                Entry::Vacant(e) => {
                    e.insert((rule_name, probe.name.as_str(), port));
                }
                Entry::Occupied(e) => {
                    let (other, other_probe, other_port) = *e.get();
                    if other_probe != probe.name || other_port != port {
                        let port_text = |p: Option<u16>| {
                            p.map_or("each member's port".to_owned(), |p| format!("port {p}"))
                        };
                        self.error(
                            &format!("routing_rules.{rule_name}.backend_settings"),
                            format!(
                                "backend pool \"{}\" would be probed by probe \"{}\" on {} here but by probe \"{other_probe}\" \
                                 on {} through routing rule \"{other}\"; a pool has one prober, so rules sharing a pool \
                                 must use settings with the same probe and port",
                                rule.backend_pool,
                                probe.name,
                                port_text(port),
                                port_text(other_port),
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A source address reaches only members of its own family (an IPv4 socket cannot connect
    /// to an IPv6 member): every `source_addresses` entry must match each IP member of every
    /// pool a rule pairs with those settings. Members given by DNS name are matched at connect
    /// time (entries of the other family are skipped for them).
    pub(super) fn source_families(
        &mut self,
        rules: &BTreeMap<String, RoutingRuleConfig>,
        settings: &BTreeMap<String, BackendSettingsConfig>,
        pools: &BTreeMap<String, BackendPoolConfig>,
    ) {
        let mut reported: BTreeSet<(&str, usize)> = BTreeSet::new();
        for rule in rules.values() {
            let (Some(s), Some(pool)) = (
                settings.get(&rule.backend_settings),
                pools.get(&rule.backend_pool),
            ) else {
                continue;
            };
            for (i, source) in s.source_addresses.iter().enumerate() {
                let other_family = pool.members.iter().find_map(|m| match m.address {
                    Member::Addr(addr) if addr.is_ipv4() != source.is_ipv4() => Some(addr),
                    _ => None,
                });
                let Some(member) = other_family else {
                    continue;
                };
                if reported.insert((s.name.as_str(), i)) {
                    let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
                    self.error(
                        &format!("backend_settings.{}.source_addresses[{i}]", s.name),
                        format!(
                            "{source} is an {} address but member {member} of backend pool \"{}\" \
                             (routing rule \"{}\") is {}: a connection's source and destination \
                             are of one family",
                            family(source.is_ipv4()),
                            pool.name,
                            rule.name,
                            family(member.is_ipv4()),
                        ),
                    );
                }
            }
        }
    }

    /// A probe that speaks HTTP/1.1 to members that the settings reach over HTTP/2 fails on
    /// every member that speaks only HTTP/2 (most gRPC servers): a warning, since some servers
    /// speak both on one port.
    pub(super) fn probe_protocols(
        &mut self,
        settings: &BTreeMap<String, BackendSettingsConfig>,
        probes: &BTreeMap<String, ProbeConfig>,
    ) {
        for (name, s) in settings {
            let Some(probe) = s.probe.as_ref().and_then(|p| probes.get(p)) else {
                continue;
            };
            if s.protocol.is_http2() && !probe.protocol.is_http2() {
                let wanted = if s.protocol.uses_tls() { "h2" } else { "h2c" };
                self.warn(
                    &format!("probes.{}.protocol", probe.name),
                    &format!(
                        "probes over HTTP/1.1 members that backend settings \"{name}\" reach over HTTP/2; \
                         a member that only speaks HTTP/2 fails every probe: set protocol = \"{wanted}\""
                    ),
                );
            }
        }
    }

    /// Two sockets cannot bind the same port on overlapping addresses.
    pub(super) fn clashing_binds(
        &mut self,
        admin: Option<&AdminConfig>,
        listeners: &BTreeMap<String, ListenerConfig>,
    ) {
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() != 0
                && a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        let all: Vec<(&str, SocketAddr)> = listeners
            .iter()
            .map(|(n, l)| (n.as_str(), l.bind))
            .collect();
        for (i, &(name, bind)) in all.iter().enumerate() {
            if let Some((other, _)) = all[..i].iter().find(|&&(_, b)| clash(b, bind)) {
                self.error(
                    &format!("listeners.{name}.bind"),
                    format!("{bind} overlaps the bind address of listener \"{other}\""),
                );
            }
        }
        if let Some(admin) = admin {
            if let Some((other, _)) = all.iter().find(|&&(_, b)| clash(b, admin.bind)) {
                self.error(
                    "admin.bind",
                    format!(
                        "{} overlaps the bind address of listener \"{other}\"",
                        admin.bind
                    ),
                );
            }
        }
    }

    /// Tables nothing refers to are probably mistakes, but harmless: warnings.
    pub(super) fn unused(&mut self, raw: &RawConfig, declared: &Declared) {
        let rules = raw.routing_rules.values();
        let used = |pick: fn(&RawRoutingRule) -> &Option<String>| -> BTreeSet<&str> {
            rules.clone().filter_map(|r| pick(r).as_deref()).collect()
        };
        let probes: BTreeSet<&str> = raw
            .backend_settings
            .values()
            .filter_map(|s| s.probe.as_deref())
            .collect();
        let checks = [
            (
                "listeners",
                &declared.listeners,
                used(|r| &r.listener),
                "no routing rule uses this listener",
            ),
            (
                "backend_pools",
                &declared.backend_pools,
                used(|r| &r.backend_pool),
                "no routing rule uses this backend pool",
            ),
            (
                "backend_settings",
                &declared.backend_settings,
                used(|r| &r.backend_settings),
                "no routing rule uses these backend settings",
            ),
            (
                "probes",
                &declared.probes,
                probes,
                "no backend settings use this probe",
            ),
        ];
        for (section, names, used, message) in checks {
            for name in names.iter().filter(|n| !used.contains(n.as_str())) {
                self.warn(&format!("{section}.{name}"), message);
            }
        }
        if declared.routing_rules.is_empty() && !declared.listeners.is_empty() {
            self.warn(
                "routing_rules",
                "no routing rules: the listeners will proxy nothing",
            );
        }
    }
}
