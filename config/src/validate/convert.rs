//! Conversion of each value: parses one entry's fields, applies their defaults and checks the
//! rules that stay inside the entry (ranges, required fields, one field against its neighbour).
//! Every entry is converted on its own, so one bad entry does not hide the errors in another.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use super::Checker;
use crate::authority::parse_authority;
use crate::error::{ConfigError, ParseError};
use crate::model::*;
use crate::raw::{
    RawBackendPool, RawBackendSettings, RawConfig, RawListener, RawProbe, RawRoutingRule,
};
use crate::units::{format_duration, format_size, parse_size};

impl Checker<'_> {
    pub(super) fn admin(&mut self, raw: &RawConfig) -> Option<AdminConfig> {
        let bind = match raw.admin.as_ref().and_then(|a| a.bind.as_deref()) {
            None => Some(DEFAULT_ADMIN_BIND),
            Some(s) => self.bind("admin.bind", s),
        };
        let token = raw.admin.as_ref().and_then(|a| a.token.0.clone());
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            self.error(
                "admin.token",
                "must not be empty (leave it out for no token)",
            );
            return None;
        }
        Some(AdminConfig { bind: bind?, token })
    }

    /// `shutdown_delay`: any duration up to [`MAX_SHUTDOWN_DELAY`] (`0s` = drain at once).
    pub(super) fn shutdown_delay(&mut self, raw: &RawConfig) -> Option<Duration> {
        let delay = self.duration(
            "shutdown_delay",
            raw.shutdown_delay.as_ref(),
            DEFAULT_SHUTDOWN_DELAY,
        )?;
        if delay > MAX_SHUTDOWN_DELAY {
            self.error(
                "shutdown_delay",
                format!(
                    "{} is longer than {}: it only needs to cover the time load balancers take to stop sending new connections (a few seconds)",
                    format_duration(delay),
                    format_duration(MAX_SHUTDOWN_DELAY)
                ),
            );
            return None;
        }
        Some(delay)
    }

    pub(super) fn shutdown_close_code(&mut self, raw: &RawConfig) -> Option<u16> {
        match raw.shutdown_close_code.0 {
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

    pub(super) fn dns(&mut self, raw: &RawConfig) -> Option<DnsConfig> {
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

    pub(super) fn telemetry(&mut self, raw: &RawConfig) -> Option<TelemetryConfig> {
        let t = raw.telemetry.as_ref();
        let service_name = t.and_then(|t| t.service_name.0.clone());
        let service_name = match service_name {
            Some(s) if s.trim().is_empty() => {
                self.error("telemetry.service_name", "must not be empty");
                None
            }
            other => Some(other.unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned())),
        };
        let otlp_endpoint = t.and_then(|t| t.otlp_endpoint.0.clone());
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
        let log_level = t.and_then(|t| t.log_level.0.clone());
        let log_level = match log_level {
            Some(s) if s.trim().is_empty() => {
                self.error("telemetry.log_level", "must not be empty (e.g. \"info\")");
                None
            }
            other => Some(other.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned())),
        };
        let access_log_fields = match t.and_then(|t| t.access_log_fields.as_ref()) {
            None => Some(AccessLogField::ALL.to_vec()),
            Some(names) if names.is_empty() => {
                self.error(
                    "telemetry.access_log_fields",
                    "must name at least one field (turn the access log off with \
                     RUST_LOG=info,tether::access=off)",
                );
                None
            }
            Some(names) => self
                .list("telemetry.access_log_fields", Some(names), |name| {
                    AccessLogField::from_name(name.trim()).ok_or_else(|| {
                        let known: Vec<&str> =
                            AccessLogField::ALL.iter().map(|f| f.as_str()).collect();
                        ParseError::new(format!(
                            "unknown field \"{name}\" (one of: {})",
                            known.join(", ")
                        ))
                    })
                })
                .filter(|fields| self.no_duplicates("telemetry.access_log_fields", fields)),
        };
        Some(TelemetryConfig {
            service_name: service_name?,
            otlp_endpoint,
            log_format: t.and_then(|t| t.log_format).unwrap_or(DEFAULT_LOG_FORMAT),
            log_level: log_level?,
            access_log_fields: access_log_fields?,
            record_query: t
                .and_then(|t| *t.record_query)
                .unwrap_or(DEFAULT_RECORD_QUERY),
        })
    }

    pub(super) fn listener(&mut self, name: &str, raw: &RawListener) -> Option<ListenerConfig> {
        let entry = format!("listeners.{name}");
        let at = |field: &str| format!("{entry}.{field}");
        let bind = self
            .required(&entry, "bind", &raw.bind)
            .and_then(|s| self.bind(&at("bind"), s));
        let protocol = raw.protocol.unwrap_or(DEFAULT_LISTENER_PROTOCOL);
        let certificates = self.certificates(&entry, protocol, raw);
        let listener_tls = self.listener_tls(&entry, protocol, raw);
        let max_request_head_bytes = match &raw.max_request_head_bytes.0 {
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
        let http2_max_concurrent_streams = match raw
            .http2_max_concurrent_streams
            .unwrap_or(DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS)
        {
            0 => {
                self.error(
                    &at("http2_max_concurrent_streams"),
                    "must be at least 1 (set http2 = false to turn HTTP/2 off)",
                );
                None
            }
            n => Some(n),
        };
        let http2_idle_timeout = self.duration(
            &at("http2_idle_timeout"),
            raw.http2_idle_timeout.as_ref(),
            DEFAULT_HTTP2_IDLE_TIMEOUT,
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
            http2: raw.http2.unwrap_or(true),
            http2_websockets: raw.http2_websockets.unwrap_or(true),
            http2_max_concurrent_streams: http2_max_concurrent_streams?,
            http2_idle_timeout: http2_idle_timeout?,
        })
    }

    /// Certificate entries are checked for presence only; the files are read at start-up.
    pub(super) fn certificates(
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

    pub(super) fn pool(&mut self, name: &str, raw: &RawBackendPool) -> Option<BackendPoolConfig> {
        let path = format!("backend_pools.{name}.members");
        let members = self
            .list(&path, raw.members.as_ref(), str::parse::<PoolMember>)
            .and_then(|members| self.pool_members(name, raw, members));
        let at = |field: &str| format!("backend_pools.{name}.{field}");
        let load_balancing = raw.load_balancing.unwrap_or(DEFAULT_LOAD_BALANCING);
        let hash_key = match &raw.hash_key.0 {
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
    pub(super) fn pool_members(
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

    pub(super) fn passive(
        &mut self,
        entry: &str,
        pool: &RawBackendPool,
    ) -> Option<PassiveHealthConfig> {
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
                .and_then(|p| p.failures.0)
                .unwrap_or(DEFAULT_PASSIVE_FAILURES),
            ejection: ejection?,
            max_ejection: max_ejection?,
        })
    }

    pub(super) fn settings(
        &mut self,
        name: &str,
        raw: &RawBackendSettings,
    ) -> Option<BackendSettingsConfig> {
        let at = |field: &str| format!("backend_settings.{name}.{field}");
        let port = self.port(&at("port"), raw.port.0);
        let host_override = match &raw.host_override.0 {
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
        let source_addresses = self.source_addresses(&at("source_addresses"), raw);
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
            probe: raw.probe.0.clone(),
            ca_file: tls.ca_file,
            server_name: tls.server_name,
            client_cert_file: tls.client_cert_file,
            client_key_file: tls.client_key_file,
            source_addresses: source_addresses?,
        })
    }

    /// `source_addresses`: IP addresses a connection can start from — not the unspecified
    /// address (that is the kernel's choice, the default) nor a multicast or broadcast one —
    /// each listed once. Whether the host has them is checked at load
    /// ([`super::check_source_addresses`]); their family against the members in `cross`.
    pub(super) fn source_addresses(
        &mut self,
        path: &str,
        raw: &RawBackendSettings,
    ) -> Option<Vec<IpAddr>> {
        let parsed = self.list(path, raw.source_addresses.as_ref(), |s| {
            let ip = s.trim().parse::<IpAddr>().map_err(|_| {
                ParseError::new(format!(
                    "invalid source address \"{s}\": expected an IP address without a port, \
                     e.g. \"10.0.0.12\" or \"fd00::12\""
                ))
            })?;
            let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            if ip.is_unspecified() || ip.is_multicast() || broadcast {
                return Err(ParseError::new(format!(
                    "{ip} cannot be a connection's source address: give addresses of this host \
                     (leave the list empty to let the kernel choose)"
                )));
            }
            Ok(ip)
        })?;
        self.no_duplicates(path, &parsed).then_some(parsed)
    }

    /// An optional port: 0 is never a usable destination.
    pub(super) fn port(&mut self, path: &str, port: Option<u16>) -> Option<Option<u16>> {
        if port == Some(0) {
            self.error(path, "must be a port from 1 to 65535");
            return None;
        }
        Some(port)
    }

    pub(super) fn probe(&mut self, name: &str, raw: &RawProbe) -> Option<ProbeConfig> {
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
        let host = match &raw.host.0 {
            None => Some(None),
            Some(s) => self.ok(&at("host"), parse_host_header(s)).map(Some),
        };
        let port = self.port(&at("port"), raw.port.0);
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
            raw.unhealthy_threshold.0,
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        let healthy_threshold = self.threshold(
            &at("healthy_threshold"),
            raw.healthy_threshold.0,
            DEFAULT_HEALTHY_THRESHOLD,
        );
        let match_status = match &raw.match_status.0 {
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
        let kind = if kind == ProbeKind::Grpc && !protocol.is_http2() {
            self.error(
                &at("kind"),
                "grpc probes need HTTP/2: set protocol = \"h2c\" or \"h2\"",
            );
            None
        } else {
            Some(kind)
        };
        if kind == Some(ProbeKind::Grpc) {
            for (field, set) in [
                ("path", raw.path.is_some()),
                ("match_status", raw.match_status.is_some()),
                ("match_body", raw.match_body.is_some()),
            ] {
                if set {
                    self.warn(
                        &at(field),
                        "not used by grpc probes: they call grpc.health.v1.Health/Check and pass on SERVING",
                    );
                }
            }
        }
        if kind == Some(ProbeKind::WebSocket) {
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
            match_body: raw.match_body.0.clone(),
            kind: kind?,
        })
    }

    pub(super) fn threshold(
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

    pub(super) fn rule(&mut self, name: &str, raw: &RawRoutingRule) -> Option<RoutingRuleConfig> {
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

    pub(super) fn websocket(
        &mut self,
        entry: &str,
        rule: &RawRoutingRule,
    ) -> Option<WebSocketConfig> {
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
        let max_sessions = match raw.and_then(|w| w.max_sessions.0) {
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
        let drain_spread = self.duration(
            &at("drain_spread"),
            raw.and_then(|w| w.drain_spread.as_ref()),
            DEFAULT_DRAIN_SPREAD,
        );
        let count = |n: &crate::lenient::Num<u32>| n.0.map(|v| Ok::<_, ParseError>(u64::from(v)));
        let size = |t: &Option<String>| t.as_deref().map(parse_size);
        let max_new_sessions_per_second = self.rate(
            (
                &at("max_new_sessions_per_second"),
                &at("new_sessions_burst"),
            ),
            raw.and_then(|w| count(&w.max_new_sessions_per_second)),
            raw.and_then(|w| count(&w.new_sessions_burst)),
            NEW_SESSIONS_BURST_DIVISOR,
        );
        let max_messages_per_second = self.rate(
            (&at("max_messages_per_second"), &at("messages_burst")),
            raw.and_then(|w| count(&w.max_messages_per_second)),
            raw.and_then(|w| count(&w.messages_burst)),
            1,
        );
        let max_bytes_per_second = self.rate(
            (&at("max_bytes_per_second"), &at("bytes_burst")),
            raw.and_then(|w| size(&w.max_bytes_per_second.0)),
            raw.and_then(|w| size(&w.bytes_burst.0)),
            1,
        );
        let slow_consumer_timeout = self.duration(
            &at("slow_consumer_timeout"),
            raw.and_then(|w| w.slow_consumer_timeout.as_ref()),
            DEFAULT_SLOW_CONSUMER_TIMEOUT,
        );
        let max_session_age = match raw.and_then(|w| w.max_session_age.as_ref()) {
            None => Some(None),
            Some(_) => self
                .timeout(
                    &at("max_session_age"),
                    raw.and_then(|w| w.max_session_age.as_ref()),
                    Duration::ZERO,
                )
                .map(Some),
        };
        Some(WebSocketConfig {
            allowed_origins: allowed_origins?,
            require_origin: raw
                .and_then(|w| w.require_origin.0)
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
            drain_spread: drain_spread?,
            max_new_sessions_per_second: max_new_sessions_per_second?,
            max_messages_per_second: max_messages_per_second?,
            max_bytes_per_second: max_bytes_per_second?,
            on_rate_limit: raw
                .and_then(|w| w.on_rate_limit)
                .unwrap_or(DEFAULT_ON_RATE_LIMIT),
            slow_consumer_timeout: slow_consumer_timeout?,
            max_session_age: max_session_age?,
        })
    }

    /// A rate and its burst (`paths`: the rate's field, the burst's). The burst defaults to
    /// the rate divided by `burst_divisor` (at least 1); a burst without a rate, or a zero, is
    /// an error. `Some(None)`: no limit.
    fn rate(
        &mut self,
        paths: (&str, &str),
        rate: Option<Result<u64, ParseError>>,
        burst: Option<Result<u64, ParseError>>,
        burst_divisor: u64,
    ) -> Option<Option<RateLimit>> {
        let (rate_at, burst_at) = paths;
        let rate = match rate {
            None => None,
            Some(r) => Some(self.ok(rate_at, r)?),
        };
        let burst = match burst {
            None => None,
            Some(b) => Some(self.ok(burst_at, b)?),
        };
        match (rate, burst) {
            (None, None) => Some(None),
            (None, Some(_)) => {
                let rate_field = rate_at.rsplit('.').next().unwrap_or(rate_at);
                self.error(
                    burst_at,
                    format!("is set without {rate_field}: set both, or neither"),
                );
                None
            }
            (Some(0), _) => {
                self.error(rate_at, "must be at least 1 (leave it unset for no limit)");
                None
            }
            (Some(_), Some(0)) => {
                self.error(burst_at, "must be at least 1");
                None
            }
            (Some(per_second), burst) => Some(Some(RateLimit {
                per_second,
                burst: burst.unwrap_or((per_second / burst_divisor.max(1)).max(1)),
            })),
        }
    }
}

/// A `Host` value Tether sends (`host_override`, `probes.NAME.host`) or an origin's authority:
/// `uri-host [ ":" port ]` as [`parse_authority`] reads it on the data path, with the
/// configuration's stricter rules on top: the host is a DNS name or an IP address (IPv6 in
/// brackets), and a port, when written, is a number from 1 to 65535.
fn parse_host_header(s: &str) -> Result<String, ParseError> {
    let valid = parse_authority(s).is_some_and(|a| {
        (is_hostname(a.host) || a.host.parse::<IpAddr>().is_ok())
            && a.port != Some(0)
            // `host:` parses (an empty port counts as none) but is a port left out by mistake.
            && !s.ends_with(':')
    });
    if valid {
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
