//! What a reload may not do unless the operator says so: leave the sidecar serving nothing.
//!
//! A configuration without listeners or routing rules is valid (a sidecar can be started
//! idle), but *replacing* a serving configuration with one is almost always an accident: a file
//! caught half-written, a template that rendered empty, the wrong file. So a reload that would
//! remove every listener or every routing rule is refused unless the new configuration sets
//! `allow_empty = true`.

use std::fmt;

use crate::model::Config;

/// Why a reload was refused: it would remove every listener or every routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyReload {
    /// `"listeners"` or `"routing rules"`.
    pub what: &'static str,
    /// The names the running configuration has, all of which the reload would remove.
    pub running: Vec<String>,
}

impl fmt::Display for EmptyReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.running.iter().map(|n| format!("\"{n}\"")).collect();
        write!(
            f,
            "the new configuration has no {} (the running one has {}); a reload that removes \
             every listener or every routing rule needs allow_empty = true in the new configuration",
            self.what,
            names.join(", ")
        )
    }
}

impl std::error::Error for EmptyReload {}

impl Config {
    /// Whether `self` may replace `running` in a reload: refused when `running` has listeners
    /// and `self` has none, or `running` has routing rules and `self` has none — unless `self`
    /// sets `allow_empty = true`. Removing some of them is an ordinary reload.
    pub fn check_replaces(&self, running: &Config) -> Result<(), EmptyReload> {
        if self.allow_empty {
            return Ok(());
        }
        let emptied = |what, new_empty: bool, running: Vec<&String>| {
            (new_empty && !running.is_empty()).then(|| EmptyReload {
                what,
                running: running.into_iter().cloned().collect(),
            })
        };
        let listeners = emptied(
            "listeners",
            self.listeners.is_empty(),
            running.listeners.keys().collect(),
        );
        let rules = emptied(
            "routing rules",
            self.routing_rules.is_empty(),
            running.routing_rules.keys().collect(),
        );
        match listeners.or(rules) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::from_toml_str;

    const RUNNING: &str = r#"
[listeners.public]
bind = "127.0.0.1:8080"
[listeners.extra]
bind = "127.0.0.1:8081"
[backend_pools.chat]
members = ["127.0.0.1:5000"]
[backend_settings.chat]
[routing_rules.chat]
listener = "public"
backend_pool = "chat"
backend_settings = "chat"
"#;

    #[test]
    fn removing_every_listener_or_rule_is_refused_without_allow_empty() {
        let running = from_toml_str(RUNNING).unwrap();
        let nothing = from_toml_str("workers = 1").unwrap();
        let err = nothing.check_replaces(&running).unwrap_err();
        assert_eq!(err.what, "listeners");
        assert_eq!(err.running, ["extra", "public"]);
        assert!(err.to_string().contains("allow_empty = true"), "{err}");

        // Listeners kept, every rule gone.
        let no_rules = from_toml_str("[listeners.public]\nbind = \"127.0.0.1:8080\"").unwrap();
        let err = no_rules.check_replaces(&running).unwrap_err();
        assert_eq!(err.what, "routing rules");
        assert_eq!(err.running, ["chat"]);

        // Said explicitly: allowed.
        let allowed = from_toml_str("allow_empty = true").unwrap();
        assert!(allowed.allow_empty);
        assert_eq!(allowed.check_replaces(&running), Ok(()));
    }

    #[test]
    fn removing_some_or_replacing_nothing_with_nothing_is_allowed() {
        let running = from_toml_str(RUNNING).unwrap();
        let fewer =
            from_toml_str(&RUNNING.replace("[listeners.extra]\nbind = \"127.0.0.1:8081\"\n", ""))
                .unwrap();
        assert_eq!(fewer.listeners.len(), 1);
        assert_eq!(fewer.check_replaces(&running), Ok(()));
        let idle = from_toml_str("workers = 1").unwrap();
        assert_eq!(idle.check_replaces(&idle), Ok(()));
        assert!(!idle.allow_empty, "off by default");
    }
}
