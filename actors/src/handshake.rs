//! The client half of the WebSocket opening handshake (RFC 6455 §4.2.1), checked before anything
//! reaches a backend.
//!
//! Tether never completes the handshake itself: the backend computes `Sec-WebSocket-Accept` and
//! picks the subprotocol and extensions, and its `101` goes back to the client unchanged. The
//! sidecar's job is to refuse what no conforming server would accept, so a malformed upgrade costs
//! the backend nothing.
//!
//! Over HTTP/2 (RFC 8441) the handshake is an extended CONNECT with `:protocol = websocket`
//! ([`is_h2_websocket`], checked by [`validate_h2`]): no `Upgrade`, `Connection` or
//! `Sec-WebSocket-Key`. It still goes to the backend as an HTTP/1.1 upgrade, for which Tether
//! makes the key ([`new_key`]) and checks the backend's answer to it ([`accept_for`]), since the
//! HTTP/2 client has no key to check it against; the backend's `101` becomes a `200` on the
//! client's stream.

use base64::Engine as _;
use http::{header, HeaderMap, Method, Request, StatusCode, Version};
use sha1::{Digest as _, Sha1};

/// Why a WebSocket opening handshake was refused. Each variant maps to one status and one short
/// reason sent to the client as plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// RFC 6455 §4.1: the handshake must be a GET.
    #[error("a WebSocket handshake must use GET")]
    NotGet,
    /// RFC 6455 §4.1: HTTP/1.1 or later.
    #[error("a WebSocket handshake must use HTTP/1.1")]
    NotHttp11,
    /// RFC 6455 §4.2.1 item 2: a `Host` header is required.
    #[error("a WebSocket handshake needs a Host header")]
    MissingHost,
    /// RFC 6455 §4.2.1 item 4: `Connection` must contain the `upgrade` token.
    #[error("the Connection header must contain the \"upgrade\" token")]
    ConnectionNotUpgrade,
    /// RFC 6455 §4.2.1 item 5: `Sec-WebSocket-Key` is missing.
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    /// RFC 6455 §4.2.1 item 5: the key must be base64 of exactly 16 bytes.
    #[error("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")]
    BadKey,
    /// RFC 6455 §4.2.1 item 6: `Sec-WebSocket-Version` is missing.
    #[error("missing Sec-WebSocket-Version header")]
    MissingVersion,
    /// RFC 6455 §4.2.2: any version but 13 is answered with 426 and the supported version.
    #[error("unsupported Sec-WebSocket-Version; this server speaks version 13")]
    UnsupportedVersion,
    /// The request carries a body, which a handshake never has.
    #[error("a WebSocket handshake must not carry a body")]
    HasBody,
}

impl HandshakeError {
    /// The status this refusal is answered with: 426 for a version mismatch (with
    /// `Sec-WebSocket-Version: 13`), 400 for everything else.
    pub fn status(self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// True when the request asks for a WebSocket upgrade: an `Upgrade` header whose protocol list
/// contains `websocket`. Such a request is validated as a handshake; any other `Upgrade` value is
/// hop-by-hop and is stripped, so it never smuggles a different protocol to the backend.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"websocket"))
}

/// True when an HTTP/2 request opens a WebSocket: an extended CONNECT (RFC 8441 §4) whose
/// `:protocol` is `websocket`.
pub fn is_h2_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Checks an HTTP/2 client's opening handshake (RFC 8441 §5): the `:authority` (hyper puts it in
/// the URI; RFC 8441 §4 requires it) and `Sec-WebSocket-Version: 13`. `Sec-WebSocket-Key` and
/// `Upgrade` have no place in it; a key sent anyway is ignored (Tether makes its own).
pub fn validate_h2<B>(req: &Request<B>) -> Result<(), HandshakeError> {
    if req.uri().authority().is_none() {
        return Err(HandshakeError::MissingHost);
    }
    let version = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .ok_or(HandshakeError::MissingVersion)?;
    if version.as_bytes().trim_ascii() != b"13" {
        return Err(HandshakeError::UnsupportedVersion);
    }
    Ok(())
}

/// The GUID of RFC 6455 §1.3 that `Sec-WebSocket-Accept` is computed with.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (RFC 6455 §4.1). Fresh per handshake;
/// it needs to be unpredictable to caches, not secret.
pub fn new_key() -> [u8; 24] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    raw[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    let mut out = [0u8; 24];
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(raw, &mut out);
    out
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 §4.2.2 item 5.4).
pub fn accept_for(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let mut out = [0u8; 28];
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(sha.finalize(), &mut out);
    out
}

/// Checks the client's opening handshake (RFC 6455 §4.2.1). The caller has already established
/// that the request wants a WebSocket (see [`wants_websocket`]).
pub fn validate<B>(req: &Request<B>, body_is_empty: bool) -> Result<(), HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if req.version() != Version::HTTP_11 {
        return Err(HandshakeError::NotHttp11);
    }
    let headers = req.headers();
    if !headers.contains_key(header::HOST) && req.uri().authority().is_none() {
        return Err(HandshakeError::MissingHost);
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"upgrade"));
    if !connection_upgrade {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::MissingKey)?;
    if !key_is_valid(key.as_bytes()) {
        return Err(HandshakeError::BadKey);
    }
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .ok_or(HandshakeError::MissingVersion)?;
    if version.as_bytes().trim_ascii() != b"13" {
        return Err(HandshakeError::UnsupportedVersion);
    }
    if !body_is_empty {
        return Err(HandshakeError::HasBody);
    }
    Ok(())
}

