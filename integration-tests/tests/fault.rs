//! Whose fault: a client's malformed, abandoned or slow request body is answered 400, closed
//! silently or answered 408, and never counts against the backend member; a member that
//! refuses connections, or resets an idempotent request before answering, costs the client
//! nothing when another member is in rotation (retries), and the retries are counted.
//!
//! Raw sockets wherever the bytes matter. Nothing sleeps to synchronize: each step waits for a
//! response, a closed socket or a state on the admin endpoint, under a bounded deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tether_integration_tests::pool::{backends, get, member, Member};
use tether_integration_tests::raw::{self, RawResponse};
use tether_integration_tests::{closed_port, metrics, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A one-pool configuration over `members` (round robin, no probe). `listener`, `pool` and
/// `settings` are extra keys of `[listeners.public]`, `[backend_pools.app]` and
/// `[backend_settings.app]`.
fn toml(members: &[SocketAddr], listener: &str, pool: &str, settings: &str) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"workers = 2
shutdown_grace = "5s"
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"
{listener}

[backend_pools.app]
members = [{members}]
load_balancing = "round_robin"
{pool}

[backend_settings.app]
connect_timeout = "2s"
{settings}

[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"

[routing_rules.app.websocket]
keepalive_interval = "0s"
"#,
        members = members.join(", ")
    )
}

/// A backend that reads every request body to its end before answering `got N` (N = the body's
/// length), as an upload endpoint does. Counts the bodies it read in full.
struct Uploads {
    addr: SocketAddr,
    complete: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Uploads {
    async fn start() -> Uploads {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let complete = Arc::new(AtomicUsize::new(0));
        let counted = complete.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let counted = counted.clone();
                        async move {
                            let body = req.into_body().collect().await;
                            let text = match body {
                                Ok(body) => {
                                    counted.fetch_add(1, Ordering::SeqCst);
                                    format!("got {}", body.to_bytes().len())
                                }
                                Err(e) => format!("body failed: {e}"),
                            };
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Uploads {
            addr,
            complete,
            task,
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a misbehaving backend does once it has read a request head.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Closes the connection without a byte of response.
    Close,
    /// Sends the start of a response head, then closes.
    PartialHead,
}

/// A raw backend that reads each request head, then misbehaves; counts the heads it read.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Scripted {
    async fn start(how: Misbehaviour) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(AtomicUsize::new(0));
        let counted = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    if let Misbehaviour::PartialHead = how {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                    }
                    // Dropped: the connection closes.
                });
            }
        });
        Scripted { addr, heads, task }
    }

    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `request` and reads until the sidecar closes the connection (a reset after some
/// bytes still returns those bytes).
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    read_all(&mut stream).await
}

async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// The pool `app`'s only member's passive-health view on `GET /backends`.
fn passive(status: &Value, addr: SocketAddr) -> (String, u64, u64) {
    let m = member(status, "app", addr);
    (
        m["state"].as_str().unwrap_or("absent").to_string(),
        m["passive"]["consecutive_failures"]
            .as_u64()
            .unwrap_or(u64::MAX),
        m["passive"]["ejections"].as_u64().unwrap_or(u64::MAX),
    )
}

fn retries(m: &HashMap<String, f64>, reason: &str) -> f64 {
    m.get(&format!(
        "tether_backend_retries_total{{reason=\"{reason}\"}}"
    ))
    .copied()
    .unwrap_or(-1.0)
}

/// Access-log lines (`tether::access`) written by sidecars in this test process.
fn access_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tether::access=info"))
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MALFORMED: [(&str, &[u8]); 5] = [
    (
        "chunk size overflow",
        b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "17-digit chunk size",
        b"10000000000000000\r\nhello\r\n0\r\n\r\n",
    ),
    ("bare LF after the chunk size", b"5\nhello\r\n0\r\n\r\n"),
    ("bare LF after the chunk data", b"5\r\nhello\n0\r\n\r\n"),
    ("chunk size not hex", b"zz\r\nhello\r\n0\r\n\r\n"),
];

