//! Helpers shared by the tests that run the real `tether` binary.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long one step may take before a test counts it as a hang.
pub const STEP: Duration = Duration::from_secs(20);

/// `fut`, or a panic naming `what` if it takes longer than [`STEP`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?}"))
}

/// A loopback address nothing listens on (bound, then released).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Removes the test's own `TETHER_*` and `OTEL_*` variables from `cmd`'s environment, so that
/// no layer leaks into the child.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("TETHER_") || key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Writes `tether.toml` in a directory of its own (`tether-NAME-PID`): two workers, the
/// top-level keys in `top` (e.g. `shutdown_grace = "10s"`), the admin endpoint on `admin`,
/// listener `public` on `listen`, one rule to the pool `app` at `backend`.
pub fn write_app_config(
    name: &str,
    top: &str,
    admin: &str,
    listen: SocketAddr,
    backend: SocketAddr,
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(
        &path,
        format!(
            r#"workers = 2
{top}
admin = {{ bind = "{admin}" }}
[listeners.public]
bind = "{listen}"
[backend_pools.app]
members = ["{backend}"]
[backend_settings.app]
[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"
"#
        ),
    )
    .unwrap();
    path
}

/// Starts `cmd` (the `tether` binary, or a shell around it) with stdout discarded and stderr
/// read to its end on a thread of its own, so a chatty child never blocks on a full pipe.
pub fn spawn_reading_stderr(cmd: &mut Command) -> (Child, JoinHandle<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    });
    (child, stderr)
}
