//! The chat example through Tether, configured by its annotated `examples/chat/tether.toml`:
//! the page is served, and a message from one client reaches every client.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const STEP: std::time::Duration = std::time::Duration::from_secs(15);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?}"))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match within("message", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until a message equal to `want` arrives.
async fn until(ws: &mut Ws, want: &str) {
    while next_text(ws).await != want {}
}

#[tokio::test]
async fn messages_are_broadcast_to_every_client_through_tether() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let server = tokio::spawn(tether_examples::chat::serve(backend));
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/chat/tether.toml"))
        .unwrap()
        .replace("127.0.0.1:5000", &backend_addr.to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let config = tether_config::from_toml_str(&toml).expect("the annotated config is valid");
    let sidecar = tether::Sidecar::start(config).unwrap();
    let addr = sidecar.addr("public");

    // The page, through the sidecar (once the probe has put the backend in rotation).
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut page = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut page)
            .await
            .unwrap();
        if page.starts_with("HTTP/1.1 200") {
            assert!(page.contains("Tether chat"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let url = format!("ws://{addr}/ws");
    let (mut a, _) = within("connect a", tokio_tungstenite::connect_async(&url))
        .await
        .unwrap();
    let me_a = next_text(&mut a).await;
    let (mut b, _) = within("connect b", tokio_tungstenite::connect_async(&url))
        .await
        .unwrap();
    let me_b = next_text(&mut b).await;
    let name_a = me_a.trim_start_matches("* you are ").to_owned();
    let name_b = me_b.trim_start_matches("* you are ").to_owned();
    until(&mut a, &format!("* {name_b} joined")).await;
    a.send(Message::text("hello, room")).await.unwrap();
    let line = format!("{name_a}: hello, room");
    until(&mut a, &line).await;
    until(&mut b, &line).await;
    b.close(None).await.unwrap();
    until(&mut a, &format!("* {name_b} left")).await;
    // Shutdown closes the remaining tab with 1012, as configured.
    let stopping = tokio::spawn(sidecar.stop());
    let close = loop {
        match within("close", a.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1012);
    drop(a);
    within("stop", stopping).await.unwrap().unwrap();
    server.abort();
}
