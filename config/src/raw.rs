//! Stage one: a serde mirror of the configuration file.
//!
//! Every field is optional (defaults are applied in [`crate::validate`]) and every struct
//! denies unknown fields, so serde fails only on structure: an unknown field or a value of
//! the wrong shape. Values that need parsing (durations, sizes, addresses, patterns, status
//! ranges) stay strings here. Every value field is a [`Lenient`] value ([`Text`], [`Num`],
//! [`Flag`], [`List`]) whose one `Deserialize` accepts the forms of its kind: because
//! environment variables arrive as strings, numbers and booleans also accept their string form
//! (`"2"`, `"true"`), every list also accepts a comma-separated string
//! (`"127.0.0.1:5000,127.0.0.1:5001"`), and every text field takes a number as written. Enums
//! (`protocol`, `kind`, ...) are read by name.
//!
//! The root is read key by key ([`TOP_LEVEL`]) and each named entry (each listener, pool, ...)
//! on its own, so that one bad entry does not hide the errors in the others.
//!
//! The field list is written where each copy says something the others cannot: the structs
//! (the schema serde checks, with `deny_unknown_fields`), `From<&Config>` (each field's human
//! form: a duration as `40s`, a size as `1MiB`), and `Declared` (the names of the five named
//! tables, kept even for entries that failed). The top-level keys are written once, in
//! [`TOP_LEVEL`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::de::{from_node, from_node_all};
use crate::error::{unknown_field, ConfigError};
use crate::lenient::{Flag, Lenient, List, Num, Text};
use crate::model::{
    format_status_range, BackendProtocol, Config, Inspect, ListenerProtocol, LoadBalancing,
    LogFormat, OnBackendUnhealthy, OnRateLimit, PoolMember, ProbeKind,
};
use crate::tree::{Node, Value};
use crate::units::{format_duration, format_size};

/// The whole file. Serialized by [`Config::to_toml_string`]; read by [`read`].
#[derive(Debug, Default, Serialize)]
pub(crate) struct RawConfig {
    pub workers: Num<usize>,
    pub shutdown_grace: Text,
    pub shutdown_delay: Text,
    pub shutdown_close_code: Num<u16>,
    /// Before every table: TOML writes plain values first.
    pub allow_empty: Flag,
    pub admin: Option<RawAdmin>,
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
    pub dns: Option<RawDns>,
}

/// `[admin]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of admin settings")]
pub(crate) struct RawAdmin {
    pub bind: Text,
    pub token: Text,
}

/// `[dns]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of DNS settings")]
pub(crate) struct RawDns {
    pub name_servers: List,
    pub min_ttl: Text,
    pub max_ttl: Text,
}

/// `[telemetry]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of telemetry settings"
)]
pub(crate) struct RawTelemetry {
    pub service_name: Text,
    pub otlp_endpoint: Text,
    pub log_format: Option<LogFormat>,
    pub log_level: Text,
    pub access_log_fields: List,
    pub record_query: Flag,
}

/// `[listeners.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of listener settings"
)]
pub(crate) struct RawListener {
    pub bind: Text,
    pub protocol: Option<ListenerProtocol>,
    pub max_request_head_bytes: Text,
    pub max_headers: Num<usize>,
    pub request_head_timeout: Text,
    pub request_body_timeout: Text,
    pub certificates: Option<Vec<RawCertificate>>,
    pub client_ca: Text,
    pub redirect_to: Text,
    pub max_connections: Num<usize>,
    pub max_handshakes_per_ip: Num<usize>,
    pub http2: Flag,
    pub http2_websockets: Flag,
    pub http2_max_concurrent_streams: Num<u32>,
    pub http2_idle_timeout: Text,
}

/// `[[listeners.NAME.certificates]]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table with cert_file, key_file and server_names"
)]
pub(crate) struct RawCertificate {
    pub cert_file: Text,
    pub key_file: Text,
    pub server_names: List,
}

