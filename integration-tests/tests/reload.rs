//! Hot reload without cutting sessions: routes and pools swapped under live sessions, invalid
//! configurations refused, removed routes drained, listeners added — against a real sidecar.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::pool::{get, Member};
use tether_integration_tests::{raw, start, within, STEP_LIMIT};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Two pools, `one` and `two`, and rules on `/app/*` (to `app_pool`) and, if `gone` is set, on
/// `/gone/*` (to pool `one`, drained after 200 ms when removed).
fn config(a: SocketAddr, b: SocketAddr, app_pool: &str, gone: bool, extra: &str) -> String {
    let gone_rule = if gone {
        r#"
[routing_rules.gone]
listener = "public"
paths = ["/gone/*"]
backend_pool = "one"
backend_settings = "s"
websocket = { drain_grace = "200ms" }
"#
    } else {
        ""
    };
    format!(
        r#"workers = 2
shutdown_grace = "3s"
admin = {{ bind = "127.0.0.1:0" }}
[listeners.public]
bind = "127.0.0.1:0"
[backend_pools.one]
members = ["{a}"]
[backend_pools.two]
members = ["{b}"]
[backend_settings.s]
[routing_rules.app]
listener = "public"
paths = ["/app/*"]
backend_pool = "{app_pool}"
backend_settings = "s"
{gone_rule}
{extra}
"#
    )
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("upgrade");
    ws
}

/// Asks the member behind `ws` for its name; any other frame (a close) fails the test.
async fn whoami(ws: &mut Client) -> String {
    ws.send(Message::text("whoami")).await.expect("send");
    match within("whoami", ws.next()).await {
        Some(Ok(Message::Text(name))) => name.to_string(),
        other => panic!("expected the member's name, got {other:?}"),
    }
}

#[tokio::test]
async fn changing_a_routes_pool_cuts_no_session_and_new_sessions_use_the_new_pool() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(&config(a.addr, b.addr, "one", false, ""));
    let addr = sidecar.addr("public");
    let mut sessions = Vec::new();
    for _ in 0..50 {
        let mut ws = connect(addr, "/app/ws").await;
        assert_eq!(whoami(&mut ws).await, "a");
        sessions.push(ws);
    }
    // Pool `one` goes away entirely and the route points at `two`.
    let mut toml = config(a.addr, b.addr, "two", false, "");
    toml = toml.replace(
        &format!("[backend_pools.one]\nmembers = [\"{}\"]\n", a.addr),
        "",
    );
    sidecar.reload_toml(&toml).await.expect("reload applies");
    for ws in sessions.iter_mut() {
        assert_eq!(whoami(ws).await, "a", "a live session stays on its backend");
    }
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut fresh).await, "b");
    assert_eq!(
        a.live_sessions.load(std::sync::atomic::Ordering::SeqCst),
        50
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_traffic_continues() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(&config(a.addr, b.addr, "one", false, ""));
    let addr = sidecar.addr("public");
    let mut live = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut live).await, "a");
    let err = sidecar
        .reload_toml(&config(a.addr, b.addr, "onne", false, ""))
        .await
        .expect_err("an unknown pool is refused");
    assert!(err.contains("routing_rules.app.backend_pool"), "{err}");
    assert!(err.contains("did you mean \"one\""), "{err}");
    assert_eq!(whoami(&mut live).await, "a");
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(
        whoami(&mut fresh).await,
        "a",
        "the old configuration serves"
    );
    // A listener whose port is taken refuses the whole reload too.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let err = sidecar
        .reload_toml(&config(
            a.addr,
            b.addr,
            "two",
            false,
            &format!("[listeners.extra]\nbind = \"{taken}\""),
        ))
        .await
        .expect_err("a port in use is refused");
    assert!(err.contains("cannot bind"), "{err}");
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut fresh).await, "a", "nothing changed");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn removing_a_route_drains_its_sessions_with_1001() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(&config(a.addr, b.addr, "one", true, ""));
    let addr = sidecar.addr("public");
    let mut kept = connect(addr, "/app/ws").await;
    let mut gone = connect(addr, "/gone/ws").await;
    assert_eq!(whoami(&mut kept).await, "a");
    assert_eq!(whoami(&mut gone).await, "a");
    sidecar
        .reload_toml(&config(a.addr, b.addr, "one", false, ""))
        .await
        .expect("reload applies");
    // After the rule's drain_grace (200 ms) the session is closed with 1001.
    let close = loop {
        match within("close frame", gone.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(
        whoami(&mut kept).await,
        "a",
        "the other route's session lives on"
    );
    // New requests on the removed path find no route.
    let resp = raw::send(
        addr,
        b"GET /gone/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 404);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_listener_added_by_a_reload_serves_and_a_removed_one_closes() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(&config(a.addr, b.addr, "one", false, ""));
    sidecar
        .reload_toml(&config(a.addr, b.addr, "one", false, EXTRA))
        .await
        .expect("reload applies");
    let status = admin_status(sidecar.admin_addr()).await;
    let extra_addr: SocketAddr = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "extra")
        .and_then(|l| l["address"].as_str())
        .expect("the new listener is bound")
        .parse()
        .unwrap();
    let mut ws = connect(extra_addr, "/anything").await;
    assert_eq!(whoami(&mut ws).await, "b");
    sidecar
        .reload_toml(&config(a.addr, b.addr, "one", false, ""))
        .await
        .expect("reload applies");
    // The removed listener's port refuses new connections; its session lives on.
    wait_refused(extra_addr).await;
    assert_eq!(whoami(&mut ws).await, "b");
    within("stop", sidecar.stop()).await.unwrap();
}

/// A listener `extra` sending everything to pool `two` (member `b`), for [`config`]'s `extra`.
const EXTRA: &str = r#"[listeners.extra]
bind = "127.0.0.1:0"
[routing_rules.extra]
listener = "extra"
backend_pool = "two"
backend_settings = "s""#;

/// Waits until nothing listens on `addr` any more (connects are refused). A connect that hangs
/// (a listening socket whose backlog is full) counts as still listening.
async fn wait_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr));
        if let Ok(Err(_)) = attempt.await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every worker accepts on its own duplicate of each listener's socket (`workers = 2` here):
