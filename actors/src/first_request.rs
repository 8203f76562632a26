//! The first request of an HTTP/1.1 connection, read by Tether itself rather than by hyper.
//!
//! Most connections that reach a WebSocket sidecar carry exactly one request: the opening
//! handshake, after which the connection belongs to the session. Serving that one request
//! through a full HTTP server connection (its buffers, dispatcher, and the upgrade hand-over:
//! a oneshot, a boxed I/O and a task that waits for it) costs more CPU and memory than the
//! request itself, so the worker reads a new connection's first bytes here and decides:
//!
//! * **An HTTP/2 preface** (`PRI * HTTP/2.0…`, RFC 9113 §3.4) on a plain listener with `http2`
//!   on: the bytes go to hyper's HTTP/2 server ([`First::Http2`]). This replaces peeking at the
//!   socket (`MSG_PEEK`): the bytes are read once.
//! * **A WebSocket opening handshake in its plainest form** ([`First::WebSocket`]): `GET`,
//!   `HTTP/1.1`, a complete head within `max_request_head_bytes` and `max_headers`, no
//!   `Content-Length` and no `Transfer-Encoding`, and an `Upgrade` header naming `websocket`.
//!   The worker answers it itself and, on a `101`, hands the socket straight to the session.
//! * **Anything else** ([`First::Http1`]), including every request hyper would refuse: the bytes
//!   read so far go to hyper's HTTP/1.1 server ahead of the socket ([`Prefixed`]), and it parses
//!   them as if it had read them. So every rule hyper enforces (and every answer it gives to a
//!   malformed or oversized head) holds unchanged: this module only ever *takes* a request that
//!   parses cleanly under the same `httparse` rules, and gives back everything it is unsure of.
//!
//! The head is bounded by the listener's `request_head_timeout` (the caller's timeout) and
//! `max_request_head_bytes`. An idle connection costs no buffer before its first byte: the
//! buffer (starting at [`HEAD_START`] bytes) is kept only once a read brought bytes.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

use crate::handshake;
use crate::http2::{self, Match};

/// What the head buffer starts at; it doubles as needed up to the listener's
/// `max_request_head_bytes`. A browser's WebSocket handshake is typically 0.4–1 KiB.
pub const HEAD_START: usize = 2048;

/// The most header fields this module parses; a head with more goes to hyper (which applies
/// the listener's own `max_headers`).
const MAX_PARSED_HEADERS: usize = 128;

/// What a connection's first bytes turned out to be.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // matched at once by the caller; a box would cost an allocation per handshake
pub enum First {
    /// The HTTP/2 connection preface: these bytes (the preface and whatever followed it) go to
    /// the HTTP/2 server first.
    Http2(Bytes),
    /// Anything but a plain WebSocket handshake: these bytes go to the HTTP/1.1 server first.
    Http1(Bytes),
    /// A WebSocket opening handshake, parsed, with no body.
    WebSocket(Handshake),
}

/// A WebSocket opening handshake read by [`read_head`].
#[derive(Debug)]
pub struct Handshake {
    /// The request head (its header values share one buffer with the head as read).
    pub request: Request<()>,
    /// Bytes the client sent after the head (frames sent before the `101`, or the next request
    /// of a client that pipelines), copied out so that the head's buffer is not kept alive.
    pub rest: Bytes,
    /// The request said `Connection: close`: no second request follows a refusal.
    pub close: bool,
}

/// The limits [`first_bytes`] and [`read_head`] apply: the listener's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head, in bytes.
    pub max_head_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Recognise the HTTP/2 preface (a plain listener with `http2` on).
    pub http2_preface: bool,
}

/// Waits for a connection's first bytes and reads them (see [`read_head`] for the rest); `None`
/// when the client left, or the read failed, before sending a byte.
pub async fn first_bytes<S: AsyncRead + Unpin>(io: &mut S, limits: Limits) -> Option<BytesMut> {
    let start = HEAD_START.min(limits.max_head_bytes.max(64));
    match first_read(io, start).await {
        Ok(buf) if !buf.is_empty() => Some(buf),
        _ => None,
    }
}

/// Reads the rest of the first request head after its first bytes (`buf`, from
/// [`first_bytes`]) and says what the connection is (see the module doc). The caller bounds
/// both with the listener's `request_head_timeout`.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    mut buf: BytesMut,
    limits: Limits,
) -> First {
    // Bytes of `buf` already searched for the end of the head.
    let mut scanned: usize = 0;
    loop {
        match limits.http2_preface.then(|| http2::preface_match(&buf)) {
            Some(Match::Full) => return First::Http2(buf.freeze()),
            // A preface in pieces: more bytes decide.
            Some(Match::Partial) => {}
            Some(Match::No) | None => {
                // The end of the head: an empty line (RFC 9112 §2.1). Only new bytes are
                // searched.
                let from = scanned.saturating_sub(3);
                if let Some(end) = find_head_end(&buf[from..]) {
                    return classify(buf, from + end, limits);
                }
                scanned = buf.len();
            }
        }
        if buf.capacity() == buf.len() {
            if buf.len() >= limits.max_head_bytes {
                // Over the limit: hyper answers it as it always has (431).
                return First::Http1(buf.freeze());
            }
            buf.reserve(buf.len().min(limits.max_head_bytes - buf.len()).max(64));
        }
        match io.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            // A head cut short: hyper decides what that deserves, as before.
            _ => return First::Http1(buf.freeze()),
        }
    }
}

