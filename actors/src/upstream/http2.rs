//! Multiplexed HTTP/2 connections to backends (`protocol = "h2c"` or `"h2"`).
//!
//! Each worker keeps, per member and TLS configuration, a list of HTTP/2 client connections
//! (hyper's `client::conn::http2`, whose connection task runs on the worker's `LocalSet` through
//! [`LocalExec`]). A request takes a *stream slot* on the first connection with room — fewer
//! streams in flight than both the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2)
//! and [`MAX_STREAMS_PER_CONNECTION`] — and a new connection is opened only when every one is
//! full. Requests that find no connection while one is being opened wait for it rather than
//! opening their own, so a burst shares one connection.
//!
//! # Connection lifecycle
//!
//! ```text
//!   Opening ──handshake ok──▶ Open ──GOAWAY / error / ping timeout──▶ Closed (dropped)
//!      │                       ▲  │
//!      └──failed: the waiters  │  └── a stream slot per request, freed when its response
//!         fail with it (502)   │      body ends (or is dropped)
//!                              └───── slots free: the next request takes one
//! ```
//!
//! A closed connection (the backend sent GOAWAY and finished, the socket failed, a keep-alive
//! ping went unanswered) is dropped from the list the next time the list is looked at; streams
//! still running on it keep their own handle until they end. Flow control is h2's: a stream's
//! body is read from the client only as the backend's window allows, and the backend's body only
//! as fast as the client takes it (RFC 9113 §5.2), so nothing is buffered whole.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;

use super::{PoolKey, UpstreamBody, UpstreamTls};
use crate::error::ProxyError;

/// Our own cap on the streams one backend connection carries at a time, whatever the backend
/// allows: above it a new connection is opened, so one connection's head-of-line blocking (TCP
/// loss, a slow flow-control window) never holds more than this many requests. 100 is the
/// minimum RFC 9113 §6.5.2 recommends a peer allow, so every conforming backend accepts it.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// The largest response header list (RFC 9113 §6.5.2 `SETTINGS_MAX_HEADER_LIST_SIZE`, as
/// HPACK-decoded size) accepted from an HTTP/2 backend; a larger one fails the request with 502,
/// counted against the member. 64 KiB, as in Envoy's default: room for large cookies and
/// tokens, while a broken backend cannot make a worker hold megabytes of headers per stream.
pub const MAX_RESPONSE_HEADER_LIST: u32 = 64 * 1024;

/// How often an HTTP/2 backend connection is pinged, busy or idle, to find a dead peer that never
/// closed its socket (a host gone without a RST) before requests pile onto it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a keep-alive ping may wait for its answer before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Spawns hyper's HTTP/2 connection tasks on the current worker's `LocalSet`: the request
/// bodies are `!Send`, and a connection belongs to the worker that opened it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// The sending half of one HTTP/2 backend connection.
pub(super) type H2Sender = SendRequest<UpstreamBody>;

