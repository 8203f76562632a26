//! The pump that carries one upgraded WebSocket both ways, and decides how it ends.
//!
//! # Memory
//! An idle session owns no buffer. Each direction waits for *readiness*, borrows the worker
//! thread's one 64 KiB read buffer, reads, and writes straight through. Only bytes the other side
//! refuses (its socket buffer is full) are copied into that direction's `pending` vector, which is
//! freed once flushed; once it holds [`PENDING_LIMIT`] bytes the direction stops reading, so
//! backpressure travels end to end. (Stopping at the first refused byte instead made a busy
//! session stop and go: with 4 KiB echoes the worker sat 40% idle.)
//!
//! In frames mode a source that is not read is still watched for its peer hanging up (FIN or
//! reset), which a reader would only see after every byte queued before it
//! ([`SessionIo::poll_hangup`]). A peer that leaves while its destination takes nothing is thus
//! noticed at once, not by the keep-alive verdict (2 × `keepalive_interval`). (Opaque mode is a
//! byte pipe: a half-close there is part of the stream.)
//!
//! # Frames
//! In `inspect = "frames"` mode each direction runs a [`FrameTracker`]: bytes still go through
//! unchanged, but Tether knows every frame boundary, so it can send frames of its own (pings,
//! close frames) without corrupting the stream, swallow the pongs answering its pings, record
//! close codes, and enforce `max_message_size` without holding any data back: a frame whose
//! header takes its message over the limit is not forwarded (so an oversize single frame never
//! reaches the destination), while the fragments of a message before that one already went out.
//! `inspect = "opaque"` is a plain byte pipe: no pings, no close frames, sockets closed instead.
//!
//! # Lifecycle
//! `open → (closing) → ended`. The first decisive event names the cause:
//!
//! | event | Tether sends | cause |
//! |---|---|---|
//! | a peer's close frame, then both sides finish | — (forwarded) | `normal` |
//! | no bytes either way for `request_timeout` | 1001 `idle timeout` to both | `idle_timeout` |
//! | client silent for 2 × `keepalive_interval` | client socket closed, 1001 `client unresponsive` to backend | `client_unresponsive` |
//! | backend socket ends without a close frame | 1014 `backend lost` to client | `backend_lost` |
//! | client socket ends without a close frame | 1001 `client lost` to backend | `client_lost` |
//! | either socket hangs up while Tether is not reading it | as the two rows above, once its end is read | `client_lost` / `backend_lost` |
//! | message over `max_message_size` | 1009 to the sender, 1001 to the other side | `message_too_big` |
//! | drain order or shutdown | 1001 `going away` to both | `drain` / `backend_unhealthy` |
//!
//! After Tether sends a close frame to a peer, nothing more is forwarded to that peer; the
//! session ends when every peer has answered (close frame or end of stream) or the close
//! deadline passes. A peer that hangs up while its direction is stalled (its destination takes
//! nothing) starts the close deadline at once: what it sent before still goes on as far as the
//! destination takes it, and if its end is read in time it is handled as above; otherwise the
//! session ends at the deadline, with the lost peer as the cause unless a close frame was seen.
//! A close frame carrying a reserved code (1005, 1006, 1015) is never forwarded: it is replaced
//! by 1002.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::frame::{
    is_reserved_close_code, CloseInfo, ControlFrame, FrameHeader, FrameTracker, Held, Inspector,
    OpCode, Sink, Verdict,
};
use crate::messages::DrainReason;
use crate::session::SessionStreams;
use crate::transport::{ReadEnd, ReadReadiness, SessionIo};

/// Size of the per-worker read buffer.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;
/// A direction keeps reading while fewer bytes than this wait for its destination, so a
/// destination that is briefly full does not stall the source (the buffer is freed once
/// flushed); at the limit it stops reading and backpressure travels end to end.
pub const PENDING_LIMIT: usize = 64 * 1024;
/// Length of the payload of Tether's keep-alive pings (`tthr` + a sequence number).
pub const PING_PAYLOAD_LEN: usize = 8;
/// How long peers get to answer a close frame Tether sent for a reason of its own (idle timeout,
/// lost peer, oversize message). Drains bring their own grace period.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finished session waits for TLS records still buffered for a peer to be written.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    /// One read buffer per worker thread, shared by every session on it. Never borrowed across
    /// an `.await`, so the borrow cannot conflict.
    static READ_BUFFER: RefCell<Box<[u8]>> =
        RefCell::new(vec![0u8; READ_BUFFER_SIZE].into_boxed_slice());
}

