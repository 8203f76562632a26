//! Admin load cannot starve the data path: the real binary under a low descriptor limit
//! (`ulimit -n`), 300 slowloris connections on its admin port, and the data listener still
//! answers; the slow admin connections are cut.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{clean_env, free_port, spawn_reading_stderr, within, write_app_config, STEP};

/// The descriptor limit the sidecar runs under: its own needs (runtimes, listeners, a few
/// dozen) plus the admin cap leave room for data connections, but 300 admin connections do not
/// fit.
const NOFILE: u32 = 256;

/// Slowloris connections opened on the admin port.
const SLOW: usize = 300;

/// A backend answering every request `200 ok` and closing.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

/// Sends `request` and reads the whole answer (the server closes), or `None` if the
/// connection fails.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

struct Sidecar {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(stderr) = self.stderr.take().and_then(|t| t.join().ok()) {
                eprintln!("tether's stderr:\n{stderr}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_slowloris_under_a_low_descriptor_limit_does_not_starve_the_data_path() {
    let backend = backend().await;
    let listen = free_port();
    let admin = free_port();
    let path = write_app_config(
        "admin-limits",
        "shutdown_grace = \"1s\"",
        &admin.to_string(),
        listen,
        backend,
    );
    // `ulimit -n` in a shell that then becomes tether: no unsafe pre-exec hook needed.
    let mut cmd = Command::new("sh");
    clean_env(&mut cmd)
        .arg("-c")
        .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_tether"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn");
    let (child, stderr) = spawn_reading_stderr(&mut cmd);
    let _sidecar = Sidecar {
        child,
        stderr: Some(stderr),
    };

    // Serving once a request through the data listener is answered (bound sockets accept
    // before the runtime starts, so a bare connect proves nothing).
    let get = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(answer) = exchange(listen, get).await {
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "tether never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Slowloris: each sends half a head and waits. A connect the kernel does not complete
    // quickly (a full accept queue) is skipped.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(admin)).await
        else {
            continue;
        };
        if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a")
            .await
            .is_ok()
        {
            slow.push(s);
        }
    }
    // One more admin connection ending (answered, or closed over the cap) proves the endpoint
    // has accepted every earlier one (it accepts in order) before the data path is checked.
    let _ = within("an admin request", exchange(admin, get)).await;

    // The data listener still answers, several times.
    for i in 0..5 {
        let answer = within("data request under admin load", exchange(listen, get))
            .await
            .unwrap_or_default();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "data request {i} under admin load got {answer:?}"
        );
    }

    // And every slow admin connection ends: over the cap at once, the rest at the head timeout.
    for mut s in slow {
        let mut sink = Vec::new();
        let _ = within("slow admin connection cut", s.read_to_end(&mut sink)).await;
    }
}
