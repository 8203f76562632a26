//! Sessions that end on purpose: idle timeout, keep-alive, unresponsive clients, lost backends,
//! oversize messages, drain — each observed at the real peers as the close frame they receive.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_integration_tests::{backends, config_toml, raw, start, within, STEP_LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
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
                .contains(r#"tether_websocket_sessions_closed_total{route="app",cause="normal",code="1000"} 1"#)
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

/// A raw socket with a small receive buffer, so that the path to it fills quickly when it reads
/// nothing.
fn small_buffer_socket() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
}

/// A backend that answers one handshake with `101` and hands its socket to the test, which then
/// reads it (or not) and writes to it as it pleases.
async fn raw_backend() -> (SocketAddr, tokio::task::JoinHandle<TcpStream>) {
    let socket = small_buffer_socket();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = raw::read_head(&mut stream).await;
        let key = head.header("sec-websocket-key").unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        stream
    });
    (addr, task)
}

/// A raw client through the sidecar's `public` listener, upgraded, and the backend's end of its
/// session.
async fn raw_session(
    sidecar: &tether::Sidecar,
    accepted: tokio::task::JoinHandle<TcpStream>,
) -> (TcpStream, TcpStream) {
    let addr = sidecar.addr("public");
    let mut client = small_buffer_socket().connect(addr).await.unwrap();
    client.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(within("101", raw::read_head(&mut client)).await.status, 101);
    let backend = within("backend connection", accepted).await.unwrap();
    (client, backend)
}

/// Reads everything left on `stream` until its end: a FIN, or also a reset when `reset_ok`.
async fn read_rest(stream: &mut TcpStream, reset_ok: bool) -> Vec<u8> {
    let mut rest = Vec::new();
    match within("socket closed", stream.read_to_end(&mut rest)).await {
        Ok(_) => {}
        Err(e) if reset_ok && e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the stream did not end cleanly: {e} (after {} bytes)",
            rest.len()
        ),
    }
    rest
}

