//! The WebSocket handshake towards a backend, written by hand over the raw connection.
//!
//! An upgrade uses its backend connection for exactly one exchange, so a full HTTP client
//! (connection task, channels, upgrade plumbing) buys nothing and costs CPU per handshake and a
//! task that outlives its use. Instead:
//!
//! 1. [`request_head`] serializes the prepared request head (RFC 9112 §3, §5) into one buffer,
//!    written with one `write_all`. The head came from hyper's parser and Tether's own rewriting,
//!    so nothing is validated again here.
//! 2. [`exchange`] reads the response head into one buffer (1 KiB, grown up to [`MAX_HEAD`]) and
//!    parses it with `httparse` once it is complete. Interim `1xx` answers other than `101` are
//!    skipped (RFC 9110 §15.2). Header values are slices of that buffer: no copy per header.
//! 3. A `101` gives back its head as the backend sent it and the bytes read past it; the caller
//!    hands the socket itself to the session.
//! 4. Any other answer is a refusal: its body is read in full (at most [`MAX_BODY`] bytes),
//!    following `Transfer-Encoding: chunked` (RFC 9112 §7.1), `Content-Length`, or the end of
//!    the connection (RFC 9112 §6.3), and relayed with a `Content-Length` of its decoded size.
//!
//! Everything after the request is written — head, and a refusal's body — must arrive within the
//! route's `request_timeout` ([`ExchangeError::Timeout`]; the request path answers 504). A
//! connection that fails or closes early, or an answer that is malformed or over a limit, is
//! [`ExchangeError::Answer`] (502, and a passive failure of the member). The request path turns
//! both into its `ProxyError`; this module knows nothing of it.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use bytes::{BufMut as _, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The largest response head accepted; a larger one is malformed.
pub const MAX_HEAD: usize = 16 * 1024;

/// The largest refusal body relayed (after chunked decoding); a larger one is answered 502.
pub const MAX_BODY: usize = 64 * 1024;

/// What the response head buffer starts at; it doubles as needed up to [`MAX_HEAD`].
const HEAD_START: usize = 1024;

/// The most headers a response head may carry (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;

/// Headers the request path may add to a backend's response head (see [`build_head`]).
const HEAD_EXTRA: usize = 4;

/// The longest chunk-size line (size and extensions) of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// Why [`exchange`] gave no answer to relay.
#[derive(Debug)]
pub enum ExchangeError {
    /// No complete answer within `request_timeout`.
    Timeout {
        /// The member we tried.
        backend: SocketAddr,
        /// The deadline that ran out.
        after: Duration,
    },
    /// The answer could not be relayed ([`AnswerError`]).
    Answer {
        /// The member we tried.
        backend: SocketAddr,
        /// What went wrong.
        cause: AnswerError,
    },
}

/// Why a backend's HTTP/1.1 answer could not be relayed: a WebSocket handshake's (here), or an
/// ordinary request's (`crate::upstream`'s HTTP/1.1 client, which shares this parsing).
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Reading or writing the connection failed (reset, broken pipe, TLS error).
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The backend closed the connection before its response head was complete.
    #[error("closed the connection before its response head was complete")]
    ClosedInHead,
    /// The response head is longer than [`MAX_HEAD`].
    #[error("response head larger than {} bytes", MAX_HEAD)]
    HeadTooLarge,
    /// The response head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    BadHead(httparse::Error),
    /// A header name or value httparse accepted but `http` does not.
    #[error("malformed response header")]
    BadHeader,
    /// The status code is outside 100–999.
    #[error("invalid status code")]
    BadStatus,
    /// `Content-Length` is not one decimal number.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// The chunked body breaks RFC 9112 §7.1.
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    /// The refusal's body is longer than [`MAX_BODY`].
    #[error("refusal body larger than {} bytes", MAX_BODY)]
    BodyTooLarge,
    /// A `101` whose `Sec-WebSocket-Accept` does not answer the key Tether sent (an HTTP/2
    /// client's handshake, where Tether makes the key: RFC 8441 §5, RFC 6455 §4.1).
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    BadAccept,
    /// The backend closed the connection before the body it announced was complete.
    #[error("closed the connection before the response body was complete")]
    ClosedInBody,
    /// Both `Transfer-Encoding` and `Content-Length`: the framing is ambiguous, the mark of
    /// request smuggling (RFC 9112 §6.3 item 3).
    #[error("both Transfer-Encoding and Content-Length")]
    BothLengths,
    /// `Transfer-Encoding` on an HTTP/1.0 response, which has no transfer codings (RFC 9112 §6.1).
    #[error("Transfer-Encoding on an HTTP/1.0 response")]
    TransferEncodingOnHttp10,
    /// More bytes after a complete response than it announced (nothing else was asked).
    #[error("response longer than its framing announced")]
    LongerThanAnnounced,
}