/// How a session is inspected and bounded (from its route's settings).
#[derive(Debug, Clone, Copy)]
pub struct PumpConfig {
    /// Parse frame headers (`true`) or pipe bytes blindly.
    pub frames: bool,
    /// No bytes either way for this long ends the session (`request_timeout`).
    pub idle_timeout: Duration,
    /// Ping the client after this much silence from it; `None` turns keep-alive off.
    pub keepalive: Option<Duration>,
    /// Largest message (sum of its frames' payloads) either side may send.
    pub max_message_size: Option<u64>,
}

/// Why a session ended. The names are the `cause` recorded in logs and spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// A peer sent a close frame and both sides finished.
    Normal,
    /// No frame either way for `request_timeout`.
    IdleTimeout,
    /// The client answered no ping for 2 × `keepalive_interval`.
    ClientUnresponsive,
    /// The backend's connection ended without a close frame.
    BackendLost,
    /// The client's connection ended without a close frame.
    ClientLost,
    /// A message exceeded `max_message_size`.
    MessageTooBig,
    /// Drained by shutdown or a configuration change.
    Drain,
    /// Drained because its backend was marked unhealthy.
    BackendUnhealthy,
}

impl EndCause {
    /// The cause as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Normal => "normal",
            EndCause::IdleTimeout => "idle_timeout",
            EndCause::ClientUnresponsive => "client_unresponsive",
            EndCause::BackendLost => "backend_lost",
            EndCause::ClientLost => "client_lost",
            EndCause::MessageTooBig => "message_too_big",
            EndCause::Drain => "drain",
            EndCause::BackendUnhealthy => "backend_unhealthy",
        }
    }
}

/// Who sent the first close frame of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The client.
    Client,
    /// The backend.
    Backend,
    /// Tether itself.
    Tether,
}

impl Initiator {
    /// As recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Backend => "backend",
            Initiator::Tether => "tether",
        }
    }
}

/// Live counters of a session, shared with its actor (same thread, so `Cell`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from the client.
    pub client_bytes: Cell<u64>,
    /// Bytes read from the backend.
    pub backend_bytes: Cell<u64>,
    /// Complete messages from the client (frames mode).
    pub client_messages: Cell<u64>,
    /// Complete messages from the backend (frames mode).
    pub backend_messages: Cell<u64>,
}

/// How a session went, as reported when it ends.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it ended.
    pub cause: EndCause,
    /// The client's close frame, if it sent one.
    pub client_close: Option<CloseInfo>,
    /// The backend's close frame, if it sent one.
    pub backend_close: Option<CloseInfo>,
    /// The close code Tether sent, if it closed the session itself.
    pub tether_close: Option<u16>,
    /// Who closed first.
    pub initiator: Option<Initiator>,
    /// Round-trip time of the last answered keep-alive ping.
    pub ping_rtt_last: Option<Duration>,
    /// Longest keep-alive round trip seen.
    pub ping_rtt_max: Option<Duration>,
}

/// One direction: bytes from `src` to `dst`.
#[derive(Default)]
struct Half {
    tracker: FrameTracker,
    /// Bytes accepted for `dst` it has not taken yet.
    pending: Vec<u8>,
    /// `src` ended (FIN or error): nothing more is read.
    src_done: bool,
    /// `dst` is gone or was closed by Tether: bytes for it are dropped.
    dst_done: bool,
    /// A frame of Tether's waiting for a frame boundary towards `dst` (boxed: rare, and an
    /// idle session should not carry 130 bytes for it).
    queued: Option<Box<Queued>>,
    /// Pass `src`'s FIN on to `dst` once `pending` is flushed.
    fin_pending: bool,
    /// The close frame `src` sent, if any.
    close: Option<CloseInfo>,
    /// Writing to `dst` failed.
    write_failed: bool,
    /// `src` hung up (FIN or reset) while this direction was not reading it.
    hung_up: bool,
    /// Whether `src` may be waited for before a read (see [`SessionIo::poll_hangup`]).
    readiness: ReadReadiness,
}

#[derive(Clone)]
enum Queued {
    Ping(ControlFrame),
    Close(ControlFrame),
}

impl Half {
    fn can_read(&self) -> bool {
        !self.src_done && self.pending.len() < PENDING_LIMIT
    }
    fn wants_write(&self) -> bool {
        !self.pending.is_empty() && !self.dst_done
    }
    /// Not reading because `dst` is full, with `src` neither ended nor known to have said
    /// goodbye: whether it hangs up is watched for without reading.
    fn stalled(&self) -> bool {
        !self.src_done && !self.hung_up && self.close.is_none() && !self.can_read()
    }
}

/// Delivers bytes to a socket: straight through while it takes them, into `pending` once it
/// does not.
struct Outbox<'a> {
    dst: &'a SessionIo,
    pending: &'a mut Vec<u8>,
    failed: &'a mut bool,
    discard: bool,
}

