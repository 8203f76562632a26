//! Sessions that end on purpose: idle timeout, keep-alive, unresponsive clients, lost backends,
//! oversize messages, drain — each observed at the real peers as the close frame they receive.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::{backends, config_toml, raw, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> Client {
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/ws"),
            Some(config),
            false,
        ),
    )
    .await
    .expect("upgrade");
    ws
}

/// Reads until a close frame arrives (answering pings on the way), returning its code and reason.
async fn next_close(ws: &mut Client) -> (u16, String) {
    loop {
        match within("close frame", ws.next()).await {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn idle_timeout_sends_1001_to_both_sides() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        r#"request_timeout = "300ms""#,
        r#"keepalive_interval = "0s""#,
    ));
    let mut ws = connect(sidecar.addr("public")).await;
    ws.send(Message::text("one message, then silence"))
        .await
        .unwrap();
    let _echo = within("echo", ws.next()).await;
    assert_eq!(next_close(&mut ws).await, (1001, "idle timeout".into()));
    let closes = within("backend close", backend.record.wait_closes(1)).await;
    assert_eq!(closes[0], (1001, "idle timeout".into()));
    within("stop", sidecar.stop()).await.unwrap();
}

/// With keep-alive pings answered, a session stays up for three idle timeouts; Tether's pings
/// and the client's pongs never reach the backend.
#[tokio::test]
async fn keepalive_keeps_a_quiet_session_alive_for_3x_request_timeout() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        r#"request_timeout = "400ms""#,
        r#"keepalive_interval = "150ms""#,
    ));
    let mut ws = connect(sidecar.addr("public")).await;
    let mut pings = 0;
    let quiet = tokio::time::sleep(Duration::from_millis(1200));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Ping(payload))) => {
                    assert_eq!(&payload[..4], b"tthr");
                    pings += 1;
                }
                other => panic!("the quiet session got {other:?}"),
            },
        }
    }
    assert!(pings >= 3, "expected a ping per interval, saw {pings}");
    ws.send(Message::text("still here")).await.unwrap();
    match within("echo", ws.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("session did not survive: {other:?}"),
    }
    assert_eq!(backend.record.pongs.load(Ordering::SeqCst), 0);
    assert!(backend.record.closes.lock().unwrap().is_empty());
    ws.close(None).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// A raw client that reads but never answers pings is dropped after 2 × the interval; the
/// backend is told why.
#[tokio::test]
async fn client_that_never_pongs_is_dropped_and_backend_gets_1001() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        r#"request_timeout = "10s""#,
        r#"keepalive_interval = "100ms""#,
    ));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
    let head = within("101", raw::read_head(&mut stream)).await;
    assert_eq!(head.status, 101);
    let mut seen = Vec::new();
    within(
        "client socket closed by tether",
        stream.read_to_end(&mut seen),
    )
    .await
    .ok();
    assert!(
        seen.starts_with(&[0x89, 0x08, b't', b't', b'h', b'r']),
        "the client was pinged: {seen:?}"
    );
    let closes = within("backend close", backend.record.wait_closes(1)).await;
    assert_eq!(closes[0], (1001, "client unresponsive".into()));
    within("stop", sidecar.stop()).await.unwrap();
}

