//! Backend pools that heal themselves, end to end: active probes (HTTP and WebSocket), drain
//! or keep on an unhealthy member, DNS members, balancing policies, passive ejection, and
//! `GET /backends` on the admin endpoint.
//!
//! Every member is a real server on 127.0.0.1; the DNS server is real too (UDP on 127.0.0.1).
//! Nothing sleeps to synchronize: each step waits for an observable state (`GET /backends`, a
//! member's own counters, a frame) under a bounded deadline.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_integration_tests::pool::{backends, get, member, state, wait_for, Member, TestDns};
use tether_integration_tests::{start, within, STEP_LIMIT};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The pieces of a one-pool configuration a test varies.
#[derive(Default)]
struct Setup<'a> {
    members: Vec<String>,
    /// Extra keys of `[backend_pools.app]`.
    pool: &'a str,
    /// Keys of `[probes.health]`; `None` = no probe.
    probe: Option<&'a str>,
    /// Extra keys of `[backend_settings.app]`.
    settings: &'a str,
    /// Keys of `[routing_rules.app.websocket]`.
    websocket: &'a str,
    /// Tables appended at the end.
    extra: &'a str,
}

impl Setup<'_> {
    fn toml(&self) -> String {
        let members: Vec<String> = self.members.iter().map(|m| format!("{m:?}")).collect();
        let (probe_ref, probe_table) = match self.probe {
            Some(keys) => ("probe = \"health\"", format!("[probes.health]\n{keys}\n")),
            None => ("", String::new()),
        };
        format!(
            r#"workers = 2
shutdown_grace = "5s"
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"

[backend_pools.app]
members = [{members}]
{pool}

[backend_settings.app]
connect_timeout = "2s"
{probe_ref}
{settings}

{probe_table}
[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"

[routing_rules.app.websocket]
{websocket}

{extra}
"#,
            members = members.join(", "),
            pool = self.pool,
            settings = self.settings,
            websocket = self.websocket,
            extra = self.extra,
        )
    }
}

/// A fast HTTP probe of `/health`: 3 failures out, 2 successes back in. The timeout is generous
/// for loopback so that a loaded CI machine does not fail probes the test means to pass.
const FAST_PROBE: &str = r#"path = "/health"
interval = "150ms"
timeout = "150ms"
unhealthy_threshold = 3
healthy_threshold = 2"#;

fn addr_of(m: &Member) -> String {
    m.addr.to_string()
}

async fn all_healthy(admin: SocketAddr, members: &[&Member]) -> Value {
    wait_for(admin, "every member healthy", |s| {
        members.iter().all(|m| state(s, "app", m.addr) == "healthy")
    })
    .await
}

/// `n` plain GETs through the sidecar; the body of each (the member's name) or the status.
async fn names(listener: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, body) = within("GET", get(listener, "/", "")).await;
        out.push(if status == 200 {
            body
        } else {
            status.to_string()
        });
    }
    out
}

