//! HTTP/2 on the client side with independent clients: curl (`--http2-prior-knowledge`,
//! `--http2` over TLS with ALPN) and the Python `h2` library for WebSockets over HTTP/2 (RFC
//! 8441: `integration-tests/python/h2_websocket.py`), through the in-process sidecar to real
//! HTTP/1.1 backends.
//!
//! curl and the Python venv are installed by `.ci/run`; locally a test without them says so
//! and passes, under `CI=true` their absence fails it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tether_integration_tests::pool::Member;
use tether_integration_tests::{python_clients, python_script, start, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A one-listener configuration over `member`; `listener` adds keys to the listener's table.
fn config(member: SocketAddr, listener: &str) -> String {
    format!(
        r#"workers = 1
shutdown_grace = "5s"
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"
{listener}

[backend_pools.app]
members = ["{member}"]

[backend_settings.app]
connect_timeout = "2s"

[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"
"#
    )
}

/// curl, or `None` (skip) when it is missing outside CI.
fn curl() -> Option<&'static str> {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").is_err(), "curl is missing under CI");
        eprintln!("skipping: curl is not installed");
        return None;
    }
    Some("curl")
}

/// Runs curl with `args`; returns `"<http_version> <status>"` as curl saw them.
async fn curl_version_and_status(args: &[&str]) -> String {
    let out = within(
        "curl",
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .args(args)
            .output(),
    )
    .await
    .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a scenario of the Python RFC 8441 client and parses its (last) JSON line.
async fn h2_client(python: &PathBuf, addr: SocketAddr, scenario: &str, tls: Option<&str>) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(python_script("h2_websocket.py"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(scenario);
    if let Some(ca) = tls {
        cmd.args(["--tls", ca]);
    }
    let out = within("h2 client", cmd.output())
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).expect("JSON")
}

/// GETs an admin path (plain HTTP/1.1).
async fn admin_get(admin: SocketAddr, path: &str) -> String {
    tether_integration_tests::pool::get(admin, path, "").await.1
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http11_share_one_port() {
    let Some(_) = curl() else { return };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let url = format!("http://{}/plain", sidecar.addr("public"));
    assert_eq!(
        curl_version_and_status(&["--http2-prior-knowledge", &url]).await,
        "2 200"
    );
    assert_eq!(
        curl_version_and_status(&["--http1.1", &url]).await,
        "1.1 200"
    );
    // `Upgrade: h2c` is not offered: the request is served over HTTP/1.1.
    assert_eq!(curl_version_and_status(&["--http2", &url]).await, "1.1 200");
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("tether_http_connections_total{protocol_version=\"2\"} 1"),
        "{metrics}"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn http2_off_answers_the_preface_as_http11() {
    let Some(_) = curl() else { return };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, "http2 = false"));
    let url = format!("http://{}/plain", sidecar.addr("public"));
    // hyper's HTTP/1.1 server refuses the preface: no HTTP/2 answer.
    let answer = curl_version_and_status(&["--http2-prior-knowledge", &url]).await;
    assert!(!answer.starts_with("2 "), "{answer}");
    assert_eq!(curl_version_and_status(&[&url]).await, "1.1 200");
    within("stop", sidecar.stop()).await.unwrap();
}

/// A self-signed certificate for `localhost` in a fresh directory: (cert, key) paths.
fn localhost_cert() -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "tether-h2-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn https_listener(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    format!(
        "protocol = \"https\"\n{extra}\n[[listeners.public.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn https_negotiates_h2_by_alpn_unless_turned_off() {
    let Some(_) = curl() else { return };
    let member = Member::start("a").await;
    let (cert, key) = localhost_cert();
    for (extra, want) in [("", "2 200"), ("http2 = false", "1.1 200")] {
        let toml = config(member.addr, &https_listener(&cert, &key, extra));
        // The certificates table must come after the listener's keys; `config` puts the
        // listener's extra text right under its table, which is what TOML needs here.
        let sidecar = start(&toml);
        let port = sidecar.addr("public").port();
        let url = format!("https://localhost:{port}/plain");
        let resolve = format!("localhost:{port}:127.0.0.1");
        let cacert = cert.display().to_string();
        let answer =
            curl_version_and_status(&["--http2", "--cacert", &cacert, "--resolve", &resolve, &url])
                .await;
        assert_eq!(answer, want, "listener with {extra:?}");
        within("stop", sidecar.stop()).await.unwrap();
    }
}

