//! Raw → model: parses every value, applies defaults, then checks what spans fields
//! (references between tables, the keepalive/timeout trap, overlapping rules, clashing
//! binds). It never stops at the first problem: every error is collected, each with its
//! field path and the layer that set the value.
//!
//! This file holds the order of the work and the [`Checker`] that collects errors; the
//! conversion of each entry is in `convert`, the checks across entries in `cross`, the TLS
//! fields and files in `tls`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use crate::error::{ConfigError, ParseError};
use crate::model::*;
use crate::raw::{Declared, RawConfig};
use crate::tree::Node;
use crate::units::parse_duration;

mod convert;
mod cross;
mod tls;
pub(crate) use tls::check_files as check_tls_files;

/// A valid configuration and the warnings found on the way.
pub(crate) struct Validated {
    pub(crate) config: Config,
    pub(crate) warnings: Vec<String>,
}

/// Converts and checks `raw`. `errors` are the structural errors already found while
/// reading it; they are reported together with everything found here.
pub(crate) fn validate(
    raw: &RawConfig,
    declared: &Declared,
    root: &Node,
    errors: Vec<ConfigError>,
) -> Result<Validated, Vec<ConfigError>> {
    let mut c = Checker {
        root,
        errors,
        warnings: Vec::new(),
    };
    c.names(declared);

    let workers = match raw.workers.unwrap_or(DEFAULT_WORKERS) {
        0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    };
    let shutdown_grace = c.duration(
        "shutdown_grace",
        raw.shutdown_grace.as_ref(),
        DEFAULT_SHUTDOWN_GRACE,
    );
    let shutdown_delay = c.shutdown_delay(raw);
    let shutdown_close_code = c.shutdown_close_code(raw);
    let admin = c.admin(raw);
    let telemetry = c.telemetry(raw);
    let dns = c.dns(raw);
    let listeners = convert(&raw.listeners, |name, l| c.listener(name, l));
    let backend_pools = convert(&raw.backend_pools, |name, p| c.pool(name, p));
    let backend_settings = convert(&raw.backend_settings, |name, s| c.settings(name, s));
    let probes = convert(&raw.probes, |name, p| c.probe(name, p));
    let mut routing_rules = convert(&raw.routing_rules, |name, r| c.rule(name, r));

    c.references(raw, declared);
    c.keepalive_trap(raw, &mut routing_rules, &backend_settings);
    c.session_limits(&routing_rules, shutdown_grace);
    c.overlapping_rules(&routing_rules);
    c.clashing_binds(admin.as_ref(), &listeners);
    c.pool_probes(&routing_rules, &backend_settings, &probes);
    c.probe_protocols(&backend_settings, &probes);
    c.source_families(&routing_rules, &backend_settings, &backend_pools);
    c.redirects(&listeners);
    c.unused(raw, declared);

    let Checker {
        mut errors,
        warnings,
        ..
    } = c;
    match (
        shutdown_grace,
        shutdown_delay,
        shutdown_close_code,
        admin,
        telemetry,
        dns,
    ) {
        (
            Some(shutdown_grace),
            Some(shutdown_delay),
            Some(shutdown_close_code),
            Some(admin),
            Some(telemetry),
            Some(dns),
        ) if errors.is_empty() => Ok(Validated {
            config: Config {
                workers,
                shutdown_grace,
                shutdown_delay,
                shutdown_close_code,
                admin,
                telemetry,
                listeners,
                backend_pools,
                backend_settings,
                probes,
                routing_rules,
                dns,
                allow_empty: raw.allow_empty.unwrap_or(DEFAULT_ALLOW_EMPTY),
            },
            warnings,
        }),
        _ => {
            // By field path, so that the problems of one entry read together.
            errors.sort_by(|a, b| a.path.cmp(&b.path));
            Err(errors)
        }
    }
}

/// Converts every entry of a named table, keeping those that converted.
fn convert<R, T>(
    raw: &BTreeMap<String, R>,
    mut f: impl FnMut(&str, &R) -> Option<T>,
) -> BTreeMap<String, T> {
    raw.iter()
        .filter_map(|(name, r)| Some((name.clone(), f(name, r)?)))
        .collect()
}

