//! Why a request failed, and the one place that turns a failure into a response.
//!
//! Each cause is classified here once: which side it came from ([`ProxyError::side`]), the
//! status the client gets ([`ProxyError::status`]), whether it counts against the backend member
//! that was tried ([`ProxyError::counts_against_member`], passive health), what a failed
//! WebSocket handshake is recorded as ([`ProxyError::handshake_outcome`]) and whether nothing
//! reached that member, so the request may go to another one ([`ProxyError::before_sending`]).
//! `status`, `side` and `handshake_outcome` match every variant by name (no `_` arm), so a new
//! variant does not compile until it is classified, and `counts_against_member` is `side` seen
//! from passive health; the predicates written with `matches!` name the few variants for which
//! the answer is "yes", and "no" is the safe answer for anything else (no retry, no silent
//! close, the connection kept).
//! [`ProxyError::into_response`] is the single rescue point: a status and a short plain-text
//! reason naming the cause. A client that left gets no response at all
//! ([`ProxyError::closes_silently`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::body::ClientBodyError;
use crate::handshake::HandshakeError;
use crate::headers::HostError;
use crate::trace::HandshakeOutcome;
use crate::upgrade::{AnswerError, ExchangeError};

/// Which side a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: something it sent (or how it sent it, or that it left).
    Downstream,
    /// The backend failed or misbehaved.
    Upstream,
    /// Tether's own configuration or state (no route, no member).
    Proxy,
}

