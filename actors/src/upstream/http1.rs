//! HTTP/1.1 to a backend, written by hand: one request at a time on a connection that the
//! request path drives itself — no connection task, no channel to one, no hyper client.
//!
//! The pieces are the WebSocket handshake's ([`crate::upgrade`]): the request head serializer,
//! the response head parsed with `httparse` (header values are slices of the read buffer), and
//! the chunked decoder.
//!
//! Lifecycle of a connection ([`Conn`]):
//!
//! 1. *Idle* in its worker's pool: nobody polls it. At checkout, [`Conn::poll_still_open`]
//!    looks at the socket once: an end of stream, an error or any byte (nothing was asked)
//!    means the backend closed or broke it, and it is dropped.
//! 2. *Head*: [`Conn::start`] serializes the request head, with the body's framing (RFC 9112
//!    §6.2 `Content-Length`, or §7.1 `chunked` when the length is unknown), and
//!    [`Conn::write_head`] writes it. A failure before any byte left means the request never
//!    reached the backend: the caller still holds it whole.
//! 3. *Exchange* ([`Exchange::poll_head`]): the request body streams out while the response
//!    head is read — both at once, so a backend that answers before the upload ends, or echoes
//!    it as it comes, works. Interim `1xx` answers are skipped (RFC 9110 §15.2); a `101` is
//!    returned for the caller to refuse.
//! 4. *Body* ([`ResponseBody`]): hyper's server polls it; it reads the socket directly, framed
//!    as RFC 9112 §6.3 says (none for `HEAD`, 204 and 304; `Content-Length`; chunked, with
//!    its trailer section relayed as a trailers frame; or until the backend closes), and keeps
//!    the upload going.
//! 5. *Back to idle* ([`ResponseBody::take_reusable`]) only when the body ended cleanly, the
//!    upload is complete, the backend kept the connection open (HTTP/1.1, no
//!    `Connection: close`) and sent nothing past its response. Anything else — a body the
//!    client abandoned (the body is dropped), a failure, an upload cut short — closes it.
//!
//! Towards the backend this is at least as strict as hyper's client: a head over
//! [`upgrade::MAX_HEAD`], both `Transfer-Encoding` and `Content-Length`, a `Content-Length`
//! that is not one number, a malformed chunk or trailer section, or an end of stream inside a
//! body is an [`AnswerError`] — before the head is relayed a 502, after it the client's
//! connection is cut; either way it counts against the member.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::{ClientBodyError, RequestBody};
use crate::error::ProxyError;
use crate::upgrade::{self, AnswerError, ChunkedDecoder};

/// What a read asks the socket for at least: room for a small response in one read.
const READ_BUF: usize = 8 * 1024;

/// A write buffer larger than this (a very large request head) is not kept while idle.
const KEEP_WBUF: usize = 16 * 1024;

/// A backend connection's transport: plain TCP, or TLS over it (`protocol = "https"`).
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to a backend: its socket and its two buffers, kept (and reused)
/// while the connection waits in the pool.
#[derive(Debug)]
pub(super) struct Conn {
    io: Transport,
    /// Bytes read and not yet consumed. Response heads and body data are handed on as
    /// slices of it (no copy).
    rbuf: BytesMut,
    /// The request head, then each chunk's framing, waiting to be written from `written`.
    wbuf: Vec<u8>,
    written: usize,
}

impl Conn {
    /// A plain TCP connection.
    pub(super) fn plain(stream: TcpStream) -> Conn {
        Conn::over(Transport::Plain(stream))
    }

    /// A TLS connection (handshake done).
    pub(super) fn tls(stream: TlsStream<TcpStream>) -> Conn {
        Conn::over(Transport::Tls(Box::new(stream)))
    }