impl Sink for Outbox<'_> {
    fn send(&mut self, bytes: &[u8]) {
        if self.discard || *self.failed || bytes.is_empty() {
            return;
        }
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(bytes);
            return;
        }
        match self.dst.try_write(bytes) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => self.pending.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending.extend_from_slice(bytes)
            }
            Err(_) => *self.failed = true,
        }
    }
}

#[derive(Default)]
struct Ping {
    seq: u32,
    outstanding: Option<([u8; PING_PAYLOAD_LEN], Instant)>,
    last_sent: Option<Instant>,
    rtt_last: Option<Duration>,
    rtt_max: Option<Duration>,
}

/// Watches one direction's frames on behalf of the session.
struct Watch<'a> {
    from_client: bool,
    max_message: Option<u64>,
    ping: &'a mut Ping,
    close: &'a mut Option<CloseInfo>,
    first_close: &'a mut Option<Initiator>,
    messages: &'a Cell<u64>,
}

impl Inspector for Watch<'_> {
    fn header(&mut self, h: &FrameHeader) -> Verdict {
        let data = matches!(
            h.opcode,
            OpCode::Text | OpCode::Binary | OpCode::Continuation
        );
        if data && self.max_message.is_some_and(|max| h.message_len > max) {
            return Verdict::Reject;
        }
        match h.opcode {
            OpCode::Close => Verdict::Hold,
            OpCode::Pong
                if self.from_client
                    && self.ping.outstanding.is_some()
                    && h.len == PING_PAYLOAD_LEN as u64 =>
            {
                Verdict::Hold
            }
            _ => Verdict::Forward,
        }
    }

    fn frame_end(&mut self, h: &FrameHeader, control: Option<&[u8]>) -> Held {
        match h.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation if h.fin => {
                self.messages.set(self.messages.get() + 1);
                Held::Release
            }
            OpCode::Close => {
                let info = CloseInfo::parse(control.unwrap_or_default());
                let reserved = info.code.is_some_and(is_reserved_close_code);
                if self.close.is_none() {
                    *self.close = Some(info);
                }
                if self.first_close.is_none() {
                    *self.first_close = Some(if self.from_client {
                        Initiator::Client
                    } else {
                        Initiator::Backend
                    });
                }
                if reserved {
                    // Never put 1005/1006/1015 on the wire (RFC 6455 §7.4.1).
                    let mask = self.from_client.then(mask_key);
                    Held::Replace(ControlFrame::close(1002, "reserved close code", mask))
                } else {
                    Held::Release
                }
            }
            OpCode::Pong if self.from_client => {
                if let Some((payload, sent)) = self.ping.outstanding {
                    if control == Some(&payload[..]) {
                        let rtt = sent.elapsed();
                        self.ping.rtt_last = Some(rtt);
                        self.ping.rtt_max = Some(self.ping.rtt_max.map_or(rtt, |m| m.max(rtt)));
                        self.ping.outstanding = None;
                        return Held::Swallow;
                    }
                }
                Held::Release
            }
            _ => Held::Release,
        }
    }
}

/// A fresh, unpredictable masking key for a frame Tether sends to a backend (RFC 6455 §5.3).
fn mask_key() -> [u8; 4] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7465_7468_6572);
    (h.finish() as u32).to_ne_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

/// The whole state of one session's pump.
struct Pump {
    cfg: PumpConfig,
    up: Half,
    down: Half,
    ping: Ping,
    /// Counters and drain orders, shared with the session actor.
    shared: Rc<Shared>,
    cause: Option<EndCause>,
    first_close: Option<Initiator>,
    tether_close: Option<u16>,
    /// Set once Tether started closing; the session ends by this deadline.
    close_deadline: Option<Instant>,
    last_activity: Instant,
    last_client: Instant,
    /// A drain scheduled for later: when, and the cause it will record.
    drain_at: Option<(Instant, EndCause)>,
}

impl Pump {
    fn new(cfg: PumpConfig, shared: Rc<Shared>) -> Pump {
        let now = Instant::now();
        Pump {
            cfg,
            up: Half::default(),
            down: Half::default(),
            ping: Ping::default(),
            shared,
            cause: None,
            first_close: None,
            tether_close: None,
            close_deadline: None,
            last_activity: now,
            last_client: now,
            drain_at: None,
        }
    }

    fn halves(&mut self, dir: Dir) -> (&mut Half, &mut Half) {
        match dir {
            Dir::Up => (&mut self.up, &mut self.down),
            Dir::Down => (&mut self.down, &mut self.up),
        }
    }