#[tokio::test]
async fn malformed_and_abandoned_request_bodies_are_the_clients_fault_not_the_members() {
    tether_integration_tests::init_logs();
    let backend = Uploads::start().await;
    // Three counted failures would eject the member for a minute.
    let sidecar = start(&toml(
        &[backend.addr],
        "",
        "passive = { failures = 3, ejection = \"1m\" }",
        "",
    ));
    let listener = sidecar.addr("public");
    let admin = sidecar.admin_addr();

    for (case, body) in MALFORMED {
        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let resp = raw::parse(&within(case, exchange(listener, &request)).await);
        assert_eq!(resp.status, 400, "{case}: {}", resp.text());
        assert!(
            resp.text().contains("malformed request body"),
            "{case}: {}",
            resp.text()
        );
        assert_eq!(resp.header("connection"), Some("close"), "{case}");
    }

    // Uploads abandoned mid-body: 10 of 1000 bytes, then the client goes. Nobody is left to
    // answer: the connection closes without a response (which is also how the test knows the
    // sidecar is done with it).
    for i in 0..5 {
        let mut stream = TcpStream::connect(listener).await.unwrap();
        stream
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\n0123456789",
            )
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let answer = within("closed without an answer", read_all(&mut stream)).await;
        assert!(
            answer.is_empty(),
            "abandoned upload {i} was answered: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    let status = backends(admin).await;
    let (state, failures, ejections) = passive(&status, backend.addr);
    assert_eq!(state, "healthy", "{status:#}");
    assert_eq!((failures, ejections), (0, 0), "{status:#}");
    let resp = raw::send(
        listener,
        b"POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((resp.status, resp.text()), (200, "got 5".to_string()));
    assert_eq!(within("GET", get(listener, "/", "")).await.0, 200);
    let status = backends(admin).await;
    assert_eq!(
        passive(&status, backend.addr),
        ("healthy".into(), 0, 0),
        "{status:#}"
    );
    assert_eq!(
        backend.complete.load(Ordering::SeqCst),
        2,
        "only the good bodies completed"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

/// Sends a head announcing 100 body bytes and 10 of them, then waits (writing nothing more,
/// keeping the connection open) for the sidecar's answer.
async fn stalled_upload(listener: SocketAddr) -> (RawResponse, TcpStream) {
    let mut stream = TcpStream::connect(listener).await.unwrap();
    stream
        .write_all(b"PUT /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let head = within("answer to a stalled upload", raw::read_head(&mut stream)).await;
    (head, stream)
}

#[tokio::test]
async fn a_stalled_upload_gets_408_after_request_body_timeout_and_the_member_stays_in_rotation() {
    tether_integration_tests::init_logs();
    let backend = Uploads::start().await;
    // One counted failure would eject the member.
    let sidecar = start(&toml(
        &[backend.addr],
        "request_body_timeout = \"500ms\"",
        "passive = { failures = 1, ejection = \"1m\" }",
        "",
    ));
    let listener = sidecar.addr("public");
    // A slow but steady upload is not cut: one byte every 100ms for 1s in all, each gap well
    // inside the 500ms allowed between two reads. (The pauses pace the client; they synchronize
    // nothing.)
    let mut stream = TcpStream::connect(listener).await.unwrap();
    stream
        .write_all(
            b"PUT /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 10\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
    for byte in b"0123456789" {
        pace.tick().await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let resp = raw::parse(&within("steady upload", read_all(&mut stream)).await);
    assert_eq!((resp.status, resp.text()), (200, "got 10".to_string()));

    let (head, mut stream) = stalled_upload(listener).await;
    assert_eq!(head.status, 408);
    assert_eq!(head.header("connection"), Some("close"));
    let rest = within("connection closed after the 408", read_all(&mut stream)).await;
    assert!(
        String::from_utf8_lossy(&rest).contains("no request body data within"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(
        passive(&status, backend.addr),
        ("healthy".into(), 0, 0),
        "{status:#}"
    );
    let resp = raw::send(
        listener,
        b"PUT /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((resp.status, resp.text()), (200, "got 5".to_string()));
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn an_upload_still_incomplete_at_the_backends_request_timeout_is_408_not_a_backend_failure() {
    tether_integration_tests::init_logs();
    let backend = Uploads::start().await;
    // The backend waits for the body it was promised; the client never sends it. The
    // request_timeout (500ms) runs out long before request_body_timeout (default 60s).
    let sidecar = start(&toml(
        &[backend.addr],
        "",
        "passive = { failures = 1, ejection = \"1m\" }",
        "request_timeout = \"500ms\"",
    ));
    let listener = sidecar.addr("public");
    let (head, _stream) = stalled_upload(listener).await;
    assert_eq!(head.status, 408, "the client was the slow side");
    assert_eq!(head.header("connection"), Some("close"));
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(
        passive(&status, backend.addr),
        ("healthy".into(), 0, 0),
        "{status:#}"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn round_robin_over_a_live_and_a_refusing_member_answers_every_request_and_upgrade() {
    let log = access_log().clone();
    let dead = closed_port();
    let live = Member::start("live").await;
    // Passive health counts, but far from ejecting: every request below meets the dead member.
    let sidecar = start(&toml(
        &[dead, live.addr],
        "",
        "passive = { failures = 100 }",
        "",
    ));
    let listener = sidecar.addr("public");
    let admin = sidecar.admin_addr();
    for i in 0..10 {
        let (status, body) = within("GET", get(listener, "/", "")).await;
        assert_eq!((status, body.as_str()), (200, "live"), "request {i}");
    }
    // A body that was never sent anywhere goes to the other member whole.
    for i in 0..2 {
        let resp = raw::send(
            listener,
            b"POST /form HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(
            (resp.status, resp.text()),
            (200, "live".to_string()),
            "POST {i}"
        );
    }
    // WebSocket upgrades that fail to connect go elsewhere too.
    for i in 0..4 {
        let url = format!("ws://{listener}/ws");
        let (mut ws, resp) = within("upgrade", tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|e| panic!("upgrade {i}: {e}"));
        assert_eq!(resp.status(), 101);
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::text("whoami")).await.unwrap();
        let name = within("whoami", ws.next()).await.unwrap().unwrap();
        assert_eq!(name, Message::text("live"));
        within("close", ws.close(None)).await.unwrap();
    }
    // Sequential requests alternate their first pick: every other one met the dead member.
    let m = metrics(admin).await;
    assert_eq!(retries(&m, "connect"), 8.0, "{m:?}");
    assert_eq!(retries(&m, "reset"), 0.0, "{m:?}");
    // Each failed attempt counted against the dead member, and only against it.
    let status = backends(admin).await;
    assert_eq!(passive(&status, dead).1, 8, "{status:#}");
    assert_eq!(passive(&status, live.addr).1, 0, "{status:#}");
    assert_eq!(live.requests.load(Ordering::SeqCst), 12);
    within("stop", sidecar.stop()).await.unwrap();
    // The access log shows the retry of each request that needed one.
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("request")).collect();
    assert_eq!(lines.len(), 16, "{log}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("retries=1")).count(),
        8,
        "{log}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("retries=0")).count(),
        8,
        "{log}"
    );
}

#[tokio::test]
async fn retries_zero_relays_the_connect_failure() {
    let dead = closed_port();
    let live = Member::start("live").await;
    let sidecar = start(&toml(
        &[dead, live.addr],
        "",
        "passive = { failures = 0 }",
        "retries = 0",
    ));
    let listener = sidecar.addr("public");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(within("GET", get(listener, "/", "")).await.0);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 502, 502]);
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(retries(&m, "connect"), 0.0, "{m:?}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn an_idempotent_request_reset_before_any_response_byte_is_retried_once_and_a_post_is_not() {
    let resetter = Scripted::start(Misbehaviour::Close).await;
    let live = Member::start("live").await;
    let sidecar = start(&toml(
        &[resetter.addr, live.addr],
        "",
        "passive = { failures = 100 }",
        "",
    ));
    let listener = sidecar.addr("public");
    let admin = sidecar.admin_addr();
    // Two GETs: one meets the resetter first and is sent again to the live member.
    for _ in 0..2 {
        let (status, body) = within("GET", get(listener, "/", "")).await;
        assert_eq!((status, body.as_str()), (200, "live"));
    }
    assert_eq!(resetter.heads(), 1);
    let m = metrics(admin).await;
    assert_eq!(retries(&m, "reset"), 1.0, "{m:?}");
    // Two POSTs with a body: the one that met the resetter is not sent again.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = raw::send(
            listener,
            b"POST /form HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        statuses.push(resp.status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(resetter.heads(), 2);
    let m = metrics(admin).await;
    assert_eq!(retries(&m, "reset"), 1.0, "{m:?}");
    // Every attempt on the resetter counted against it.
    let status = backends(admin).await;
    assert_eq!(passive(&status, resetter.addr).1, 2, "{status:#}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_request_is_never_sent_again_after_response_bytes() {
    let partial = Scripted::start(Misbehaviour::PartialHead).await;
    let live = Member::start("live").await;
    let sidecar = start(&toml(
        &[partial.addr, live.addr],
        "",
        "passive = { failures = 100 }",
        "",
    ));
    let listener = sidecar.addr("public");
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(within("GET", get(listener, "/", "")).await.0);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(partial.heads(), 1);
    assert_eq!(live.requests.load(Ordering::SeqCst), 1);
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(retries(&m, "reset"), 0.0, "{m:?}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn spans_carry_the_retries_and_whose_fault_a_failure_was() {
    use tether_integration_tests::otlp::Receiver;
    let receiver = Receiver::start().await;
    let dead = closed_port();
    let live = Uploads::start().await;
    let toml = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"tether-under-test\"\n",
        toml(&[dead, live.addr], "", "passive = { failures = 0 }", ""),
        receiver.endpoint()
    );
    let sidecar = tether::Sidecar::start_traced(tether_integration_tests::config(&toml), &[])
        .expect("sidecar starts");
    let listener = sidecar.addr("public");
    // Two GETs: the one that met the dead member first was sent again.
    for _ in 0..2 {
        assert_eq!(within("GET", get(listener, "/", "")).await.0, 200);
    }
    let retried = within(
        "span of the retried request",
        receiver.wait_for("GET /*", |s| {
            s.kind == 2 && s.attributes.contains_key("tether.retries")
        }),
    )
    .await;
    assert_eq!(retried.attributes["tether.retries"], "1");
    assert_eq!(retried.attributes["http.response.status_code"], "200");
    // Its two attempts are two CLIENT spans: the dead member's without an answer, the live
    // member's with its 200.
    let attempt = |member: SocketAddr| {
        let parent = retried.span_id.clone();
        let port = member.port().to_string();
        receiver.wait_for("GET", move |s| {
            s.kind == 3
                && s.parent_span_id == parent
                && s.attributes.get("server.port") == Some(&port)
        })
    };
    let on_dead = within("attempt on the dead member", attempt(dead)).await;
    assert!(
        !on_dead.attributes.contains_key("http.response.status_code"),
        "{on_dead:#?}"
    );
    assert_eq!(on_dead.attributes["error.type"], "connect_failed");
    let on_live = within("attempt on the live member", attempt(live.addr)).await;
    assert_eq!(on_live.attributes["http.response.status_code"], "200");
    // A malformed body is the client's fault, and the span says so.
    let resp = raw::parse(
        &within(
            "malformed",
            exchange(
                listener,
                b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            ),
        )
        .await,
    );
    assert_eq!(resp.status, 400);
    let refused = within(
        "span of the malformed request",
        receiver.wait_for("POST /*", |s| s.kind == 2),
    )
    .await;
    assert_eq!(refused.attributes["tether.error.side"], "client");
    assert_eq!(refused.attributes["http.response.status_code"], "400");
    within("stop", sidecar.stop()).await.unwrap();
}
