//! [`ListenerActor`]: one accept loop over a listening socket, on the thread of the worker it
//! feeds.
//!
//! Thread per core: every worker arbiter runs one `ListenerActor` per configured listener, each
//! over its own duplicate (`try_clone`, a `dup` of the descriptor) of the *same* bound socket.
//! An actor accepts on its worker's thread, registers the connection with that thread's runtime
//! once, and hands it to its own worker with `do_send` of [`Accepted`] — a push on a local
//! mailbox, with no wake-up of another thread and no `epoll_ctl` round trip to move the socket
//! between runtimes. The listener's name, address and [`ConnectionLimit`] are shared by its N
//! actors, so limits hold listener-wide.
//!
//! The trade-off: with N workers, all N threads have the socket in their epoll set, so a new
//! connection wakes every one of them; one wins `accept`, the others get `EAGAIN` (tokio just
//! waits for the next readiness). That costs N−1 spurious wake-ups per connection when the
//! workers are idle, none of them a hop, and spreads connections to whichever worker is free
//! first. `SO_REUSEPORT` would avoid the herd (the kernel hashes connections to one of N
//! sockets), but needs N separately bound sockets, balances by hash rather than by who is idle,
//! and when one of those sockets closes (a reload removing or moving a listener) the
//! connections queued in its backlog are reset instead of going to the others.
//!
//! Stopping ([`StopAccepting`]): each actor cancels its accept loop, which drops its tokio
//! listener and so its duplicate of the descriptor; the port closes when the last of the N is
//! dropped, so every actor of a listener must be stopped (nothing else keeps a duplicate).
//!
//! Limits ([`ConnectionLimit`]): with `max_connections` the accept loops stop accepting while
//! that many connections are open — new ones wait in the kernel's accept queue (backlog), so a
//! flood costs no memory here. Admission is one compare-and-swap, so N accept loops on N threads
//! never let more than `max_connections` in. A connection counts through a [`ConnectionGuard`]
//! that follows the connection: it travels in [`Accepted`], lives in the worker's connection
//! while HTTP is served on it, and on a `101` moves with the upgraded sockets into the session
//! ([`crate::session::SessionEnv`]), so the count is exact at every moment and is given back on
//! the thread that owns the connection. With `max_handshakes_per_ip`, a client IP with that many
//! connections still in their HTTP phase gets `429` on the next one, which is closed (an upgraded
//! connection stops counting against its IP: [`ConnectionGuard::into_session`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Recipient, WrapFuture};
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

/// Counts one connection against its listener's [`ConnectionLimit`] until dropped, or until it
/// becomes the [`SessionPlace`] of the WebSocket session the connection upgraded to.
#[derive(Debug)]
pub struct ConnectionGuard {
    /// `None` only once [`ConnectionGuard::into_session`] moved the count on.
    inner: Option<Arc<LimitInner>>,
    /// Set while the guard also counts against its IP's handshake limit.
    ip: Option<IpAddr>,
}

/// An upgraded connection's place in its listener's `max_connections`, held by its session and
/// given back when dropped. It no longer counts against the client IP's handshake limit, and
/// it is one pointer: sessions are many and mostly idle.
#[derive(Debug)]
pub struct SessionPlace(Arc<LimitInner>);

