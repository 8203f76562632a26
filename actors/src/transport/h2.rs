//! One side of a session carried on an HTTP/2 stream (a WebSocket opened with an extended
//! CONNECT, RFC 8441): hyper's upgraded stream, seen through the same readiness-then-try calls
//! the pump makes on a socket.
//!
//! hyper's upgraded HTTP/2 stream keeps the DATA it has received but not yet handed out, and
//! hands data to a task of the connection for sending; that gives the two readiness signals:
//!
//! * **readable**: a read into an empty buffer makes hyper wait for the next DATA frame (or the
//!   end of the stream) and keep it, delivering nothing; the pump's real read then takes it.
//!   A read that delivers nothing after readiness is the end of the stream.
//! * **writable**: hyper's flush is ready once its one-slot hand-off to the sending task is
//!   free. A write is taken whole (hyper copies it into a buffer of its own: one allocation
//!   per write on this path, unlike a socket) and sent as h2 flow control allows, so a slow
//!   client's window holds back at most two writes before the pump stops reading the backend.
//!
//! Ends: `shutdown_write` closes the hand-off, and hyper's task sends `END_STREAM` after what
//! it holds; dropping the stream resets it (`RST_STREAM`) if the client has not ended its side.
//! A stream has no socket of its own to watch for a hang-up while it is not read, so
//! [`StreamIo::poll_hangup`] never fires: a client that resets the stream is seen by the next
//! read, and the client's connection (with its HTTP/2 PINGs) outlives its streams.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use hyper::rt::{Read as _, ReadBuf, Write as _};
use hyper::upgrade::Upgraded;

use super::ReadEnd;

/// A WebSocket's HTTP/2 stream, for the pump (see the module doc).
pub struct StreamIo {
    /// Same thread as the pump, borrowed only inside synchronous calls.
    io: RefCell<Upgraded>,
    /// Keeps the stream counted as open on its connection (no idle GOAWAY under a session).
    _open: crate::http2::StreamGuard,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamIo")
    }
}

impl StreamIo {
    /// The upgraded stream of an extended CONNECT that was answered `200`, with its account in
    /// the connection's open streams.
    pub fn new(io: Upgraded, open: crate::http2::StreamGuard) -> StreamIo {
        StreamIo {
            io: RefCell::new(io),
            _open: open,
        }
    }

    /// Ready once DATA (or the end of the stream, or an error) waits to be read.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut empty = ReadBuf::new(&mut []);
        match Pin::new(&mut *self.io.borrow_mut()).poll_read(cx, empty.unfilled()) {
            Poll::Pending => Poll::Pending,
            // An error is reported by the read that follows.
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    /// One read without waiting: what is there goes to `deliver`.
    pub fn read(&self, buf: &mut [u8], mut deliver: impl FnMut(&[u8])) -> ReadEnd {
        let mut read = ReadBuf::new(buf);
        let polled = Pin::new(&mut *self.io.borrow_mut())
            .poll_read(&mut Context::from_waker(Waker::noop()), read.unfilled());
        match polled {
            Poll::Pending => ReadEnd::Open,
            Poll::Ready(Ok(())) if read.filled().is_empty() => ReadEnd::Eof,
            Poll::Ready(Ok(())) => {
                deliver(read.filled());
                ReadEnd::Open
            }
            Poll::Ready(Err(_)) => ReadEnd::Error,
        }
    }

    /// Ready once a write would be taken.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io.borrow_mut()).poll_flush(cx)
    }

    /// Hands `bytes` to the stream if it takes them now (`WouldBlock` otherwise).
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        let polled = Pin::new(&mut *self.io.borrow_mut())
            .poll_write(&mut Context::from_waker(Waker::noop()), bytes);
        match polled {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Ends the stream towards the client (`END_STREAM` once what was written is sent).
    pub fn shutdown_write(&self) {
        let _ = Pin::new(&mut *self.io.borrow_mut())
            .poll_shutdown(&mut Context::from_waker(Waker::noop()));
    }
}
