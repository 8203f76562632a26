//! Stage one: a serde mirror of the configuration file.
//!
//! Every field is optional (defaults are applied in [`crate::validate`]) and every struct
//! denies unknown fields, so serde fails only on structure: an unknown field or a value of
//! the wrong shape. Values that need parsing (durations, sizes, addresses, patterns, status
//! ranges) stay strings here. Because environment variables arrive as strings, numbers and
//! booleans also accept their string form (`"2"`, `"true"`) and every list also accepts a
//! comma-separated string (`"127.0.0.1:5000,127.0.0.1:5001"`).
//!
//! The root is read key by key and each named entry (each listener, pool, ...) on its own,
//! so that one bad entry does not hide the errors in the others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::de::{from_node, from_node_with};
use crate::error::{unknown_field, ConfigError};
use crate::model::{
    format_status_range, BackendProtocol, Config, Inspect, ListenerProtocol, LoadBalancing,
    LogFormat, OnBackendUnhealthy, PoolMember, ProbeKind,
};
use crate::tree::{Node, Value};
use crate::units::{format_duration, format_size};

/// The whole file. Serialized by [`Config::to_toml_string`]; read by [`read`].
#[derive(Debug, Default, Serialize)]
pub(crate) struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_close_code: Option<u16>,
    /// Before every table: TOML writes plain values first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_empty: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<RawTelemetry>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, RawListener>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_pools: BTreeMap<String, RawBackendPool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_settings: BTreeMap<String, RawBackendSettings>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, RawProbe>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub routing_rules: BTreeMap<String, RawRoutingRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<RawDns>,
}

/// The keys allowed at the top level of a configuration file.
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "workers",
    "shutdown_grace",
    "shutdown_close_code",
    "admin",
    "telemetry",
    "listeners",
    "backend_pools",
    "backend_settings",
    "probes",
    "routing_rules",
    "dns",
    "allow_empty",
];

/// `[admin]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of admin settings")]
pub(crate) struct RawAdmin {
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub bind: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<String>,
}

/// `[dns]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of DNS settings")]
pub(crate) struct RawDns {
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub name_servers: Option<Vec<String>>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_ttl: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ttl: Option<String>,
}

/// `[telemetry]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of telemetry settings"
)]
pub(crate) struct RawTelemetry {
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_name: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_level: Option<String>,
}

/// `[listeners.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of listener settings"
)]
pub(crate) struct RawListener {
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ListenerProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_head_bytes: Option<String>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_headers: Option<usize>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_head_timeout: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_body_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Vec<RawCertificate>>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ca: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_to: Option<String>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<usize>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_handshakes_per_ip: Option<usize>,
}

/// `[[listeners.NAME.certificates]]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table with cert_file, key_file and server_names"
)]
pub(crate) struct RawCertificate {
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cert_file: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub key_file: Option<String>,
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_names: Option<Vec<String>>,
}

/// `[backend_pools.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of backend pool settings"
)]
pub(crate) struct RawBackendPool {
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub members: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub hash_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<RawPassive>,
}

/// `[backend_pools.NAME.passive]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of passive health settings"
)]
pub(crate) struct RawPassive {
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub failures: Option<u32>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub ejection: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection: Option<String>,
}

/// `[backend_settings.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of backend settings"
)]
pub(crate) struct RawBackendSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<BackendProtocol>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub host_override: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<String>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub retries: Option<u32>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_file: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_name: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_cert_file: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_file: Option<String>,
}

/// `[probes.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of probe settings")]
pub(crate) struct RawProbe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<BackendProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<ProbeKind>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub host: Option<String>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<String>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_threshold: Option<u32>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub healthy_threshold: Option<u32>,
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub match_status: Option<Vec<String>>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub match_body: Option<String>,
}

/// `[routing_rules.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of routing rule settings"
)]
pub(crate) struct RawRoutingRule {
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub listener: Option<String>,
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub hosts: Option<Vec<String>>,
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub paths: Option<Vec<String>>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_pool: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_settings: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<RawWebSocket>,
}