/// A request that could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request's host is missing, repeated or invalid (RFC 9112 §3.2).
    #[error("bad request: {0}")]
    BadHost(#[from] HostError),
    /// No routing rule matches the listener, host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The WebSocket handshake is malformed.
    #[error("bad WebSocket handshake: {0}")]
    BadHandshake(#[from] HandshakeError),
    /// The handshake's `Origin` is not in the rule's `allowed_origins`.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The rule requires an `Origin` header and the handshake has none.
    #[error("an Origin header is required")]
    OriginRequired,
    /// The handshake offers subprotocols and the rule allows none of them.
    #[error("none of the offered subprotocols is allowed on this route")]
    SubprotocolNotAllowed,
    /// The route's `websocket.max_sessions` are all in use.
    #[error("too many WebSocket sessions on route \"{route}\"; try again later")]
    SessionLimit {
        /// The routing rule.
        route: Arc<str>,
    },
    /// The route's `websocket.max_new_sessions_per_second` is used up for now.
    #[error("too many new WebSocket sessions on route \"{route}\"; retry later")]
    UpgradeRateLimited {
        /// The routing rule.
        route: Arc<str>,
    },
    /// Tether is draining for shutdown: no new session starts here.
    #[error("shutting down; reconnect to another instance")]
    Draining,
    /// The pool has no member in rotation.
    #[error("no healthy backend in pool \"{pool}\"")]
    NoHealthyBackend {
        /// The pool's name.
        pool: Arc<str>,
    },
    /// Connecting to the backend failed (refused, unreachable, reset).
    #[error("could not connect to backend {backend}: {cause}")]
    ConnectFailed {
        /// The member we tried.
        backend: SocketAddr,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// No local port is left toward the backend's IP:port from any source address Tether may
    /// use (`backend_settings.NAME.source_addresses`, else the one the kernel picks): every
    /// 4-tuple is taken. Tether's limit on this host, not the backend's failure.
    #[error("no local port left to connect to backend {backend} from {}", from_sources(*sources))]
    NoLocalPort {
        /// The member we tried.
        backend: SocketAddr,
        /// How many configured source addresses were tried (0: the kernel's choice).
        sources: usize,
    },
    /// Connecting to the backend took longer than `connect_timeout`.
    #[error("backend {backend} did not accept the connection within {after:?}")]
    ConnectTimeout {
        /// The member we tried.
        backend: SocketAddr,
        /// The configured connect timeout.
        after: Duration,
    },
    /// The backend sent no response head within `request_timeout`.
    #[error("backend {backend} did not answer within {after:?}")]
    ResponseTimeout {
        /// The member we tried.
        backend: SocketAddr,
        /// The configured request timeout.
        after: Duration,
    },
    /// The backend closed the connection or sent something that is not HTTP/1.1.
    #[error("backend {backend} failed: {cause}")]
    BackendFailed {
        /// The member we tried.
        backend: SocketAddr,
        /// hyper's description.
        cause: hyper::Error,
    },
    /// The backend's answer to a WebSocket handshake could not be relayed: the connection failed
    /// or closed early, or the answer is malformed or over a limit ([`crate::upgrade`]).
    #[error("backend {backend} failed the WebSocket handshake: {cause}")]
    BackendAnswer {
        /// The member we tried.
        backend: SocketAddr,
        /// What went wrong.
        cause: AnswerError,
    },
    /// The backend's answer to an ordinary HTTP/1.1 request could not be relayed (before its
    /// head: 502; during its body: the client's connection is cut): the connection failed or
    /// closed early, or the answer is malformed or ambiguous ([`crate::upstream`]'s client).
    #[error("backend {backend} failed: {cause}")]
    BackendHttp1 {
        /// The member we tried.
        backend: SocketAddr,
        /// What went wrong.
        cause: AnswerError,
    },
    /// The TLS handshake with an https backend failed (certificate not trusted, wrong name,
    /// protocol error, timeout).
    #[error("TLS to backend {backend} failed: {reason}")]
    TlsFailed {
        /// The member we tried.
        backend: SocketAddr,
        /// Why, as rustls put it.
        reason: String,
    },
    /// The TLS files of the backend settings could not be loaded.
    #[error("backend settings \"{settings}\": {reason}")]
    TlsConfig {
        /// The settings' name.
        settings: Arc<str>,
        /// Which file, and why.
        reason: String,
    },
    /// A WebSocket handshake on a listener that redirects to HTTPS: browsers do not follow
    /// redirects for WebSockets, so the client must use `wss://`.
    #[error("this listener redirects to https; open the WebSocket with wss:// on port {port}")]
    InsecureWebSocket {
        /// The https listener's port.
        port: u16,
    },
    /// The backend answered 101 to a request that did not ask for a WebSocket.
    #[error("backend {backend} switched protocols without being asked")]
    UnrequestedUpgrade {
        /// The member that did it.
        backend: SocketAddr,
    },
    /// The client's request body failed: bad framing, a client that left, or one too slow.
    #[error(transparent)]
    ClientBody(#[from] ClientBodyError),
    /// A gRPC call's own deadline (`grpc-timeout`, shorter than the settings' `request_timeout`)
    /// passed before the backend's response head. The client chose the deadline, so it does not
    /// count against the member; the answer is a gRPC `DEADLINE_EXCEEDED` (status 4) in a
    /// trailers-only response, as a gRPC server would give it.
    #[error("deadline exceeded: backend {backend} did not answer within the call's grpc-timeout ({after:?})")]
    DeadlineExceeded {
        /// The member we tried.
        backend: SocketAddr,
        /// The deadline the client set.
        after: Duration,
    },
}

/// How [`ProxyError::NoLocalPort`] names the addresses it tried.
fn from_sources(sources: usize) -> String {
    match sources {
        0 => "the source address the kernel picks (backend_settings source_addresses adds more)"
            .to_owned(),
        1 => "its one source address".to_owned(),
        n => format!("any of its {n} source addresses"),
    }
}

/// The status logged for a client that closed its connection before its request was complete
/// (nothing is sent; nginx's convention).
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl From<ExchangeError> for ProxyError {
    /// A WebSocket handshake with the backend timed out (504) or its answer could not be
    /// relayed (502).
    fn from(e: ExchangeError) -> ProxyError {
        match e {
            ExchangeError::Timeout { backend, after } => {
                ProxyError::ResponseTimeout { backend, after }
            }
            ExchangeError::Answer { backend, cause } => {
                ProxyError::BackendAnswer { backend, cause }
            }
        }
    }
}

impl Side {
    /// As logged and recorded on spans: `client`, `backend` or `tether`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "client",
            Side::Upstream => "backend",
            Side::Proxy => "tether",
        }
    }
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadHandshake(e) => e.status(),
            ProxyError::SubprotocolNotAllowed | ProxyError::BadHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::OriginNotAllowed
            | ProxyError::OriginRequired
            | ProxyError::InsecureWebSocket { .. } => StatusCode::FORBIDDEN,
            ProxyError::NoHealthyBackend { .. }
            | ProxyError::SessionLimit { .. }
            | ProxyError::UpgradeRateLimited { .. }
            | ProxyError::NoLocalPort { .. }
            | ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::BackendFailed { .. }
            | ProxyError::BackendAnswer { .. }
            | ProxyError::BackendHttp1 { .. }
            | ProxyError::TlsFailed { .. }
            | ProxyError::TlsConfig { .. }
            | ProxyError::UnrequestedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // gRPC carries its status in `grpc-status`; HTTP says the exchange worked (gRPC over
            // HTTP/2, "Responses": trailers-only).
            ProxyError::DeadlineExceeded { .. } => StatusCode::OK,
            ProxyError::ClientBody(e) => match e {
                ClientBodyError::Malformed(_) => StatusCode::BAD_REQUEST,
                ClientBodyError::Idle(_) | ClientBodyError::TooSlow(_) => {
                    StatusCode::REQUEST_TIMEOUT
                }
                ClientBodyError::Gone(_) => {
                    StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST)
                }
            },
        }
    }

    /// Whether this failure counts against the member that was tried (passive health): what
    /// the backend did — refused or timed-out connects, failed TLS, resets, malformed answers,
    /// no response head in time, an unrequested upgrade. Never what the client did, and never
    /// Tether's own configuration.
    pub fn counts_against_member(&self) -> bool {
        // The same fact as "the backend's side": only a backend's own failures count.
        self.side() == Side::Upstream
    }

    /// Whether the failure happened before anything reached the backend (the connection or its
    /// TLS handshake failed, or no local port was left toward it), so the request can safely
    /// go to another member (whose IP:port has 4-tuples of its own).
    pub fn before_sending(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. }
                | ProxyError::NoLocalPort { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::TlsFailed { .. }
        )
    }

    /// Whether the answer carries `Retry-After` (our own temporary limits: the client should
    /// come back, at a jittered time, rather than at once).
    pub fn retry_later(&self) -> bool {
        matches!(
            self,
            ProxyError::UpgradeRateLimited { .. }
                | ProxyError::Draining
                | ProxyError::NoLocalPort { .. }
        )
    }

    /// The client is gone: close its connection without a response (nobody would read it).
    pub fn closes_silently(&self) -> bool {
        matches!(self, ProxyError::ClientBody(ClientBodyError::Gone(_)))
    }

    /// After this failure the client's connection cannot carry another request: its body is
    /// unread or its framing is lost (RFC 9112 §6.3, §9.6), so the answer says `Connection: close`.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::ClientBody(_))
    }

    /// A short, low-cardinality class for the OpenTelemetry `error.type` attribute of the
    /// span of a request that got no answer from its backend (a 5xx answer is recorded by its
    /// status code instead).
    pub fn error_type(&self) -> &'static str {
        match self {
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::NoLocalPort { .. } => "no_local_port",
            ProxyError::ResponseTimeout { .. } => "timeout",
            ProxyError::DeadlineExceeded { .. } => "deadline_exceeded",
            ProxyError::TlsFailed { .. } | ProxyError::TlsConfig { .. } => "tls",
            ProxyError::UnrequestedUpgrade { .. } => "unrequested_upgrade",
            ProxyError::ClientBody(ClientBodyError::Gone(_)) => "client_closed",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::BackendFailed { .. }
            | ProxyError::BackendAnswer { .. }
            | ProxyError::BackendHttp1 { .. } => "backend_failed",
            _ => "_OTHER",
        }
    }

    /// Which side caused it.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::BadHandshake(_)
            | ProxyError::BadHost(_)
            | ProxyError::OriginNotAllowed
            | ProxyError::OriginRequired
            | ProxyError::SubprotocolNotAllowed
            | ProxyError::InsecureWebSocket { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::DeadlineExceeded { .. } => Side::Downstream,
            ProxyError::NoRoute
            | ProxyError::NoHealthyBackend { .. }
            | ProxyError::SessionLimit { .. }
            | ProxyError::UpgradeRateLimited { .. }
            | ProxyError::Draining
            | ProxyError::NoLocalPort { .. }
            | ProxyError::TlsConfig { .. } => Side::Proxy,
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ResponseTimeout { .. }
            | ProxyError::BackendFailed { .. }
            | ProxyError::BackendAnswer { .. }
            | ProxyError::BackendHttp1 { .. }
            | ProxyError::TlsFailed { .. }
            | ProxyError::UnrequestedUpgrade { .. } => Side::Upstream,
        }
    }

    /// What a WebSocket handshake that ended in this failure is recorded as (span attribute
    /// `tether.outcome` and the handshake metrics).
    pub fn handshake_outcome(&self) -> HandshakeOutcome {
        match self {
            ProxyError::NoRoute => HandshakeOutcome::NoRoute,
            ProxyError::BadHandshake(_) | ProxyError::BadHost(_) => HandshakeOutcome::BadHandshake,
            ProxyError::OriginNotAllowed | ProxyError::OriginRequired => {
                HandshakeOutcome::RejectedOrigin
            }
            ProxyError::SubprotocolNotAllowed => HandshakeOutcome::RejectedSubprotocol,
            ProxyError::SessionLimit { .. } => HandshakeOutcome::SessionLimit,
            ProxyError::UpgradeRateLimited { .. } => HandshakeOutcome::RateLimited,
            ProxyError::Draining => HandshakeOutcome::Draining,
            ProxyError::InsecureWebSocket { .. } => HandshakeOutcome::RejectedInsecure,
            // No member could be reached from here: recorded as no backend (503), not as the
            // backend's error.
            ProxyError::NoHealthyBackend { .. } | ProxyError::NoLocalPort { .. } => {
                HandshakeOutcome::NoBackend
            }
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ResponseTimeout { .. }
            | ProxyError::BackendFailed { .. }
            | ProxyError::BackendAnswer { .. }
            | ProxyError::BackendHttp1 { .. }
            | ProxyError::TlsFailed { .. }
            | ProxyError::TlsConfig { .. }
            | ProxyError::UnrequestedUpgrade { .. } => HandshakeOutcome::BackendError,
            // Unreachable on a handshake, which never has a body (`HandshakeError::HasBody`);
            // filed where every unnamed failure went before it was named here.
            ProxyError::ClientBody(_) => HandshakeOutcome::BackendError,
            // Unreachable too: only gRPC requests have a grpc-timeout.
            ProxyError::DeadlineExceeded { .. } => HandshakeOutcome::BackendError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn backend() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5000))
    }

    #[test]
    fn the_clients_failures_are_4xx_or_silent_and_never_count_against_a_member() {
        let cases = [
            (ClientBodyError::Malformed("bad chunk".into()), 400, false),
            (ClientBodyError::Idle(Duration::from_secs(1)), 408, false),
            (ClientBodyError::TooSlow(Duration::from_secs(1)), 408, false),
            (ClientBodyError::Gone("eof".into()), 499, true),
        ];
        for (cause, status, silent) in cases {
            let err = ProxyError::from(cause);
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.side(), Side::Downstream, "{err}");
            assert!(!err.counts_against_member(), "{err}");
            assert!(!err.before_sending(), "{err}");
            assert_eq!(err.closes_silently(), silent, "{err}");
            let resp = err.into_response();
            assert_eq!(resp.headers()[header::CONNECTION], "close");
        }
    }

    #[test]
    fn the_backends_failures_count_and_only_unsent_ones_may_go_elsewhere() {
        let refused = ProxyError::ConnectFailed {
            backend: backend(),
            cause: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let timeout = ProxyError::ResponseTimeout {
            backend: backend(),
            after: Duration::from_secs(1),
        };
        assert!(refused.counts_against_member() && refused.before_sending());
        assert!(timeout.counts_against_member() && !timeout.before_sending());
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(refused.side(), Side::Upstream);
        // Tether's own state is nobody's passive failure.
        let none = ProxyError::NoHealthyBackend { pool: "p".into() };
        assert!(!none.counts_against_member());
        assert_eq!(none.side(), Side::Proxy);
        assert!(!none
            .into_response()
            .headers()
            .contains_key(header::CONNECTION));
    }

    #[test]
    fn handshake_refusals_are_recorded_by_cause_and_backend_failures_as_backend_errors() {
        let cases = [
            (ProxyError::NoRoute, HandshakeOutcome::NoRoute),
            (
                ProxyError::BadHandshake(HandshakeError::MissingKey),
                HandshakeOutcome::BadHandshake,
            ),
            (
                ProxyError::BadHost(HostError::Missing),
                HandshakeOutcome::BadHandshake,
            ),
            (
                ProxyError::OriginNotAllowed,
                HandshakeOutcome::RejectedOrigin,
            ),
            (ProxyError::OriginRequired, HandshakeOutcome::RejectedOrigin),
            (
                ProxyError::SubprotocolNotAllowed,
                HandshakeOutcome::RejectedSubprotocol,
            ),
            (
                ProxyError::SessionLimit { route: "r".into() },
                HandshakeOutcome::SessionLimit,
            ),
            (
                ProxyError::InsecureWebSocket { port: 443 },
                HandshakeOutcome::RejectedInsecure,
            ),
            (
                ProxyError::NoHealthyBackend { pool: "p".into() },
                HandshakeOutcome::NoBackend,
            ),
            (
                ProxyError::ConnectTimeout {
                    backend: backend(),
                    after: Duration::from_secs(1),
                },
                HandshakeOutcome::BackendError,
            ),
            (
                ProxyError::BackendAnswer {
                    backend: backend(),
                    cause: AnswerError::ClosedInHead,
                },
                HandshakeOutcome::BackendError,
            ),
            (
                ProxyError::UnrequestedUpgrade { backend: backend() },
                HandshakeOutcome::BackendError,
            ),
        ];
        for (err, outcome) in cases {
            assert_eq!(err.handshake_outcome(), outcome, "{err}");
            // Only the backend's own failures count against it, and they are its side.
            assert_eq!(
                err.counts_against_member(),
                err.side() == Side::Upstream,
                "{err}"
            );
        }
    }

    #[test]
    fn no_local_port_is_tethers_limit_and_may_go_to_another_member() {
        for sources in [0, 1, 3] {
            let err = ProxyError::NoLocalPort {
                backend: backend(),
                sources,
            };
            assert_eq!(err.side(), Side::Proxy, "{err}");
            assert!(!err.counts_against_member(), "{err}");
            // Another member is another destination, with 4-tuples of its own.
            assert!(err.before_sending(), "{err}");
            assert!(err.retry_later(), "{err}");
            assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(err.handshake_outcome(), HandshakeOutcome::NoBackend);
            assert_eq!(err.error_type(), "no_local_port");
        }
        let three = ProxyError::NoLocalPort {
            backend: backend(),
            sources: 3,
        };
        assert_eq!(
            three.to_string(),
            "no local port left to connect to backend 127.0.0.1:5000 from any of its 3 source addresses"
        );
    }
}
