//! End to end with a real OpenTelemetry collector (`rotel`, installed from PyPI by `.ci/run`):
//! the collector must print Tether's session span, over OTLP/gRPC and over OTLP/HTTP, and the
//! handshake's span with the OpenTelemetry HTTP semantic conventions.
//!
//! The collector binary comes from `ROTEL_AGENT` (set by `.ci/test`). Without it the test says so
//! and passes locally; under `CI=true` a missing collector is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::{backends, closed_port, config, config_toml, within};
use tokio_tungstenite::tungstenite::Message;

struct Collector {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    fn start(agent: &str, grpc: std::net::SocketAddr, http: std::net::SocketAddr) -> Collector {
        let mut child = Command::new(agent)
            .args([
                "start",
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
                "--otlp-grpc-endpoint",
                &grpc.to_string(),
                "--otlp-http-endpoint",
                &http.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rotel");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Ready when both receivers accept connections (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [grpc, http] {
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "rotel never listened on {addr}");
                std::thread::yield_now();
            }
        }
        Collector {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) until the collector printed a line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = self.lines.recv_timeout(deadline - Instant::now()) {
            let hit = line.contains(needle);
            self.seen.push(line);
            if hit {
                return;
            }
        }
        panic!(
            "rotel never printed {needle:?}; it printed:\n{}",
            self.seen.join("\n")
        );
    }
}

impl Collector {
    /// Fails if any line seen so far contains one of `needles`.
    fn assert_never_printed(&self, needles: &[&str]) {
        for line in &self.seen {
            for needle in needles {
                assert!(!line.contains(needle), "rotel printed {needle:?}: {line}");
            }
        }
    }
}

async fn one_session(env: &[(String, String)], backend: std::net::SocketAddr, service: &str) {
    let toml = format!(
        "{}\n[telemetry]\nservice_name = \"{service}\"\n",
        config_toml(backend, "", "")
    );
    let sidecar = tether::Sidecar::start_traced(config(&toml), env).expect("sidecar");
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
    )
    .await
    .unwrap();
    ws.send(Message::text("to the collector")).await.unwrap();
    let _ = within("echo", ws.next()).await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    // Stopping flushes the exporter.
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn the_real_collector_prints_the_session_span_over_grpc_and_http() {
    let Ok(agent) = std::env::var("ROTEL_AGENT") else {
        assert!(
            std::env::var("CI").is_err(),
            "ROTEL_AGENT is not set under CI: .ci/test must install the collector"
        );
        eprintln!("skipping: set ROTEL_AGENT to a rotel-agent binary (see .ci/run)");
        return;
    };
    let (grpc, http) = (closed_port(), closed_port());
    let mut collector = Collector::start(&agent, grpc, http);
    let backend = backends::ws_echo().await;

    let grpc_env = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        format!("http://{grpc}"),
    )];
    one_session(&grpc_env, backend.addr, "tether-grpc").await;
    collector.wait_for("tether-grpc");
    collector.wait_for("websocket.session");
    collector.wait_for("websocket.close.cause");
    // The handshake's SERVER span, named and described by the HTTP semantic conventions, and
    // the resource that says which build and which instance sent it.
    collector.wait_for("GET /*");
    collector.wait_for("http.route: Str(/*)");
    collector.wait_for("tether.route: Str(app)");
    collector.wait_for("url.scheme: Str(http)");
    collector.wait_for("client.address: Str(127.0.0.1)");
    collector.wait_for("network.protocol.version: Str(1.1)");
    collector.wait_for(&format!(
        "service.version: Str({})",
        env!("CARGO_PKG_VERSION")
    ));
    collector.wait_for("service.instance.id");
    collector.assert_never_printed(&["code.filepath", "thread.id", "busy_ns", "Str()"]);

    let http_env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://{http}"),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            "http/protobuf".to_string(),
        ),
    ];
    one_session(&http_env, backend.addr, "tether-http").await;
    collector.wait_for("tether-http");
}
