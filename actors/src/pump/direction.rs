//! One direction of a session (bytes from a source to a destination) as the session core
//! ([`super::machine`]) sees it: its explicit states, its pending bytes, and the [`Wire`] its
//! bytes leave by. The state diagram is in the core's module doc.

use std::io;

use crate::frame::{CloseInfo, ControlFrame, FrameTracker, Sink};
use crate::outcome::Counters;

/// A direction keeps reading while fewer bytes than this wait for its destination, so a
/// destination that is briefly full does not stall the source (the buffer is freed once
/// flushed); at the limit it stops reading and backpressure travels end to end.
pub const PENDING_LIMIT: usize = 64 * 1024;

/// A direction of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

impl Dir {
    /// The opposite direction.
    pub(crate) fn other(self) -> Dir {
        match self {
            Dir::Up => Dir::Down,
            Dir::Down => Dir::Up,
        }
    }
}

/// Where the core's actions go: the driver's two sockets, or a test's recording.
pub(crate) trait Wire {
    /// Offers `bytes` to the destination of `dir` without waiting: how many it took
    /// (`WouldBlock` when none); any other error means that peer is gone.
    fn send(&mut self, dir: Dir, bytes: &[u8]) -> io::Result<usize>;
    /// Passes the end of the stream on: shuts down the write side towards `dir`'s destination.
    fn shutdown_write(&mut self, dir: Dir);
    /// Closes the client's socket both ways (it stopped answering, or stopped reading).
    fn close_client(&mut self);
    /// Closes the backend's socket both ways (it stopped reading).
    fn close_backend(&mut self);
    /// The session's live counters.
    fn counters(&self) -> &Counters;
}

/// Reading side of a direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Read as the destination takes bytes.
    #[default]
    Open,
    /// Hung up (FIN or reset) while not read: its end is still to be read.
    HungUp,
    /// Its end was read (or it was closed by Tether): nothing more comes from it.
    Ended {
        /// It had hung up while not read, before its end was read.
        hung_up: bool,
    },
}

impl Source {
    pub(super) fn ended(self) -> bool {
        matches!(self, Source::Ended { .. })
    }
    pub(super) fn hung_up(self) -> bool {
        matches!(self, Source::HungUp | Source::Ended { hung_up: true })
    }
    pub(super) fn end(&mut self) {
        *self = Source::Ended {
            hung_up: self.hung_up(),
        };
    }
    pub(super) fn hang_up(&mut self) {
        *self = match *self {
            Source::Open | Source::HungUp => Source::HungUp,
            Source::Ended { .. } => Source::Ended { hung_up: true },
        };
    }
}

/// Writing side of a direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    /// Takes what is forwarded.
    #[default]
    Open,
    /// The source ended: pass its FIN on once the pending bytes are written.
    FinPending,
    /// The FIN was passed on.
    FinSent,
    /// Tether closed this peer (its close frame was written, or the socket was closed): bytes
    /// for it are dropped. `fin_pending`: the FIN still follows once pending bytes are out.
    Closed { fin_pending: bool },
    /// A write failed; the other peer is yet to be told that this one is gone.
    Failing,
    /// A write failed and that was handled: nothing more is written.
    Failed,
}

impl Dest {
    /// Bytes for this destination are dropped.
    pub(super) fn done(self) -> bool {
        matches!(self, Dest::Closed { .. } | Dest::Failed)
    }
    pub(super) fn failed(self) -> bool {
        matches!(self, Dest::Failing | Dest::Failed)
    }
    pub(super) fn fin_pending(self) -> bool {
        matches!(self, Dest::FinPending | Dest::Closed { fin_pending: true })
    }
    /// A FIN is to follow the pending bytes.
    pub(super) fn want_fin(&mut self) {
        *self = match *self {
            Dest::Open | Dest::FinPending | Dest::FinSent => Dest::FinPending,
            Dest::Closed { .. } => Dest::Closed { fin_pending: true },
            other => other,
        };
    }
    pub(super) fn fin_sent(&mut self) {
        *self = match *self {
            Dest::FinPending => Dest::FinSent,
            Dest::Closed { .. } => Dest::Closed { fin_pending: false },
            other => other,
        };
    }
    /// Tether closed this peer; `fin` when a FIN follows the close frame.
    pub(super) fn close(&mut self, fin: bool) {
        *self = match *self {
            Dest::Failing | Dest::Failed => Dest::Failed,
            Dest::Closed { fin_pending } => Dest::Closed {
                fin_pending: fin_pending || fin,
            },
            d => Dest::Closed {
                fin_pending: fin || d == Dest::FinPending,
            },
        };
    }
    /// A write failed.
    pub(super) fn fail(&mut self) {
        *self = match *self {
            Dest::Closed { .. } | Dest::Failed => Dest::Failed,
            _ => Dest::Failing,
        };
    }
}

/// A frame of Tether's waiting for a frame boundary.
#[derive(Clone)]
pub(super) enum Queued {
    /// A keep-alive ping to the client.
    Ping(ControlFrame),
    /// Tether's close frame.
    Close(ControlFrame),
}

/// One direction: bytes from `src` to `dst`.
#[derive(Default)]
pub(super) struct Half {
    pub(super) tracker: FrameTracker,
    /// Bytes accepted for `dst` it has not taken yet.
    pub(super) pending: Vec<u8>,
    pub(super) source: Source,
    pub(super) dest: Dest,
    /// A frame of Tether's waiting for a frame boundary towards `dst` (boxed: rare, and an
    /// idle session should not carry 130 bytes for it).
    pub(super) queued: Option<Box<Queued>>,
    /// The close frame `src` sent, if any (boxed: an idle session has none, and should not
    /// carry 32 bytes for it).
    pub(super) close: Option<Box<CloseInfo>>,
}

impl Half {
    pub(super) fn can_read(&self) -> bool {
        !self.source.ended() && self.pending.len() < PENDING_LIMIT
    }
    pub(super) fn wants_write(&self) -> bool {
        !self.pending.is_empty() && !self.dest.done()
    }
    /// Not reading because `dst` is full, with `src` neither ended nor known to have said
    /// goodbye: whether it hangs up is watched for without reading.
    pub(super) fn stalled(&self) -> bool {
        self.source == Source::Open && self.close.is_none() && !self.can_read()
    }
    /// Every byte accepted for `dst` was taken, or `dst` takes nothing more.
    pub(super) fn settled(&self) -> bool {
        self.pending.is_empty() || self.dest.done()
    }
    /// The peer behind `src` answered: close frame or end of stream.
    pub(super) fn answered(&self) -> bool {
        self.source.ended() || self.close.is_some()
    }
}

/// Delivers bytes through the wire: straight through while the destination takes them, into
/// `pending` once it does not.
pub(super) struct Outbox<'a, W: Wire> {
    pub(super) wire: &'a mut W,
    pub(super) dir: Dir,
    pub(super) pending: &'a mut Vec<u8>,
    pub(super) dest: &'a mut Dest,
    pub(super) discard: bool,
}

impl<W: Wire> Sink for Outbox<'_, W> {
    fn send(&mut self, bytes: &[u8]) {
        if self.discard || self.dest.failed() || bytes.is_empty() {
            return;
        }
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(bytes);
            return;
        }
        match self.wire.send(self.dir, bytes) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => self.pending.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending.extend_from_slice(bytes)
            }
            Err(_) => self.dest.fail(),
        }
    }
}