async fn connect_ws(listener: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{listener}{path}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let (ws, resp) = within("websocket connect", tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade through the sidecar");
    assert_eq!(resp.status(), 101);
    ws
}

/// Which member serves this session (members answer `whoami` with their name).
async fn whoami(ws: &mut Ws) -> String {
    within("send whoami", ws.send(Message::text("whoami")))
        .await
        .unwrap();
    match within("whoami reply", ws.next()).await {
        Some(Ok(Message::Text(name))) => name.to_string(),
        other => panic!("expected the member's name, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_member_leaves_after_exactly_unhealthy_threshold_probes_and_returns_after_healthy_threshold(
) {
    tether_integration_tests::init_logs();
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a), addr_of(&b)],
            pool: "load_balancing = \"round_robin\"\npassive = { failures = 0 }",
            probe: Some(FAST_PROBE),
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    let status = all_healthy(admin, &[&a, &b]).await;
    // Unknown -> healthy on the first success.
    assert_eq!(member(&status, "app", a.addr)["last_change"]["after"], 1);

    // One failure short of the threshold, then successes: a never leaves rotation.
    let before = a.health.served().len();
    a.health.script(&[500, 500]);
    within("two failures then two successes", async {
        loop {
            let served = a.health.served();
            if served.len() >= before + 4 {
                assert_eq!(served[before..before + 4], [500, 500, 200, 200]);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let status = backends(admin).await;
    let m = member(&status, "app", a.addr);
    assert_eq!(m["state"], "healthy", "{m:#}");
    assert_eq!(m["last_change"]["to"], "healthy", "never flipped: {m:#}");
    assert_eq!(m["last_change"]["after"], 1, "never flipped: {m:#}");

    // Failing for good: out after exactly unhealthy_threshold (3) probes.
    a.health.set_status(500);
    let status = wait_for(admin, "a unhealthy", |s| {
        state(s, "app", a.addr) == "unhealthy"
    })
    .await;
    let m = member(&status, "app", a.addr);
    assert_eq!(m["last_change"]["to"], "unhealthy");
    assert_eq!(m["last_change"]["after"], 3, "{m:#}");
    assert_eq!(m["last_change"]["reason"], "status 500 (expected 200-399)");
    assert_eq!(m["in_rotation"], false);
    // Traffic moved to b.
    assert!(names(listener, 10).await.iter().all(|n| n == "b"));

    // Healthy again: back after exactly healthy_threshold (2) probes.
    a.health.set_status(200);
    let status = wait_for(admin, "a healthy", |s| state(s, "app", a.addr) == "healthy").await;
    let m = member(&status, "app", a.addr);
    assert_eq!(m["last_change"]["after"], 2, "{m:#}");
    assert_eq!(m["last_change"]["reason"], "status 200");
    let served = names(listener, 4).await;
    assert!(served.iter().any(|n| n == "a"), "{served:?}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn hanging_member_is_marked_down_by_the_probe_timeout() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a), addr_of(&b)],
            probe: Some(FAST_PROBE),
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    all_healthy(admin, &[&a, &b]).await;
    a.health.set_hang(true);
    let status = wait_for(admin, "a unhealthy", |s| {
        state(s, "app", a.addr) == "unhealthy"
    })
    .await;
    let m = member(&status, "app", a.addr);
    assert_eq!(m["last_change"]["reason"], "timed out after 150ms", "{m:#}");
    assert_eq!(m["last_probe"]["ok"], false);
    assert!(names(sidecar.addr("public"), 6)
        .await
        .iter()
        .all(|n| n == "b"));
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn killed_member_is_marked_down_and_racing_requests_get_the_healthy_member_or_a_clean_502() {
    let mut a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a), addr_of(&b)],
            pool: "load_balancing = \"round_robin\"\npassive = { failures = 0 }",
            probe: Some(FAST_PROBE),
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    all_healthy(admin, &[&a, &b]).await;
    a.kill();
    // Requests race the flip: every one gets b's answer or a 502 naming the refused connect,
    // and none may hang (each is bounded well below the step limit).
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let batch = futures_util::future::join_all((0..4).map(|_| async {
            tokio::time::timeout(Duration::from_secs(3), get(listener, "/", ""))
                .await
                .expect("a request racing the flip hung")
        }))
        .await;
        for (status, body) in batch {
            match status {
                200 => assert_eq!(body, "b"),
                502 => assert!(body.contains("could not connect to backend"), "{body}"),
                other => panic!("unexpected {other}: {body}"),
            }
            *outcomes.entry(status.to_string()).or_default() += 1;
        }
        if state(&backends(admin).await, "app", a.addr) == "unhealthy" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never marked down"
        );
    }
    tracing::info!(?outcomes, "requests racing the flip");
    let status = backends(admin).await;
    let reason = member(&status, "app", a.addr)["last_change"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("Connection refused"), "{reason}");
    assert!(names(listener, 8).await.iter().all(|n| n == "b"));
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn websocket_probe_marks_a_member_answering_200_instead_of_101_unhealthy() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    b.health.refuse_upgrades(true);
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a), addr_of(&b)],
            probe: Some(
                r#"kind = "websocket"
path = "/ws-health"
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 2
healthy_threshold = 1"#,
            ),
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let status = wait_for(admin, "a healthy, b unhealthy", |s| {
        state(s, "app", a.addr) == "healthy" && state(s, "app", b.addr) == "unhealthy"
    })
    .await;
    assert_eq!(
        member(&status, "app", a.addr)["last_probe"]["result"],
        "101 Switching Protocols"
    );
    assert_eq!(
        member(&status, "app", b.addr)["last_change"]["reason"],
        "expected 101 Switching Protocols, got 200"
    );
    // The probe really upgraded (a's WebSocket server accepted sessions) and closed each one:
    // the server's echo loop ends on the close frame, so live sessions drop back.
    assert!(a.sessions.load(Ordering::SeqCst) >= 1);
    within("probe sessions closed", async {
        while a.live_sessions.load(Ordering::SeqCst) > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    b.health.refuse_upgrades(false);
    wait_for(admin, "b healthy", |s| state(s, "app", b.addr) == "healthy").await;
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn all_members_down_is_503_naming_the_pool() {
    let a = Member::start("a").await;
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a)],
            probe: Some(FAST_PROBE),
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    all_healthy(admin, &[&a]).await;
    a.health.set_status(503);
    wait_for(admin, "a unhealthy", |s| {
        state(s, "app", a.addr) == "unhealthy"
    })
    .await;
    let (status, body) = within("GET", get(sidecar.addr("public"), "/", "")).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "no healthy backend in pool \"app\"\n")
    );
    let handshake = tether_integration_tests::raw::handshake("/ws", "Connection: close\r\n");
    let resp = within(
        "handshake",
        tether_integration_tests::raw::send(sidecar.addr("public"), &handshake),
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(a.requests.load(Ordering::SeqCst), 0);
    within("stop", sidecar.stop()).await.unwrap();
}

/// `on_backend_unhealthy = "drain"` closes sessions on the member with 1001 after
/// `drain_grace`; a rule with `"keep"` on the same member leaves its sessions running.
#[tokio::test]
async fn unhealthy_member_drains_sessions_with_1001_under_drain_and_keeps_them_under_keep() {
    let a = Member::start("a").await;
    let extra = r#"[routing_rules.drain]
listener = "public"
paths = ["/drain/*"]
backend_pool = "app"
backend_settings = "app"
[routing_rules.drain.websocket]
on_backend_unhealthy = "drain"
drain_grace = "200ms"
"#;
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a)],
            probe: Some(FAST_PROBE),
            websocket: "on_backend_unhealthy = \"keep\"",
            extra,
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    all_healthy(admin, &[&a]).await;
    let mut keep = connect_ws(listener, "/keep/x", &[]).await;
    let mut drain = connect_ws(listener, "/drain/x", &[]).await;
    assert_eq!(whoami(&mut keep).await, "a");
    assert_eq!(whoami(&mut drain).await, "a");
    let status = wait_for(admin, "two live sessions on a", |s| {
        member(s, "app", a.addr)["live_sessions"] == 2
    })
    .await;
    assert_eq!(status["live_sessions"], 2);

    a.health.set_status(500);
    wait_for(admin, "a unhealthy", |s| {
        state(s, "app", a.addr) == "unhealthy"
    })
    .await;

    // The drained session gets a close frame with 1001 Going Away.
    let frame = within("close frame on the drained session", async {
        loop {
            match drain.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame (1001), got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        frame.map(|f| f.code),
        Some(CloseCode::Away),
        "drained sessions close with 1001"
    );

    // The kept session still works, after the drain grace too.
    within("keep echo", keep.send(Message::text("still here")))
        .await
        .unwrap();
    match within("keep echo reply", keep.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("the kept session ended: {other:?}"),
    }
    assert_eq!(whoami(&mut keep).await, "a");
    within("close", keep.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn least_connections_spreads_100_long_lived_sessions_evenly_over_3_members() {
    let members = [
        Member::start("a").await,
        Member::start("b").await,
        Member::start("c").await,
    ];
    let sidecar = start(
        &Setup {
            members: members.iter().map(addr_of).collect(),
            pool: "load_balancing = \"least_connections\"",
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    let mut sessions = Vec::new();
    for _ in 0..100 {
        let mut ws = connect_ws(listener, "/ws", &[]).await;
        let name = whoami(&mut ws).await;
        sessions.push((name, ws));
    }
    let mut per_member: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in &sessions {
        *per_member.entry(name.clone()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_member.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [33, 33, 34], "{per_member:?}");
    // The members agree, and so does GET /backends.
    let status = wait_for(admin, "100 live sessions", |s| s["live_sessions"] == 100).await;
    for m in &members {
        assert_eq!(m.live_sessions.load(Ordering::SeqCst), per_member[&m.name]);
        assert_eq!(
            member(&status, "app", m.addr)["live_sessions"],
            per_member[&m.name]
        );
    }

    // Close 20 of a's sessions: new sessions go to a, now the least loaded.
    let (mut to_close, mut rest): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (name, ws) in sessions {
        if name == "a" && to_close.len() < 20 {
            to_close.push(ws);
        } else {
            rest.push((name, ws));
        }
    }
    let mut sessions = rest;
    for mut ws in to_close {
        within("close", ws.close(None)).await.unwrap();
        while let Some(Ok(_)) = within("close reply", ws.next()).await {}
    }
    let expected = per_member["a"] - 20;
    wait_for(admin, "a's sessions closed", |s| {
        member(s, "app", members[0].addr)["live_sessions"] == expected
    })
    .await;
    // Until a catches up with the least loaded other member, every new session is a's.
    let others_min = per_member["b"].min(per_member["c"]);
    for _ in 0..others_min - expected {
        let mut ws = connect_ws(listener, "/ws", &[]).await;
        assert_eq!(whoami(&mut ws).await, "a");
        sessions.push(("a".into(), ws));
    }
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn consistent_hash_sends_a_key_to_the_same_member_across_reconnects_while_it_is_healthy() {
    let members = [
        Member::start("a").await,
        Member::start("b").await,
        Member::start("c").await,
    ];
    let sidecar = start(
        &Setup {
            members: members.iter().map(addr_of).collect(),
            pool: "load_balancing = \"consistent_hash\"\nhash_key = \"header:x-user\"",
            probe: Some(FAST_PROBE),
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    let refs: Vec<&Member> = members.iter().collect();
    all_healthy(admin, &refs).await;

    let session_member = |user: String| async move {
        let mut ws = connect_ws(listener, "/ws", &[("x-user", user.as_str())]).await;
        let name = whoami(&mut ws).await;
        within("close", ws.close(None)).await.unwrap();
        name
    };
    let mut home: HashMap<String, String> = HashMap::new();
    for i in 0..24 {
        let user = format!("user-{i}");
        let first = session_member(user.clone()).await;
        for _ in 0..2 {
            assert_eq!(session_member(user.clone()).await, first, "{user} moved");
        }
        home.insert(user, first);
    }
    let used: std::collections::BTreeSet<&String> = home.values().collect();
    assert!(used.len() >= 2, "24 keys all on one member: {home:?}");

    // Take the member with the most keys out: its keys move, every other key stays put.
    let victim = members
        .iter()
        .max_by_key(|m| home.values().filter(|h| **h == m.name).count())
        .unwrap();
    victim.health.set_status(500);
    wait_for(admin, "victim unhealthy", |s| {
        state(s, "app", victim.addr) == "unhealthy"
    })
    .await;
    for (user, was) in &home {
        let now = session_member(user.clone()).await;
        if *was == victim.name {
            assert_ne!(now, victim.name);
        } else {
            assert_eq!(&now, was, "{user} moved although its member stayed healthy");
        }
    }
    // Back in rotation: its keys come home.
    victim.health.set_status(200);
    wait_for(admin, "victim healthy", |s| {
        state(s, "app", victim.addr) == "healthy"
    })
    .await;
    for (user, was) in &home {
        assert_eq!(&session_member(user.clone()).await, was);
    }
    within("stop", sidecar.stop()).await.unwrap();
}

/// A plain GET from a chosen loopback source address (127.0.0.x), for client-IP hashing.
async fn get_from(source: Ipv4Addr, listener: SocketAddr, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = within("connect", socket.connect(listener)).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    within("read", stream.read_to_end(&mut all)).await.unwrap();
    let resp = tether_integration_tests::raw::parse(&all);
    assert_eq!(resp.status, 200);
    resp.text()
}

#[tokio::test]
async fn consistent_hash_on_a_cookie_falls_back_to_the_client_ip() {
    let members = [
        Member::start("a").await,
        Member::start("b").await,
        Member::start("c").await,
    ];
    let sidecar = start(
        &Setup {
            members: members.iter().map(addr_of).collect(),
            pool: "load_balancing = \"consistent_hash\"\nhash_key = \"cookie:sid\"",
            ..Setup::default()
        }
        .toml(),
    );
    let listener = sidecar.addr("public");
    // By cookie: the same member whatever the client address.
    let mut by_cookie = std::collections::BTreeSet::new();
    for sid in 0..12 {
        let cookie = format!("Cookie: theme=dark; sid=s{sid}\r\n");
        let first = get_from(Ipv4Addr::new(127, 0, 0, 1), listener, &cookie).await;
        for source in 2..5 {
            let again = get_from(Ipv4Addr::new(127, 0, 0, source), listener, &cookie).await;
            assert_eq!(again, first, "sid s{sid} moved with the client address");
        }
        by_cookie.insert(first);
    }
    assert!(by_cookie.len() >= 2, "{by_cookie:?}");
    // No cookie: the client IP decides, and keeps deciding the same way.
    let mut by_ip = std::collections::BTreeSet::new();
    for source in 1..=12 {
        let ip = Ipv4Addr::new(127, 0, 0, source);
        let first = get_from(ip, listener, "").await;
        assert_eq!(get_from(ip, listener, "").await, first);
        by_ip.insert(first);
    }
    assert!(by_ip.len() >= 2, "{by_ip:?}");
    within("stop", sidecar.stop()).await.unwrap();
}

/// Two members on the same port at 127.0.0.1 and 127.0.0.2, as one DNS name moving between
/// two hosts would look.
async fn member_pair() -> (Member, Member) {
    for _ in 0..20 {
        let a = Member::start("a").await;
        let b_addr = SocketAddr::from(([127, 0, 0, 2], a.addr.port()));
        if let Ok(b) = Member::start_on(b_addr, "b").await {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test]
async fn dns_answer_changing_from_a_to_b_moves_new_sessions_while_the_session_on_a_lives_on() {
    let (a, b) = member_pair().await;
    let port = a.addr.port();
    let dns = TestDns::start("app.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 1).await;
    let extra = format!(
        "[dns]\nname_servers = [\"{}\"]\nmin_ttl = \"50ms\"\nmax_ttl = \"100ms\"\n",
        dns.addr
    );
    let sidecar = start(
        &Setup {
            members: vec![format!("app.test:{port}")],
            extra: &extra,
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    // Resolved before the listeners accepted anything.
    let status = backends(admin).await;
    let m = member(&status, "app", a.addr);
    assert_eq!(m["configured_as"], format!("app.test:{port}"));
    assert_eq!(m["in_rotation"], true);

    let mut on_a = connect_ws(listener, "/ws", &[]).await;
    assert_eq!(whoami(&mut on_a).await, "a");

    dns.set(&[Ipv4Addr::new(127, 0, 0, 2)], 1);
    wait_for(admin, "the name moved to B", |s| {
        state(s, "app", b.addr) == "healthy" && state(s, "app", a.addr) == "absent"
    })
    .await;
    let mut on_b = connect_ws(listener, "/ws", &[]).await;
    assert_eq!(whoami(&mut on_b).await, "b");
    // The session on A was not cut.
    assert_eq!(whoami(&mut on_a).await, "a");
    assert_eq!(a.live_sessions.load(Ordering::SeqCst), 1);

    // Resolution failures keep the last good set.
    dns.fail();
    let asked = dns.queries();
    within("two failed re-resolutions", async {
        while dns.queries() < asked + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let status = backends(admin).await;
    assert_eq!(state(&status, "app", b.addr), "healthy", "{status:#}");
    assert_eq!(names(listener, 2).await, ["b", "b"]);
    within("close", on_a.close(None)).await.unwrap();
    within("close", on_b.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn passive_ejection_removes_a_refusing_member_before_its_probe_notices() {
    let mut a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a), addr_of(&b)],
            pool: "load_balancing = \"round_robin\"\npassive = { failures = 2, ejection = \"300ms\", max_ejection = \"5s\" }",
            // Probed once at start, then not again for half a minute.
            probe: Some("path = \"/health\"\ninterval = \"30s\"\ntimeout = \"2s\""),
            // Retries off: each refused connect reaches the client as a 502 the test counts.
            settings: "retries = 0",
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let listener = sidecar.addr("public");
    all_healthy(admin, &[&a, &b]).await;
    a.kill();

    let mut lengths = Vec::new();
    for round in 1..=2 {
        // Round robin sends every other request to a: two refused connects eject it.
        let mut failures = 0;
        let status = loop {
            let (code, body) = within("GET", get(listener, "/", "")).await;
            match code {
                200 => assert_eq!(body, "b"),
                502 => failures += 1,
                other => panic!("unexpected {other}: {body}"),
            }
            let status = backends(admin).await;
            if state(&status, "app", a.addr) == "ejected" {
                break status;
            }
            assert!(failures <= 4, "a not ejected after {failures} failures");
        };
        assert_eq!(
            failures, 2,
            "ejected after exactly passive.failures failures"
        );
        let m = member(&status, "app", a.addr);
        // The probe has not noticed: its last result is still the success at start-up.
        assert_eq!(m["last_probe"]["ok"], true, "{m:#}");
        assert_eq!(m["consecutive_failures"], 0);
        assert_eq!(m["passive"]["ejections"], round);
        let error = m["passive"]["last_error"].as_str().unwrap();
        assert!(error.contains("could not connect to backend"), "{error}");
        lengths.push(m["passive"]["ejection_ms"].as_u64().unwrap());
        assert!(names(listener, 6).await.iter().all(|n| n == "b"));
        // The ejection ends on its own; the member is back in rotation (and fails again).
        wait_for(admin, "ejection over", |s| {
            state(s, "app", a.addr) == "healthy"
        })
        .await;
    }
    assert_eq!(lengths, [300, 600], "the second ejection doubles");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn backends_endpoint_shows_every_pool_and_member() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let extra = format!(
        "[backend_pools.spare]\nmembers = [\"{} weight=3\"]\nload_balancing = \"round_robin\"\n",
        b.addr
    );
    let sidecar = start(
        &Setup {
            members: vec![addr_of(&a)],
            probe: Some(FAST_PROBE),
            extra: &extra,
            ..Setup::default()
        }
        .toml(),
    );
    let admin = sidecar.admin_addr();
    let status = all_healthy(admin, &[&a]).await;
    assert!(status["generation"].as_u64().unwrap() >= 2);
    let pools = status["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2);
    let app = &pools[0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["load_balancing"], "least_connections");
    assert_eq!(app["probe"], "health");
    assert_eq!(app["passive_failures"], 5);
    assert_eq!(app["in_rotation"], 1);
    let m = &app["members"][0];
    assert_eq!(m["address"], a.addr.to_string());
    assert_eq!(m["configured_as"], a.addr.to_string());
    assert_eq!(m["weight"], 1);
    assert_eq!(m["state"], "healthy");
    assert_eq!(m["in_rotation"], true);
    assert_eq!(m["live_sessions"], 0);
    assert_eq!(m["in_flight_requests"], 0);
    assert_eq!(m["last_probe"]["ok"], true);
    assert_eq!(m["last_probe"]["result"], "status 200");
    assert!(m["last_probe"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(m["last_probe"]["ago_ms"].is_u64());
    assert!(m["consecutive_successes"].as_u64().unwrap() >= 1);
    assert_eq!(m["consecutive_failures"], 0);
    assert_eq!(m["passive"]["consecutive_failures"], 0);
    assert_eq!(m["passive"]["ejections"], 0);
    assert!(m["passive"]["ejected_for_ms"].is_null());
    // A pool without a probe: always in rotation, never probed.
    let spare = &pools[1];
    assert_eq!(spare["probe"], Value::Null);
    let m = &spare["members"][0];
    assert_eq!(
        (m["state"].as_str(), m["weight"].as_u64()),
        (Some("healthy"), Some(3))
    );
    assert_eq!(m["configured_as"], format!("{} weight=3", b.addr));
    assert!(m["last_probe"].is_null());

    let other = within(
        "GET /other",
        tether_integration_tests::raw::send(
            admin,
            b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(other.status, 404);
    let post = within(
        "POST /backends",
        tether_integration_tests::raw::send(
            admin,
            b"POST /backends HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(post.status, 405);
    within("stop", sidecar.stop()).await.unwrap();
}