/// `GET /sessions` on the admin endpoint, polled until `done` holds for it or `limit` passes.
async fn wait_sessions(
    admin: SocketAddr,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let resp = raw::send(
            admin,
            b"GET /sessions HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let v: Value = serde_json::from_slice(&resp.body).expect("JSON from /sessions");
        if done(&v) {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(v);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Payload byte of the large frames below.
const FILL: u8 = 0x5a;

/// Writes the header of one 1 GiB binary frame (masked when `masked`: from the client), then its
/// payload a chunk at a time, each read by Tether (its session's `counter` says so) before the
/// next is sent, until Tether stops reading: the other side reads nothing, and its socket and the
/// 64 KiB Tether keeps for it are full. The last chunk waits in Tether's receive buffer, so
/// whatever `peer` does next (FIN, reset) reaches Tether. Returns the frame's header.
async fn fill_until_stalled(
    peer: &mut TcpStream,
    masked: bool,
    admin: SocketAddr,
    counter: &str,
) -> Vec<u8> {
    let mut header = vec![0x82, (u8::from(masked) << 7) | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    if masked {
        header.extend_from_slice(&[0, 0, 0, 0]);
    }
    peer.write_all(&header).await.unwrap();
    let chunk = vec![FILL; 16 * 1024];
    let mut written = header.len() as u64;
    loop {
        peer.write_all(&chunk).await.unwrap();
        written += chunk.len() as u64;
        let v = wait_sessions(admin, STEP_LIMIT, |v| {
            let live = &v["live"][0];
            live[counter].as_u64() == Some(written)
                || live["idle_ms"].as_u64().is_some_and(|ms| ms >= 500)
        })
        .await
        .expect("Tether reads the chunk or stops reading");
        if v["live"][0][counter].as_u64() < Some(written) {
            return header;
        }
        assert!(written < 64 << 20, "Tether never stopped reading");
    }
}

/// Waits (10 s at most) until the one session has ended, and returns how long that took since
/// `since` and its entry in `recent_endings`.
async fn wait_ending(admin: SocketAddr, since: tokio::time::Instant) -> (Duration, Value) {
    // `live` and `recent_endings` are two snapshots: wait for both to show the end.
    let v = wait_sessions(admin, Duration::from_secs(10), |v| {
        v["recent_endings"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
            && v["live"].as_array().is_some_and(|l| l.is_empty())
    })
    .await
    .unwrap_or_else(|v| panic!("the session did not end within 10 s of the hang-up: {v:#}"));
    (since.elapsed(), v["recent_endings"][0].clone())
}

/// What a peer that read nothing finds on its socket after the session ended: the bytes Tether
/// had written to it — a prefix of the other side's one large frame, at most what Tether read
/// (`read_by_tether`) — then the end of the stream. No close frame: it cannot be put in the
/// middle of a frame.
fn assert_prefix_then_end(got: &[u8], header: &[u8], read_by_tether: u64) {
    assert!(
        got.len() > header.len() && got.len() as u64 <= read_by_tether,
        "got {} bytes, Tether read {read_by_tether}",
        got.len()
    );
    assert_eq!(got[..header.len()], header[..]);
    assert!(
        got[header.len()..].iter().all(|&b| b == FILL),
        "only the other side's own bytes, no frame of Tether's in the middle of them"
    );
}

/// A client fills the path to a backend that reads nothing, then hangs up (FIN, or a reset when
/// `reset`). Tether notices although it has stopped reading that client, and ends the session
/// as `client_lost` once the backend has had the close grace (5 s), well before the keep-alive
/// verdict (2 × 30 s).
async fn client_hangs_up_while_the_backend_reads_nothing(reset: bool) {
    let (backend, accepted) = raw_backend().await;
    let sidecar = start(&config_toml(
        backend,
        r#"request_timeout = "120s""#,
        r#"keepalive_interval = "30s""#,
    ));
    let admin = sidecar.admin_addr();
    let (mut client, mut backend) = raw_session(&sidecar, accepted).await;
    let header = fill_until_stalled(&mut client, true, admin, "client_bytes").await;

    let hung_up = tokio::time::Instant::now();
    let client = if reset {
        client.set_zero_linger().unwrap();
        drop(client);
        None
    } else {
        client.shutdown().await.unwrap();
        Some(client)
    };
    let (took, ended) = wait_ending(admin, hung_up).await;
    assert_eq!(ended["cause"], "client_lost", "{ended}");
    assert!(
        took < Duration::from_secs(10),
        "ended {took:?} after the hang-up"
    );
    if let Some(mut client) = client {
        // Closed with the client's last bytes unread: the kernel answers with a reset.
        let rest = read_rest(&mut client, true).await;
        assert!(
            rest.is_empty(),
            "nothing goes to a client that left: {rest:?}"
        );
    }
    let got = read_rest(&mut backend, false).await;
    assert_prefix_then_end(&got, &header, ended["client_bytes"].as_u64().unwrap());
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn client_fin_while_the_backend_reads_nothing_ends_as_client_lost_within_the_grace() {
    client_hangs_up_while_the_backend_reads_nothing(false).await;
}

#[tokio::test]
async fn client_reset_while_the_backend_reads_nothing_ends_as_client_lost_within_the_grace() {
    client_hangs_up_while_the_backend_reads_nothing(true).await;
}

/// The mirror image: a backend fills the path to a client that reads nothing, then ends its
/// stream. `backend_lost` within the close grace, not `client_unresponsive` after 2 × 30 s.
#[tokio::test]
async fn backend_fin_while_the_client_reads_nothing_ends_as_backend_lost_within_the_grace() {
    let (backend, accepted) = raw_backend().await;
    let sidecar = start(&config_toml(
        backend,
        r#"request_timeout = "120s""#,
        r#"keepalive_interval = "30s""#,
    ));
    let admin = sidecar.admin_addr();
    let (mut client, mut backend) = raw_session(&sidecar, accepted).await;
    let header = fill_until_stalled(&mut backend, false, admin, "backend_bytes").await;

    let hung_up = tokio::time::Instant::now();
    backend.shutdown().await.unwrap();
    let (took, ended) = wait_ending(admin, hung_up).await;
    assert_eq!(ended["cause"], "backend_lost", "{ended}");
    assert!(
        took < Duration::from_secs(10),
        "ended {took:?} after the hang-up"
    );
    let got = read_rest(&mut client, false).await;
    assert_prefix_then_end(&got, &header, ended["backend_bytes"].as_u64().unwrap());
    within("stop", sidecar.stop()).await.unwrap();
}

/// The code and reason of the masked close frame at the start of `bytes`, and its length.
fn masked_close(bytes: &[u8]) -> (u16, String, usize) {
    assert!(bytes.len() >= 8, "a close frame: {bytes:?}");
    assert_eq!(bytes[0], 0x88, "a close frame: {bytes:?}");
    assert_eq!(bytes[1] & 0x80, 0x80, "frames to a backend are masked");
    let len = usize::from(bytes[1] & 0x7F);
    let key = [bytes[2], bytes[3], bytes[4], bytes[5]];
    let payload: Vec<u8> = bytes[6..6 + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
    (code, reason, 6 + len)
}

/// Sends `sent` from a raw client with `max_message_size` = 1 KiB (counted over payloads), and
/// checks that the client gets 1009 and the backend exactly `forwarded`, then 1001 and the end of
/// the stream.
async fn only_forwarded_reaches_the_backend(sent: &[u8], forwarded: &[u8]) {
    let (backend, accepted) = raw_backend().await;
    let sidecar = start(&config_toml(backend, "", r#"max_message_size = "1KiB""#));
    let (mut client, mut backend) = raw_session(&sidecar, accepted).await;
    client.write_all(sent).await.unwrap();

    let (first, payload) = within("close", raw::read_frame(&mut client)).await;
    assert_eq!(first, 0x88);
    assert_eq!(&payload[..2], &1009u16.to_be_bytes());
    let got = read_rest(&mut backend, false).await;
    assert_eq!(got[..forwarded.len()], forwarded[..]);
    let (code, reason, len) = masked_close(&got[forwarded.len()..]);
    assert_eq!((code, reason.as_str()), (1001, "going away"));
    assert_eq!(
        got.len(),
        forwarded.len() + len,
        "nothing of the frame that crossed the limit, nor after it"
    );
    drop((client, backend));
    within("stop", sidecar.stop()).await.unwrap();
}

/// A single frame over the limit: none of it reaches the backend, which gets the frames before
/// it, then 1001 in its place.
#[tokio::test]
async fn an_oversize_frame_never_reaches_the_backend() {
    let fits = masked_frame(true, 0x2, &[1; 1024]);
    let mut sent = fits.clone();
    sent.extend(masked_frame(true, 0x2, &[2; 1025]));
    only_forwarded_reaches_the_backend(&sent, &fits).await;
}

/// A fragmented message is forwarded fragment by fragment: the backend gets every fragment (and
/// the ping between them) up to the one whose payload takes the message over the limit; that
/// fragment and the rest are not forwarded, and the backend gets 1001 in their place.
#[tokio::test]
async fn an_oversize_fragmented_message_is_cut_at_the_fragment_that_crosses_the_limit() {
    // 400 + 624 = 1024 bytes: at the limit, forwarded. One more byte crosses it.
    let mut forwarded = masked_frame(false, 0x2, &[1; 400]);
    forwarded.extend(masked_frame(true, 0x9, b"between fragments"));
    forwarded.extend(masked_frame(false, 0x0, &[2; 624]));
    let mut sent = forwarded.clone();
    sent.extend(masked_frame(false, 0x0, &[3; 1]));
    sent.extend(masked_frame(true, 0x0, &[4; 10]));
    only_forwarded_reaches_the_backend(&sent, &forwarded).await;
}
