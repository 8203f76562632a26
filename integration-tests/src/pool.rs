//! Backend-pool test kit: members whose health the test steers, an admin client for
//! `GET /backends`, and an in-process DNS server whose answer the test changes.
//!
//! Everything is real: members are hyper HTTP/1.1 servers that upgrade to tungstenite
//! WebSockets, and the DNS server answers real UDP queries on 127.0.0.1, so the sidecar's
//! hickory resolver talks to it exactly as it would to any name server.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::{raw, STEP_LIMIT};

/// What a member's health endpoint does, steered by the test.
#[derive(Debug)]
pub struct HealthControl {
    /// The status `GET /health` answers when no scripted status is queued.
    status: AtomicU16,
    /// Statuses answered first, one per probe, before `status` applies again.
    script: Mutex<VecDeque<u16>>,
    /// When set, `GET /health` never answers.
    hang: AtomicBool,
    /// When set, WebSocket handshakes get `200 OK` instead of `101`.
    refuse_upgrades: AtomicBool,
    /// Every status `GET /health` answered, in order.
    served: Mutex<Vec<u16>>,
}

impl HealthControl {
    /// `GET /health` answers `status` from now on (after any scripted statuses).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The next probes get these statuses, one each, then the set status applies again.
    pub fn script(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    /// `GET /health` hangs (never answers) while `hang` is true.
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    /// WebSocket handshakes are answered `200 OK` while `refuse` is true.
    pub fn refuse_upgrades(&self, refuse: bool) {
        self.refuse_upgrades.store(refuse, Ordering::SeqCst);
    }

    /// Every status `GET /health` answered so far.
    pub fn served(&self) -> Vec<u16> {
        self.served.lock().unwrap().clone()
    }

    fn next_status(&self) -> u16 {
        let status = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.status.load(Ordering::SeqCst));
        self.served.lock().unwrap().push(status);
        status
    }
}

/// A pool member: `GET /health` as the test steers it, `GET /*` answers the member's name,
/// and WebSocket upgrades on any path become tungstenite echo sessions that answer the text
/// `whoami` with the name. Dropping it (or [`Member::kill`]) closes the port and every
/// connection at once.
pub struct Member {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, as its answers carry it.
    pub name: String,
    /// Its health endpoint.
    pub health: Arc<HealthControl>,
    /// WebSocket sessions open on it now.
    pub live_sessions: Arc<AtomicUsize>,
    /// WebSocket sessions it accepted in total.
    pub sessions: Arc<AtomicUsize>,
    /// Plain requests (other than `/health`) it answered.
    pub requests: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Member {
    /// A member on `127.0.0.1:0`.
    pub async fn start(name: &str) -> Member {
        Member::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name)
            .await
            .expect("bind member")
    }