    /// Bytes arrived from the source of `dir`; forwards them to `dst`.
    fn on_bytes(&mut self, dir: Dir, bytes: &[u8], dst: &SessionIo) {
        let now = Instant::now();
        self.last_activity = now;
        let counter = match dir {
            Dir::Up => {
                self.last_client = now;
                &self.shared.counters.client_bytes
            }
            Dir::Down => &self.shared.counters.backend_bytes,
        };
        counter.set(counter.get() + bytes.len() as u64);
        let frames = self.cfg.frames;
        let max_message = self.cfg.max_message_size;
        let messages = match dir {
            Dir::Up => &self.shared.counters.client_messages,
            Dir::Down => &self.shared.counters.backend_messages,
        };
        let half = match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        };
        let discard = half.dst_done;
        let mut out = Outbox {
            dst,
            pending: &mut half.pending,
            failed: &mut half.write_failed,
            discard,
        };
        let rejected = if frames {
            let mut watch = Watch {
                from_client: dir == Dir::Up,
                max_message,
                ping: &mut self.ping,
                close: &mut half.close,
                first_close: &mut self.first_close,
                messages,
            };
            half.tracker.process(bytes, &mut watch, &mut out).is_err()
        } else {
            out.send(bytes);
            false
        };
        if rejected {
            self.message_too_big(dir);
        }
        if self.up.close.is_some() && self.down.close.is_some() && self.close_deadline.is_none() {
            // Both close frames exchanged: the conversation is over. Peers normally close
            // their sockets now; one that does not is not waited for longer than this.
            self.close_deadline = Some(Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
        }
        self.check_write(dir);
    }

    /// Reacts to a failed write towards the destination of `dir`: that peer is gone.
    fn check_write(&mut self, dir: Dir) {
        let (half, _) = self.halves(dir);
        if half.write_failed && !half.dst_done {
            half.dst_done = true;
            half.pending = Vec::new();
            // The peer `dst` is gone: treat it like its own stream ending with an error.
            let gone = match dir {
                Dir::Up => Dir::Down,
                Dir::Down => Dir::Up,
            };
            self.on_end(gone, true);
        }
    }

    /// The source of `dir` ended (FIN, or an error when `error`).
    fn on_end(&mut self, dir: Dir, error: bool) {
        let frames = self.cfg.frames;
        let closing = self.close_deadline.is_some();
        let (half, _) = self.halves(dir);
        if half.src_done {
            return;
        }
        half.src_done = true;
        if !half.dst_done && !half.tracker.withheld().is_empty() && !half.tracker.is_holding() {
            // A truncated header at end of stream still goes through unchanged.
            let withheld = half.tracker.withheld().to_vec();
            half.pending.extend_from_slice(&withheld);
        }
        let closed_properly = half.close.is_some();
        if !frames {
            half.fin_pending = true;
            if error && self.cause.is_none() {
                self.cause = Some(match dir {
                    Dir::Up => EndCause::ClientLost,
                    Dir::Down => EndCause::BackendLost,
                });
            }
            return;
        }
        // A hang-up noticed earlier started the deadline, not the close: that happens here.
        if closed_properly || (closing && !half.hung_up) {
            half.fin_pending = true;
            return;
        }
        // Lost without a close frame: tell the other peer why, in words it can read. What the
        // lost side may still want to read keeps flowing: a TCP half-close is not a close.
        match dir {
            Dir::Down => {
                self.begin_close(
                    EndCause::BackendLost,
                    Some((1014, "backend lost")),
                    None,
                    CLOSE_HANDSHAKE_TIMEOUT,
                );
            }
            Dir::Up => {
                self.begin_close(
                    EndCause::ClientLost,
                    None,
                    Some((1001, "client lost")),
                    CLOSE_HANDSHAKE_TIMEOUT,
                );
            }
        }
    }