/// concurrent sessions and requests through one listener all get served, removing the listener
/// closes its port (no worker keeps a duplicate open), and the shutdown report counts what every
/// worker accepted, on removed listeners too.
#[tokio::test]
async fn all_workers_accept_on_a_listener_and_removing_it_closes_its_port() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(&config(a.addr, b.addr, "one", false, EXTRA));
    let extra = sidecar.addr("extra");
    let public = sidecar.addr("public");
    let sessions = futures_util::future::join_all((0..20).map(|_| async move {
        let mut ws = connect(extra, "/ws").await;
        assert_eq!(whoami(&mut ws).await, "b");
        ws
    }));
    let requests = futures_util::future::join_all((0..20).map(|_| get(extra, "/plain", "")));
    let (mut sessions, answers) =
        within("traffic", futures_util::future::join(sessions, requests)).await;
    for answer in answers {
        assert_eq!(answer, (200, "b".to_owned()));
    }
    for _ in 0..10 {
        assert_eq!(get(public, "/app/x", "").await, (200, "a".to_owned()));
    }
    sidecar
        .reload_toml(&config(a.addr, b.addr, "one", false, ""))
        .await
        .expect("reload applies");
    wait_refused(extra).await;
    for ws in sessions.iter_mut() {
        assert_eq!(whoami(ws).await, "b", "sessions outlive their listener");
    }
    assert_eq!(get(public, "/app/x", "").await, (200, "a".to_owned()));
    drop(sessions);
    let report = within("stop", sidecar.stop()).await.unwrap();
    // 20 sessions and 20 requests on `extra`, 11 requests on `public`: one connection each.
    assert_eq!(report.accepted, 51);
    assert_eq!(b.sessions.load(std::sync::atomic::Ordering::SeqCst), 20);
}

async fn admin_status(admin: SocketAddr) -> serde_json::Value {
    let resp = raw::send(
        admin,
        b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).unwrap()
}
