//! `echo-backend`: serves the Tether echo page, `/health`, `POST /echo` and a
//! WebSocket echo endpoint (`/ws`).
//!
//! ```text
//! echo-backend [--listen ADDR]
//! ```
//!
//! `ADDR` defaults to `127.0.0.1:3000`; port `0` picks a free port. Once bound,
//! the backend prints `echo backend listening on http://ADDR` (with the actual
//! address) on stdout. Logs go to stderr, filtered by `RUST_LOG` (default
//! `info`).

use std::io::IsTerminal;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

const USAGE: &str = "\
usage: echo-backend [--listen ADDR]

Serves the WebSocket echo page at /, /health, POST /echo and a WebSocket
echo endpoint at /ws (any path accepts an upgrade).

options:
  --listen ADDR   address to bind (default 127.0.0.1:3000)
  -h, --help      print this help
";

/// Parses the command line; `Ok(None)` means help was requested.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| "--listen needs an address".to_owned())?;
            }
            other => match other.strip_prefix("--listen=") {
                Some(value) => listen = value.to_owned(),
                None => return Err(format!("unexpected argument `{other}`")),
            },
        }
    }
    if listen.is_empty() {
        return Err("--listen needs an address".to_owned());
    }
    Ok(Some(listen))
}

#[tokio::main]
async fn main() -> ExitCode {
    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(Some(listen)) => listen,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("echo-backend: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let listener = match TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("echo-backend: cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("echo-backend: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("echo backend listening on http://{addr}");
    tracing::info!(%addr, "echo backend started");

    tokio::select! {
        result = tether_examples::echo::serve(listener) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("echo-backend: {error}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; shutting down");
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<String>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_listen_forms() {
        assert_eq!(parse(&[]), Ok(Some(DEFAULT_LISTEN.to_owned())));
        assert_eq!(
            parse(&["--listen", "0.0.0.0:80"]),
            Ok(Some("0.0.0.0:80".to_owned()))
        );
        assert_eq!(parse(&["--listen=[::1]:0"]), Ok(Some("[::1]:0".to_owned())));
        assert_eq!(parse(&["--help"]), Ok(None));
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen="]).is_err());
        assert!(parse(&["--port", "1"]).is_err());
    }
}
