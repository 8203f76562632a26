//! Layering, sources and round-trip tests through the public API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::test_support::TempFile;
use crate::*;

const CHAT: &str = r#"
[listeners.public]
bind = "127.0.0.1:8080"

[backend_pools.chat]
members = ["127.0.0.1:5000"]

[backend_settings.chat]
request_timeout = "40s"
connect_timeout = "5s"

[routing_rules.chat]
listener = "public"
backend_pool = "chat"
backend_settings = "chat"
"#;

fn sources(files: &[&TempFile], env: &[(&str, &str)]) -> Sources {
    Sources {
        files: files.iter().map(|f| f.path().to_path_buf()).collect(),
        env: env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

fn load_err(sources: &Sources) -> Vec<ConfigError> {
    load(sources).expect_err("expected errors").0
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn embedded_default_is_used_only_without_files() {
    let loaded = load(&Sources::default()).unwrap();
    assert!(loaded.used_embedded_default);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.listeners["public"].bind, addr("0.0.0.0:8080"));
    assert_eq!(c.listeners["public"].protocol, ListenerProtocol::Http);
    assert_eq!(
        c.backend_pools["default"].members,
        [PoolMember::new(Member::Addr(addr("127.0.0.1:3000")))]
    );
    assert_eq!(
        c.backend_settings["default"].request_timeout,
        DEFAULT_REQUEST_TIMEOUT
    );
    let rule = &c.routing_rules["default"];
    assert_eq!(
        (rule.listener.as_str(), rule.backend_pool.as_str()),
        ("public", "default")
    );
    assert!(rule.paths.is_empty() && rule.hosts.is_empty());

    let file = TempFile::new("toml", CHAT);
    let loaded = load(&sources(&[&file], &[])).unwrap();
    assert!(!loaded.used_embedded_default);
    assert_eq!(
        loaded.config.listeners["public"].bind,
        addr("127.0.0.1:8080")
    );
    assert!(!loaded.config.backend_pools.contains_key("default"));
    assert!(!loaded.config.routing_rules.contains_key("default"));
}

#[test]
fn later_files_override_earlier_ones_key_by_key() {
    let first = TempFile::new("toml", CHAT);
    let second = TempFile::new(
        "toml",
        "[backend_settings.chat]\nrequest_timeout = \"50s\"\n",
    );
    let c = load(&sources(&[&first, &second], &[])).unwrap().config;
    assert_eq!(
        c.backend_settings["chat"].request_timeout,
        Duration::from_secs(50)
    );
    assert_eq!(
        c.backend_settings["chat"].connect_timeout,
        Duration::from_secs(5)
    );
}

#[test]
fn env_overrides_files() {
    let file = TempFile::new("toml", CHAT);
    let env = [
        ("TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT", "60s"),
        ("TETHER_WORKERS", "2"),
        (
            "TETHER_ROUTING_RULES__CHAT__WEBSOCKET__REQUIRE_ORIGIN",
            "true",
        ),
        ("TETHER_ROUTING_RULES__CHAT__WEBSOCKET__MAX_SESSIONS", "100"),
        (
            "TETHER_ROUTING_RULES__CHAT__WEBSOCKET__MAX_MESSAGES_PER_SECOND",
            "50",
        ),
        ("TETHER_ROUTING_RULES__CHAT__WEBSOCKET__DRAIN_SPREAD", "2s"),
        (
            "TETHER_ROUTING_RULES__CHAT__WEBSOCKET__ON_RATE_LIMIT",
            "delay",
        ),
        (
            "TETHER_BACKEND_POOLS__CHAT__LOAD_BALANCING",
            "least_connections",
        ),
        ("TETHER_BACKEND_SETTINGS__CHAT__PROTOCOL", "h2c"),
        ("PATH", "/usr/bin"),
        ("OTEL_SERVICE_NAME", "ignored"),
    ];
    let c = load(&sources(&[&file], &env)).unwrap().config;
    assert_eq!(
        c.backend_settings["chat"].request_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(
        c.backend_settings["chat"].connect_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(c.workers, 2);
    assert!(c.routing_rules["chat"].websocket.require_origin);
    assert_eq!(c.routing_rules["chat"].websocket.max_sessions, Some(100));
    let ws = &c.routing_rules["chat"].websocket;
    assert_eq!(
        ws.max_messages_per_second,
        Some(RateLimit {
            per_second: 50,
            burst: 50
        })
    );
    assert_eq!(ws.drain_spread, Duration::from_secs(2));
    assert_eq!(ws.on_rate_limit, OnRateLimit::Delay);
    assert_eq!(
        c.backend_pools["chat"].load_balancing,
        LoadBalancing::LeastConnections
    );
    assert_eq!(c.backend_settings["chat"].protocol, BackendProtocol::H2c);
}

#[test]
fn env_applies_over_the_embedded_default() {
    let env = [("TETHER_BACKEND_POOLS__DEFAULT__MEMBERS", "127.0.0.1:4000")];
    let loaded = load(&sources(&[], &env)).unwrap();
    assert!(loaded.used_embedded_default);
    assert_eq!(
        loaded.config.backend_pools["default"].members,
        [PoolMember::new(Member::Addr(addr("127.0.0.1:4000")))]
    );
}

#[test]
fn env_lists_are_comma_separated() {
    let file = TempFile::new("toml", CHAT);
    let env = [
        (
            "TETHER_BACKEND_POOLS__CHAT__MEMBERS",
            "127.0.0.1:5000, chat.internal:5001",
        ),
        ("TETHER_ROUTING_RULES__CHAT__PATHS", "/chat,/chat/*"),
    ];
    let c = load(&sources(&[&file], &env)).unwrap().config;
    assert_eq!(
        c.backend_pools["chat"].members,
        [
            PoolMember::new(Member::Addr(addr("127.0.0.1:5000"))),
            PoolMember::new(Member::Dns {
                host: "chat.internal".into(),
                port: 5001
            })
        ]
    );
    assert_eq!(
        c.routing_rules["chat"].paths,
        [
            PathPattern::Exact("/chat".into()),
            PathPattern::Prefix("/chat/".into())
        ]
    );
}

#[test]
fn env_variable_for_an_unknown_field_is_an_error_naming_it() {
    let file = TempFile::new("toml", CHAT);
    let env = [
        ("TETHER_LISTENERS__PUBLIC__BINDD", "0.0.0.0:80"),
        ("TETHER_NOPE", "1"),
    ];
    let errors = load_err(&sources(&[&file], &env));
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            r#"listeners.public.bindd: unknown field "bindd" (did you mean "bind"?) [env TETHER_LISTENERS__PUBLIC__BINDD]"#,
            "nope: unknown field \"nope\" (known fields: workers, shutdown_grace, shutdown_delay, shutdown_close_code, admin, telemetry, listeners, \
             backend_pools, backend_settings, probes, routing_rules, dns, allow_empty) [env TETHER_NOPE]",
        ]
    );
}

#[test]
fn env_value_errors_name_the_variable() {
    let env = [("TETHER_BACKEND_SETTINGS__DEFAULT__REQUEST_TIMEOUT", "40")];
    let errors = load_err(&sources(&[], &env));
    assert_eq!(
        errors[0].to_string(),
        r#"backend_settings.default.request_timeout: invalid duration "40": write a unit, e.g. "40s" [env TETHER_BACKEND_SETTINGS__DEFAULT__REQUEST_TIMEOUT]"#
    );
    let errors = load_err(&sources(&[], &[("TETHER_WORKERS", "many")]));
    assert_eq!(errors[0].path, "workers");
    assert_eq!(errors[0].source, "env TETHER_WORKERS");
    assert!(
        errors[0].message.contains(r#"string "many""#),
        "{}",
        errors[0]
    );
    let errors = load_err(&sources(&[], &[("TETHER_", "x")]));
    assert_eq!(errors[0].source, "env TETHER_");
}

#[test]
fn unknown_field_in_a_file_names_path_and_file() {
    let file = TempFile::new("toml", &CHAT.replace("connect_timeout", "conect_timeout"));
    let errors = load_err(&sources(&[&file], &[]));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "backend_settings.chat.conect_timeout");
    assert_eq!(
        errors[0].message,
        r#"unknown field "conect_timeout" (did you mean "connect_timeout"?)"#
    );
    assert_eq!(errors[0].source, format!("file {}", file.path().display()));
}

#[test]
fn yaml_and_json_files_work() {
    let yaml = TempFile::new(
        "yaml",
        r#"
listeners:
  public:
    bind: "127.0.0.1:8080"
backend_pools:
  chat:
    members: ["127.0.0.1:5000"]
backend_settings:
  chat:
    request_timeout: 40s
routing_rules:
  chat:
    listener: public
    backend_pool: chat
    backend_settings: chat
    websocket:
      keepalive_interval: 20s
      max_message_size: 1MiB
"#,
    );
    let json = TempFile::new(
        "json",
        r#"{"backend_pools": {"chat": {"members": ["127.0.0.1:6000"]}}, "workers": 3, "telemetry": {"otlp_endpoint": null}}"#,
    );
    let c = load(&sources(&[&yaml, &json], &[])).unwrap().config;
    assert_eq!(
        c.backend_settings["chat"].request_timeout,
        Duration::from_secs(40)
    );
    assert_eq!(
        c.routing_rules["chat"].websocket.max_message_size,
        Some(1 << 20)
    );
    assert_eq!(
        c.backend_pools["chat"].members,
        [PoolMember::new(Member::Addr(addr("127.0.0.1:6000")))]
    );
    assert_eq!(c.workers, 3);

    let yml = TempFile::new("yml", "workers: 4\n");
    let errors = load_err(&sources(&[&yml, &json], &[("TETHER_WORKERS", "x")]));
    assert_eq!(errors[0].source, "env TETHER_WORKERS");
}

#[test]
fn unreadable_unparsable_and_unknown_files_are_errors() {
    let missing = PathBuf::from("/nonexistent/tether-config-test.toml");
    let broken = TempFile::new("toml", "[listeners.public\nbind = 1");
    let ini = TempFile::new("ini", "workers = 1");
    let mut s = sources(&[&broken, &ini], &[]);
    s.files.insert(0, missing.clone());
    let errors = load_err(&s);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0].source, format!("file {}", missing.display()));
    assert!(
        errors[0].message.starts_with("cannot read"),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1].source,
        format!("file {}", broken.path().display())
    );
    assert!(
        errors[1].message.starts_with("cannot parse"),
        "{}",
        errors[1]
    );
    assert!(errors[2].message.contains(r#"".ini""#), "{}", errors[2]);
    assert!(errors.iter().all(|e| e.path.is_empty()));
}

#[test]
fn several_errors_in_one_file_are_reported_together() {
    let file = TempFile::new(
        "toml",
        &CHAT
            .replace(r#"request_timeout = "40s""#, r#"request_timeout = "40""#)
            .replace(r#"bind = "127.0.0.1:8080""#, r#"bind = "localhost""#)
            .replace(r#"backend_pool = "chat""#, r#"backend_pool = "chta""#),
    );
    let err = load(&sources(&[&file], &[])).unwrap_err();
    let text = err.to_string();
    let source = format!("[file {}]", file.path().display());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        format!(
            r#"backend_settings.chat.request_timeout: invalid duration "40": write a unit, e.g. "40s" {source}"#
        )
    );
    assert_eq!(
        lines[1],
        format!(
            r#"listeners.public.bind: invalid address "localhost": expected ip:port, e.g. "0.0.0.0:8080" {source}"#
        )
    );
    assert_eq!(
        lines[2],
        format!(
            r#"routing_rules.chat.backend_pool: no backend pool named "chta" (did you mean "chat"?) {source}"#
        )
    );
}

#[test]
fn warnings_carry_the_source_of_the_unused_table() {
    let env = [
        ("TETHER_LISTENERS__ALT__BIND", "127.0.0.1:8081"),
        ("TETHER_ROUTING_RULES__DEFAULT__LISTENER", "alt"),
        ("TETHER_BACKEND_POOLS__SPARE__MEMBERS", "127.0.0.1:9"),
    ];
    let loaded = load(&sources(&[], &env)).unwrap();
    assert_eq!(
        loaded.warnings,
        [
            "listeners.public: no routing rule uses this listener [embedded default]",
            "backend_pools.spare: no routing rule uses this backend pool [env TETHER_BACKEND_POOLS__SPARE__MEMBERS]",
        ]
    );
}

const FULL: &str = r#"
workers = 3
shutdown_grace = "45s"

[admin]
bind = "127.0.0.1:9902"

[telemetry]
service_name = "chat-sidecar"
otlp_endpoint = "http://127.0.0.1:4317"
log_format = "json"
log_level = "info,tether=debug"

[listeners.public]
bind = "0.0.0.0:8080"

[listeners.secure]
bind = "[::]:8443"
protocol = "https"
max_request_head_bytes = "32KiB"
max_headers = 64
request_head_timeout = "1m30s"
request_body_timeout = "45s"
[[listeners.secure.certificates]]
cert_file = "/etc/tether/chat.pem"
key_file = "/etc/tether/chat.key"
server_names = ["chat.example.com", "*.chat.example.com"]

[backend_pools.chat]
members = ["127.0.0.1:5000", "chat.internal:5000", "[::1]:5001"]
load_balancing = "consistent_hash"

[backend_settings.chat]
protocol = "https"
port = 5443
host_override = "chat.internal"
request_timeout = "40s"
connect_timeout = "1500ms"
retries = 2
probe = "chat"

[probes.chat]
kind = "websocket"
path = "/health"
host = "chat.internal"
port = 5000
interval = "5s"
timeout = "2s"
unhealthy_threshold = 4
healthy_threshold = 1
match_status = ["200-299", "404"]
match_body = "ok"

[routing_rules.chat]
listener = "public"
hosts = ["*.Example.com", "chat.example.org"]
paths = ["/chat", "/chat/*"]
backend_pool = "chat"
backend_settings = "chat"
[routing_rules.chat.websocket]
allowed_origins = ["https://chat.example.com", "http://localhost:3000"]
require_origin = true
keepalive_interval = "20s"
max_message_size = "1MiB"
inspect = "opaque"
subprotocols = ["chat.v1"]
max_sessions = 1000
on_backend_unhealthy = "drain"
drain_grace = "0s"

[routing_rules.secure]
listener = "secure"
backend_pool = "chat"
backend_settings = "chat"
"#;

#[test]
fn to_toml_string_round_trips() {
    let config = from_toml_str(FULL).unwrap();
    let text = config.to_toml_string();
    assert_eq!(from_toml_str(&text).unwrap(), config, "{text}");
    for written in [
        r#"request_head_timeout = "1m30s""#,
        r#"request_body_timeout = "45s""#,
        r#"connect_timeout = "1s500ms""#,
        "retries = 2",
        r#"max_message_size = "1MiB""#,
        r#"max_request_head_bytes = "32KiB""#,
        r#"paths = ["/chat", "/chat/*"]"#,
        r#"hosts = ["*.example.com", "chat.example.org"]"#,
        r#"match_status = ["200-299", "404"]"#,
        r#"kind = "websocket""#,
    ] {
        assert!(text.contains(written), "{written} not in\n{text}");
    }

    let default = load(&Sources::default()).unwrap().config;
    assert_eq!(from_toml_str(&default.to_toml_string()).unwrap(), default);
}

#[test]
fn full_config_converts_to_strong_types() {
    let c = from_toml_str(FULL).unwrap();
    assert_eq!(c.workers, 3);
    assert_eq!(c.admin.bind, addr("127.0.0.1:9902"));
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
    let secure = &c.listeners["secure"];
    assert_eq!(secure.max_request_head_bytes, 32 * 1024);
    assert_eq!(
        secure.certificates[0].cert_file,
        PathBuf::from("/etc/tether/chat.pem")
    );
    let probe = &c.probes["chat"];
    assert_eq!(probe.kind, ProbeKind::WebSocket);
    assert_eq!(probe.match_status, [200..=299, 404..=404]);
    assert_eq!(probe.unhealthy_threshold.get(), 4);
    let rule = &c.routing_rules["chat"];
    assert_eq!(
        rule.hosts,
        [
            HostPattern::Suffix(".example.com".into()),
            HostPattern::Exact("chat.example.org".into())
        ]
    );
    assert_eq!(
        rule.websocket.on_backend_unhealthy,
        OnBackendUnhealthy::Drain
    );
    assert_eq!(rule.websocket.inspect, Inspect::Opaque);
    assert_eq!(rule.websocket.drain_grace, Duration::ZERO);
}

#[test]
fn shutdown_close_code_is_1001_or_1012() {
    let c = from_toml_str(CHAT).unwrap();
    assert_eq!(c.shutdown_close_code, DEFAULT_SHUTDOWN_CLOSE_CODE);
    let c = from_toml_str(&format!("shutdown_close_code = 1012\n{CHAT}")).unwrap();
    assert_eq!(c.shutdown_close_code, 1012);
    let file = TempFile::new("toml", CHAT);
    let errors = load_err(&sources(
        &[&file],
        &[("TETHER_SHUTDOWN_CLOSE_CODE", "1000")],
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "shutdown_close_code");
    assert!(errors[0].to_string().contains("1001"), "{}", errors[0]);
}

#[test]
fn admin_token_is_redacted_but_key_files_are_not() {
    let file = TempFile::new("toml", CHAT);
    let loaded = load(&sources(&[&file], &[("TETHER_ADMIN__TOKEN", "s3cret")])).unwrap();
    assert_eq!(loaded.config.admin.token.as_deref(), Some("s3cret"));
    let shown = loaded.config.redacted().to_toml_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains(REDACTED), "{shown}");
    // Without a token there is nothing to redact and the round trip is exact.
    let c = from_toml_str(CHAT).unwrap();
    assert_eq!(from_toml_str(&c.redacted().to_toml_string()).unwrap(), c);
    let errors = load_err(&sources(&[&file], &[("TETHER_ADMIN__TOKEN", " ")]));
    assert_eq!(errors[0].path, "admin.token");
}

#[test]
fn shutdown_delay_defaults_to_zero_and_is_bounded() {
    let c = from_toml_str(CHAT).unwrap();
    assert_eq!(c.shutdown_delay, DEFAULT_SHUTDOWN_DELAY);
    assert_eq!(c.shutdown_delay, Duration::ZERO);
    let file = TempFile::new("toml", CHAT);
    let c = load(&sources(&[&file], &[("TETHER_SHUTDOWN_DELAY", "5s")]))
        .unwrap()
        .config;
    assert_eq!(c.shutdown_delay, Duration::from_secs(5));
    assert!(c.to_toml_string().contains("shutdown_delay = \"5s\""));
    for (value, expect) in [("10m", "longer than 5m"), ("soon", "")] {
        let errors = load_err(&sources(&[&file], &[("TETHER_SHUTDOWN_DELAY", value)]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "shutdown_delay");
        assert!(errors[0].to_string().contains(expect), "{}", errors[0]);
    }
}

#[test]
fn source_addresses_come_from_the_environment_and_must_be_on_this_host() {
    let file = TempFile::new("toml", CHAT);
    let env = [(
        "TETHER_BACKEND_SETTINGS__CHAT__SOURCE_ADDRESSES",
        "127.0.0.2, 127.0.0.3",
    )];
    let loaded = load(&sources(&[&file], &env)).unwrap();
    let want: Vec<std::net::IpAddr> = vec![[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
    assert_eq!(
        loaded.config.backend_settings["chat"].source_addresses,
        want
    );

    // 192.0.2.1 (TEST-NET-1) is on no host: refused at load, with the layer that set it.
    let env = [(
        "TETHER_BACKEND_SETTINGS__CHAT__SOURCE_ADDRESSES",
        "127.0.0.2,192.0.2.1",
    )];
    let errors = load_err(&sources(&[&file], &env));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let line = errors[0].to_string();
    assert!(
        line.starts_with(
            "backend_settings.chat.source_addresses[1]: 192.0.2.1 is not an address this host can send from"
        ),
        "{line}"
    );
    assert!(
        line.ends_with("[env TETHER_BACKEND_SETTINGS__CHAT__SOURCE_ADDRESSES]"),
        "{line}"
    );
}
