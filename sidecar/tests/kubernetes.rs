//! The Kubernetes shutdown sequence of `examples/kubernetes/`, replayed with the real binary and
//! a real app process, signalled as the kubelet signals a terminating pod:
//!
//! * t = 0: every container's `preStop` hook runs; a container without one gets SIGTERM. Tether
//!   has none, so it gets SIGTERM at once; the app's hook is `GET /drained` on Tether's admin
//!   port (an `httpGet` hook: the kubelet waits for the answer).
//! * Tether keeps serving for `shutdown_delay` with `/readyz` at 503, then drains: every session
//!   gets `1012 service restart`.
//! * `/drained` answers once the drain is over; only then does the app get its SIGTERM.
//!
//! So the clients see 1012 from Tether's drain, never 1014 from an app killed under them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{clean_env, free_port, spawn_reading_stderr, within, write_app_config, STEP};

/// How long Tether keeps serving after SIGTERM with `/readyz` at 503: long enough for the test
/// to probe readiness, open a session and send a request inside it on a busy machine.
const DELAY: &str = "3s";

/// The Python interpreter of the clients venv (`TETHER_TEST_PYTHON`, else `.venv-clients`), as
/// `tether_integration_tests::python_clients` finds it; `None` (skip) locally without it, a
/// failure under `CI=true`.
fn python() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("TETHER_TEST_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-clients/bin/python"),
        std::path::PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").is_err(),
        "the Python clients venv is missing under CI: .ci/run must install it"
    );
    eprintln!("skipping: no Python clients venv (run .ci/run, or set TETHER_TEST_PYTHON)");
    None
}

/// The app container: `integration-tests/python/ws_app.py` (the `websockets` library), and the
/// port it listens on.
fn start_app(python: &std::path::Path) -> (Child, SocketAddr) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../integration-tests/python/ws_app.py");
    let mut app = Command::new(python)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = app.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(STEP)
        .expect("the app never said it listens");
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected app output {line:?}"));
    (app, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One HTTP/1.1 `GET` over a fresh connection: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit (bounded by [`STEP`]).
async fn exit_of(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A session's reader: the close frame it ends with.
fn await_close(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> tokio::task::JoinHandle<(u16, String)> {
    tokio::spawn(async move {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (u16::from(code), reason.to_string())
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
}

#[test]
fn the_example_app_waits_on_drained_and_tether_has_no_prestop() {
    // The manifest this test replays: Tether's container has no preStop (its shutdown_delay
    // does what a sleep did), and the app's preStop is an httpGet of /drained on the admin
    // port; Tether's configuration has the delay and 1012.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    let configmap = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let hooks: Vec<&str> = deployment
        .lines()
        .filter(|l| l.trim() == "preStop:")
        .collect();
    assert_eq!(hooks.len(), 1, "{deployment}");
    assert!(deployment.contains("path: /drained"), "{deployment}");
    assert!(configmap.contains("shutdown_delay = \"5s\""), "{configmap}");
    assert!(
        configmap.contains("shutdown_close_code = 1012"),
        "{configmap}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_termination_drains_sessions_with_1012_before_the_app_stops() {
    let Some(python) = python() else { return };
    let (mut app, app_addr) = start_app(&python);
    let listen = free_port();
    let admin = free_port();
    let config = write_app_config(
        "kubernetes",
        &format!(
            "shutdown_delay = \"{DELAY}\"\nshutdown_grace = \"10s\"\nshutdown_close_code = 1012"
        ),
        &admin.to_string(),
        listen,
        app_addr,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    clean_env(&mut cmd).arg("--config").arg(&config);
    let (mut tether, stderr) = spawn_reading_stderr(&mut cmd);

    // Ready: /readyz says so, and sessions through Tether echo.
    let deadline = Instant::now() + STEP;
    while !matches!(get(admin, "/readyz").await, Ok((200, _))) {
        assert!(Instant::now() < deadline, "tether never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("ws://{listen}/ws");
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(&url))
            .await
            .expect("upgrade");
        ws.send(Message::text("up")).await.unwrap();
        assert!(matches!(
            within("echo", ws.next()).await,
            Some(Ok(Message::Text(_)))
        ));
        clients.push(ws);
    }
    let mut readers: Vec<_> = clients.into_iter().map(await_close).collect();

    // t = 0, as the kubelet does it: the app's preStop (GET /drained) starts, and Tether, which
    // has no preStop, gets SIGTERM.
    // The kubelet's side of the app container: its hook, then SIGTERM once the hook returned.
    let app_pid = app.id().to_string();
    let kubelet = tokio::spawn(async move {
        let answer = get(admin, "/drained").await;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(&app_pid)
            .status()
            .unwrap();
        assert!(status.success());
        answer
    });
    signal(&tether, "-TERM");

    // The delay: /readyz says 503 while new sessions and requests are still served.
    let deadline = Instant::now() + STEP;
    loop {
        match get(admin, "/readyz").await {
            Ok((503, body)) => {
                assert!(body.contains("draining"), "{body}");
                break;
            }
            Ok((200, _)) => {}
            other => panic!("/readyz during the delay: {other:?}"),
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut late, _) = within(
        "connect during the delay",
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .expect("a new session is still accepted during the delay");
    late.send(Message::text("late")).await.unwrap();
    assert!(matches!(
        within("echo during the delay", late.next()).await,
        Some(Ok(Message::Text(t))) if t.as_str() == "late"
    ));
    assert_eq!(
        within("request during the delay", get(listen, "/hello"))
            .await
            .unwrap(),
        (200, "hello\n".to_owned()),
        "requests are still served during the delay"
    );
    assert!(!kubelet.is_finished(), "/drained answered before the drain");
    assert!(app.try_wait().unwrap().is_none(), "the app died early");
    readers.push(await_close(late));

    // The drain: every session, the late one included, gets 1012 from Tether.
    for reader in readers {
        assert_eq!(
            within("client close", reader).await.unwrap(),
            (1012, "service restart".to_string())
        );
    }
    // The hook returned 200 once the drain was over, and only then did the app get SIGTERM.
    let answer = within("the app's preStop", kubelet).await.unwrap();
    assert_eq!(answer.unwrap(), (200, "drained\n".to_owned()));
    exit_of(&mut app, "the app").await;
    let exit = exit_of(&mut tether, "tether").await;
    let stderr = stderr.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("grace period over"), "{stderr}");
    // No session ended because the app went away (a bare "1014" could match a random request id).
    assert!(!stderr.contains("backend_lost"), "{stderr}");
    assert!(!stderr.contains("close_code=1014"), "{stderr}");
}
