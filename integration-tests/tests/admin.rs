//! The admin endpoint: health, readiness, effective configuration, sessions and the bearer
//! token — each checked against a real sidecar and real backends.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_integration_tests::pool::Member;
use tether_integration_tests::{backends, config_toml, raw, start, within, STEP_LIMIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// `GET path` on the admin endpoint with an optional bearer token: status, content type, body.
async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{auth}\r\n");
    let resp = raw::send(admin, req.as_bytes()).await;
    let ctype = resp.header("content-type").unwrap_or("").to_string();
    (resp.status, ctype, resp.text())
}

async fn admin_json(admin: SocketAddr, path: &str, token: Option<&str>) -> Value {
    let (status, ctype, body) = admin_get(admin, path, token).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    assert_eq!(ctype, "application/json", "GET {path}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Polls `GET path` until `done` holds for its JSON (bounded by [`STEP_LIMIT`]).
async fn wait_json(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let v = admin_json(admin, path, token).await;
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path}: condition not met within {STEP_LIMIT:?}; last answer:\n{v:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn healthz_readyz_config_and_the_token() {
    let backend = backends::ws_echo().await;
    let toml = config_toml(backend.addr, "", "").replace(
        r#"admin = { bind = "127.0.0.1:0" }"#,
        r#"admin = { bind = "127.0.0.1:0", token = "s3cret-token" }"#,
    );
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();

    // Open to probes without credentials.
    assert_eq!(admin_get(admin, "/healthz", None).await.0, 200);
    // Ready once the listeners accept (the sidecar starts them just after the admin endpoint).
    assert_eq!(wait_ready(admin, true).await, "ready\n");

    // Everything else needs the token.
    for path in [
        "/",
        "/config",
        "/status",
        "/backends",
        "/sessions",
        "/metrics",
    ] {
        let (status, _, _) = admin_get(admin, path, None).await;
        assert_eq!(status, 401, "GET {path} without the token");
        let (status, _, _) = admin_get(admin, path, Some("wrong-token!")).await;
        assert_eq!(status, 401, "GET {path} with a wrong token");
        let (status, _, _) = admin_get(admin, path, Some("s3cret-token")).await;
        assert_eq!(status, 200, "GET {path} with the token");
    }

    // The effective configuration, as TOML that parses back, without the secret.
    let (_, ctype, config) = admin_get(admin, "/config", Some("s3cret-token")).await;
    assert!(ctype.starts_with("application/toml"), "{ctype}");
    assert!(!config.contains("s3cret-token"), "{config}");
    assert!(config.contains(r#"token = "<redacted>""#), "{config}");
    let parsed = tether_config::from_toml_str(&config).expect("GET /config parses back");
    assert_eq!(parsed.backend_pools["app"].members.len(), 1);

    // The status report: the real listener address and the route.
    let status = admin_json(admin, "/status", Some("s3cret-token")).await;
    assert_eq!(status["ready"], true);
    assert_eq!(
        status["listeners"][0]["address"],
        sidecar.addr("public").to_string()
    );
    assert_eq!(status["routes"][0]["name"], "app");
    assert_eq!(status["routes"][0]["backend_pool"], "app");

    // The status page is one self-contained document.
    let (_, ctype, page) = admin_get(admin, "/", Some("s3cret-token")).await;
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(!page.contains("src=\"http"), "no external scripts");
    assert!(!page.contains("href=\"http"), "no external styles");

    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn sessions_lists_live_sessions_with_counters_and_recent_endings() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let admin = sidecar.admin_addr();
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
    )
    .await
    .expect("upgrade");
    ws.send(Message::text("hello")).await.unwrap();
    let echo = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo, Message::text("hello"));

    let sessions = wait_json(admin, "/sessions", None, |v| {
        v["live"].as_array().is_some_and(|l| l.len() == 1)
            && v["live"][0]["backend_bytes"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let live = &sessions["live"][0];
    assert_eq!(live["route"], "app");
    assert_eq!(live["backend"], backend.addr.to_string());
    // "hello" in one masked frame: 2 header bytes + 4 mask bytes + 5 payload bytes.
    assert_eq!(live["client_bytes"], 11);
    assert_eq!(live["backend_bytes"], 7);
    assert_eq!(live["client_messages"], 1);
    assert!(
        live["age_ms"].is_u64() && live["idle_ms"].is_u64(),
        "{live}"
    );

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    let sessions = wait_json(admin, "/sessions", None, |v| {
        v["live"].as_array().is_some_and(|l| l.is_empty())
            && v["recent_endings"].as_array().is_some_and(|e| e.len() == 1)
    })
    .await;
    let ended = &sessions["recent_endings"][0];
    assert_eq!(ended["route"], "app");
    assert_eq!(ended["cause"], "normal");
    assert_eq!(ended["initiator"], "client");
    assert_eq!(
        ended["client_close_code"],
        Value::Null,
        "a close without a code"
    );
    assert!(ended["client_bytes"].as_u64().unwrap() > 11, "{ended}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn readyz_needs_a_member_in_rotation_in_every_routed_pool() {
    let mut member = Member::start("a").await;
    let toml = format!(
        r#"workers = 1
shutdown_grace = "2s"
admin = {{ bind = "127.0.0.1:0" }}
[listeners.public]
bind = "127.0.0.1:0"
[backend_pools.app]
members = ["{}"]
[backend_pools.spare]
members = ["{}"]
[backend_settings.app]
probe = "health"
[probes.health]
path = "/health"
interval = "100ms"
timeout = "90ms"
unhealthy_threshold = 1
healthy_threshold = 1
[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"
"#,
        member.addr,
        tether_integration_tests::closed_port(),
    );
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    wait_ready(admin, true).await;
    // The unrouted pool "spare" never counts; the routed pool losing its only member does.
    member.kill();
    let reason = wait_ready(admin, false).await;
    assert_eq!(reason, "not ready: no member in rotation in pool \"app\"\n");
    within("stop", sidecar.stop()).await.unwrap();
}

/// Polls `/readyz` until it says `ready`; returns its body.
async fn wait_ready(admin: SocketAddr, ready: bool) -> String {
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let (status, _, body) = admin_get(admin, "/readyz", None).await;
        if (status == 200) == ready {
            assert_eq!(status, if ready { 200 } else { 503 });
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never became {ready}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Shutdown: readiness turns false at once, a client that never answers the close frame gets
/// it anyway and is cut when the grace period ends, and the run reports it as forced.
#[tokio::test]
async fn drain_turns_readiness_off_and_cuts_a_deaf_client_at_the_deadline() {
    let backend = backends::ws_echo().await;
    let toml = config_toml(backend.addr, "", "")
        .replace(r#"shutdown_grace = "5s""#, r#"shutdown_grace = "1s""#);
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    wait_ready(admin, true).await;
    let mut deaf = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    deaf.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(raw::read_head(&mut deaf).await.status, 101);
    // The session is registered once /sessions lists it.
    wait_json(admin, "/sessions", None, |v| {
        v["live"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;

    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(sidecar.stop());
    let body = wait_ready(admin, false).await;
    assert_eq!(body, "not ready: draining (shutting down)\n");
    // The close frame arrives at once; the client never answers it.
    let (first, payload) = within("close frame", raw::read_frame(&mut deaf)).await;
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    assert_eq!(&payload[2..], b"going away");
    // Tether half-closes towards the client after its close frame, but the session (and with
    // it the process) waits for the client's answer until the deadline, then cuts it.
    let report = within("stop", stopping).await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "stopped after {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "stopped after {waited:?}");
    assert!(report.accepted >= 1);
    drop(deaf);
}

/// `shutdown_close_code = 1012`: both peers of every session get `service restart`.
#[tokio::test]
async fn shutdown_close_code_1012_tells_both_peers_service_restart() {
    let backend = backends::ws_echo().await;
    let toml = format!(
        "shutdown_close_code = 1012\n{}",
        config_toml(backend.addr, "", "")
    );
    let sidecar = start(&toml);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = within(
            "connect",
            tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
        )
        .await
        .expect("upgrade");
        ws.send(Message::text("up")).await.unwrap();
        within("echo", ws.next()).await.unwrap().unwrap();
        readers.push(tokio::spawn(async move {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => {
                        return (u16::from(f.code), f.reason.to_string())
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        }));
    }
    let report = within("stop", sidecar.stop()).await.unwrap();
    assert_eq!(report.forced, 0);
    for reader in readers {
        assert_eq!(
            within("close", reader).await.unwrap(),
            (1012, "service restart".into())
        );
    }
    let closes = within("backend closes", backend.record.wait_closes(3)).await;
    assert!(closes.iter().all(|(code, _)| *code == 1012), "{closes:?}");
}

/// `GET path` with the `Authorization` value given verbatim.
async fn admin_get_auth(admin: SocketAddr, path: &str, authorization: &str) -> u16 {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nAuthorization: {authorization}\r\n\r\n"
    );
    raw::send(admin, req.as_bytes()).await.status
}

/// RFC 9110 §11.1: the auth scheme is case-insensitive; §11.4: one or more spaces before the
/// credentials. The token itself stays exact.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let backend = backends::ws_echo().await;
    let toml = config_toml(backend.addr, "", "").replace(
        r#"admin = { bind = "127.0.0.1:0" }"#,
        r#"admin = { bind = "127.0.0.1:0", token = "s3cret-token" }"#,
    );
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    for ok in [
        "bearer s3cret-token",
        "BEARER s3cret-token",
        "Bearer  s3cret-token",
    ] {
        let status = within(ok, admin_get_auth(admin, "/status", ok)).await;
        assert_eq!(status, 200, "{ok:?}");
    }
    for refused in [
        "bearer S3CRET-TOKEN",
        "Basic s3cret-token",
        "Bearers3cret-token",
        "bearer",
    ] {
        let status = within(refused, admin_get_auth(admin, "/status", refused)).await;
        assert_eq!(status, 401, "{refused:?}");
    }
    within("stop", sidecar.stop()).await.unwrap();
}

/// No admin request takes a body: one announced is refused with 413 and the connection closed
/// without reading it, whether framed by Content-Length or chunked.
#[tokio::test]
async fn an_admin_request_with_a_body_is_413_and_closed() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let admin = sidecar.admin_addr();
    for framing in [
        "Content-Length: 1000000000\r\n",
        "Transfer-Encoding: chunked\r\n",
    ] {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let req = format!("POST /metrics HTTP/1.1\r\nHost: admin\r\n{framing}\r\nsome");
        stream.write_all(req.as_bytes()).await.unwrap();
        let resp = within("413", raw::read_head(&mut stream)).await;
        assert_eq!(resp.status, 413, "{framing}");
        assert_eq!(resp.header("connection"), Some("close"));
        // The body is never waited for: the connection ends.
        let mut rest = Vec::new();
        within(
            "close",
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
        )
        .await
        .unwrap();
    }
    within("stop", sidecar.stop()).await.unwrap();
}

/// Slowloris on the admin port: connections beyond the cap are closed at once, the ones inside
/// it are cut when the head timeout passes, and the endpoint serves again afterwards.
#[tokio::test]
async fn admin_connections_are_capped_and_slow_heads_are_cut() {
    use tether::admin::{HEAD_TIMEOUT, MAX_CONNECTIONS};
    use tokio::io::AsyncReadExt;
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let admin = sidecar.admin_addr();
    let mut slow = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Every slot is taken once the endpoint has accepted them all; a connection beyond the cap
    // is then closed without an answer. Connections the endpoint has not accepted yet when the
    // probe arrives would hold a slot afterwards, so probe until one is refused.
    let started = std::time::Instant::now();
    loop {
        let mut extra = TcpStream::connect(admin).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let read = within("extra connection", extra.read_to_end(&mut buf)).await;
        if read.is_err() || buf.is_empty() {
            break; // closed unanswered: over the cap
        }
        assert!(
            started.elapsed() < STEP_LIMIT,
            "connections over the cap are still served"
        );
    }
    assert!(
        started.elapsed() < HEAD_TIMEOUT,
        "refusal came from the head timeout, not the cap"
    );
    // The slow ones are cut by the head timeout (hyper answers 408 or just closes).
    for mut s in slow {
        let mut buf = Vec::new();
        let _ = within("slow head cut", s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 408"),
            "a slow head got {text:?}"
        );
    }
    assert!(
        started.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(500),
        "cut before the head timeout"
    );
    // Slots are free again.
    let resp = within(
        "healthz",
        raw::send(
            admin,
            b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    within("stop", sidecar.stop()).await.unwrap();
}
