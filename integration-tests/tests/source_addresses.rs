//! `backend_settings.NAME.source_addresses`, end to end: backend connections leave from each
//! configured local address in turn (plain requests and WebSocket sessions), an address the
//! host does not have is passed over, and when no address can connect the failure is Tether's
//! (503, `reason="no_local_port"`), never the member's: no passive failure, no probe failure.
//!
//! 127.0.0.2–127.0.0.4 are loopback addresses every Linux host answers on (127.0.0.0/8 is
//! local); 192.0.2.1 (TEST-NET-1) is on no host. Each backend records the source IP of every
//! connection it accepts. One worker, so the round robin (per worker) is seen in order.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::backends::ws_echo;
use tether_integration_tests::pool::{backends, get, member, wait_for};
use tether_integration_tests::{config_toml, metrics, raw, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const THREE: &str = r#"source_addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A one-worker configuration for `backend` with `settings` under `[backend_settings.app]`.
fn one_worker(backend: SocketAddr, settings: &str) -> String {
    config_toml(backend, settings, "").replace("workers = 2", "workers = 1")
}

/// An HTTP/1.1 backend that answers every request `200 ok` with `Connection: close`, so each
/// request through Tether opens a backend connection of its own; it records each connection's
/// source IP.
async fn closing_backend() -> (
    SocketAddr,
    Arc<Mutex<Vec<IpAddr>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                return;
            };
            seen.lock().unwrap().push(peer.ip());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, peers, task)
}

fn connect_failures(m: &HashMap<String, f64>, backend: SocketAddr, reason: &str) -> f64 {
    m.get(&format!(
        "tether_backend_connect_failures_total{{pool=\"app\",member=\"{backend}\",reason=\"{reason}\"}}"
    ))
    .copied()
    .unwrap_or(-1.0)
}

#[tokio::test]
async fn plain_requests_leave_from_every_source_address_in_turn() {
    let (backend, peers, _task) = closing_backend().await;
    let sidecar = start(&one_worker(backend, THREE));
    let listener = sidecar.addr("public");
    for i in 0..6 {
        let (status, body) = within("request", get(listener, "/", "")).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    let seen = peers.lock().unwrap().clone();
    let (a, b, c) = (ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4"));
    assert_eq!(seen, [a, b, c, a, b, c]);
}

#[tokio::test]
async fn websocket_sessions_leave_from_every_source_address_and_work() {
    let backend = ws_echo().await;
    let sidecar = start(&one_worker(backend.addr, THREE));
    let url = format!("ws://{}/chat", sidecar.addr("public"));
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (ws, resp) = within("websocket connect", tokio_tungstenite::connect_async(&url))
            .await
            .expect("upgrade");
        assert_eq!(resp.status(), 101);
        sessions.push(ws);
    }
    // Every session, open at once, still carries messages both ways.
    for (i, ws) in sessions.iter_mut().enumerate() {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    let (a, b, c) = (ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4"));
    assert_eq!(backend.record.peer_ips(), [a, b, c, a, b, c]);
}

#[tokio::test]
async fn an_address_the_host_lacks_is_passed_over_for_the_next() {
    let (backend, peers, _task) = closing_backend().await;
    // Built without the load-time host check, as if 192.0.2.1 left the host after start-up.
    let settings = r#"source_addresses = ["192.0.2.1", "127.0.0.3"]"#;
    let sidecar = start(&one_worker(backend, settings));
    let listener = sidecar.addr("public");
    for i in 0..4 {
        let (status, body) = within("request", get(listener, "/", "")).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(*peers.lock().unwrap(), [ip("127.0.0.3"); 4]);
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(connect_failures(&m, backend, "no_local_port"), 0.0);
    assert_eq!(connect_failures(&m, backend, "error"), 0.0);
}

#[tokio::test]
async fn no_usable_source_address_is_tethers_503_and_never_the_members_failure() {
    let (backend, peers, _task) = closing_backend().await;
    // One failure would eject the member if it counted against it.
    let settings =
        "source_addresses = [\"192.0.2.1\"]\n\n[backend_pools.app.passive]\nfailures = 1";
    let sidecar = start(&one_worker(backend, settings));
    let listener = sidecar.addr("public");
    for _ in 0..3 {
        let req = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
        let resp = within("request", raw::send(listener, req)).await;
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert_eq!(
            resp.text(),
            format!(
                "no local port left to connect to backend {backend} from its one source address\n"
            )
        );
        assert!(
            resp.header("retry-after").is_some(),
            "a limit of ours says when to come back"
        );
    }
    assert!(peers.lock().unwrap().is_empty());
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(connect_failures(&m, backend, "no_local_port"), 3.0);
    assert_eq!(connect_failures(&m, backend, "error"), 0.0);
    let status = backends(sidecar.admin_addr()).await;
    let member = member(&status, "app", backend);
    assert_eq!(member["state"], "healthy", "{member:#}");
    assert_eq!(member["passive"]["consecutive_failures"], 0, "{member:#}");
    assert_eq!(member["passive"]["ejections"], 0, "{member:#}");
    assert_eq!(member["connect_failures"]["no_local_port"], 3, "{member:#}");
}

#[tokio::test]
async fn a_probe_that_finds_no_local_port_does_not_count_against_the_member() {
    let (backend, _peers, _task) = closing_backend().await;
    // One counted failure would make the member unhealthy.
    let settings = "probe = \"health\"\nsource_addresses = [\"192.0.2.1\"]\n\n\
                    [probes.health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1";
    let sidecar = start(&one_worker(backend, settings));
    let admin = sidecar.admin_addr();
    let status = wait_for(admin, "a probe was tried", |s| {
        !member(s, "app", backend)["last_probe"].is_null()
    })
    .await;
    let member = member(&status, "app", backend);
    let result = member["last_probe"]["result"].as_str().unwrap_or_default();
    assert!(
        result.starts_with("not probed: no local port left"),
        "{member:#}"
    );
    assert_eq!(member["state"], "unknown", "{member:#}");
    assert_eq!(member["consecutive_failures"], 0, "{member:#}");
}
