//! Hot reload without cutting sessions: routes and pools swapped under live sessions, invalid
//! configurations refused, removed routes drained, listeners added — against a real sidecar.
//! Reloads from files run the binary's own watcher ([`ConfigWatcher`]) over a real file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tether::reloader::{ConfigWatcher, ReloadTrigger};
use tether_config::Sources;

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

/// A sidecar started from a file, with the binary's file watcher polling it every `poll`.
struct Watched {
    sidecar: tether::Sidecar,
    trigger: ReloadTrigger,
    path: PathBuf,
}

fn start_watched(name: &str, extension: &str, text: &str, poll: Duration) -> Watched {
    let dir = std::env::temp_dir().join(format!("tether-watch-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("tether.{extension}"));
    std::fs::write(&path, text).unwrap();
    let sources = Sources {
        files: vec![path.clone()],
        env: Vec::new(),
    };
    // As the binary does: the watcher first, so it knows the file as it was loaded.
    let watcher = ConfigWatcher::new(sources.clone(), poll);
    let config = tether_config::load(&sources).expect("valid").config;
    let sidecar = tether::Sidecar::start(config).expect("start");
    let trigger = watcher.trigger();
    tokio::spawn(watcher.run(sidecar.reloads()));
    Watched {
        sidecar,
        trigger,
        path,
    }
}

/// `GET /status`'s `reloads` once at least `n` reloads were applied or refused.
async fn reloads_after(admin: SocketAddr, n: u64) -> serde_json::Value {
    reloads_when(admin, |applied, refused| applied + refused >= n).await
}

/// `GET /status`'s `reloads` once `done(applied, refused)` holds.
async fn reloads_when(admin: SocketAddr, done: impl Fn(u64, u64) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let reloads = admin_status(admin).await["reloads"].clone();
        let count = |key: &str| reloads[key].as_u64().unwrap();
        if done(count("applied"), count("refused")) {
            return reloads;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload outcome: {reloads}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `: > tether.toml` under a running sidecar: the watcher waits for the file to hold still,
/// reads it, and refuses it as empty (naming the file); every listener keeps serving, live and
/// new sessions included. The rewritten file is then applied.
#[tokio::test]
async fn truncating_the_watched_file_keeps_every_listener_serving() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let watched = start_watched(
        "truncate",
        "toml",
        &config(a.addr, b.addr, "one", false, ""),
        Duration::from_millis(20),
    );
    let (sidecar, admin) = (&watched.sidecar, watched.sidecar.admin_addr());
    let addr = sidecar.addr("public");
    let mut live = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut live).await, "a");

    std::fs::File::create(&watched.path).unwrap();
    let reloads = reloads_after(admin, 1).await;
    assert_eq!(reloads["applied"], 0, "{reloads}");
    assert_eq!(reloads["refused"], 1, "{reloads}");
    let reason = reloads["last_refusal"].as_str().unwrap();
    assert!(reason.contains("the file is empty"), "{reason}");
    assert!(
        reason.contains(&watched.path.display().to_string()),
        "{reason}"
    );
    assert_eq!(get(addr, "/app/x", "").await, (200, "a".to_owned()));
    assert_eq!(whoami(&mut live).await, "a", "the live session goes on");
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut fresh).await, "a");

    // The rewrite lands: applied once it holds still. (Should the write itself be slow, the
    // truncated state it starts with may be read and refused once more: no matter.)
    std::fs::write(&watched.path, config(a.addr, b.addr, "two", false, "")).unwrap();
    let reloads = reloads_when(admin, |applied, _| applied >= 1).await;
    assert_eq!(reloads["applied"], 1, "{reloads}");
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut fresh).await, "b");
    assert_eq!(whoami(&mut live).await, "a");
    drop((live, fresh));
    within("stop", watched.sidecar.stop()).await.unwrap();
}

/// A reload that removes every routing rule, or every listener, is refused unless the new
/// configuration says `allow_empty = true`; meanwhile the running configuration serves.
#[tokio::test]
async fn a_reload_that_removes_every_listener_or_route_is_refused_unless_allowed() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let sidecar = start(&config(a.addr, b.addr, "one", false, ""));
    let addr = sidecar.addr("public");
    let mut live = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut live).await, "a");

    let no_rules = "workers = 2\nadmin = { bind = \"127.0.0.1:0\" }\n\
                    [listeners.public]\nbind = \"127.0.0.1:0\"\n";
    let err = sidecar.reload_toml(no_rules).await.expect_err("no rules");
    assert!(err.contains("no routing rules"), "{err}");
    assert!(err.contains("allow_empty = true"), "{err}");
    assert!(err.ends_with("[inline]"), "{err}");
    let err = sidecar
        .reload_toml("workers = 2\nadmin = { bind = \"127.0.0.1:0\" }\n")
        .await
        .expect_err("no listeners");
    assert!(err.contains("no listeners"), "{err}");
    assert!(err.contains(r#"the running one has "public""#), "{err}");
    let reloads = admin_status(sidecar.admin_addr()).await["reloads"].clone();
    assert_eq!(reloads["refused"], 2, "{reloads}");
    assert_eq!(get(addr, "/app/x", "").await, (200, "a".to_owned()));
    assert_eq!(whoami(&mut live).await, "a");
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut fresh).await, "a");

    // Said explicitly: applied, the listener stays and routes nothing.
    sidecar
        .reload_toml(&format!("allow_empty = true\n{no_rules}"))
        .await
        .expect("allowed");
    let resp = raw::send(
        addr,
        b"GET /app/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 404);
    drop((live, fresh));
    within("stop", sidecar.stop()).await.unwrap();
}

