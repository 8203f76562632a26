//! The two sockets of a session as the pump sees them: plain TCP, or TCP carrying TLS.
//!
//! The pump ([`crate::pump`]) is readiness-driven: it waits until a socket is readable or
//! writable, then does one non-blocking read or write through the worker's shared read buffer.
//! [`SessionIo`] keeps that design for TLS by driving rustls directly on the raw socket, with no
//! buffer of its own:
//!
//! * **read**: ciphertext is read from the socket into the worker's buffer, fed to rustls
//!   (`read_tls` + `process_new_packets`), and the plaintext is handed to the pump straight from
//!   rustls' own buffer (`fill_buf`/`consume`), so it is never copied twice.
//! * **write**: plaintext goes into rustls (`writer()`), which encrypts it into its outgoing
//!   buffer; the records are written to the socket at once (`write_tls`). Records the socket
//!   refuses stay in rustls, [`SessionIo::output_pending`] says so, and the pump waits for
//!   writability to [`SessionIo::flush_output`] them before it offers more bytes.
//! * **end of stream**: a FIN is preceded by `close_notify`, and the socket's write side is shut
//!   only once every record before it is out.
//! * **hang-up while not reading**: a source the pump stopped reading (its destination is full)
//!   is still watched for its peer's FIN or reset ([`SessionIo::poll_hangup`]), without reading a
//!   byte of it; see [`ReadReadiness`] for what that costs the next read.
//!
//! An idle TLS session therefore holds only what rustls keeps per connection.
//!
//! A WebSocket opened over HTTP/2 (RFC 8441) has a stream instead of a socket on the client
//! side: [`StreamIo`] gives it the same calls.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;

mod h2;

pub use h2::StreamIo;

/// One side of a session.
#[derive(Debug)]
pub enum SessionIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, driven by the pump through rustls (boxed: rustls' state is over a KiB,
    /// and plain sessions should not pay for it).
    Tls(Box<TlsIo>),
    /// An HTTP/2 stream of the client's connection (RFC 8441), shared with its other streams.
    Stream(Box<StreamIo>),
}

/// TLS over a TCP socket, for the pump.
#[derive(Debug)]
pub struct TlsIo {
    tcp: TcpStream,
    /// Same thread as the pump, borrowed only inside synchronous calls.
    conn: RefCell<rustls::Connection>,
    /// rustls holds plaintext that no read has delivered yet (left over from the HTTP layer).
    buffered: Cell<bool>,
    /// The write side is shut down once rustls' outgoing records are all written.
    fin_after_flush: Cell<bool>,
}

/// How a read left the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Still open (bytes were delivered, or there were none yet).
    Open,
    /// The peer finished its stream (FIN, or TLS `close_notify`).
    Eof,
    /// The connection failed (reset, or a TLS error).
    Error,
}

/// Whether a socket's read readiness, as tokio tracks it, can be waited for before a read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ReadReadiness {
    /// The usual case: wait until the socket is readable, then read.
    #[default]
    Tracked,
    /// [`SessionIo::poll_hangup`] consumed the readiness while unread bytes remained, so no
    /// event will announce them: read without waiting, until a read empties the receive queue
    /// (a short read, `WouldBlock` or the end of the stream); from then on every new byte, FIN
    /// or reset is an event again.
    Consumed,
}

/// One non-blocking read. A short read (fewer bytes than `buf` holds) emptied the socket's
/// receive queue, so the socket's readiness is cleared right away, as tokio's own `poll_read`
/// does: the next wait goes to epoll instead of costing a `recv` that would answer `EAGAIN`.
/// (Readiness that arrived after the read carries a newer tick and is not cleared.)
fn read_tcp(tcp: &TcpStream, buf: &mut [u8], readiness: &mut ReadReadiness) -> io::Result<usize> {
    let want = buf.len();
    if *readiness == ReadReadiness::Consumed {
        // tokio would answer `WouldBlock` without asking the socket: ask it directly.
        let read = (&*socket2::SockRef::from(tcp)).read(buf);
        if !matches!(read, Ok(n) if n == want) {
            *readiness = ReadReadiness::Tracked;
        }
        return read;
    }
    transfer(tcp, Interest::READABLE, want, || {
        (&*socket2::SockRef::from(tcp)).read(buf)
    })
}

