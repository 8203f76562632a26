//! Deploys without stampedes and sessions that cannot be abused, against real sessions: a
//! drain spread over a window, a reconnect storm against `max_new_sessions_per_second`, a
//! client over its message rate, a client that reads nothing, and `max_session_age`.
//!
//! The two large tests (2,000 drained sessions, 5,000 upgrades) are bounded to run in about
//! 20 s and 10 s on a 2-core machine (debug build); they print their figures (`--no-capture`
//! shows them).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_integration_tests::{backends, config_toml, raw, start, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr) -> Client {
    let (ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("upgrade");
    ws
}

/// Reads until a close frame arrives, returning its code and reason.
async fn next_close(ws: &mut Client) -> (u16, String) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// `GET path` on the admin endpoint.
async fn admin_get(admin: SocketAddr, path: &str) -> raw::RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    raw::send(admin, req.as_bytes()).await
}

/// Polls `GET /sessions` until `done` holds (within the step limit).
async fn wait_sessions(admin: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    within("/sessions", async {
        loop {
            let v: Value = serde_json::from_slice(&admin_get(admin, "/sessions").await.body)
                .expect("JSON from /sessions");
            if done(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn quartiles(sorted: &[f64]) -> [f64; 3] {
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// 2,000 sessions drained at shutdown with `drain_spread = "10s"`: each gets 1001, and the
/// close frames arrive at a steady rate over the window (quartiles near 2.5 s, 5 s, 7.5 s)
/// instead of all at once; the whole drain fits in `shutdown_grace`, nothing forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_2000_sessions_spreads_its_close_frames_over_the_window() {
    const N: usize = 2000;
    let backend = backends::ws_echo().await;
    let toml = config_toml(
        backend.addr,
        "",
        "drain_spread = \"10s\"\ndrain_grace = \"12s\"\nkeepalive_interval = \"0s\"",
    )
    .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"15s\"");
    let sidecar = start(&toml);
    let addr = sidecar.addr("public");
    let admin = sidecar.admin_addr();
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(connect(addr).await);
    }
    wait_sessions(admin, |v| {
        v["live"].as_array().is_some_and(|l| l.len() == N)
    })
    .await;
    let started = Instant::now();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let close = next_close(&mut ws).await;
                let at = started.elapsed();
                // Let the library answer the close and see the end.
                while ws.next().await.is_some() {}
                (close, at)
            })
        })
        .collect();
    let stop = tokio::spawn(sidecar.stop());
    let mut at = Vec::with_capacity(N);
    for reader in readers {
        let (close, t) = within("a close within the spread", reader).await.unwrap();
        assert_eq!(close, (1001, "going away".into()));
        at.push(t.as_secs_f64());
    }
    let report = within("stop", stop).await.unwrap().unwrap();
    assert_eq!(report.forced, 0, "every session finished within the grace");
    at.sort_by(f64::total_cmp);
    // Times from the first close frame: the drain starts once the listeners have stopped
    // accepting, which takes a moment of its own after `stop` is called.
    let first = at[0];
    let from_first: Vec<f64> = at.iter().map(|t| t - first).collect();
    let [q1, q2, q3] = quartiles(&from_first);
    let mut histogram = [0usize; 12];
    for t in &from_first {
        histogram[(*t as usize).min(11)] += 1;
    }
    println!(
        "drain of {N} over 10 s: first close {first:.2} s after stop; from it: quartiles {q1:.2} / {q2:.2} / {q3:.2} s, last {:.2} s; closes per second: {histogram:?}",
        from_first[N - 1]
    );
    for (q, want) in [(q1, 2.5), (q2, 5.0), (q3, 7.5)] {
        assert!(
            (q - want).abs() < 0.75,
            "quartile {q:.2} s, expected about {want} s"
        );
    }
    assert!(from_first[N - 1] < 10.5, "the closes fit in the window");
    for (second, n) in histogram.iter().take(10).enumerate() {
        assert!(
            (100..=300).contains(n),
            "second {second} saw {n} closes: not a steady rate ({histogram:?})"
        );
    }
}