/// The connection's first read, into a buffer of `capacity` allocated for each attempt: a
/// connection that has sent nothing yet (its socket may look readable at first and is not)
/// holds no buffer while it waits.
async fn first_read<S: AsyncRead + Unpin>(io: &mut S, capacity: usize) -> io::Result<BytesMut> {
    std::future::poll_fn(|cx| {
        let mut buf = BytesMut::with_capacity(capacity);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => Poll::Ready(result.map(|_| buf)),
        }
    })
    .await
}

/// Where the head ends (just past its empty line) in `bytes`, if it does.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Takes the head in `buf[..end]` as a WebSocket handshake if it is one in its plainest form
/// (see the module doc); anything else goes to hyper as it was read.
fn classify(buf: BytesMut, end: usize, limits: Limits) -> First {
    let bytes = buf.freeze();
    if end > limits.max_head_bytes {
        return First::Http1(bytes);
    }
    match parse_handshake(&bytes, end, limits) {
        Some((request, close)) => {
            let rest = if bytes.len() > end {
                Bytes::copy_from_slice(&bytes[end..])
            } else {
                Bytes::new()
            };
            First::WebSocket(Handshake {
                request,
                rest,
                close,
            })
        }
        None => First::Http1(bytes),
    }
}

/// Parses `bytes[..end]` with `httparse` (the parser, and the rules, hyper's server uses) and
/// keeps it only if it is a plain WebSocket handshake: the request (its target and header
/// values are slices of `bytes`, not copies), and whether it said `Connection: close`.
fn parse_handshake(bytes: &Bytes, end: usize, limits: Limits) -> Option<(Request<()>, bool)> {
    let head = &bytes[..end];
    let mut fields = [httparse::EMPTY_HEADER; MAX_PARSED_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        _ => return None,
    }
    if req.method != Some("GET") || req.version != Some(1) || req.headers.len() > limits.max_headers
    {
        return None;
    }
    let base = head.as_ptr() as usize;
    let slice = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        bytes.slice(start..start + s.len())
    };
    // Decided on the raw fields first, so a request that is not taken costs no allocation.
    let mut upgrade_websocket = false;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            // A body, or a claim of one: hyper's rules decide (a handshake with one is refused).
            return None;
        }
        if name.eq_ignore_ascii_case(b"upgrade") && handshake::has_token(h.value, b"websocket") {
            upgrade_websocket = true;
        }
        if name.eq_ignore_ascii_case(b"connection") && handshake::has_token(h.value, b"close") {
            close = true;
        }
    }
    if !upgrade_websocket {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_maybe_shared(slice(h.value)).ok()?);
    }
    let uri = Uri::from_maybe_shared(slice(req.path?.as_bytes())).ok()?;
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some((request, close))
}

