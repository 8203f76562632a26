//! The `tether` binary as an operator runs it.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tether() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    // The test's own environment must not leak TETHER_* layers into the child.
    for (key, _) in std::env::vars() {
        if key.starts_with("TETHER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn write_config(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn config(listen: SocketAddr, pool_ref: &str) -> String {
    format!(
        r#"admin = {{ bind = "127.0.0.1:0" }}
[listeners.public]
bind = "{listen}"
[backend_pools.chat]
members = ["127.0.0.1:9"]
[backend_settings.chat]
[routing_rules.chat]
listener = "public"
backend_pool = "{pool_ref}"
backend_settings = "chat"
"#
    )
}

/// An invalid configuration exits 64, names the field, the file and a hint, and binds nothing:
/// the listener's port is held by the test, so an attempt to bind would have exited 71 instead.
#[test]
fn invalid_config_exits_64_without_binding() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = write_config("invalid", &config(held.local_addr().unwrap(), "chta"));
    let out = tether().arg("--config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains(r#"routing_rules.chat.backend_pool: no backend pool named "chta" (did you mean "chat"?)"#),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("tether.toml"), "names the file: {stderr}");
    let out = tether()
        .arg("--config")
        .arg(&path)
        .env("TETHER_WORKERS", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr.contains("TETHER_WORKERS"),
        "names the variable: {stderr}"
    );
    drop(held);
}

/// `tether check` on the test configuration with one variable set; its standard output, after
/// asserting success.
fn check_with_env(name: &str, key: &str, value: &str) -> String {
    let path = write_config(name, &config("127.0.0.1:0".parse().unwrap(), "chat"));
    let out = tether()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env(key, value)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_prints_the_effective_config() {
    let stdout = check_with_env(
        "check",
        "TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT",
        "45s",
    );
    assert!(stdout.contains("[routing_rules.chat]"), "{stdout}");
    assert!(
        stdout.contains("request_timeout = \"45s\""),
        "env layer applied: {stdout}"
    );
}

#[test]
fn unknown_argument_exits_64() {
    let out = tether().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

fn http_status(addr: SocketAddr) -> Option<u16> {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Runs, serves, and exits 0 on SIGTERM.
#[test]
fn runs_and_exits_cleanly_on_sigterm() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let path = write_config("run", &config(port, "chat"));
    let mut child = tether()
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until Tether answers HTTP: the socket is bound before the runtime starts,
    // so a successful connect alone proves nothing. The pool's member refuses, hence 502.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = http_status(port) {
            assert_eq!(status, 502);
            break;
        }
        assert!(Instant::now() < deadline, "tether never answered");
        std::thread::yield_now();
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "tether did not exit after SIGTERM"
        );
        std::thread::yield_now();
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
}

/// `tether health` fails (exit 1) when nothing answers on the admin address; `--config-dir`
/// reads the directory's TOML files (the container image's bundled configuration).
#[test]
fn health_fails_without_an_admin_endpoint_and_config_dir_reads_the_image_config() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let path = write_config("health", &config("127.0.0.1:0".parse().unwrap(), "chat"));
    let out = tether()
        .arg("health")
        .arg("--config")
        .arg(&path)
        .env("TETHER_ADMIN__BIND", closed.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/docker");
    let out = tether()
        .args(["check", "--config-dir", dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:3000"));
}

/// `--version` names the commit, the build date, the compiler and rustls; `help`, `--help` and
/// `-h` print the same usage text, which lists the exit codes and the environment variables.
#[test]
fn version_and_help_tell_an_operator_what_runs_and_how() {
    let out = tether().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0], concat!("tether ", env!("CARGO_PKG_VERSION")));
    let commit = lines[1].strip_prefix("commit: ").expect("commit line");
    assert!(
        commit == "unknown" || commit.chars().take(12).all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    let date = lines[2].strip_prefix("built: ").expect("date line");
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
        "{date}"
    );
    assert!(lines[3].starts_with("compiler: rustc "), "{}", lines[3]);
    assert!(lines[4].starts_with("rustls: 0."), "{}", lines[4]);

    let help = |arg: &str| {
        let out = tether().arg(arg).output().unwrap();
        assert!(out.status.success(), "{arg}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = help("help");
    assert_eq!(text, help("--help"));
    assert_eq!(text, help("-h"));
    for needle in [
        "Exit codes:",
        "  64  ",
        "  71  ",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(text.contains(needle), "{needle} missing from help:\n{text}");
    }
}

/// Writes `body` as `tether.EXT` in a directory of its own.
fn write_file(name: &str, extension: &str, body: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("tether.{extension}"));
    std::fs::write(&path, body).unwrap();
    path
}

/// `tether check` and `tether` itself on a file that must be refused: exit 64 with the file's
/// name and `expected` on stderr, quickly, and nothing bound.
fn refused(path: &std::path::Path, expected: &str) {
    for check in [true, false] {
        let mut cmd = tether();
        if check {
            cmd.arg("check");
        }
        let started = Instant::now();
        let out = cmd.arg("--config").arg(path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "check={check}: {stderr}");
        assert!(stderr.contains(expected), "check={check}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

/// An empty file, one of only whitespace and comments, a YAML alias bomb and a file over the
/// size limit are refused by `tether check` and at start-up alike.
#[test]
fn empty_oversize_and_alias_bomb_files_exit_64() {
    refused(&write_file("empty", "toml", b""), "the file is empty");
    refused(
        &write_file("comments", "toml", b"# to be written\n\n"),
        "the file is empty",
    );
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let items = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    refused(&write_file("bomb", "yaml", bomb.as_bytes()), "alias");
    let huge = vec![b'#'; 4 * 1024 * 1024 + 1];
    refused(&write_file("huge", "toml", &huge), "4MiB limit");
}

/// The variables Kubernetes injects for a Service named `tether` (and `tether-admin`) neither
/// stop `tether check`, `tether health` or `tether` itself (exit 64 before) nor hide a real typo:
/// `check` names them in one warning, and `TETHER_WORKRS` beside them still exits 64.
#[test]
fn kubernetes_service_link_variables_do_not_stop_the_sidecar() {
    const LINKS: &[(&str, &str)] = &[
        ("TETHER_SERVICE_HOST", "10.96.0.17"),
        ("TETHER_SERVICE_PORT", "8080"),
        ("TETHER_SERVICE_PORT_HTTP", "8080"),
        ("TETHER_PORT", "tcp://10.96.0.17:8080"),
        ("TETHER_PORT_8080_TCP", "tcp://10.96.0.17:8080"),
        ("TETHER_PORT_8080_TCP_PROTO", "tcp"),
        ("TETHER_PORT_8080_TCP_PORT", "8080"),
        ("TETHER_PORT_8080_TCP_ADDR", "10.96.0.17"),
        ("TETHER_ADMIN_SERVICE_HOST", "10.96.0.18"),
        ("TETHER_ADMIN_PORT_9901_TCP_ADDR", "10.96.0.18"),
    ];
    let with_links = |args: &[&str], path: &std::path::Path| {
        let mut cmd = tether();
        cmd.args(args).arg("--config").arg(path);
        cmd.envs(LINKS.iter().copied());
        cmd
    };
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let path = write_config("service-links", &config(port, "chat"));

    let out = with_links(&["check"], &path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("TETHER_PORT_8080_TCP_ADDR") && stderr.contains("enableServiceLinks"),
        "{stderr}"
    );

    let out = with_links(&["check"], &path)
        .env("TETHER_WORKRS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(r#"unknown field "workrs""#), "{stderr}");

    // health reads the same layers: nothing answers on its admin address, so 1, not 64.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = with_links(&["health"], &path)
        .env("TETHER_ADMIN__BIND", closed.to_string())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And the sidecar runs and serves with them in its environment.
    let mut child = with_links(&[], &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        if let Some(status) = http_status(port) {
            break Some(status);
        }
        if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
            break None;
        }
        std::thread::yield_now();
    };
    let _ = child.kill();
    let exit = child.wait().unwrap();
    assert_eq!(served, Some(502), "tether did not serve; exit {exit:?}");
}

/// `tether check` prints the effective configuration with `admin.token` redacted, as the admin
/// `/config` does: the output lands in terminals, CI logs and the journal.
#[test]
fn check_redacts_the_admin_token() {
    let stdout = check_with_env("redact", "TETHER_ADMIN__TOKEN", "s3cret-admin-token");
    assert!(!stdout.contains("s3cret-admin-token"), "{stdout}");
    assert!(stdout.contains(tether_config::REDACTED), "{stdout}");
}

/// The plain HTTP-API example is a valid configuration, with its short request timeout and
/// its chosen access-log fields.
#[test]
fn the_http_api_example_passes_check() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/http-api/tether.toml"
    );
    let out = tether().args(["check", "--config", file]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(r#"request_timeout = "5s""#), "{printed}");
    assert!(
        printed.contains(r#"keepalive_interval = "2s500ms""#),
        "{printed}"
    );
}

/// The systemd unit validates before it reloads: `ExecReload` runs `tether check` on the
/// unit's config dir first and only then sends SIGHUP (systemd stops at the first failing
/// command). Run here as systemd would, against a valid and an invalid directory.
#[test]
fn the_systemd_unit_checks_the_config_before_sighup() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/systemd/tether.service"
    ))
    .unwrap();
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reload,
        [
            "/usr/local/bin/tether check --config-dir /etc/tether",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    let start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert_eq!(start, "/usr/local/bin/tether --config-dir /etc/tether");
    let check: Vec<&str> = reload[0].split(' ').skip(1).collect();
    let dir = write_config("systemd", &config("127.0.0.1:0".parse().unwrap(), "chat"));
    let dir = dir.parent().unwrap().to_path_buf();
    let run = |dir: &std::path::Path| {
        let args: Vec<String> = check
            .iter()
            .map(|a| match *a {
                "/etc/tether" => dir.display().to_string(),
                a => a.to_owned(),
            })
            .collect();
        tether().args(&args).output().unwrap().status.code()
    };
    assert_eq!(run(&dir), Some(0));
    std::fs::write(
        dir.join("tether.toml"),
        config("127.0.0.1:0".parse().unwrap(), "nope"),
    )
    .unwrap();
    assert_eq!(run(&dir), Some(64), "an invalid file fails the reload");
}