/// The backend's answer to a WebSocket handshake.
#[derive(Debug)]
pub enum UpgradeAnswer<Io> {
    /// `101 Switching Protocols`: the connection now carries the WebSocket.
    Switched {
        /// Status and headers exactly as the backend sent them (order kept, duplicates kept).
        head: Response<()>,
        /// The backend's connection.
        io: Io,
        /// Bytes the backend sent right after its 101, read with the head.
        prefix: Bytes,
    },
    /// Any other final answer, read in full: the body is decoded, `Transfer-Encoding` removed
    /// and `Content-Length` set to the body's length (except on 204 and 304, which have none).
    Refused(Response<Bytes>),
}

impl<Io> UpgradeAnswer<Io> {
    /// The same answer over another connection type (`io` is only called on a `101`).
    pub fn map_io<T>(self, io: impl FnOnce(Io) -> T) -> UpgradeAnswer<T> {
        match self {
            UpgradeAnswer::Switched {
                head,
                io: inner,
                prefix,
            } => UpgradeAnswer::Switched {
                head,
                io: io(inner),
                prefix,
            },
            UpgradeAnswer::Refused(resp) => UpgradeAnswer::Refused(resp),
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            UpgradeAnswer::Switched { head, .. } => head.status(),
            UpgradeAnswer::Refused(resp) => resp.status(),
        }
    }
}

/// Serializes a request head for HTTP/1.1 (RFC 9112 §3, §5): the request line with the
/// origin-form target, then every header — all values of a repeated one, in order — and the
/// empty line, into one buffer of exactly the right size.
pub fn request_head(parts: &http::request::Parts) -> Vec<u8> {
    let mut out = Vec::new();
    write_request_head(&parts.method, &parts.uri, &parts.headers, &[], &mut out);
    debug_assert_eq!(out.len(), out.capacity(), "sized exactly");
    out
}

/// [`request_head`] appended to `out` (reserved once, to the exact size), with `extra` — whole
/// header lines, each ending in CRLF, such as the body's framing — after the headers.
pub(crate) fn write_request_head(
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    extra: &[u8],
    out: &mut Vec<u8>,
) {
    let method = method.as_str().as_bytes();
    let target = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .as_bytes();
    let mut len = method.len() + 1 + target.len() + b" HTTP/1.1\r\n".len() + extra.len() + 2;
    for (name, value) in headers {
        len += name.as_str().len() + 2 + value.len() + 2;
    }
    out.reserve_exact(len);
    let start = out.len();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    debug_assert_eq!(out.len() - start, len);
}

/// Writes `request` (a head from [`request_head`]) on `io` and reads the backend's answer, all
/// within `request_timeout`. On a `101` the connection is given back as it is, with the bytes
/// read past the head; on anything else the body is read in full and the connection is done.
pub async fn exchange<Io>(
    mut io: Io,
    request: &[u8],
    backend: SocketAddr,
    request_timeout: Duration,
) -> Result<UpgradeAnswer<Io>, ExchangeError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(request_timeout, exchange_on(&mut io, request)).await {
        Err(_) => Err(ExchangeError::Timeout {
            backend,
            after: request_timeout,
        }),
        Ok(Err(cause)) => Err(ExchangeError::Answer { backend, cause }),
        Ok(Ok(answer)) => Ok(answer.map_io(|()| io)),
    }
}

