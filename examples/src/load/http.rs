//! Minimal HTTP/1.1 head handling for the benchmark: the client's WebSocket upgrade, and the
//! request heads the fast echo backend has to understand.
//!
//! This is deliberately not a general HTTP parser. It handles what the benchmark's own client,
//! `wrk`, nginx, HAProxy and Tether send: a request line, `Name: value` headers, `\r\n` line
//! ends, and bodies only with `Content-Length`.

use std::fmt;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The `Sec-WebSocket-Key` every benchmark client sends. Any 16 bytes in base64 are valid; a
/// fixed key lets the expected `Sec-WebSocket-Accept` be computed once.
pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The longest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// A malformed or unexpected HTTP head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError(pub String);

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeadError {}

/// Finds the end of an HTTP head: the index just past `\r\n\r\n`, if `buf` holds a whole head.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Iterates over the `(name, value)` header lines of a head (everything after the first line),
/// with surrounding whitespace trimmed from values.
fn headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Builds the client's upgrade request for `path` on `host` (`host:port`).
pub fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The `Sec-WebSocket-Accept` value that answers [`CLIENT_KEY`].
pub fn expected_accept() -> String {
    derive_accept_key(CLIENT_KEY.as_bytes())
}

/// Checks a response head (through the blank line) for a valid `101 Switching Protocols` that
/// answers [`CLIENT_KEY`] with `accept`.
pub fn check_switching_protocols(head: &[u8], accept: &str) -> Result<(), HeadError> {
    let head =
        std::str::from_utf8(head).map_err(|_| HeadError("response head is not UTF-8".into()))?;
    let status = head.split("\r\n").next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next(), parts.next());
    if !matches!(version, Some(v) if v.starts_with("HTTP/1.")) || code != Some("101") {
        return Err(HeadError(format!(
            "expected 101 Switching Protocols, got {status:?}"
        )));
    }
    match headers(head).find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-accept")) {
        Some((_, value)) if value == accept => Ok(()),
        Some((_, value)) => Err(HeadError(format!("wrong Sec-WebSocket-Accept {value:?}"))),
        None => Err(HeadError("101 without Sec-WebSocket-Accept".into())),
    }
}

/// What the fast echo backend needs to know about a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `Sec-WebSocket-Key`, when the request is a WebSocket upgrade.
    pub websocket_key: Option<String>,
    /// Body length from `Content-Length` (0 when absent).
    pub content_length: usize,
    /// Whether the connection must close after the response (HTTP/1.0 without keep-alive, or
    /// `Connection: close`).
    pub close: bool,
}

/// Parses a request head (through the blank line).
pub fn parse_request(head: &[u8]) -> Result<RequestHead, HeadError> {
    let head =
        std::str::from_utf8(head).map_err(|_| HeadError("request head is not UTF-8".into()))?;
    let line = head.split("\r\n").next().unwrap_or_default();
    let version = line.rsplit(' ').next().unwrap_or_default();
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(HeadError(format!("unsupported request line {line:?}"))),
    };
    let mut upgrade = false;
    let mut key = None;
    let mut content_length = 0;
    for (name, value) in headers(head) {
        if name.eq_ignore_ascii_case("connection") {
            if has_token(value, "close") {
                close = true;
            }
            if has_token(value, "keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| HeadError(format!("bad Content-Length {value:?}")))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError("request bodies must use Content-Length".into()));
        }
    }
    Ok(RequestHead {
        websocket_key: if upgrade { key } else { None },
        content_length,
        close,
    })
}

/// The `101` the fast echo backend answers an upgrade with.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// The small response the fast echo backend gives every plain HTTP request.
pub const SMALL_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

/// [`SMALL_RESPONSE`] for a connection that closes afterwards.
pub const SMALL_RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_round_trip() {
        let request = upgrade_request("127.0.0.1:1", "/ws");
        let end = head_end(&request).unwrap();
        assert_eq!(end, request.len());
        let parsed = parse_request(&request).unwrap();
        assert_eq!(parsed.websocket_key.as_deref(), Some(CLIENT_KEY));
        assert!(!parsed.close);

        let response = switching_protocols(CLIENT_KEY);
        check_switching_protocols(&response, &expected_accept()).unwrap();
        // The RFC 6455 §1.3 example.
        assert_eq!(expected_accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_other_statuses_and_wrong_accept() {
        let accept = expected_accept();
        assert!(check_switching_protocols(b"HTTP/1.1 502 Bad Gateway\r\n\r\n", &accept).is_err());
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert!(check_switching_protocols(wrong, &accept).is_err());
    }

    #[test]
    fn plain_requests() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            parse_request(get).unwrap(),
            RequestHead {
                websocket_key: None,
                content_length: 0,
                close: false
            }
        );
        let post = b"POST / HTTP/1.0\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            parse_request(post).unwrap(),
            RequestHead {
                websocket_key: None,
                content_length: 5,
                close: false
            }
        );
        let close = b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n";
        assert!(parse_request(close).unwrap().close);
        assert!(parse_request(b"GET / HTTP/2\r\n\r\n").is_err());
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
