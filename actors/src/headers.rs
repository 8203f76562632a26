//! Header rewriting between the client and the backend (RFC 9110 §7.6.1 and the de-facto
//! `X-Forwarded-*` convention).
//!
//! Hop-by-hop headers describe one connection, not the message, so a proxy removes them in both
//! directions: the fixed list below plus every header the `Connection` header names. A WebSocket
//! handshake is the one exception: its `Connection: Upgrade` / `Upgrade: websocket` pair is
//! re-added for the backend, and a backend's `101` goes back untouched.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

/// Headers that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive` that old clients still send). `Trailer` is
/// not one: it announces the message's own trailer fields (RFC 9110 §6.6.2), which are relayed.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes every hop-by-hop header from `headers`, including those named by `Connection`
/// (RFC 9110 §7.6.1). `Upgrade` is always removed here; callers put the WebSocket pair back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are removed first, while Connection is still there to read.
    // Collecting them costs an allocation only when Connection names something unusual.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP.iter() {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Whether the client accepts trailer fields: its `TE` lists `trailers` (RFC 9110 §10.1.4).
/// Read before [`strip_hop_by_hop`] removes `TE`.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
                .eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// Turns a request head prepared for an HTTP/1.1 backend into one for an HTTP/2 backend
/// (RFC 9113 §8.3.1): the target becomes absolute (`:scheme` and `:authority` from `Host`, which
/// is then dropped, else the member's address), and `te: trailers` — the one connection-specific
/// field HTTP/2 allows (§8.2.2) — is kept when the client sent it, since gRPC servers want it.
pub fn to_http2(
    parts: &mut http::request::Parts,
    tls: bool,
    backend: std::net::SocketAddr,
    trailers: bool,
) {
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(backend.to_string()).ok());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    uri.authority = authority;
    uri.path_and_query = parts.uri.path_and_query().cloned();
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(absolute) = Uri::from_parts(uri) {
        parts.uri = absolute;
    }
    parts.version = Version::HTTP_2;
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Joins the `cookie` field lines an HTTP/2 client may split its cookies into (RFC 9113
/// §8.2.3) into the one line an HTTP/1.1 backend expects, separated by `"; "`. Allocates only
/// when there is more than one line.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(header::COOKIE).iter();
    if lines.next().is_none() || lines.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, line) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Puts back the `Connection: Upgrade` / `Upgrade: websocket` pair on a WebSocket handshake
/// after [`strip_hop_by_hop`].
pub fn set_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Adds `X-Forwarded-For` (appending the client's address to any list a previous proxy started),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (both kept when a previous proxy already set them).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut ip_buf = IpText::default();
    let ip = ip_buf.format(client_ip);
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + ip.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        None => HeaderValue::from_str(ip).ok(),
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR, xff);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
}

/// The one parser of host-and-port text, shared with the configuration's checks (which is
/// why it lives in `tether-config`): `Host` values, request-target authorities, TLS server
/// names and probe hosts are all split here.
pub use tether_config::authority::{parse_authority, Authority};

/// Why a request's host could not be established (RFC 9112 §3.2: each is answered `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// An HTTP/1.1 request without a `Host` header (RFC 9112 §3.2).
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    /// More than one `Host` field line (RFC 9112 §3.2).
    #[error("more than one Host header")]
    Duplicate,
    /// A `Host` value that is not `host[:port]` (RFC 9110 §7.2).
    #[error("invalid Host header")]
    Invalid,
    /// An absolute-form target that is not `http` or `https`, carries userinfo (RFC 9110
    /// §4.2.4) or has no valid host.
    #[error("invalid request target authority")]
    BadTarget,
    /// An HTTP/2 request whose `Host` names another authority than its `:authority` (RFC 9113
    /// §8.3.1: malformed).
    #[error("Host does not match :authority")]
    Mismatch,
}

/// The one host a request is for, checked (RFC 9112 §3.2, §3.2.2; RFC 9110 §7.2):
///
/// * at most one `Host` line, and a valid `host[:port]` when present; HTTP/1.1 needs one,
///   HTTP/1.0 may go without;
/// * an absolute-form (or authority-form) target's authority wins over `Host`. The second value
///   is `Some` exactly then: the `Host` value the request must carry instead of the one it came
///   with, so the route and the backend see the same single host;
/// * HTTP/2 (RFC 9113 §8.3.1): `:authority` is the host (hyper puts it in the URI), `Host` may
///   be absent, and a `Host` naming another authority makes the request malformed.
///
/// The first value is the host to route by (`None`: an HTTP/1.0 request without one).
pub fn request_host<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<(Option<&'a str>, Option<HeaderValue>), HostError> {
    let mut lines = headers.get_all(header::HOST).iter();
    let host = lines.next();
    if lines.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let host = match host {
        Some(value) => {
            let text = value.to_str().map_err(|_| HostError::Invalid)?;
            parse_authority(text).ok_or(HostError::Invalid)?;
            Some(text)
        }
        None if version == Version::HTTP_2 && uri.authority().is_some() => None,
        None if version >= Version::HTTP_11 => return Err(HostError::Missing),
        None => None,
    };
    let Some(authority) = uri.authority() else {
        return Ok((host, None));
    };
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Err(HostError::BadTarget);
    }
    let target = authority.as_str();
    if target.contains('@') || parse_authority(target).is_none() {
        return Err(HostError::BadTarget);
    }
    if host.is_some_and(|h| h == target) {
        return Ok((host, None));
    }
    if version == Version::HTTP_2 && host.is_some_and(|h| !h.eq_ignore_ascii_case(target)) {
        return Err(HostError::Mismatch);
    }
    let replacement = HeaderValue::from_str(target).map_err(|_| HostError::BadTarget)?;
    Ok((Some(target), Some(replacement)))
}