    /// The source of `dir` hung up (FIN or reset) while `dir` was not reading it. Its bytes
    /// still go on as the destination takes them, and its end is handled when read
    /// ([`Pump::on_end`]); but nobody waits longer than [`CLOSE_HANDSHAKE_TIMEOUT`] for a peer
    /// that is gone. No cause yet: if the deadline ends the session, [`Pump::outcome`] names
    /// the lost peer, unless a close frame was read by then.
    fn on_hangup(&mut self, dir: Dir) {
        self.halves(dir).0.hung_up = true;
        let deadline = Instant::now() + CLOSE_HANDSHAKE_TIMEOUT;
        self.close_deadline = Some(self.close_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    fn message_too_big(&mut self, dir: Dir) {
        let (to_sender, to_other) = (Some((1009, "message too big")), Some((1001, "going away")));
        let (to_client, to_backend) = match dir {
            Dir::Up => (to_sender, to_other),
            Dir::Down => (to_other, to_sender),
        };
        self.begin_close(
            EndCause::MessageTooBig,
            to_client,
            to_backend,
            CLOSE_HANDSHAKE_TIMEOUT,
        );
    }

    /// Tether ends the session: queues close frames (sent at the next frame boundary) and sets
    /// the deadline for the peers' answers. The first cause wins.
    fn begin_close(
        &mut self,
        cause: EndCause,
        to_client: Option<(u16, &str)>,
        to_backend: Option<(u16, &str)>,
        grace: Duration,
    ) {
        if self.cause.is_none() {
            self.cause = Some(cause);
        }
        let now = Instant::now();
        let deadline = now + grace;
        self.close_deadline = Some(self.close_deadline.map_or(deadline, |d| d.min(deadline)));
        if !self.cfg.frames {
            // No frame boundaries known: the sockets are simply closed.
            self.close_deadline = Some(now);
            return;
        }
        if let Some((code, reason)) = to_client {
            self.queue_close(Dir::Down, ControlFrame::close(code, reason, None), code);
        }
        if let Some((code, reason)) = to_backend {
            self.queue_close(
                Dir::Up,
                ControlFrame::close(code, reason, Some(mask_key())),
                code,
            );
        }
    }

    fn queue_close(&mut self, dir: Dir, frame: ControlFrame, code: u16) {
        let (half, _) = self.halves(dir);
        if half.dst_done || matches!(half.queued.as_deref(), Some(Queued::Close(_))) {
            return;
        }
        half.queued = Some(Box::new(Queued::Close(frame)));
        self.tether_close.get_or_insert(code);
        self.first_close.get_or_insert(Initiator::Tether);
    }

    /// Sends queued frames that have reached a frame boundary, and passes on pending FINs.
    fn service(&mut self, client: &SessionIo, backend: &SessionIo) {
        for dir in [Dir::Up, Dir::Down] {
            let dst = match dir {
                Dir::Up => backend,
                Dir::Down => client,
            };
            let half = match dir {
                Dir::Up => &mut self.up,
                Dir::Down => &mut self.down,
            };
            if let Some(queued) = half.queued.take() {
                let stuck = half.src_done && !half.tracker.at_boundary();
                if half.dst_done || stuck {
                    // Nobody to send to, or the stream can never reach a boundary again: a
                    // close becomes a plain FIN.
                    if matches!(*queued, Queued::Close(_)) {
                        half.fin_pending = true;
                    }
                } else if half.tracker.at_boundary() {
                    let mut out = Outbox {
                        dst,
                        pending: &mut half.pending,
                        failed: &mut half.write_failed,
                        discard: false,
                    };
                    match *queued {
                        Queued::Ping(frame) => out.send(frame.as_bytes()),
                        Queued::Close(frame) => {
                            out.send(frame.as_bytes());
                            // Nothing more goes to a peer Tether has closed.
                            half.dst_done = true;
                            half.fin_pending = true;
                        }
                    }
                } else {
                    half.queued = Some(queued);
                }
            }
            if half.fin_pending && half.pending.is_empty() && !half.write_failed {
                dst.shutdown_write();
                half.fin_pending = false;
            }
            self.check_write(dir);
        }
    }

    /// `dir`'s destination became writable (or failed): writes what is pending.
    fn on_writable(&mut self, dir: Dir, dst: &SessionIo, ready: io::Result<()>) {
        match ready {
            Ok(()) => self.flush(dir, dst),
            Err(_) => {
                self.halves(dir).0.write_failed = true;
                self.check_write(dir);
            }
        }
    }

    /// `dir`'s source became readable (or failed): reads once and forwards to `dst`.
    fn on_readable(&mut self, dir: Dir, src: &SessionIo, dst: &SessionIo, ready: io::Result<()>) {
        match ready {
            Ok(()) => read_once(self, dir, src, dst),
            Err(_) => self.on_end(dir, true),
        }
    }

    /// Writes what `dir` has pending.
    fn flush(&mut self, dir: Dir, dst: &SessionIo) {
        let (half, _) = self.halves(dir);
        if dst.flush_output().is_err() {
            half.write_failed = true;
        }
        while !half.write_failed && !half.pending.is_empty() {
            match dst.try_write(&half.pending) {
                Ok(0) => {
                    half.write_failed = true;
                    break;
                }
                Ok(n) => {
                    half.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    half.write_failed = true;
                    break;
                }
            }
        }
        if half.pending.is_empty() {
            // Free the copy: an idle session holds no buffer.
            half.pending = Vec::new();
        }
        self.check_write(dir);
    }

    /// A drain order. Shutdown closes at once and gives the peers `grace` to answer; a drain
    /// for an unhealthy member or a removed route lets the session run for `grace` first (so
    /// in-flight messages finish), then closes it.
    fn on_drain(&mut self, reason: DrainReason, grace: Duration) {
        match reason {
            DrainReason::Shutdown | DrainReason::Restart => self.begin_close(
                EndCause::Drain,
                Some(reason.close_frame()),
                Some(reason.close_frame()),
                grace,
            ),
            DrainReason::BackendUnhealthy | DrainReason::RouteRemoved => {
                let cause = if reason == DrainReason::BackendUnhealthy {
                    EndCause::BackendUnhealthy
                } else {
                    EndCause::Drain
                };
                let at = Instant::now() + grace;
                if self.drain_at.is_none_or(|(t, _)| at < t) {
                    self.drain_at = Some((at, cause));
                }
            }
        }
    }

    /// The earliest moment something is due.
    fn next_deadline(&self) -> Instant {
        if let Some(deadline) = self.close_deadline {
            return deadline;
        }
        let mut next = self.last_activity + self.cfg.idle_timeout;
        if let Some((at, _)) = self.drain_at {
            next = next.min(at);
        }
        if let (true, Some(interval)) = (self.cfg.frames, self.cfg.keepalive) {
            let since = self
                .ping
                .last_sent
                .map_or(self.last_client, |s| s.max(self.last_client));
            next = next
                .min(since + interval)
                .min(self.last_client + interval * 2);
        }
        next
    }

    fn on_timer(&mut self, client: &SessionIo) {
        let now = Instant::now();
        if self.close_deadline.is_some() {
            return; // `finished` sees the deadline
        }
        if let Some((at, cause)) = self.drain_at {
            if now >= at {
                self.begin_close(
                    cause,
                    Some((1001, "going away")),
                    Some((1001, "going away")),
                    CLOSE_HANDSHAKE_TIMEOUT,
                );
                return;
            }
        }
        if let (true, Some(interval)) = (self.cfg.frames, self.cfg.keepalive) {
            if now >= self.last_client + interval * 2 {
                // The client is gone: close its socket, tell the backend.
                client.shutdown_both();
                self.up.src_done = true;
                self.down.dst_done = true;
                self.down.queued = None;
                self.begin_close(
                    EndCause::ClientUnresponsive,
                    None,
                    Some((1001, "client unresponsive")),
                    CLOSE_HANDSHAKE_TIMEOUT,
                );
                return;
            }
        }
        if now >= self.last_activity + self.cfg.idle_timeout {
            self.begin_close(
                EndCause::IdleTimeout,
                Some((1001, "idle timeout")),
                Some((1001, "idle timeout")),
                CLOSE_HANDSHAKE_TIMEOUT,
            );
            return;
        }
        if let (true, Some(interval)) = (self.cfg.frames, self.cfg.keepalive) {
            let since = self
                .ping
                .last_sent
                .map_or(self.last_client, |s| s.max(self.last_client));
            if now >= since + interval && self.down.queued.is_none() && !self.down.dst_done {
                self.ping.seq = self.ping.seq.wrapping_add(1);
                let mut payload = [0u8; PING_PAYLOAD_LEN];
                payload[..4].copy_from_slice(b"tthr");
                payload[4..].copy_from_slice(&self.ping.seq.to_be_bytes());
                self.ping.outstanding = Some((payload, now));
                self.ping.last_sent = Some(now);
                self.down.queued = Some(Box::new(Queued::Ping(ControlFrame::new(
                    OpCode::Ping,
                    &payload,
                    None,
                ))));
            }
        }
    }

    fn finished(&self) -> bool {
        if self.close_deadline.is_some_and(|d| Instant::now() >= d) {
            return true;
        }
        let settled = |h: &Half| h.pending.is_empty() || h.dst_done;
        if !(settled(&self.up) && settled(&self.down)) {
            return false;
        }
        if self.up.src_done && self.down.src_done {
            return true;
        }
        // Close frames went both ways and one side has hung up: nothing more can be said.
        if self.up.close.is_some()
            && self.down.close.is_some()
            && (self.up.src_done || self.down.src_done)
            && self.up.queued.is_none()
            && self.down.queued.is_none()
        {
            return true;
        }
        // Tether closed: done once each peer answered with a close frame or ended.
        if self.close_deadline.is_some() {
            let answered = |h: &Half| h.src_done || h.close.is_some();
            let sent = |h: &Half| h.queued.is_none();
            return answered(&self.up)
                && answered(&self.down)
                && sent(&self.up)
                && sent(&self.down);
        }
        false
    }

    fn outcome(&mut self) -> Outcome {
        let cause = self.cause.unwrap_or(
            if self.up.close.is_some() || self.down.close.is_some() || !self.cfg.frames {
                EndCause::Normal
            } else if self.down.hung_up && !self.up.hung_up {
                EndCause::BackendLost
            } else {
                EndCause::ClientLost
            },
        );
        Outcome {
            cause,
            client_close: self.up.close.take(),
            backend_close: self.down.close.take(),
            tether_close: self.tether_close,
            initiator: self.first_close,
            ping_rtt_last: self.ping.rtt_last,
            ping_rtt_max: self.ping.rtt_max,
        }
    }
}

/// Reads once from `src` into the worker's buffer and hands the bytes to the pump.
fn read_once(pump: &mut Pump, dir: Dir, src: &SessionIo, dst: &SessionIo) {
    READ_BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        let mut readiness = pump.halves(dir).0.readiness;
        let end = src.read(&mut buf, &mut readiness, |bytes| {
            pump.on_bytes(dir, bytes, dst)
        });
        pump.halves(dir).0.readiness = readiness;
        match end {
            ReadEnd::Open => {}
            ReadEnd::Eof => pump.on_end(dir, false),
            ReadEnd::Error => pump.on_end(dir, true),
        }
    });
}