/// `[backend_pools.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of backend pool settings"
)]
pub(crate) struct RawBackendPool {
    pub members: List,
    pub load_balancing: Option<LoadBalancing>,
    pub hash_key: Text,
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
    pub failures: Num<u32>,
    pub ejection: Text,
    pub max_ejection: Text,
}

/// `[backend_settings.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of backend settings"
)]
pub(crate) struct RawBackendSettings {
    pub protocol: Option<BackendProtocol>,
    pub port: Num<u16>,
    pub host_override: Text,
    pub request_timeout: Text,
    pub connect_timeout: Text,
    pub retries: Num<u32>,
    pub probe: Text,
    pub ca_file: Text,
    pub server_name: Text,
    pub client_cert_file: Text,
    pub client_key_file: Text,
    pub source_addresses: List,
}

/// `[probes.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of probe settings")]
pub(crate) struct RawProbe {
    pub protocol: Option<BackendProtocol>,
    pub kind: Option<ProbeKind>,
    pub path: Text,
    pub host: Text,
    pub port: Num<u16>,
    pub interval: Text,
    pub timeout: Text,
    pub unhealthy_threshold: Num<u32>,
    pub healthy_threshold: Num<u32>,
    pub match_status: List,
    pub match_body: Text,
}

/// `[routing_rules.NAME]`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of routing rule settings"
)]
pub(crate) struct RawRoutingRule {
    pub listener: Text,
    pub hosts: List,
    pub paths: List,
    pub backend_pool: Text,
    pub backend_settings: Text,
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
    pub allowed_origins: List,
    pub require_origin: Flag,
    pub keepalive_interval: Text,
    pub max_message_size: Text,
    pub inspect: Option<Inspect>,
    pub subprotocols: List,
    pub max_sessions: Num<u32>,
    pub on_backend_unhealthy: Option<OnBackendUnhealthy>,
    pub drain_grace: Text,
    pub drain_spread: Text,
    pub max_new_sessions_per_second: Num<u32>,
    pub new_sessions_burst: Num<u32>,
    pub max_messages_per_second: Num<u32>,
    pub messages_burst: Num<u32>,
    pub max_bytes_per_second: Text,
    pub bytes_burst: Text,
    pub on_rate_limit: Option<OnRateLimit>,
    pub slow_consumer_timeout: Text,
    pub max_session_age: Text,
}

/// How one top-level key is read into the [`RawConfig`] (and, for named tables, the names it
/// declares into [`Declared`]; errors of single entries go to the list).
type ReadKey = fn(
    &Node,
    &str,
    &mut RawConfig,
    &mut Declared,
    &mut Vec<ConfigError>,
) -> Result<(), ConfigError>;

/// Every top-level key and how it is read: the one list [`read`] dispatches on and
/// [`TOP_LEVEL_KEYS`] is made of. Values and tables are read whole; each entry of a named table
/// (`[listeners.NAME]`, ...) is read on its own.
const TOP_LEVEL: [(&str, ReadKey); 13] = [
    ("workers", |n, k, raw, _, _| {
        from_node(n, k).map(|v| raw.workers = v)
    }),
    ("shutdown_grace", |n, k, raw, _, _| {
        from_node(n, k).map(|v| raw.shutdown_grace = v)
    }),
    ("shutdown_delay", |n, k, raw, _, _| {
        from_node(n, k).map(|v| raw.shutdown_delay = v)
    }),
    ("shutdown_close_code", |n, k, raw, _, _| {
        from_node(n, k).map(|v| raw.shutdown_close_code = v)
    }),
    ("admin", |n, k, raw, _, errors| {
        whole(n, k, errors).map(|v| raw.admin = Some(v))
    }),
    ("telemetry", |n, k, raw, _, errors| {
        whole(n, k, errors).map(|v| raw.telemetry = Some(v))
    }),
    ("listeners", |n, k, raw, declared, errors| {
        entries(n, k, &mut raw.listeners, &mut declared.listeners, errors)
    }),
    ("backend_pools", |n, k, raw, declared, errors| {
        entries(
            n,
            k,
            &mut raw.backend_pools,
            &mut declared.backend_pools,
            errors,
        )
    }),
    ("backend_settings", |n, k, raw, declared, errors| {
        entries(
            n,
            k,
            &mut raw.backend_settings,
            &mut declared.backend_settings,
            errors,
        )
    }),
    ("probes", |n, k, raw, declared, errors| {
        entries(n, k, &mut raw.probes, &mut declared.probes, errors)
    }),
    ("routing_rules", |n, k, raw, declared, errors| {
        entries(
            n,
            k,
            &mut raw.routing_rules,
            &mut declared.routing_rules,
            errors,
        )
    }),
    ("dns", |n, k, raw, _, errors| {
        whole(n, k, errors).map(|v| raw.dns = Some(v))
    }),
    ("allow_empty", |n, k, raw, _, _| {
        from_node(n, k).map(|v| raw.allow_empty = v)
    }),
];

