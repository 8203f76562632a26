//! WebSocket proxying end to end: real clients (tokio-tungstenite, fastwebsockets, raw sockets)
//! through the in-process sidecar to real backends.

use std::future::Future;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use tether_integration_tests::{backends, config_toml, raw, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn text_binary_empty_and_large_messages_echo_through() {
    tether_integration_tests::init_logs();
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let url = format!("ws://{}/ws", sidecar.addr("public"));
    let (mut ws, resp) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("upgrade through the sidecar");
    assert_eq!(resp.status(), 101);

    let large: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let messages = vec![
        Message::text("hello"),
        Message::binary((0..=255u8).collect::<Vec<_>>()),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::binary(large),
    ];
    for msg in messages {
        within("send", ws.send(msg.clone())).await.unwrap();
        let echoed = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, msg);
    }
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("drain", ws.next()).await {}
    assert_eq!(backend.record.connections(), 1);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn subprotocol_is_negotiated_end_to_end_and_headers_pass_through() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let mut req = format!("ws://{}/chat", sidecar.addr("public"))
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    h.insert("origin", "https://app.example.com".parse().unwrap());
    h.insert("x-custom", "kept".parse().unwrap());
    let (mut ws, resp) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");

    let seen = &backend.record.heads()[0];
    assert_eq!(seen.uri, "/chat");
    assert_eq!(seen.headers["sec-websocket-protocol"], "chat, superchat");
    assert_eq!(seen.headers["origin"], "https://app.example.com");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers.contains_key("sec-websocket-key"));
    within("close", ws.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn close_code_and_reason_round_trip() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let url = format!("ws://{}/ws", sidecar.addr("public"));
    let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    within(
        "send close",
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        }))),
    )
    .await
    .unwrap();
    let reply = within("close reply", ws.next()).await.unwrap().unwrap();
    match reply {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the backend's close frame, got {other:?}"),
    }
    assert!(within("end", ws.next()).await.is_none());
    within("stop", sidecar.stop()).await.unwrap();
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// A second, independent WebSocket implementation as the client: fastwebsockets sends a
/// fragmented text message with a ping between its fragments; the backend reassembles it and
/// echoes it whole, and the ping is answered.
#[tokio::test]
async fn fastwebsockets_client_fragmented_message_with_ping_between_fragments() {
    use fastwebsockets::{Frame, OpCode, Payload};
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let addr = sidecar.addr("public");
    let stream = TcpStream::connect(addr).await.unwrap();
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("http://{addr}/ws"))
        .header("host", addr.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header(
            "sec-websocket-key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let executor = SpawnExecutor;
    let (ws, resp) = within(
        "fastwebsockets handshake",
        fastwebsockets::handshake::client(&executor, req, stream),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    let frames = [
        Frame::new(false, OpCode::Text, None, Payload::Borrowed(b"frag-one ")),
        Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"between")),
        Frame::new(
            false,
            OpCode::Continuation,
            None,
            Payload::Borrowed(b"frag-two "),
        ),
        Frame::new(
            true,
            OpCode::Continuation,
            None,
            Payload::Borrowed(b"frag-three"),
        ),
    ];
    for frame in frames {
        within("write frame", ws.write_frame(frame)).await.unwrap();
    }
    let mut got_pong = false;
    loop {
        let frame = within("read frame", ws.read_frame()).await.unwrap();
        match frame.opcode {
            OpCode::Pong => {
                assert_eq!(&frame.payload[..], b"between");
                got_pong = true;
            }
            OpCode::Text => {
                assert_eq!(&frame.payload[..], b"frag-one frag-two frag-three");
                break;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(got_pong, "the ping between fragments was answered");
    within("close", ws.write_frame(Frame::close(1000, b"done")))
        .await
        .unwrap();
    let close = within("close reply", ws.read_frame()).await.unwrap();
    assert_eq!(close.opcode, OpCode::Close);
    assert_eq!(&close.payload[..2], &1000u16.to_be_bytes());
    within("stop", sidecar.stop()).await.unwrap();
}

/// After the 101 bytes pass unchanged both ways: the greeting the backend wrote in the same
/// segment as its 101 arrives, arbitrary bytes echo back exactly, and a half-close from the
/// client reaches the backend, whose last words still arrive.
#[tokio::test]
async fn bytes_after_101_pass_unchanged_and_half_close_propagates_opaque() {
    bytes_after_101(r#"inspect = "opaque""#).await;
}

/// The same in frames mode: the bytes are not WebSocket frames, yet nothing is altered, and the
/// client's FIN (a loss, in WebSocket terms) still reaches the backend.
#[tokio::test]
async fn bytes_after_101_pass_unchanged_and_half_close_propagates_frames() {
    bytes_after_101(r#"inspect = "frames""#).await;
}

async fn bytes_after_101(mode: &str) {
    let backend = backends::raw_ws_backend().await;
    let sidecar = start(&config_toml(backend.addr, "", mode));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream.write_all(&raw::handshake("/raw", "")).await.unwrap();
    let head = within("101", raw::read_head(&mut stream)).await;
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let mut greeting = vec![0u8; backends::RAW_GREETING.len()];
    within("greeting", stream.read_exact(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, backends::RAW_GREETING);

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap(); // half-close
        wr
    };
    let reader = async {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let (_wr, got) = within("echo and half-close", async {
        tokio::join!(writer, reader)
    })
    .await;
    assert_eq!(got.len(), payload.len() + 3);
    assert_eq!(&got[..payload.len()], &payload[..]);
    assert_eq!(&got[payload.len()..], b"bye");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn malformed_handshakes_get_4xx_and_never_reach_the_backend() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let addr = sidecar.addr("public");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "missing Sec-WebSocket-Key",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
            400,
            "16 bytes",
        ),
        (
            b"POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n".to_vec(),
            400,
            "GET",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
            400,
            "upgrade",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n".to_vec(),
            426,
            "version 13",
        ),
        // A body (which the worker leaves to hyper's framing rules) is refused too.
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            400,
            "body",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            400,
            "body",
        ),
    ];
    for (request, status, reason) in cases {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let resp = within("refusal", raw::read_head(&mut stream)).await;
        assert_eq!(
            resp.status,
            status,
            "for {:?}",
            String::from_utf8_lossy(&request)
        );
        let len: usize = resp.header("content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains(reason), "{body:?} should mention {reason:?}");
        if status == 426 {
            assert_eq!(resp.header("sec-websocket-version"), Some("13"));
        }
    }
    assert_eq!(
        backend.record.connections(),
        0,
        "no bad handshake reached the backend"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn disallowed_origin_is_403_and_never_reaches_the_backend() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        r#"allowed_origins = ["https://good.example.com"]"#,
    ));
    let addr = sidecar.addr("public");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&raw::handshake(
            "/ws",
            "Origin: https://evil.example.com\r\n",
        ))
        .await
        .unwrap();
    let resp = within("403", raw::read_head(&mut stream)).await;
    assert_eq!(resp.status, 403);
    assert_eq!(backend.record.connections(), 0);

    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://good.example.com".parse().unwrap());
    let (mut ws, _) = within("allowed origin", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    within("close", ws.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// A refused handshake (the worker answers the first request of a connection itself) leaves
/// the connection open for the next request, served as usual, until one says
/// `Connection: close`.
#[tokio::test]
async fn a_refused_handshake_leaves_the_connection_open_until_close_is_asked() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        r#"allowed_origins = ["https://good.example.com"]"#,
    ));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    let evil = "Origin: https://evil.example.com\r\n";
    for extra in [evil.to_owned(), format!("{evil}Connection: close\r\n")] {
        // `raw::handshake` already says `Connection: Upgrade`; a second field adds `close`.
        stream
            .write_all(&raw::handshake("/ws", &extra))
            .await
            .unwrap();
        let resp = within("403", raw::read_head(&mut stream)).await;
        assert_eq!(resp.status, 403);
        let len: usize = resp.header("content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; len];
        within("body", stream.read_exact(&mut body)).await.unwrap();
    }
    // The second answer said close, and the connection ends.
    let mut rest = Vec::new();
    within("close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "nothing after the last answer: {rest:?}");
    assert_eq!(backend.record.connections(), 0);
    within("stop", sidecar.stop()).await.unwrap();
}

/// A frame written in the same segment as the handshake (before the `101` could arrive) is
/// not lost: it reaches the backend once the session starts, and its echo comes back.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_reaches_the_backend() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    let mut bytes = raw::handshake("/ws", "");
    bytes.extend_from_slice(&raw::client_frame(0x1, b"early bird"));
    stream.write_all(&bytes).await.unwrap();
    let head = within("101", raw::read_head(&mut stream)).await;
    assert_eq!(head.status, 101);
    let (first, payload) = within("echo", raw::read_frame(&mut stream)).await;
    assert_eq!((first, payload.as_slice()), (0x81, &b"early bird"[..]));
    // Leaving ends the session at once (no close handshake to wait for at stop).
    drop(stream);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn backend_down_gives_502_for_upgrades() {
    let dead = tether_integration_tests::closed_port();
    let sidecar = start(&config_toml(dead, "", ""));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
    let resp = within("502", raw::read_head(&mut stream)).await;
    assert_eq!(resp.status, 502);
    within("stop", sidecar.stop()).await.unwrap();
}

/// A backend that refuses the upgrade is relayed as it answered: status, end-to-end headers and
/// body (decoded from chunked or read to the close, re-framed with Content-Length), hop-by-hop
/// headers removed. An answer that is not HTTP becomes 502.
#[tokio::test]
async fn refused_upgrades_are_relayed_with_their_body() {
    let cases: Vec<(&'static [u8], u16, &'static [u8])> = vec![
        (
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n6;ext=1\r\nlog in\r\n7\r\n, first\r\n0\r\nX-Trailer: t\r\n\r\n",
            401,
            b"log in, first",
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\nX-Reason: closed\r\n\r\ngo away",
            403,
            b"go away",
        ),
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
            404,
            b"nope",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 502, b"WebSocket handshake"),
    ];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let answers: Vec<&'static [u8]> = cases.iter().map(|c| c.0).collect();
    let backend = tokio::spawn(async move {
        for answer in answers {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            conn.write_all(answer).await.unwrap();
            conn.shutdown().await.unwrap();
        }
    });
    let sidecar = start(&config_toml(backend_addr, "", ""));
    for (answer, status, body) in cases {
        let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
        stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
        let resp = within("refusal", raw::read_head(&mut stream)).await;
        let what = String::from_utf8_lossy(answer);
        assert_eq!(resp.status, status, "for {what:?}");
        assert_eq!(resp.header("transfer-encoding"), None, "for {what:?}");
        assert_eq!(resp.header("keep-alive"), None, "for {what:?}");
        let len: usize = resp.header("content-length").unwrap().parse().unwrap();
        let mut got = vec![0u8; len];
        within("body", stream.read_exact(&mut got)).await.unwrap();
        if status == 502 {
            let text = String::from_utf8_lossy(&got);
            let reason = String::from_utf8_lossy(body);
            assert!(
                text.contains(&*reason),
                "{text:?} should mention {reason:?}"
            );
            continue;
        }
        assert_eq!(got, body, "for {what:?}");
        match status {
            401 => assert_eq!(resp.header("www-authenticate"), Some("Bearer")),
            403 => assert_eq!(resp.header("x-reason"), Some("closed")),
            _ => {}
        }
    }
    within("backend", backend).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// Many sessions at once on two workers, each echoing its own bytes: one session never sees
/// another's traffic.
#[tokio::test]
async fn concurrent_sessions_stay_separate() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let url = format!("ws://{}/ws", sidecar.addr("public"));
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            for j in 0..20u32 {
                let text = format!("session {i} message {j}");
                ws.send(Message::text(text.clone())).await.unwrap();
                let echoed = ws.next().await.unwrap().unwrap();
                assert_eq!(echoed, Message::text(text));
            }
            ws.close(None).await.unwrap();
        }));
    }
    for t in tasks {
        within("session", t).await.unwrap();
    }
    within("stop", sidecar.stop()).await.unwrap();
}