/// What a session's pump shares with its actor (same thread: `Cell`s, no lock).
#[derive(Default)]
pub struct Shared {
    /// Live counters (read by `GET /sessions` through the actor).
    pub counters: Counters,
    /// A drain order the pump has not acted on yet.
    drain: Cell<Option<(DrainReason, Duration)>>,
    /// The pump's task, woken when a drain order arrives.
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Hands the pump a drain order (the latest wins) and wakes it.
    pub fn drain(&self, reason: DrainReason, grace: Duration) {
        self.drain.set(Some((reason, grace)));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Keeps `waker` as the one a drain order wakes (a clone only when it changed).
    fn register(&self, waker: &Waker) {
        let kept = match self.waker.take() {
            Some(w) if w.will_wake(waker) => w,
            _ => waker.clone(),
        };
        self.waker.set(Some(kept));
    }
}

pin_project_lite::pin_project! {
    /// One session's pump, as a future that resolves to how the session went.
    ///
    /// Written by hand rather than as an `async fn` so that its size is exactly its fields:
    /// this is the largest allocation an idle session owns. Every event source is polled
    /// through a single-slot registration (`poll_read_ready`/`poll_write_ready`, the timer,
    /// the drain waker in [`Shared`]), so nothing is pinned per wait and no waiter node lives
    /// in the future. Events are handled one at a time in a fixed order — drain order, writes
    /// to the backend, writes to the client, reads from the client, reads from the backend,
    /// hang-ups of a stalled client or backend, timer — until none is ready; tokio's
    /// cooperative budget bounds each turn.
    pub struct Pumping {
        client: SessionIo,
        backend: SessionIo,
        pump: Pump,
        // Set once the session is over and only TLS records still wait to be written.
        flushing: bool,
        #[pin]
        timer: Sleep,
    }
}

impl Pumping {
    /// A pump over `streams`; bytes the HTTP layer read past either handshake are forwarded
    /// at once.
    pub fn new(streams: SessionStreams, cfg: PumpConfig, shared: Rc<Shared>) -> Pumping {
        let SessionStreams {
            client,
            client_prefix,
            backend,
            backend_prefix,
        } = streams;
        let mut pump = Pump::new(cfg, shared);
        if !client_prefix.is_empty() {
            pump.on_bytes(Dir::Up, &client_prefix, &backend);
        }
        if !backend_prefix.is_empty() {
            pump.on_bytes(Dir::Down, &backend_prefix, &client);
        }
        let timer = tokio::time::sleep_until(pump.next_deadline());
        Pumping {
            client,
            backend,
            pump,
            flushing: false,
            timer,
        }
    }
}

impl Future for Pumping {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let (client, backend, pump) = (&*this.client, &*this.backend, &mut *this.pump);
        if !*this.flushing {
            pump.shared.register(cx.waker());
            loop {
                if let Some((reason, grace)) = pump.shared.drain.take() {
                    pump.on_drain(reason, grace);
                }
                pump.service(client, backend);
                if pump.finished() {
                    break;
                }
                let due = pump.next_deadline();
                if this.timer.deadline() != due {
                    this.timer.as_mut().reset(due);
                }
                if pump.up.wants_write() || backend.output_pending() {
                    if let Poll::Ready(r) = backend.poll_writable(cx) {
                        pump.on_writable(Dir::Up, backend, r);
                        continue;
                    }
                }
                if pump.down.wants_write() || client.output_pending() {
                    if let Poll::Ready(r) = client.poll_writable(cx) {
                        pump.on_writable(Dir::Down, client, r);
                        continue;
                    }
                }
                if pump.up.can_read() {
                    if let Poll::Ready(r) = client.poll_readable(cx, pump.up.readiness) {
                        pump.on_readable(Dir::Up, client, backend, r);
                        continue;
                    }
                }
                if pump.down.can_read() {
                    if let Poll::Ready(r) = backend.poll_readable(cx, pump.down.readiness) {
                        pump.on_readable(Dir::Down, backend, client, r);
                        continue;
                    }
                }
                if pump.cfg.frames
                    && pump.up.stalled()
                    && client.poll_hangup(cx, &mut pump.up.readiness).is_ready()
                {
                    pump.on_hangup(Dir::Up);
                    continue;
                }
                if pump.cfg.frames
                    && pump.down.stalled()
                    && backend.poll_hangup(cx, &mut pump.down.readiness).is_ready()
                {
                    pump.on_hangup(Dir::Down);
                    continue;
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    pump.on_timer(client);
                    continue;
                }
                return Poll::Pending;
            }
            // What TLS still holds for a peer (a close frame, close_notify) gets a short last
            // chance.
            *this.flushing = true;
            this.timer
                .as_mut()
                .reset(Instant::now() + FINAL_FLUSH_TIMEOUT);
        }
        let client_done = poll_drained(client, cx);
        let backend_done = poll_drained(backend, cx);
        if (client_done && backend_done) || this.timer.poll(cx).is_ready() {
            return Poll::Ready(pump.outcome());
        }
        Poll::Pending
    }
}