    fn over(io: Transport) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            written: 0,
        }
    }

    /// Whether an idle connection can carry a request: true while the backend has sent
    /// nothing since the last response (no end of stream, no error, no stray byte). One look
    /// at the socket; no wait.
    pub(super) fn poll_still_open(&mut self, cx: &mut Context<'_>) -> bool {
        self.rbuf.is_empty() && self.poll_fill(cx).is_pending()
    }

    /// Reads what the socket has into `rbuf`: the number of bytes (0 at the end of stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_BUF / 2 {
            self.rbuf.reserve(READ_BUF);
        }
        // `read_buf`'s future holds nothing between polls but its two borrows.
        std::pin::pin!(self.io.read_buf(&mut self.rbuf)).poll(cx)
    }

    /// Serializes `req`'s head for HTTP/1.1 into the write buffer, with the framing its body
    /// needs, and says how the body goes (`None`: no body).
    pub(super) fn start(&mut self, req: &http::Request<RequestBody>) -> Option<Upload> {
        let (body, headers) = (req.body(), req.headers());
        let head = |extra: &[u8], out: &mut Vec<u8>| {
            upgrade::write_request_head(req.method(), req.uri(), headers, extra, out);
        };
        self.wbuf.clear();
        self.written = 0;
        if self.wbuf.capacity() > KEEP_WBUF {
            self.wbuf = Vec::new();
        }
        if body.is_end_stream() {
            head(&[], &mut self.wbuf);
            return None;
        }
        // RFC 9112 §6.2, §6.3: a length the client gave (hyper's server holds the body to it),
        // else the body's known length, else chunked.
        let mut extra = [0u8; 40];
        let (extra, chunked) = if headers.contains_key(header::CONTENT_LENGTH) {
            (&extra[..0], false)
        } else if let Some(len) = body.size_hint().exact() {
            let mut line = &mut extra[..];
            let room = line.len();
            let _ = std::io::Write::write_fmt(&mut line, format_args!("content-length: {len}\r\n"));
            let used = room - line.len();
            (&extra[..used], false)
        } else {
            (&b"transfer-encoding: chunked\r\n"[..], true)
        };
        head(extra, &mut self.wbuf);
        Some(Upload {
            chunked,
            chunks: false,
            data: Bytes::new(),
            finished: false,
        })
    }

    /// Writes the request head [`Conn::start`] serialized. On failure: the error, and whether
    /// any byte of the head was accepted (else the request never left).
    pub(super) async fn write_head(&mut self) -> Result<(), (io::Error, bool)> {
        std::future::poll_fn(|cx| self.poll_drain(cx, None))
            .await
            .map_err(|e| (e, self.written > 0))
    }

    /// Writes the rest of the write buffer, then `data`, then flushes (TLS records may sit in
    /// rustls otherwise; a plain socket's flush does nothing).
    fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        mut data: Option<&mut Bytes>,
    ) -> Poll<io::Result<()>> {
        let mut wrote = false;
        loop {
            let head = &self.wbuf[self.written..];
            let body = data.as_deref().map_or(&[][..], |d| &d[..]);
            if head.is_empty() && body.is_empty() {
                break;
            }
            let io = Pin::new(&mut self.io);
            let n = if head.is_empty() {
                ready!(io.poll_write(cx, body))?
            } else if body.is_empty() {
                ready!(io.poll_write(cx, head))?
            } else {
                let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
                ready!(io.poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            wrote = true;
            let from_head = n.min(head.len());
            self.written += from_head;
            if let Some(d) = data.as_deref_mut() {
                d.advance(n - from_head);
            }
        }
        if self.written > 0 {
            self.wbuf.clear();
            self.written = 0;
        }
        if wrote {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Appends a chunk's framing for `len` data bytes (RFC 9112 §7.1): the CRLF ending the
    /// previous chunk's data goes in front of the next size line.
    fn chunk_line(&mut self, after_chunk: bool, len: usize) {
        if after_chunk {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        let mut digits = [0u8; 16];
        let mut n = len;
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        self.wbuf.extend_from_slice(&digits[at..]);
        self.wbuf.extend_from_slice(b"\r\n");
    }
}

/// How the request body goes out after its head.
#[derive(Debug)]
pub(super) struct Upload {
    /// `Transfer-Encoding: chunked` (else the body's bytes as they are).
    chunked: bool,
    /// A chunk has been framed (its data's CRLF is still owed).
    chunks: bool,
    /// The data of the current frame not yet written.
    data: Bytes,
    /// The body ended and its last framing is buffered.
    finished: bool,
}

/// Why the upload stopped.
enum UploadError {
    /// The client's body failed: its doing.
    Client(ClientBodyError),
    /// Writing to the backend failed.
    Backend(io::Error),
}

/// One request on a connection, from its head written to the end of its response's body.
#[derive(Debug)]
pub(super) struct Exchange {
    conn: Conn,
    backend: SocketAddr,
    /// The client's body, while it streams out.
    body: RequestBody,
    /// `None` once the whole request has been written (or never had a body).
    upload: Option<Upload>,
    /// Writing failed (the backend closed or reset its side): the upload stopped. Reported
    /// if no answer comes.
    write_failed: Option<io::Error>,
    /// A byte of the response arrived (a failure before that may allow a retry).
    received: bool,
    /// The request was `HEAD`: its answer has no body.
    head_request: bool,
}

/// Why an exchange got no response head.
#[derive(Debug)]
pub(super) enum HeadError {
    /// The client's body failed.
    Client(ClientBodyError),
    /// The backend failed; `silent`: no byte of a response arrived.
    Backend { cause: AnswerError, silent: bool },
}

impl Exchange {
    /// Starts the exchange on `conn`, whose head [`Conn::write_head`] has written.
    pub(super) fn new(
        conn: Conn,
        backend: SocketAddr,
        body: RequestBody,
        upload: Option<Upload>,
        head_request: bool,
    ) -> Exchange {
        Exchange {
            conn,
            backend,
            body,
            upload,
            write_failed: None,
            received: false,
            head_request,
        }
    }

    /// Moves the request body on as far as it goes without waiting: writes what is buffered,
    /// then takes the next frame of the client's body. Ready once all is written.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UploadError>> {
        loop {
            let data = self.upload.as_mut().map(|u| &mut u.data);
            ready!(self.conn.poll_drain(cx, data)).map_err(UploadError::Backend)?;
            let Some(upload) = self.upload.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if upload.finished {
                self.upload = None;
                return Poll::Ready(Ok(()));
            }
            let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
            match frame {
                None => {
                    if upload.chunked {
                        let end: &[u8] = if upload.chunks {
                            b"\r\n0\r\n\r\n"
                        } else {
                            b"0\r\n\r\n"
                        };
                        self.conn.wbuf.extend_from_slice(end);
                    }
                    upload.finished = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(UploadError::Client(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if upload.chunked {
                            self.conn.chunk_line(upload.chunks, data.len());
                            upload.chunks = true;
                        }
                        upload.data = data;
                    }
                    Err(frame) => {
                        // Trailers exist only in a chunked body (RFC 9112 §7.1.2).
                        if let (Ok(trailers), true) = (frame.into_trailers(), upload.chunked) {
                            let wbuf = &mut self.conn.wbuf;
                            if upload.chunks {
                                wbuf.extend_from_slice(b"\r\n");
                            }
                            wbuf.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                wbuf.extend_from_slice(name.as_str().as_bytes());
                                wbuf.extend_from_slice(b": ");
                                wbuf.extend_from_slice(value.as_bytes());
                                wbuf.extend_from_slice(b"\r\n");
                            }
                            wbuf.extend_from_slice(b"\r\n");
                            upload.finished = true;
                        }
                    }
                },
            }
        }
    }

    /// Keeps the upload going (when there is one): a failure of the client's body is returned;
    /// a failed write stops the upload and is kept for later.
    fn poll_upload_quietly(&mut self, cx: &mut Context<'_>) -> Result<(), ClientBodyError> {
        if self.upload.is_none() || self.write_failed.is_some() {
            return Ok(());
        }
        match self.poll_upload(cx) {
            Poll::Ready(Err(UploadError::Client(e))) => Err(e),
            Poll::Ready(Err(UploadError::Backend(e))) => {
                self.write_failed = Some(e);
                self.upload = None;
                Ok(())
            }
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// Sends the body and reads until a final response head is complete (interim `1xx`
    /// answers other than `101` are dropped, RFC 9110 §15.2).
    pub(super) fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<()>, HeadError>> {
        self.poll_upload_quietly(cx).map_err(HeadError::Client)?;
        loop {
            let parsed = upgrade::head_length(&self.conn.rbuf).map_err(|e| self.fail(e))?;
            if let Some((len, status)) = parsed {
                if (100..200).contains(&status) && status != 101 {
                    self.conn.rbuf.advance(len);
                    continue;
                }
                let head = self.conn.rbuf.split_to(len).freeze();
                return Poll::Ready(upgrade::build_head(&head, len).map_err(|e| self.fail(e)));
            }
            if self.conn.rbuf.len() >= upgrade::MAX_HEAD {
                return Poll::Ready(Err(self.fail(AnswerError::HeadTooLarge)));
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => {
                    let cause = match self.write_failed.take() {
                        Some(e) => AnswerError::Io(e),
                        None => AnswerError::ClosedInHead,
                    };
                    return Poll::Ready(Err(self.fail(cause)));
                }
                Ok(_) => self.received = true,
                Err(e) => return Poll::Ready(Err(self.fail(AnswerError::Io(e)))),
            }
        }
    }

    fn fail(&self, cause: AnswerError) -> HeadError {
        HeadError::Backend {
            cause,
            silent: !self.received,
        }
    }

    /// The response body that follows `head` (RFC 9112 §6.3), reading this connection. A head
    /// whose framing is ambiguous or invalid is the backend's fault.
    pub(super) fn into_body(self, head: &Response<()>) -> Result<ResponseBody, AnswerError> {
        let (framing, keep_alive) = framing(self.head_request, head)?;
        Ok(ResponseBody {
            backend: self.backend,
            framing,
            keep_alive,
            done: false,
            overlong: false,
            exchange: Some(self),
        })
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug)]
enum Framing {
    /// None: `HEAD`, 1xx, 204, 304.
    Empty,
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked(ChunkedDecoder),
    /// Until the backend closes (another final coding, or no framing header at all).
    UntilEof,
}

/// The framing of the response `head` (to a `HEAD` request when `head_request`), and whether
/// the connection may carry another request after it.
fn framing(head_request: bool, head: &Response<()>) -> Result<(Framing, bool), AnswerError> {
    let headers = head.headers();
    let http11 = head.version() == Version::HTTP_11;
    let close = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    let keep_alive = http11 && !close;
    let status = head.status();
    if status.is_informational() {
        // A 101 nobody asked for: the caller refuses it; this connection is not HTTP anymore.
        return Ok((Framing::Empty, false));
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, keep_alive));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if !http11 {
            return Err(AnswerError::TransferEncodingOnHttp10);
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(AnswerError::BothLengths);
        }
        let last = codings.next_back().unwrap_or(first);
        let final_coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
        return Ok(
            if final_coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                (Framing::Chunked(ChunkedDecoder::streaming()), keep_alive)
            } else {
                (Framing::UntilEof, false)
            },
        );
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // A list of identical values ("42, 42") is one length (RFC 9110 §8.6).
        for item in value.as_bytes().split(|&b| b == b',') {
            let n =
                upgrade::parse_decimal(item.trim_ascii()).ok_or(AnswerError::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(AnswerError::BadContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilEof, false),
    })
}

/// A backend's response body, read straight from its connection as hyper's server asks for
/// it (see the module's lifecycle, steps 4 and 5). Errors are [`ProxyError`]s: the backend's
/// ([`ProxyError::BackendHttp1`]) or the client's upload ([`ProxyError::ClientBody`]).
#[derive(Debug)]
pub struct ResponseBody {
    backend: SocketAddr,
    framing: Framing,
    /// The backend lets the connection carry another request.
    keep_alive: bool,
    /// The body has ended (cleanly).
    done: bool,
    /// Bytes followed the end of the response.
    overlong: bool,
    /// `None` once the connection is closed, or taken back for the pool.
    exchange: Option<Exchange>,
}

impl ResponseBody {
    /// Once the body has ended: the connection, if it may carry another request. Any other
    /// time `None` (the connection closes when the body is dropped).
    pub(super) fn take_reusable(&mut self) -> Option<Conn> {
        if !self.done && self.is_end_stream() {
            // A body with nothing to read (hyper's server never polls it).
            self.done = true;
            self.overlong = self
                .exchange
                .as_ref()
                .is_some_and(|e| !e.conn.rbuf.is_empty());
        }
        if !self.done || !self.keep_alive || self.overlong {
            return None;
        }
        let exchange = self.exchange.take()?;
        let clean = exchange.upload.is_none()
            && exchange.write_failed.is_none()
            && exchange.conn.wbuf.is_empty();
        clean.then_some(exchange.conn)
    }

    /// The backend's fault found after a clean end, if any: bytes past the response.
    pub(super) fn fault(&self) -> Option<ProxyError> {
        self.overlong.then(|| ProxyError::BackendHttp1 {
            backend: self.backend,
            cause: AnswerError::LongerThanAnnounced,
        })
    }

    /// Reads the trailer section at the start of `rbuf` once it is complete: `Some(None)` for
    /// an empty one.
    fn trailers(rbuf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, AnswerError> {
        if rbuf.starts_with(b"\r\n") {
            rbuf.advance(2);
            return Ok(Some(None));
        }
        let mut fields = [httparse::EMPTY_HEADER; upgrade::MAX_HEADERS];
        let len = match httparse::parse_headers(rbuf, &mut fields) {
            Ok(httparse::Status::Complete((len, _))) => len,
            Ok(httparse::Status::Partial) if rbuf.len() >= upgrade::MAX_HEAD => {
                return Err(AnswerError::BadChunk("trailer section too long"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(AnswerError::BadChunk("malformed trailer section")),
        };
        let section = rbuf.split_to(len).freeze();
        let mut fields = [httparse::EMPTY_HEADER; upgrade::MAX_HEADERS];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&section, &mut fields)
        else {
            return Err(AnswerError::BadChunk("malformed trailer section"));
        };
        let mut map = HeaderMap::with_capacity(fields.len());
        for f in fields {
            let name =
                HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| AnswerError::BadHeader)?;
            let value = HeaderValue::from_maybe_shared(section.slice_ref(f.value))
                .map_err(|_| AnswerError::BadHeader)?;
            map.append(name, value);
        }
        Ok(Some(Some(map)))
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let ResponseBody {
            framing,
            done,
            overlong,
            exchange,
            ..
        } = self;
        if *done {
            return Poll::Ready(None);
        }
        let Some(exchange) = exchange.as_mut() else {
            return Poll::Ready(None);
        };
        let backend = exchange.backend;
        let fail = |cause: AnswerError| {
            Poll::Ready(Some(Err(ProxyError::BackendHttp1 { backend, cause })))
        };
        if let Err(e) = exchange.poll_upload_quietly(cx) {
            return Poll::Ready(Some(Err(e.into())));
        }
        let conn = &mut exchange.conn;
        // The body ended: anything already read past it is more than the backend announced.
        let mut end = |conn: &Conn| {
            *done = true;
            *overlong = !conn.rbuf.is_empty();
        };
        loop {
            let rbuf = &mut conn.rbuf;
            match framing {
                Framing::Empty | Framing::Length(0) => {
                    end(conn);
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !rbuf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rbuf.len());
                    let data = rbuf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        end(conn);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(decoder) if decoder.is_done() => {
                    end(conn);
                    return Poll::Ready(None);
                }
                Framing::Chunked(decoder) if decoder.at_trailers() => match Self::trailers(rbuf) {
                    Err(cause) => return fail(cause),
                    Ok(Some(trailers)) => {
                        decoder.finish();
                        end(conn);
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                },
                Framing::Chunked(decoder) if !rbuf.is_empty() => {
                    let (used, data) = match decoder.step(rbuf) {
                        Ok(step) => step,
                        Err(cause) => return fail(cause),
                    };
                    if data.is_empty() {
                        rbuf.advance(used);
                        continue;
                    }
                    let chunk = rbuf.split_to(used).freeze().slice(data);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Framing::UntilEof if !rbuf.is_empty() => {
                    let data = rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) | Framing::Chunked(_) | Framing::UntilEof => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(framing, Framing::UntilEof) => {
                    end(conn);
                    return Poll::Ready(None);
                }
                Ok(0) => return fail(AnswerError::ClosedInBody),
                Ok(_) => {}
                Err(e) => return fail(AnswerError::Io(e)),
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        let polled = this.poll_body(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken body means a broken connection: close it now.
            this.exchange = None;
            this.done = true;
            this.keep_alive = false;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || matches!(self.framing, Framing::Empty | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked(_) | Framing::UntilEof => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    const BACKEND: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    fn head(raw: &str) -> Response<()> {
        let bytes = Bytes::copy_from_slice(raw.as_bytes());
        upgrade::build_head(&bytes, bytes.len()).unwrap()
    }

    fn kind(f: &Framing) -> String {
        match f {
            Framing::Empty => "empty".into(),
            Framing::Length(n) => format!("length {n}"),
            Framing::Chunked(_) => "chunked".into(),
            Framing::UntilEof => "eof".into(),
        }
    }

    /// RFC 9112 §6.3, in order: no body for HEAD, 204 and 304; Transfer-Encoding (chunked last,
    /// else until close); Content-Length; else until close. Ambiguous or invalid framing is an
    /// error, and only HTTP/1.1 without `Connection: close` keeps the connection.
    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        // (a HEAD request, the head, the framing and whether the connection is kept, or the error)
        type Case = (
            bool,
            &'static str,
            Result<(&'static str, bool), &'static str>,
        );
        let cases: &[Case] = &[
            (
                true,
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Ok(("empty", true)),
            ),
            (
                false,
                "HTTP/1.1 204 No Content\r\n\r\n",
                Ok(("empty", true)),
            ),
            (
                false,
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Ok(("empty", true)),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Ok(("chunked", true)),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                Ok(("eof", false)),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Ok(("length 5", true)),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive, Close\r\n\r\n",
                Ok(("length 5", false)),
            ),
            (
                false,
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                Ok(("length 5", false)),
            ),
            (false, "HTTP/1.1 200 OK\r\n\r\n", Ok(("eof", false))),
            (
                false,
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                Ok(("empty", false)),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Err("both Transfer-Encoding and Content-Length"),
            ),
            (
                false,
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err("Transfer-Encoding on an HTTP/1.0 response"),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                Err("invalid Content-Length"),
            ),
            (
                false,
                "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
                Err("invalid Content-Length"),
            ),
        ];
        for (head_request, raw, expected) in cases {
            let got = framing(*head_request, &head(raw))
                .map(|(f, keep)| (kind(&f), keep))
                .map_err(|e| e.to_string());
            let expected = expected
                .map(|(f, keep)| (f.to_string(), keep))
                .map_err(str::to_string);
            assert_eq!(got, expected, "{raw:?}");
        }
    }

    /// A backend socket on the other end of `Conn` that writes `answer` one byte at a time,
    /// then closes (`close`) or stays open.
    async fn backend(answer: &'static [u8], close: bool) -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            for b in answer {
                peer.write_all(std::slice::from_ref(b)).await.unwrap();
                peer.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            if !close {
                std::future::pending::<()>().await;
            }
        });
        Conn::plain(TcpStream::connect(addr).await.unwrap())
    }

    /// Reads a whole exchange on `conn`: the head, then every frame (data joined, trailers).
    async fn exchange(
        conn: Conn,
    ) -> (
        Response<()>,
        Result<(Vec<u8>, Option<HeaderMap>), ProxyError>,
        ResponseBody,
    ) {
        let mut exchange = Exchange::new(conn, BACKEND, RequestBody::empty(), None, false);
        let head = std::future::poll_fn(|cx| exchange.poll_head(cx))
            .await
            .unwrap();
        let mut body = exchange.into_body(&head).unwrap();
        let (mut data, mut trailers) = (Vec::new(), None);
        let result = loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break Ok((data, trailers)),
                Some(Err(e)) => break Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
            }
        };
        (head, result, body)
    }

    #[tokio::test]
    async fn a_chunked_body_split_byte_by_byte_keeps_its_trailers_and_its_connection() {
        let conn = backend(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Sum: 1\r\nX-Other: two\r\n\r\n",
            false,
        )
        .await;
        let (head, result, mut body) = exchange(conn).await;
        assert_eq!(head.status(), StatusCode::OK);
        let (data, trailers) = result.unwrap();
        assert_eq!(data, b"Wikipedia");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["x-sum"], "1");
        assert_eq!(trailers["x-other"], "two");
        assert!(body.fault().is_none());
        assert!(
            body.take_reusable().is_some(),
            "a clean end keeps the connection"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_the_backends_fault_and_closes_the_connection() {
        let conn = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", true).await;
        let (_, result, mut body) = exchange(conn).await;
        match result {
            Err(ProxyError::BackendHttp1 {
                cause: AnswerError::ClosedInBody,
                ..
            }) => {}
            other => panic!("expected ClosedInBody, got {other:?}"),
        }
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn a_close_delimited_body_ends_with_the_connection_and_is_not_reused() {
        let conn = backend(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
        let (_, result, mut body) = exchange(conn).await;
        assert_eq!(result.unwrap().0, b"until the end");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn bytes_past_the_announced_length_are_a_fault_and_end_the_connection() {
        let conn = backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            false,
        )
        .await;
        let mut exchange = Exchange::new(conn, BACKEND, RequestBody::empty(), None, false);
        // Wait for every byte to be there, so the body's last read sees the extra ones.
        let head = std::future::poll_fn(|cx| exchange.poll_head(cx))
            .await
            .unwrap();
        while exchange.conn.rbuf.len() < 7 {
            std::future::poll_fn(|cx| exchange.conn.poll_fill(cx))
                .await
                .unwrap();
        }
        let mut body = exchange.into_body(&head).unwrap();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "ok");
        assert!(body.is_end_stream());
        assert!(matches!(
            body.fault(),
            Some(ProxyError::BackendHttp1 {
                cause: AnswerError::LongerThanAnnounced,
                ..
            })
        ));
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn chunk_lines_are_lowercase_hex_with_the_previous_chunks_crlf_in_front() {
        let mut conn = backend(b"", false).await;
        conn.chunk_line(false, 0x1f);
        conn.chunk_line(true, 4096);
        conn.chunk_line(true, 1);
        assert_eq!(conn.wbuf, b"1f\r\n\r\n1000\r\n\r\n1\r\n");
    }
}
