//! Raw → model: parses every value, applies defaults, then checks what spans fields
//! (references between tables, the keepalive/timeout trap, overlapping rules, clashing
//! binds). It never stops at the first problem: every error is collected, each with its
//! field path and the layer that set the value.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::error::{did_you_mean, ConfigError, ParseError};
use crate::model::*;
use crate::raw::{
    Declared, RawBackendPool, RawBackendSettings, RawConfig, RawListener, RawProbe, RawRoutingRule,
};
use crate::sources::Node;
use crate::units::{format_duration, format_size, parse_duration, parse_size};

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
    let shutdown_close_code = c.shutdown_close_code(raw);
    let admin = c.admin(raw);
    let telemetry = c.telemetry(raw);
    let dns = c.dns(raw);
    let listeners = convert(&raw.listeners, |name, l| c.listener(name, l));
    let backend_pools = convert(&raw.backend_pools, |name, p| c.pool(name, p));
    let backend_settings = convert(&raw.backend_settings, |name, s| c.settings(name, s));
    let probes = convert(&raw.probes, |name, p| c.probe(name, p));
    let routing_rules = convert(&raw.routing_rules, |name, r| c.rule(name, r));

    c.references(raw, declared);
    c.keepalive_trap(&routing_rules, &backend_settings);
    c.overlapping_rules(&routing_rules);
    c.clashing_binds(admin.as_ref(), &listeners);
    c.pool_probes(&routing_rules, &backend_settings, &probes);
    c.redirects(&listeners);
    c.unused(raw, declared);

    let Checker {
        mut errors,
        warnings,
        ..
    } = c;
    match (shutdown_grace, shutdown_close_code, admin, telemetry, dns) {
        (
            Some(shutdown_grace),
            Some(shutdown_close_code),
            Some(admin),
            Some(telemetry),
            Some(dns),
        ) if errors.is_empty() => Ok(Validated {
            config: Config {
                workers,
                shutdown_grace,
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

    fn admin(&mut self, raw: &RawConfig) -> Option<AdminConfig> {
        let bind = match raw.admin.as_ref().and_then(|a| a.bind.as_deref()) {
            None => Some(DEFAULT_ADMIN_BIND),
            Some(s) => self.bind("admin.bind", s),
        };
        let token = raw.admin.as_ref().and_then(|a| a.token.clone());
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            self.error(
                "admin.token",
                "must not be empty (leave it out for no token)",
            );
            return None;
        }
        Some(AdminConfig { bind: bind?, token })
    }

    fn shutdown_close_code(&mut self, raw: &RawConfig) -> Option<u16> {
        match raw.shutdown_close_code {
            None => Some(DEFAULT_SHUTDOWN_CLOSE_CODE),
            Some(code @ (1001 | 1012)) => Some(code),
            Some(other) => {
                self.error(
                    "shutdown_close_code",
                    format!(
                        "{other} is not a shutdown close code: use 1001 (going away) or 1012 (service restart)"
                    ),
                );
                None
            }
        }
    }

    fn dns(&mut self, raw: &RawConfig) -> Option<DnsConfig> {
        let d = raw.dns.as_ref();
        let name_servers = self.list(
            "dns.name_servers",
            d.and_then(|d| d.name_servers.as_ref()),
            |s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<IpAddr>()
                            .map(|ip| SocketAddr::new(ip, DEFAULT_DNS_PORT))
                    })
                    .ok()
                    .filter(|a| a.port() != 0)
                    .ok_or_else(|| {
                        ParseError::new(format!(
                            "invalid name server \"{s}\": expected an IP address with an optional port, \
                             e.g. \"10.0.0.2\" or \"127.0.0.1:5353\""
                        ))
                    })
            },
        );
        let min_ttl = self.timeout(
            "dns.min_ttl",
            d.and_then(|d| d.min_ttl.as_ref()),
            DEFAULT_DNS_MIN_TTL,
        );
        let max_ttl = self.timeout(
            "dns.max_ttl",
            d.and_then(|d| d.max_ttl.as_ref()),
            DEFAULT_DNS_MAX_TTL,
        );
        let max_ttl = match (min_ttl, max_ttl) {
            (Some(min), Some(max)) if max < min => {
                self.error(
                    "dns.max_ttl",
                    format!(
                        "{} is below dns.min_ttl {}",
                        format_duration(max),
                        format_duration(min)
                    ),
                );
                None
            }
            _ => max_ttl,
        };
        Some(DnsConfig {
            name_servers: name_servers?,
            min_ttl: min_ttl?,
            max_ttl: max_ttl?,
        })
    }

    fn telemetry(&mut self, raw: &RawConfig) -> Option<TelemetryConfig> {
        let t = raw.telemetry.as_ref();
        let service_name = t.and_then(|t| t.service_name.clone());
        let service_name = match service_name {
            Some(s) if s.trim().is_empty() => {
                self.error("telemetry.service_name", "must not be empty");
                None
            }
            other => Some(other.unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned())),
        };
        let otlp_endpoint = t.and_then(|t| t.otlp_endpoint.clone());
        if let Some(url) = &otlp_endpoint {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                self.error(
                    "telemetry.otlp_endpoint",
                    format!("invalid URL \"{url}\": expected e.g. \"http://127.0.0.1:4317\""),
                );
            }
        }
        let log_level = t.and_then(|t| t.log_level.clone());
        let log_level = match log_level {
            Some(s) if s.trim().is_empty() => {
                self.error("telemetry.log_level", "must not be empty (e.g. \"info\")");
                None
            }
            other => Some(other.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned())),
        };
        Some(TelemetryConfig {
            service_name: service_name?,
            otlp_endpoint,
            log_format: t.and_then(|t| t.log_format).unwrap_or(DEFAULT_LOG_FORMAT),
            log_level: log_level?,
        })
    }

    fn listener(&mut self, name: &str, raw: &RawListener) -> Option<ListenerConfig> {
        let entry = format!("listeners.{name}");
        let at = |field: &str| format!("{entry}.{field}");
        let bind = self
            .required(&entry, "bind", &raw.bind)
            .and_then(|s| self.bind(&at("bind"), s));
        let protocol = raw.protocol.unwrap_or(DEFAULT_LISTENER_PROTOCOL);
        let certificates = self.certificates(&entry, protocol, raw);
        let listener_tls = self.listener_tls(&entry, protocol, raw);
        let max_request_head_bytes = match &raw.max_request_head_bytes {
            None => Some(DEFAULT_MAX_REQUEST_HEAD_BYTES),
            Some(s) => self
                .ok(&at("max_request_head_bytes"), parse_size(s))
                .and_then(|n| match usize::try_from(n) {
                    Ok(n) if n >= MIN_MAX_REQUEST_HEAD_BYTES => Some(n),
                    _ => {
                        self.error(
                            &at("max_request_head_bytes"),
                            format!(
                                "{} is too small: at least {} (a browser's WebSocket handshake with cookies needs several KiB)",
                                format_size(n),
                                format_size(MIN_MAX_REQUEST_HEAD_BYTES as u64)
                            ),
                        );
                        None
                    }
                }),
        };
        let max_headers = match raw.max_headers.unwrap_or(DEFAULT_MAX_HEADERS) {
            0 => {
                self.error(&at("max_headers"), "must be at least 1");
                None
            }
            n => Some(n),
        };
        let request_head_timeout = self.timeout(
            &at("request_head_timeout"),
            raw.request_head_timeout.as_ref(),
            DEFAULT_REQUEST_HEAD_TIMEOUT,
        );
        let request_body_timeout = self.timeout(
            &at("request_body_timeout"),
            raw.request_body_timeout.as_ref(),
            DEFAULT_REQUEST_BODY_TIMEOUT,
        );
        Some(ListenerConfig {
            name: name.to_owned(),
            bind: bind?,
            protocol,
            certificates: certificates?,
            max_request_head_bytes: max_request_head_bytes?,
            max_headers: max_headers?,
            request_head_timeout: request_head_timeout?,
            request_body_timeout: request_body_timeout?,
            client_ca: listener_tls.as_ref()?.0.clone(),
            redirect_to: listener_tls?.1,
            max_connections: raw.max_connections.unwrap_or(0),
            max_handshakes_per_ip: raw.max_handshakes_per_ip.unwrap_or(0),
        })
    }

    /// Certificate entries are checked for presence only; the files are read at start-up.
    fn certificates(
        &mut self,
        entry: &str,
        protocol: ListenerProtocol,
        raw: &RawListener,
    ) -> Option<Vec<CertificateConfig>> {
        let path = format!("{entry}.certificates");
        let raw_certs = raw.certificates.as_deref().unwrap_or_default();
        match protocol {
            ListenerProtocol::Https if raw_certs.is_empty() => {
                self.error(
                    &path,
                    "an https listener needs at least one certificate ([[listeners.NAME.certificates]] \
                     with cert_file and key_file)",
                );
                return None;
            }
            ListenerProtocol::Http if !raw_certs.is_empty() => {
                self.warn(&path, "certificates are only used by https listeners");
            }
            _ => {}
        }
        let mut certs = Some(Vec::new());
        for (i, cert) in raw_certs.iter().enumerate() {
            let entry = format!("{path}[{i}]");
            let mut file =
                |field: &str, value: &Option<String>| match self.required(&entry, field, value) {
                    Some("") => {
                        self.error(&format!("{entry}.{field}"), "must not be empty");
                        None
                    }
                    other => other.map(std::path::PathBuf::from),
                };
            let cert_file = file("cert_file", &cert.cert_file);
            let key_file = file("key_file", &cert.key_file);
            let server_names = self.list(
                &format!("{entry}.server_names"),
                cert.server_names.as_ref(),
                |s| s.parse::<HostPattern>().map(|h| h.to_string()),
            );
            match (cert_file, key_file, server_names, certs.as_mut()) {
                (Some(cert_file), Some(key_file), Some(server_names), Some(certs)) => {
                    certs.push(CertificateConfig {
                        cert_file,
                        key_file,
                        server_names,
                    })
                }
                _ => certs = None,
            }
        }
        certs
    }

    fn pool(&mut self, name: &str, raw: &RawBackendPool) -> Option<BackendPoolConfig> {
        let path = format!("backend_pools.{name}.members");
        let members = self
            .list(&path, raw.members.as_ref(), str::parse::<PoolMember>)
            .and_then(|members| self.pool_members(name, raw, members));
        let at = |field: &str| format!("backend_pools.{name}.{field}");
        let load_balancing = raw.load_balancing.unwrap_or(DEFAULT_LOAD_BALANCING);
        let hash_key = match &raw.hash_key {
            None => Some(DEFAULT_HASH_KEY),
            Some(s) => {
                if load_balancing != LoadBalancing::ConsistentHash {
                    self.warn(
                        &at("hash_key"),
                        "only used when load_balancing = \"consistent_hash\"",
                    );
                }
                self.ok(&at("hash_key"), s.parse::<HashKey>())
            }
        };
        let passive = self.passive(&at("passive"), raw);
        Some(BackendPoolConfig {
            name: name.to_owned(),
            members: members?,
            load_balancing,
            hash_key: hash_key?,
            passive: passive?,
        })
    }

    /// A pool's member list: not empty, no address twice.
    fn pool_members(
        &mut self,
        name: &str,
        raw: &RawBackendPool,
        members: Vec<PoolMember>,
    ) -> Option<Vec<PoolMember>> {
        let path = format!("backend_pools.{name}.members");
        if members.is_empty() {
            let message = "a pool needs at least one member (ip:port or host:port)";
            if raw.members.is_some() {
                self.error(&path, message);
            } else {
                let source = self
                    .root
                    .source_of(&format!("backend_pools.{name}"))
                    .to_owned();
                self.errors.push(ConfigError::new(path, message, source));
            }
            return None;
        }
        let addresses: Vec<&Member> = members.iter().map(|m| &m.address).collect();
        self.no_duplicates(&path, &addresses).then_some(members)
    }

    fn passive(&mut self, entry: &str, pool: &RawBackendPool) -> Option<PassiveHealthConfig> {
        let raw = pool.passive.as_ref();
        let at = |field: &str| format!("{entry}.{field}");
        let ejection = self.timeout(
            &at("ejection"),
            raw.and_then(|p| p.ejection.as_ref()),
            DEFAULT_PASSIVE_EJECTION,
        );
        let max_ejection = self.timeout(
            &at("max_ejection"),
            raw.and_then(|p| p.max_ejection.as_ref()),
            DEFAULT_PASSIVE_MAX_EJECTION,
        );
        let max_ejection = match (ejection, max_ejection) {
            (Some(first), Some(max)) if max < first => {
                self.error(
                    &at("max_ejection"),
                    format!(
                        "{} is below the first ejection {} ({entry}.ejection)",
                        format_duration(max),
                        format_duration(first)
                    ),
                );
                None
            }
            _ => max_ejection,
        };
        Some(PassiveHealthConfig {
            failures: raw
                .and_then(|p| p.failures)
                .unwrap_or(DEFAULT_PASSIVE_FAILURES),
            ejection: ejection?,
            max_ejection: max_ejection?,
        })
    }

    fn settings(&mut self, name: &str, raw: &RawBackendSettings) -> Option<BackendSettingsConfig> {
        let at = |field: &str| format!("backend_settings.{name}.{field}");
        let port = self.port(&at("port"), raw.port);
        let host_override = match &raw.host_override {
            None => Some(None),
            Some(s) => self
                .ok(&at("host_override"), parse_host_header(s))
                .map(Some),
        };
        let request_timeout = self.timeout(
            &at("request_timeout"),
            raw.request_timeout.as_ref(),
            DEFAULT_REQUEST_TIMEOUT,
        );
        let connect_timeout = self.timeout(
            &at("connect_timeout"),
            raw.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let retries = match raw.retries.unwrap_or(DEFAULT_RETRIES) {
            n if n > MAX_RETRIES => {
                self.error(
                    &at("retries"),
                    format!("{n} is too many: at most {MAX_RETRIES} (each retry may wait a connect_timeout)"),
                );
                None
            }
            n => Some(n),
        };
        let protocol = raw.protocol.unwrap_or(DEFAULT_BACKEND_PROTOCOL);
        let tls = self.backend_tls(name, protocol, raw);
        let tls = tls?;
        Some(BackendSettingsConfig {
            name: name.to_owned(),
            protocol,
            port: port?,
            host_override: host_override?,
            request_timeout: request_timeout?,
            connect_timeout: connect_timeout?,
            retries: retries?,
            probe: raw.probe.clone(),
            ca_file: tls.ca_file,
            server_name: tls.server_name,
            client_cert_file: tls.client_cert_file,
            client_key_file: tls.client_key_file,
        })
    }

    /// An optional port: 0 is never a usable destination.
    fn port(&mut self, path: &str, port: Option<u16>) -> Option<Option<u16>> {
        if port == Some(0) {
            self.error(path, "must be a port from 1 to 65535");
            return None;
        }
        Some(port)
    }

    fn probe(&mut self, name: &str, raw: &RawProbe) -> Option<ProbeConfig> {
        let at = |field: &str| format!("probes.{name}.{field}");
        let path = match raw.path.as_deref().unwrap_or(DEFAULT_PROBE_PATH) {
            p if p.starts_with('/') && !p.contains(char::is_whitespace) => Some(p.to_owned()),
            p => {
                self.error(
                    &at("path"),
                    format!("invalid path \"{p}\": expected e.g. \"/health\""),
                );
                None
            }
        };
        let host = match &raw.host {
            None => Some(None),
            Some(s) => self.ok(&at("host"), parse_host_header(s)).map(Some),
        };
        let port = self.port(&at("port"), raw.port);
        let protocol = raw.protocol.unwrap_or(DEFAULT_PROBE_PROTOCOL);
        let interval = self.timeout(
            &at("interval"),
            raw.interval.as_ref(),
            DEFAULT_PROBE_INTERVAL,
        );
        let timeout = self.timeout(&at("timeout"), raw.timeout.as_ref(), DEFAULT_PROBE_TIMEOUT);
        let timeout = match (interval, timeout) {
            (Some(interval), Some(t)) if t > interval => {
                self.error(
                    &at("timeout"),
                    format!(
                        "{} exceeds the interval {}: probes of one backend would overlap",
                        format_duration(t),
                        format_duration(interval)
                    ),
                );
                None
            }
            _ => timeout,
        };
        let unhealthy_threshold = self.threshold(
            &at("unhealthy_threshold"),
            raw.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        let healthy_threshold = self.threshold(
            &at("healthy_threshold"),
            raw.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
        );
        let match_status = match &raw.match_status {
            None => Some(vec![DEFAULT_MATCH_STATUS]),
            Some(list) if list.is_empty() => {
                self.error(
                    &at("match_status"),
                    "must list at least one status or range, e.g. \"200-399\"",
                );
                None
            }
            Some(list) => self.list(&at("match_status"), Some(list), parse_status_range),
        };
        let kind = raw.kind.unwrap_or(DEFAULT_PROBE_KIND);
        if kind == ProbeKind::WebSocket {
            for (field, set) in [
                ("match_status", raw.match_status.is_some()),
                ("match_body", raw.match_body.is_some()),
            ] {
                if set {
                    self.warn(
                        &at(field),
                        "not used by websocket probes: they pass on 101 Switching Protocols with a valid Sec-WebSocket-Accept",
                    );
                }
            }
        }
        Some(ProbeConfig {
            name: name.to_owned(),
            protocol,
            path: path?,
            host: host?,
            port: port?,
            interval: interval?,
            timeout: timeout?,
            unhealthy_threshold: unhealthy_threshold?,
            healthy_threshold: healthy_threshold?,
            match_status: match_status?,
            match_body: raw.match_body.clone(),
            kind,
        })
    }

    fn threshold(
        &mut self,
        path: &str,
        value: Option<u32>,
        default: NonZeroU32,
    ) -> Option<NonZeroU32> {
        match value {
            None => Some(default),
            Some(n) => NonZeroU32::new(n).or_else(|| {
                self.error(path, "must be at least 1");
                None
            }),
        }
    }

    fn rule(&mut self, name: &str, raw: &RawRoutingRule) -> Option<RoutingRuleConfig> {
        let entry = format!("routing_rules.{name}");
        let at = |field: &str| format!("{entry}.{field}");
        let listener = self.required(&entry, "listener", &raw.listener);
        let backend_pool = self.required(&entry, "backend_pool", &raw.backend_pool);
        let backend_settings = self.required(&entry, "backend_settings", &raw.backend_settings);
        let hosts = self
            .list(&at("hosts"), raw.hosts.as_ref(), str::parse::<HostPattern>)
            .filter(|hosts| self.no_duplicates(&at("hosts"), hosts));
        let paths = self
            .list(&at("paths"), raw.paths.as_ref(), str::parse::<PathPattern>)
            .filter(|paths| self.no_duplicates(&at("paths"), paths));
        let websocket = self.websocket(&at("websocket"), raw);
        Some(RoutingRuleConfig {
            name: name.to_owned(),
            listener: listener?.to_owned(),
            hosts: hosts?,
            paths: paths?,
            backend_pool: backend_pool?.to_owned(),
            backend_settings: backend_settings?.to_owned(),
            websocket: websocket?,
        })
    }

    fn websocket(&mut self, entry: &str, rule: &RawRoutingRule) -> Option<WebSocketConfig> {
        let raw = rule.websocket.as_ref();
        let at = |field: &str| format!("{entry}.{field}");
        let allowed_origins = self
            .list(
                &at("allowed_origins"),
                raw.and_then(|w| w.allowed_origins.as_ref()),
                parse_origin,
            )
            .filter(|origins| self.no_duplicates(&at("allowed_origins"), origins));
        let keepalive_interval = self.duration(
            &at("keepalive_interval"),
            raw.and_then(|w| w.keepalive_interval.as_ref()),
            DEFAULT_KEEPALIVE_INTERVAL,
        );
        let max_message_size = match raw.and_then(|w| w.max_message_size.as_ref()) {
            None => Some(None),
            Some(s) => match self.ok(&at("max_message_size"), parse_size(s)) {
                Some(0) => {
                    self.error(
                        &at("max_message_size"),
                        "must be more than 0B (leave it unset for no limit)",
                    );
                    None
                }
                other => other.map(Some),
            },
        };
        let subprotocols = self.list(&at("subprotocols"), raw.and_then(|w| w.subprotocols.as_ref()), |s| {
            if is_token(s) {
                Ok(s.to_owned())
            } else {
                Err(ParseError::new(format!(
                    "invalid subprotocol \"{s}\": expected a token (RFC 6455 §4.1), e.g. \"chat.v1\""
                )))
            }
        });
        let max_sessions = match raw.and_then(|w| w.max_sessions) {
            Some(0) => {
                self.error(
                    &at("max_sessions"),
                    "must be at least 1 (leave it unset for no limit)",
                );
                None
            }
            n => Some(n),
        };
        let drain_grace = self.duration(
            &at("drain_grace"),
            raw.and_then(|w| w.drain_grace.as_ref()),
            DEFAULT_DRAIN_GRACE,
        );
        Some(WebSocketConfig {
            allowed_origins: allowed_origins?,
            require_origin: raw
                .and_then(|w| w.require_origin)
                .unwrap_or(DEFAULT_REQUIRE_ORIGIN),
            keepalive_interval: keepalive_interval?,
            max_message_size: max_message_size?,
            inspect: raw.and_then(|w| w.inspect).unwrap_or(DEFAULT_INSPECT),
            subprotocols: subprotocols?,
            max_sessions: max_sessions?,
            on_backend_unhealthy: raw
                .and_then(|w| w.on_backend_unhealthy)
                .unwrap_or(DEFAULT_ON_BACKEND_UNHEALTHY),
            drain_grace: drain_grace?,
        })
    }

    /// Every name a rule or settings table refers to must exist.
    fn references(&mut self, raw: &RawConfig, declared: &Declared) {
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

    fn reference(&mut self, path: &str, target: Option<&str>, names: &[String], what: &str) {
        if let Some(target) = target {
            if !names.iter().any(|n| n == target) {
                let hint = did_you_mean(target, names.iter().map(String::as_str));
                self.error(path, format!("no {what} named \"{target}\"{hint}"));
            }
        }
    }

    /// Application Gateway's documented pitfall, turned into an error: the backend request
    /// timeout also bounds an idle WebSocket session, so it must outlast the ping interval.
    fn keepalive_trap(
        &mut self,
        rules: &BTreeMap<String, RoutingRuleConfig>,
        settings: &BTreeMap<String, BackendSettingsConfig>,
    ) {
        for (name, rule) in rules {
            let keepalive = rule.websocket.keepalive_interval;
            let Some(s) = settings.get(&rule.backend_settings) else {
                continue;
            };
            if !keepalive.is_zero() && s.request_timeout <= keepalive {
                self.error(
                    &format!("backend_settings.{}.request_timeout", s.name),
                    format!(
                        "{} must exceed the keepalive_interval {} of routing rule \"{name}\": an idle \
                         WebSocket session would be cut by the request timeout before the first ping, and \
                         clients would see close code 1006 (the Application Gateway pitfall); raise \
                         request_timeout (e.g. to {}) or lower routing_rules.{name}.websocket.keepalive_interval",
                        format_duration(s.request_timeout),
                        format_duration(keepalive),
                        format_duration(keepalive.saturating_mul(2)),
                    ),
                );
            }
        }
    }

    /// Two rules on one listener must not claim the same (host, path).
    fn overlapping_rules(&mut self, rules: &BTreeMap<String, RoutingRuleConfig>) {
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
    fn pool_probes(
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

    /// Two sockets cannot bind the same port on overlapping addresses.
    fn clashing_binds(
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
    fn unused(&mut self, raw: &RawConfig, declared: &Declared) {
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

/// `Host` header value: a host name or IP address, optionally with `:port`.
fn parse_host_header(s: &str) -> Result<String, ParseError> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = is_hostname(host)
        || host.parse::<IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    if host_ok && port_ok {
        Ok(s.to_owned())
    } else {
        Err(ParseError::new(format!(
            "invalid host \"{s}\": expected a host name with an optional port, e.g. \"chat.internal\" or \"chat.internal:8080\""
        )))
    }
}

/// An allowed origin: `*` or `scheme://host[:port]` (RFC 6454 §6.1 serialization), lowercased.
fn parse_origin(s: &str) -> Result<String, ParseError> {
    if s == "*" {
        return Ok(s.to_owned());
    }
    let invalid = |why: String| ParseError::new(format!("invalid origin \"{s}\": {why}"));
    let lower = s.to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return Err(invalid(
            "expected \"*\" or scheme://host[:port], e.g. \"https://chat.example.com\"".to_owned(),
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(invalid(format!("\"{scheme}\" is not a URL scheme")));
    }
    if let Some(i) = authority.find(['/', '?', '#']) {
        let bare = &s[..scheme.len() + 3 + i];
        return Err(invalid(format!("an origin has no path; write \"{bare}\"")));
    }
    if authority.contains('@') {
        return Err(invalid("an origin has no user name".to_owned()));
    }
    parse_host_header(authority)
        .map(|_| lower.clone())
        .map_err(|_| {
            invalid("expected scheme://host[:port], e.g. \"https://chat.example.com\"".to_owned())
        })
}

#[cfg(test)]
mod tests;
