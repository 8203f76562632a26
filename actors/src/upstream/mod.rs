//! Connections to backends, and each worker's pool of idle ones.
//!
//! The pool belongs to one worker thread (`Rc`/`RefCell`, no lock): a request checks out an idle
//! HTTP/1.1 connection to its member or opens a new one, and the connection comes back when the
//! response body has been read to its end ([`crate::response::ProxyBody`]).
//!
//! HTTP/1.1 has no client task and no hyper client: the request drives its connection itself
//! ([`http1`]). It writes the request head, streams the body, reads the response head, and hands
//! hyper's server a body ([`ResponseBody`]) that reads the backend socket directly and puts the
//! connection back in the pool when it ended cleanly. Nothing runs beside an idle connection; a
//! backend that closed it while idle is noticed at checkout (one look at the socket).
//!
//! WebSocket handshakes always use a fresh connection, since the upgrade consumes it:
//! [`send_upgrade`] connects, writes the request head and reads the answer by hand
//! ([`crate::upgrade`], whose head serializer, head parser and chunked decoder [`http1`] shares),
//! and on a `101` the socket goes to the session as it is, with nothing (no connection task, no
//! waker) left behind.
//!
//! Backends with `protocol = "https"` are reached over TLS ([`UpstreamTls`]): the handshake runs
//! right after the TCP connect, within the same `connect_timeout`, and a certificate that does
//! not verify fails the request with 502 (never a silent downgrade to plain HTTP). Pooled
//! connections are kept apart by TLS configuration, so a plain and a TLS connection to the same
//! member never mix.
//!
//! Backends with `protocol = "h2c"` or `"h2"` get ordinary requests over multiplexed HTTP/2
//! connections instead ([`http2`], hyper's HTTP/2 client): many streams per connection, a stream
//! slot per request held until its response body ends. Their WebSocket upgrades still go over a
//! fresh HTTP/1.1 connection (`h2`: TLS with ALPN `http/1.1`).
//!
//! A failed [`UpstreamPool::send`] says what may happen next ([`SendFailure`]): a request that
//! never left Tether (connect failed, or not a byte of its head was written) comes back whole,
//! so it can go to another member; one whose connection closed or reset before any response
//! byte arrived is marked so, so an idempotent request without a body can be sent again.
//! Anything else is final.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tether_config::{BackendProtocol, BackendSettingsConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::balance::MemberLease;
use crate::body::{ClientBodyError, RequestBody};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::tls;
use crate::transport::{SessionIo, TlsIo};
use crate::upgrade::{self, UpgradeAnswer};

mod http1;
mod http2;
mod source;

pub use http1::ResponseBody;

/// The body of a request to a backend: the client's body streamed through, or empty.
pub type UpstreamBody = RequestBody;

/// How many idle connections a worker keeps per backend member.
pub const MAX_IDLE_PER_BACKEND: usize = 64;

/// A backend's response body: read straight from an HTTP/1.1 connection ([`ResponseBody`]),
/// or an HTTP/2 stream's. Its errors are [`ProxyError`]s, whose side says whose fault.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // the large variant is the common one; a box would cost an allocation per request
pub enum BackendBody {
    /// From an HTTP/1.1 connection this request drives itself.
    Http1(ResponseBody),
    /// From a stream of a shared HTTP/2 connection.
    Http2 {
        /// hyper's body of the stream.
        body: Incoming,
        /// The member, for the error.
        backend: SocketAddr,
    },
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        match self.get_mut() {
            BackendBody::Http1(body) => Pin::new(body).poll_frame(cx),
            BackendBody::Http2 { body, backend } => {
                Pin::new(body)
                    .poll_frame(cx)
                    .map_err(|cause| ProxyError::BackendFailed {
                        backend: *backend,
                        cause,
                    })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Http1(body) => body.is_end_stream(),
            BackendBody::Http2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Http1(body) => body.size_hint(),
            BackendBody::Http2 { body, .. } => body.size_hint(),
        }
    }
}