/// Whether tokio has seen the peer end its stream or the connection fail (epoll's `RDHUP` or
/// `HUP`), whatever bytes are still queued before that end. Never waits and never registers a
/// waker: readiness is already set when this is asked (see [`SessionIo::poll_hangup`]).
fn read_closed(tcp: &TcpStream) -> bool {
    let ready = std::pin::pin!(tcp.ready(Interest::READABLE));
    matches!(
        ready.poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Ok(r)) if r.is_read_closed()
    )
}

/// One non-blocking write. A short write filled the socket's send buffer, so its writability
/// is cleared at once (the next wait goes to epoll, not to a `send` answering `EAGAIN`).
fn write_tcp(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    transfer(tcp, Interest::WRITABLE, bytes.len(), || {
        (&*socket2::SockRef::from(tcp)).write(bytes)
    })
}

/// Runs one read or write `op` of up to `want` bytes under `interest`'s readiness, and clears
/// that readiness when `op` moved some but fewer than `want` bytes (or none: `WouldBlock`).
fn transfer(
    tcp: &TcpStream,
    interest: Interest,
    want: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut moved = 0;
    match tcp.try_io(interest, || {
        let n = op()?;
        moved = n;
        if n > 0 && n < want {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    }) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && moved > 0 => Ok(moved),
        other => other,
    }
}

