//! The fast echo backend behind every proxy in the benchmark.
//!
//! It must cost as little CPU per message as possible, because on a small machine it shares a
//! core with the load generator: every microsecond it spends is one the proxy is not pushed.
//! So it is a hand-rolled HTTP/1.1 + WebSocket server on a plain TCP socket:
//!
//! * a WebSocket upgrade (any path) gets a `101`, then every data frame is echoed back unmasked
//!   as it arrives (streamed: a frame need not fit a read), pings get pongs, and a close frame is
//!   echoed before the server closes the connection;
//! * any other request (any method and path, `Content-Length` bodies skipped) gets a small
//!   `200 ok` with keep-alive, so `wrk` can measure plain HTTP through each proxy.
//!
//! Nothing is logged per connection: errors end that connection only.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::frame::{EchoStatus, Echoer};
use super::http::{
    head_end, parse_request, switching_protocols, MAX_HEAD, SMALL_RESPONSE, SMALL_RESPONSE_CLOSE,
};

/// Read size for WebSocket sessions.
const READ_BUF: usize = 16 * 1024;

/// Accepts connections on `listener` forever, serving each on its own task.
///
/// Returns only if accepting fails with an error that is not about a single connection.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => return Err(error),
        };
        tokio::spawn(async move {
            // A failed connection concerns only its own client.
            let _ = serve_connection(stream).await;
        });
    }
}

/// Accept errors that concern one connection attempt, after which accepting can go on.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves HTTP/1.1 requests on one connection until it closes or upgrades to a WebSocket.
async fn serve_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::new();
    // Bytes of a request body still to be skipped.
    let mut skip = 0usize;
    loop {
        let mut read = [0u8; 4096];
        let n = stream.read(&mut read).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&read[..n]);
        out.clear();
        let mut start = 0;
        let mut close = false;
        loop {
            if skip > 0 {
                let take = skip.min(buf.len() - start);
                skip -= take;
                start += take;
                if skip > 0 {
                    break;
                }
            }
            let Some(end) = head_end(&buf[start..]) else {
                break;
            };
            let head = parse_request(&buf[start..start + end])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            start += end;
            if let Some(key) = head.websocket_key {
                out.extend_from_slice(&switching_protocols(&key));
                stream.write_all(&out).await?;
                let early = buf.split_off(start);
                return echo_session(stream, &early).await;
            }
            skip = head.content_length;
            if head.close {
                out.extend_from_slice(SMALL_RESPONSE_CLOSE);
                close = true;
                break;
            }
            out.extend_from_slice(SMALL_RESPONSE);
        }
        buf.drain(..start);
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if close {
            return stream.shutdown().await;
        }
    }
}

/// Echoes frames on an upgraded connection; `early` holds bytes that arrived with the
/// handshake.
async fn echo_session(mut stream: TcpStream, early: &[u8]) -> io::Result<()> {
    let mut echoer = Echoer::new();
    let mut out = Vec::new();
    let invalid = |error| io::Error::new(io::ErrorKind::InvalidData, error);
    let mut status = echoer.feed(early, &mut out).map_err(invalid)?;
    let mut read = vec![0u8; READ_BUF];
    loop {
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if status == EchoStatus::Closed {
            return stream.shutdown().await;
        }
        let n = stream.read(&mut read).await?;
        if n == 0 {
            return Ok(());
        }
        status = echoer.feed(&read[..n], &mut out).map_err(invalid)?;
    }
}
