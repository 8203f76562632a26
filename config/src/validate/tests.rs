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
    assert_eq!(
        c.backend_settings["chat"].connect_timeout,
        DEFAULT_CONNECT_TIMEOUT
    );
    let ws = &c.routing_rules["chat"].websocket;
    assert_eq!(ws.keepalive_interval, Duration::from_secs(20));
    assert_eq!(ws.drain_grace, DEFAULT_DRAIN_GRACE);
    assert_eq!(ws.inspect, DEFAULT_INSPECT);
    assert_eq!(ws.max_message_size, None);
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
            r#"listeners.b.foo: unknown field "foo" (known fields: bind, protocol, max_request_head_bytes, max_headers, request_head_timeout, certificates) [inline]"#,
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
    let sources = crate::sources::parse_str(&toml, "inline").unwrap();
    let validated = crate::build(&sources).unwrap();
    assert_eq!(
        validated.warnings,
        [
            "listeners.spare: no routing rule uses this listener [inline]",
            "backend_pools.spare: no routing rule uses this backend pool [inline]",
        ]
    );
}
