//! What a reload changes, and why one is refused: the pure part of a reload, with no I/O.
//!
//! [`ListenerDiff::new`] compares the running configuration's listeners with the new one's and
//! says which are added, moved (another address or protocol: a new socket), reconfigured in
//! place (applied at the next restart) or removed, and refuses what a reload cannot do (an
//! https listener's certificates are loaded at start-up). [`keep_restart_settings`] carries the
//! settings only a restart applies over into the new configuration. `Running::reload` does the
//! I/O around them; every refusal it can give is a [`ReloadError`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use tether_actors::messages::ConfigChange;
use tether_config::{Config, ConfigErrors, EmptyReload, ListenerProtocol};

/// Why a reload was refused. Nothing changed: the running configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration could not be loaded or is invalid: every problem, one per line,
    /// each naming its source.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// It would remove every listener or every routing rule without `allow_empty = true`.
    #[error(transparent)]
    Empty(#[from] EmptyReload),
    /// An https listener would be added, moved or reconfigured: its certificates are loaded at
    /// start-up, so that takes a restart.
    #[error(
        "listener \"{listener}\": {} an https listener takes a restart (its certificates are loaded at start-up)",
        change.gerund()
    )]
    HttpsListener {
        /// The listener's name.
        listener: String,
        /// What the reload would do to it.
        change: ListenerChange,
    },
    /// An added or moved listener's address could not be bound.
    #[error("listener \"{listener}\": cannot bind {addr}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An added or moved listener's socket could not be duplicated for every worker.
    #[error("listener \"{listener}\": cannot duplicate its socket: {source}")]
    Duplicate {
        /// The listener's name.
        listener: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The route table no longer answers (the sidecar is stopping).
    #[error("the route table is not running")]
    RouteTableGone,
}

/// A refused reload as it is logged, counted in `GET /status` and answered to whoever asked:
/// the cause, and where the configuration came from.
///
/// Displays the cause followed by ` [origin]` (`... [file ./tether.toml]`), except for
/// [`ReloadError::Invalid`], whose every line names its source already.
#[derive(Debug, thiserror::Error)]
pub struct ReloadRefusal {
    /// Why it was refused.
    #[source]
    pub error: ReloadError,
    /// Where the configuration came from, as a source label (`file ./tether.toml`, `inline`).
    pub origin: String,
}

impl fmt::Display for ReloadRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            ReloadError::Invalid(problems) => write!(f, "{problems}"),
            error => write!(f, "{error} [{}]", self.origin),
        }
    }
}

/// What an applied reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Pools added and removed, and the sessions drained because their route is gone.
    pub routes: ConfigChange,
    /// What happened to each listener that differs (unchanged ones are left out).
    pub listeners: ListenerDiff,
    /// Settings that differ but take effect at the next restart (`workers`, `admin`,
    /// `telemetry`): the running values were kept.
    pub deferred: Vec<&'static str>,
}

/// What a reload does to one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerChange {
    /// New: bound and started on every worker.
    Added,
    /// Another address or protocol: the new address is bound first, then the old one stops
    /// accepting.
    Moved,
    /// Same address and protocol, other settings (limits, timeouts...): a new socket would race
    /// the old one for the port, so the listener keeps running as it is until the next restart.
    Reconfigured,
    /// Gone: stops accepting (its open connections finish).
    Removed,
}

impl ListenerChange {
    /// `adding`, `moving`, ...: how the change reads in a sentence.
    fn gerund(self) -> &'static str {
        match self {
            ListenerChange::Added => "adding",
            ListenerChange::Moved => "moving",
            ListenerChange::Reconfigured => "reconfiguring",
            ListenerChange::Removed => "removing",
        }
    }
}

/// Every listener a reload changes, by name (unchanged ones are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerDiff(pub BTreeMap<String, ListenerChange>);

