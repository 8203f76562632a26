//! Admission: what a connection holds to be let in, and what it gives back when it ends.
//!
//! * [`ListenerInfo`]: what a worker knows about the listener a connection came from.
//! * [`ConnectionLimit`] / [`ConnectionGuard`] / [`SessionPlace`]: a listener's
//!   `max_connections` and `max_handshakes_per_ip`. A guard follows its connection from the
//!   accept loop through the worker into the session (see [`crate::listener`] for the accept
//!   side), so the count is exact at every moment and is given back on the thread that owns the
//!   connection.
//! * [`SessionSlot`]: a place in a rule's `websocket.max_sessions`, held from the handshake to
//!   the session's end.
//!
//! Vocabulary only: no actor and no I/O, so the messages, the data path and the actors can all
//! carry these values without depending on each other.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tether_config::ListenerConfig;
use tokio::sync::Notify;

use crate::tls::ListenerTls;

/// What a worker needs to know about the listener a connection came from.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's name (routing rules refer to it).
    pub name: Arc<str>,
    /// The address it is bound to.
    pub local_addr: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// The listener's configuration (header limits, timeouts).
    pub config: ListenerConfig,
    /// An HTTPS listener's TLS (certificates by SNI, reloaded in place); `None` = plain HTTP.
    pub tls: Option<Arc<ListenerTls>>,
    /// `redirect_to`: the port of the https listener every request is redirected to.
    pub redirect_port: Option<u16>,
}

/// The connections open on one listener, and its limits (one atomic add and sub per
/// connection; the per-IP table is touched only when `max_handshakes_per_ip` is set).
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    inner: Arc<LimitInner>,
}

#[derive(Debug)]
struct LimitInner {
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    /// Connections accepted since the listener started (`tether_listener_connections_accepted_total`).
    accepted: AtomicU64,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    freed: Notify,
}

/// Counts one connection against its listener's [`ConnectionLimit`] until dropped, or until it
/// becomes the [`SessionPlace`] of the WebSocket session the connection upgraded to.
#[derive(Debug)]
pub struct ConnectionGuard {
    /// `None` only once [`ConnectionGuard::into_session`] moved the count on.
    inner: Option<Arc<LimitInner>>,
    /// Set while the guard also counts against its IP's handshake limit.
    ip: Option<IpAddr>,
}

/// An upgraded connection's place in its listener's `max_connections`, held by its session and
/// given back when dropped. It no longer counts against the client IP's handshake limit, and
/// it is one pointer: sessions are many and mostly idle.
#[derive(Debug)]
pub struct SessionPlace(Arc<LimitInner>);

