//! [`ListenerActor`]: owns one bound socket and its accept loop, and hands every accepted
//! connection to a worker.
//!
//! Workers are chosen round-robin. The hand-off is one `do_send` per *connection* (never per
//! request); the socket travels as a std socket because a tokio socket belongs to the runtime
//! that registered it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

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

/// Owns one listening socket.
pub struct ListenerActor {
    info: Arc<ListenerInfo>,
    socket: Option<std::net::TcpListener>,
    workers: Vec<Recipient<Accepted>>,
    accepted: Rc<Cell<u64>>,
    accept_loop: Option<SpawnHandle>,
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
        }
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
        let accept_loop = async move {
            let mut next = 0usize;
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
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