/// `[routing_rules.NAME.websocket]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of WebSocket settings"
)]
pub(crate) struct RawWebSocket {
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_origins: Option<Vec<String>>,
    #[serde(
        deserialize_with = "lenient::boolean",
        skip_serializing_if = "Option::is_none"
    )]
    pub require_origin: Option<bool>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub keepalive_interval: Option<String>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_message_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inspect: Option<Inspect>,
    #[serde(
        deserialize_with = "lenient::list",
        skip_serializing_if = "Option::is_none"
    )]
    pub subprotocols: Option<Vec<String>>,
    #[serde(
        deserialize_with = "lenient::num",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_sessions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_backend_unhealthy: Option<OnBackendUnhealthy>,
    #[serde(
        deserialize_with = "lenient::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_grace: Option<String>,
}

/// Reads the merged tree into a [`RawConfig`], collecting every structural error.
/// Entries that fail are left out; their names are still returned in `declared` so that
/// references to them do not produce a second, misleading error.
pub(crate) fn read(root: &Node) -> (RawConfig, Declared, Vec<ConfigError>) {
    let mut raw = RawConfig::default();
    let mut declared = Declared::default();
    let mut errors = Vec::new();
    let Value::Table(top) = &root.value else {
        return (raw, declared, errors);
    };
    for (key, node) in top {
        let result = match key.as_str() {
            "workers" => from_node_with(node, key, lenient::num).map(|v| raw.workers = v),
            "shutdown_grace" => {
                from_node_with(node, key, lenient::text).map(|v| raw.shutdown_grace = v)
            }
            "shutdown_close_code" => {
                from_node_with(node, key, lenient::num).map(|v| raw.shutdown_close_code = v)
            }
            "admin" => from_node(node, key).map(|v| raw.admin = Some(v)),
            "dns" => from_node(node, key).map(|v| raw.dns = Some(v)),
            "allow_empty" => {
                from_node_with(node, key, lenient::boolean).map(|v| raw.allow_empty = v)
            }
            "telemetry" => from_node(node, key).map(|v| raw.telemetry = Some(v)),
            "listeners" => entries(
                node,
                key,
                &mut raw.listeners,
                &mut declared.listeners,
                &mut errors,
            ),
            "backend_pools" => entries(
                node,
                key,
                &mut raw.backend_pools,
                &mut declared.backend_pools,
                &mut errors,
            ),
            "backend_settings" => entries(
                node,
                key,
                &mut raw.backend_settings,
                &mut declared.backend_settings,
                &mut errors,
            ),
            "probes" => entries(
                node,
                key,
                &mut raw.probes,
                &mut declared.probes,
                &mut errors,
            ),
            "routing_rules" => entries(
                node,
                key,
                &mut raw.routing_rules,
                &mut declared.routing_rules,
                &mut errors,
            ),
            other => Err(ConfigError::new(
                other,
                unknown_field(other, TOP_LEVEL_KEYS),
                &node.source,
            )),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    (raw, declared, errors)
}

/// The names of all entries present in the file, whether or not they deserialized.
#[derive(Debug, Default)]
pub(crate) struct Declared {
    pub listeners: Vec<String>,
    pub backend_pools: Vec<String>,
    pub backend_settings: Vec<String>,
    pub probes: Vec<String>,
    pub routing_rules: Vec<String>,
}

impl Declared {
    /// Each named table's key and the names declared in it.
    pub(crate) fn sections(&self) -> [(&'static str, &[String]); 5] {
        [
            ("listeners", &self.listeners),
            ("backend_pools", &self.backend_pools),
            ("backend_settings", &self.backend_settings),
            ("probes", &self.probes),
            ("routing_rules", &self.routing_rules),
        ]
    }
}

/// Reads each entry of a named table (`[listeners.NAME]`, ...) on its own.
fn entries<'de, T: Deserialize<'de>>(
    node: &'de Node,
    section: &str,
    out: &mut BTreeMap<String, T>,
    names: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) -> Result<(), ConfigError> {
    let Value::Table(table) = &node.value else {
        return Err(ConfigError::new(
            section,
            format!("expected a table of named entries, e.g. [{section}.NAME]"),
            &node.source,
        ));
    };
    for (name, entry) in table {
        names.push(name.clone());
        match from_node(entry, &format!("{section}.{name}")) {
            Ok(value) => {
                out.insert(name.clone(), value);
            }
            Err(e) => errors.push(e),
        }
    }
    Ok(())
}

impl From<&Config> for RawConfig {
    /// The effective configuration with every field written out in its human form.
    fn from(c: &Config) -> Self {
        Self {
            workers: Some(c.workers),
            shutdown_grace: Some(format_duration(c.shutdown_grace)),
            shutdown_close_code: Some(c.shutdown_close_code),
            allow_empty: Some(c.allow_empty),
            admin: Some(RawAdmin {
                bind: Some(c.admin.bind.to_string()),
                token: c.admin.token.clone(),
            }),
            telemetry: Some(RawTelemetry {
                service_name: Some(c.telemetry.service_name.clone()),
                otlp_endpoint: c.telemetry.otlp_endpoint.clone(),
                log_format: Some(c.telemetry.log_format),
                log_level: Some(c.telemetry.log_level.clone()),
            }),
            listeners: c
                .listeners
                .iter()
                .map(|(name, l)| {
                    let raw = RawListener {
                        bind: Some(l.bind.to_string()),
                        protocol: Some(l.protocol),
                        max_request_head_bytes: Some(format_size(l.max_request_head_bytes as u64)),
                        max_headers: Some(l.max_headers),
                        request_head_timeout: Some(format_duration(l.request_head_timeout)),
                        request_body_timeout: Some(format_duration(l.request_body_timeout)),
                        max_connections: Some(l.max_connections),
                        max_handshakes_per_ip: Some(l.max_handshakes_per_ip),
                        certificates: (!l.certificates.is_empty()).then(|| {
                            l.certificates
                                .iter()
                                .map(|cert| RawCertificate {
                                    cert_file: Some(cert.cert_file.display().to_string()),
                                    key_file: Some(cert.key_file.display().to_string()),
                                    server_names: written(&cert.server_names),
                                })
                                .collect()
                        }),
                        client_ca: l.client_ca.as_ref().map(|p| p.display().to_string()),
                        redirect_to: l.redirect_to.clone(),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            backend_pools: c
                .backend_pools
                .iter()
                .map(|(name, p)| {
                    let raw = RawBackendPool {
                        members: Some(p.members.iter().map(PoolMember::to_string).collect()),
                        load_balancing: Some(p.load_balancing),
                        hash_key: Some(p.hash_key.to_string()),
                        passive: Some(RawPassive {
                            failures: Some(p.passive.failures),
                            ejection: Some(format_duration(p.passive.ejection)),
                            max_ejection: Some(format_duration(p.passive.max_ejection)),
                        }),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            backend_settings: c
                .backend_settings
                .iter()
                .map(|(name, s)| {
                    let raw = RawBackendSettings {
                        protocol: Some(s.protocol),
                        port: s.port,
                        host_override: s.host_override.clone(),
                        request_timeout: Some(format_duration(s.request_timeout)),
                        connect_timeout: Some(format_duration(s.connect_timeout)),
                        retries: Some(s.retries),
                        probe: s.probe.clone(),
                        ca_file: s.ca_file.as_ref().map(|p| p.display().to_string()),
                        server_name: s.server_name.clone(),
                        client_cert_file: s
                            .client_cert_file
                            .as_ref()
                            .map(|p| p.display().to_string()),
                        client_key_file: s
                            .client_key_file
                            .as_ref()
                            .map(|p| p.display().to_string()),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            probes: c
                .probes
                .iter()
                .map(|(name, p)| {
                    let raw = RawProbe {
                        protocol: Some(p.protocol),
                        kind: Some(p.kind),
                        path: Some(p.path.clone()),
                        host: p.host.clone(),
                        port: p.port,
                        interval: Some(format_duration(p.interval)),
                        timeout: Some(format_duration(p.timeout)),
                        unhealthy_threshold: Some(p.unhealthy_threshold.get()),
                        healthy_threshold: Some(p.healthy_threshold.get()),
                        match_status: Some(
                            p.match_status.iter().map(format_status_range).collect(),
                        ),
                        match_body: p.match_body.clone(),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            routing_rules: c
                .routing_rules
                .iter()
                .map(|(name, r)| {
                    let ws = &r.websocket;
                    let raw = RawRoutingRule {
                        listener: Some(r.listener.clone()),
                        hosts: written(&r.hosts),
                        paths: written(&r.paths),
                        backend_pool: Some(r.backend_pool.clone()),
                        backend_settings: Some(r.backend_settings.clone()),
                        websocket: Some(RawWebSocket {
                            allowed_origins: written(&ws.allowed_origins),
                            require_origin: Some(ws.require_origin),
                            keepalive_interval: Some(format_duration(ws.keepalive_interval)),
                            max_message_size: ws.max_message_size.map(format_size),
                            inspect: Some(ws.inspect),
                            subprotocols: written(&ws.subprotocols),
                            max_sessions: ws.max_sessions,
                            on_backend_unhealthy: Some(ws.on_backend_unhealthy),
                            drain_grace: Some(format_duration(ws.drain_grace)),
                        }),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            dns: Some(RawDns {
                name_servers: written(&c.dns.name_servers),
                min_ttl: Some(format_duration(c.dns.min_ttl)),
                max_ttl: Some(format_duration(c.dns.max_ttl)),
            }),
        }
    }
}

impl Config {
    /// The effective configuration as TOML a person can read and paste back: durations as
    /// `40s`, sizes as `1MiB`, patterns as written. `from_toml_str` of the result gives back
    /// an equal `Config`.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(&RawConfig::from(self))
            .expect("the raw configuration holds only strings, small integers, tables and lists")
    }
}

/// A list in its written form.
fn written<T: ToString>(items: &[T]) -> Option<Vec<String>> {
    Some(items.iter().map(ToString::to_string).collect())
}

/// Deserializers that accept the string forms environment variables arrive in.
mod lenient {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserialize, Deserializer, SeqAccess, Unexpected, Visitor};

    /// Unsigned integer types a field may have. TOML integers stop at `i64::MAX`, so
    /// larger values are refused (keeping every value writable back by `to_toml_string`).
    pub(super) trait UInt: TryFrom<u64> {
        const MAX: u64;
    }

    macro_rules! uint {
        ($($t:ty),*) => {$(
            impl UInt for $t {
                const MAX: u64 = if (<$t>::MAX as u128) < (i64::MAX as u128) { <$t>::MAX as u64 } else { i64::MAX as u64 };
            }
        )*};
    }
    uint!(u16, u32, usize);

    /// A non-negative integer, or its string form: `2` or `"2"`.
    pub(super) fn num<'de, D: Deserializer<'de>, T: UInt>(d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(Num(PhantomData)).map(Some)
    }

    struct Num<T>(PhantomData<T>);

    impl<T: UInt> Visitor<'_> for Num<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a whole number from 0 to {}", T::MAX)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            match T::try_from(v) {
                Ok(n) if v <= T::MAX => Ok(n),
                _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            match s.trim().parse::<u64>() {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(Unexpected::Str(s), &self)),
            }
        }
    }

    /// `true`/`false`, or their string form.
    pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        d.deserialize_any(Bool).map(Some)
    }

    struct Bool;

    impl Visitor<'_> for Bool {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
            }
        }
    }

    /// A string; a number is taken in its written form (`max_message_size = 65536`).
    pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(Text).map(Some)
    }

    struct Text;

    impl Visitor<'_> for Text {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
            Ok(s.to_owned())
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    /// One list element, read like [`text`].
    struct Item(String);

    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Text).map(Item)
        }
    }

    /// A list of strings, or one comma-separated string (`"a, b"`; `""` is the empty list).
    pub(super) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        d.deserialize_any(List).map(Some)
    }

    struct List;

    impl<'de> Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list or a comma-separated string")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(Item(item)) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }
}