impl ListenerDiff {
    /// Compares the running configuration's listeners with the new one's. Refused when an https
    /// listener would be added, moved or reconfigured (removing one is fine); the first such
    /// listener by name is named.
    pub fn new(old: &Config, new: &Config) -> Result<ListenerDiff, ReloadError> {
        let mut changes = BTreeMap::new();
        for (name, listener) in &new.listeners {
            let change = match old.listeners.get(name) {
                None => ListenerChange::Added,
                Some(o) if o == listener => continue,
                Some(o) if o.bind != listener.bind || o.protocol != listener.protocol => {
                    ListenerChange::Moved
                }
                Some(_) => ListenerChange::Reconfigured,
            };
            if listener.protocol == ListenerProtocol::Https {
                return Err(ReloadError::HttpsListener {
                    listener: name.clone(),
                    change,
                });
            }
            changes.insert(name.clone(), change);
        }
        for name in old.listeners.keys() {
            if !new.listeners.contains_key(name) {
                changes.insert(name.clone(), ListenerChange::Removed);
            }
        }
        Ok(ListenerDiff(changes))
    }

    /// The listeners to bind and start: added and moved.
    pub fn to_start(&self) -> impl Iterator<Item = &str> {
        self.with(|c| matches!(c, ListenerChange::Added | ListenerChange::Moved))
    }

    /// The listeners to stop accepting on: removed and moved.
    pub fn to_stop(&self) -> impl Iterator<Item = &str> {
        self.with(|c| matches!(c, ListenerChange::Removed | ListenerChange::Moved))
    }

    /// The listeners whose new settings wait for the next restart.
    pub fn deferred(&self) -> impl Iterator<Item = &str> {
        self.with(|c| c == ListenerChange::Reconfigured)
    }

    fn with(&self, keep: impl Fn(ListenerChange) -> bool) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(_, change)| keep(**change))
            .map(|(name, _)| name.as_str())
    }
}