/// Read at the byte level: some client libraries (tungstenite 0.30) do not know 1014, which
/// IANA registered as "Bad Gateway", and report their own 1002 instead.
#[tokio::test]
async fn backend_killed_mid_session_gives_client_1014() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(within("101", raw::read_head(&mut stream)).await.status, 101);
    stream
        .write_all(&raw::client_frame(0x1, b"hello"))
        .await
        .unwrap();
    assert_eq!(
        within("echo", raw::read_frame(&mut stream)).await,
        (0x81, b"hello".to_vec())
    );
    drop(backend); // every backend connection dies, without a close frame
    let (first, payload) = within("close", raw::read_frame(&mut stream)).await;
    assert_eq!(first, 0x88);
    assert_eq!(&payload[..2], &1014u16.to_be_bytes());
    assert_eq!(&payload[2..], b"backend lost");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn oversize_message_gets_1009_and_the_backend_1001() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        r#"max_message_size = "1KiB""#,
    ));
    let mut ws = connect(sidecar.addr("public")).await;
    ws.send(Message::binary(vec![7u8; 1024])).await.unwrap();
    assert!(matches!(
        within("echo", ws.next()).await,
        Some(Ok(Message::Binary(_)))
    ));
    ws.send(Message::binary(vec![7u8; 1025])).await.unwrap();
    assert_eq!(next_close(&mut ws).await, (1009, "message too big".into()));
    let closes = within("backend close", backend.record.wait_closes(1)).await;
    assert_eq!(closes[0].0, 1001);
    assert_eq!(
        backend.record.messages.load(Ordering::SeqCst),
        1,
        "the oversize message never reached the backend"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A fragmented message with a ping between its fragments, and a 16 MiB binary message, pass
/// byte-identical through both inspection modes (the raw backend echoes bytes verbatim).
async fn byte_identical(mode: &str) {
    let backend = backends::raw_ws_backend().await;
    let sidecar = start(&config_toml(backend.addr, "", mode));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(within("101", raw::read_head(&mut stream)).await.status, 101);
    let mut greeting = vec![0u8; backends::RAW_GREETING.len()];
    stream.read_exact(&mut greeting).await.unwrap();

    let mut sent = masked_frame(false, 0x1, b"first fragment, ");
    sent.extend(masked_frame(true, 0x9, b"ping between fragments"));
    sent.extend(masked_frame(false, 0x0, b"second fragment, "));
    sent.extend(masked_frame(true, 0x0, b"last fragment"));
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    sent.extend(masked_frame(true, 0x2, &big));
    sent.extend(masked_frame(true, 0x8, &[0x03, 0xe8]));

    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        wr.write_all(&sent).await.unwrap();
        wr
    };
    let reader = async {
        let mut got = vec![0u8; sent.len()];
        rd.read_exact(&mut got).await.unwrap();
        got
    };
    let (_wr, got) = within("16 MiB round trip", async { tokio::join!(writer, reader) }).await;
    assert!(got == sent, "bytes changed on the way ({mode})");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn fragments_ping_and_16_mib_pass_byte_identical_frames() {
    byte_identical(r#"inspect = "frames""#).await;
}

#[tokio::test]
async fn fragments_ping_and_16_mib_pass_byte_identical_opaque() {
    byte_identical(r#"inspect = "opaque""#).await;
}

#[tokio::test]
async fn sixteen_mib_message_echoes_through_a_websocket_library() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let mut ws = connect(sidecar.addr("public")).await;
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 241) as u8).collect();
    within("send", ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    match within("echo", ws.next()).await {
        Some(Ok(Message::Binary(b))) => assert!(b[..] == big[..]),
        other => panic!("{other:?}"),
    }
    ws.close(None).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// Shutdown drains: every one of 200 live sessions receives 1001 and answers, and the sidecar
/// stops within its grace period with nothing forced.
#[tokio::test]
async fn drain_closes_200_sessions_with_1001_within_grace() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let addr = sidecar.addr("public");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(connect(addr).await);
    }
    // Every session is up and echoing before the drain starts.
    for ws in clients.iter_mut() {
        ws.send(Message::text("up")).await.unwrap();
        assert!(matches!(
            within("echo", ws.next()).await,
            Some(Ok(Message::Text(_)))
        ));
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { next_close(&mut ws).await }))
        .collect();
    let report = within("drain", sidecar.stop()).await.unwrap();
    assert_eq!(
        report.forced, 0,
        "every session finished its close handshake"
    );
    for reader in readers {
        assert_eq!(
            within("client close", reader).await.unwrap(),
            (1001, "going away".into())
        );
    }
    let closes = within("backend closes", backend.record.wait_closes(200)).await;
    assert!(closes.iter().all(|(code, _)| *code == 1001));
}

#[tokio::test]
async fn close_frame_with_a_reserved_code_is_replaced_by_1002() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(within("101", raw::read_head(&mut stream)).await.status, 101);
    // 1006 must never be sent; Tether replaces it before the backend sees it.
    stream
        .write_all(&masked_frame(true, 0x8, &1006u16.to_be_bytes()))
        .await
        .unwrap();
    let closes = within("backend close", backend.record.wait_closes(1)).await;
    assert_eq!(closes[0].0, 1002);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn subprotocol_allow_list_refuses_offers_it_does_not_list() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", r#"subprotocols = ["chat"]"#));
    let addr = sidecar.addr("public");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&raw::handshake("/ws", "Sec-WebSocket-Protocol: mqtt\r\n"))
        .await
        .unwrap();
    assert_eq!(within("400", raw::read_head(&mut stream)).await.status, 400);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&raw::handshake(
            "/ws",
            "Sec-WebSocket-Protocol: mqtt, chat\r\n",
        ))
        .await
        .unwrap();
    let head = within("101", raw::read_head(&mut stream)).await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("sec-websocket-protocol"), Some("chat"));
    assert_eq!(
        backend.record.connections(),
        1,
        "the refused offer never reached the backend"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

/// After close frames went both ways and the backend hung up, a client that keeps its socket
/// open does not keep the session (and its backend slot) alive.
#[tokio::test]
async fn session_ends_after_the_close_handshake_even_if_the_client_lingers() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let mut ws = connect(sidecar.addr("public")).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "done".into(),
    })))
    .await
    .unwrap();
    while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    // `ws` stays alive: its socket is still open. The session must end anyway.
    let admin = sidecar.admin_addr();
    within("session deregistered", async {
        loop {
            let resp = raw::send(
                admin,
                b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await;
            if resp
                .text()
                .contains(r#"tether_websocket_sessions_closed_total{cause="normal",code="1000"} 1"#)
            {
                break;
            }
        }
    })
    .await;
    drop(ws);
    within("stop", sidecar.stop()).await.unwrap();
}

/// `max_sessions` bounds live sessions per route: the next handshake gets 503 (and never reaches
/// the backend); a slot frees when a session ends.
#[tokio::test]
async fn max_sessions_refuses_the_next_handshake_with_503_until_one_ends() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(backend.addr, "", "max_sessions = 2"));
    let addr = sidecar.addr("public");
    let mut first = connect(addr).await;
    let _second = connect(addr).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
    let refused = within("503", raw::read_head(&mut stream)).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        backend.record.connections(),
        2,
        "the refused handshake never reached the backend"
    );

    first.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", first.next()).await {}
    // The slot is given back when the session actor ends; each attempt is a real handshake.
    within("slot freed", async {
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&raw::handshake("/ws", "")).await.unwrap();
            if raw::read_head(&mut s).await.status == 101 {
                break;
            }
        }
    })
    .await;
    within("stop", sidecar.stop()).await.unwrap();
}
