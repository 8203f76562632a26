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
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Recipient, WrapFuture};

#[cfg(doc)]
use crate::admission::ConnectionGuard;
use crate::admission::{ConnectionLimit, ListenerInfo, Refused};
use crate::messages::{Accepted, StopAccepting};

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
                        limit.count_accepted();
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