/// Writes what `io` still holds (TLS records) as far as the socket takes it: `true` once
/// nothing is left or writing failed.
fn poll_drained(io: &SessionIo, cx: &mut Context<'_>) -> bool {
    while io.output_pending() {
        match io.poll_writable(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {
                if io.flush_output().is_err() {
                    return true;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pump() -> Pump {
        Pump::new(
            PumpConfig {
                frames: true,
                idle_timeout: Duration::from_secs(60),
                keepalive: Some(Duration::from_secs(30)),
                max_message_size: None,
            },
            Rc::new(Shared::default()),
        )
    }

    fn queued_close(half: &Half) -> Option<u16> {
        match half.queued.as_deref() {
            Some(Queued::Close(frame)) => {
                // Masked towards the backend: 2 header bytes, 4 mask bytes, then the code.
                let b = frame.as_bytes();
                let at = if b[1] & 0x80 != 0 { 6 } else { 2 };
                let key = if at == 6 { [b[2], b[3]] } else { [0, 0] };
                Some(u16::from_be_bytes([b[at] ^ key[0], b[at + 1] ^ key[1]]))
            }
            _ => None,
        }
    }

    #[test]
    fn only_a_direction_stopped_by_a_full_destination_watches_for_a_hang_up() {
        let mut half = Half::default();
        assert!(!half.stalled(), "still reading");
        half.pending = vec![0; PENDING_LIMIT];
        assert!(half.stalled());
        half.close = Some(CloseInfo::parse(&[0x03, 0xe8]));
        assert!(!half.stalled(), "said goodbye: its end is expected");
        half.close = None;
        half.hung_up = true;
        assert!(!half.stalled(), "already noticed");
        half.hung_up = false;
        half.src_done = true;
        assert!(!half.stalled(), "already ended");
    }

    #[test]
    fn a_stalled_client_that_hangs_up_gets_the_grace_then_ends_as_client_lost() {
        let mut p = pump();
        let before = Instant::now();
        p.on_hangup(Dir::Up);
        let deadline = p.close_deadline.expect("the grace starts at once");
        assert!(deadline >= before + CLOSE_HANDSHAKE_TIMEOUT);
        assert!(deadline <= Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
        assert_eq!(
            p.next_deadline(),
            deadline,
            "no ping, no idle timeout after it"
        );
        assert_eq!(
            p.cause, None,
            "not decided while its bytes may still be read"
        );
        assert_eq!(
            queued_close(&p.up),
            None,
            "no close frame before its end is read"
        );
        assert_eq!(p.outcome().cause, EndCause::ClientLost);
    }

    #[test]
    fn the_end_of_a_hung_up_client_read_later_sends_the_backend_1001() {
        let mut p = pump();
        p.on_hangup(Dir::Up);
        p.on_end(Dir::Up, false);
        assert_eq!(queued_close(&p.up), Some(1001));
        assert_eq!(p.cause, Some(EndCause::ClientLost));
        assert_eq!(p.tether_close, Some(1001));
    }

    #[test]
    fn a_close_frame_read_after_the_hang_up_makes_the_end_normal() {
        let mut p = pump();
        p.on_hangup(Dir::Up);
        p.up.close = Some(CloseInfo::parse(&[0x03, 0xe8]));
        p.on_end(Dir::Up, false);
        assert_eq!(queued_close(&p.up), None);
        assert_eq!(p.outcome().cause, EndCause::Normal);
    }

    #[test]
    fn a_stalled_backend_that_hangs_up_ends_as_backend_lost() {
        let mut p = pump();
        p.on_hangup(Dir::Down);
        assert_eq!(p.outcome().cause, EndCause::BackendLost);
        let mut p = pump();
        p.on_hangup(Dir::Down);
        p.on_end(Dir::Down, true);
        assert_eq!(queued_close(&p.down), Some(1014));
        assert_eq!(p.outcome().cause, EndCause::BackendLost);
    }
}