#[tokio::test]
async fn websockets_over_h2_multiplex_with_requests_on_one_connection() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "multiplex", None).await;
    assert_eq!(out["enable_connect_protocol"], 1, "{out}");
    assert_eq!(out["status_a"], "200", "{out}");
    assert_eq!(out["status_b"], "200", "{out}");
    assert_eq!(out["accept_header_a"], false, "{out}");
    assert_eq!(out["get_status"], "200", "{out}");
    assert_eq!(out["echo_a"], "hello from a", "{out}");
    assert_eq!(out["echo_b_ok"], true, "{out}");
    assert_eq!(
        out["pong_a"],
        serde_json::json!([10, "are you there"]),
        "{out}"
    );
    assert_eq!(out["close_a"], serde_json::json!([8, 1000, "bye"]), "{out}");
    assert_eq!(out["echo_b_after_a_closed"], "b still here", "{out}");
    // Both WebSockets reached the backend as HTTP/1.1 upgrades with Tether's key.
    assert_eq!(member.sessions.load(std::sync::atomic::Ordering::SeqCst), 2);
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("tether_websocket_handshakes_total{route=\"app\",outcome=\"upgraded\"} 2"),
        "{metrics}"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn websockets_over_h2_over_tls() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let (cert, key) = localhost_cert();
    let sidecar = start(&config(member.addr, &https_listener(&cert, &key, "")));
    let port = sidecar.addr("public").port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ca = cert.display().to_string();
    let out = h2_client(&python, addr, "multiplex", Some(&ca)).await;
    assert_eq!(out["status_a"], "200", "{out}");
    assert_eq!(out["echo_b_after_a_closed"], "b still here", "{out}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_h2_websockets_with_1001_and_goaway() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let addr = sidecar.addr("public");
    let mut child = Command::new(&python)
        .arg(python_script("h2_websocket.py"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg("drain")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(
        &within("ready", lines.next_line())
            .await
            .unwrap()
            .expect("a line"),
    )
    .unwrap();
    assert_eq!(ready["status"], "200");
    // The session is listed with its HTTP version.
    let sessions: Value =
        serde_json::from_str(&admin_get(sidecar.admin_addr(), "/sessions").await).unwrap();
    assert_eq!(sessions["live"][0]["http_version"], "2", "{sessions}");
    within("stop", sidecar.stop()).await.unwrap();
    let last: Value = serde_json::from_str(
        &within("close", lines.next_line())
            .await
            .unwrap()
            .expect("a line"),
    )
    .unwrap();
    assert_eq!(last["close"][0], 1001, "{last}");
    // GOAWAY with NO_ERROR (or the connection simply closed after it).
    assert!(last["goaway"].is_null() || last["goaway"] == 0, "{last}");
    let _ = within("exit", child.wait()).await;
}

#[tokio::test]
async fn h2_websockets_off_is_not_advertised() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, "http2_websockets = false"));
    let out = h2_client(&python, sidecar.addr("public"), "refused", None).await;
    assert_ne!(out["enable_connect_protocol"], 1, "{out}");
    assert_eq!(member.sessions.load(std::sync::atomic::Ordering::SeqCst), 0);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn h2_handshake_with_another_version_gets_426() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "version", None).await;
    assert_eq!(out["status"], "426", "{out}");
    assert_eq!(out["version_header"], "13", "{out}");
    assert_eq!(member.sessions.load(std::sync::atomic::Ordering::SeqCst), 0);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn rapid_reset_burst_gets_goaway_and_is_counted() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "rapid_reset", None).await;
    // ENHANCE_YOUR_CALM (0xb).
    assert_eq!(out["goaway"], 11, "{out}");
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("tether_http2_connection_errors_total{reason=\"enhance_your_calm\"} 1"),
        "{metrics}"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn oversize_header_list_gets_431_and_the_connection_lives_on() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "big_headers", None).await;
    assert_eq!(out["status"], "431", "{out}");
    assert_eq!(out["next_status"], "200", "{out}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    let Some(python) = python_clients() else {
        return;
    };
    // A backend that never answers keeps every stream open.
    let silent = tether_integration_tests::backends::silent_backend().await;
    let sidecar = start(&config(silent.addr, "http2_max_concurrent_streams = 5"));
    let out = h2_client(&python, sidecar.addr("public"), "concurrent", None).await;
    assert_eq!(out["limit"], 5, "{out}");
    // The sixth stream (id 11) is refused (REFUSED_STREAM, 0x7): safe for the client to retry.
    assert_eq!(out["reset"]["11"], 7, "{out}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn paced_rapid_reset_spends_the_budget_and_gets_goaway() {
    let Some(python) = python_clients() else {
        return;
    };
    let silent = tether_integration_tests::backends::silent_backend().await;
    let sidecar = start(&config(silent.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "paced_reset", None).await;
    eprintln!("{out}");
    // Every request was taken by the server before it was cancelled, one at a time, so the
    // burst limit never fired; the budget did, with a graceful GOAWAY (NO_ERROR).
    let sent = out["reset_before_goaway"].as_u64().unwrap();
    assert!(
        (u64::from(tether_actors::http2::RESET_BUDGET)
            ..=u64::from(tether_actors::http2::RESET_BUDGET) + 2)
            .contains(&sent),
        "{out}"
    );
    assert_eq!(out["goaway"], 0, "{out}");
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("tether_http2_reset_budget_exceeded_total 1"),
        "{metrics}"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn continuation_flood_closes_the_connection() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "continuation_flood", None).await;
    eprintln!("{out}");
    // The header list passes max_request_head_bytes after ~150 fragments: the connection ends
    // long before the client is done writing.
    assert!(out["written"].as_u64().unwrap() < 100_000, "{out}");
    assert!(!out["goaway"].is_null() || out["closed"] == true, "{out}");
    assert_eq!(
        member.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn ping_flood_is_bounded_and_other_clients_are_served() {
    let Some(python) = python_clients() else {
        return;
    };
    let Some(_) = curl() else { return };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "ping_flood", None).await;
    eprintln!("{out}");
    // Each PING's answer must be written before more frames are read: a client that never
    // reads is stopped by TCP backpressure, long before two million PINGs.
    assert!(out["written"].as_u64().unwrap() < 2_000_000, "{out}");
    let url = format!("http://{}/plain", sidecar.addr("public"));
    assert_eq!(
        curl_version_and_status(&["--http2-prior-knowledge", &url]).await,
        "2 200"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn many_requests_on_one_connection_do_not_spend_the_reset_budget() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, ""));
    let out = h2_client(&python, sidecar.addr("public"), "many_gets", None).await;
    assert_eq!(out["statuses"]["200"], 500, "{out}");
    assert!(out["goaway"].is_null(), "{out}");
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("tether_http2_reset_budget_exceeded_total 0"),
        "{metrics}"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_but_never_under_a_session() {
    let Some(python) = python_clients() else {
        return;
    };
    let member = Member::start("a").await;
    let sidecar = start(&config(member.addr, "http2_idle_timeout = \"1s\""));
    let out = h2_client(&python, sidecar.addr("public"), "idle", None).await;
    eprintln!("{out}");
    assert_eq!(out["get_status"], "200", "{out}");
    // Three idle timeouts passed while the WebSocket lived (its stream counts as open).
    assert!(out["goaway_during_session"].is_null(), "{out}");
    // Once it ended, the connection was idle and got GOAWAY NO_ERROR about a second later.
    assert_eq!(out["goaway_after"], 0, "{out}");
    let after = out["seconds_after_close"].as_f64().unwrap();
    assert!((0.8..5.0).contains(&after), "{out}");
    within("stop", sidecar.stop()).await.unwrap();
}
