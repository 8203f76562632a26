//! The session core: every decision of the pump, with no socket, no runtime and no clock.
//!
//! [`Session`] is fed events by its driver ([`super::Pumping`]): bytes read in a direction, the
//! end of a source, a source hanging up while it is not read, a destination that became
//! writable (or failed), the timer (`now` is always an argument, never read here) and drain
//! orders. It answers through a [`Wire`], in the style of [`crate::frame`]'s
//! [`Sink`]: forward these bytes to a destination (the wire says how many
//! it took; the core keeps the rest), shut down a destination's write side, close the client's
//! socket. Frames of Tether's own
//! (pings, close frames) are queued in the core and written through the same wire once the
//! direction is at a frame boundary. Between events the driver asks what to wait for
//! ([`Session::can_read`], [`Session::wants_write`], [`Session::watches_hangup`],
//! [`Session::next_deadline`]) and whether the session is over ([`Session::poll_done`]).
//!
//! # Lifecycle
//!
//! The session, as a whole ([`Phase`]):
//!
//! ```text
//!            Tether closes (idle timeout, client unresponsive, lost peer, message too big,
//!            over a rate, slow consumer, drain order or shutdown), both close frames seen,
//!            or a stalled peer hangs up
//!  Running ────────────────────────────────────────────────────────────────────────► Closing
//!  (drain scheduled, or      └── both sources ended and every write settled ──┐   { deadline }
//!   max_session_age:             (a byte pipe that simply ends)              │       │
//!   Running{drain_at}                                                        │       │
//!   turns Closing at it)                                                     ▼       │
//!                                                                           Done ◄───┘
//!                                                                      { cause }  every peer
//!                                                                            answered, or the
//!                                                                            deadline passed
//! ```
//!
//! Each direction (bytes from a source to a destination) has two explicit states:
//!
//! ```text
//! Source:  Open ──hang-up seen while not read──► HungUp
//!            │                                     │
//!            └──end read (FIN, error)──► Ended ◄───┘ (remembers the hang-up: it names the cause
//!                                                      if the deadline ends the session)
//!
//! Dest:    Open ──source ended──► FinPending ──flushed: FIN──► FinSent
//!            │                          │
//!            └──Tether's close sent, or the peer closed by Tether──► Closed { fin_pending }
//!          any ──a write fails──► Failing ──the other peer is told──► Failed
//!          (a write that fails after Tether's close goes to Failed at once: nobody to tell)
//! ```
//!
//! The exit rules ([`Session::poll_done`]), in order:
//! 1. the closing deadline passed;
//! 2. otherwise only once every destination took its pending bytes (or is closed), and then
//!    when both sources ended;
//! 3. or when the session is closing, each peer answered (close frame or end of stream) and no
//!    frame of Tether's is queued (with rule 2's settled writes). Close frames both ways make
//!    the session `Closing`, so a close handshake ends here as soon as the writes settled.
//!
//! # Invariants
//!
//! * **Nothing goes to a peer after Tether's close.** Once Tether's close frame is written
//!   towards a destination, that destination is `Closed`: bytes read for it are dropped, no ping
//!   or second close is queued for it, and only what was already pending before the close may
//!   still be flushed.
//! * **Reserved codes never reach the wire.** A peer's close frame with 1005, 1006 or 1015 is
//!   replaced by 1002 (RFC 6455 §7.4.1); Tether's own codes are 1001, 1002, 1008, 1009, 1012, 1013, 1014.
//!
//! Per-session limits (client rates, slow consumers, maximum age) live in `super::limits`,
//! boxed and absent when the rule sets none; their lifecycle note is there.
//! * **A queued control frame waits for a frame boundary.** Tether's ping or close goes out only
//!   when the direction's [`FrameTracker`](crate::frame::FrameTracker) is between frames; a
//!   direction whose source ended mid-frame gets a FIN instead of the close frame.
//! * **At most [`PENDING_LIMIT`](super::PENDING_LIMIT) buffered per direction, plus one
//!   read.** A direction stops reading once that many bytes wait for its destination (one read of up to 64 KiB, or a
//!   control frame of Tether's, may take it past the limit; nothing more is read until it
//!   drains).
//! * **Every session ends with exactly one recorded cause.** The first decisive event records
//!   it and no later event replaces it; a session that ends without one (a close handshake, a
//!   lost peer noticed by its hang-up, a byte pipe that ends) gets it at `Done`, once.
//! * **Bytes are forwarded once, in order.** What a destination receives from a peer is a prefix
//!   of what was read from that peer, with Tether's frames only between frames; held control
//!   frames (Tether's own pongs, close frames) are forwarded, swallowed or replaced as a whole.

