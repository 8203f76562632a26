//! The newcomer's demo: the echo backend on 127.0.0.1:3000 and Tether with its embedded default
//! configuration (listener 0.0.0.0:8080 → pool 127.0.0.1:3000), in one process. Open
//! http://localhost:8080 and the echo page talks to the backend through the sidecar.
//!
//! `TETHER_*` variables apply as usual (e.g. `TETHER_LISTENERS__PUBLIC__BIND=127.0.0.1:9090`), and
//! so do the `OTEL_*` ones (`examples/otel/run.sh` sends the traces to a real collector).

use std::process::ExitCode;

use tokio::net::TcpListener;

const BACKEND: &str = "127.0.0.1:3000";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let backend = match TcpListener::bind(BACKEND).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot bind the echo backend on {BACKEND}: {e}");
            return ExitCode::from(71);
        }
    };
    tokio::spawn(tether_examples::echo::serve(backend));

    let env: Vec<(String, String)> = std::env::vars().collect();
    let sources = tether_config::Sources {
        files: Vec::new(),
        env: env.clone(),
    };
    let loaded = match tether_config::load(&sources) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("demo: invalid configuration:\n{errors}");
            return ExitCode::from(64);
        }
    };
    // OTEL_EXPORTER_OTLP_ENDPOINT and friends apply (see examples/otel/).
    let sidecar = match tether::Sidecar::start_traced(loaded.config, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(71);
        }
    };
    let addr = sidecar.addr("public");
    println!("echo backend on http://{BACKEND}, Tether on http://{addr}");
    println!(
        "open http://localhost:{}/ — the page's WebSocket goes through Tether; Ctrl-C stops",
        addr.port()
    );
    let _ = tokio::signal::ctrl_c().await;
    match sidecar.stop().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(70)
        }
    }
}