/// The shape of [`config`]'s `one`-pool configuration in YAML.
fn yaml_config(a: SocketAddr) -> String {
    format!(
        r#"workers: 2
shutdown_grace: 3s
admin: {{ bind: "127.0.0.1:0" }}
listeners:
  public: {{ bind: "127.0.0.1:0" }}
backend_pools:
  one: {{ members: ["{a}"] }}
backend_settings:
  s: {{ connect_timeout: 5s }}
routing_rules:
  app: {{ listener: public, paths: ["/app/*"], backend_pool: one, backend_settings: s }}
"#
    )
}

/// A 1 KB "billion laughs" written over the YAML file and a SIGHUP (the watcher's trigger):
/// refused within a second or two, naming the file and the alias, without expanding it; the
/// running configuration keeps serving.
#[tokio::test]
async fn a_yaml_alias_bomb_reload_is_refused_quickly() {
    let a = Member::start("a").await;
    // Polls far apart: only the trigger reloads here.
    let watched = start_watched(
        "bomb",
        "yaml",
        &yaml_config(a.addr),
        Duration::from_secs(3600),
    );
    let (sidecar, admin) = (&watched.sidecar, watched.sidecar.admin_addr());
    let addr = sidecar.addr("public");
    let mut live = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut live).await, "a");

    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let items = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    assert!(bomb.len() < 1024);
    std::fs::write(&watched.path, &bomb).unwrap();
    let started = tokio::time::Instant::now();
    watched.trigger.fire();
    let reloads = tokio::time::timeout(Duration::from_secs(5), reloads_after(admin, 1))
        .await
        .expect("refused within 5 s");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reloads["refused"], 1, "{reloads}");
    let reason = reloads["last_refusal"].as_str().unwrap();
    assert!(reason.contains("alias"), "{reason}");
    assert!(
        reason.contains(&watched.path.display().to_string()),
        "{reason}"
    );
    assert_eq!(get(addr, "/app/x", "").await, (200, "a".to_owned()));
    assert_eq!(whoami(&mut live).await, "a");
    let mut fresh = connect(addr, "/app/ws").await;
    assert_eq!(whoami(&mut fresh).await, "a");
    drop((live, fresh));
    within("stop", watched.sidecar.stop()).await.unwrap();
}

/// The binary's watcher over a `--config-dir`: a file added to the directory is read by the
/// next reload a trigger (SIGHUP) asks for. The poll is an hour here, so only the trigger can
/// have read it.
#[tokio::test]
async fn a_trigger_reads_a_file_added_to_the_config_dir() {
    use tether::reloader::{expand, ConfigPath};
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let dir = std::env::temp_dir().join(format!("tether-watch-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("00-base.toml"),
        config(a.addr, b.addr, "one", false, ""),
    )
    .unwrap();
    let paths = vec![ConfigPath::Dir(dir.clone())];
    let watcher = ConfigWatcher::over(paths.clone(), Vec::new(), Duration::from_secs(3600))
        .expect("the directory has a file");
    let sources = Sources {
        files: expand(&paths).unwrap(),
        env: Vec::new(),
    };
    let config = tether_config::load(&sources).expect("valid").config;
    let sidecar = tether::Sidecar::start(config).expect("start");
    let trigger = watcher.trigger();
    tokio::spawn(watcher.run(sidecar.reloads()));
    let (addr, admin) = (sidecar.addr("public"), sidecar.admin_addr());
    assert_eq!(get(addr, "/extra/x", "").await.0, 404);

    std::fs::write(
        dir.join("10-extra.toml"),
        "[routing_rules.extra]\nlistener = \"public\"\npaths = [\"/extra/*\"]\n\
         backend_pool = \"two\"\nbackend_settings = \"s\"\n",
    )
    .unwrap();
    trigger.fire();
    let reloads = reloads_after(admin, 1).await;
    assert_eq!(reloads["applied"], 1, "{reloads}");
    assert_eq!(get(addr, "/extra/x", "").await, (200, "b".to_owned()));
    assert_eq!(get(addr, "/app/x", "").await, (200, "a".to_owned()));
    within("stop", sidecar.stop()).await.unwrap();
}
