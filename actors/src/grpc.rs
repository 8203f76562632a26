//! What Tether knows of gRPC (gRPC over HTTP/2, the `PROTOCOL-HTTP2` document of grpc/grpc):
//! which requests are gRPC calls, their deadline (`grpc-timeout`), the trailers-only answer
//! Tether gives when that deadline passes, and the health check its probes send
//! (`grpc.health.v1.Health/Check`).
//!
//! gRPC needs nothing else from a proxy: a call is an HTTP/2 request whose body and trailers
//! are relayed like any other.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `grpc-timeout`: the call's deadline, relative to when the request was sent.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-status`: the call's status code, in the trailers (or the head of a trailers-only
/// response).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status's percent-encoded description.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status code 4, `DEADLINE_EXCEEDED`.
pub const DEADLINE_EXCEEDED: u8 = 4;

/// The trailers a gRPC server sends, announced in `Trailer` to an HTTP/1.1 client that accepts
/// trailers when the backend did not announce any (HTTP/2 needs no announcement; hyper's
/// HTTP/1.1 encoder sends only announced trailer fields, RFC 9110 §6.6.2).
pub const TRAILER_NAMES: HeaderValue =
    HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin");

/// Whether the request or response is gRPC: its `content-type` is `application/grpc` or
/// `application/grpc+FORMAT` (`application/grpc-web` is another protocol).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(|ct| {
            ct.strip_prefix(b"application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
        })
}

/// The call's deadline from `grpc-timeout`: at most 8 ASCII digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`). `None` when absent or malformed (a malformed one is relayed untouched and
/// left to the backend to reject).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The head of a trailers-only response (gRPC over HTTP/2, "Responses"), which goes with
/// status `200` and no body: `content-type: application/grpc`, `grpc-status` and
/// `grpc-message`. Over HTTP/1.1 it is an ordinary empty response with those headers.
pub fn trailers_only(headers: &mut HeaderMap, code: u8, message: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, v);
    }
}

/// `grpc-message` encoding: printable ASCII but `%` as is, everything else `%XX` per byte.
fn percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The path of the standard health check method.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// A `HealthCheckRequest` for the whole server (`service = ""`: every field at its default
/// encodes to nothing) in one length-prefixed message: not compressed, length 0.
pub const HEALTH_CHECK_REQUEST: Bytes = Bytes::from_static(&[0, 0, 0, 0, 0]);

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Whether a health check's response body (length-prefixed messages, as received) says
/// `SERVING`: one uncompressed message whose field 1 (`status`, a varint) is 1. Anything else —
/// `NOT_SERVING`, `UNKNOWN` (the default, encoded as nothing), a compressed or truncated
/// message — is not healthy.
pub fn health_is_serving(body: &[u8]) -> bool {
    let Some((0, rest)) = body.split_first().map(|(&flag, rest)| (flag, rest)) else {
        return false;
    };
    let Some((len, mut message)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    if message.len() != u32::from_be_bytes(*len) as usize {
        return false;
    }
    let mut status = 0;
    while let Some((&key, rest)) = message.split_first() {
        let Some((value, rest)) = varint(rest) else {
            return false;
        };
        match key {
            0x08 => status = value,
            // Unknown varint fields are skipped; other wire types are not expected here.
            k if k & 0x07 == 0 => {}
            _ => return false,
        }
        message = rest;
    }
    status == SERVING
}

/// A protobuf varint at the start of `bytes`, and what follows it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_with_their_units() {
        let at = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_static(v));
            timeout(&h)
        };
        assert_eq!(at("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(at("2M"), Some(Duration::from_secs(120)));
        assert_eq!(at("3S"), Some(Duration::from_secs(3)));
        assert_eq!(at("250m"), Some(Duration::from_millis(250)));
        assert_eq!(at("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(at("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_content_types() {
        let of = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&h)
        };
        assert!(of("application/grpc"));
        assert!(of("application/grpc+proto"));
        assert!(!of("application/grpc-web"));
        assert!(!of("application/json"));
    }

    #[test]
    fn trailers_only_carries_status_and_encoded_message() {
        let mut h = HeaderMap::new();
        trailers_only(&mut h, DEADLINE_EXCEEDED, "late: 100% \u{e9}");
        assert_eq!(h[GRPC_STATUS], "4");
        assert_eq!(h[GRPC_MESSAGE], "late: 100%25 %C3%A9");
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
    }

    #[test]
    fn health_responses() {
        assert!(health_is_serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        assert!(!health_is_serving(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert!(
            !health_is_serving(&[0, 0, 0, 0, 0]),
            "UNKNOWN is encoded as nothing"
        );
        assert!(!health_is_serving(&[1, 0, 0, 0, 2, 0x08, 1]), "compressed");
        assert!(!health_is_serving(&[0, 0, 0, 0, 3, 0x08, 1]), "truncated");
        assert!(!health_is_serving(&[]));
        assert!(
            health_is_serving(&[0, 0, 0, 0, 4, 0x10, 5, 0x08, 1]),
            "unknown field"
        );
    }
}