/// Why [`ConnectionLimit::admit`] did not count a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` are open: wait for [`ConnectionLimit::room`], then try again.
    Full,
    /// The client's IP is at its handshake limit (`max_handshakes_per_ip`): answer 429.
    PerIp,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (`0` = none) and `per_ip` connections in their HTTP
    /// phase per client IP (`0` = none).
    pub fn new(max: usize, per_ip: usize) -> ConnectionLimit {
        ConnectionLimit {
            inner: Arc::new(LimitInner {
                max,
                per_ip,
                open: AtomicUsize::new(0),
                accepted: AtomicU64::new(0),
                by_ip: Mutex::new(HashMap::new()),
                freed: Notify::new(),
            }),
        }
    }

    /// Connections (and sessions) counted now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Counts a connection the listener accepted (admitted or refused with 429 alike).
    pub fn count_accepted(&self) {
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Resolves once fewer than `max` are open (at once without a limit).
    pub async fn room(&self) {
        if self.inner.max == 0 {
            return;
        }
        loop {
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.open() < self.inner.max {
                return;
            }
            freed.await;
        }
    }

    /// Counts a new connection from `ip` if there is room for it, atomically: several accept
    /// loops (one per worker thread) may admit at once, and never more than `max` together.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionGuard, Refused> {
        if self.inner.per_ip == 0 {
            return if self.try_count() {
                Ok(ConnectionGuard {
                    inner: Some(self.inner.clone()),
                    ip: None,
                })
            } else {
                Err(Refused::Full)
            };
        }
        // The table stays locked over the count so that an IP's entry and `open` agree.
        let mut by_ip = self.inner.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if by_ip.get(&ip).is_some_and(|n| *n >= self.inner.per_ip) {
            // While full the connection waits for room first, as any other would.
            return Err(if self.full() {
                Refused::Full
            } else {
                Refused::PerIp
            });
        }
        if !self.try_count() {
            return Err(Refused::Full);
        }
        *by_ip.entry(ip).or_default() += 1;
        Ok(ConnectionGuard {
            inner: Some(self.inner.clone()),
            ip: Some(ip),
        })
    }

    /// Whether `max` connections are open.
    fn full(&self) -> bool {
        self.inner.max != 0 && self.open() >= self.inner.max
    }

    /// Adds one to `open` unless that would exceed `max` (one compare-and-swap).
    fn try_count(&self) -> bool {
        if self.inner.max == 0 {
            self.inner.open.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        let max = self.inner.max;
        self.inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

impl ConnectionGuard {
    /// The connection upgraded: its place in `max_connections` moves, without ever being given
    /// up, into its session's [`SessionPlace`], and it stops counting against its IP's
    /// handshake limit (only the HTTP phase is limited per IP).
    pub fn into_session(mut self) -> Option<SessionPlace> {
        self.end_handshake();
        self.inner.take().map(SessionPlace)
    }

    /// Takes the connection off its IP's handshake count.
    fn end_handshake(&mut self) {
        let (Some(ip), Some(inner)) = (self.ip.take(), &self.inner) else {
            return;
        };
        let mut by_ip = inner.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.end_handshake();
        if let Some(inner) = self.inner.take() {
            inner.release();
        }
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl LimitInner {
    /// One connection closed: a place is free.
    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// A place in a rule's `max_sessions`, held from the handshake to the session's end.
#[derive(Debug)]
pub struct SessionSlot(Arc<AtomicUsize>);

impl SessionSlot {
    /// Takes a slot among a rule's live `sessions`, or `None` when its `max` sessions are all
    /// taken (one atomic add; undone at once when over the limit).
    pub fn acquire(sessions: &Arc<AtomicUsize>, max: Option<u32>) -> Option<SessionSlot> {
        let before = sessions.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = max {
            if before >= max as usize {
                sessions.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        Some(SessionSlot(sessions.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn admit_counts_up_to_max_and_a_dropped_guard_makes_room() {
        let limit = ConnectionLimit::new(2, 0);
        let first = limit.admit(IP).expect("room");
        let _second = limit.admit(IP).expect("room");
        assert_eq!(limit.admit(IP).err(), Some(Refused::Full));
        assert_eq!(limit.open(), 2);
        drop(first);
        assert!(limit.admit(IP).is_ok());
    }

    #[test]
    fn the_per_ip_limit_refuses_only_that_ip_and_only_while_there_is_room() {
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        let limit = ConnectionLimit::new(2, 1);
        let _held = limit.admit(IP).expect("room");
        assert_eq!(limit.admit(IP).err(), Some(Refused::PerIp));
        let _other = limit.admit(other).expect("another IP");
        // Full: the IP over its limit waits for room like any other connection.
        assert_eq!(limit.admit(IP).err(), Some(Refused::Full));
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn an_upgraded_connection_frees_its_ip_but_keeps_its_place() {
        let limit = ConnectionLimit::new(2, 1);
        let connection = limit.admit(IP).expect("room");
        assert_eq!(limit.admit(IP).err(), Some(Refused::PerIp));
        let session = connection.into_session().expect("a place");
        assert_eq!(limit.open(), 1);
        let _next = limit
            .admit(IP)
            .expect("the IP has no handshake in progress");
        assert_eq!(limit.open(), 2);
        assert_eq!(limit.admit(IP).err(), Some(Refused::Full));
        drop(session);
        assert_eq!(limit.open(), 1);
    }

    #[test]
    fn accept_loops_on_several_threads_never_admit_more_than_max_together() {
        let limit = ConnectionLimit::new(3, 0);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..1000)
                        .filter_map(|_| limit.admit(IP).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Every thread's guards are kept until all threads are done: dropping one thread's
        // while another still runs would free places for it.
        let lists: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let admitted: usize = lists.iter().map(Vec::len).sum();
        assert_eq!(admitted, 3);
        drop(lists);
        assert_eq!(
            limit.open(),
            0,
            "every guard was dropped with its thread's list"
        );
    }
}