/// [`exchange`] without its deadline: write, read the head, and on a refusal read the body.
async fn exchange_on<Io>(io: &mut Io, request: &[u8]) -> Result<UpgradeAnswer<()>, AnswerError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(request).await?;
    // Over TLS the records may still sit in rustls; a plain socket's flush does nothing.
    io.flush().await?;
    let (buf, head_len) = read_head(io).await?;
    let buf = Bytes::from(buf);
    let rest = if buf.len() > head_len {
        buf.slice(head_len..)
    } else {
        Bytes::new()
    };
    let head = build_head(&buf, head_len)?;
    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(UpgradeAnswer::Switched {
            head,
            io: (),
            prefix: rest,
        });
    }
    let (mut parts, ()) = head.into_parts();
    let framing = framing(parts.status, &parts.headers)?;
    let body = read_body(io, framing, rest).await?;
    if framing != Framing::Empty {
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(UpgradeAnswer::Refused(Response::from_parts(parts, body)))
}

/// Reads until a final (non-interim) response head is complete; returns the buffer and the
/// head's length in it. Interim `1xx` heads (other than 101) are dropped from the buffer.
async fn read_head<Io>(io: &mut Io) -> Result<(Vec<u8>, usize), AnswerError>
where
    Io: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(HEAD_START);
    loop {
        if let Some((len, status)) = head_length(&buf)? {
            if (100..200).contains(&status) && status != 101 {
                buf.drain(..len);
                continue;
            }
            return Ok((buf, len));
        }
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                return Err(AnswerError::HeadTooLarge);
            }
            buf.reserve_exact(buf.len().min(MAX_HEAD - buf.len()));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(AnswerError::ClosedInHead);
        }
    }
}

/// The length of the response head at the start of `buf` and its status, once complete.
pub(crate) fn head_length(buf: &[u8]) -> Result<Option<(usize, u16)>, AnswerError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some((len, resp.code.unwrap_or(0)))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(AnswerError::BadHead(e)),
    }
}

/// Builds the response from the complete head at the start of `buf` (`len` bytes long): headers
/// in order, values sliced from `buf` (no copy). A reason phrase other than the status'
/// canonical one is kept, as hyper does.
pub(crate) fn build_head(buf: &Bytes, len: usize) -> Result<Response<()>, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    if !parsed
        .parse(&buf[..len])
        .map_err(AnswerError::BadHead)?
        .is_complete()
    {
        return Err(AnswerError::BadHead(httparse::Error::Status));
    }
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(AnswerError::BadStatus)?;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if let Some(reason) = parsed.reason {
        if !reason.is_empty() && status.canonical_reason() != Some(reason) {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(buf.slice_ref(reason.as_bytes()))
            {
                resp.extensions_mut().insert(reason);
            }
        }
    }
    let map = resp.headers_mut();
    // Room for what the request path adds (`X-Request-Id`, `Trailer`): a map sized exactly
    // would grow (reallocate) on the first insert.
    map.reserve(parsed.headers.len() + HEAD_EXTRA);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| AnswerError::BadHeader)?;
        let value = HeaderValue::from_maybe_shared(buf.slice_ref(h.value))
            .map_err(|_| AnswerError::BadHeader)?;
        map.append(name, value);
    }
    Ok(resp)
}

/// How a refusal's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: 204 and 304 (1xx never get here).
    Empty,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked,
    /// Until the backend closes: another transfer coding last, or no framing header at all.
    UntilEof,
}

