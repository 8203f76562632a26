//! Connection limits: `max_connections` holds new connections in the accept queue (sessions
//! count too), and `max_handshakes_per_ip` answers 429 beyond the limit.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::{backends, config_toml, raw, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// The test configuration with `limits` on the public listener, and one worker.
///
/// One worker: with several, each accepts on its own thread, so which of the connections
/// the tests open in turn is the one over a limit depends on which thread admits first. The
/// limits hold either way; these tests name the connection that must wait or get the 429.
fn with_listener_limits(backend: std::net::SocketAddr, limits: &str) -> String {
    let config = config_toml(backend, "", "");
    assert!(
        config.starts_with("workers = 2\n"),
        "the template's worker count moved"
    );
    config
        .replacen("workers = 2\n", "workers = 1\n", 1)
        .replace(
            "[listeners.public]\nbind = \"127.0.0.1:0\"\n",
            &format!("[listeners.public]\nbind = \"127.0.0.1:0\"\n{limits}\n"),
        )
}

/// Asserts that nothing arrives on `stream` for a short while (a negative check, not a
/// synchronization: the positive outcome is awaited afterwards).
async fn quiet(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await;
    assert!(read.is_err(), "expected no answer yet, got {read:?}");
}

#[tokio::test]
async fn beyond_max_connections_new_connections_wait_in_the_accept_queue() {
    let backend = backends::http_backend().await;
    let sidecar = start(&with_listener_limits(backend.addr, "max_connections = 2"));
    let addr = sidecar.addr("public");
    let idle_1 = TcpStream::connect(addr).await.unwrap();
    let idle_2 = TcpStream::connect(addr).await.unwrap();
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(GET).await.unwrap();
    quiet(&mut waiting).await;
    // One idle connection goes away: the waiting one is accepted and served.
    drop(idle_1);
    let mut answer = Vec::new();
    within("served", waiting.read_to_end(&mut answer))
        .await
        .unwrap();
    assert_eq!(raw::parse(&answer).status, 200);
    drop(idle_2);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_websocket_session_counts_against_max_connections() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&with_listener_limits(backend.addr, "max_connections = 1"));
    let addr = sidecar.addr("public");
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .unwrap();
    ws.send(Message::text("up")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    // The session is registered (and counted) once the admin endpoint lists it.
    let admin = sidecar.admin_addr();
    let deadline = tokio::time::Instant::now() + tether_integration_tests::STEP_LIMIT;
    loop {
        let r = raw::send(
            admin,
            b"GET /sessions HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["live"].as_array().is_some_and(|l| l.len() == 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "session not listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(&raw::handshake("/ws", "")).await.unwrap();
    quiet(&mut waiting).await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    assert_eq!(
        within("101", raw::read_head(&mut waiting)).await.status,
        101
    );
    drop(waiting);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn beyond_max_handshakes_per_ip_a_client_gets_429() {
    let backend = backends::http_backend().await;
    let sidecar = start(&with_listener_limits(
        backend.addr,
        "max_handshakes_per_ip = 2",
    ));
    let addr = sidecar.addr("public");
    let _idle_1 = TcpStream::connect(addr).await.unwrap();
    let _idle_2 = TcpStream::connect(addr).await.unwrap();
    let refused = raw::send(addr, GET).await;
    assert_eq!(refused.status, 429);
    drop((_idle_1, _idle_2));
    // Once they are gone the address may connect again.
    let deadline = tokio::time::Instant::now() + tether_integration_tests::STEP_LIMIT;
    loop {
        if raw::send(addr, GET).await.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn max_connections_is_exact_across_an_upgrade() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&with_listener_limits(backend.addr, "max_connections = 2"));
    let addr = sidecar.addr("public");
    // A session: its connection's place moves into the session with the 101, so it is counted
    // at every moment, before the route table has heard of the session.
    let mut session = TcpStream::connect(addr).await.unwrap();
    session.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(
        within("101", raw::read_head(&mut session)).await.status,
        101
    );
    // At once, without waiting for the session to be listed: a plain connection takes the
    // second place, and a third waits in the accept queue.
    let plain = TcpStream::connect(addr).await.unwrap();
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(&raw::handshake("/ws", "")).await.unwrap();
    quiet(&mut waiting).await;
    // The session ends (its client is gone): its place goes to the waiting connection.
    drop(session);
    assert_eq!(
        within("101", raw::read_head(&mut waiting)).await.status,
        101
    );
    // Two places taken again (the plain connection and the new session): a fourth waits until
    // the plain connection ends.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth.write_all(&raw::handshake("/ws", "")).await.unwrap();
    quiet(&mut fourth).await;
    drop(plain);
    assert_eq!(within("101", raw::read_head(&mut fourth)).await.status, 101);
    drop((waiting, fourth));
    within("stop", sidecar.stop()).await.unwrap();
}