/// The keys allowed at the top level of a configuration file.
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &{
    let mut keys = [""; TOP_LEVEL.len()];
    let mut i = 0;
    while i < keys.len() {
        keys[i] = TOP_LEVEL[i].0;
        i += 1;
    }
    keys
};

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
        let result = match TOP_LEVEL.iter().find(|(name, _)| name == key) {
            Some((_, read_key)) => read_key(node, key, &mut raw, &mut declared, &mut errors),
            None => Err(ConfigError::new(
                key,
                unknown_field(key, TOP_LEVEL_KEYS),
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
/// Reads a table, every error of it reported ([`from_node_all`]): the last is returned, the
/// others go to `errors`.
fn whole<T: serde::de::DeserializeOwned>(
    node: &Node,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Result<T, ConfigError> {
    from_node_all(node, path).map_err(|mut all| {
        let last = all
            .pop()
            .unwrap_or_else(|| ConfigError::new(path, "invalid", &node.source));
        errors.extend(all);
        last
    })
}

fn entries<T: serde::de::DeserializeOwned>(
    node: &Node,
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
        match from_node_all(entry, &format!("{section}.{name}")) {
            Ok(value) => {
                out.insert(name.clone(), value);
            }
            Err(all) => errors.extend(all),
        }
    }
    Ok(())
}

impl From<&Config> for RawConfig {
    /// The effective configuration with every field written out in its human form.
    fn from(c: &Config) -> Self {
        Self {
            workers: Lenient(Some(c.workers)),
            shutdown_grace: Lenient(Some(format_duration(c.shutdown_grace))),
            shutdown_delay: Lenient(Some(format_duration(c.shutdown_delay))),
            shutdown_close_code: Lenient(Some(c.shutdown_close_code)),
            allow_empty: Lenient(Some(c.allow_empty)),
            admin: Some(RawAdmin {
                bind: Lenient(Some(c.admin.bind.to_string())),
                token: Lenient(c.admin.token.clone()),
            }),
            telemetry: Some(RawTelemetry {
                service_name: Lenient(Some(c.telemetry.service_name.clone())),
                otlp_endpoint: Lenient(c.telemetry.otlp_endpoint.clone()),
                log_format: Some(c.telemetry.log_format),
                log_level: Lenient(Some(c.telemetry.log_level.clone())),
                access_log_fields: Lenient(Some(
                    c.telemetry
                        .access_log_fields
                        .iter()
                        .map(|f| f.as_str().to_owned())
                        .collect(),
                )),
                record_query: Lenient(Some(c.telemetry.record_query)),
            }),
            listeners: c
                .listeners
                .iter()
                .map(|(name, l)| {
                    let raw = RawListener {
                        bind: Lenient(Some(l.bind.to_string())),
                        protocol: Some(l.protocol),
                        max_request_head_bytes: Lenient(Some(format_size(
                            l.max_request_head_bytes as u64,
                        ))),
                        max_headers: Lenient(Some(l.max_headers)),
                        request_head_timeout: Lenient(Some(format_duration(
                            l.request_head_timeout,
                        ))),
                        request_body_timeout: Lenient(Some(format_duration(
                            l.request_body_timeout,
                        ))),
                        max_connections: Lenient(Some(l.max_connections)),
                        max_handshakes_per_ip: Lenient(Some(l.max_handshakes_per_ip)),
                        http2: Lenient(Some(l.http2)),
                        http2_websockets: Lenient(Some(l.http2_websockets)),
                        http2_max_concurrent_streams: Lenient(Some(l.http2_max_concurrent_streams)),
                        http2_idle_timeout: Lenient(Some(format_duration(l.http2_idle_timeout))),
                        certificates: (!l.certificates.is_empty()).then(|| {
                            l.certificates
                                .iter()
                                .map(|cert| RawCertificate {
                                    cert_file: Lenient(Some(cert.cert_file.display().to_string())),
                                    key_file: Lenient(Some(cert.key_file.display().to_string())),
                                    server_names: Lenient(written(&cert.server_names)),
                                })
                                .collect()
                        }),
                        client_ca: Lenient(l.client_ca.as_ref().map(|p| p.display().to_string())),
                        redirect_to: Lenient(l.redirect_to.clone()),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            backend_pools: c
                .backend_pools
                .iter()
                .map(|(name, p)| {
                    let raw = RawBackendPool {
                        members: Lenient(Some(
                            p.members.iter().map(PoolMember::to_string).collect(),
                        )),
                        load_balancing: Some(p.load_balancing),
                        hash_key: Lenient(Some(p.hash_key.to_string())),
                        passive: Some(RawPassive {
                            failures: Lenient(Some(p.passive.failures)),
                            ejection: Lenient(Some(format_duration(p.passive.ejection))),
                            max_ejection: Lenient(Some(format_duration(p.passive.max_ejection))),
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
                        port: Lenient(s.port),
                        host_override: Lenient(s.host_override.clone()),
                        request_timeout: Lenient(Some(format_duration(s.request_timeout))),
                        connect_timeout: Lenient(Some(format_duration(s.connect_timeout))),
                        retries: Lenient(Some(s.retries)),
                        probe: Lenient(s.probe.clone()),
                        ca_file: Lenient(s.ca_file.as_ref().map(|p| p.display().to_string())),
                        server_name: Lenient(s.server_name.clone()),
                        client_cert_file: Lenient(
                            s.client_cert_file.as_ref().map(|p| p.display().to_string()),
                        ),
                        client_key_file: Lenient(
                            s.client_key_file.as_ref().map(|p| p.display().to_string()),
                        ),
                        source_addresses: Lenient(written(&s.source_addresses)),
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
                        path: Lenient(Some(p.path.clone())),
                        host: Lenient(p.host.clone()),
                        port: Lenient(p.port),
                        interval: Lenient(Some(format_duration(p.interval))),
                        timeout: Lenient(Some(format_duration(p.timeout))),
                        unhealthy_threshold: Lenient(Some(p.unhealthy_threshold.get())),
                        healthy_threshold: Lenient(Some(p.healthy_threshold.get())),
                        match_status: Lenient(Some(
                            p.match_status.iter().map(format_status_range).collect(),
                        )),
                        match_body: Lenient(p.match_body.clone()),
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
                        listener: Lenient(Some(r.listener.clone())),
                        hosts: Lenient(written(&r.hosts)),
                        paths: Lenient(written(&r.paths)),
                        backend_pool: Lenient(Some(r.backend_pool.clone())),
                        backend_settings: Lenient(Some(r.backend_settings.clone())),
                        websocket: Some(RawWebSocket {
                            allowed_origins: Lenient(written(&ws.allowed_origins)),
                            require_origin: Lenient(Some(ws.require_origin)),
                            keepalive_interval: Lenient(Some(format_duration(
                                ws.keepalive_interval,
                            ))),
                            max_message_size: Lenient(ws.max_message_size.map(format_size)),
                            inspect: Some(ws.inspect),
                            subprotocols: Lenient(written(&ws.subprotocols)),
                            max_sessions: Lenient(ws.max_sessions),
                            on_backend_unhealthy: Some(ws.on_backend_unhealthy),
                            drain_grace: Lenient(Some(format_duration(ws.drain_grace))),
                            drain_spread: Lenient(Some(format_duration(ws.drain_spread))),
                            max_new_sessions_per_second: Lenient(
                                ws.max_new_sessions_per_second.map(|r| r.per_second as u32),
                            ),
                            new_sessions_burst: Lenient(
                                ws.max_new_sessions_per_second.map(|r| r.burst as u32),
                            ),
                            max_messages_per_second: Lenient(
                                ws.max_messages_per_second.map(|r| r.per_second as u32),
                            ),
                            messages_burst: Lenient(
                                ws.max_messages_per_second.map(|r| r.burst as u32),
                            ),
                            max_bytes_per_second: Lenient(
                                ws.max_bytes_per_second.map(|r| format_size(r.per_second)),
                            ),
                            bytes_burst: Lenient(
                                ws.max_bytes_per_second.map(|r| format_size(r.burst)),
                            ),
                            on_rate_limit: Some(ws.on_rate_limit),
                            slow_consumer_timeout: Lenient(Some(format_duration(
                                ws.slow_consumer_timeout,
                            ))),
                            max_session_age: Lenient(ws.max_session_age.map(format_duration)),
                        }),
                    };
                    (name.clone(), raw)
                })
                .collect(),
            dns: Some(RawDns {
                name_servers: Lenient(written(&c.dns.name_servers)),
                min_ttl: Lenient(Some(format_duration(c.dns.min_ttl))),
                max_ttl: Lenient(Some(format_duration(c.dns.max_ttl))),
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

#[cfg(test)]
mod tests {
    use std::fmt;

    use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

    use super::*;
    use crate::tree::parse_str;

    /// Asks a derived `Deserialize` for its struct's field names, and stops there.
    struct FieldsOf;

    #[derive(Debug)]
    struct Stop(&'static [&'static str]);

    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl std::error::Error for Stop {}

    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop(&[])
        }
    }

    impl<'de> Deserializer<'de> for FieldsOf {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            Err(Stop(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct
            map enum identifier ignored_any
        }
    }

    fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
        T::deserialize(FieldsOf).map(|_| ()).unwrap_err().0
    }

    /// Every table of the file: how a TOML document opens it, the path its fields sit at, and
    /// its fields.
    fn tables() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
        vec![
            ("", "", TOP_LEVEL_KEYS),
            ("[admin]", "admin", fields_of::<RawAdmin>()),
            ("[dns]", "dns", fields_of::<RawDns>()),
            ("[telemetry]", "telemetry", fields_of::<RawTelemetry>()),
            ("[listeners.x]", "listeners.x", fields_of::<RawListener>()),
            (
                "[[listeners.x.certificates]]",
                "listeners.x.certificates[0]",
                fields_of::<RawCertificate>(),
            ),
            (
                "[backend_pools.x]",
                "backend_pools.x",
                fields_of::<RawBackendPool>(),
            ),
            (
                "[backend_pools.x.passive]",
                "backend_pools.x.passive",
                fields_of::<RawPassive>(),
            ),
            (
                "[backend_settings.x]",
                "backend_settings.x",
                fields_of::<RawBackendSettings>(),
            ),
            ("[probes.x]", "probes.x", fields_of::<RawProbe>()),
            (
                "[routing_rules.x]",
                "routing_rules.x",
                fields_of::<RawRoutingRule>(),
            ),
            (
                "[routing_rules.x.websocket]",
                "routing_rules.x.websocket",
                fields_of::<RawWebSocket>(),
            ),
        ]
    }

    /// The forms a value may be written in, as TOML.
    const FORMS: [&str; 6] = ["2", "\"2\"", "true", "\"TRUE\"", "[\"a\", 2]", "\"a, 2\""];

    /// Which of [`FORMS`] each kind of field accepts.
    const KINDS: [(&str, [bool; 6]); 6] = [
        ("text", [true, true, false, true, false, true]),
        ("number", [true, true, false, false, false, false]),
        ("flag", [false, false, true, true, false, false]),
        ("list", [false, true, false, true, true, true]),
        // Enums (read by name) and tables accept none of these ...
        ("enum or table", [false; 6]),
        // ... except that serde reads a table from a list of its fields in order, when the
        // list's values fit them (`admin = ["a", 2]`).
        ("enum or table", [false, false, false, false, true, false]),
    ];

    /// The fields that are not lenient values: enums and tables.
    const NOT_VALUES: &[&str] = &[
        "admin",
        "telemetry",
        "dns",
        "listeners",
        "backend_pools",
        "backend_settings",
        "probes",
        "routing_rules",
        "telemetry.log_format",
        "listeners.x.protocol",
        "listeners.x.certificates",
        "backend_pools.x.load_balancing",
        "backend_pools.x.passive",
        "backend_settings.x.protocol",
        "probes.x.protocol",
        "probes.x.kind",
        "routing_rules.x.websocket",
        "routing_rules.x.websocket.inspect",
        "routing_rules.x.websocket.on_backend_unhealthy",
        "routing_rules.x.websocket.on_rate_limit",
    ];

    /// Reads `field = form` in the table `open` opens; the raw configuration, or the errors
    /// at the field's `path`.
    fn read_one(open: &str, path: &str, field: &str, form: &str) -> Result<String, Vec<String>> {
        let doc = format!("{open}\n{field} = {form}\n");
        let root = parse_str(&doc, "inline").unwrap();
        let (raw, _, errors) = read(&root);
        let errors: Vec<String> = errors
            .iter()
            .filter(|e| e.path.starts_with(path))
            .map(ToString::to_string)
            .collect();
        if errors.is_empty() {
            Ok(toml::to_string(&raw).unwrap())
        } else {
            Err(errors)
        }
    }

    /// No field can read differently from the others of its kind: every field of the file
    /// accepts exactly the forms of one kind, and the forms of one value (`2` and `"2"`,
    /// `true` and `"TRUE"`, `["a", 2]` and `"a, 2"`) read the same.
    #[test]
    fn every_field_of_a_kind_accepts_the_same_forms() {
        let mut seen = 0;
        for (open, at, fields) in tables() {
            for &field in fields {
                seen += 1;
                let path = if at.is_empty() {
                    field.to_owned()
                } else {
                    format!("{at}.{field}")
                };
                let results: Vec<_> = FORMS
                    .iter()
                    .map(|form| read_one(open, &path, field, form))
                    .collect();
                let accepted: Vec<bool> = results.iter().map(Result::is_ok).collect();
                let kind = KINDS
                    .iter()
                    .find(|(_, forms)| forms[..] == accepted[..])
                    .map(|(kind, _)| *kind);
                let Some(kind) = kind else {
                    panic!("{path} reads the forms {FORMS:?} as no kind does: {results:#?}");
                };
                assert_eq!(
                    kind == "enum or table",
                    NOT_VALUES.contains(&path.as_str()),
                    "{path} is a {kind}"
                );
                let same = |a: usize, b: usize| assert_eq!(results[a], results[b], "{path}");
                match kind {
                    "text" | "number" => same(0, 1),
                    "flag" => same(2, 3),
                    "list" => same(4, 5),
                    _ => {}
                }
            }
        }
        assert!(seen > 70, "{seen} fields");
    }
}
