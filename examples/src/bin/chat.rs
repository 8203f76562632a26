//! The chat example: the chat backend on 127.0.0.1:5000 and Tether configured by
//! `examples/chat/tether.toml` (listener 127.0.0.1:8080), in one process. Open
//! http://localhost:8080 in several tabs; the status page is on http://127.0.0.1:9901/.
//!
//! `--backend-only` runs just the chat backend (then start `tether --config
//! examples/chat/tether.toml` yourself). `TETHER_*` variables apply as usual.

use std::process::ExitCode;

use tokio::net::TcpListener;

const BACKEND: &str = "127.0.0.1:5000";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let backend_only = std::env::args().any(|a| a == "--backend-only");
    let backend = match TcpListener::bind(BACKEND).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chat: cannot bind the chat backend on {BACKEND}: {e}");
            return ExitCode::from(71);
        }
    };
    let server = tokio::spawn(tether_examples::chat::serve(backend));
    if backend_only {
        println!("chat backend on http://{BACKEND}");
        let _ = tokio::signal::ctrl_c().await;
        server.abort();
        return ExitCode::SUCCESS;
    }
    let sources = tether_config::Sources {
        files: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/chat/tether.toml").into()],
        env: std::env::vars().collect(),
    };
    let loaded = match tether_config::load(&sources) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("chat: invalid configuration:\n{errors}");
            return ExitCode::from(64);
        }
    };
    let sidecar = match tether::Sidecar::start(loaded.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::from(71);
        }
    };
    let addr = sidecar.addr("public");
    println!("chat backend on http://{BACKEND}, Tether on http://{addr}");
    println!(
        "open http://localhost:{}/ in several tabs; status page on http://{}/",
        addr.port(),
        sidecar.admin_addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    let outcome = sidecar.stop().await;
    server.abort();
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::from(70)
        }
    }
}
