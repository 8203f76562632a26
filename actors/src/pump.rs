//! The byte pump that carries an upgraded WebSocket both ways.
//!
//! Memory is the design constraint: a sidecar may hold tens of thousands of idle sessions, so an
//! idle session owns no buffer at all. Each direction waits for *readiness*, then borrows the
//! worker thread's one 64 KiB read buffer, reads, and writes the bytes straight to the other
//! socket before giving the buffer back. Only bytes the other side refuses (its send buffer is
//! full) are copied into a per-direction `Vec`, which is freed as soon as they are flushed, and
//! no further bytes are read in that direction until then (backpressure travels end to end).
//!
//! Lifecycle of one direction: `flush prefix → (readable → read → write → [flush leftovers])* →
//! EOF | error`. On EOF the other socket's write half is shut down (a TCP half-close passes
//! through), and the opposite direction carries on until it ends too.

use std::cell::{Cell, RefCell};
use std::io;

use bytes::Bytes;
use tokio::net::TcpStream;

/// Size of the per-worker read buffer.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by every session on it. Never borrowed across
    /// an `.await`, so the borrow cannot conflict.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUFFER_SIZE].into_boxed_slice());
}

/// How one direction of the pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectionEnd {
    /// The source sent FIN; everything read was delivered.
    Eof,
    /// Reading from the source failed (reset, timeout).
    ReadFailed(io::ErrorKind),
    /// Writing to the destination failed (reset, broken pipe).
    WriteFailed(io::ErrorKind),
}

enum Step {
    Again,
    Leftover,
    Eof,
    ReadFailed(io::ErrorKind),
    WriteFailed(io::ErrorKind),
}

/// Copies `src` to `dst` until `src` ends or either side fails, after first writing `prefix`
/// (bytes already read from `src` by the HTTP layer). Adds every delivered byte to `counter`.
pub async fn pipe(
    src: &TcpStream,
    dst: &TcpStream,
    prefix: Bytes,
    counter: &Cell<u64>,
) -> DirectionEnd {
    if !prefix.is_empty() {
        if let Err(e) = write_all(dst, &prefix).await {
            return DirectionEnd::WriteFailed(e.kind());
        }
        counter.set(counter.get() + prefix.len() as u64);
    }
    drop(prefix);
    let mut leftover: Vec<u8> = Vec::new();
    loop {
        if let Err(e) = src.readable().await {
            return DirectionEnd::ReadFailed(e.kind());
        }
        let step = READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            match src.try_read(&mut buf) {
                Ok(0) => Step::Eof,
                Ok(n) => {
                    counter.set(counter.get() + n as u64);
                    match dst.try_write(&buf[..n]) {
                        Ok(w) if w == n => Step::Again,
                        Ok(w) => {
                            leftover.extend_from_slice(&buf[w..n]);
                            Step::Leftover
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            leftover.extend_from_slice(&buf[..n]);
                            Step::Leftover
                        }
                        Err(e) => Step::WriteFailed(e.kind()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Again,
                Err(e) => Step::ReadFailed(e.kind()),
            }
        });
        match step {
            Step::Again => {}
            Step::Leftover => {
                if let Err(e) = write_all(dst, &leftover).await {
                    return DirectionEnd::WriteFailed(e.kind());
                }
                // Free the session's copy: an idle session holds no buffer.
                leftover = Vec::new();
            }
            Step::Eof => {
                // Half-close: the peer learns this side is done sending.
                let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
                return DirectionEnd::Eof;
            }
            Step::ReadFailed(kind) => return DirectionEnd::ReadFailed(kind),
            Step::WriteFailed(kind) => return DirectionEnd::WriteFailed(kind),
        }
    }
}

/// Writes all of `bytes` to `dst`, waiting for writability as needed.
pub async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Bytes written in at one end come out unchanged at the other, prefix first, and EOF
    /// propagates as a half-close.
    #[tokio::test]
    async fn copies_prefix_then_stream_then_half_closes() {
        let (mut client, proxy_in) = pair().await;
        let (proxy_out, mut server) = pair().await;
        let counter = Cell::new(0);
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = async {
            client.write_all(&payload).await.unwrap();
            client.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        };
        let pump = pipe(
            &proxy_in,
            &proxy_out,
            Bytes::from_static(b"prefix:"),
            &counter,
        );
        let (_, got, end) = tokio::join!(writer, reader, pump);
        assert_eq!(end, DirectionEnd::Eof);
        assert_eq!(&got[..7], b"prefix:");
        assert_eq!(&got[7..], &payload[..]);
        assert_eq!(counter.get(), 7 + payload.len() as u64);
    }
}