/// Serializes a response head for HTTP/1.1 (RFC 9112 §4) with `body` after it, into one
/// buffer: the status line with the status' canonical reason, every header in order, `date`
/// on a final answer without one, and — for a status that has content (not 1xx, 204 or 304)
/// and no `Content-Length` of its own — `content-length`. `close` adds `connection: close`.
pub fn response_bytes(resp: &Response<()>, body: &[u8], close: bool) -> Vec<u8> {
    let status = resp.status();
    let reason = status.canonical_reason().unwrap_or("");
    let has_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let mut len = b"HTTP/1.1 000 \r\n".len() + reason.len() + 2 + body.len() + 40;
    for (name, value) in resp.headers() {
        len += name.as_str().len() + 2 + value.len() + 2;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // RFC 9110 §6.6.1: a final answer carries `Date` (hyper's server adds it the same way).
    if !status.is_informational() && !resp.headers().contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if has_body && !resp.headers().contains_key(header::CONTENT_LENGTH) {
        // Writing into a `Vec` cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if has_body {
        out.extend_from_slice(body);
    }
    out
}

/// A connection with bytes already read from it in front: reads return `prefix` first, then
/// the connection's own bytes; writes go straight to the connection. This is how bytes
/// [`read_head`] took from a socket reach the server that serves the rest of the connection.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }

    /// The connection, and the prefix bytes not read yet.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the head buffer as soon as it has been consumed.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A client that sends `chunks`, one read each, then ends the stream.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    const LIMITS: Limits = Limits {
        max_head_bytes: 8192,
        max_headers: 100,
        http2_preface: true,
    };

    const HANDSHAKE: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Dup: a\r\nX-Dup: b\r\n\r\n";

    async fn first(chunks: &[&[u8]], limits: Limits) -> Option<First> {
        let mut io = Chunks(chunks.iter().map(|c| c.to_vec()).collect());
        let bytes = first_bytes(&mut io, limits).await?;
        Some(read_head(&mut io, bytes, limits).await)
    }

    #[tokio::test]
    async fn a_plain_handshake_is_taken_with_its_headers_in_order_and_what_followed_it() {
        let mut sent = HANDSHAKE.to_vec();
        sent.extend_from_slice(b"\x81\x80early");
        // Split inside the empty line that ends the head, as a slow client may.
        let (a, b) = sent.split_at(HANDSHAKE.len() - 3);
        let Some(First::WebSocket(h)) = first(&[a, b], LIMITS).await else {
            panic!("not taken as a handshake");
        };
        assert_eq!(h.request.method(), Method::GET);
        assert_eq!(h.request.uri(), "/chat?room=1");
        assert_eq!(h.request.version(), Version::HTTP_11);
        let dup: Vec<_> = h.request.headers().get_all("x-dup").iter().collect();
        assert_eq!(dup, ["a", "b"]);
        assert_eq!(h.request.headers()["sec-websocket-version"], "13");
        assert_eq!(&h.rest[..], b"\x81\x80early");
        assert!(!h.close);
    }

    #[tokio::test]
    async fn anything_but_a_plain_handshake_goes_to_hyper_byte_for_byte() {
        let with = |extra: &str| {
            let text = std::str::from_utf8(HANDSHAKE).unwrap();
            text.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1)
                .into_bytes()
        };
        let cases: Vec<Vec<u8>> = vec![
            with("Content-Length: 0"),
            with("Transfer-Encoding: chunked"),
            HANDSHAKE.replacen_bytes(b"GET", b"POST"),
            HANDSHAKE.replacen_bytes(b"HTTP/1.1", b"HTTP/1.0"),
            HANDSHAKE.replacen_bytes(b"Upgrade: websocket", b"Upgrade: h2c"),
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            // Obsolete line folding, which httparse refuses in requests (and so does hyper).
            with("X-Fold: a\r\n b"),
            // A target `http` does not take.
            HANDSHAKE.replacen_bytes(b"/chat?room=1", b"/\x7f"),
        ];
        for sent in cases {
            match first(&[&sent], LIMITS).await {
                Some(First::Http1(bytes)) => assert_eq!(&bytes[..], &sent[..]),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&sent)),
            }
        }
    }

    #[tokio::test]
    async fn connection_close_is_noted() {
        let text = std::str::from_utf8(HANDSHAKE).unwrap();
        let sent = text.replacen("Connection: Upgrade", "Connection: Upgrade, close", 1);
        let Some(First::WebSocket(h)) = first(&[sent.as_bytes()], LIMITS).await else {
            panic!("not taken");
        };
        assert!(h.close);
    }

    #[tokio::test]
    async fn the_http2_preface_is_recognised_even_in_pieces_and_only_when_asked() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        let Some(First::Http2(bytes)) =
            first(&[&preface[..3], &preface[3..20], &preface[20..]], LIMITS).await
        else {
            panic!("preface not recognised");
        };
        assert_eq!(&bytes[..], &preface[..]);
        let http1_only = Limits {
            http2_preface: false,
            ..LIMITS
        };
        assert!(matches!(
            first(&[preface], http1_only).await,
            Some(First::Http1(_))
        ));
    }

    #[tokio::test]
    async fn an_oversized_or_cut_head_goes_to_hyper_and_silence_is_none() {
        let small = Limits {
            max_head_bytes: 64,
            ..LIMITS
        };
        match first(&[HANDSHAKE], small).await {
            Some(First::Http1(bytes)) => {
                assert!(bytes.len() >= 64 && HANDSHAKE.starts_with(&bytes))
            }
            other => panic!("{other:?}"),
        }
        match first(&[&HANDSHAKE[..40]], LIMITS).await {
            Some(First::Http1(bytes)) => assert_eq!(&bytes[..], &HANDSHAKE[..40]),
            other => panic!("{other:?}"),
        }
        assert!(first(&[], LIMITS).await.is_none());
    }

    #[test]
    fn responses_carry_their_length_unless_they_have_no_content() {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut()
            .insert("x-reason", HeaderValue::from_static("closed"));
        let bytes = response_bytes(&resp, b"go away", true);
        let text = String::from_utf8(bytes).unwrap();
        let (head, date_and_rest) = text.split_once("date: ").expect("a Date header");
        assert_eq!(head, "HTTP/1.1 403 Forbidden\r\nx-reason: closed\r\n");
        let (date, rest) = date_and_rest.split_once("\r\n").unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
        assert_eq!(
            rest,
            "content-length: 7\r\nconnection: close\r\n\r\ngo away"
        );
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let bytes = response_bytes(&resp, b"", false);
        assert_eq!(
            &bytes[..],
            b"HTTP/1.1 101 Switching Protocols\r\nx-reason: closed\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first_then_the_connection() {
        let inner = Chunks(VecDeque::from([b"world".to_vec()]));
        let mut io = Prefixed::new(Bytes::from_static(b"hello "), inner);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    trait ReplaceBytes {
        fn replacen_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceBytes for [u8] {
        fn replacen_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let at = self
                .windows(from.len())
                .position(|w| w == from)
                .expect("present");
            [&self[..at], to, &self[at + from.len()..]].concat()
        }
    }
}
