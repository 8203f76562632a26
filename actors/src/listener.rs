//! [`ListenerActor`]: owns one bound socket and its accept loop, and hands every accepted
//! connection to a worker.
//!
//! Workers are chosen round-robin. The hand-off is one `do_send` per *connection* (never per
//! request); the socket travels as a std socket because a tokio socket belongs to the runtime
//! that registered it.
//!
//! Limits ([`ConnectionLimit`]): with `max_connections` the accept loop stops accepting while
//! that many connections are open — new ones wait in the kernel's accept queue (backlog), so a
//! flood costs no memory here. A connection counts through a [`ConnectionGuard`] that travels in
//! [`Accepted`] and lives as long as the worker serves it; once it upgrades, the route table
//! holds a guard for the session instead. With `max_handshakes_per_ip`, a client IP with that
//! many connections still in their HTTP phase gets `429` on the next one, which is closed.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use actix::{Actor, AsyncContext, Context, Handler, Recipient, SpawnHandle, WrapFuture};
use tether_config::ListenerConfig;

use crate::messages::{Accepted, StopAccepting};
use crate::tls::ListenerTls;

/// What a worker needs to know about the listener a connection came from.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's name (routing rules refer to it).
    pub name: Arc<str>,
    /// The address it is bound to.
    pub local_addr: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// The listener's configuration (header limits, timeouts).
    pub config: ListenerConfig,
    /// An HTTPS listener's TLS (certificates by SNI, reloaded in place); `None` = plain HTTP.
    pub tls: Option<Arc<ListenerTls>>,
    /// `redirect_to`: the port of the https listener every request is redirected to.
    pub redirect_port: Option<u16>,
}

/// The connections open on one listener, and its limits (one atomic add and sub per
/// connection; the per-IP table is touched only when `max_handshakes_per_ip` is set).
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    inner: Arc<LimitInner>,
}

#[derive(Debug)]
struct LimitInner {
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    freed: Notify,
}

/// Counts one connection (or session) against its listener's [`ConnectionLimit`] until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    inner: Arc<LimitInner>,
    /// Set while the guard also counts against its IP's handshake limit.
    ip: Option<IpAddr>,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (`0` = none) and `per_ip` connections in their HTTP
    /// phase per client IP (`0` = none).
    pub fn new(max: usize, per_ip: usize) -> ConnectionLimit {
        ConnectionLimit {
            inner: Arc::new(LimitInner {
                max,
                per_ip,
                open: AtomicUsize::new(0),
                by_ip: Mutex::new(HashMap::new()),
                freed: Notify::new(),
            }),
        }
    }

    /// Connections (and sessions) counted now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Resolves once fewer than `max` are open (at once without a limit).
    pub async fn room(&self) {
        if self.inner.max == 0 {
            return;
        }
        loop {
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.open() < self.inner.max {
                return;
            }
            freed.await;
        }
    }

    /// Counts a new connection from `ip`; `None` when `ip` is at its handshake limit.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnectionGuard> {
        let ip = if self.inner.per_ip > 0 {
            let mut by_ip = self.inner.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = by_ip.entry(ip).or_default();
            if *n >= self.inner.per_ip {
                return None;
            }
            *n += 1;
            Some(ip)
        } else {
            None
        };
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        Some(ConnectionGuard {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Counts an upgraded session (no per-IP limit: only handshakes are limited per IP).
    pub fn session(&self) -> ConnectionGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            inner: self.inner.clone(),
            ip: None,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut by_ip = self.inner.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
        self.inner.freed.notify_waiters();
    }
}

/// What a client over its handshake limit gets before the connection is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 51\r\nConnection: close\r\n\r\ntoo many concurrent connections from your address\r\n";

/// How long a refused client gets to finish sending its request before the socket closes
/// (reading it avoids a reset that would lose the 429).
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// Answers 429 and closes: writes the answer, half-closes, and drains what the client sent for
/// at most [`REFUSE_LINGER`].
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        stream.write_all(TOO_MANY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Owns one listening socket.
pub struct ListenerActor {
    info: Arc<ListenerInfo>,
    socket: Option<std::net::TcpListener>,
    workers: Vec<Recipient<Accepted>>,
    accepted: Rc<Cell<u64>>,
    accept_loop: Option<SpawnHandle>,
    limit: ConnectionLimit,
}

impl ListenerActor {
    /// A listener over an already-bound, non-blocking socket, dispatching to `workers`.
    pub fn new(
        info: Arc<ListenerInfo>,
        socket: std::net::TcpListener,
        workers: Vec<Recipient<Accepted>>,
    ) -> ListenerActor {
        assert!(!workers.is_empty(), "a listener needs at least one worker");
        ListenerActor {
            info,
            socket: Some(socket),
            workers,
            accepted: Rc::new(Cell::new(0)),
            accept_loop: None,
            limit: ConnectionLimit::new(0, 0),
        }
    }

    /// Counts connections against `limit` (shared with the route table, which counts this
    /// listener's sessions against it too).
    pub fn with_limit(mut self, limit: ConnectionLimit) -> ListenerActor {
        self.limit = limit;
        self
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %self.info.name, error = %e, "cannot register listener");
                return;
            }
        };
        tracing::info!(
            listener = %self.info.name,
            addr = %self.info.local_addr,
            scheme = self.info.scheme,
            "listening"
        );
        let info = self.info.clone();
        let workers = self.workers.clone();
        let accepted = self.accepted.clone();
        let limit = self.limit.clone();
        let accept_loop = async move {
            let mut next = 0usize;
            loop {
                // At max_connections nothing is accepted: the kernel queues the rest.
                limit.room().await;
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        // Accepted while a session took the last place: held (not served)
                        // until there is room, so at most one connection waits here.
                        limit.room().await;
                        let Some(guard) = limit.admit(peer.ip()) else {
                            tracing::debug!(listener = %info.name, %peer, "handshake limit per IP reached: 429");
                            actix::spawn(refuse(stream));
                            continue;
                        };
                        let stream = match stream.into_std() {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "accepted socket lost before hand-off");
                                continue;
                            }
                        };
                        accepted.set(accepted.get() + 1);
                        workers[next % workers.len()].do_send(Accepted {
                            stream,
                            peer,
                            listener: info.clone(),
                            guard,
                        });
                        next = next.wrapping_add(1);
                    }
                    Err(e) => {
                        // EMFILE and friends: the connection stays in the backlog; back off
                        // briefly instead of spinning, then try again.
                        tracing::warn!(listener = %info.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        self.accept_loop = Some(ctx.spawn(accept_loop.into_actor(self)));
    }
}

impl Handler<StopAccepting> for ListenerActor {
    type Result = u64;

    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) -> u64 {
        if let Some(handle) = self.accept_loop.take() {
            // Cancelling the loop drops the tokio listener, which closes the socket.
            ctx.cancel_future(handle);
            tracing::info!(listener = %self.info.name, "stopped accepting");
        }
        self.accepted.get()
    }
}