/// A request that got no response head, and what may be done about it.
#[derive(Debug)]
pub struct SendFailure {
    /// Why.
    pub error: ProxyError,
    /// Nothing was written to any backend: the request, untouched (body included), to send
    /// elsewhere.
    pub unsent: Option<Request<UpstreamBody>>,
    /// The request was written, and the connection closed or reset before any byte of a
    /// response arrived.
    pub reset_before_response: bool,
}

impl SendFailure {
    fn unsent(error: ProxyError, req: Request<UpstreamBody>) -> SendFailure {
        SendFailure {
            error,
            unsent: Some(req),
            reset_before_response: false,
        }
    }

    fn sent(error: ProxyError, reset_before_response: bool) -> SendFailure {
        SendFailure {
            error,
            unsent: None,
            reset_before_response,
        }
    }

    /// No response head within `request_timeout`.
    fn timed_out(backend: SocketAddr, request_timeout: Duration) -> SendFailure {
        let error = ProxyError::ResponseTimeout {
            backend,
            after: request_timeout,
        };
        SendFailure::sent(error, false)
    }

    /// The request was written and the exchange failed with `cause`: the client's fault when
    /// its body failed, else the backend's; `safe_to_resend` says whether no response byte came
    /// (HTTP/1.1) or the backend turned the stream away (HTTP/2).
    fn after_sending(
        backend: SocketAddr,
        cause: hyper::Error,
        safe_to_resend: impl FnOnce(&hyper::Error) -> bool,
    ) -> SendFailure {
        if let Some(client) = ClientBodyError::behind(&cause) {
            return SendFailure::sent(client.clone().into(), false);
        }
        let resend = safe_to_resend(&cause);
        SendFailure::sent(ProxyError::BackendFailed { backend, cause }, resend)
    }
}

/// Where idle connections are kept apart: the member, and the TLS configuration (0 = plain).
type PoolKey = (SocketAddr, usize);

/// The TLS files of one backend settings entry and whether ALPN offers `h2` (else
/// `http/1.1`): the key of the client configuration cache.
type TlsFiles = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>, bool);

/// A worker's backend connections — idle HTTP/1.1 ones and multiplexed HTTP/2 ones, by member
/// address and TLS configuration — and the TLS client configurations built so far (one per set
/// of files and ALPN, built on first use).
#[derive(Debug, Default)]
pub struct UpstreamPool {
    idle: RefCell<HashMap<PoolKey, Vec<http1::Conn>>>,
    h2: http2::Multiplexed,
    tls: RefCell<HashMap<TlsFiles, Arc<ClientConfig>>>,
    metrics: Arc<Metrics>,
}

/// How a request reaches an https backend: the client configuration and the name verified.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Trusted roots, client certificate, ALPN.
    pub config: Arc<ClientConfig>,
    /// Sent as SNI and verified against the backend's certificate.
    pub server_name: ServerName<'static>,
}

impl UpstreamTls {
    fn key(tls: Option<&UpstreamTls>) -> usize {
        tls.map_or(0, |t| Arc::as_ptr(&t.config) as usize)
    }
}

/// What a request holds of a backend connection while its response streams.
#[derive(Debug)]
enum Checkout {
    /// An HTTP/1.1 connection of its own (inside the response body: [`ResponseBody`]), to put
    /// back when the response is done.
    Http1,
    /// A stream slot on a shared HTTP/2 connection, freed when dropped (held only for that).
    Http2 { _slot: http2::StreamSlot },
}

/// A checked-out connection (or HTTP/2 stream) that goes back to its pool with
/// [`PooledConnection::release`].
#[derive(Debug)]
pub struct PooledConnection {
    conn: Checkout,
    backend: PoolKey,
    pool: Rc<UpstreamPool>,
    /// Counts the request on its member until the response body is done.
    lease: Option<MemberLease>,
    /// How long connecting (and the TLS handshake) took, when this request opened the
    /// connection; `None` for a pooled one.
    connected_in: Option<Duration>,
}