/// A reconnect storm of 5,000 upgrades against `max_new_sessions_per_second = 500`: the
/// admitted rate is within 10% of 500 a second, and every other upgrade gets `503` with a
/// `Retry-After` of 1 to 5 s, counted in the metrics; none waits in a queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_5000_upgrades_is_admitted_at_the_configured_rate() {
    const N: usize = 5000;
    const CONCURRENCY: usize = 50;
    const OFFERED_EVERY: Duration = Duration::from_millis(1);
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "max_new_sessions_per_second = 500\nnew_sessions_burst = 50",
    ));
    let addr = sidecar.addr("public");
    // Every connection is open first; then the handshakes arrive at 1,000 a second (twice the
    // limit) for 5 s, as reconnects after a deploy do. (A schedule of the load, not a wait for
    // anything: each task writes at its own instant.)
    let mut streams = Vec::with_capacity(N);
    for _ in 0..N / CONCURRENCY {
        let batch: Vec<_> = (0..CONCURRENCY)
            .map(|_| tokio::spawn(TcpStream::connect(addr)))
            .collect();
        for c in batch {
            streams.push(within("connect", c).await.unwrap().unwrap());
        }
    }
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            tokio::spawn(async move {
                tokio::time::sleep_until(started + OFFERED_EVERY * i as u32).await;
                stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
                let head = raw::read_head(&mut stream).await;
                let retry = head.header("retry-after").map(str::to_owned);
                (head.status, retry, started.elapsed())
            })
        })
        .collect();
    let mut all = Vec::with_capacity(N);
    for t in tasks {
        all.push(within("storm", t).await.unwrap());
    }
    // The storm lasts as long as Tether decides: until the last 503, answered at once (a
    // 101 also waits for the backend's handshake, which in a debug build lags behind).
    let elapsed = all
        .iter()
        .filter(|(s, _, _)| *s == 503)
        .map(|(_, _, at)| at.as_secs_f64())
        .fold(0.0, f64::max);
    let admitted: Vec<f64> = all
        .iter()
        .filter(|(s, _, _)| *s == 101)
        .map(|(_, _, at)| at.as_secs_f64())
        .collect();
    let refused = all.iter().filter(|(s, _, _)| *s == 503).count();
    assert_eq!(admitted.len() + refused, N, "only 101 or 503");
    for (status, retry, _) in &all {
        if *status == 503 {
            let secs: u64 = retry
                .as_deref()
                .expect("503 carries Retry-After")
                .parse()
                .unwrap();
            assert!((1..=5).contains(&secs), "Retry-After {secs}");
        }
    }
    // Past the burst of 50, the rate over the storm.
    let rate = (admitted.len() - 50) as f64 / elapsed;
    println!(
        "storm of {N} upgrades decided in {elapsed:.2} s: {} admitted ({rate:.0}/s past the burst), {refused} refused with 503",
        admitted.len()
    );
    assert!(elapsed > 4.5, "the storm lasted its 5 s");
    assert!((450.0..=550.0).contains(&rate), "admitted {rate:.0}/s");
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "tether_websocket_handshakes_total{{route=\"app\",outcome=\"rate_limited\"}} {refused}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "tether_upgrades_refused_total{{reason=\"rate_limit\"}} {refused}"
    )));
    within("stop", sidecar.stop()).await.unwrap();
}