/// Why [`ConnectionLimit::admit`] did not count a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` are open: wait for [`ConnectionLimit::room`], then try again.
    Full,
    /// The client's IP is at its handshake limit (`max_handshakes_per_ip`): answer 429.
    PerIp,
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

    /// Counts a new connection from `ip` if there is room for it, atomically: several accept
    /// loops (one per worker thread) may admit at once, and never more than `max` together.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionGuard, Refused> {
        if self.inner.per_ip == 0 {
            return if self.try_count() {
                Ok(ConnectionGuard {
                    inner: Some(self.inner.clone()),
                    ip: None,
                })
            } else {
                Err(Refused::Full)
            };
        }
        // The table stays locked over the count so that an IP's entry and `open` agree.
        let mut by_ip = self.inner.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if by_ip.get(&ip).is_some_and(|n| *n >= self.inner.per_ip) {
            // While full the connection waits for room first, as any other would.
            return Err(if self.full() {
                Refused::Full
            } else {
                Refused::PerIp
            });
        }
        if !self.try_count() {
            return Err(Refused::Full);
        }
        *by_ip.entry(ip).or_default() += 1;
        Ok(ConnectionGuard {
            inner: Some(self.inner.clone()),
            ip: Some(ip),
        })
    }

    /// Whether `max` connections are open.
    fn full(&self) -> bool {
        self.inner.max != 0 && self.open() >= self.inner.max
    }

    /// Adds one to `open` unless that would exceed `max` (one compare-and-swap).
    fn try_count(&self) -> bool {
        if self.inner.max == 0 {
            self.inner.open.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        let max = self.inner.max;
        self.inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

impl ConnectionGuard {
    /// The connection upgraded: its place in `max_connections` moves, without ever being given
    /// up, into its session's [`SessionPlace`], and it stops counting against its IP's
    /// handshake limit (only the HTTP phase is limited per IP).
    pub fn into_session(mut self) -> Option<SessionPlace> {
        self.end_handshake();
        self.inner.take().map(SessionPlace)
    }

    /// Takes the connection off its IP's handshake count.
    fn end_handshake(&mut self) {
        let (Some(ip), Some(inner)) = (self.ip.take(), &self.inner) else {
            return;
        };
        let mut by_ip = inner.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.end_handshake();
        if let Some(inner) = self.inner.take() {
            inner.release();
        }
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl LimitInner {
    /// One connection closed: a place is free.
    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
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

/// One accept loop of a listener, on one worker's thread: accepts on that thread and hands
/// every connection to that worker. A listener has one per worker, each over a duplicate of the
/// same socket (see the module doc).
pub struct ListenerActor {
    info: Arc<ListenerInfo>,
    /// The duplicate this actor accepts on, until `started` registers it with the runtime.
    socket: Option<std::net::TcpListener>,
    /// The worker on this actor's own arbiter.
    worker: Recipient<Accepted>,
    /// The worker's index, for logs.
    index: usize,
    /// Connections this actor accepted (shutdown sums those of all actors).
    accepted: Rc<Cell<u64>>,
    limit: ConnectionLimit,
}

impl ListenerActor {
    /// An accept loop over an already-bound, non-blocking socket (or a duplicate of one),
    /// dispatching to `worker`, the worker with index `index`. Build it on the worker's own
    /// arbiter (inside `start_in_arbiter`), so that the accepted connections are registered
    /// with the runtime that serves them.
    pub fn new(
        info: Arc<ListenerInfo>,
        socket: std::net::TcpListener,
        worker: Recipient<Accepted>,
        index: usize,
    ) -> ListenerActor {
        ListenerActor {
            info,
            socket: Some(socket),
            worker,
            index,
            accepted: Rc::new(Cell::new(0)),
            limit: ConnectionLimit::new(0, 0),
        }
    }

    /// Counts connections against `limit` (shared by every actor of this listener; an upgraded
    /// connection's session keeps its place until the session ends).
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
                tracing::error!(listener = %self.info.name, worker = self.index, error = %e, "cannot register listener");
                return;
            }
        };
        tracing::debug!(listener = %self.info.name, worker = self.index, "accepting");
        let info = self.info.clone();
        let worker = self.worker.clone();
        let accepted = self.accepted.clone();
        let limit = self.limit.clone();
        let accept_loop = async move {
            loop {
                // At max_connections nothing is accepted: the kernel queues the rest.
                limit.room().await;
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        // Accepted while another worker or a session took the last place: held
                        // (not served) until there is room, so at most one connection per
                        // worker waits here.
                        let guard = loop {
                            match limit.admit(peer.ip()) {
                                Ok(guard) => break Some(guard),
                                Err(Refused::Full) => limit.room().await,
                                Err(Refused::PerIp) => break None,
                            }
                        };
                        let Some(guard) = guard else {
                            tracing::debug!(listener = %info.name, %peer, "handshake limit per IP reached: 429");
                            actix::spawn(refuse(stream));
                            continue;
                        };
                        accepted.set(accepted.get() + 1);
                        // Same arbiter: a push on the worker's mailbox, no thread is woken.
                        worker.do_send(Accepted {
                            stream,
                            peer,
                            listener: info.clone(),
                            guard,
                        });
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
        ctx.spawn(accept_loop.into_actor(self));
    }
}

impl Handler<StopAccepting> for ListenerActor {
    type Result = u64;

    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) -> u64 {
        // Stopping the actor drops the accept loop, with its tokio listener (this actor's
        // duplicate of the socket), in this same turn, without polling it again: nothing is
        // accepted after the count below. The port closes once every actor of the listener has
        // dropped its duplicate.
        ctx.stop();
        tracing::debug!(listener = %self.info.name, worker = self.index, "stopped accepting");
        self.accepted.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn admit_counts_up_to_max_and_a_dropped_guard_makes_room() {
        let limit = ConnectionLimit::new(2, 0);
        let first = limit.admit(IP).expect("room");
        let _second = limit.admit(IP).expect("room");
        assert_eq!(limit.admit(IP).err(), Some(Refused::Full));
        assert_eq!(limit.open(), 2);
        drop(first);
        assert!(limit.admit(IP).is_ok());
    }

    #[test]
    fn the_per_ip_limit_refuses_only_that_ip_and_only_while_there_is_room() {
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        let limit = ConnectionLimit::new(2, 1);
        let _held = limit.admit(IP).expect("room");
        assert_eq!(limit.admit(IP).err(), Some(Refused::PerIp));
        let _other = limit.admit(other).expect("another IP");
        // Full: the IP over its limit waits for room like any other connection.
        assert_eq!(limit.admit(IP).err(), Some(Refused::Full));
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn an_upgraded_connection_frees_its_ip_but_keeps_its_place() {
        let limit = ConnectionLimit::new(2, 1);
        let connection = limit.admit(IP).expect("room");
        assert_eq!(limit.admit(IP).err(), Some(Refused::PerIp));
        let session = connection.into_session().expect("a place");
        assert_eq!(limit.open(), 1);
        let _next = limit
            .admit(IP)
            .expect("the IP has no handshake in progress");
        assert_eq!(limit.open(), 2);
        assert_eq!(limit.admit(IP).err(), Some(Refused::Full));
        drop(session);
        assert_eq!(limit.open(), 1);
    }

    #[test]
    fn accept_loops_on_several_threads_never_admit_more_than_max_together() {
        let limit = ConnectionLimit::new(3, 0);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..1000)
                        .filter_map(|_| limit.admit(IP).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Every thread's guards are kept until all threads are done: dropping one thread's
        // while another still runs would free places for it.
        let lists: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let admitted: usize = lists.iter().map(Vec::len).sum();
        assert_eq!(admitted, 3);
        drop(lists);
        assert_eq!(
            limit.open(),
            0,
            "every guard was dropped with its thread's list"
        );
    }
}
