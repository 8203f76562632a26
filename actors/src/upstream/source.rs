//! Backend connections from chosen local addresses (`backend_settings.NAME.source_addresses`).
//!
//! A TCP connection is one 4-tuple (source IP, source port, destination IP, destination port).
//! With the source IP left to the kernel, every connection to one member IP:port differs only
//! by its source port, taken from the ephemeral range (`net.ipv4.ip_local_port_range`,
//! 32768–60999 by default): about 28k connections per member, whatever the member could take.
//! Each configured source address brings a range of its own, so `n` addresses reach `n` × 28k.
//!
//! A connection from a source address is: `socket` (non-blocking), `IP_BIND_ADDRESS_NO_PORT`,
//! `bind(address, port 0)`, `connect`. Without `IP_BIND_ADDRESS_NO_PORT` the `bind` would pick
//! the port, unique across *every* destination: one address would then hold ~28k connections in
//! total, all members together, instead of ~28k per member. With it the port is picked at
//! `connect`, per 4-tuple, exactly as the kernel does for an unbound socket.
//!
//! Which address: round robin per worker and per destination — a cursor per member IP:port in a
//! thread-local map (no lock, nothing shared with other workers). Per destination, so that a
//! pool whose members are also picked in turn does not pair each member with one address.
//! An address with no port left toward the destination (`connect` fails with `EADDRNOTAVAIL`
//! or `EADDRINUSE`), or that the host no longer has (`bind` fails), is passed over for the
//! next; when every address has been tried the connection fails with
//! [`ProxyError::NoLocalPort`], which is Tether's limit and never counts against the member.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::ProxyError;

/// Destinations whose cursor a worker keeps; past this the map starts over (a cursor is only
/// where the next round starts, so forgetting it costs nothing but one uneven pick).
const MAX_CURSORS: usize = 4096;

thread_local! {
    /// This worker's next source address index, per destination.
    static CURSORS: RefCell<HashMap<SocketAddr, usize>> = RefCell::new(HashMap::new());
}

/// Whether a `connect` or `bind` error means this source address has no port left toward the
/// destination (or cannot be used at all): the host's limit, so the next address is tried.
pub(super) fn is_local_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
    )
}

/// The index to start from for `backend` among `len` addresses, moving the cursor on.
fn next_start(backend: SocketAddr, len: usize) -> usize {
    CURSORS.with(|cursors| {
        let mut cursors = cursors.borrow_mut();
        if cursors.len() >= MAX_CURSORS && !cursors.contains_key(&backend) {
            cursors.clear();
        }
        let cursor = cursors.entry(backend).or_insert(0);
        let start = *cursor % len;
        *cursor = start + 1;
        start
    })
}

/// Connects to `backend` from one of `sources` of its family, trying each once, starting at
/// this worker's cursor for `backend`; `None` when none is of its family (the kernel's choice
/// then, as without `sources`). The caller bounds it with `connect_timeout`.
pub(super) async fn connect_from(
    backend: SocketAddr,
    sources: &[IpAddr],
) -> Option<Result<TcpStream, ProxyError>> {
    let same_family = |ip: &&IpAddr| ip.is_ipv4() == backend.is_ipv4();
    let usable = sources.iter().filter(same_family).count();
    if usable == 0 {
        return None;
    }
    let start = next_start(backend, usable);
    let in_turn = sources.iter().filter(same_family).cycle().skip(start);
    for &source in in_turn.take(usable) {
        match connect_one(source, backend).await {
            Ok(stream) => return Some(Ok(stream)),
            Err(Step::Exhausted(cause)) => {
                tracing::debug!(%source, %backend, error = %cause, "no local port from this source address; trying the next");
            }
            Err(Step::Failed(cause)) => {
                return Some(Err(ProxyError::ConnectFailed { backend, cause }))
            }
        }
    }
    Some(Err(ProxyError::NoLocalPort {
        backend,
        sources: usable,
    }))
}

/// How one source address fared.
enum Step {
    /// No port left toward the destination, or the address cannot be bound: try the next.
    Exhausted(io::Error),
    /// The connection itself failed (refused, unreachable, reset): the backend's answer.
    Failed(io::Error),
}

/// `socket`, `IP_BIND_ADDRESS_NO_PORT`, `bind(source, 0)`, then a non-blocking `connect` that
/// completes on the worker's reactor.
async fn connect_one(source: IpAddr, backend: SocketAddr) -> Result<TcpStream, Step> {
    let socket = Socket::new(
        Domain::for_address(backend),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(Step::Failed)?;
    bind_address_no_port(&socket);
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .map_err(Step::Exhausted)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(backend).await.map_err(|e| {
        if is_local_exhaustion(&e) {
            Step::Exhausted(e)
        } else {
            Step::Failed(e)
        }
    })
}

/// Defers the choice of the source port from `bind` to `connect` (Linux 4.2+). Where it cannot
/// be set, `bind` reserves a port for every destination: fewer connections, still correct.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_address_no_port(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
    if let Err(e) = setsockopt(socket, IpBindAddressNoPort, &true) {
        tracing::debug!(error = %e, "IP_BIND_ADDRESS_NO_PORT not set");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_address_no_port(_socket: &Socket) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_destination_has_its_own_round_robin() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        // Interleaved picks for two destinations: each still walks 0, 1, 2, 0.
        let picks: Vec<(usize, usize)> = (0..4)
            .map(|_| (next_start(a, 3), next_start(b, 3)))
            .collect();
        assert_eq!(picks, [(0, 0), (1, 1), (2, 2), (0, 0)]);
        // A shorter list (a reload) wraps instead of indexing past its end.
        assert_eq!(next_start(a, 1), 0);
        assert_eq!(next_start(a, 2), 1);
    }

    /// A member of the other family than every source address (a DNS name that resolved to
    /// IPv6, say) is left to the kernel, and a list with both families uses its own family's.
    #[tokio::test]
    async fn only_addresses_of_the_members_family_are_used() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let v6_only: [IpAddr; 1] = [std::net::Ipv6Addr::LOCALHOST.into()];
        assert!(connect_from(backend, &v6_only).await.is_none());
        let both: [IpAddr; 2] = [v6_only[0], [127, 0, 0, 2].into()];
        let stream = connect_from(backend, &both).await.unwrap().unwrap();
        assert_eq!(stream.local_addr().unwrap().ip(), both[1]);
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
    }

    #[test]
    fn only_port_and_address_errors_pass_to_the_next_address() {
        for kind in [io::ErrorKind::AddrNotAvailable, io::ErrorKind::AddrInUse] {
            assert!(is_local_exhaustion(&kind.into()), "{kind:?}");
        }
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
        ] {
            assert!(!is_local_exhaustion(&kind.into()), "{kind:?}");
        }
    }
}
