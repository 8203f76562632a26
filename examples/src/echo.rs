//! A small HTTP/1.1 + WebSocket echo backend.
//!
//! [`serve`] accepts connections on a [`TcpListener`] and answers:
//!
//! | Request                          | Response                                           |
//! |----------------------------------|----------------------------------------------------|
//! | `GET /`, `GET /index.html`       | the echo page ([`PAGE_HTML`]), `text/html`         |
//! | `GET /health`                    | `200 ok`                                           |
//! | `POST /echo`                     | the request body, streamed back unchanged          |
//! | WebSocket upgrade, any path      | `101`, then every text/binary message echoed back  |
//! | anything else                    | `404 not found` (`405` for a wrong method on a known path) |
//!
//! The page connects to `/ws`, but any path accepts an upgrade. If the client
//! offers subprotocols, the first offered one that is in [`SUBPROTOCOLS`] is
//! selected. A close frame from the client is answered with the same code and
//! reason.
//!
//! Every connection runs in its own task; an error on one connection is logged
//! at `debug` level and never affects the others. All connection tasks belong
//! to the [`serve`] future, so dropping (or aborting) it shuts everything down.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, debug_span, warn, Instrument};

/// The echo page served at `/` and `/index.html`.
pub const PAGE_HTML: &str = include_str!("page.html");

/// WebSocket subprotocols the backend is willing to speak, in no particular
/// order. The first protocol *offered by the client* that appears here wins.
pub const SUBPROTOCOLS: &[&str] = &["chat", "superchat"];

/// Response body: either a fixed buffer or the request body streamed back.
type Body = Either<Full<Bytes>, Incoming>;

/// A WebSocket session whose `101` response has been produced but whose
/// connection has not yet been handed over by hyper.
struct PendingSocket {
    on_upgrade: OnUpgrade,
    protocol: Option<&'static str>,
}

/// Serves the echo backend on `listener` until the returned future is dropped.
///
/// Connection-level failures (bad requests, resets, WebSocket protocol errors)
/// are logged at `debug` level and only end that connection. Transient accept
/// errors are retried, so the future does not complete in normal operation; it
/// returns an error only if the listener is unusable from the start (its local
/// address cannot be read).
///
/// Connection tasks are owned by this future: dropping it closes every open
/// HTTP connection and WebSocket session.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let server = tokio::spawn(tether_examples::echo::serve(listener));
/// // ... talk to http://{addr}/ or ws://{addr}/ws ...
/// server.abort();
/// # Ok(()) }
/// ```
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    let local = listener.local_addr()?;
    debug!(%local, "echo backend serving");

    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%peer, %error, "failed to set TCP_NODELAY");
                    }
                    connections.spawn(
                        serve_connection(stream).instrument(debug_span!("connection", %peer)),
                    );
                }
                Err(error) => accept_failed(error).await,
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    debug!(%error, "connection task failed");
                }
            }
        }
    }
}