/// The body framing of a (non-101) response to a GET, per RFC 9112 §6.3.
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, AnswerError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        // Transfer-Encoding overrides Content-Length; only a final `chunked` delimits the body.
        let final_coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
        return Ok(
            if final_coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::UntilEof
            },
        );
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // A list of identical values ("42, 42") is one length (RFC 9110 §8.6).
        for item in value.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(item.trim_ascii()).ok_or(AnswerError::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(AnswerError::BadContentLength);
            }
            length = Some(n);
        }
    }
    match length {
        None => Ok(Framing::UntilEof),
        Some(n) if n > MAX_BODY as u64 => Err(AnswerError::BodyTooLarge),
        Some(n) => Ok(Framing::Length(n as usize)),
    }
}

/// A non-empty run of ASCII digits as a number (no sign, no overflow).
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Reads a refusal's body as `framing` says, starting with `rest` (the bytes read past the head).
async fn read_body<Io>(io: &mut Io, framing: Framing, rest: Bytes) -> Result<Bytes, AnswerError>
where
    Io: AsyncRead + Unpin,
{
    match framing {
        Framing::Empty => Ok(Bytes::new()),
        Framing::Length(len) if rest.len() >= len => Ok(rest.slice(..len)),
        Framing::Length(len) => {
            let mut body = Vec::with_capacity(len);
            body.extend_from_slice(&rest);
            while body.len() < len {
                let room = len - body.len();
                if io.read_buf(&mut (&mut body).limit(room)).await? == 0 {
                    return Err(AnswerError::ClosedInBody);
                }
            }
            Ok(body.into())
        }
        Framing::UntilEof => {
            let mut body = Vec::with_capacity(rest.len().max(HEAD_START));
            body.extend_from_slice(&rest);
            loop {
                if body.len() > MAX_BODY {
                    return Err(AnswerError::BodyTooLarge);
                }
                if body.len() == body.capacity() {
                    // One byte past the limit is enough to know the body is too large.
                    body.reserve(body.len().min(MAX_BODY + 1 - body.len()));
                }
                let room = MAX_BODY + 1 - body.len();
                if io.read_buf(&mut (&mut body).limit(room)).await? == 0 {
                    return Ok(body.into());
                }
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut body = Vec::new();
            decoder.feed(&rest, &mut body)?;
            let mut raw = Vec::with_capacity(HEAD_START);
            while !decoder.is_done() {
                raw.clear();
                if io.read_buf(&mut raw).await? == 0 {
                    return Err(AnswerError::ClosedInBody);
                }
                decoder.feed(&raw, &mut body)?;
            }
            Ok(body.into())
        }
    }
}

/// Where a [`ChunkedDecoder`] is in the chunked grammar (RFC 9112 §7.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the chunk size.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// A chunk extension, up to CR (ignored).
    Ext,
    /// The LF ending the size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer line, or CR of the final empty line.
    TrailerStart,
    /// A trailer field line, up to CR (trailers are dropped).
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Decodes a chunked body as its bytes arrive, in any split: extensions are skipped, line ends
/// must be CRLF, and the decoded body may not exceed its limit ([`MAX_BODY`] for a refusal read
/// in full). A refusal's trailers are skipped; a streamed body ([`ChunkedDecoder::streaming`])
/// stops at its trailer section, which the caller parses and relays.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    /// The size being read, then the data bytes left in the current chunk.
    size: u64,
    /// Hex digits of the current size.
    digits: u8,
    /// Bytes of the current size line (extensions included).
    line: usize,
    /// Bytes of the trailer section so far.
    trailers: usize,
    /// Data bytes announced so far, and the most allowed.
    decoded: u64,
    limit: u64,
    /// Stop at the trailer section instead of skipping it.
    stop_at_trailers: bool,
}

impl Default for ChunkedDecoder {
    /// A refusal's body: at most [`MAX_BODY`] bytes, trailers skipped.
    fn default() -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            decoded: 0,
            limit: MAX_BODY as u64,
            stop_at_trailers: false,
        }
    }
}

