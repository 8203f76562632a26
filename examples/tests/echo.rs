//! End-to-end tests for the echo backend: real sockets, real clients.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A running backend; aborts it when dropped.
struct Backend {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(tether_examples::echo::serve(listener));
    Backend { addr, task }
}

/// Fails the test instead of hanging forever.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("test step timed out")
}

/// Sends one request on a fresh HTTP/1.1 connection and collects the response.
async fn request<B>(addr: SocketAddr, req: Request<B>) -> (StatusCode, HeaderMap, Bytes)
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn serves_page_health_and_404() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        for path in ["/", "/index.html"] {
            let (status, headers, body) = request(addr, get(addr, path)).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
            let page = std::str::from_utf8(&body).unwrap();
            for id in [
                "connectionUrl",
                "connectButton",
                "sendMessage",
                "sendButton",
                "closeButton",
                "stateLabel",
                "commsLog",
            ] {
                assert!(page.contains(&format!("id=\"{id}\"")), "page lacks #{id}");
            }
            assert_eq!(page, tether_examples::echo::PAGE_HTML);
        }

        let (status, _, body) = request(addr, get(addr, "/health")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

        let (status, _, body) = request(addr, get(addr, "/nope")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::NOT_FOUND, &b"not found"[..])
        );

        let post_health = Request::post("/health")
            .header(HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (status, headers, _) = request(addr, post_health).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "GET, HEAD");
    })
    .await;
}

#[tokio::test]
async fn post_echo_returns_the_body() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        let req = Request::post("/echo")
            .header(HOST, addr.to_string())
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"hello, echo")))
            .unwrap();
        let (status, headers, body) = request(addr, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
        assert_eq!(&body[..], b"hello, echo");
    })
    .await;
}

#[tokio::test]
async fn post_echo_streams_chunk_by_chunk() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        // Each chunk must come back before the next one is even produced,
        // which proves the backend does not buffer the whole body.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
        });
        let req = Request::post("/echo")
            .header(HOST, addr.to_string())
            .body(StreamBody::new(Box::pin(chunks)))
            .unwrap();

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);

        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::new();
        for chunk in ["first", "second", "third"] {
            if chunk != "first" {
                tx.send(Bytes::from(chunk)).await.unwrap();
            }
            while received.len() < chunk.len() {
                let frame = body.frame().await.expect("body ended early").unwrap();
                received.extend_from_slice(&frame.into_data().unwrap());
            }
            assert_eq!(received, chunk.as_bytes());
            received.clear();
        }
        drop(tx);
        assert!(body.frame().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn websocket_echoes_messages_and_close() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, superchat"),
        );
        let (mut ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[SEC_WEBSOCKET_PROTOCOL], "chat");

        ws.send(Message::text("hello ✓")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello ✓"));

        let binary = Bytes::from_static(&[0, 1, 2, 254, 255]);
        ws.send(Message::Binary(binary.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(binary));

        // A larger message, sent before reading, in several frames' worth.
        let big = "x".repeat(256 * 1024);
        ws.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(big));

        ws.close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "bye");
            }
            other => panic!("expected the close frame echoed back, got {other:?}"),
        }
        assert!(
            ws.next().await.is_none(),
            "stream should end after the close handshake"
        );
    })
    .await;
}

#[tokio::test]
async fn websocket_subprotocol_negotiation() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        for (offer, expected) in [
            (None, None),
            (Some("superchat"), Some("superchat")),
            (Some("mqtt, superchat, chat"), Some("superchat")),
        ] {
            // Any path accepts an upgrade, not just /ws.
            let mut req = format!("ws://{addr}/anywhere")
                .into_client_request()
                .unwrap();
            if let Some(offer) = offer {
                req.headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(offer));
            }
            let (mut ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
            let selected = response
                .headers()
                .get(SEC_WEBSOCKET_PROTOCOL)
                .map(|v| v.to_str().unwrap());
            assert_eq!(selected, expected, "offer {offer:?}");
            ws.send(Message::text("ping")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
            ws.close(None).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn bad_websocket_handshakes_are_rejected() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        let upgrade = |version: Option<&str>, key: Option<&str>| {
            let mut req = Request::get("/ws")
                .header(HOST, addr.to_string())
                .header("connection", "Upgrade")
                .header("upgrade", "websocket");
            if let Some(version) = version {
                req = req.header("sec-websocket-version", version);
            }
            if let Some(key) = key {
                req = req.header("sec-websocket-key", key);
            }
            req.body(Empty::<Bytes>::new()).unwrap()
        };
        const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

        let (status, headers, _) = request(addr, upgrade(Some("12"), Some(KEY))).await;
        assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(headers["sec-websocket-version"], "13");

        let (status, _, _) = request(addr, upgrade(Some("13"), None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _, _) = request(addr, upgrade(Some("13"), Some("short"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let post = Request::builder()
            .method(Method::POST)
            .uri("/ws")
            .header(HOST, addr.to_string())
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (status, _, _) = request(addr, post).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    })
    .await;
}

#[tokio::test]
async fn a_broken_connection_does_not_affect_others() {
    let backend = start().await;
    let addr = backend.addr;
    within(async {
        // An open WebSocket session stays usable while another client sends garbage.
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();

        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage
            .write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        garbage.read_to_end(&mut reply).await.unwrap();
        assert!(
            reply.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );

        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );

        let (status, _, _) = request(addr, get(addr, "/health")).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
}
