//! Client connections: targets restricted to loopback, client source addresses spread over
//! `127.0.0.0/8`, the WebSocket upgrade, and reading whole frames.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::frame::{FrameScanner, Header};
use super::http::{
    check_switching_protocols, expected_accept, head_end, upgrade_request, MAX_HEAD,
};
use super::BoxError;

/// Where the load goes: a loopback address and a path, from a `ws://` or `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The proxy's (or the backend's) address; always in `127.0.0.0/8`.
    pub addr: SocketAddrV4,
    /// The request path, `/` at least.
    pub path: String,
}

impl Target {
    /// Parses `ws://127.0.0.1:PORT/path` or `http://…`. Anything but an IPv4 loopback address
    /// is refused: the benchmark only ever talks to this machine.
    pub fn parse(url: &str) -> Result<Self, BoxError> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("{url:?}: expected ws://127.x.y.z:PORT/path or http://…"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let addr: SocketAddrV4 = authority
            .parse()
            .map_err(|_| format!("{url:?}: the host must be an IPv4 address with a port"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url:?}: refusing a target outside 127.0.0.0/8").into());
        }
        Ok(Self {
            addr,
            path: path.to_owned(),
        })
    }

    /// `host:port` for the `Host` header.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.addr, self.path)
    }
}

/// Hands out client source addresses spread over `127.0.0.0/8`, so that many connections do
/// not compete for the ephemeral ports of a single source address.
#[derive(Debug, Default)]
pub struct SourceAddrs {
    next: AtomicU32,
}

impl SourceAddrs {
    /// Starts at `127.0.0.2`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next source address: `127.0.c.d` with `d` in `2..=251`, cycling through 64,000
    /// addresses.
    pub fn next(&self) -> Ipv4Addr {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % (256 * 250);
        Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 2)
    }
}

/// Opens a TCP connection to `target` from `source` (any port), with `TCP_NODELAY`. The port is
/// picked at `connect`, per 4-tuple (`IP_BIND_ADDRESS_NO_PORT`): a port picked at `bind` would be
/// taken from the ephemeral range for every destination, and the proxy's own connections to its
/// backend, which share the range, would run out of ports early.
pub async fn connect(target: &Target, source: Ipv4Addr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let stream = socket.connect(SocketAddr::V4(target.addr)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An upgraded WebSocket connection, as the benchmark client uses it.
#[derive(Debug)]
pub struct WsConn {
    /// The connection.
    pub stream: TcpStream,
    /// Frame bytes that arrived with the `101` (normally none).
    pub early: Vec<u8>,
}

/// Everything needed to open WebSocket connections to one target.
#[derive(Debug, Clone)]
pub struct Upgrader {
    target: Target,
    request: Vec<u8>,
    accept: String,
}

impl Upgrader {
    /// Prepares the upgrade request for `target` once.
    pub fn new(target: Target) -> Self {
        let request = upgrade_request(&target.authority(), &target.path);
        Self {
            target,
            request,
            accept: expected_accept(),
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Connects from `source`, upgrades, and checks the `101`.
    pub async fn open(&self, source: Ipv4Addr) -> Result<WsConn, BoxError> {
        let mut stream = connect(&self.target, source).await?;
        stream.write_all(&self.request).await?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("connection closed before the 101".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                return Err("response head too large".into());
            }
        };
        check_switching_protocols(&buf[..end], &self.accept)?;
        Ok(WsConn {
            stream,
            early: buf.split_off(end),
        })
    }
}

/// Reads until `scanner` has seen a frame accepted by `done`, and returns its header.
/// `early` bytes are scanned first (and consumed).
pub async fn read_frame(
    stream: &mut TcpStream,
    early: &mut Vec<u8>,
    scanner: &mut FrameScanner,
    mut done: impl FnMut(&Header) -> bool,
) -> Result<Header, BoxError> {
    let mut found = None;
    scanner.feed(early, |h| {
        if found.is_none() && done(h) {
            found = Some(*h);
        }
    })?;
    early.clear();
    let mut buf = [0u8; 4096];
    while found.is_none() {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err("connection closed while waiting for a frame".into());
        }
        scanner.feed(&buf[..n], |h| {
            if found.is_none() && done(h) {
                found = Some(*h);
            }
        })?;
    }
    Ok(found.expect("loop ends only once a frame is found"))
}

/// Sends `GET` requests to `target` (an HTTP URL through a proxy or to the backend) until one
/// answers `200`, retrying every 20 ms, for at most `timeout`. This is how the script waits for
/// a process to be ready: an observable condition, not a fixed delay.
pub async fn wait_ready(target: &Target, timeout: Duration) -> Result<(), BoxError> {
    let attempt = || async {
        let mut stream = TcpStream::connect(target.addr).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            target.path,
            target.authority()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        if response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200") {
            Ok::<_, io::Error>(())
        } else {
            let line = response.split(|b| *b == b'\r').next().unwrap_or_default();
            Err(io::Error::other(format!(
                "answered {:?}",
                String::from_utf8_lossy(line)
            )))
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut retry = tokio::time::interval(Duration::from_millis(20));
    loop {
        retry.tick().await;
        let last = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{target} not ready within {timeout:?}: {last}").into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_loopback() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(Target::parse("http://127.1.2.3:80").unwrap().path, "/");
        assert!(Target::parse("ws://10.0.0.1:80/").is_err());
        assert!(Target::parse("ws://example.com:80/").is_err());
        assert!(Target::parse("wss://127.0.0.1:80/").is_err());
    }

    #[test]
    fn source_addresses_stay_in_loopback_and_spread() {
        let sources = SourceAddrs::new();
        let first: Vec<_> = (0..500).map(|_| sources.next()).collect();
        assert!(first.iter().all(|a| a.is_loopback()));
        assert_eq!(first[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(first[250], Ipv4Addr::new(127, 0, 1, 2));
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 500);
    }
}