    /// A member on `addr` (fails if the address is taken).
    pub async fn start_on(addr: SocketAddr, name: &str) -> std::io::Result<Member> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = MemberState {
            name: name.to_string(),
            health: Arc::new(HealthControl {
                status: AtomicU16::new(200),
                script: Mutex::new(VecDeque::new()),
                hang: AtomicBool::new(false),
                refuse_upgrades: AtomicBool::new(false),
                served: Mutex::new(Vec::new()),
            }),
            live_sessions: Arc::default(),
            sessions: Arc::default(),
            requests: Arc::default(),
        };
        let mut member = Member {
            addr,
            name: name.to_string(),
            health: state.health.clone(),
            live_sessions: state.live_sessions.clone(),
            sessions: state.sessions.clone(),
            requests: state.requests.clone(),
            task: None,
        };
        let task = tokio::spawn(async move {
            // Connections live in the set: aborting the accept task aborts them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { return };
                        let state = state.clone();
                        connections.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.serve(req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        member.task = Some(task);
        Ok(member)
    }

    /// Kills the member outright: the port closes (connects are refused) and every open
    /// connection, sessions included, is dropped.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone)]
struct MemberState {
    name: String,
    health: Arc<HealthControl>,
    live_sessions: Arc<AtomicUsize>,
    sessions: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// Counts one live session while alive.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MemberState {
    async fn serve(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if upgrade {
            if self.health.refuse_upgrades.load(Ordering::SeqCst) {
                return text(StatusCode::OK, "not a websocket endpoint");
            }
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
                return text(StatusCode::BAD_REQUEST, "no key");
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let state = self.clone();
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                state.sessions.fetch_add(1, Ordering::SeqCst);
                state.live_sessions.fetch_add(1, Ordering::SeqCst);
                let _live = Live(state.live_sessions.clone());
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        WsMessage::Text(t) if t.as_str() == "whoami" => {
                            WsMessage::text(state.name.clone())
                        }
                        m @ (WsMessage::Text(_) | WsMessage::Binary(_)) => m,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
            );
            return resp;
        }
        if req.uri().path() == "/health" {
            if self.health.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let status = self.health.next_status();
            let body = if status == 200 { "ok" } else { "failing" };
            return text(StatusCode::from_u16(status).unwrap(), body);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        text(StatusCode::OK, &self.name)
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}

/// `GET /backends` from the admin endpoint at `admin`, parsed.
pub async fn backends(admin: SocketAddr) -> Value {
    let resp = raw::send(
        admin,
        b"GET /backends HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "GET /backends: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    serde_json::from_slice(&resp.body).expect("GET /backends is JSON")
}

/// Polls `GET /backends` until `done` holds (bounded by [`STEP_LIMIT`]) and returns that answer.
/// Polling an observable state is the synchronization; the short pause between polls only
/// keeps the loop from spinning.
pub async fn wait_for(admin: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let status = backends(admin).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {STEP_LIMIT:?}; last GET /backends:\n{status:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The member at `addr` of pool `pool` in a `GET /backends` answer.
pub fn member<'v>(status: &'v Value, pool: &str, addr: SocketAddr) -> &'v Value {
    let pool = status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        .unwrap_or_else(|| panic!("no pool {pool} in {status:#}"));
    pool["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["address"] == addr.to_string()))
        .unwrap_or(&Value::Null)
}

/// The `state` of a member (`healthy`, `unhealthy`, `unknown`, `ejected`), or `absent`.
pub fn state(status: &Value, pool: &str, addr: SocketAddr) -> String {
    member(status, pool, addr)["state"]
        .as_str()
        .unwrap_or("absent")
        .to_string()
}

/// One plain `GET path` through the sidecar on a fresh connection: status and body.
pub async fn get(listener: SocketAddr, path: &str, extra_headers: &str) -> (u16, String) {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{extra_headers}\r\n");
    let resp = raw::send(listener, req.as_bytes()).await;
    (resp.status, resp.text())
}

/// What the test DNS server answers for its name.
#[derive(Debug, Clone)]
enum Answer {
    /// A records with this TTL.
    Addresses(Vec<Ipv4Addr>, u32),
    /// `SERVFAIL`.
    Fail,
}

/// A DNS server on 127.0.0.1 (UDP) that answers A queries for one name with addresses the
/// test sets, and everything else with an empty answer. It counts the A queries it answered.
pub struct TestDns {
    /// Where it listens.
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Serves `name` (e.g. `app.test.`) with `addrs` and `ttl` seconds.
    pub async fn start(name: &str, addrs: &[Ipv4Addr], ttl: u32) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Addresses(addrs.to_vec(), ttl)));
        let queries = Arc::new(AtomicUsize::new(0));
        let name = Name::from_ascii(name).expect("dns name");
        let task = {
            let answer = answer.clone();
            let queries = queries.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    let Ok(request) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let mut reply =
                        Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
                    reply.metadata.recursion_desired = request.metadata.recursion_desired;
                    reply.metadata.recursion_available = true;
                    reply.metadata.authoritative = true;
                    reply.queries = request.queries.clone();
                    if let Some(q) = request.queries.first() {
                        let ours = q.name().to_lowercase() == name.to_lowercase();
                        if ours && q.query_type() == RecordType::A {
                            queries.fetch_add(1, Ordering::SeqCst);
                            let current = answer.lock().unwrap().clone();
                            match current {
                                Answer::Addresses(ips, ttl) => {
                                    for ip in ips {
                                        reply.answers.push(Record::from_rdata(
                                            q.name().clone(),
                                            ttl,
                                            RData::A(A(ip)),
                                        ));
                                    }
                                }
                                Answer::Fail => {
                                    reply.metadata.response_code = ResponseCode::ServFail;
                                }
                            }
                        } else if !ours {
                            reply.metadata.response_code = ResponseCode::NXDomain;
                        }
                    }
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                }
            })
        };
        TestDns {
            addr,
            answer,
            queries,
            task,
        }
    }

    /// Answers with `addrs` from now on.
    pub fn set(&self, addrs: &[Ipv4Addr], ttl: u32) {
        *self.answer.lock().unwrap() = Answer::Addresses(addrs.to_vec(), ttl);
    }

    /// Answers `SERVFAIL` from now on.
    pub fn fail(&self) {
        *self.answer.lock().unwrap() = Answer::Fail;
    }

    /// A queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