/// `std::io` over a tokio socket's non-blocking calls, for rustls.
struct NonBlocking<'a>(&'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_tcp(self.0, buf, &mut ReadReadiness::Tracked)
    }
}

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_tcp(self.0, buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsIo {
    /// A TLS connection whose handshake is complete, over its socket.
    pub fn new(tcp: TcpStream, conn: impl Into<rustls::Connection>) -> TlsIo {
        let mut conn = conn.into();
        // Plaintext the HTTP layer did not take is delivered before the socket is read again.
        let buffered = conn
            .process_new_packets()
            .map(|s| s.plaintext_bytes_to_read() > 0 || s.peer_has_closed())
            .unwrap_or(true);
        TlsIo {
            tcp,
            conn: RefCell::new(conn),
            buffered: Cell::new(buffered),
            fin_after_flush: Cell::new(false),
        }
    }

    /// Writes rustls' outgoing records until done or the socket refuses more.
    fn flush(&self, conn: &mut rustls::Connection) -> io::Result<()> {
        while conn.wants_write() {
            match conn.write_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.fin_after_flush.get() {
            self.fin_after_flush.set(false);
            let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Hands every plaintext chunk rustls holds to `deliver`; `Some` when the stream ended.
    fn drain_plaintext(
        conn: &mut rustls::Connection,
        deliver: &mut impl FnMut(&[u8]),
    ) -> Option<ReadEnd> {
        loop {
            let mut reader = conn.reader();
            match reader.fill_buf() {
                Ok([]) => return Some(ReadEnd::Eof),
                Ok(chunk) => {
                    let n = chunk.len();
                    deliver(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                // TCP ended without close_notify: for a WebSocket that is a plain end of
                // stream (its own close frames say whether it was orderly).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(ReadEnd::Eof),
                Err(_) => return Some(ReadEnd::Error),
            }
        }
    }

    fn read(
        &self,
        buf: &mut [u8],
        readiness: &mut ReadReadiness,
        mut deliver: impl FnMut(&[u8]),
    ) -> ReadEnd {
        let mut conn = self.conn.borrow_mut();
        if self.buffered.replace(false) {
            if let Some(end) = Self::drain_plaintext(&mut conn, &mut deliver) {
                return end;
            }
        }
        let n = match read_tcp(&self.tcp, buf, readiness) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Open,
            Err(_) => return ReadEnd::Error,
        };
        let mut rest = &buf[..n];
        loop {
            if let Err(e) = conn.read_tls(&mut rest) {
                tracing::debug!(error = %e, "TLS read failed");
                return ReadEnd::Error;
            }
            if let Err(e) = conn.process_new_packets() {
                tracing::debug!(error = %e, "TLS session failed");
                // Best effort: the alert rustls queued tells the peer why.
                let _ = self.flush(&mut conn);
                return ReadEnd::Error;
            }
            if let Some(end) = Self::drain_plaintext(&mut conn, &mut deliver) {
                return end;
            }
            if rest.is_empty() {
                break;
            }
        }
        // Post-handshake messages (key updates, tickets) may want an answer.
        if self.flush(&mut conn).is_err() {
            return ReadEnd::Error;
        }
        ReadEnd::Open
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        self.flush(&mut conn)?;
        if conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = conn.writer().write(bytes)?;
        self.flush(&mut conn)?;
        if n == 0 && !bytes.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl SessionIo {
    /// The TCP socket underneath (`None` for an HTTP/2 stream: the socket is its connection's).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            SessionIo::Plain(tcp) => Some(tcp),
            SessionIo::Tls(tls) => Some(&tls.tcp),
            SessionIo::Stream(_) => None,
        }
    }

    /// Ready once a read may make progress. Registers `cx`'s waker in the socket's single read
    /// slot (not in a list of waiters), which also replaces any waker the HTTP layer left there
    /// before the upgrade, so that no finished task is kept alive by the session.
    /// [`ReadReadiness::Consumed`] is ready at once.
    pub fn poll_readable(
        &self,
        cx: &mut Context<'_>,
        readiness: ReadReadiness,
    ) -> Poll<io::Result<()>> {
        if readiness == ReadReadiness::Consumed {
            return Poll::Ready(Ok(()));
        }
        match self {
            SessionIo::Plain(tcp) => tcp.poll_read_ready(cx),
            SessionIo::Tls(tls) if tls.buffered.get() => Poll::Ready(Ok(())),
            SessionIo::Tls(tls) => tls.tcp.poll_read_ready(cx),
            SessionIo::Stream(stream) => stream.poll_readable(cx),
        }
    }

    /// For a source the pump has stopped reading because its destination is full: ready once
    /// the peer has ended its stream (FIN) or the connection failed (reset), which a reader
    /// would learn only after every byte still queued before it. Reads nothing.
    ///
    /// Unread bytes keep the socket readable, so whenever its readiness shows only them it is
    /// consumed (and `readiness` becomes [`ReadReadiness::Consumed`]): the waker registered in
    /// the socket's read slot is then woken by the next event — more bytes, the FIN, a reset —
    /// and never spins. epoll reports the FIN and the reset (`RDHUP`, `HUP`) even behind
    /// unread bytes, and tokio keeps them as the socket's read-closed state.
    ///
    /// An HTTP/2 stream is never ready here (see [`StreamIo`]).
    pub fn poll_hangup(&self, cx: &mut Context<'_>, readiness: &mut ReadReadiness) -> Poll<()> {
        let Some(tcp) = self.tcp() else {
            return Poll::Pending;
        };
        loop {
            match tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                // The runtime is shutting down: the socket is as good as gone.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            if read_closed(tcp) {
                return Poll::Ready(());
            }
            // Only unread bytes: consume the readiness (unless a newer event came in meanwhile,
            // which the next turn of the loop looks at) and register for the next event.
            let _ = tcp.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            *readiness = ReadReadiness::Consumed;
        }
    }

    /// Ready once the socket takes bytes (same single-slot registration as
    /// [`SessionIo::poll_readable`]).
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            SessionIo::Plain(tcp) => tcp.poll_write_ready(cx),
            SessionIo::Tls(tls) => tls.tcp.poll_write_ready(cx),
            SessionIo::Stream(stream) => stream.poll_writable(cx),
        }
    }

    /// Waits until the socket takes bytes.
    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_writable(cx)).await
    }

    /// One non-blocking read: every byte it yields goes to `deliver` (possibly in several
    /// chunks), and the result says whether the stream is still open. `readiness` says whether
    /// the socket is read without consulting tokio's readiness, and is updated.
    pub fn read(
        &self,
        buf: &mut [u8],
        readiness: &mut ReadReadiness,
        mut deliver: impl FnMut(&[u8]),
    ) -> ReadEnd {
        match self {
            SessionIo::Plain(tcp) => match read_tcp(tcp, buf, readiness) {
                Ok(0) => ReadEnd::Eof,
                Ok(n) => {
                    deliver(&buf[..n]);
                    ReadEnd::Open
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadEnd::Open,
                Err(_) => ReadEnd::Error,
            },
            SessionIo::Tls(tls) => tls.read(buf, readiness, deliver),
            SessionIo::Stream(stream) => stream.read(buf, deliver),
        }
    }

    /// Writes what the socket takes now, like `TcpStream::try_write`: `WouldBlock` when it takes
    /// nothing. TLS refuses new bytes while records of earlier ones wait for the socket.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            SessionIo::Plain(tcp) => write_tcp(tcp, bytes),
            SessionIo::Tls(tls) => tls.try_write(bytes),
            SessionIo::Stream(stream) => stream.try_write(bytes),
        }
    }

    /// Bytes accepted earlier still wait inside the transport (TLS records the socket refused).
    pub fn output_pending(&self) -> bool {
        match self {
            SessionIo::Plain(_) | SessionIo::Stream(_) => false,
            SessionIo::Tls(tls) => tls.fin_after_flush.get() || tls.conn.borrow().wants_write(),
        }
    }

    /// Writes what the transport holds, as far as the socket takes it.
    pub fn flush_output(&self) -> io::Result<()> {
        match self {
            SessionIo::Plain(_) | SessionIo::Stream(_) => Ok(()),
            SessionIo::Tls(tls) => tls.flush(&mut tls.conn.borrow_mut()),
        }
    }

    /// Waits until everything the transport holds is written (or writing fails).
    pub async fn drain_output(&self) {
        while self.output_pending() {
            if self.writable().await.is_err() || self.flush_output().is_err() {
                return;
            }
        }
    }

    /// Ends the stream towards the peer (TLS: `close_notify`, then FIN once it is written).
    pub fn shutdown_write(&self) {
        match self {
            SessionIo::Plain(tcp) => {
                let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
            }
            SessionIo::Tls(tls) => {
                let mut conn = tls.conn.borrow_mut();
                conn.send_close_notify();
                tls.fin_after_flush.set(true);
                let _ = tls.flush(&mut conn);
            }
            SessionIo::Stream(stream) => stream.shutdown_write(),
        }
    }

    /// Closes the socket both ways at once.
    ///
    /// An HTTP/2 stream is ended instead (its connection carries other streams); dropping it
    /// with the session resets it if the client has not ended its side.
    pub fn shutdown_both(&self) {
        match self {
            SessionIo::Plain(tcp) => {
                let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
            }
            SessionIo::Tls(tls) => {
                let _ = socket2::SockRef::from(&tls.tcp).shutdown(std::net::Shutdown::Both);
                tls.fin_after_flush.set(false);
            }
            SessionIo::Stream(stream) => stream.shutdown_write(),
        }
    }
}

/// Both upgraded sockets, with any bytes the HTTP layer had already read past the handshake.
#[derive(Debug)]
pub struct SessionStreams {
    /// The client's connection (TCP, or TLS on an https listener).
    pub client: SessionIo,
    /// Bytes the client sent right after its handshake, already read by the HTTP server.
    pub client_prefix: Bytes,
    /// The backend's connection (TCP, or TLS to an https backend).
    pub backend: SessionIo,
    /// Bytes the backend sent right after its 101, already read by the HTTP client.
    pub backend_prefix: Bytes,
}
