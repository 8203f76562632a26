//! Shutdown as a value: a signal every connection and session holds, and a tracker that says
//! when the last of them is gone.
//! It also names why a session is asked to end early ([`DrainReason`]), shutdown being one
//! reason among others.
//!
//! Lifecycle: `run` creates one [`Shutdown`]. Every accepted connection and every session carries
//! a [`ShutdownSignal`] (to learn that shutdown began) and a [`TrackToken`] (dropped when it
//! ends). On SIGTERM the listeners stop accepting, the signal fires, HTTP connections finish
//! their in-flight request and close, sessions are drained, and `run` waits on
//! [`Tracker::wait_idle`] up to the grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// The owner's side: fires the signal once.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    tracker: Tracker,
    reason: DrainReason,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown that has not fired; sessions it drains get 1001 `going away`.
    pub fn new() -> Shutdown {
        Shutdown::with_close_code(1001)
    }

    /// A shutdown whose drained sessions get `close_code`: 1012 sends `service restart`
    /// ([`DrainReason::Restart`]), anything else 1001 `going away`.
    pub fn with_close_code(close_code: u16) -> Shutdown {
        let (tx, _) = watch::channel(false);
        Shutdown {
            tx,
            tracker: Tracker::default(),
            reason: if close_code == 1012 {
                DrainReason::Restart
            } else {
                DrainReason::Shutdown
            },
        }
    }

    /// A receiver for connections and sessions.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
            reason: self.reason,
        }
    }

    /// How sessions are drained when it fires ([`DrainReason::Shutdown`], or
    /// [`DrainReason::Restart`] with `shutdown_close_code = 1012`).
    pub fn reason(&self) -> DrainReason {
        self.reason
    }

    /// The tracker that counts live connections and sessions.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Fires the signal; every holder of a [`ShutdownSignal`] wakes.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

/// A connection's or session's view of shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
    reason: DrainReason,
}

impl ShutdownSignal {
    /// Resolves once shutdown has begun (at once if it already has). Cancel-safe.
    pub async fn fired(&mut self) {
        // An error means the owner is gone, which is also a shutdown.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    /// How sessions are drained when it fires ([`DrainReason::Shutdown`] or
    /// [`DrainReason::Restart`]).
    pub fn reason(&self) -> DrainReason {
        self.reason
    }

    /// True once shutdown has begun.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Counts live connections and sessions (one atomic add and one sub per connection).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    /// Registers one live thing; it counts until the token is dropped.
    pub fn token(&self) -> TrackToken {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        TrackToken {
            inner: self.inner.clone(),
        }
    }

    /// How many tokens are alive.
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Resolves when no token is alive.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps one connection or session counted by its [`Tracker`] while alive.
#[derive(Debug)]
pub struct TrackToken {
    inner: Arc<TrackerInner>,
}

impl Drop for TrackToken {
    fn drop(&mut self) {
        if self.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Why a session is asked to end before either peer closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// The sidecar is shutting down: close 1001 `going away`.
    Shutdown,
    /// The sidecar is shutting down with `shutdown_close_code = 1012`: close 1012
    /// `service restart`, which tells clients to reconnect soon.
    Restart,
    /// The session's backend member was marked unhealthy and its rule says
    /// `on_backend_unhealthy = "drain"`.
    BackendUnhealthy,
    /// A configuration reload removed the session's route.
    RouteRemoved,
    /// The session reached its rule's `max_session_age`: close 1001 `max session age`, so
    /// long-lived sessions rebalance onto new members.
    MaxSessionAge,
    /// An admin drain of a fraction of a member's sessions picked it
    /// (`POST /backends/{pool}/{member}/drain`): close 1001 `rebalance`.
    Rebalance,
}

impl DrainReason {
    /// The close code and reason Tether sends to both peers when this drain closes a session
    /// (RFC 6455 §7.4.1; 1012 from the IANA WebSocket close code registry).
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            DrainReason::Restart => (1012, "service restart"),
            DrainReason::MaxSessionAge => (1001, "max session age"),
            DrainReason::Rebalance => (1001, "rebalance"),
            _ => (1001, "going away"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracker_waits_for_the_last_token() {
        let shutdown = Shutdown::new();
        let tracker = shutdown.tracker().clone();
        let a = tracker.token();
        let b = tracker.token();
        assert_eq!(tracker.live(), 2);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_idle().await }
        });
        drop(a);
        assert!(!waiter.is_finished() || tracker.live() == 0);
        drop(b);
        waiter.await.unwrap();
        assert_eq!(tracker.live(), 0);
    }

    #[tokio::test]
    async fn signal_fires_for_every_holder() {
        let shutdown = Shutdown::new();
        let mut s1 = shutdown.signal();
        let mut s2 = s1.clone();
        assert!(!s1.is_fired());
        shutdown.fire();
        s1.fired().await;
        s2.fired().await;
        assert!(s2.is_fired());
    }
}
