//! A chat backend: every message a WebSocket client sends is broadcast to every connected
//! client (the sender included), prefixed with the sender's name (`guest-N`). Open several
//! browser tabs on the page and talk between them — through Tether.
//!
//! | Request                     | Response                                  |
//! |-----------------------------|-------------------------------------------|
//! | `GET /`, `GET /index.html`  | the chat page ([`CHAT_HTML`])             |
//! | `GET /health`               | `200 ok`                                  |
//! | WebSocket upgrade on `/ws`  | `101`, then the chat                      |
//! | anything else               | `404`                                     |
//!
//! Joins and leaves are announced as `* guest-N joined` / `* guest-N left`. A client that
//! falls more than [`BACKLOG`] messages behind misses the oldest ones (and is told so) rather
//! than slowing the room down.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

/// The chat page served at `/` and `/index.html`.
pub const CHAT_HTML: &str = include_str!("chat.html");

/// Messages a slow client may fall behind before it misses some.
pub const BACKLOG: usize = 256;

/// Serves the chat on `listener` until the returned future is dropped (which closes every
/// connection).
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    let (room, _) = broadcast::channel::<Arc<str>>(BACKLOG);
    let next = Arc::new(AtomicU64::new(1));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                debug!(%peer, "chat connection");
                connections.spawn(connection(stream, room.clone(), next.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What the request line asks for (peeked, so the WebSocket handshake can still read it).
async fn request_target(stream: &TcpStream) -> Option<String> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&buf[..end]).ok()?;
            return line.split(' ').nth(1).map(str::to_owned);
        }
        if n == buf.len() {
            return None;
        }
        stream.readable().await.ok()?;
    }
}

async fn respond(mut stream: TcpStream, status: &str, ctype: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn connection(stream: TcpStream, room: broadcast::Sender<Arc<str>>, next: Arc<AtomicU64>) {
    let Some(target) = request_target(&stream).await else {
        return;
    };
    match target.as_str() {
        "/ws" => {}
        "/" | "/index.html" => {
            return respond(stream, "200 OK", "text/html; charset=utf-8", CHAT_HTML).await
        }
        "/health" => return respond(stream, "200 OK", "text/plain", "ok\n").await,
        _ => return respond(stream, "404 Not Found", "text/plain", "not found\n").await,
    }
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let name = format!("guest-{}", next.fetch_add(1, Ordering::Relaxed));
    let (mut tx, mut rx) = ws.split();
    let mut inbox = room.subscribe();
    let _ = tx.send(Message::text(format!("* you are {name}"))).await;
    let _ = room.send(format!("* {name} joined").into());
    loop {
        tokio::select! {
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let _ = room.send(format!("{name}: {}", text.as_str()).into());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            outgoing = inbox.recv() => match outgoing {
                Ok(line) => {
                    if tx.send(Message::text(&*line)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx.send(Message::text(format!("* you missed {n} messages"))).await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = room.send(format!("* {name} left").into());
    let _ = tx.close().await;
}