use std::io;
use std::time::{Duration, Instant};

use super::direction::{Dest, Half, Outbox, Queued};
use super::limits::{Limits, RateLimit, SessionLimits};
use super::watch::{mask_key, Ping, Watch};
use crate::frame::{ControlFrame, OpCode, Sink};
use crate::outcome::{EndCause, Initiator, Outcome};
use crate::shutdown::DrainReason;

pub(crate) use super::direction::{Dir, Wire};

/// How long peers get to answer a close frame Tether sent for a reason of its own (idle timeout,
/// lost peer, oversize message). Drains bring their own grace period.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Where the session as a whole stands (see the module's lifecycle note).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Forwarding. A drain for an unhealthy member or a removed route may be scheduled: when,
    /// and the cause it will record.
    Running {
        drain_at: Option<(Instant, DrainReason)>,
    },
    /// Tether closed, both close frames were exchanged, or a stalled peer hung up: the session
    /// ends once every peer answered, and by `deadline` at the latest.
    Closing { deadline: Instant },
    /// Over, with the one cause recorded.
    Done { cause: EndCause },
}

/// Close frames Tether sends, as `(code, reason)`.
type CloseFrame = (u16, &'static str);
const GOING_AWAY: CloseFrame = (1001, "going away");

/// The whole state of one session's pump, without its sockets (see the module doc).
pub(crate) struct Session {
    cfg: PumpConfig,
    up: Half,
    down: Half,
    ping: Ping,
    phase: Phase,
    /// The first decisive event's cause, once there was one.
    cause: Option<EndCause>,
    first_close: Option<Initiator>,
    tether_close: Option<u16>,
    last_activity: Instant,
    last_client: Instant,
    /// Per-session limits and their state (the rates boxed, absent when the rule sets none).
    limits: Limits,
}

impl Session {
    /// A session that starts at `now`, without limits.
    #[cfg(test)]
    pub(crate) fn new(cfg: PumpConfig, now: Instant) -> Session {
        Session::with_limits(cfg, SessionLimits::default(), now)
    }

    /// A session that starts at `now`, bounded by `limits` (rates and the slow-consumer
    /// timeout need frames mode; `max_age` applies in both modes).
    pub(crate) fn with_limits(cfg: PumpConfig, limits: SessionLimits, now: Instant) -> Session {
        let drain_at = limits
            .max_age
            .map(|age| (now + age, DrainReason::MaxSessionAge));
        Session {
            cfg,
            up: Half::default(),
            down: Half::default(),
            ping: Ping::default(),
            phase: Phase::Running { drain_at },
            cause: None,
            first_close: None,
            tether_close: None,
            last_activity: now,
            last_client: now,
            limits: Limits::new(limits, now),
        }
    }

    fn half(&self, dir: Dir) -> &Half {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    fn half_mut(&mut self, dir: Dir) -> &mut Half {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }

    /// Whether the source of `dir` is to be read (it has not ended, and fewer than
    /// [`PENDING_LIMIT`](super::PENDING_LIMIT) bytes wait for its destination), and, for the
    /// client, its rate limit does not hold reads back.
    pub(crate) fn can_read(&self, dir: Dir) -> bool {
        let paused = dir == Dir::Up && self.limits.paused();
        self.half(dir).can_read() && !paused
    }

    /// Whether bytes wait for the destination of `dir`.
    pub(crate) fn wants_write(&self, dir: Dir) -> bool {
        self.half(dir).wants_write()
    }

    /// Whether the source of `dir` is not read but must be watched for hanging up (frames
    /// mode only: in a byte pipe a half-close is part of the stream).
    pub(crate) fn watches_hangup(&self, dir: Dir) -> bool {
        self.cfg.frames && self.half(dir).stalled()
    }

    fn closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// Enters (or stays in) `Closing`, with the earlier of the deadlines.
    fn close_by(&mut self, deadline: Instant) {
        let deadline = match self.phase {
            Phase::Closing { deadline: d } => d.min(deadline),
            _ => deadline,
        };
        self.phase = Phase::Closing { deadline };
    }

    /// Bytes read from the source of `dir`: forwards them, watching frames in frames mode.
    pub(crate) fn on_bytes(&mut self, dir: Dir, bytes: &[u8], now: Instant, wire: &mut impl Wire) {
        self.last_activity = now;
        let counters = wire.counters();
        let counter = match dir {
            Dir::Up => {
                self.last_client = now;
                &counters.client_bytes
            }
            Dir::Down => &counters.backend_bytes,
        };
        counter.set(counter.get() + bytes.len() as u64);
        let frames = self.cfg.frames;
        let max_message = self.cfg.max_message_size;
        let half = match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        };
        let discard = half.dest.done();
        let mut out = Outbox {
            wire: &mut *wire,
            dir,
            pending: &mut half.pending,
            dest: &mut half.dest,
            discard,
        };
        let mut messages = 0;
        let rejected = if frames {
            let mut watch = Watch {
                from_client: dir == Dir::Up,
                max_message,
                now,
                ping: &mut self.ping,
                close: &mut half.close,
                first_close: &mut self.first_close,
                messages: 0,
                limits: match dir {
                    Dir::Up if self.limits.has_rates() => Some(&mut self.limits),
                    _ => None,
                },
            };
            let rejected = half.tracker.process(bytes, &mut watch, &mut out).is_err();
            messages = watch.messages;
            rejected
        } else {
            out.send(bytes);
            false
        };
        if messages > 0 {
            let counter = match dir {
                Dir::Up => &wire.counters().client_messages,
                Dir::Down => &wire.counters().backend_messages,
            };
            counter.set(counter.get() + messages);
        }
        if rejected {
            match self.limits.take_violated() {
                Some(limit) => self.over_rate(limit, now),
                None => self.message_too_big(dir, now),
            }
        }
        if self.up.close.is_some()
            && self.down.close.is_some()
            && matches!(self.phase, Phase::Running { .. })
        {
            // Both close frames exchanged: the conversation is over. Peers normally close
            // their sockets now; one that does not is not waited for longer than this.
            self.close_by(now + CLOSE_HANDSHAKE_TIMEOUT);
        }
        self.check_write(dir, now);
        self.service(now, wire);
    }

    /// The source of `dir` ended: a FIN (`error == false`), or a reset or failure.
    pub(crate) fn on_end(&mut self, dir: Dir, error: bool, now: Instant, wire: &mut impl Wire) {
        self.end(dir, error, now);
        self.service(now, wire);
    }

    /// The source of `dir` hung up (FIN or reset) while `dir` was not reading it. Its bytes
    /// still go on as the destination takes them, and its end is handled when read
    /// ([`Session::on_end`]); but nobody waits longer than [`CLOSE_HANDSHAKE_TIMEOUT`] for a
    /// peer that is gone. No cause yet: if the deadline ends the session, the lost peer is
    /// named at `Done`, unless a close frame was read by then.
    pub(crate) fn on_hangup(&mut self, dir: Dir, now: Instant) {
        self.half_mut(dir).source.hang_up();
        self.close_by(now + CLOSE_HANDSHAKE_TIMEOUT);
    }

    /// The destination of `dir` became writable (`ok`), or failed (`!ok`): writes what is
    /// pending.
    pub(crate) fn on_writable(&mut self, dir: Dir, ok: bool, now: Instant, wire: &mut impl Wire) {
        let half = match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        };
        if !ok {
            half.dest.fail();
        }
        while !half.dest.failed() && !half.pending.is_empty() {
            match wire.send(dir, &half.pending) {
                Ok(0) => {
                    half.dest.fail();
                    break;
                }
                Ok(n) => {
                    half.pending.drain(..n);
                }
                // Still full: what the destination took is noted below (the slow-consumer
                // clock starts over once it drops under the limit).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    half.dest.fail();
                    break;
                }
            }
        }
        if half.pending.is_empty() {
            // Free the copy: an idle session holds no buffer.
            half.pending = Vec::new();
        }
        self.check_write(dir, now);
        self.service(now, wire);
    }

    /// A drain order: close with `reason`'s close frame `close_in` from now (at once when
    /// zero), and give the peers `answer_within` to answer a close sent at once. A close that
    /// was scheduled gives them [`CLOSE_HANDSHAKE_TIMEOUT`] when it goes out. Of several
    /// scheduled closes the earliest wins. (Who computes `close_in`, spread over a window:
    /// `crate::drain_schedule`.)
    pub(crate) fn on_drain(
        &mut self,
        reason: DrainReason,
        close_in: Duration,
        answer_within: Duration,
        now: Instant,
        wire: &mut impl Wire,
    ) {
        if close_in.is_zero() {
            let frame = Some(reason.close_frame());
            self.begin_close(drain_cause(reason), frame, frame, answer_within, now);
        } else {
            let at = now + close_in;
            if let Phase::Running { drain_at } = &mut self.phase {
                if drain_at.is_none_or(|(t, _)| at < t) {
                    *drain_at = Some((at, reason));
                }
            }
        }
        self.service(now, wire);
    }

    /// When the keep-alive wants its next ping: `interval` after the later of the client's
    /// last bytes and the last ping.
    fn ping_due(&self, interval: Duration) -> Instant {
        let since = self
            .ping
            .last_sent
            .map_or(self.last_client, |s| s.max(self.last_client));
        since + interval
    }

    /// The earliest moment something is due: the driver's timer fires [`Session::on_timer`]
    /// then.
    pub(crate) fn next_deadline(&self) -> Instant {
        let limit = self.limits.next_deadline();
        let drain_at = match self.phase {
            Phase::Closing { deadline } => return limit.map_or(deadline, |l| l.min(deadline)),
            Phase::Done { .. } => return self.last_activity,
            Phase::Running { drain_at } => drain_at,
        };
        let mut next = self.last_activity + self.cfg.idle_timeout;
        if let Some(at) = limit {
            next = next.min(at);
        }
        if let Some((at, _)) = drain_at {
            next = next.min(at);
        }
        if let (true, Some(interval)) = (self.cfg.frames, self.cfg.keepalive) {
            next = next.min(self.last_client + interval * 2);
            // A ping is due only when one can be queued (the same test as `timer`'s). While
            // the last one still waits for a frame boundary its due time lies in the past, and
            // counting it would fire the driver's timer again at once, over and over; the
            // driver asks again after every event, so the boundary re-arms it.
            if self.can_queue_ping() {
                next = next.min(self.ping_due(interval));
            }
        }
        next
    }

    /// Whether a ping can be queued towards the client now.
    fn can_queue_ping(&self) -> bool {
        self.down.queued.is_none() && !self.down.dest.done()
    }

    /// Time passed: a scheduled drain, the keep-alive verdict, the idle timeout or a ping may
    /// be due. (A closing deadline is seen by [`Session::poll_done`].)
    pub(crate) fn on_timer(&mut self, now: Instant, wire: &mut impl Wire) {
        self.timer(now, wire);
        self.service(now, wire);
    }

    fn timer(&mut self, now: Instant, wire: &mut impl Wire) {
        self.limits.tick(now);
        let drain_at = match self.phase {
            Phase::Running { drain_at } => drain_at,
            _ => return,
        };
        if let Some((at, reason)) = drain_at {
            if now >= at {
                let close = Some(reason.close_frame());
                let cause = drain_cause(reason);
                self.begin_close(cause, close, close, CLOSE_HANDSHAKE_TIMEOUT, now);
                return;
            }
        }
        for dir in [Dir::Down, Dir::Up] {
            if self.limits.slow_at(dir).is_some_and(|at| now >= at) {
                self.slow_consumer(dir, wire, now);
                return;
            }
        }
        let keepalive = self.cfg.keepalive.filter(|_| self.cfg.frames);
        if let Some(interval) = keepalive {
            if now >= self.last_client + interval * 2 {
                // The client is gone: close its socket, tell the backend.
                wire.close_client();
                self.up.source.end();
                self.down.dest.close(false);
                self.down.queued = None;
                self.begin_close(
                    EndCause::ClientUnresponsive,
                    None,
                    Some((1001, "client unresponsive")),
                    CLOSE_HANDSHAKE_TIMEOUT,
                    now,
                );
                return;
            }
        }
        if now >= self.last_activity + self.cfg.idle_timeout {
            let close = Some((1001, "idle timeout"));
            self.begin_close(
                EndCause::IdleTimeout,
                close,
                close,
                CLOSE_HANDSHAKE_TIMEOUT,
                now,
            );
            return;
        }
        if let Some(interval) = keepalive {
            if now >= self.ping_due(interval) && self.can_queue_ping() {
                let payload = self.ping.send(now);
                self.down.queued = Some(Box::new(Queued::Ping(ControlFrame::new(
                    OpCode::Ping,
                    &payload,
                    None,
                ))));
            }
        }
    }

    /// Whether the session is over (see the exit rules in the module doc); on the first `true`
    /// the one cause is recorded and the session is `Done`.
    pub(crate) fn poll_done(&mut self, now: Instant) -> bool {
        if let Phase::Done { .. } = self.phase {
            return true;
        }
        if !self.finished(now) {
            return false;
        }
        let cause = self.cause.unwrap_or_else(|| self.unforced_cause());
        self.phase = Phase::Done { cause };
        true
    }

    fn finished(&self, now: Instant) -> bool {
        let closing = match self.phase {
            Phase::Closing { deadline } if now >= deadline => return true,
            Phase::Closing { .. } => true,
            _ => false,
        };
        if !(self.up.settled() && self.down.settled()) {
            return false;
        }
        if self.up.source.ended() && self.down.source.ended() {
            return true;
        }
        // Closing (Tether closed, or close frames went both ways): done once each peer
        // answered with a close frame or ended.
        let unqueued = self.up.queued.is_none() && self.down.queued.is_none();
        closing && self.up.answered() && self.down.answered() && unqueued
    }

    /// The cause of a session no decisive event ended: a close handshake (or a byte pipe that
    /// ended), else the peer that hung up.
    fn unforced_cause(&self) -> EndCause {
        if self.up.close.is_some() || self.down.close.is_some() || !self.cfg.frames {
            EndCause::Normal
        } else if self.down.source.hung_up() && !self.up.source.hung_up() {
            EndCause::BackendLost
        } else {
            EndCause::ClientLost
        }
    }

    /// How the session went. Call once it is done ([`Session::poll_done`]); the close frames are
    /// taken out.
    pub(crate) fn outcome(&mut self) -> Outcome {
        let cause = match self.phase {
            Phase::Done { cause } => cause,
            _ => self.cause.unwrap_or_else(|| self.unforced_cause()),
        };
        Outcome {
            cause,
            client_close: self.up.close.take().map(|c| *c),
            backend_close: self.down.close.take().map(|c| *c),
            tether_close: self.tether_close,
            initiator: self.first_close,
            ping_rtt_last: self.ping.rtt_last(),
            ping_rtt_max: self.ping.rtt_max(),
        }
    }

    /// Reacts to a failed write towards the destination of `dir`: that peer is gone.
    fn check_write(&mut self, dir: Dir, now: Instant) {
        let half = self.half_mut(dir);
        if half.dest == Dest::Failing {
            half.dest = Dest::Failed;
            half.pending = Vec::new();
            // The peer is gone: treat it like its own stream ending with an error.
            self.end(dir.other(), true, now);
        }
    }

    /// The source of `dir` ended (FIN, or an error when `error`).
    fn end(&mut self, dir: Dir, error: bool, now: Instant) {
        let frames = self.cfg.frames;
        let closing = self.closing();
        let half = self.half_mut(dir);
        if half.source.ended() {
            return;
        }
        let after_hangup = half.source.hung_up();
        half.source.end();
        if !half.dest.done() && !half.tracker.withheld().is_empty() && !half.tracker.is_holding() {
            // A truncated header at end of stream still goes through unchanged; no frame of
            // Tether's may follow it (a close queued for this direction becomes a FIN).
            let truncated = half.tracker.release_truncated();
            half.pending.extend_from_slice(truncated);
        }
        let closed_properly = half.close.is_some();
        if !frames {
            half.dest.want_fin();
            if error && self.cause.is_none() {
                self.cause = Some(match dir {
                    Dir::Up => EndCause::ClientLost,
                    Dir::Down => EndCause::BackendLost,
                });
            }
            return;
        }
        // A hang-up noticed earlier started the deadline, not the close: that happens here.
        if closed_properly || (closing && !after_hangup) {
            half.dest.want_fin();
            return;
        }
        // Lost without a close frame: tell the other peer why, in words it can read. What the
        // lost side may still want to read keeps flowing: a TCP half-close is not a close.
        match dir {
            Dir::Down => self.begin_close(
                EndCause::BackendLost,
                Some((1014, "backend lost")),
                None,
                CLOSE_HANDSHAKE_TIMEOUT,
                now,
            ),
            Dir::Up => self.begin_close(
                EndCause::ClientLost,
                None,
                Some((1001, "client lost")),
                CLOSE_HANDSHAKE_TIMEOUT,
                now,
            ),
        }
    }

    /// The client broke its message or byte rate (close action): `1008 policy violation`
    /// naming the limit to it, `1001` to the backend.
    fn over_rate(&mut self, limit: RateLimit, now: Instant) {
        let (cause, reason) = match limit {
            RateLimit::Messages => (EndCause::MessageRate, "message rate exceeded"),
            RateLimit::Bytes => (EndCause::ByteRate, "byte rate exceeded"),
        };
        self.begin_close(
            cause,
            Some((1008, reason)),
            Some(GOING_AWAY),
            CLOSE_HANDSHAKE_TIMEOUT,
            now,
        );
    }

    /// The destination of `dir` held a full buffer for `slow_consumer_timeout`. No frame can
    /// reach it before the backlog it does not read, so its socket is closed and what waits
    /// for it is dropped; the other peer is told: a slow client is, to the backend, a client
    /// that went away (`1001 client too slow`); a slow backend is, to the client, a temporary
    /// condition worth retrying (`1013 backend too slow`, "try again later").
    fn slow_consumer(&mut self, dir: Dir, wire: &mut impl Wire, now: Instant) {
        match dir {
            Dir::Down => wire.close_client(),
            Dir::Up => wire.close_backend(),
        }
        // The slow peer's socket is closed both ways: nothing more is read from it either.
        self.half_mut(dir.other()).source.end();
        let half = self.half_mut(dir);
        half.dest.close(false);
        half.pending = Vec::new();
        half.queued = None;
        let (to_client, to_backend) = match dir {
            Dir::Down => (None, Some((1001, "client too slow"))),
            Dir::Up => (Some((1013, "backend too slow")), None),
        };
        self.begin_close(
            EndCause::SlowConsumer,
            to_client,
            to_backend,
            CLOSE_HANDSHAKE_TIMEOUT,
            now,
        );
    }

    fn message_too_big(&mut self, dir: Dir, now: Instant) {
        let (to_sender, to_other) = (Some((1009, "message too big")), Some(GOING_AWAY));
        let (to_client, to_backend) = match dir {
            Dir::Up => (to_sender, to_other),
            Dir::Down => (to_other, to_sender),
        };
        self.begin_close(
            EndCause::MessageTooBig,
            to_client,
            to_backend,
            CLOSE_HANDSHAKE_TIMEOUT,
            now,
        );
    }

    /// Tether ends the session: queues close frames (sent at the next frame boundary) and sets
    /// the deadline for the peers' answers. The first cause wins.
    fn begin_close(
        &mut self,
        cause: EndCause,
        to_client: Option<CloseFrame>,
        to_backend: Option<CloseFrame>,
        grace: Duration,
        now: Instant,
    ) {
        self.cause.get_or_insert(cause);
        if !self.cfg.frames {
            // No frame boundaries known: the sockets are simply closed.
            self.phase = Phase::Closing { deadline: now };
            return;
        }
        self.close_by(now + grace);
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
        let half = self.half_mut(dir);
        if half.dest.done() || matches!(half.queued.as_deref(), Some(Queued::Close(_))) {
            return;
        }
        half.queued = Some(Box::new(Queued::Close(frame)));
        self.tether_close.get_or_insert(code);
        self.first_close.get_or_insert(Initiator::Tether);
    }

    /// Sends queued frames that have reached a frame boundary, and passes on pending FINs.
    fn service(&mut self, now: Instant, wire: &mut impl Wire) {
        for dir in [Dir::Up, Dir::Down] {
            let half = match dir {
                Dir::Up => &mut self.up,
                Dir::Down => &mut self.down,
            };
            if let Some(queued) = half.queued.take() {
                let stuck = half.source.ended() && !half.tracker.at_boundary();
                if half.dest.done() || stuck {
                    // Nobody to send to, or the stream can never reach a boundary again: a
                    // close becomes a plain FIN.
                    if matches!(*queued, Queued::Close(_)) {
                        half.dest.want_fin();
                    }
                } else if half.tracker.at_boundary() {
                    let mut out = Outbox {
                        wire: &mut *wire,
                        dir,
                        pending: &mut half.pending,
                        dest: &mut half.dest,
                        discard: false,
                    };
                    match *queued {
                        Queued::Ping(frame) => out.send(frame.as_bytes()),
                        Queued::Close(frame) => {
                            out.send(frame.as_bytes());
                            // Nothing more goes to a peer Tether has closed.
                            half.dest.close(true);
                        }
                    }
                } else {
                    half.queued = Some(queued);
                }
            }
            if half.dest.fin_pending() && half.pending.is_empty() && !half.dest.failed() {
                wire.shutdown_write(dir);
                half.dest.fin_sent();
            }
            self.limits
                .observe(dir, half.pending.len(), !half.dest.done(), now);
            self.check_write(dir, now);
        }
    }
}

/// The cause a drain for `reason` records.
fn drain_cause(reason: DrainReason) -> EndCause {
    match reason {
        DrainReason::Shutdown | DrainReason::Restart | DrainReason::RouteRemoved => EndCause::Drain,
        DrainReason::BackendUnhealthy => EndCause::BackendUnhealthy,
        DrainReason::MaxSessionAge => EndCause::MaxSessionAge,
        DrainReason::Rebalance => EndCause::Rebalance,
    }
}

#[cfg(test)]
mod tests;