struct Checker<'a> {
    root: &'a Node,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Checker<'_> {
    /// Records an error at `path`, labelled with the layer that set `path`.
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let source = self.root.source_of(path).to_owned();
        self.errors.push(ConfigError::new(path, message, source));
    }

    fn warn(&mut self, path: &str, message: &str) {
        let source = self.root.source_of(path);
        self.warnings.push(format!("{path}: {message} [{source}]"));
    }

    fn ok<T>(&mut self, path: &str, result: Result<T, ParseError>) -> Option<T> {
        result.map_err(|e| self.error(path, e.0)).ok()
    }

    /// A required field: missing is an error labelled with the enclosing table's layer.
    fn required<'r>(
        &mut self,
        entry: &str,
        field: &str,
        value: &'r Option<String>,
    ) -> Option<&'r str> {
        if value.is_none() {
            let source = self.root.source_of(entry).to_owned();
            self.errors.push(ConfigError::new(
                format!("{entry}.{field}"),
                "missing required field",
                source,
            ));
        }
        value.as_deref()
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&String>,
        default: Duration,
    ) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(s) => self.ok(path, parse_duration(s)),
        }
    }

    /// A duration that must not be zero.
    fn timeout(
        &mut self,
        path: &str,
        value: Option<&String>,
        default: Duration,
    ) -> Option<Duration> {
        let d = self.duration(path, value, default)?;
        if d.is_zero() {
            self.error(path, "must be more than 0s");
            return None;
        }
        Some(d)
    }

    fn bind(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        let parsed = value.parse().map_err(|_| {
            ParseError::new(format!(
                "invalid address \"{value}\": expected ip:port, e.g. \"0.0.0.0:8080\""
            ))
        });
        self.ok(path, parsed)
    }

    /// Parses every element; `None` if any failed (each failure is reported at `path[i]`).
    fn list<T>(
        &mut self,
        path: &str,
        items: Option<&Vec<String>>,
        parse: impl Fn(&str) -> Result<T, ParseError>,
    ) -> Option<Vec<T>> {
        let mut all_ok = true;
        let mut out = Vec::new();
        for (i, item) in items.into_iter().flatten().enumerate() {
            match parse(item) {
                Ok(v) => out.push(v),
                Err(e) => {
                    self.error(&format!("{path}[{i}]"), e.0);
                    all_ok = false;
                }
            }
        }
        all_ok.then_some(out)
    }

    /// An element listed twice is a mistake (usually a copy-paste one).
    fn no_duplicates<T: PartialEq + std::fmt::Display>(&mut self, path: &str, items: &[T]) -> bool {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                self.error(
                    &format!("{path}[{i}]"),
                    format!("\"{item}\" is listed twice"),
                );
                return false;
            }
        }
        true
    }

    /// Entry names become parts of environment variable names, so they are restricted.
    fn names(&mut self, declared: &Declared) {
        for (section, names) in declared.sections() {
            for name in names {
                let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !name.contains("__");
                if !valid {
                    self.error(
                        &format!("{section}.{name}"),
                        format!(
                            "invalid name \"{name}\": names must match ^[a-z][a-z0-9_]*$ and not contain \"__\", \
                             so that every field has an environment variable name (TETHER_{}__<NAME>__<FIELD>)",
                            section.to_ascii_uppercase()
                        ),
                    );
                }
            }
        }
    }
}

/// Checks that this host has every `backend_settings.NAME.source_addresses` entry, by binding
/// a UDP socket to it (port 0, closed at once): an address the host does not have would fail
/// every connection from it. Run by [`crate::load`] (start-up, reload and `tether check`), not by
/// [`crate::from_toml_str`], so that configurations can be built on any machine. An address
/// removed from the host later is skipped at connect time instead.
pub(crate) fn check_source_addresses(root: &Node, config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, s) in &config.backend_settings {
        for (i, ip) in s.source_addresses.iter().enumerate() {
            if let Err(e) = std::net::UdpSocket::bind(SocketAddr::new(*ip, 0)) {
                let path = format!("backend_settings.{name}.source_addresses[{i}]");
                let message = format!(
                    "{ip} is not an address this host can send from ({e}): list addresses \
                     of this host's interfaces (`ip -brief address`)"
                );
                let source = root.source_of(&path).to_owned();
                errors.push(ConfigError::new(path, message, source));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests;
