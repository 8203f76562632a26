//! The binary's reload path: a changed `--config` file and SIGHUP re-read every layer; an
//! invalid file is refused and the running configuration keeps serving. Also `tether health`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(20);

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn tether() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TETHER_") || key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn config(listen: SocketAddr, admin: SocketAddr, paths: &str, pool: &str) -> String {
    format!(
        r#"shutdown_grace = "2s"
admin = {{ bind = "{admin}" }}
[listeners.public]
bind = "{listen}"
[backend_pools.app]
members = ["127.0.0.1:9"]
passive = {{ failures = 0 }}
[backend_settings.app]
[routing_rules.app]
listener = "public"
paths = {paths}
backend_pool = "{pool}"
backend_settings = "app"
"#
    )
}

fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Waits (bounded) until `f` holds.
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_changed_config_file_and_sighup_reload_and_an_invalid_file_is_refused() {
    let (listen, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("tether-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(&path, config(listen, admin, "[]", "app")).unwrap();
    let mut child = tether()
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let running = Running { child, stderr };
    let log = || running.stderr.lock().unwrap().clone();

    // `tether health` answers once the admin endpoint serves.
    wait("tether health", || {
        tether()
            .arg("health")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
            .status
            .success()
    });
    // The member refuses: every path gets 502.
    wait("serving", || status_of(listen, "/x") == Some(502));

    // An invalid file is refused; the old configuration keeps serving.
    std::fs::write(&path, config(listen, admin, "[]", "nope")).unwrap();
    wait("refusal logged", || log().contains("reload refused"));
    assert!(
        log().contains("routing_rules.app.backend_pool"),
        "{}",
        log()
    );
    assert_eq!(status_of(listen, "/x"), Some(502));

    // Truncated (`: > tether.toml`): refused as empty once it holds still; still serving.
    std::fs::File::create(&path).unwrap();
    wait("truncation refused", || log().contains("the file is empty"));
    assert_eq!(status_of(listen, "/x"), Some(502));

    // A valid change applies: only /only is routed now.
    std::fs::write(&path, config(listen, admin, r#"["/only"]"#, "app")).unwrap();
    wait("reload applied", || status_of(listen, "/x") == Some(404));
    assert_eq!(status_of(listen, "/only"), Some(502));

    // SIGHUP re-reads the layers too.
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(running.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    wait("SIGHUP handled", || {
        log().matches("reload applied").count() >= 2 && log().contains("SIGHUP received")
    });
    assert_eq!(status_of(listen, "/x"), Some(404));
}

/// A file added to a `--config-dir` under a running sidecar is read: by the watcher once it
/// holds still, and a removed one is dropped the same way.
#[test]
fn a_file_added_to_the_config_dir_is_picked_up_and_a_removed_one_dropped() {
    let (listen, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("tether-reload-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("00-base.toml"),
        config(listen, admin, r#"["/only"]"#, "app"),
    )
    .unwrap();
    let child = tether()
        .arg("--config-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running {
        child,
        stderr: Arc::default(),
    };
    wait("serving", || status_of(listen, "/only") == Some(502));
    assert_eq!(status_of(listen, "/x"), Some(404));

    // A second file adds a rule for /x.
    let extra = dir.join("10-extra.toml");
    std::fs::write(
        &extra,
        "[routing_rules.extra]\nlistener = \"public\"\npaths = [\"/x\"]\n\
         backend_pool = \"app\"\nbackend_settings = \"app\"\n",
    )
    .unwrap();
    wait("the new file is read", || {
        status_of(listen, "/x") == Some(502)
    });

    // Removed again: its rule goes.
    std::fs::remove_file(&extra).unwrap();
    wait("the removed file is dropped", || {
        status_of(listen, "/x") == Some(404)
    });
    assert_eq!(status_of(listen, "/only"), Some(502));
}
