//! End-to-end tests for the benchmark's fast echo backend and load scenarios: real sockets on
//! 127.0.0.1, short runs, this test process as the "proxy" whose cost is read from /proc.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use tether_examples::load::client::{wait_ready, Target, Upgrader};
use tether_examples::load::procstat::Watched;
use tether_examples::load::scenarios::{
    self, EchoParams, HandshakeParams, IdleParams, LatencyParams,
};
use tether_examples::load::server;

/// A running fast echo backend; aborted when dropped.
struct Backend {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Backend {
        addr,
        task: tokio::spawn(server::serve(listener)),
    }
}

fn ws(backend: &Backend) -> Upgrader {
    Upgrader::new(Target::parse(&format!("ws://{}/ws", backend.addr)).unwrap())
}

#[tokio::test]
async fn fast_echo_speaks_websocket_to_an_independent_client() {
    let backend = backend().await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", backend.addr))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);

    // tungstenite masks with random keys, unlike the load tool.
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    let big = vec![0x5A; 100_000];
    socket.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(big));
    socket
        .send(Message::Ping(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::Pong(vec![1, 2, 3].into())
    );

    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    match socket.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason, "bye");
        }
        other => panic!("expected the close frame back, got {other:?}"),
    }
}

#[tokio::test]
async fn fast_echo_answers_plain_http_with_keep_alive() {
    let backend = backend().await;
    let target = Target::parse(&format!("http://{}/anything", backend.addr)).unwrap();
    wait_ready(&target, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn every_websocket_scenario_runs_clean() {
    let backend = backend().await;
    let upgrader = ws(&backend);
    let me = Watched::new(vec![std::process::id()]);
    let short = Duration::from_millis(300);
    let warmup = Duration::from_millis(50);

    for size in [64, 4096] {
        let params = EchoParams {
            connections: 4,
            size,
            window: 4,
            warmup,
            duration: short,
        };
        let m = scenarios::echo(&upgrader, &me, &params).await.unwrap();
        assert!(m["msgs"] > 0.0, "{m:?}");
        assert_eq!(m["errors"], 0.0, "{m:?}");
        assert!(m.contains_key("proxy_cpu_share"), "{m:?}");
    }

    let params = LatencyParams {
        connections: 4,
        rate: 1000,
        size: 64,
        warmup,
        duration: short,
    };
    let m = scenarios::latency(&upgrader, &params).await.unwrap();
    assert!(m["samples"] > 0.0, "{m:?}");
    assert!(
        m["p50_us"] <= m["p99_us"] && m["p99_us"] <= m["max_us"],
        "{m:?}"
    );
    assert_eq!((m["lost"], m["errors"]), (0.0, 0.0), "{m:?}");

    let params = HandshakeParams {
        workers: 4,
        size: 64,
        warmup,
        duration: short,
    };
    let m = scenarios::handshake(&upgrader, &me, &params).await.unwrap();
    assert!(m["handshakes"] > 0.0, "{m:?}");
    assert_eq!(m["errors"], 0.0, "{m:?}");

    let params = IdleParams {
        sessions: 200,
        concurrency: 16,
    };
    // No watched process here: under `cargo test` other tests share this process, and their
    // sockets would blur the idle scenario's descriptor count.
    let m = scenarios::idle(&upgrader, &Watched::default(), &params)
        .await
        .unwrap();
    assert_eq!((m["opened"], m["alive"]), (200.0, 200.0), "{m:?}");
    assert_eq!(m["errors"], 0.0, "{m:?}");
}

#[tokio::test]
async fn targets_outside_loopback_are_refused() {
    assert!(Target::parse("ws://192.168.1.1:80/").is_err());
    assert!(Target::parse("http://8.8.8.8:80/").is_err());
}
