//! Conversion and cross-field checks, through `from_toml_str` (source label `inline`).

use std::time::Duration;

use crate::*;

const BASE: &str = r#"
[listeners.public]
bind = "127.0.0.1:8080"

[backend_pools.chat]
members = ["127.0.0.1:5000"]

[backend_settings.chat]
request_timeout = "40s"

[routing_rules.chat]
listener = "public"
paths = ["/chat", "/chat/*"]
backend_pool = "chat"
backend_settings = "chat"

[routing_rules.chat.websocket]
keepalive_interval = "20s"
"#;

/// The error lines for `toml`, which must fail.
fn errors(toml: &str) -> Vec<String> {
    match from_toml_str(toml) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(toml: &str) -> String {
    let mut all = errors(toml);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.remove(0)
}

#[test]
fn base_is_valid_and_takes_defaults() {
    let c = from_toml_str(BASE).unwrap();
    assert!(c.workers >= 1);
    assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(c.admin.bind, DEFAULT_ADMIN_BIND);
    assert_eq!(c.telemetry.service_name, DEFAULT_SERVICE_NAME);
    assert_eq!(c.telemetry.log_level, DEFAULT_LOG_LEVEL);
    assert_eq!(c.telemetry.otlp_endpoint, None);
    let l = &c.listeners["public"];
    assert_eq!(l.name, "public");
    assert_eq!(l.max_request_head_bytes, DEFAULT_MAX_REQUEST_HEAD_BYTES);
    assert_eq!(l.max_headers, DEFAULT_MAX_HEADERS);
    assert_eq!(l.request_head_timeout, DEFAULT_REQUEST_HEAD_TIMEOUT);
    assert_eq!(l.request_body_timeout, DEFAULT_REQUEST_BODY_TIMEOUT);
    assert_eq!(
        c.backend_settings["chat"].connect_timeout,
        DEFAULT_CONNECT_TIMEOUT
    );
    assert_eq!(c.backend_settings["chat"].retries, DEFAULT_RETRIES);
    let ws = &c.routing_rules["chat"].websocket;
    assert_eq!(ws.keepalive_interval, Duration::from_secs(20));
    assert_eq!(ws.drain_grace, DEFAULT_DRAIN_GRACE);
    assert_eq!(ws.inspect, DEFAULT_INSPECT);
    assert_eq!(ws.max_message_size, None);
}

#[test]
fn request_body_timeout_and_retries_are_validated() {
    let toml = BASE
        .replace(
            "bind = \"127.0.0.1:8080\"",
            "bind = \"127.0.0.1:8080\"\nrequest_body_timeout = \"2s\"",
        )
        .replace(
            "request_timeout = \"40s\"",
            "request_timeout = \"40s\"\nretries = 3",
        );
    let c = from_toml_str(&toml).unwrap();
    assert_eq!(
        c.listeners["public"].request_body_timeout,
        Duration::from_secs(2)
    );
    assert_eq!(c.backend_settings["chat"].retries, 3);
    let bad = toml
        .replace(
            "request_body_timeout = \"2s\"",
            "request_body_timeout = \"0s\"",
        )
        .replace("retries = 3", "retries = 11");
    assert_eq!(
        errors(&bad),
        [
            "backend_settings.chat.retries: 11 is too many: at most 10 (each retry may wait a connect_timeout) [inline]",
            "listeners.public.request_body_timeout: must be more than 0s [inline]",
        ]
    );
    let unitless = toml.replace(
        "request_body_timeout = \"2s\"",
        "request_body_timeout = \"2\"",
    );
    assert_eq!(
        one_error(&unitless),
        "listeners.public.request_body_timeout: invalid duration \"2\": write a unit, e.g. \"2s\" [inline]"
    );
}

#[test]
fn missing_reference_says_did_you_mean() {
    let toml = BASE.replace(r#"backend_pool = "chat""#, r#"backend_pool = "chta""#);
    assert_eq!(
        one_error(&toml),
        r#"routing_rules.chat.backend_pool: no backend pool named "chta" (did you mean "chat"?) [inline]"#
    );
    let toml = BASE.replace(r#"backend_pool = "chat""#, r#"backend_pool = "video""#);
    assert_eq!(
        one_error(&toml),
        r#"routing_rules.chat.backend_pool: no backend pool named "video" [inline]"#
    );
    let toml = BASE
        .replace(r#"listener = "public""#, r#"listener = "publc""#)
        .replace(
            r#"backend_settings = "chat""#,
            r#"backend_settings = "chats""#,
        )
        .replace(
            "[backend_settings.chat]",
            "[backend_settings.chat]\nprobe = \"health\"",
        );
    assert_eq!(
        errors(&toml),
        [
            r#"backend_settings.chat.probe: no probe named "health" [inline]"#,
            r#"routing_rules.chat.backend_settings: no backend settings named "chats" (did you mean "chat"?) [inline]"#,
            r#"routing_rules.chat.listener: no listener named "publc" (did you mean "public"?) [inline]"#,
        ]
    );
}

/// An HTTP API's short timeout with the keep-alive left to its default: accepted, and a
/// WebSocket on that rule would be pinged at half the timeout.
#[test]
fn a_short_request_timeout_halves_the_default_keepalive_instead_of_failing() {
    let toml = BASE
        .replace(r#"request_timeout = "40s""#, r#"request_timeout = "5s""#)
        .replace(r#"keepalive_interval = "20s""#, "");
    let c = from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}"));
    let ws = &c.routing_rules["chat"].websocket;
    assert_eq!(ws.keepalive_interval, Duration::from_millis(2500));
    // Above the default, the default stays.
    let c = from_toml_str(&BASE.replace(r#"keepalive_interval = "20s""#, "")).unwrap();
    assert_eq!(
        c.routing_rules["chat"].websocket.keepalive_interval,
        DEFAULT_KEEPALIVE_INTERVAL
    );
}

/// Every problem of one table is reported, not only the first serde meets.
#[test]
fn one_unknown_field_does_not_hide_the_other_errors_of_its_table() {
    let toml = format!(
        "{BASE}\n[listeners.b]\nbnd = \"x\"\nmax_headers = \"many\"\nprotocl = \"http\"\n\
         [telemetry]\nlog_lvl = \"x\"\nlog_format = 3\naccess_log_fields = [\"status\", \"size\"]\n"
    );
    let all = errors(&toml);
    for expected in [
        "listeners.b.bnd: unknown field",
        "listeners.b.max_headers:",
        "listeners.b.protocl: unknown field",
        "telemetry.log_lvl: unknown field",
        "telemetry.log_format: expected one of: text, json",
    ] {
        assert!(
            all.iter().any(|e| e.starts_with(expected)),
            "{expected} missing from {all:#?}"
        );
    }
}

#[test]
fn access_log_fields_are_named_and_checked() {
    let c = from_toml_str(BASE).unwrap();
    assert_eq!(c.telemetry.access_log_fields, AccessLogField::ALL);
    assert!(!c.telemetry.record_query);
    let toml = format!(
        "{BASE}\n[telemetry]\naccess_log_fields = \"status, bytes_out\"\nrecord_query = true\n"
    );
    let c = from_toml_str(&toml).unwrap();
    assert_eq!(
        c.telemetry.access_log_fields,
        [AccessLogField::Status, AccessLogField::BytesOut]
    );
    assert!(c.telemetry.record_query);
    let toml = format!("{BASE}\n[telemetry]\naccess_log_fields = [\"status\", \"size\"]\n");
    let error = one_error(&toml);
    assert!(
        error.starts_with(
            r#"telemetry.access_log_fields[1]: unknown field "size" (one of: client, listener,"#
        ),
        "{error}"
    );
    let toml = format!("{BASE}\n[telemetry]\naccess_log_fields = [\"status\", \"status\"]\n");
    assert!(one_error(&toml).contains(r#""status" is listed twice"#));
    let toml = format!("{BASE}\n[telemetry]\naccess_log_fields = []\n");
    assert!(one_error(&toml).contains("must name at least one field"));
}

#[test]
fn request_timeout_must_exceed_keepalive() {
    let toml = BASE.replace(r#"request_timeout = "40s""#, r#"request_timeout = "20s""#);
    let error = one_error(&toml);
    assert!(error.starts_with(
        "backend_settings.chat.request_timeout: 20s must exceed the keepalive_interval 20s"
    ));
    assert!(error.contains("before the first ping"), "{error}");
    assert!(error.contains("close code 1006"), "{error}");
    assert!(error.contains("Application Gateway"), "{error}");
    assert!(error.contains("e.g. to 40s"), "{error}");
    assert!(
        error.contains(r#"("0s" turns pings off, for a rule that serves no WebSockets)"#),
        "{error}"
    );

    // Keepalive off: nothing to outlast.
    let toml = toml.replace(
        r#"keepalive_interval = "20s""#,
        r#"keepalive_interval = "0s""#,
    );
    assert!(from_toml_str(&toml).is_ok());

    // The default request timeout (60s) against a 2m keepalive: labelled as the built-in default.
    let toml = BASE.replace(r#"request_timeout = "40s""#, "").replace(
        r#"keepalive_interval = "20s""#,
        r#"keepalive_interval = "2m""#,
    );
    let error = one_error(&toml);
    assert!(error.starts_with(
        "backend_settings.chat.request_timeout: 1m must exceed the keepalive_interval 2m"
    ));
    assert!(error.ends_with("[built-in default]"), "{error}");
}

#[test]
fn bad_values_are_explained() {
    let cases = [
        (
            r#"request_timeout = "40s""#,
            r#"request_timeout = 40"#,
            r#"backend_settings.chat.request_timeout: invalid duration "40": write a unit, e.g. "40s" [inline]"#,
        ),
        (
            r#"keepalive_interval = "20s""#,
            "keepalive_interval = \"20s\"\nmax_message_size = \"1XB\"",
            r#"routing_rules.chat.websocket.max_message_size: invalid size "1XB": unknown unit "XB" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB) [inline]"#,
        ),
        (
            r#"bind = "127.0.0.1:8080""#,
            r#"bind = "localhost:8080""#,
            r#"listeners.public.bind: invalid address "localhost:8080": expected ip:port, e.g. "0.0.0.0:8080" [inline]"#,
        ),
        (
            r#"members = ["127.0.0.1:5000"]"#,
            r#"members = ["127.0.0.1:5000", "chat.internal"]"#,
            r#"backend_pools.chat.members[1]: invalid member "chat.internal": port required, e.g. "chat.internal:80" [inline]"#,
        ),
        (
            r#"paths = ["/chat", "/chat/*"]"#,
            r#"paths = ["/chat", "/chat*"]"#,
            r#"routing_rules.chat.paths[1]: invalid path "/chat*": "*" is only allowed as a final "/*", e.g. "/chat/*" [inline]"#,
        ),
        (
            r#"keepalive_interval = "20s""#,
            "keepalive_interval = \"20s\"\nallowed_origins = [\"https://chat.example.com/\"]",
            r#"routing_rules.chat.websocket.allowed_origins[0]: invalid origin "https://chat.example.com/": an origin has no path; write "https://chat.example.com" [inline]"#,
        ),
        (
            r#"keepalive_interval = "20s""#,
            "keepalive_interval = \"20s\"\ninspect = \"frame\"",
            r#"routing_rules.chat.websocket.inspect: unknown value "frame" (did you mean "frames"?); expected one of: frames, opaque [inline]"#,
        ),
        (
            r#"keepalive_interval = "20s""#,
            "keepalive_interval = \"20s\"\nmax_sessions = -1",
            r#"routing_rules.chat.websocket.max_sessions: invalid value integer `-1`, expected a whole number from 0 to 4294967295 [inline]"#,
        ),
        (
            r#"members = ["127.0.0.1:5000"]"#,
            r#"members = "127.0.0.1:5000""#,
            "",
        ),
    ];
    for (from, to, expected) in cases {
        let toml = BASE.replace(from, to);
        if expected.is_empty() {
            assert!(from_toml_str(&toml).is_ok(), "{to}");
        } else {
            assert_eq!(one_error(&toml), expected);
        }
    }
}

#[test]
fn names_must_be_usable_in_env_variables() {
    let toml = BASE.replace("[listeners.public]", "[listeners.Public]");
    let all = errors(&toml);
    assert!(
        all[0].starts_with(r#"listeners.Public: invalid name "Public": names must match ^[a-z][a-z0-9_]*$ and not contain "__""#),
        "{all:#?}"
    );
    assert!(all[0].contains("TETHER_LISTENERS__<NAME>__<FIELD>"));
    let toml = format!("{BASE}\n[backend_pools.a__b]\nmembers = [\"127.0.0.1:1\"]\n");
    let all = errors(&toml);
    assert!(
        all[0].starts_with(r#"backend_pools.a__b: invalid name "a__b""#),
        "{all:#?}"
    );
}

#[test]
fn structural_errors_in_one_entry_do_not_hide_others() {
    let toml = format!(
        "{BASE}\n[listeners.b]\nbind = \"127.0.0.1:1\"\nfoo = 1\n[listeners.c]\nbind = [1]\n[backend_pools.d]\n[admin]\nbnd = \"x\"\n[telemetry]\nlog_format = 3\n"
    );
    assert_eq!(
        errors(&toml),
        [
            r#"admin.bnd: unknown field "bnd" (did you mean "bind"?) [inline]"#,
            r#"backend_pools.d.members: a pool needs at least one member (ip:port or host:port) [inline]"#,
            r#"listeners.b.foo: unknown field "foo" (known fields: bind, protocol, max_request_head_bytes, max_headers, request_head_timeout, request_body_timeout, certificates, client_ca, redirect_to, max_connections, max_handshakes_per_ip, http2, http2_websockets, http2_max_concurrent_streams, http2_idle_timeout) [inline]"#,
            r#"listeners.c.bind: expected a string, found a list [inline]"#,
            r#"telemetry.log_format: expected one of: text, json, found integer `3` [inline]"#,
        ]
    );
    let err = one_error("listeners = 5\n");
    assert_eq!(
        err,
        "listeners: expected a table of named entries, e.g. [listeners.NAME] [inline]"
    );
    let err = one_error("workrs = 5\n");
    assert_eq!(
        err,
        r#"workrs: unknown field "workrs" (did you mean "workers"?) [inline]"#
    );
}

#[test]
fn required_fields() {
    let toml = BASE
        .replace(r#"backend_settings = "chat""#, "")
        .replace(r#"bind = "127.0.0.1:8080""#, "");
    assert_eq!(
        errors(&toml),
        [
            "listeners.public.bind: missing required field [inline]",
            "routing_rules.chat.backend_settings: missing required field [inline]",
        ]
    );
}

#[test]
fn https_listener_needs_a_certificate() {
    let toml = BASE.replace(
        r#"bind = "127.0.0.1:8080""#,
        "bind = \"127.0.0.1:8443\"\nprotocol = \"https\"",
    );
    assert!(one_error(&toml).starts_with(
        "listeners.public.certificates: an https listener needs at least one certificate"
    ));
    let with_cert = format!("{toml}\n[[listeners.public.certificates]]\ncert_file = \"c.pem\"\n");
    assert_eq!(
        one_error(&with_cert),
        "listeners.public.certificates[0].key_file: missing required field [inline]"
    );
}

#[test]
fn overlapping_rules_name_both() {
    let toml = format!(
        "{BASE}\n[routing_rules.chat2]\nlistener = \"public\"\npaths = [\"/chat/*\"]\nbackend_pool = \"chat\"\nbackend_settings = \"chat\"\n"
    );
    assert_eq!(
        one_error(&toml),
        r#"routing_rules.chat2.paths: routing rules "chat" and "chat2" both claim any host, path "/chat/*" on listener "public" [inline]"#
    );
    // A different host makes them distinct.
    let toml = toml.replace(
        "listener = \"public\"\npaths = [\"/chat/*\"]",
        "listener = \"public\"\nhosts = [\"a.example\"]\npaths = [\"/chat/*\"]",
    );
    assert!(from_toml_str(&toml).is_ok());
    // Two basic rules on one listener.
    let toml = format!(
        "{}\n[routing_rules.other]\nlistener = \"public\"\nbackend_pool = \"chat\"\nbackend_settings = \"chat\"\n",
        BASE.replace(r#"paths = ["/chat", "/chat/*"]"#, "")
    );
    assert!(one_error(&toml).starts_with(
        r#"routing_rules.other: routing rules "chat" and "other" both claim any host, every path"#
    ));
}

#[test]
fn clashing_binds() {
    let toml = format!(
        "{BASE}\n[listeners.all]\nbind = \"0.0.0.0:8080\"\n[admin]\nbind = \"127.0.0.1:8080\"\n"
    );
    assert_eq!(
        errors(&toml),
        [
            r#"admin.bind: 127.0.0.1:8080 overlaps the bind address of listener "all" [inline]"#,
            r#"listeners.public.bind: 127.0.0.1:8080 overlaps the bind address of listener "all" [inline]"#,
        ]
    );
}

#[test]
fn probe_checks() {
    let toml = format!(
        "{}\n[probes.chat]\npath = \"health\"\ninterval = \"5s\"\ntimeout = \"10s\"\nhealthy_threshold = 0\nmatch_status = [\"200-399\", \"700\"]\n",
        BASE.replace("[backend_settings.chat]", "[backend_settings.chat]\nprobe = \"chat\"")
    );
    assert_eq!(
        errors(&toml),
        [
            "probes.chat.healthy_threshold: must be at least 1 [inline]",
            r#"probes.chat.match_status[1]: invalid status "700": expected a status or range between 100 and 599, e.g. "200-399" or "404" [inline]"#,
            r#"probes.chat.path: invalid path "health": expected e.g. "/health" [inline]"#,
            "probes.chat.timeout: 10s exceeds the interval 5s: probes of one backend would overlap [inline]",
        ]
    );
}

#[test]
fn websocket_checks() {
    let toml = BASE.replace(
        r#"keepalive_interval = "20s""#,
        "keepalive_interval = \"20s\"\nallowed_origins = [\"*\", \"HTTPS://Chat.Example.com:8443\"]\nsubprotocols = [\"chat v1\"]\nmax_message_size = 0",
    );
    assert_eq!(
        errors(&toml),
        [
            "routing_rules.chat.websocket.max_message_size: must be more than 0B (leave it unset for no limit) [inline]",
            r#"routing_rules.chat.websocket.subprotocols[0]: invalid subprotocol "chat v1": expected a token (RFC 6455 §4.1), e.g. "chat.v1" [inline]"#,
        ]
    );
    let toml = BASE.replace(
        r#"keepalive_interval = "20s""#,
        "keepalive_interval = \"20s\"\nallowed_origins = [\"*\", \"HTTPS://Chat.Example.com:8443\"]",
    );
    let c = from_toml_str(&toml).unwrap();
    assert_eq!(
        c.routing_rules["chat"].websocket.allowed_origins,
        ["*", "https://chat.example.com:8443"]
    );
}

#[test]
fn workers_zero_is_one_per_core_and_strings_are_numbers() {
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        from_toml_str(&format!("workers = 0\n{BASE}"))
            .unwrap()
            .workers,
        cores
    );
    assert_eq!(
        from_toml_str(&format!("workers = \"2\"\n{BASE}"))
            .unwrap()
            .workers,
        2
    );
}

#[test]
fn warnings_for_unused_tables() {
    let toml = format!("{BASE}\n[listeners.spare]\nbind = \"127.0.0.1:9000\"\n[backend_pools.spare]\nmembers = [\"127.0.0.1:9\"]\n");
    let sources = crate::tree::parse_str(&toml, "inline").unwrap();
    let validated = crate::build(&sources).unwrap();
    assert_eq!(
        validated.warnings,
        [
            "listeners.spare: no routing rule uses this listener [inline]",
            "backend_pools.spare: no routing rule uses this backend pool [inline]",
        ]
    );
}

#[test]
fn pool_balancing_weights_and_passive_health() {
    let c = from_toml_str(BASE).unwrap();
    let pool = &c.backend_pools["chat"];
    assert_eq!(pool.load_balancing, LoadBalancing::LeastConnections);
    assert_eq!(pool.hash_key, HashKey::ClientIp);
    assert_eq!(pool.passive, PassiveHealthConfig::default());
    assert_eq!(pool.members[0].weight, DEFAULT_WEIGHT);
    assert_eq!(c.dns.min_ttl, DEFAULT_DNS_MIN_TTL);
    assert_eq!(c.dns.max_ttl, DEFAULT_DNS_MAX_TTL);
    assert!(c.dns.name_servers.is_empty());

    let toml = BASE.replace(
        r#"members = ["127.0.0.1:5000"]"#,
        r#"members = ["127.0.0.1:5000 weight=3", "chat.internal:5001"]
load_balancing = "consistent_hash"
hash_key = "header:X-User-Id"
passive = { failures = 2, ejection = "1s", max_ejection = "8s" }"#,
    ) + "\n[dns]\nname_servers = [\"127.0.0.1:5353\", \"10.0.0.2\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1m\"\n";
    let c = from_toml_str(&toml).unwrap();
    let pool = &c.backend_pools["chat"];
    assert_eq!(pool.members[0].weight.get(), 3);
    assert_eq!(pool.members[1].weight.get(), 1);
    assert_eq!(pool.hash_key, HashKey::Header("x-user-id".into()));
    assert_eq!(pool.passive.failures, 2);
    assert_eq!(pool.passive.ejection, Duration::from_secs(1));
    assert_eq!(pool.passive.max_ejection, Duration::from_secs(8));
    assert_eq!(
        c.dns.name_servers,
        [
            "127.0.0.1:5353".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap()
        ]
    );
    assert_eq!(from_toml_str(&c.to_toml_string()).unwrap(), c);
    assert!(c.to_toml_string().contains(r#""127.0.0.1:5000 weight=3""#));
}

#[test]
fn pool_and_dns_errors_are_explained() {
    let toml = BASE.replace(
        r#"members = ["127.0.0.1:5000"]"#,
        r#"members = ["127.0.0.1:5000 weight=0", "127.0.0.1:5001 wieght=2", "127.0.0.1:5002", "127.0.0.1:5002 weight=2"]
hash_key = "query:x"
passive = { ejection = "10s", max_ejection = "5s" }"#,
    ) + "\n[dns]\nname_servers = [\"resolver.local\"]\nmin_ttl = \"10s\"\nmax_ttl = \"5s\"\n";
    assert_eq!(
        errors(&toml),
        [
            r#"backend_pools.chat.hash_key: invalid hash key "query:x": expected "client_ip", "header:NAME" or "cookie:NAME", e.g. "header:x-user-id" [inline]"#,
            r#"backend_pools.chat.members[0]: invalid member "127.0.0.1:5000 weight=0": after the address only "weight=N" may follow (N from 1 to 1000), e.g. "127.0.0.1:5000 weight=3" [inline]"#,
            r#"backend_pools.chat.members[1]: invalid member "127.0.0.1:5001 wieght=2": after the address only "weight=N" may follow (N from 1 to 1000), e.g. "127.0.0.1:5001 weight=3" [inline]"#,
            "backend_pools.chat.passive.max_ejection: 5s is below the first ejection 10s (backend_pools.chat.passive.ejection) [inline]",
            "dns.max_ttl: 5s is below dns.min_ttl 10s [inline]",
            r#"dns.name_servers[0]: invalid name server "resolver.local": expected an IP address with an optional port, e.g. "10.0.0.2" or "127.0.0.1:5353" [inline]"#,
        ]
    );
    let toml = BASE.replace(
        r#"members = ["127.0.0.1:5000"]"#,
        r#"members = ["127.0.0.1:5000", "127.0.0.1:5000 weight=2"]"#,
    );
    assert_eq!(
        one_error(&toml),
        r#"backend_pools.chat.members[1]: "127.0.0.1:5000" is listed twice [inline]"#
    );
}

#[test]
fn hash_key_without_consistent_hash_is_a_warning() {
    let toml = BASE.replace(
        r#"members = ["127.0.0.1:5000"]"#,
        "members = [\"127.0.0.1:5000\"]\nhash_key = \"cookie:sid\"",
    );
    let root = crate::tree::parse_str(&toml, "inline").unwrap();
    let validated = crate::build(&root).unwrap();
    assert_eq!(
        validated.warnings,
        [
            r#"backend_pools.chat.hash_key: only used when load_balancing = "consistent_hash" [inline]"#
        ]
    );
    assert_eq!(
        validated.config.backend_pools["chat"].hash_key,
        HashKey::Cookie("sid".into())
    );
}

#[test]
fn https_probes_are_accepted_and_one_pool_has_one_probe() {
    let probed = BASE.replace(
        "[backend_settings.chat]",
        "[backend_settings.chat]\nprobe = \"chat\"",
    );
    let toml = format!(
        "{}\n[probes.chat]\nprotocol = \"https\"\n",
        probed.replace(
            "request_timeout = \"40s\"",
            "request_timeout = \"40s\"\nprotocol = \"https\""
        )
    );
    let root = crate::tree::parse_str(&toml, "inline").unwrap();
    let config = crate::build(&root).unwrap().config;
    assert_eq!(config.probes["chat"].protocol, BackendProtocol::Https);
    let toml = format!(
        "{probed}\n[probes.chat]\n[probes.other]\nport = 9000\n[backend_settings.other]\nrequest_timeout = \"40s\"\nprobe = \"other\"\n\
         [routing_rules.other]\nlistener = \"public\"\npaths = [\"/other\"]\nbackend_pool = \"chat\"\nbackend_settings = \"other\"\n"
    );
    assert_eq!(
        one_error(&toml),
        "routing_rules.other.backend_settings: backend pool \"chat\" would be probed by probe \"other\" on port 9000 here \
         but by probe \"chat\" on each member's port through routing rule \"chat\"; a pool has one prober, so rules \
         sharing a pool must use settings with the same probe and port [inline]"
    );
    let c = from_toml_str(&format!("{probed}\n[probes.chat]\nport = 7000\n")).unwrap();
    let plan = c.pool_probe("chat").unwrap();
    assert_eq!((plan.probe.name.as_str(), plan.port), ("chat", Some(7000)));
    assert!(from_toml_str(BASE).unwrap().pool_probe("chat").is_none());
}

#[test]
fn websocket_probes_warn_about_http_only_matchers() {
    let toml = BASE.replace(
        "[backend_settings.chat]",
        "[backend_settings.chat]\nprobe = \"ws\"",
    ) + "\n[probes.ws]\nkind = \"websocket\"\nmatch_body = \"ok\"\n";
    let root = crate::tree::parse_str(&toml, "inline").unwrap();
    let validated = crate::build(&root).unwrap();
    assert_eq!(
        validated.warnings,
        [
            "probes.ws.match_body: not used by websocket probes: they pass on 101 Switching Protocols with a valid Sec-WebSocket-Accept [inline]"
        ]
    );
}

/// `host_override`, `probes.NAME.host` and origins are split by the data path's own parser
/// (`authority::parse_authority`), so every host the configuration accepts is one the data
/// path reads the same way; on top the configuration wants a DNS name or an IP address and a
/// port from 1 to 65535.
#[test]
fn configured_hosts_are_authorities_the_data_path_reads() {
    let with_host = |host: &str| {
        BASE.replace(
            "request_timeout = \"40s\"",
            &format!("request_timeout = \"40s\"\nhost_override = \"{host}\""),
        )
    };
    for good in [
        "chat.internal",
        "chat.internal:8080",
        "Chat.Internal.",
        "10.0.0.5:80",
        "[::1]",
        "[::1]:8443",
    ] {
        let c = from_toml_str(&with_host(good)).unwrap();
        let kept = c.backend_settings["chat"].host_override.as_deref();
        assert_eq!(kept, Some(good));
        assert!(authority::parse_authority(good).is_some(), "{good}");
    }
    // An IPv6 literal without brackets is not a `Host` value (RFC 3986 §3.2.2): the data path
    // would answer it 400, so the configuration refuses it too.
    for bad in [
        "chat.internal:",
        "chat.internal:0",
        "chat.internal:+80",
        "chat.internal:65536",
        "::1",
        "caf%C3%A9.example",
        "a b",
        "",
    ] {
        assert_eq!(
            one_error(&with_host(bad)),
            format!(
                "backend_settings.chat.host_override: invalid host \"{bad}\": expected a host name with an optional port, e.g. \"chat.internal\" or \"chat.internal:8080\" [inline]"
            ),
        );
    }
}

/// Every size reads the same forms: a bare number of bytes (TOML integer or string) or a number
/// with a unit. `max_request_head_bytes = 65536` was once refused as "expected a string" while
/// `max_message_size = 65536` was accepted; both are the raw stage's one text form now.
#[test]
fn every_size_accepts_a_bare_number_of_bytes() {
    for form in ["65536", "\"65536\"", "\"64KiB\""] {
        let toml = BASE
            .replace(
                "bind = \"127.0.0.1:8080\"",
                &format!("bind = \"127.0.0.1:8080\"\nmax_request_head_bytes = {form}"),
            )
            .replace(
                "keepalive_interval = \"20s\"",
                &format!("keepalive_interval = \"20s\"\nmax_message_size = {form}"),
            );
        let c = from_toml_str(&toml).unwrap();
        assert_eq!(
            c.listeners["public"].max_request_head_bytes, 65536,
            "{form}"
        );
        assert_eq!(
            c.routing_rules["chat"].websocket.max_message_size,
            Some(65536),
            "{form}"
        );
    }
}

#[test]
fn http2_backends_and_grpc_probes() {
    let with = |settings: &str, probe: &str| {
        BASE.replace(
            "request_timeout = \"40s\"",
            &format!("request_timeout = \"40s\"\nprobe = \"p\"\n{settings}"),
        ) + &format!("\n[probes.p]\n{probe}\n")
    };
    let c = from_toml_str(&with(
        "protocol = \"h2c\"",
        "protocol = \"h2c\"\nkind = \"grpc\"",
    ))
    .unwrap();
    assert_eq!(c.backend_settings["chat"].protocol, BackendProtocol::H2c);
    assert_eq!(c.probes["p"].kind, ProbeKind::Grpc);
    let c = from_toml_str(&with("protocol = \"h2\"", "protocol = \"h2\"")).unwrap();
    assert!(c.backend_settings["chat"].protocol.uses_tls());
    assert_eq!(
        one_error(&with("protocol = \"h2c\"", "kind = \"grpc\"")),
        r#"probes.p.kind: grpc probes need HTTP/2: set protocol = "h2c" or "h2" [inline]"#
    );
    let root = crate::tree::parse_str(
        &with(
            "protocol = \"h2c\"\nca_file = \"ca.pem\"",
            "protocol = \"h2c\"\nkind = \"grpc\"\npath = \"/x\"",
        ),
        "inline",
    )
    .unwrap();
    assert_eq!(
        crate::build(&root).unwrap().warnings,
        [
            r#"backend_settings.chat.ca_file: only used when protocol = "https" or "h2" [inline]"#,
            "probes.p.path: not used by grpc probes: they call grpc.health.v1.Health/Check and pass on SERVING [inline]",
        ]
    );
    let root = crate::tree::parse_str(&with("protocol = \"h2\"", ""), "inline").unwrap();
    assert_eq!(
        crate::build(&root).unwrap().warnings,
        [
            r#"probes.p.protocol: probes over HTTP/1.1 members that backend settings "chat" reach over HTTP/2; a member that only speaks HTTP/2 fails every probe: set protocol = "h2" [built-in default]"#,
        ]
    );
    let bad = with("protocol = \"http2\"", "");
    assert!(
        errors(&bad)[0].starts_with("backend_settings.chat.protocol:"),
        "{:?}",
        errors(&bad)
    );
}

#[test]
fn session_limits_take_their_defaults() {
    let c = from_toml_str(BASE).unwrap();
    let ws = &c.routing_rules["chat"].websocket;
    assert_eq!(ws.drain_spread, DEFAULT_DRAIN_SPREAD);
    assert_eq!(ws.max_new_sessions_per_second, None);
    assert_eq!(ws.max_messages_per_second, None);
    assert_eq!(ws.max_bytes_per_second, None);
    assert_eq!(ws.on_rate_limit, DEFAULT_ON_RATE_LIMIT);
    assert_eq!(ws.slow_consumer_timeout, DEFAULT_SLOW_CONSUMER_TIMEOUT);
    assert_eq!(ws.max_session_age, None);
}

#[test]
fn session_limits_are_read_with_their_bursts() {
    let toml = BASE.replace(
        r#"keepalive_interval = "20s""#,
        "keepalive_interval = \"20s\"\ndrain_spread = \"5s\"\nmax_new_sessions_per_second = 500\nmax_messages_per_second = 100\nmessages_burst = 300\nmax_bytes_per_second = \"1MiB\"\non_rate_limit = \"delay\"\nslow_consumer_timeout = \"0s\"\nmax_session_age = \"1h\"",
    );
    let c = from_toml_str(&toml).unwrap();
    let ws = &c.routing_rules["chat"].websocket;
    assert_eq!(ws.drain_spread, Duration::from_secs(5));
    let rate = |per_second, burst| Some(RateLimit { per_second, burst });
    assert_eq!(ws.max_new_sessions_per_second, rate(500, 50), "a tenth");
    assert_eq!(ws.max_messages_per_second, rate(100, 300));
    assert_eq!(
        ws.max_bytes_per_second,
        rate(1 << 20, 1 << 20),
        "a second's worth"
    );
    assert_eq!(ws.on_rate_limit, OnRateLimit::Delay);
    assert_eq!(ws.slow_consumer_timeout, Duration::ZERO, "off");
    assert_eq!(ws.max_session_age, Some(Duration::from_secs(3600)));
    // Written back and read again, the same.
    let again = from_toml_str(&c.to_toml_string()).unwrap();
    assert_eq!(again.routing_rules["chat"].websocket, *ws);
}

#[test]
fn session_limit_errors_name_their_field() {
    let toml = BASE.replace(
        r#"keepalive_interval = "20s""#,
        "keepalive_interval = \"20s\"\nmax_messages_per_second = 0\nbytes_burst = \"1KiB\"\nnew_sessions_burst = 5\nmax_session_age = \"0s\"",
    );
    assert_eq!(
        errors(&toml),
        [
            "routing_rules.chat.websocket.bytes_burst: is set without max_bytes_per_second: set both, or neither [inline]",
            "routing_rules.chat.websocket.max_messages_per_second: must be at least 1 (leave it unset for no limit) [inline]",
            "routing_rules.chat.websocket.max_session_age: must be more than 0s [inline]",
            "routing_rules.chat.websocket.new_sessions_burst: is set without max_new_sessions_per_second: set both, or neither [inline]",
        ]
    );
}

#[test]
fn rates_need_frames_and_the_drain_spread_must_fit_the_graces() {
    let toml = BASE.replace(
        r#"keepalive_interval = "20s""#,
        "keepalive_interval = \"20s\"\ninspect = \"opaque\"\nmax_messages_per_second = 10\nmax_bytes_per_second = 1000\ndrain_spread = \"10s\"",
    );
    assert_eq!(
        errors(&toml),
        [
            "routing_rules.chat.websocket.drain_spread: must be shorter than drain_grace (10s): the last close frame must go out within it [inline]",
            "routing_rules.chat.websocket.max_bytes_per_second: needs inspect = \"frames\": an opaque session has no frame boundaries to count at [inline]",
            "routing_rules.chat.websocket.max_messages_per_second: needs inspect = \"frames\": an opaque session has no frame boundaries to count at [inline]",
        ]
    );
    let toml = format!(
        "shutdown_grace = \"5s\"\n{}",
        BASE.replace(
            r#"keepalive_interval = "20s""#,
            "keepalive_interval = \"20s\"\ndrain_spread = \"6s\"\ndrain_grace = \"20s\"",
        )
    );
    assert_eq!(
        one_error(&toml),
        "routing_rules.chat.websocket.drain_spread: must be shorter than shutdown_grace (5s): a shutdown drain spreads its close frames within it [inline]"
    );
}

#[test]
fn source_addresses_default_to_none_and_parse_both_families() {
    let c = from_toml_str(BASE).unwrap();
    assert!(c.backend_settings["chat"].source_addresses.is_empty());
    assert_eq!(DEFAULT_SOURCE_ADDRESSES, &[] as &[std::net::IpAddr]);
    let c = from_toml_str(&BASE.replace(
        "request_timeout = \"40s\"",
        "request_timeout = \"40s\"\nsource_addresses = [\"127.0.0.2\", \" 127.0.0.3 \"]",
    ))
    .unwrap();
    let want: Vec<std::net::IpAddr> = vec![[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
    assert_eq!(c.backend_settings["chat"].source_addresses, want);
    // IPv6 sources with an IPv6 member.
    let c = from_toml_str(
        &BASE
            .replace("127.0.0.1:5000", "[::1]:5000")
            .replace("request_timeout = \"40s\"", "source_addresses = [\"::1\"]"),
    )
    .unwrap();
    let want: Vec<std::net::IpAddr> = vec![std::net::Ipv6Addr::LOCALHOST.into()];
    assert_eq!(c.backend_settings["chat"].source_addresses, want);
}

#[test]
fn every_bad_source_address_is_named_with_its_index() {
    let toml = BASE.replace(
        "request_timeout = \"40s\"",
        "source_addresses = [\"127.0.0.2\", \"nope\", \"0.0.0.0\", \"224.0.0.1\", \"127.0.0.3:80\", \"255.255.255.255\"]",
    );
    let all = errors(&toml);
    let paths: Vec<&str> = all
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        [1, 2, 3, 4, 5].map(|i| format!("backend_settings.chat.source_addresses[{i}]")),
        "{all:#?}"
    );
    assert!(
        all[0].contains("invalid source address \"nope\""),
        "{all:#?}"
    );
    assert!(
        all[1].contains("0.0.0.0 cannot be a connection's source address"),
        "{all:#?}"
    );
    assert!(
        all[3].contains("expected an IP address without a port"),
        "{all:#?}"
    );
}

#[test]
fn a_source_address_listed_twice_is_refused() {
    let toml = BASE.replace(
        "request_timeout = \"40s\"",
        "source_addresses = [\"127.0.0.2\", \"127.0.0.3\", \"127.0.0.2\"]",
    );
    assert_eq!(
        one_error(&toml),
        r#"backend_settings.chat.source_addresses[2]: "127.0.0.2" is listed twice [inline]"#
    );
}

#[test]
fn a_source_address_of_the_other_family_than_a_member_is_refused() {
    let toml = BASE
        .replace(
            "members = [\"127.0.0.1:5000\"]",
            "members = [\"chat.internal:5000\", \"127.0.0.1:5000\"]",
        )
        .replace(
            "request_timeout = \"40s\"",
            "source_addresses = [\"127.0.0.2\", \"::1\"]",
        );
    assert_eq!(
        one_error(&toml),
        "backend_settings.chat.source_addresses[1]: ::1 is an IPv6 address but member \
         127.0.0.1:5000 of backend pool \"chat\" (routing rule \"chat\") is IPv4: a connection's \
         source and destination are of one family [inline]"
    );
    // Only DNS members: their family is known at connect time, nothing to refuse here.
    let dns_only = toml.replace(", \"127.0.0.1:5000\"", "");
    assert!(from_toml_str(&dns_only).is_ok());
}