impl PooledConnection {
    /// Keeps `lease` (the request's claim on its member) until the connection is released or
    /// dropped, i.e. until the response body has been relayed.
    pub fn holding(mut self, lease: MemberLease) -> PooledConnection {
        self.lease = Some(lease);
        self
    }

    /// How long opening this connection took (TCP connect plus TLS handshake), when the request
    /// opened it; `None` when it came from the pool.
    pub fn connected_in(&self) -> Option<Duration> {
        self.connected_in
    }

    /// The response `body` has been read to its end: its HTTP/1.1 connection goes back to the
    /// pool when it may carry another request (else, or when the pool is full, it closes), and
    /// a fault found at the end (bytes past the response) counts against the member. An HTTP/2
    /// stream frees its slot.
    pub fn release(self, body: &mut BackendBody) {
        let BackendBody::Http1(body) = body else {
            return;
        };
        if let Some(fault) = body.fault() {
            tracing::debug!(error = %fault, "backend connection not reused");
            self.blame(&fault);
        }
        let Some(conn) = body.take_reusable() else {
            return;
        };
        if !matches!(self.conn, Checkout::Http1) {
            return;
        }
        let mut idle = self.pool.idle.borrow_mut();
        let list = idle.entry(self.backend).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(conn);
        }
    }

    /// The response body failed with `error` after its head was relayed: a backend fault of an
    /// HTTP/1.1 connection (closed early, malformed) counts against the member. (An HTTP/2
    /// stream's failure may be the client's reset, so it does not.)
    pub fn body_failed(self, error: &ProxyError) {
        if matches!(self.conn, Checkout::Http1) {
            self.blame(error);
        }
    }

    fn blame(&self, error: &ProxyError) {
        if let Some(lease) = &self.lease {
            if error.counts_against_member() {
                lease.member().passive_failure(error);
            }
        }
    }
}

/// Opens a TCP connection to `backend` within `timeout`, with `TCP_NODELAY` set: from one of
/// `sources` of its family in turn when there are any (`backend_settings.NAME.source_addresses`,
/// see [`source`]), else from the address and port the kernel picks. No local port left toward
/// `backend` is [`ProxyError::NoLocalPort`] (Tether's limit), never the backend's failure.
pub async fn connect(
    backend: SocketAddr,
    sources: &[IpAddr],
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let connecting = async {
        if let Some(connected) = source::connect_from(backend, sources).await {
            return connected;
        }
        TcpStream::connect(backend).await.map_err(|cause| {
            if source::is_local_exhaustion(&cause) {
                ProxyError::NoLocalPort {
                    backend,
                    sources: 0,
                }
            } else {
                ProxyError::ConnectFailed { backend, cause }
            }
        })
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => {
            // Small frames must not wait for Nagle; failure here only costs latency.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ProxyError::ConnectTimeout {
            backend,
            after: timeout,
        }),
    }
}