/// Handles an `accept` error: errors tied to a single connection attempt are
/// skipped; anything else (typically descriptor or memory exhaustion) backs off
/// briefly so the loop does not spin.
async fn accept_failed(error: io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => debug!(%error, "accept failed"),
        _ => {
            warn!(%error, "accept failed; backing off");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs one HTTP/1.1 connection, then the WebSocket session it upgraded to,
/// if any.
async fn serve_connection(stream: TcpStream) {
    let (upgrades, mut pending) = mpsc::unbounded_channel::<PendingSocket>();
    let service = service_fn(move |req| {
        let response = route(req, &upgrades);
        async move { Ok::<_, Infallible>(response) }
    });

    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(error) = result {
        debug!(%error, "http connection error");
    }

    // The connection future (and with it the service and its sender) is gone,
    // so this drains at most the one session the connection upgraded to.
    while let Some(socket) = pending.recv().await {
        echo_socket(socket).await;
    }
}

/// Dispatches one request.
fn route(
    req: Request<Incoming>,
    upgrades: &mpsc::UnboundedSender<PendingSocket>,
) -> Response<Body> {
    if header_has_token(req.headers(), &UPGRADE, "websocket") {
        return accept_websocket(req, upgrades);
    }

    let method = req.method();
    match req.uri().path() {
        "/" | "/index.html" => match *method {
            Method::GET | Method::HEAD => {
                let mut response = Response::new(full(Bytes::from_static(PAGE_HTML.as_bytes())));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
            _ => method_not_allowed("GET, HEAD"),
        },
        "/health" => match *method {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => method_not_allowed("GET, HEAD"),
        },
        "/echo" => match *method {
            Method::POST => echo_body(req),
            _ => method_not_allowed("POST"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Streams the request body straight back as the response body, keeping the
/// request's content type.
fn echo_body(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// Validates a WebSocket opening handshake (RFC 6455 §4.2.1). On success,
/// queues the session for the connection task and returns the
/// `101 Switching Protocols` response; otherwise returns the error response.
fn accept_websocket(
    mut req: Request<Incoming>,
    upgrades: &mpsc::UnboundedSender<PendingSocket>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return method_not_allowed("GET");
    }
    if req.version() != Version::HTTP_11 {
        return text(
            StatusCode::BAD_REQUEST,
            "websocket upgrade requires HTTP/1.1",
        );
    }
    let headers = req.headers();
    if !header_has_token(headers, &CONNECTION, "upgrade") {
        return text(
            StatusCode::BAD_REQUEST,
            "websocket upgrade requires `Connection: upgrade`",
        );
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    if !matches!((versions.next(), versions.next()), (Some(version), None) if version == "13") {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; use 13",
        );
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let accept = match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key.as_bytes()) => derive_accept_key(key.as_bytes()),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "missing or invalid Sec-WebSocket-Key",
            )
        }
    };
    let protocol = select_subprotocol(headers);

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    out.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(protocol) = protocol {
        out.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    // The receiver lives until the connection is done, so this cannot fail
    // while the connection is being served.
    let _ = upgrades.send(PendingSocket {
        on_upgrade,
        protocol,
    });
    response
}

/// A `Sec-WebSocket-Key` must be the base64 encoding of a 16-byte nonce:
/// 22 base64 characters followed by `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Picks the first subprotocol offered in `Sec-WebSocket-Protocol` (across all
/// such headers, in order) that the backend supports.
fn select_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    header_tokens(headers, &SEC_WEBSOCKET_PROTOCOL).find_map(|offered| {
        SUBPROTOCOLS
            .iter()
            .copied()
            .find(|supported| *supported == offered)
    })
}

/// Whether a comma-separated header contains `token` (ASCII case-insensitive).
fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The trimmed, non-empty comma-separated elements of every `name` header.
fn header_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Echoes every text and binary message until the peer closes.
///
/// tungstenite answers pings itself and, on a close frame from the peer,
/// queues a reply with the same code and reason; reading on until the stream
/// ends flushes that reply and finishes the closing handshake.
async fn echo_socket(socket: PendingSocket) {
    let upgraded = match socket.on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "websocket upgrade failed");
            return;
        }
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    debug!(protocol = socket.protocol, "websocket session opened");

    while let Some(message) = ws.next().await {
        match message {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(error) = ws.send(message).await {
                    debug!(%error, "websocket send failed");
                    return;
                }
            }
            Ok(Message::Close(frame)) => debug!(?frame, "peer sent close; echoing it"),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(error) => {
                debug!(%error, "websocket read failed");
                return;
            }
        }
    }
    debug!("websocket session closed");
}

fn full(bytes: Bytes) -> Body {
    Either::Left(Full::new(bytes))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn subprotocol_is_first_supported_offer() {
        assert_eq!(select_subprotocol(&offers(&[])), None);
        assert_eq!(
            select_subprotocol(&offers(&["chat, superchat"])),
            Some("chat")
        );
        assert_eq!(
            select_subprotocol(&offers(&["superchat, chat"])),
            Some("superchat")
        );
        assert_eq!(
            select_subprotocol(&offers(&["mqtt,  superchat"])),
            Some("superchat")
        );
        assert_eq!(select_subprotocol(&offers(&["mqtt", "chat"])), Some("chat"));
        assert_eq!(select_subprotocol(&offers(&["Chat", "wamp"])), None);
    }

    #[test]
    fn key_shape_is_checked() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=x"));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