/// One HTTP/2 connection to a backend, as the pool keeps it.
#[derive(Debug, Clone)]
pub(super) struct H2Conn {
    /// Cloned per request: each clone opens streams on the same connection.
    pub(super) sender: H2Sender,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` as the connection task last saw it.
    peer_limit: Rc<Cell<usize>>,
    /// Streams in flight: requests whose response body has not ended.
    streams: Rc<Cell<usize>>,
}

impl H2Conn {
    /// Whether another stream fits: under the peer's advertised limit and ours.
    fn has_room(&self) -> bool {
        let limit = self.peer_limit.get().min(MAX_STREAMS_PER_CONNECTION);
        self.streams.get() < limit
    }

    /// Takes a stream slot on this connection.
    fn take_slot(&self) -> StreamSlot {
        self.streams.set(self.streams.get() + 1);
        StreamSlot {
            streams: self.streams.clone(),
        }
    }
}

/// A request's claim on one stream of an HTTP/2 connection, given back when dropped (when the
/// response body ends, fails or is abandoned).
#[derive(Debug)]
pub(super) struct StreamSlot {
    streams: Rc<Cell<usize>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.set(self.streams.get().saturating_sub(1));
    }
}

/// A worker's HTTP/2 backend connections, and the connections being opened right now.
#[derive(Debug, Default)]
pub(super) struct Multiplexed {
    conns: RefCell<HashMap<PoolKey, Vec<H2Conn>>>,
    opening: RefCell<HashMap<PoolKey, Rc<Opening>>>,
}

/// A connection being opened, which requests to the same member wait for.
#[derive(Debug, Default)]
struct Opening {
    /// Woken when the open ends, either way.
    done: Notify,
    /// The open ended without a connection.
    failed: Cell<bool>,
    /// Why, when the open itself failed: waiters fail with it at once (on a dead member nobody
    /// waits more than one `connect_timeout`). `None` when the request that started the open
    /// went away halfway: waiters then open their own connections.
    reason: RefCell<Option<String>>,
}

/// Removes the "opening" mark of a key and wakes its waiters, whether the open finished or the
/// request that started it was dropped halfway (then it counts as failed).
struct OpeningGuard<'a> {
    pool: &'a Multiplexed,
    key: PoolKey,
    opening: Rc<Opening>,
    succeeded: bool,
}

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        self.pool.opening.borrow_mut().remove(&self.key);
        self.opening.failed.set(!self.succeeded);
        self.opening.done.notify_waiters();
    }
}

impl Multiplexed {
    /// A connection with room for one more stream, and the slot taken on it: an open one, else
    /// the one being opened (waited for), else a new one. Closed connections are dropped on
    /// the way. `opened` is called for each connection opened; the bool is true when the
    /// connection was opened for this request.
    pub(super) async fn checkout(
        &self,
        key: PoolKey,
        tls: Option<&UpstreamTls>,
        sources: &[IpAddr],
        connect_timeout: Duration,
        opened: impl Fn(),
    ) -> Result<(H2Conn, StreamSlot, bool), ProxyError> {
        loop {
            if let Some(found) = self.find(key) {
                return Ok((found.0, found.1, false));
            }
            let pending = self.opening.borrow().get(&key).cloned();
            if let Some(pending) = pending {
                // Created before any other task runs, so the opener's `notify_waiters` wakes it.
                pending.done.notified().await;
                if !pending.failed.get() {
                    continue;
                }
                if let Some(reason) = pending.reason.borrow().as_deref() {
                    return Err(ProxyError::ConnectFailed {
                        backend: key.0,
                        cause: std::io::Error::other(format!(
                            "the connection this request waited for failed: {reason}"
                        )),
                    });
                }
                let conn = open(key.0, tls, sources, connect_timeout).await?;
                opened();
                return Ok(self.add(key, conn));
            }
            let opening = Rc::new(Opening::default());
            self.opening.borrow_mut().insert(key, opening.clone());
            let mut guard = OpeningGuard {
                pool: self,
                key,
                opening,
                succeeded: false,
            };
            let conn = match open(key.0, tls, sources, connect_timeout).await {
                Ok(conn) => conn,
                Err(e) => {
                    *guard.opening.reason.borrow_mut() = Some(e.to_string());
                    return Err(e);
                }
            };
            opened();
            let added = self.add(key, conn);
            guard.succeeded = true;
            return Ok(added);
        }
    }

    /// Keeps a new connection and takes the first stream slot on it.
    fn add(&self, key: PoolKey, conn: H2Conn) -> (H2Conn, StreamSlot, bool) {
        let slot = conn.take_slot();
        self.conns
            .borrow_mut()
            .entry(key)
            .or_default()
            .push(conn.clone());
        (conn, slot, true)
    }

    /// The first open connection of `key` with room, closed ones dropped.
    fn find(&self, key: PoolKey) -> Option<(H2Conn, StreamSlot)> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&key)?;
        list.retain(|c| !c.sender.is_closed());
        let conn = list.iter().find(|c| c.has_room())?;
        let slot = conn.take_slot();
        Some((conn.clone(), slot))
    }

    /// Open connections to `key` (for tests and metrics).
    #[cfg(test)]
    fn open_count(&self, key: PoolKey) -> usize {
        self.conns.borrow().get(&key).map_or(0, Vec::len)
    }
}

/// Connects (and for `h2`, completes TLS with ALPN `h2`) within `connect_timeout`, then sends
/// the HTTP/2 preface. A TLS backend that does not select `h2` is refused: speaking HTTP/2 to a
/// server that agreed to HTTP/1.1 would fail on the first frame, and a silent fallback would hide
/// a misconfiguration.
async fn open(
    backend: SocketAddr,
    tls: Option<&UpstreamTls>,
    sources: &[IpAddr],
    connect_timeout: Duration,
) -> Result<H2Conn, ProxyError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let stream = super::connect(backend, sources, connect_timeout).await?;
    let peer_limit = Rc::new(Cell::new(MAX_STREAMS_PER_CONNECTION));
    let sender = match tls {
        None => handshake(backend, TokioIo::new(stream), peer_limit.clone()).await?,
        Some(tls) => {
            let stream =
                super::connect_tls(backend, tls, stream, deadline, connect_timeout).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ProxyError::TlsFailed {
                    backend,
                    reason: "the backend did not select ALPN \"h2\"; protocol = \"h2\" never falls back to HTTP/1.1".into(),
                });
            }
            handshake(backend, TokioIo::new(stream), peer_limit.clone()).await?
        }
    };
    Ok(H2Conn {
        sender,
        peer_limit,
        streams: Rc::default(),
    })
}

/// The HTTP/2 client handshake over `io`; the connection task runs on this worker and
/// publishes the peer's stream limit into `peer_limit` after each poll (a read of h2's state,
/// no message).
async fn handshake<I>(
    backend: SocketAddr,
    io: I,
    peer_limit: Rc<Cell<usize>>,
) -> Result<H2Sender, ProxyError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .max_header_list_size(MAX_RESPONSE_HEADER_LIST)
        .handshake(io)
        .await
        .map_err(|cause| ProxyError::BackendFailed { backend, cause })?;
    tokio::task::spawn_local(async move {
        let mut conn = std::pin::pin!(conn);
        let ended = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            peer_limit.set(conn.as_ref().get_ref().current_max_send_streams());
            polled
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!(%backend, error = %e, "HTTP/2 backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// Whether the backend turned a stream away before processing it (RFC 9113 §8.7): it refused
/// the stream (`REFUSED_STREAM`) or sent GOAWAY with a last stream id below it. hyper reports
/// h2's error as the request's source. Treated like an HTTP/1.1 connection that closed before
/// any response byte: a bodyless idempotent request may go to another member.
pub(super) fn turned_away(err: &hyper::Error) -> bool {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stream slots count up and down, and a connection is full at the smaller of the two
    /// limits (ours here: the peer's initial limit is unbounded until its SETTINGS arrive).
    #[tokio::test(flavor = "current_thread")]
    async fn slots_fill_a_connection_then_free() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                // A server that answers the preface with its SETTINGS and then waits.
                tokio::task::spawn_local(async move {
                    let (sock, _) = listener.accept().await.unwrap();
                    let mut conn = h2::server::handshake(sock).await.unwrap();
                    while conn.accept().await.is_some() {}
                });
                let pool = Multiplexed::default();
                let key = (addr, 0);
                let opened = Cell::new(0);
                let mut slots = Vec::new();
                for _ in 0..MAX_STREAMS_PER_CONNECTION {
                    let (_, slot, _) = pool
                        .checkout(key, None, &[], Duration::from_secs(5), || {
                            opened.set(opened.get() + 1)
                        })
                        .await
                        .unwrap();
                    slots.push(slot);
                }
                assert_eq!((opened.get(), pool.open_count(key)), (1, 1));
                let (_, extra, fresh) = pool
                    .checkout(key, None, &[], Duration::from_secs(5), || {
                        opened.set(opened.get() + 1)
                    })
                    .await
                    .unwrap();
                assert!(fresh, "a full connection makes the pool open another");
                assert_eq!(pool.open_count(key), 2);
                drop(extra);
                slots.pop();
                let (_, _, fresh) = pool
                    .checkout(key, None, &[], Duration::from_secs(5), || {})
                    .await
                    .unwrap();
                assert!(!fresh, "a freed slot is reused");
            })
            .await;
    }

    /// Requests that find a connection being opened wait for it (one connection for a burst);
    /// when that open fails, the waiters fail with it, so on a member that never answers
    /// nobody waits more than one `connect_timeout`. Paused clock: the TLS handshake with a
    /// silent server ends exactly at the timeout.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_burst_shares_one_open_and_a_failed_open_does_not_queue_waiters() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::task::spawn_local(async move {
                    let (sock, _) = listener.accept().await.unwrap();
                    let mut conn = h2::server::handshake(sock).await.unwrap();
                    while conn.accept().await.is_some() {}
                });
                let pool = Rc::new(Multiplexed::default());
                let opened = Rc::new(Cell::new(0));
                let burst: Vec<_> = (0..10)
                    .map(|_| {
                        let (pool, opened) = (pool.clone(), opened.clone());
                        tokio::task::spawn_local(async move {
                            let key = (addr, 0);
                            let count = || opened.set(opened.get() + 1);
                            pool.checkout(key, None, &[], Duration::from_secs(5), count)
                                .await
                                .map(|(_, slot, _)| slot)
                        })
                    })
                    .collect();
                let mut slots = Vec::new();
                for call in burst {
                    slots.push(call.await.unwrap().unwrap());
                }
                assert_eq!((opened.get(), pool.open_count((addr, 0))), (1, 1));

                // A TCP peer that never answers the TLS handshake.
                let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let silent_addr = silent.local_addr().unwrap();
                tokio::task::spawn_local(async move {
                    let mut held = Vec::new();
                    while let Ok((sock, _)) = silent.accept().await {
                        held.push(sock);
                    }
                });
                let tls = UpstreamTls {
                    config: crate::tls::client_config(None, None).unwrap(),
                    server_name: rustls::pki_types::ServerName::try_from("backend.test").unwrap(),
                };
                let started = tokio::time::Instant::now();
                let waiters: Vec<_> = (0..5)
                    .map(|_| {
                        let (pool, tls) = (pool.clone(), tls.clone());
                        tokio::task::spawn_local(async move {
                            let key = (silent_addr, 1);
                            pool.checkout(key, Some(&tls), &[], Duration::from_secs(3), || {})
                                .await
                                .map(|_| ())
                        })
                    })
                    .collect();
                let mut reasons = Vec::new();
                for w in waiters {
                    reasons.push(w.await.unwrap().unwrap_err().to_string());
                }
                assert_eq!(started.elapsed(), Duration::from_secs(3));
                let waited = reasons
                    .iter()
                    .filter(|r| r.contains("waited for failed"))
                    .count();
                assert_eq!(waited, 4, "{reasons:#?}");
            })
            .await;
    }
}