impl UpstreamPool {
    /// An empty pool whose HTTP/2 connections and refused streams are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> UpstreamPool {
        UpstreamPool {
            metrics,
            ..UpstreamPool::default()
        }
    }

    /// The TLS to use for `backend` under `settings` (`None` for plain HTTP and h2c). The client
    /// configuration is built on first use and kept for this worker; it offers ALPN `h2` for an
    /// `h2` backend's requests, `http/1.1` otherwise (`upgrade`: a WebSocket handshake, always
    /// HTTP/1.1). The server name is `server_name`, else the host override (without port), else
    /// the member's IP address.
    pub fn tls_for(
        &self,
        settings: &BackendSettingsConfig,
        backend: SocketAddr,
        upgrade: bool,
    ) -> Result<Option<UpstreamTls>, ProxyError> {
        if !settings.protocol.uses_tls() {
            return Ok(None);
        }
        let h2 = settings.protocol == BackendProtocol::H2 && !upgrade;
        let files = (
            settings.ca_file.clone(),
            settings.client_cert_file.clone(),
            settings.client_key_file.clone(),
            h2,
        );
        let cached = self.tls.borrow().get(&files).cloned();
        let config = match cached {
            Some(config) => config,
            None => {
                let mut config =
                    backend_client_config(settings).map_err(|e| ProxyError::TlsConfig {
                        settings: settings.name.as_str().into(),
                        reason: e.to_string(),
                    })?;
                if h2 {
                    let mut alpn_h2 = (*config).clone();
                    alpn_h2.alpn_protocols = vec![b"h2".to_vec()];
                    config = Arc::new(alpn_h2);
                }
                self.tls.borrow_mut().insert(files, config.clone());
                config
            }
        };
        Ok(Some(UpstreamTls {
            config,
            server_name: server_name(settings, backend),
        }))
    }

    /// Takes an idle connection to `backend`, skipping (and closing) any the backend has
    /// closed or broken meanwhile ([`http1::Conn::poll_still_open`]).
    async fn checkout(&self, backend: PoolKey) -> Option<http1::Conn> {
        std::future::poll_fn(|cx| {
            let mut idle = self.idle.borrow_mut();
            let Some(list) = idle.get_mut(&backend) else {
                return Poll::Ready(None);
            };
            while let Some(mut conn) = list.pop() {
                if conn.poll_still_open(cx) {
                    return Poll::Ready(Some(conn));
                }
            }
            Poll::Ready(None)
        })
        .await
    }

    /// Sends an ordinary (non-upgrade) request to `backend` over a pooled or new connection and
    /// waits for the response head within `request_timeout`. A pooled connection that turns out
    /// closed before the request went out is replaced by a fresh one. A failure says whether
    /// the request may go elsewhere ([`SendFailure`]); an error of the client's body is
    /// reported as [`ProxyError::ClientBody`], never as the backend's.
    ///
    /// HTTP/1.1 needs no client task: this request writes its head on the connection itself
    /// and reads the answer ([`http1`]); the body it returns reads the rest, streams the
    /// request body still going out, and puts the connection back when done.
    ///
    /// With `http2` (an `h2c` or `h2` backend) the request goes as a stream on a shared HTTP/2
    /// connection ([`UpstreamPool::send_h2`]).
    #[allow(clippy::too_many_arguments)] // one request's whole context; a struct would be used once
    pub async fn send(
        self: &Rc<Self>,
        backend: SocketAddr,
        tls: Option<&UpstreamTls>,
        http2: bool,
        req: Request<UpstreamBody>,
        sources: &[IpAddr],
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(Response<BackendBody>, PooledConnection), SendFailure> {
        if http2 {
            // Boxed: the HTTP/2 send (connecting and its handshake included) is a large
            // future, and every request future holding it inline would be copied at its size.
            return Box::pin(self.send_h2(
                backend,
                tls,
                req,
                sources,
                connect_timeout,
                request_timeout,
            ))
            .await;
        }
        let deadline = tokio::time::Instant::now() + request_timeout;
        let key = (backend, UpstreamTls::key(tls));
        let head_request = req.method() == http::Method::HEAD;
        let (conn, connected_in, upload) = loop {
            let opening = std::time::Instant::now();
            let (mut conn, pooled) = match self.checkout(key).await {
                Some(conn) => (conn, true),
                // Boxed (only when connecting): the connect and TLS handshake futures are
                // large, and the request's future is moved several times as it starts.
                None => match Box::pin(open(backend, tls, sources, connect_timeout)).await {
                    Ok(conn) => (conn, false),
                    Err(error) => return Err(SendFailure::unsent(error, req)),
                },
            };
            let connected_in = (!pooled).then(|| opening.elapsed());
            let upload = conn.start(&req);
            let written = tokio::time::timeout_at(deadline, conn.write_head()).await;
            match written {
                Err(_) => return Err(SendFailure::timed_out(backend, request_timeout)),
                Ok(Ok(())) => break (conn, connected_in, upload),
                // Nothing left: a pooled connection the backend had closed. Retry fresh.
                Ok(Err((_, false))) if pooled => continue,
                Ok(Err((cause, false))) => {
                    let cause = upgrade::AnswerError::Io(cause);
                    return Err(SendFailure::unsent(
                        ProxyError::BackendHttp1 { backend, cause },
                        req,
                    ));
                }
                Ok(Err((cause, true))) => {
                    let cause = upgrade::AnswerError::Io(cause);
                    return Err(SendFailure::sent(
                        ProxyError::BackendHttp1 { backend, cause },
                        true,
                    ));
                }
            }
        };
        let (_, body) = req.into_parts();
        let mut exchange = http1::Exchange::new(conn, backend, body, upload, head_request);
        let head = std::future::poll_fn(|cx| exchange.poll_head(cx));
        let head = match tokio::time::timeout_at(deadline, head).await {
            Err(_) => return Err(SendFailure::timed_out(backend, request_timeout)),
            Ok(Err(http1::HeadError::Client(e))) => return Err(SendFailure::sent(e.into(), false)),
            Ok(Err(http1::HeadError::Backend { cause, silent })) => {
                let error = ProxyError::BackendHttp1 { backend, cause };
                return Err(SendFailure::sent(error, silent));
            }
            Ok(Ok(head)) => head,
        };
        let body = exchange.into_body(&head).map_err(|cause| {
            SendFailure::sent(ProxyError::BackendHttp1 { backend, cause }, false)
        })?;
        let conn = PooledConnection {
            conn: Checkout::Http1,
            backend: key,
            pool: self.clone(),
            lease: None,
            connected_in,
        };
        Ok((head.map(|()| BackendBody::Http1(body)), conn))
    }
}

