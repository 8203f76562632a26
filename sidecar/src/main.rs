//! The `tether` binary: parse arguments, load the configuration, start logging and the runtime,
//! and call [`tether::run`]. Exit codes follow sysexits: 64 for a bad command line or an invalid
//! configuration (nothing is bound then), 71 when a listener cannot be bound, 70 for a runtime
//! failure.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use tether::reloader::{expand, ConfigPath, ConfigWatcher, ReloadTrigger, CONFIG_POLL};
use tether::telemetry::{Telemetry, TelemetrySettings};
use tether_config::{Loaded, Sources};

/// sysexits `EX_USAGE`/`EX_CONFIG`-style code for a bad command line or configuration.
const EXIT_CONFIG: u8 = 64;
/// sysexits `EX_SOFTWARE`: the runtime failed.
const EXIT_RUNTIME: u8 = 70;
/// sysexits `EX_OSERR`: a listener could not be bound.
const EXIT_BIND: u8 = 71;

const USAGE: &str = "\
tether — a WebSocket-aware service-mesh sidecar

usage:
  tether [--config FILE]...         run (no --config: the embedded default, :8080 -> 127.0.0.1:3000)
                                    --config-dir DIR adds every DIR/*.toml, in name order
                                    (listed again at every reload)
  tether check [--config FILE]...   validate and print the effective configuration
  tether health [--config FILE]...  exit 0 when the admin endpoint's GET /healthz answers 200
                                    (for container HEALTHCHECKs; TETHER_ADMIN__BIND also works)
  tether help | --help | -h         this text
  tether --version | -V             version, commit, build date, compiler and rustls version

Signals: SIGTERM/SIGINT drain and exit (a second one exits at once); SIGHUP reloads every
layer (so does a change to a --config file once it has held still for a second).

Layers, lowest first: built-in defaults < each --config FILE in order (.toml, .yaml, .json)
< TETHER_* environment variables (TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT=60s).

Environment:
  TETHER_*                          configuration fields, as above
  RUST_LOG                          log filter, wins over telemetry.log_level (e.g. info,tether::access=off)
  OTEL_SDK_DISABLED                 true: no traces or OTLP metrics
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
  OTEL_EXPORTER_OTLP_PROTOCOL (grpc | http/protobuf), OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
  OTEL_METRIC_EXPORT_INTERVAL       the OpenTelemetry exporter; each wins over the file

Exit codes:
  0   clean shutdown (or: check passed, health answered 200)
  1   health: the admin endpoint did not answer 200
  64  bad command line or invalid configuration; nothing was bound
  70  runtime failure
  71  a listener or the admin endpoint could not be bound";

enum Command {
    Run(Vec<ConfigPath>),
    Check(Vec<ConfigPath>),
    Health(Vec<ConfigPath>),
    Help,
    Version,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut files = Vec::new();
    let mut check = false;
    let mut health = false;
    let mut first = true;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "check" if first => check = true,
            "health" if first => health = true,
            "help" if first => return Ok(Command::Help),
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" => match args.next() {
                Some(file) => files.push(ConfigPath::File(PathBuf::from(file))),
                None => return Err("--config needs a file".into()),
            },
            "--config-dir" => match args.next() {
                Some(dir) => files.push(ConfigPath::Dir(PathBuf::from(dir))),
                None => return Err("--config-dir needs a directory".into()),
            },
            other => match other.strip_prefix("--config=") {
                Some(file) => files.push(ConfigPath::File(PathBuf::from(file))),
                None => return Err(format!("unexpected argument {other:?}")),
            },
        }
        first = false;
    }
    Ok(if health {
        Command::Health(files)
    } else if check {
        Command::Check(files)
    } else {
        Command::Run(files)
    })
}

fn load(paths: &[ConfigPath]) -> Result<Loaded, ExitCode> {
    let files = expand(paths).map_err(|e| {
        eprintln!("tether: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let sources = Sources {
        files,
        env: std::env::vars().collect(),
    };
    tether_config::load(&sources).map_err(|errors| {
        eprintln!(
            "tether: invalid configuration ({} problems):",
            errors.0.len()
        );
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Installs the SIGINT/SIGTERM handlers now (before anything is served) and returns a future
/// that resolves on the first signal; a second signal exits at once.
fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            eprintln!("tether: second signal, exiting now");
            std::process::exit(i32::from(EXIT_RUNTIME));
        });
    })
}

/// Installs the SIGHUP handler now and returns the task that fires `trigger` on every SIGHUP.
fn hangups(trigger: ReloadTrigger) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            trigger.fire();
        }
    })
}

/// `tether check`: validates the configuration the layers describe and prints it as the
/// sidecar would run it (warnings and the verdict on stderr).
fn check(files: Vec<ConfigPath>) -> ExitCode {
    match load(&files) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            // Secrets are redacted, as in the admin `/config`: the output lands in terminals,
            // CI logs and the journal (ExecReload in the systemd example).
            print!("{}", loaded.config.redacted().to_toml_string());
            eprintln!("tether: configuration is valid");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `tether health`: `GET /healthz` on the admin endpoint of the configuration the other
/// layers describe (an unspecified bind address is asked on loopback). Exit 0 on `200`, 1
/// otherwise — what a container `HEALTHCHECK` needs, without curl in the image.
fn health(files: Vec<ConfigPath>) -> ExitCode {
    use std::io::{Read, Write};
    let loaded = match load(&files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut addr = loaded.config.admin.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: tether\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {
            println!("tether at {addr}: healthy");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!(
                "tether at {addr}: unhealthy: {}",
                r.lines().next().unwrap_or("no answer")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tether at {addr}: unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let files = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", tether::build_info::version_text());
            return ExitCode::SUCCESS;
        }
        Command::Check(files) => return check(files),
        Command::Health(files) => return health(files),
        Command::Run(files) => files,
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    // Before loading: the files' stamps are taken now, so a change during start-up is seen.
    let watcher = match ConfigWatcher::over(files.clone(), env.clone(), CONFIG_POLL) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("tether: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let loaded = match load(&files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let settings = match TelemetrySettings::resolve(&loaded.config.telemetry, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether: invalid telemetry setting: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Loaded {
        config,
        used_embedded_default,
        warnings,
    } = loaded;
    let listeners = match tether::bind_listeners(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tether: {e}");
            return ExitCode::from(EXIT_BIND);
        }
    };
    let outcome = tether::system().block_on(async move {
        let telemetry = Telemetry::start(&settings, true)?;
        let _ = tracing::dispatcher::set_global_default(telemetry.dispatch.clone());
        if used_embedded_default {
            tracing::info!(
                "no --config given: running the embedded default (listener \"public\" on 0.0.0.0:8080 -> pool \"default\" at 127.0.0.1:3000); `tether check` prints it"
            );
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        match &settings.endpoint {
            Some(endpoint) => tracing::info!(%endpoint, protocol = ?settings.protocol, "exporting traces over OTLP"),
            None => tracing::info!("tracing export off (set telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"),
        }
        let stop = termination().map_err(tether::RunError::Signals)?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let hangups = hangups(watcher.trigger()).map_err(tether::RunError::Signals)?;
        let hangups = tokio::spawn(hangups);
        let watcher = tokio::spawn(watcher.run(reload_tx));
        let outcome = tether::run_reloadable(config, listeners, Some(Arc::new(telemetry)), Some(reload_rx), stop).await;
        watcher.abort();
        hangups.abort();
        outcome
    });
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