/// A key is valid when it is base64 (with padding) of exactly 16 bytes: 24 characters.
fn key_is_valid(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    if key.len() != 24 {
        return false;
    }
    let mut out = [0u8; 18];
    matches!(
        base64::engine::general_purpose::STANDARD.decode_slice(key, &mut out),
        Ok(16)
    )
}

/// True when the comma-separated header value contains `token` (ASCII case-insensitive). Firefox
/// sends `Connection: keep-alive, Upgrade`, so a plain equality check is wrong.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> http::request::Builder {
        Request::builder()
            .method("GET")
            .uri("/chat")
            .header("host", "example.com")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
    }

    #[test]
    fn accepts_the_rfc_example() {
        let req = handshake().body(()).unwrap();
        assert!(wants_websocket(req.headers()));
        assert_eq!(validate(&req, true), Ok(()));
    }

    #[test]
    fn refuses_each_broken_field() {
        let cases: Vec<(http::request::Builder, HandshakeError)> = vec![
            (handshake().method("POST"), HandshakeError::NotGet),
            (
                handshake().version(Version::HTTP_10),
                HandshakeError::NotHttp11,
            ),
            (
                {
                    let mut b = handshake();
                    b.headers_mut().unwrap().remove("connection");
                    b.header("connection", "keep-alive")
                },
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                {
                    let mut b = handshake();
                    b.headers_mut().unwrap().remove("sec-websocket-key");
                    b
                },
                HandshakeError::MissingKey,
            ),
            (
                {
                    let mut b = handshake();
                    b.headers_mut().unwrap().remove("sec-websocket-key");
                    b.header("sec-websocket-key", "c2hvcnQ=")
                },
                HandshakeError::BadKey,
            ),
            (
                {
                    let mut b = handshake();
                    b.headers_mut().unwrap().remove("sec-websocket-version");
                    b.header("sec-websocket-version", "8")
                },
                HandshakeError::UnsupportedVersion,
            ),
            (
                {
                    let mut b = handshake();
                    b.headers_mut().unwrap().remove("host");
                    b
                },
                HandshakeError::MissingHost,
            ),
        ];
        for (builder, want) in cases {
            let req = builder.body(()).unwrap();
            assert_eq!(validate(&req, true), Err(want));
        }
        assert_eq!(
            validate(&handshake().body(()).unwrap(), false),
            Err(HandshakeError::HasBody)
        );
    }

    #[test]
    fn accept_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            &accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = new_key();
        assert!(key_is_valid(&key));
        assert_ne!(key, new_key());
    }

    #[test]
    fn h2_handshake_needs_authority_and_version_13() {
        let connect = |version: Option<&str>, uri: &str| {
            let mut b = Request::builder()
                .method("CONNECT")
                .version(Version::HTTP_2)
                .uri(uri)
                .extension(hyper::ext::Protocol::from_static("websocket"));
            if let Some(v) = version {
                b = b.header("sec-websocket-version", v);
            }
            b.body(()).unwrap()
        };
        let ok = connect(Some("13"), "https://example.com/chat");
        assert!(is_h2_websocket(&ok));
        assert_eq!(validate_h2(&ok), Ok(()));
        assert_eq!(
            validate_h2(&connect(None, "https://example.com/chat")),
            Err(HandshakeError::MissingVersion)
        );
        assert_eq!(
            validate_h2(&connect(Some("8"), "https://example.com/chat")),
            Err(HandshakeError::UnsupportedVersion)
        );
        assert_eq!(
            validate_h2(&connect(Some("13"), "/chat")),
            Err(HandshakeError::MissingHost)
        );
        let plain_connect = Request::builder()
            .method("CONNECT")
            .version(Version::HTTP_2)
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(!is_h2_websocket(&plain_connect));
    }

    #[test]
    fn version_mismatch_is_426_others_400() {
        assert_eq!(HandshakeError::UnsupportedVersion.status(), 426);
        assert_eq!(HandshakeError::BadKey.status(), 400);
    }

    #[test]
    fn key_must_decode_to_sixteen_bytes() {
        assert!(key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ")); // no padding
        assert!(!key_is_valid(b"AAAAAAAAAAAAAAAAAAAAAAAA")); // 18 bytes
        assert!(!key_is_valid(b"!!!!!!!!!!!!!!!!!!!!!!=="));
    }

    #[test]
    fn tokens_are_case_insensitive_and_trimmed() {
        assert!(has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(has_token(b"UPGRADE", b"upgrade"));
        assert!(!has_token(b"upgraded", b"upgrade"));
    }
}