impl ChunkedDecoder {
    /// A streamed body: no length limit, and it stops where the trailer section starts
    /// ([`ChunkedDecoder::at_trailers`]).
    pub(crate) fn streaming() -> ChunkedDecoder {
        ChunkedDecoder {
            limit: u64::MAX,
            stop_at_trailers: true,
            ..ChunkedDecoder::default()
        }
    }

    /// True once the last chunk and the trailer section have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// A streaming decoder that has read the last chunk: what follows is the trailer section
    /// (field lines, then an empty line), for the caller to parse ([`ChunkedDecoder::finish`]).
    pub(crate) fn at_trailers(&self) -> bool {
        self.stop_at_trailers && self.state == ChunkState::TrailerStart
    }

    /// The caller has read the trailer section: the body is complete.
    pub(crate) fn finish(&mut self) {
        self.state = ChunkState::Done;
    }

    /// Decodes `input` into `out`; bytes after the end of the body are ignored.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AnswerError> {
        loop {
            let (used, data) = self.step(input)?;
            out.extend_from_slice(&input[data]);
            input = &input[used..];
            if used == 0 || input.is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads framing from the start of `input` up to and including the next run of chunk data:
    /// returns how many bytes of `input` were used, and where among them the data is (an
    /// empty range when `input` ended in framing, or the body is done, or at the trailers).
    pub(crate) fn step(&mut self, input: &[u8]) -> Result<(usize, Range<usize>), AnswerError> {
        use ChunkState as S;
        let mut at = 0;
        while self.state != S::Done && !self.at_trailers() {
            let Some(&b) = input.get(at) else {
                break;
            };
            if self.state == S::Data {
                let n = (input.len() - at).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = S::DataCr;
                }
                return Ok((at + n, at..at + n));
            }
            at += 1;
            if matches!(self.state, S::Size | S::SizeWs | S::Ext) {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(AnswerError::BadChunk("chunk size line too long"));
                }
            }
            if matches!(self.state, S::TrailerStart | S::Trailer | S::TrailerLf) {
                self.trailers += 1;
                if self.trailers > MAX_HEAD {
                    return Err(AnswerError::BadChunk("trailer section too long"));
                }
            }
            self.state = match (self.state, b) {
                (S::Size, _) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err(AnswerError::BadChunk("chunk size too long"));
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    self.size = (self.size << 4) | u64::from(digit);
                    S::Size
                }
                (S::Size, _) if self.digits == 0 => {
                    return Err(AnswerError::BadChunk("missing chunk size"))
                }
                (S::Size | S::SizeWs, b' ' | b'\t') => S::SizeWs,
                (S::Size | S::SizeWs, b';') => S::Ext,
                (S::Size | S::SizeWs | S::Ext, b'\r') => S::SizeLf,
                (S::Size | S::SizeWs, _) => {
                    return Err(AnswerError::BadChunk("invalid chunk size"))
                }
                (S::Ext, b'\n') => return Err(AnswerError::BadChunk("bare LF in chunk extension")),
                (S::Ext, _) => S::Ext,
                (S::SizeLf, b'\n') if self.size == 0 => S::TrailerStart,
                (S::SizeLf, b'\n') => {
                    if self.size > self.limit - self.decoded {
                        return Err(AnswerError::BodyTooLarge);
                    }
                    self.decoded += self.size;
                    S::Data
                }
                (S::DataCr, b'\r') => S::DataLf,
                (S::DataLf, b'\n') => {
                    self.digits = 0;
                    self.line = 0;
                    S::Size
                }
                (S::DataCr | S::DataLf, _) => {
                    return Err(AnswerError::BadChunk("chunk data not followed by CRLF"))
                }
                (S::TrailerStart, b'\r') => S::EndLf,
                (S::TrailerStart | S::Trailer, b'\n') => {
                    return Err(AnswerError::BadChunk("bare LF in trailer section"))
                }
                (S::Trailer, b'\r') => S::TrailerLf,
                (S::TrailerStart | S::Trailer, _) => S::Trailer,
                (S::TrailerLf, b'\n') => S::TrailerStart,
                (S::EndLf, b'\n') => S::Done,
                (S::SizeLf | S::TrailerLf | S::EndLf, _) => {
                    return Err(AnswerError::BadChunk("line not ended by CRLF"))
                }
                // Data returns above, and the loop ends at Done.
                (S::Data | S::Done, _) => self.state,
            };
        }
        Ok((at, at..at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;
    use tokio::io::DuplexStream;

    /// [`super::exchange`] with its error as the request path sees it, which is what these
    /// tests assert on.
    async fn exchange<Io>(
        io: Io,
        request: &[u8],
        backend: SocketAddr,
        request_timeout: Duration,
    ) -> Result<UpgradeAnswer<Io>, ProxyError>
    where
        Io: AsyncRead + AsyncWrite + Unpin,
    {
        super::exchange(io, request, backend, request_timeout)
            .await
            .map_err(ProxyError::from)
    }

    const BACKEND: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    /// A backend on the other end of a duplex pipe that passes at most `chunk` bytes at a time
    /// (so every read on our side sees a small piece): it reads the request head, writes
    /// `answer`, then closes (or, with `hold`, stays silent and open). Gives back the request.
    fn backend(
        chunk: usize,
        answer: Vec<u8>,
        hold: bool,
    ) -> (DuplexStream, tokio::task::JoinHandle<Vec<u8>>) {
        let (ours, mut theirs) = tokio::io::duplex(chunk);
        let task = tokio::spawn(async move {
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if theirs.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            // Our side may stop reading early (an error); the rest of the answer is moot.
            let _ = theirs.write_all(&answer).await;
            if hold {
                std::future::pending::<()>().await;
            }
            request
        });
        (ours, task)
    }

    fn head() -> http::request::Parts {
        let (parts, ()) = http::Request::get("http://chat.example.com/ws?room=1")
            .header(header::HOST, "chat.example.com")
            .header("x-tag", "a")
            .header(header::CONNECTION, "Upgrade")
            .header("x-tag", "b")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    async fn run(chunk: usize, answer: &[u8]) -> Result<UpgradeAnswer<DuplexStream>, ProxyError> {
        let (io, peer) = backend(chunk, answer.to_vec(), false);
        let result = exchange(io, &request_head(&head()), BACKEND, Duration::from_secs(5)).await;
        peer.await.unwrap();
        result
    }

    fn refused(answer: UpgradeAnswer<DuplexStream>) -> Response<Bytes> {
        match answer {
            UpgradeAnswer::Refused(resp) => resp,
            UpgradeAnswer::Switched { .. } => panic!("expected a refusal"),
        }
    }

    fn answer_error(result: Result<UpgradeAnswer<DuplexStream>, ProxyError>) -> AnswerError {
        match result {
            Err(ProxyError::BackendAnswer { backend, cause }) => {
                assert_eq!(backend, BACKEND);
                cause
            }
            other => panic!("expected BackendAnswer, got {other:?}"),
        }
    }

    #[test]
    fn request_head_keeps_repeated_headers_in_order() {
        let bytes = request_head(&head());
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "GET /ws?room=1 HTTP/1.1\r\n\
             host: chat.example.com\r\n\
             x-tag: a\r\n\
             x-tag: b\r\n\
             connection: Upgrade\r\n\
             upgrade: websocket\r\n\
             \r\n"
        );
        assert_eq!(bytes.len(), bytes.capacity(), "sized exactly");
    }

    #[tokio::test]
    async fn switching_head_split_over_small_reads_is_kept_as_sent() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            X-Dup: 1\r\n\
            Sec-WebSocket-Protocol: chat\r\n\
            X-Dup: 2\r\n\
            \r\n\x81\x02hi";
        let (io, peer) = backend(3, answer.to_vec(), false);
        let result = exchange(io, &request_head(&head()), BACKEND, Duration::from_secs(5)).await;
        let request = peer.await.unwrap();
        assert_eq!(request, request_head(&head()));
        let UpgradeAnswer::Switched { head, prefix, .. } = result.unwrap() else {
            panic!("expected a 101");
        };
        assert_eq!(head.status(), StatusCode::SWITCHING_PROTOCOLS);
        let names: Vec<_> = head.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "upgrade",
                "connection",
                "sec-websocket-accept",
                "x-dup",
                "sec-websocket-protocol"
            ]
        );
        let dups: Vec<_> = head.headers().get_all("x-dup").iter().collect();
        assert_eq!(dups, ["1", "2"]);
        assert_eq!(head.headers()["sec-websocket-protocol"], "chat");
        // With 3-byte reads, the head ends mid-read: what follows it is the session's prefix.
        assert!(b"\x81\x02hi".starts_with(&prefix), "{prefix:?}");
    }

    #[tokio::test]
    async fn bytes_read_with_the_head_become_the_prefix() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
        let UpgradeAnswer::Switched { prefix, .. } = run(4096, answer).await.unwrap() else {
            panic!("expected a 101");
        };
        assert_eq!(&prefix[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n";
        let answer = run(5, answer).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
    }

    #[tokio::test]
    async fn custom_reason_phrase_is_kept() {
        let answer = b"HTTP/1.1 403 Go Away\r\nContent-Length: 0\r\n\r\n";
        let resp = refused(run(4096, answer).await.unwrap());
        let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Go Away");
    }

    #[tokio::test]
    async fn content_length_body_is_read_exactly() {
        let answer = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nno entry!\nextra";
        for chunk in [2, 4096] {
            let resp = refused(run(chunk, answer).await.unwrap());
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            assert_eq!(&resp.body()[..], b"no entry!\n");
            assert_eq!(resp.headers()[header::CONTENT_LENGTH], "10");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
        }
    }

    #[tokio::test]
    async fn body_until_eof_when_unframed() {
        let answer = b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n\r\nnothing here, really";
        for chunk in [3, 4096] {
            let resp = refused(run(chunk, answer).await.unwrap());
            assert_eq!(resp.status(), StatusCode::NOT_FOUND);
            assert_eq!(&resp.body()[..], b"nothing here, really");
            assert_eq!(resp.headers()[header::CONTENT_LENGTH], "20");
        }
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers_is_decoded() {
        let answer = b"HTTP/1.1 401 Unauthorized\r\n\
            Transfer-Encoding: chunked\r\n\
            WWW-Authenticate: Bearer\r\n\r\n\
            5;name=value;quoted=\"a;b\"\r\nhello\r\n\
            7 \r\n, world\r\n\
            A\r\n0123456789\r\n\
            0;last\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n\
            ignored after the end";
        for chunk in [1, 2, 7, 4096] {
            let resp = refused(run(chunk, answer).await.unwrap());
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(&resp.body()[..], b"hello, world0123456789");
            assert_eq!(resp.headers()[header::CONTENT_LENGTH], "22");
            assert!(!resp.headers().contains_key(header::TRANSFER_ENCODING));
            assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        }
    }

    #[tokio::test]
    async fn no_content_gets_no_length() {
        let resp = refused(run(4096, b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap());
        assert!(resp.body().is_empty());
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[tokio::test]
    async fn oversize_head_is_an_error() {
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nX-Padding: ".to_vec();
        answer.resize(MAX_HEAD + 10, b'p');
        let (io, _peer) = backend(4096, answer, true);
        let result = exchange(io, &request_head(&head()), BACKEND, Duration::from_secs(5)).await;
        let err = answer_error(result);
        assert!(matches!(err, AnswerError::HeadTooLarge), "{err}");
        assert!(err.to_string().contains("16384"), "{err}");

        // A head just under the limit is fine.
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nX-Padding: ".to_vec();
        answer.resize(MAX_HEAD - 4, b'p');
        answer.extend_from_slice(b"\r\n\r\n");
        let answer = run(4096, &answer).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);

        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            answer.extend_from_slice(b"X-Many: 1\r\n");
        }
        answer.extend_from_slice(b"\r\n");
        let err = answer_error(run(4096, &answer).await);
        assert!(matches!(err, AnswerError::BadHead(_)), "{err}");
    }

    #[tokio::test]
    async fn oversize_bodies_are_errors() {
        let big = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let err = answer_error(run(4096, big.as_bytes()).await);
        assert!(matches!(err, AnswerError::BodyTooLarge), "{err}");
        assert!(err.to_string().contains("65536"), "{err}");

        let mut eof = b"HTTP/1.1 403 Forbidden\r\n\r\n".to_vec();
        eof.resize(eof.len() + MAX_BODY + 1, b'x');
        let err = answer_error(run(4096, &eof).await);
        assert!(matches!(err, AnswerError::BodyTooLarge), "{err}");

        let mut chunked = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..=MAX_BODY / 1024 {
            chunked.extend_from_slice(b"400\r\n");
            chunked.resize(chunked.len() + 1024, b'x');
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let err = answer_error(run(4096, &chunked).await);
        assert!(matches!(err, AnswerError::BodyTooLarge), "{err}");

        // Exactly at the limit is fine.
        let mut exact = b"HTTP/1.1 403 Forbidden\r\n\r\n".to_vec();
        exact.resize(exact.len() + MAX_BODY, b'x');
        let resp = refused(run(4096, &exact).await.unwrap());
        assert_eq!(resp.body().len(), MAX_BODY);
    }

    #[tokio::test]
    async fn eof_mid_head_or_mid_body_is_an_error() {
        let err = answer_error(run(4, b"HTTP/1.1 101 Switching Proto").await);
        assert!(matches!(err, AnswerError::ClosedInHead), "{err}");
        let err = answer_error(run(4, b"").await);
        assert!(matches!(err, AnswerError::ClosedInHead), "{err}");
        let err =
            answer_error(run(4, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nabc").await);
        assert!(matches!(err, AnswerError::ClosedInBody), "{err}");
        let err = answer_error(
            run(
                4,
                b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            )
            .await,
        );
        assert!(matches!(err, AnswerError::ClosedInBody), "{err}");
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        let err = answer_error(run(4096, b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await);
        assert!(matches!(err, AnswerError::BadHead(_)), "{err}");
        let err = answer_error(
            run(
                4096,
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            )
            .await,
        );
        assert!(matches!(err, AnswerError::BadContentLength), "{err}");
        let err = answer_error(
            run(
                4096,
                b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            )
            .await,
        );
        assert!(matches!(err, AnswerError::BadChunk(_)), "{err}");
    }

    #[tokio::test]
    async fn silent_backend_is_a_response_timeout() {
        let (io, _peer) = backend(4096, Vec::new(), true);
        let after = Duration::from_millis(30);
        let result = exchange(io, &request_head(&head()), BACKEND, after).await;
        match result {
            Err(ProxyError::ResponseTimeout { backend, after: a }) => {
                assert_eq!(backend, BACKEND);
                assert_eq!(a, after);
            }
            other => panic!("expected ResponseTimeout, got {other:?}"),
        }
    }

    #[test]
    fn chunked_decoder_byte_by_byte_and_errors() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        for b in body {
            assert!(!decoder.is_done());
            decoder.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(decoder.is_done());
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");

        for bad in [
            &b"\r\n"[..],
            b"4\nWiki\r\n",
            b"4\r\nWikiX\r\n",
            b"4;ext\nWiki",
            b"11111111111111111\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"-1\r\n",
        ] {
            let mut decoder = ChunkedDecoder::default();
            let err = decoder.feed(bad, &mut Vec::new()).unwrap_err();
            assert!(matches!(err, AnswerError::BadChunk(_)), "{bad:?}: {err}");
        }
        let mut decoder = ChunkedDecoder::default();
        let err = decoder.feed(b"10001\r\n", &mut Vec::new()).unwrap_err();
        assert!(matches!(err, AnswerError::BodyTooLarge), "{err}");
    }
}