/// A stack buffer for an IP address in text form, so `X-Forwarded-For` costs no heap allocation
/// for the address itself.
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText {
            buf: [0; 45],
            len: 0,
        }
    }
}

impl IpText {
    fn format(&mut self, ip: IpAddr) -> &str {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        // 45 bytes holds the longest IPv6 text form; a failure would only truncate.
        let _ = write!(cursor, "{ip}");
        self.len = cursor.position() as usize;
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(
            h[header::TRAILER],
            "x-checksum",
            "end to end (RFC 9110 §6.6.2)"
        );
    }

    #[test]
    fn te_trailers_is_read_and_an_http2_head_is_absolute() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers;q=1"));
        assert!(accepts_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        assert!(!accepts_trailers(&h));
        let backend = std::net::SocketAddr::from(([127, 0, 0, 1], 5000));
        let (mut parts, ()) = http::Request::get("/a?b")
            .header(header::HOST, "svc:81")
            .body(())
            .unwrap()
            .into_parts();
        to_http2(&mut parts, true, backend, true);
        assert_eq!(parts.uri, "https://svc:81/a?b");
        assert_eq!(parts.version, Version::HTTP_2);
        assert!(parts.headers.get(header::HOST).is_none());
        assert_eq!(parts.headers[header::TE], "trailers");
        let (mut parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        to_http2(&mut parts, false, backend, false);
        assert_eq!(parts.uri, "http://127.0.0.1:5000/");
        assert!(parts.headers.get(header::TE).is_none());
    }

    #[test]
    fn forwarded_headers_append_and_keep() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("chat.example.com");
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "chat.example.com");

        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::1".parse().unwrap(), "http", None);
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(&X_FORWARDED_HOST));
    }

    fn host_of(
        version: Version,
        target: &str,
        hosts: &[&'static str],
    ) -> Result<(Option<String>, Option<HeaderValue>), HostError> {
        let uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, HeaderValue::from_static(h));
        }
        request_host(version, &uri, &headers).map(|(h, r)| (h.map(str::to_owned), r))
    }

    #[test]
    fn one_host_per_request() {
        use Version as V;
        assert_eq!(
            host_of(V::HTTP_11, "/x", &["a.example"]),
            Ok((Some("a.example".into()), None))
        );
        assert_eq!(host_of(V::HTTP_11, "/x", &[]), Err(HostError::Missing));
        assert_eq!(host_of(V::HTTP_10, "/x", &[]), Ok((None, None)));
        assert_eq!(
            host_of(V::HTTP_11, "/x", &["a.example", "a.example"]),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            host_of(V::HTTP_10, "/x", &["a", "b"]),
            Err(HostError::Duplicate)
        );
        assert_eq!(host_of(V::HTTP_11, "/x", &[""]), Err(HostError::Invalid));
        assert_eq!(
            host_of(V::HTTP_11, "/x", &["a.example:99999"]),
            Err(HostError::Invalid)
        );
        // Absolute form: the target's authority replaces Host (RFC 9112 §3.2.2).
        assert_eq!(
            host_of(V::HTTP_11, "http://a.example/x", &["b.example"]),
            Ok((
                Some("a.example".into()),
                Some(HeaderValue::from_static("a.example"))
            ))
        );
        assert_eq!(
            host_of(V::HTTP_11, "http://a.example:8080/x", &["a.example:8080"]),
            Ok((Some("a.example:8080".into()), None))
        );
        assert_eq!(
            host_of(V::HTTP_11, "http://a.example/x", &[]),
            Err(HostError::Missing)
        );
        assert_eq!(
            host_of(V::HTTP_10, "http://a.example/x", &[]).map(|(h, _)| h),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_of(V::HTTP_11, "http://u@a.example/x", &["a.example"]),
            Err(HostError::BadTarget)
        );
        assert_eq!(
            host_of(V::HTTP_11, "ftp://a.example/x", &["a.example"]),
            Err(HostError::BadTarget)
        );
    }
}
