//! The client half of the WebSocket opening handshake (RFC 6455 §4.2.1), checked before anything
//! reaches a backend.
//!
//! Tether never completes the handshake itself: the backend computes `Sec-WebSocket-Accept` and
//! picks the subprotocol and extensions, and its `101` goes back to the client unchanged. The
//! sidecar's job is to refuse what no conforming server would accept, so a malformed upgrade costs
//! the backend nothing.

use base64::Engine as _;
use http::{header, HeaderMap, Method, Request, StatusCode, Version};

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