impl UpstreamPool {
    /// [`UpstreamPool::send`] over HTTP/2: a stream on a connection with room ([`http2`]),
    /// the response head awaited within `request_timeout` (connecting included, as for
    /// HTTP/1.1). A stream the backend turned away unprocessed (`REFUSED_STREAM`, GOAWAY) is
    /// counted and reported like a connection reset before any response byte; a request that
    /// never got a stream on a connection that was already closing goes out once more on
    /// another connection.
    async fn send_h2(
        self: &Rc<Self>,
        backend: SocketAddr,
        tls: Option<&UpstreamTls>,
        mut req: Request<UpstreamBody>,
        sources: &[IpAddr],
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(Response<BackendBody>, PooledConnection), SendFailure> {
        let deadline = tokio::time::Instant::now() + request_timeout;
        let key = (backend, UpstreamTls::key(tls));
        let mut again = true;
        loop {
            let opening = std::time::Instant::now();
            let checkout = self.h2.checkout(key, tls, sources, connect_timeout, || {
                self.metrics.upstream_h2.connection_opened();
            });
            let (mut conn, slot, fresh) = match checkout.await {
                Ok(found) => found,
                Err(error) => return Err(SendFailure::unsent(error, req)),
            };
            let connected_in = fresh.then(|| opening.elapsed());
            if let Err(cause) = conn.sender.ready().await {
                if !fresh && std::mem::take(&mut again) {
                    continue;
                }
                return Err(SendFailure::unsent(
                    ProxyError::BackendFailed { backend, cause },
                    req,
                ));
            }
            let sent = tokio::time::timeout_at(deadline, conn.sender.try_send_request(req)).await;
            match sent {
                Err(_) => return Err(SendFailure::timed_out(backend, request_timeout)),
                Ok(Ok(resp)) => {
                    let conn = PooledConnection {
                        conn: Checkout::Http2 { _slot: slot },
                        backend: key,
                        pool: self.clone(),
                        lease: None,
                        connected_in,
                    };
                    let resp = resp.map(|body| BackendBody::Http2 { body, backend });
                    return Ok((resp, conn));
                }
                Ok(Err(mut err)) => match err.take_message() {
                    Some(back) if !fresh && std::mem::take(&mut again) => req = back,
                    Some(back) => {
                        let cause = err.into_error();
                        return Err(SendFailure::unsent(
                            ProxyError::BackendFailed { backend, cause },
                            back,
                        ));
                    }
                    None => {
                        return Err(SendFailure::after_sending(
                            backend,
                            err.into_error(),
                            |cause| {
                                let turned_away = http2::turned_away(cause);
                                if turned_away {
                                    self.metrics.upstream_h2.stream_refused();
                                }
                                turned_away
                            },
                        ));
                    }
                },
            }
        }
    }
}

/// Sends a WebSocket handshake to `backend` over a new connection with no HTTP client on it:
/// connects (and, for https, completes the TLS handshake) within `connect_timeout`, writes
/// `head` and reads the answer within `request_timeout` ([`upgrade::exchange`]). On a `101` the
/// connection comes back ready for the session: plain TCP, or TCP with its rustls state.
pub async fn send_upgrade(
    backend: SocketAddr,
    tls: Option<&UpstreamTls>,
    head: &http::request::Parts,
    sources: &[IpAddr],
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<UpgradeAnswer<SessionIo>, ProxyError> {
    let request = upgrade::request_head(head);
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let stream = connect(backend, sources, connect_timeout).await?;
    let Some(tls) = tls else {
        let answer = upgrade::exchange(stream, &request, backend, request_timeout).await?;
        return Ok(answer.map_io(SessionIo::Plain));
    };
    let stream = connect_tls(backend, tls, stream, deadline, connect_timeout).await?;
    let answer = upgrade::exchange(stream, &request, backend, request_timeout).await?;
    Ok(answer.map_io(|stream| {
        // tokio-rustls' wrapper goes; plaintext rustls already holds is kept for the pump.
        let (tcp, conn) = stream.into_inner();
        SessionIo::Tls(Box::new(TlsIo::new(tcp, conn)))
    }))
}

/// Connects (and, for https, completes the TLS handshake) within `connect_timeout`: a new
/// HTTP/1.1 connection, with nothing running beside it.
async fn open(
    backend: SocketAddr,
    tls: Option<&UpstreamTls>,
    sources: &[IpAddr],
    connect_timeout: Duration,
) -> Result<http1::Conn, ProxyError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let stream = connect(backend, sources, connect_timeout).await?;
    Ok(match tls {
        None => http1::Conn::plain(stream),
        Some(tls) => {
            http1::Conn::tls(connect_tls(backend, tls, stream, deadline, connect_timeout).await?)
        }
    })
}

/// The TLS handshake with an https backend over `stream`, done by `deadline` (the end of the
/// `connect_timeout` that started with the TCP connect).
async fn connect_tls(
    backend: SocketAddr,
    tls: &UpstreamTls,
    stream: TcpStream,
    deadline: tokio::time::Instant,
    connect_timeout: Duration,
) -> Result<TlsStream<TcpStream>, ProxyError> {
    let connector = TlsConnector::from(tls.config.clone());
    match tokio::time::timeout_at(deadline, connector.connect(tls.server_name.clone(), stream))
        .await
    {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ProxyError::TlsFailed {
            backend,
            reason: tls::describe_io_error(&e),
        }),
        Err(_) => Err(ProxyError::TlsFailed {
            backend,
            reason: format!("TLS handshake not done within {connect_timeout:?}"),
        }),
    }
}

/// The client configuration of an https backend: its CA file (else the system roots) and its
/// client certificate, if any.
pub fn backend_client_config(
    settings: &BackendSettingsConfig,
) -> Result<Arc<ClientConfig>, tls::TlsError> {
    let client_cert = match (&settings.client_cert_file, &settings.client_key_file) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    tls::client_config(settings.ca_file.as_deref(), client_cert)
}

/// The name an https backend is verified against: `server_name`, else the host override
/// (without its port), else the member's IP address.
pub fn server_name(settings: &BackendSettingsConfig, backend: SocketAddr) -> ServerName<'static> {
    let configured = settings.server_name.as_deref().or_else(|| {
        settings
            .host_override
            .as_deref()
            .map(|h| crate::headers::parse_authority(h).map_or(h, |a| a.host))
    });
    configured
        .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(backend.ip().into()))
}