/// A client over `max_messages_per_second` gets `1008` naming the limit, the backend `1001`,
/// and the session is recorded with the `message_rate` cause.
#[tokio::test]
async fn a_client_over_its_message_rate_gets_1008() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "max_messages_per_second = 5\nmessages_burst = 5",
    ));
    let mut ws = connect(sidecar.addr("public")).await;
    for i in 0..20 {
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
    }
    assert_eq!(
        within("close", next_close(&mut ws)).await,
        (1008, "message rate exceeded".into())
    );
    let closes = within("backend close", backend.record.wait_closes(1)).await;
    assert_eq!(closes[0], (1001, "going away".into()));
    let v = wait_sessions(sidecar.admin_addr(), |v| {
        v["recent_endings"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    let ended = &v["recent_endings"][0];
    assert_eq!(ended["cause"], "message_rate");
    assert_eq!(ended["tether_close_code"], 1008);
    let metrics = admin_get(sidecar.admin_addr(), "/metrics").await.text();
    assert!(metrics.contains(
        "tether_websocket_sessions_closed_total{route=\"app\",cause=\"message_rate\",code=\"1008\"} 1"
    ));
    within("stop", sidecar.stop()).await.unwrap();
}

/// A client within its rates is untouched by them.
#[tokio::test]
async fn a_client_within_its_message_rate_is_untouched() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "max_messages_per_second = 1000\nmax_bytes_per_second = \"1MiB\"",
    ));
    let mut ws = connect(sidecar.addr("public")).await;
    for i in 0..50 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        match within("echo", ws.next()).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("m{i}")),
            other => panic!("no echo: {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// A client that sends a large message and reads nothing of its echo fills its socket and the
/// 64 KiB Tether keeps for it; after `slow_consumer_timeout` the session ends as
/// `slow_consumer` (the backend gets 1001 `client too slow`), while another session on the
/// same backend goes on untouched.
#[tokio::test]
async fn a_client_that_reads_nothing_ends_as_slow_consumer_at_the_configured_time() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "slow_consumer_timeout = \"1s\"\nkeepalive_interval = \"0s\"",
    ));
    let addr = sidecar.addr("public");
    let admin = sidecar.admin_addr();
    let mut healthy = connect(addr).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(&raw::handshake("/ws", "")).await.unwrap();
    assert_eq!(within("101", raw::read_head(&mut slow)).await.status, 101);
    // One 4 MiB binary message; its echo is never read.
    let payload_len: u64 = 4 << 20;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&payload_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + payload_len as usize, 0x5a);
    within("send", slow.write_all(&frame)).await.unwrap();
    let sent = Instant::now();

    let v = within(
        "slow consumer ends",
        wait_sessions(admin, |v| {
            v["recent_endings"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        }),
    )
    .await;
    let took = sent.elapsed();
    let ended = &v["recent_endings"][0];
    assert_eq!(ended["cause"], "slow_consumer", "{v:#}");
    println!("slow consumer ended {took:?} after its echo began (timeout 1 s)");
    assert!(
        took >= Duration::from_secs(1),
        "not before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "at the timeout: {took:?}");
    let closes = within("backend close", backend.record.wait_closes(1)).await;
    assert_eq!(closes[0], (1001, "client too slow".into()));
    // The other session was never touched.
    healthy.send(Message::text("still here")).await.unwrap();
    match within("echo", healthy.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("the healthy session was touched: {other:?}"),
    }
    assert_eq!(v["live"].as_array().map(Vec::len), Some(1));
    healthy.close(None).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// `max_session_age = "2s"`: sessions opened together close with 1001 `max session age`
/// between 1.8 s and 2.2 s (±10% jitter), not all at the same moment.
#[tokio::test]
async fn max_session_age_closes_sessions_with_jitter() {
    const N: usize = 20;
    let backend = backends::ws_echo().await;
    let sidecar = start(&config_toml(
        backend.addr,
        "",
        "max_session_age = \"2s\"\nkeepalive_interval = \"0s\"",
    ));
    let addr = sidecar.addr("public");
    let opened = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(connect(addr).await);
    }
    let setup = opened.elapsed().as_secs_f64();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let close = next_close(&mut ws).await;
                (close, opened.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut at = Vec::new();
    for r in readers {
        let (close, t) = within("max age close", r).await.unwrap();
        assert_eq!(close, (1001, "max session age".into()));
        at.push(t);
    }
    at.sort_by(f64::total_cmp);
    println!(
        "max_session_age 2 s: closes from {:.3} s to {:.3} s",
        at[0],
        at[N - 1]
    );
    assert!(at[0] >= 1.8, "none before 1.8 s: {at:?}");
    assert!(
        at[N - 1] <= 2.2 + setup + 0.3,
        "none well after 2.2 s: {at:?}"
    );
    assert!(
        at[N - 1] - at[0] > 0.05,
        "jittered, not all at once: {at:?}"
    );
    let closes = within("backend closes", backend.record.wait_closes(N)).await;
    assert!(closes
        .iter()
        .all(|c| *c == (1001, "max session age".into())));
    within("stop", sidecar.stop()).await.unwrap();
}

/// `POST /backends/{pool}/{member}/drain?fraction=0.5&over=2s` (token-protected): half of the
/// member's sessions, the oldest, get 1001 `rebalance`, spread over the 2 s; the rest run on.
#[tokio::test]
async fn an_admin_drain_moves_a_fraction_of_a_members_sessions_over_a_window() {
    const N: usize = 10;
    let backend = backends::ws_echo().await;
    let toml = config_toml(backend.addr, "", "keepalive_interval = \"0s\"").replace(
        "admin = { bind = \"127.0.0.1:0\" }",
        "admin = { bind = \"127.0.0.1:0\", token = \"s3cret\" }",
    );
    let sidecar = start(&toml);
    let addr = sidecar.addr("public");
    let admin = sidecar.admin_addr();
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(connect(addr).await);
    }
    let path = format!("/backends/app/{}/drain?fraction=0.5&over=2s", backend.addr);
    let post = |auth: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n").into_bytes()
    };
    assert_eq!(
        raw::send(admin, &post("")).await.status,
        401,
        "token-protected"
    );
    let started = Instant::now();
    let resp = raw::send(admin, &post("Authorization: Bearer s3cret\r\n")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["sessions"], N / 2);
    // GET /sessions says when each picked session's close goes out.
    let sessions = raw::send(
        admin,
        b"GET /sessions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n",
    )
    .await;
    let v: Value = serde_json::from_slice(&sessions.body).unwrap();
    let scheduled: Vec<i64> = v["live"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["close_in_ms"].as_i64())
        .collect();
    assert_eq!(scheduled.len(), N / 2, "{v:#}");
    assert!(scheduled.iter().all(|ms| *ms <= 2000), "{scheduled:?}");
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let got = tokio::time::timeout(Duration::from_secs(4), next_close(&mut ws)).await;
                (got.ok(), started.elapsed().as_secs_f64(), ws)
            })
        })
        .collect();
    let mut closed = Vec::new();
    let mut open = Vec::new();
    for r in readers {
        match within("reader", r).await.unwrap() {
            (Some(close), at, _) => closed.push((close, at)),
            (None, _, ws) => open.push(ws),
        }
    }
    assert_eq!(closed.len(), N / 2);
    assert!(closed.iter().all(|(c, _)| *c == (1001, "rebalance".into())));
    let mut at: Vec<f64> = closed.iter().map(|(_, t)| *t).collect();
    at.sort_by(f64::total_cmp);
    println!("admin drain of 5 over 2 s: closes at {at:?}");
    assert!(
        at[N / 2 - 1] < 2.5 && at[N / 2 - 1] - at[0] > 0.5,
        "spread: {at:?}"
    );
    for ws in open.iter_mut() {
        ws.send(Message::text("still here")).await.unwrap();
        assert!(matches!(
            within("echo", ws.next()).await,
            Some(Ok(Message::Text(_)))
        ));
    }
    let bad = raw::send(
        admin,
        b"POST /backends/app/10.9.9.9:1/drain?fraction=0.5 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(bad.status, 404);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_client_arriving_during_the_drain_is_told_when_to_come_back() {
    let backend = backends::ws_echo().await;
    // The drain spreads its close frames over 3 s: the sessions outlive the shutdown signal.
    let sidecar = start(&config_toml(backend.addr, "", "drain_spread = \"3s\""));
    let addr = sidecar.addr("public");
    let mut sessions = Vec::new();
    for _ in 0..10 {
        sessions.push(connect(addr).await);
    }
    let late_client = async {
        // Until the shutdown has fired, an upgrade may still be served (101): it is let go and
        // tried again. Once it has, the answer is 503 with Retry-After, on a connection the
        // listener still accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "never answered 503 during the drain"
            );
            let mut stream = TcpStream::connect(addr)
                .await
                .expect("the listener still accepts during the drain");
            stream.write_all(&raw::handshake("/ws", "")).await.unwrap();
            let resp = within("answer", raw::read_head(&mut stream)).await;
            if resp.status == 503 {
                let retry: u64 = resp
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!((1..=5).contains(&retry), "Retry-After {retry}");
                return;
            }
            assert_eq!(resp.status, 101, "{}", resp.text());
            tokio::task::yield_now().await;
        }
    };
    let (stopped, ()) = tokio::join!(within("stop", sidecar.stop()), late_client);
    stopped.unwrap();
    for ws in &mut sessions {
        assert_eq!(within("close", next_close(ws)).await.0, 1001);
    }
}
