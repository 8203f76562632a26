//! `fast_echo`: the benchmark's backend. A minimal, single-threaded WebSocket echo server
//! (hand-rolled framing, no per-frame allocation) that also answers any plain HTTP request with
//! a small `200 ok`, so one process serves every scenario of `bench/run.sh`.
//!
//! ```text
//! fast_echo [--listen ADDR]
//! ```
//!
//! `ADDR` defaults to `127.0.0.1:18180`. Once bound it prints `fast_echo listening on ADDR`.

use std::process::ExitCode;

use tokio::net::TcpListener;

const USAGE: &str = "\
usage: fast_echo [--listen ADDR]

A fast WebSocket echo backend for the benchmark: any path accepts an upgrade and
every message is echoed back; any other request gets `200 ok` (keep-alive).

options:
  --listen ADDR   address to bind (default 127.0.0.1:18180)
  -h, --help      print this help
";

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:18180".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--listen" => match args.next() {
                Some(addr) => listen = addr,
                None => {
                    eprintln!("fast_echo: --listen needs an address\n\n{USAGE}");
                    return ExitCode::from(64);
                }
            },
            other => {
                eprintln!("fast_echo: unexpected argument {other:?}\n\n{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    // One thread: the backend shares a core with the load generator.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fast_echo: cannot start the runtime: {error}");
            return ExitCode::from(70);
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(&listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("fast_echo: cannot bind {listen}: {error}");
                return ExitCode::from(71);
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("fast_echo listening on {addr}"),
            Err(error) => eprintln!("fast_echo: {error}"),
        }
        match tether_examples::load::server::serve(listener).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("fast_echo: accept failed: {error}");
                ExitCode::from(70)
            }
        }
    })
}
