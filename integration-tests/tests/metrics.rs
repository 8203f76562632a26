//! `GET /metrics` as Prometheus sees it: every family has HELP and TYPE and samples from the
//! start, label sets do not change when a value does (a member flipping health), WebSocket
//! traffic is counted while a session runs, and the scrape passes `promtool check metrics`.
//!
//! The scrape of the first test is written to `integration-tests/artifacts/metrics.prom`, which
//! `.ci/test` checks with `promtool` (and this test does too when `promtool` is on the PATH).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::pool::{wait_for, Member};
use tether_integration_tests::{backends, closed_port, config_toml, raw, start, within};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// One scrape: the text, and every sample as `series → value`. Checks the text format on the
/// way: every sample belongs to a family announced by `# HELP` and `# TYPE` before it, each
/// family announced once.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn of(admin: SocketAddr) -> Scrape {
        let resp = within(
            "GET /metrics",
            raw::send(
                admin,
                b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        assert_eq!(resp.status, 200);
        let text = resp.text().to_string();
        let mut samples = BTreeMap::new();
        let (mut helped, mut typed) = (BTreeSet::new(), BTreeMap::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(helped.insert(name), "HELP twice: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(
                    typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice: {line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let name = &series[..series.find('{').unwrap_or(series.len())];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            let kind = typed
                .get(family)
                .unwrap_or_else(|| panic!("sample without TYPE: {line}"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {name}");
            }
            samples.insert(series.to_owned(), value.parse().expect("a number"));
        }
        Scrape { text, samples }
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.text))
    }

    /// The series of the families whose names start with `prefix`.
    fn series(&self, prefix: &str) -> BTreeSet<String> {
        self.samples
            .keys()
            .filter(|s| s.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// Runs `promtool check metrics` over `text` when promtool is installed (`.ci/test` runs it
/// under CI over the file this test writes, and fails there when it is missing).
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: .ci/test checks the written scrape");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_family_has_samples_from_the_start_and_the_scrape_passes_promtool() {
    let backend = backends::ws_echo().await;
    let dir = std::env::temp_dir().join(format!("tether-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["site.test".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.join("site.crt"), dir.join("site.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let toml = format!(
        r#"workers = 1
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"
max_connections = 100

[listeners.secure]
bind = "127.0.0.1:0"
protocol = "https"

[[listeners.secure.certificates]]
cert_file = "{}"
key_file = "{}"

[backend_pools.app]
members = ["{}"]

[backend_settings.app]

[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"
"#,
        cert_file.display(),
        key_file.display(),
        backend.addr
    );
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    // The first scrape once the sidecar says it serves (its listeners are bound and counted).
    within("ready", async {
        loop {
            let resp = raw::send(
                admin,
                b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await;
            if resp.status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let first = Scrape::of(admin).await;
    let member = backend.addr;
    for (series, value) in [
        (
            r#"tether_websocket_sessions_active{route="app"}"#.to_owned(),
            0.0,
        ),
        (
            format!(r#"tether_backend_sessions{{pool="app",member="{member}"}}"#),
            0.0,
        ),
        (
            r#"tether_listener_connections_accepted_total{listener="public"}"#.to_owned(),
            0.0,
        ),
        (
            r#"tether_listener_connections_active{listener="public"}"#.to_owned(),
            0.0,
        ),
        (
            r#"tether_listener_connections_max{listener="public"}"#.to_owned(),
            100.0,
        ),
        (
            r#"tether_tls_handshake_failures_total{listener="secure"}"#.to_owned(),
            0.0,
        ),
        (
            r#"tether_tls_handshakes_total{listener="secure"}"#.to_owned(),
            0.0,
        ),
        (
            r#"tether_config_reloads_total{result="applied"}"#.to_owned(),
            0.0,
        ),
        (
            r#"tether_config_reloads_total{result="refused"}"#.to_owned(),
            0.0,
        ),
        (
            format!(
                r#"tether_backend_connect_failures_total{{pool="app",member="{member}",reason="timeout"}}"#
            ),
            0.0,
        ),
        (
            r#"tether_websocket_bytes_total{from="client"}"#.to_owned(),
            0.0,
        ),
        ("tether_draining".to_owned(), 0.0),
    ] {
        assert_eq!(first.get(&series), value, "{series}");
    }
    // No limit on the https listener: no max sample. The state family has every state.
    assert!(first
        .series("tether_listener_connections_max{listener=\"secure\"")
        .is_empty());
    assert_eq!(
        first
            .series(&format!(
                "tether_backend_state{{pool=\"app\",member=\"{member}\""
            ))
            .len(),
        4
    );
    let build = first.series("tether_build_info{");
    assert_eq!(build.len(), 1, "{build:?}");
    assert!(build
        .iter()
        .next()
        .unwrap()
        .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
    assert!(first.get("process_resident_memory_bytes") > 0.0);
    assert!(first.get("process_open_fds") > 0.0);
    assert!(first.get("process_start_time_seconds") > 1.0e9);
    let loaded = first.get("tether_config_last_reload_success_timestamp_seconds");
    assert!(loaded > 1.0e9);

    // Traffic: a session, a TLS handshake that fails, an applied reload.
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
    )
    .await
    .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    let mut junk = tokio::net::TcpStream::connect(sidecar.addr("secure"))
        .await
        .unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(junk);
    sidecar.reload_toml(&toml).await.expect("reload applied");
    let live = within("TLS failure counted", async {
        loop {
            let s = Scrape::of(admin).await;
            if s.get(r#"tether_tls_handshake_failures_total{listener="secure"}"#) >= 1.0 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        live.get(r#"tether_websocket_sessions_active{route="app"}"#),
        1.0
    );
    assert_eq!(
        live.get(r#"tether_listener_connections_active{listener="public"}"#),
        1.0,
        "the session holds its connection's place"
    );
    assert_eq!(
        live.get(r#"tether_listener_connections_accepted_total{listener="public"}"#),
        1.0
    );
    assert_eq!(
        live.get(r#"tether_config_reloads_total{result="applied"}"#),
        1.0
    );
    assert!(live.get("tether_config_last_reload_success_timestamp_seconds") >= loaded);

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("metrics.prom"), &live.text).unwrap();
    promtool_check(&live.text);
    ws.close(None).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn backend_label_sets_stay_the_same_when_a_member_flips_health() {
    let member = Member::start("a").await;
    let toml = config_toml(
        member.addr,
        "probe = \"health\"",
        "",
    )
    .replace(
        "[routing_rules.app]",
        "[probes.health]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\n[routing_rules.app]",
    );
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    let state =
        |s: &serde_json::Value| tether_integration_tests::pool::state(s, "app", member.addr);
    wait_for(admin, "member healthy", |s| state(s) == "healthy").await;
    let healthy = Scrape::of(admin).await;
    member.health.set_status(503);
    wait_for(admin, "member unhealthy", |s| state(s) == "unhealthy").await;
    let unhealthy = Scrape::of(admin).await;

    let m = member.addr;
    assert_eq!(
        healthy.series("tether_backend_"),
        unhealthy.series("tether_backend_"),
        "the label sets do not change with the member's health"
    );
    let up = format!(r#"tether_backend_up{{pool="app",member="{m}"}}"#);
    let state_of =
        |s: &str| format!(r#"tether_backend_state{{pool="app",member="{m}",state="{s}"}}"#);
    assert_eq!(healthy.get(&up), 1.0);
    assert_eq!(unhealthy.get(&up), 0.0);
    assert_eq!(healthy.get(&state_of("healthy")), 1.0);
    assert_eq!(healthy.get(&state_of("unhealthy")), 0.0);
    assert_eq!(unhealthy.get(&state_of("healthy")), 0.0);
    assert_eq!(unhealthy.get(&state_of("unhealthy")), 1.0);
    assert_eq!(unhealthy.get(&state_of("unknown")), 0.0);
    assert_eq!(unhealthy.get(&state_of("ejected")), 0.0);
    within("stop", sidecar.stop()).await.unwrap();
}

/// Polls `/metrics` until `done` holds (bounded by `within`).
async fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    within(what, async {
        loop {
            let s = Scrape::of(admin).await;
            if done(&s) {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Opens a session through `sidecar` and sends `count` text messages of `size` bytes, each
/// echoed back.
async fn session_with(
    sidecar: &tether::Sidecar,
    count: usize,
    size: usize,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
    )
    .await
    .unwrap();
    let payload = "x".repeat(size);
    for _ in 0..count {
        ws.send(Message::text(payload.clone())).await.unwrap();
        within("echo", ws.next()).await.unwrap().unwrap();
    }
    ws
}

const CLIENT_BYTES: &str = r#"tether_websocket_bytes_total{from="client"}"#;
const BACKEND_BYTES: &str = r#"tether_websocket_bytes_total{from="backend"}"#;
const CLIENT_MESSAGES: &str = r#"tether_websocket_messages_total{from="client"}"#;
const ACTIVE: &str = r#"tether_websocket_sessions_active{route="app"}"#;

#[tokio::test]
async fn websocket_traffic_is_counted_on_the_keepalive_tick_while_the_session_runs() {
    let backend = backends::ws_echo().await;
    // The keep-alive tick reports what moved; 10 KiB is below the volume threshold.
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "inspect = \"frames\"\nkeepalive_interval = \"1s\"",
    ));
    let admin = sidecar.admin_addr();
    let ws = session_with(&sidecar, 10, 1024).await;
    // The client keeps reading (so it answers Tether's pings and is not judged unresponsive);
    // what it reads comes back on a channel.
    let (mut sink, mut stream) = ws.split();
    let (echoes, mut echoed) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_text() {
                let _ = echoes.send(msg);
            }
        }
    });
    let counted = scrape_until(admin, "traffic counted while the session runs", |s| {
        s.get(CLIENT_BYTES) >= 10.0 * 1024.0
    })
    .await;
    assert_eq!(counted.get(ACTIVE), 1.0, "still running");
    assert!(counted.get(BACKEND_BYTES) >= 10.0 * 1024.0);
    assert_eq!(counted.get(CLIENT_MESSAGES), 10.0);
    // At its end the rest is added once: nothing counted twice.
    sink.send(Message::text("bye")).await.unwrap();
    within("echo", echoed.recv()).await.unwrap();
    sink.close().await.unwrap();
    within("close", reader).await.unwrap();
    let after = scrape_until(admin, "session end counted", |s| {
        s.get(ACTIVE) == 0.0 && s.get(CLIENT_MESSAGES) >= 11.0
    })
    .await;
    assert_eq!(after.get(CLIENT_MESSAGES), 11.0);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn websocket_traffic_is_counted_by_volume_without_a_keepalive() {
    let backend = backends::ws_echo().await;
    // No keep-alive and no idle timeout: no tick at all, so only the volume reports.
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "inspect = \"frames\"\nkeepalive_interval = \"0s\"",
    ));
    let admin = sidecar.admin_addr();
    let threshold = tether_actors::metrics::TRAFFIC_REPORT_BYTES as usize;
    let ws = session_with(&sidecar, threshold / 1024 + 1, 1024).await;
    let counted = scrape_until(admin, "traffic counted by volume", |s| {
        s.get(CLIENT_BYTES) + s.get(BACKEND_BYTES) >= threshold as f64
    })
    .await;
    assert_eq!(counted.get(ACTIVE), 1.0, "still running");
    drop(ws);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_counted_on_its_member() {
    let dead = closed_port();
    let sidecar = start(&config_toml(dead, "", ""));
    let admin = sidecar.admin_addr();
    let series = |reason: &str| {
        format!(
            r#"tether_backend_connect_failures_total{{pool="app",member="{dead}",reason="{reason}"}}"#
        )
    };
    assert_eq!(Scrape::of(admin).await.get(&series("error")), 0.0);
    let resp = within(
        "request",
        raw::send(
            sidecar.addr("public"),
            b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 502);
    let after = Scrape::of(admin).await;
    assert_eq!(after.get(&series("error")), 1.0);
    assert_eq!(after.get(&series("timeout")), 0.0);
    assert_eq!(after.get(&series("tls")), 0.0);
    assert_eq!(
        after.get(r#"tether_http_requests_total{route="app",status_class="5xx"}"#),
        1.0
    );
    within("stop", sidecar.stop()).await.unwrap();
}
