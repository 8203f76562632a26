//! Real backends for the tests, each on its own 127.0.0.1 port, each recording what reached it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// What a backend saw of one request head.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers as received.
    pub headers: HeaderMap,
}

/// Shared record of a backend's traffic.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// The source IP address of each accepted connection, in order.
    pub peers: Arc<Mutex<Vec<IpAddr>>>,
    /// Request heads seen, in order.
    pub heads: Arc<Mutex<Vec<Seen>>>,
    /// Close frames received (code, reason), in order.
    pub closes: Arc<Mutex<Vec<(u16, String)>>>,
    /// Data messages received.
    pub messages: Arc<AtomicUsize>,
    /// Pongs received.
    pub pongs: Arc<AtomicUsize>,
    /// Woken whenever a close frame is recorded.
    pub changed: Arc<tokio::sync::Notify>,
}

impl Record {
    /// How many TCP connections reached the backend.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The source IP addresses of the connections accepted so far, in order.
    pub fn peer_ips(&self) -> Vec<IpAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// Counts an accepted connection from `peer`.
    pub fn accepted(&self, peer: SocketAddr) {
        self.peers.lock().unwrap().push(peer.ip());
        self.connections.fetch_add(1, Ordering::SeqCst);
    }

    /// The request heads seen so far.
    pub fn heads(&self) -> Vec<Seen> {
        self.heads.lock().unwrap().clone()
    }

    /// Waits until at least `n` close frames have arrived, and returns them.
    pub async fn wait_closes(&self, n: usize) -> Vec<(u16, String)> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let closes = self.closes.lock().unwrap();
                if closes.len() >= n {
                    return closes.clone();
                }
            }
            notified.await;
        }
    }

    fn push<B>(&self, req: &http::Request<B>) {
        self.heads.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        });
    }
}

/// A running backend; aborted when dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub record: Record,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// A tokio-tungstenite echo server: echoes text and binary messages, echoes the close frame,
/// picks `chat` or `superchat` (first offered) as subprotocol, and records close frames,
/// messages and pongs. Dropping it drops every connection, as a killed process would.
pub async fn ws_echo() -> Backend {
    let (listener, addr) = bind().await;
    let record = Record::default();
    let rec = record.clone();
    let task = tokio::spawn(async move {
        // Connections live in this set, so aborting the backend closes them all.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            rec.accepted(peer);
            connections.spawn(ws_echo_connection(stream, rec.clone()));
            while connections.try_join_next().is_some() {}
        }
    });
    Backend { addr, record, task }
}

async fn ws_echo_connection(stream: TcpStream, rec: Record) {
    // The callback's error type is tungstenite's (a full HTTP response), not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &WsRequest, mut resp: WsResponse| {
        rec.push(req);
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(pick) = offered
            .split(',')
            .map(str::trim)
            .find(|p| *p == "chat" || *p == "superchat")
        {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(pick).unwrap(),
            );
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    // tungstenite answers close (echoing the code) and pings by itself.
    while let Some(Ok(msg)) = ws.next().await {
        match &msg {
            Message::Close(frame) => {
                let (code, reason) = frame
                    .as_ref()
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                rec.closes.lock().unwrap().push((code, reason));
                rec.changed.notify_waiters();
            }
            Message::Pong(_) => {
                rec.pongs.fetch_add(1, Ordering::SeqCst);
            }
            Message::Text(_) | Message::Binary(_) => {
                rec.messages.fetch_add(1, Ordering::SeqCst);
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

async fn http_service(
    rec: Record,
    req: Request<Incoming>,
) -> Result<Response<HttpBody>, Infallible> {
    rec.push(&req);
    let resp = match (req.method().as_str(), req.uri().path()) {
        ("POST", "/echo") => {
            // Echo the body frame by frame as it arrives: proves streaming both ways.
            let mut body = req.into_body();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        if tx.send(Ok(Frame::data(data))).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Response::new(HttpBody::Stream(Box::pin(StreamBody::new(stream))))
        }
        _ => {
            let mut resp = Response::new(HttpBody::Full(Full::new(Bytes::from_static(
                b"hello from backend",
            ))));
            let h = resp.headers_mut();
            h.insert("connection", HeaderValue::from_static("x-resp-hop"));
            h.insert("x-resp-hop", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-backend", HeaderValue::from_static("yes"));
            resp
        }
    };
    Ok(resp)
}

/// The HTTP backend's response body.
pub enum HttpBody {
    /// A complete body.
    Full(Full<Bytes>),
    /// A streamed echo.
    Stream(std::pin::Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = Infallible> + Send>>),
}

impl hyper::body::Body for HttpBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            HttpBody::Full(b) => std::pin::Pin::new(b).poll_frame(cx),
            HttpBody::Stream(s) => s.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            HttpBody::Full(b) => b.is_end_stream(),
            HttpBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            HttpBody::Full(b) => b.size_hint(),
            HttpBody::Stream(s) => s.size_hint(),
        }
    }
}

/// A hyper HTTP/1.1 backend: `POST /echo` streams the body back; anything else answers
/// `hello from backend` with a few hop-by-hop headers that must not reach the client.
pub async fn http_backend() -> Backend {
    let (listener, addr) = bind().await;
    let record = Record::default();
    let rec = record.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            rec.accepted(peer);
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| http_service(rec.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, record, task }
}

/// A backend that accepts connections and never answers.
pub async fn silent_backend() -> Backend {
    let (listener, addr) = bind().await;
    let record = Record::default();
    let rec = record.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            rec.accepted(peer);
            held.push(stream);
        }
    });
    Backend { addr, record, task }
}

/// Greeting the raw backend writes in the same segment as its 101.
pub const RAW_GREETING: &[u8] = b"\x81\x05hello";

/// A hand-written WebSocket backend that works at the byte level: answers the handshake with a
/// 101 followed, in the same write, by [`RAW_GREETING`]; then echoes raw bytes until the client
/// half-closes, then writes `bye` and closes. Proves the proxy passes bytes unchanged, hands over
/// bytes read past the 101, and carries a half-close.
pub async fn raw_ws_backend() -> Backend {
    let (listener, addr) = bind().await;
    let record = Record::default();
    let rec = record.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            rec.accepted(peer);
            tokio::spawn(raw_ws_session(stream));
        }
    });
    Backend { addr, record, task }
}

async fn raw_ws_session(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    out.extend_from_slice(RAW_GREETING);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 65536];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.write_all(b"bye").await;
    let _ = stream.shutdown().await;
}
