//! The whole Tether sidecar in-process against real backends on 127.0.0.1.
//!
//! Everything binds port 0; nothing sleeps to synchronize: tests wait on observable state (a
//! response, a frame, a closed socket) under [`within`], which turns a hang into a failure.

pub mod backends;
pub mod otlp;
pub mod pool;
pub mod raw;
pub mod tls_front;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// How long any single step of a test may take before it counts as a hang.
pub const STEP_LIMIT: Duration = Duration::from_secs(15);

/// Awaits `fut`, failing the test if it takes longer than [`STEP_LIMIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP_LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no result within {STEP_LIMIT:?}"),
    }
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// A one-listener, one-pool, one-rule configuration sending everything to `backend`. `extra` is
/// appended verbatim (more tables, or keys of `[routing_rules.app.websocket]` since that table
/// comes last). The admin endpoint binds port 0, so tests never share a port.
pub fn config_toml(backend: SocketAddr, settings: &str, extra: &str) -> String {
    format!(
        r#"workers = 2
shutdown_grace = "5s"
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"

[backend_pools.app]
members = ["{backend}"]

[backend_settings.app]
connect_timeout = "2s"
{settings}

[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"

[routing_rules.app.websocket]
{extra}
"#
    )
}

/// Parses a configuration or panics with every error.
pub fn config(toml: &str) -> tether_config::Config {
    tether_config::from_toml_str(toml).unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
}

/// Starts a sidecar for `toml`.
pub fn start(toml: &str) -> tether::Sidecar {
    tether::Sidecar::start(config(toml)).expect("sidecar starts")
}

/// Installs a test log subscriber once (RUST_LOG controls it; quiet by default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The Python interpreter of the venv that holds the independent protocol clients (`h2`,
/// `grpcio`, `websockets`; see `integration-tests/python/requirements.txt`), from
/// `TETHER_TEST_PYTHON` (set by `.ci/test`), else `.venv-clients` at the workspace root. `None`
/// when neither exists: the caller skips, except under `CI=true`, where that is a failure.
pub fn python_clients() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("TETHER_TEST_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-clients/bin/python")
        }
    };
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

/// The admin endpoint's `GET /metrics` as `series → value` (comments and blank lines left out).
pub async fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let resp = within(
        "GET /metrics",
        raw::send(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    resp.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The path of a helper script in `integration-tests/python/`.
pub fn python_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}