/// Carries the settings only a restart applies (`workers`, `admin.bind`, `telemetry`) from
/// `running` over into `new`, and answers which of them `new` wanted changed.
pub(crate) fn keep_restart_settings(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let deferred = [
        ("workers", running.workers != new.workers),
        ("admin", running.admin.bind != new.admin.bind),
        ("telemetry", running.telemetry != new.telemetry),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect();
    new.workers = running.workers;
    new.admin.bind = running.admin.bind;
    new.telemetry = running.telemetry.clone();
    deferred
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with `listeners` (TOML tables after `[listeners.NAME]`) and one route
    /// on the first.
    fn config(listeners: &str) -> Config {
        tether_config::from_toml_str(&format!(
            "{listeners}\n[backend_pools.p]\nmembers = [\"127.0.0.1:5000\"]\n\
             [backend_settings.s]\n[routing_rules.r]\nlistener = \"a\"\nbackend_pool = \"p\"\n\
             backend_settings = \"s\"\n"
        ))
        .unwrap()
    }

    const A: &str = "[listeners.a]\nbind = \"127.0.0.1:8080\"\n";

    fn changes(diff: &ListenerDiff) -> Vec<(&str, ListenerChange)> {
        diff.0.iter().map(|(n, c)| (n.as_str(), *c)).collect()
    }

    #[test]
    fn an_unchanged_configuration_changes_no_listener() {
        let diff = ListenerDiff::new(&config(A), &config(A)).unwrap();
        assert_eq!(diff, ListenerDiff::default());
    }

    #[test]
    fn listeners_are_added_moved_reconfigured_and_removed() {
        let old = config(&format!(
            "{A}[listeners.b]\nbind = \"127.0.0.1:8081\"\n[listeners.c]\nbind = \"127.0.0.1:8082\"\n"
        ));
        let new = config(&format!(
            "{A}max_connections = 10\n[listeners.b]\nbind = \"127.0.0.1:9081\"\n\
             [listeners.d]\nbind = \"127.0.0.1:8083\"\n"
        ));
        let diff = ListenerDiff::new(&old, &new).unwrap();
        assert_eq!(
            changes(&diff),
            [
                ("a", ListenerChange::Reconfigured),
                ("b", ListenerChange::Moved),
                ("c", ListenerChange::Removed),
                ("d", ListenerChange::Added),
            ]
        );
        assert_eq!(diff.to_start().collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(diff.to_stop().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(diff.deferred().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn an_https_listener_cannot_be_added_but_can_be_removed() {
        let https = "[listeners.tls]\nbind = \"127.0.0.1:8443\"\nprotocol = \"https\"\n\
                     [[listeners.tls.certificates]]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let with = config(&format!("{A}{https}"));
        let err = ListenerDiff::new(&config(A), &with).unwrap_err();
        assert!(
            matches!(
                &err,
                ReloadError::HttpsListener { listener, change: ListenerChange::Added }
                    if listener == "tls"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "listener \"tls\": adding an https listener takes a restart (its certificates are \
             loaded at start-up)"
        );
        let diff = ListenerDiff::new(&with, &config(A)).unwrap();
        assert_eq!(changes(&diff), [("tls", ListenerChange::Removed)]);
    }

    #[test]
    fn an_https_listener_cannot_be_moved_or_reconfigured() {
        let https = |port: u16, extra: &str| {
            config(&format!(
                "{A}[listeners.tls]\nbind = \"127.0.0.1:{port}\"\nprotocol = \"https\"\n{extra}\
                 [[listeners.tls.certificates]]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n"
            ))
        };
        let old = https(8443, "");
        for (new, change) in [
            (https(9443, ""), ListenerChange::Moved),
            (
                https(8443, "max_connections = 5\n"),
                ListenerChange::Reconfigured,
            ),
        ] {
            match ListenerDiff::new(&old, &new) {
                Err(ReloadError::HttpsListener { change: c, .. }) => assert_eq!(c, change),
                other => panic!("{change:?}: {other:?}"),
            }
        }
        assert!(ListenerDiff::new(&old, &https(8443, "")).is_ok());
    }

    #[test]
    fn a_protocol_change_on_the_same_address_is_a_move() {
        let redirect = "[listeners.b]\nbind = \"127.0.0.1:8081\"\n";
        let old = config(&format!("{A}{redirect}"));
        let mut new = old.clone();
        new.listeners.get_mut("b").unwrap().protocol = ListenerProtocol::Https;
        assert!(matches!(
            ListenerDiff::new(&old, &new),
            Err(ReloadError::HttpsListener {
                change: ListenerChange::Moved,
                ..
            })
        ));
        let diff = ListenerDiff::new(&new, &old).unwrap();
        assert_eq!(changes(&diff), [("b", ListenerChange::Moved)]);
    }

    #[test]
    fn restart_only_settings_are_kept_and_named() {
        let running = config(A);
        let mut new = running.clone();
        assert!(keep_restart_settings(&running, &mut new).is_empty());
        new.workers = running.workers + 3;
        new.admin.bind = "127.0.0.1:1".parse().unwrap();
        new.admin.token = Some("changed live".into());
        new.telemetry.service_name = "other".into();
        assert_eq!(
            keep_restart_settings(&running, &mut new),
            ["workers", "admin", "telemetry"]
        );
        assert_eq!(new.workers, running.workers);
        assert_eq!(new.admin.bind, running.admin.bind);
        assert_eq!(new.telemetry, running.telemetry);
        assert_eq!(new.admin.token.as_deref(), Some("changed live"));
    }

    #[test]
    fn a_refusal_names_its_origin_unless_its_problems_name_theirs() {
        let refused = |error| ReloadRefusal {
            error,
            origin: "file ./tether.toml".into(),
        };
        assert_eq!(
            refused(ReloadError::RouteTableGone).to_string(),
            "the route table is not running [file ./tether.toml]"
        );
        let bind = refused(ReloadError::Bind {
            listener: "extra".into(),
            addr: "127.0.0.1:80".parse().unwrap(),
            source: std::io::ErrorKind::AddrInUse.into(),
        });
        assert!(
            bind.to_string()
                .starts_with("listener \"extra\": cannot bind 127.0.0.1:80: "),
            "{bind}"
        );
        let problems = tether_config::from_toml_str("workers = \"x\"").unwrap_err();
        let text = problems.to_string();
        assert_eq!(refused(ReloadError::Invalid(problems)).to_string(), text);
    }
}
