//! Drain on deploy, as the real binary does it: SIGTERM with 200 live WebSocket sessions.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{clean_env, free_port, spawn_reading_stderr, within, write_app_config, STEP};

/// A tungstenite echo backend; counts the close frames it receives by code.
async fn echo_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<u16>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Close(frame) => {
                            let _ = tx.send(frame.map_or(1005, |f| u16::from(f.code)));
                            break; // tungstenite answers the close itself
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            let sent = ws.send(msg).await;
                            if sent.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let _ = ws.close(None).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_200_sessions_with_1001_and_exits_0_within_the_grace() {
    let (backend, mut backend_closes) = echo_backend().await;
    let listen = free_port();
    let path = write_app_config(
        "drain",
        "shutdown_grace = \"10s\"",
        "127.0.0.1:0",
        listen,
        backend,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    clean_env(&mut cmd).arg("--config").arg(&path);
    // Drain stderr as it comes: 200 access-log lines would fill the pipe and block the child.
    let (mut child, stderr) = spawn_reading_stderr(&mut cmd);

    // The first upgrade that succeeds proves the sidecar serves (the socket is bound before
    // the runtime starts, so a bare connect proves nothing).
    let url = format!("ws://{listen}/ws");
    let deadline = Instant::now() + STEP;
    let first = loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            break ws;
        }
        assert!(Instant::now() < deadline, "tether never upgraded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut clients = vec![first];
    for _ in 1..200 {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(&url))
            .await
            .expect("upgrade");
        clients.push(ws);
    }
    for ws in clients.iter_mut() {
        ws.send(Message::text("up")).await.unwrap();
        assert!(matches!(
            within("echo", ws.next()).await,
            Some(Ok(Message::Text(_)))
        ));
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                            return (u16::from(code), reason.to_string())
                        }
                        Some(Ok(_)) => continue,
                        other => panic!("expected a close frame, got {other:?}"),
                    }
                }
            })
        })
        .collect();

    let sent = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    for reader in readers {
        assert_eq!(
            within("client close", reader).await.unwrap(),
            (1001, "going away".to_string())
        );
    }
    let deadline = Instant::now() + STEP;
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tether did not exit within {STEP:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = sent.elapsed();
    let stderr = stderr.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    assert!(!stderr.contains("grace period over"), "{stderr}");
    for _ in 0..200 {
        let code = within("backend close", backend_closes.recv())
            .await
            .unwrap();
        assert_eq!(code, 1001);
    }
}
