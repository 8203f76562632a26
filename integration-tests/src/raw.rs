//! A raw HTTP/1.1 client over a plain socket, for requests a WebSocket library refuses to send
//! (malformed handshakes) and for byte-level assertions.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response: status code, header lines, and the bytes after the head.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines (`name: value`), lowercased names.
    pub headers: Vec<(String, String)>,
    /// What followed the head (until the connection closed).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` verbatim and reads until the server closes the connection.
pub async fn send(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.expect("read response");
    parse(&all)
}

/// Reads a response head from `stream` (byte by byte, so nothing after it is consumed).
pub async fn read_head(stream: &mut TcpStream) -> RawResponse {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    parse(&head)
}

/// Parses a response head and whatever bytes follow it.
pub fn parse(all: &[u8]) -> RawResponse {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(all.len());
    let head = String::from_utf8_lossy(&all[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    RawResponse {
        status,
        headers,
        body: all[end..].to_vec(),
    }
}

/// A syntactically valid WebSocket handshake for `path`, with `extra` header lines appended.
pub fn handshake(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Reads one unmasked (server-to-client) frame from `stream`: its first byte (FIN, RSV, opcode)
/// and payload.
pub async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.expect("frame header");
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await.expect("length");
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).await.expect("length");
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.expect("payload");
    (head[0], payload)
}

/// A masked (client-to-server) frame with FIN set.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}
