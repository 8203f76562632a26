//! Connections to backends, and each worker's pool of idle ones.
//!
//! The pool belongs to one worker thread (`Rc`/`RefCell`, no lock): a request checks out an idle
//! HTTP/1.1 connection to its member or opens a new one, and the connection comes back when the
//! response body has been read to its end ([`crate::body::ProxyBody`]). WebSocket handshakes
//! always use a fresh connection, since the upgrade consumes it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::balance::MemberLease;
use crate::error::ProxyError;

/// The body of a request to a backend: the client's body streamed through, or empty (then the
/// request can be re-sent if a pooled connection turns out to be closed).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// How many idle connections a worker keeps per backend member.
pub const MAX_IDLE_PER_BACKEND: usize = 64;

type Sender = SendRequest<UpstreamBody>;

/// A worker's idle backend connections, by member address.
#[derive(Debug, Default)]
pub struct UpstreamPool {
    idle: RefCell<HashMap<SocketAddr, Vec<Sender>>>,
}

/// A checked-out connection that goes back to its pool with [`PooledConnection::release`].
#[derive(Debug)]
pub struct PooledConnection {
    sender: Sender,
    backend: SocketAddr,
    pool: Rc<UpstreamPool>,
    /// Counts the request on its member until the response body is done.
    lease: Option<MemberLease>,
}

impl PooledConnection {
    /// Keeps `lease` (the request's claim on its member) until the connection is released or
    /// dropped, i.e. until the response body has been relayed.
    pub fn holding(mut self, lease: MemberLease) -> PooledConnection {
        self.lease = Some(lease);
        self
    }

    /// Returns the connection to the pool (dropped instead if closed or the pool is full).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.borrow_mut();
        let list = idle.entry(self.backend).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(self.sender);
        }
    }
}

/// Opens a TCP connection to `backend` within `timeout`, with `TCP_NODELAY` set.
pub async fn connect(backend: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    match tokio::time::timeout(timeout, TcpStream::connect(backend)).await {
        Ok(Ok(stream)) => {
            // Small frames must not wait for Nagle; failure here only costs latency.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(cause)) => Err(ProxyError::ConnectFailed { backend, cause }),
        Err(_) => Err(ProxyError::ConnectTimeout {
            backend,
            after: timeout,
        }),
    }
}

impl UpstreamPool {
    /// Takes an idle connection to `backend`, skipping any the backend has closed.
    fn checkout(&self, backend: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&backend)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// How many idle connections the pool holds (all members).
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }

    /// Sends an ordinary (non-upgrade) request to `backend` over a pooled or new connection and
    /// waits for the response head within `request_timeout`. A pooled connection that turns out
    /// closed before the request went out is replaced once by a fresh one.
    pub async fn send(
        self: &Rc<Self>,
        backend: SocketAddr,
        mut req: Request<UpstreamBody>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(Response<Incoming>, PooledConnection), ProxyError> {
        let deadline = tokio::time::Instant::now() + request_timeout;
        loop {
            let (mut sender, pooled) = match self.checkout(backend) {
                Some(sender) => (sender, true),
                None => (open(backend, connect_timeout, false).await?, false),
            };
            if let Err(cause) = sender.ready().await {
                if pooled {
                    continue;
                }
                return Err(ProxyError::BackendFailed { backend, cause });
            }
            let sent = tokio::time::timeout_at(deadline, sender.try_send_request(req)).await;
            match sent {
                Err(_) => {
                    return Err(ProxyError::ResponseTimeout {
                        backend,
                        after: request_timeout,
                    })
                }
                Ok(Ok(resp)) => {
                    let conn = PooledConnection {
                        sender,
                        backend,
                        pool: self.clone(),
                        lease: None,
                    };
                    return Ok((resp, conn));
                }
                Ok(Err(mut err)) => match err.take_message() {
                    // Never written: the pooled connection was already closing. Retry fresh.
                    Some(back) if pooled => req = back,
                    _ => {
                        return Err(ProxyError::BackendFailed {
                            backend,
                            cause: err.into_error(),
                        })
                    }
                },
            }
        }
    }
}

/// Sends a WebSocket handshake to `backend` over a new connection that allows upgrades, and
/// waits for the response head within `request_timeout`.
pub async fn send_upgrade(
    backend: SocketAddr,
    req: Request<UpstreamBody>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    let mut sender = open(backend, connect_timeout, true).await?;
    match tokio::time::timeout(request_timeout, sender.send_request(req)).await {
        Err(_) => Err(ProxyError::ResponseTimeout {
            backend,
            after: request_timeout,
        }),
        Ok(Err(cause)) => Err(ProxyError::BackendFailed { backend, cause }),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// Connects and performs the HTTP/1.1 client handshake; the connection task runs on this worker.
async fn open(
    backend: SocketAddr,
    connect_timeout: Duration,
    upgrades: bool,
) -> Result<Sender, ProxyError> {
    let stream = connect(backend, connect_timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|cause| ProxyError::BackendFailed { backend, cause })?;
    if upgrades {
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%backend, error = %e, "backend connection ended with an error");
            }
        });
    } else {
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%backend, error = %e, "backend connection ended with an error");
            }
        });
    }
    Ok(sender)
}
