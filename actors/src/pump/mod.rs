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
//! [`Pumping`] is the largest allocation an idle session owns (680 bytes on x86-64: the core's
//! `Session` 448, tokio's timer 112, the two sockets 80, what was last reported 32). State that
//! exists only while something happens is boxed and absent otherwise: a frame header or control
//! frame split across reads (a frame read whole is inspected where it lies), a peer's close
//! frame, a frame of Tether's waiting for a frame boundary, the client's rate limits, a drain
//! order. The keep-alive state is 40 bytes (the ping in flight is known by its sequence
//! number); the slow-consumer clock, on by default, is inline. Counters and drain orders are
//! fields of the session actor, handed to [`Pumping::poll_pump`] on every poll: the pump is an
//! item of the actor's context, not a task of its own.
//!
//! In frames mode a source that is not read is still watched for its peer hanging up (FIN or
//! reset), which a reader would only see after every byte queued before it
//! ([`SessionIo::poll_hangup`]). A peer that leaves while its destination takes nothing is thus
//! noticed at once, not by the keep-alive verdict (2 × `keepalive_interval`). (Opaque mode is a
//! byte pipe: a half-close there is part of the stream.)
//!
//! # Frames
//! In `inspect = "frames"` mode each direction runs a
//! [`FrameTracker`](crate::frame::FrameTracker): bytes still go through unchanged, but Tether
//! knows every frame boundary, so it can send frames of its own (pings,
//! close frames) without corrupting the stream, swallow the pongs answering its pings, record
//! close codes, and enforce `max_message_size` without holding any data back: a frame whose
//! header takes its message over the limit is not forwarded (so an oversize single frame never
//! reaches the destination), while the fragments of a message before that one already went out.
//! `inspect = "opaque"` is a plain byte pipe: no pings, no close frames, sockets closed instead.
//!
//! # Core and driver
//! Every decision (what to forward, when to ping, when a peer is unresponsive, the close
//! handshake, drains, size limits, which side caused the end) is made by `machine::Session`,
//! a state machine with no socket and no clock, unit- and property-tested on its own; its
//! module doc has the state diagrams, the exit rules and the invariants. [`Pumping`] is its
//! driver: it waits for readiness on the two [`SessionIo`]s, turns what it sees into the
//! core's events, and carries out the core's actions on the sockets.
//!
//! # Lifecycle
//! `running → (closing) → done`. The first decisive event names the cause:
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
//! | drain order or shutdown (at its slot of the drain's spread) | 1001 `going away` to both (1012 `service restart` with `shutdown_close_code = 1012`) | `drain` / `backend_unhealthy` |
//! | client over its message or byte rate (action `close`) | 1008 naming the rate to the client, 1001 to the backend | `message_rate` / `byte_rate` |
//! | a peer leaves a full buffer unread for `slow_consumer_timeout` | its socket closed; 1001 `client too slow` to the backend, or 1013 `backend too slow` to the client | `slow_consumer` |
//! | the session reaches `max_session_age` | 1001 `max session age` to both | `max_session_age` |
//! | an admin drain of a fraction of the member | 1001 `rebalance` to both | `rebalance` |
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
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::metrics::{Metrics, TRAFFIC_REPORT_BYTES};
use crate::outcome::{Counters, Outcome};
use crate::shutdown::DrainReason;
use crate::transport::SessionStreams;
use crate::transport::{ReadEnd, ReadReadiness, SessionIo};

mod direction;
mod limits;
pub(crate) mod machine;
mod watch;

pub use limits::{OverLimit, SessionLimits};
use machine::{Dir, Session, Wire};
pub use machine::{PumpConfig, CLOSE_HANDSHAKE_TIMEOUT};

/// Size of the per-worker read buffer.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;
/// How long a finished session waits for TLS records still buffered for a peer to be written.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    /// One read buffer per worker thread, shared by every session on it. Never borrowed across
    /// an `.await`, so the borrow cannot conflict.
    static READ_BUFFER: RefCell<Box<[u8]>> =
        RefCell::new(vec![0u8; READ_BUFFER_SIZE].into_boxed_slice());
}

/// The core's clock, read only here: tokio's (so paused test time applies), as a std `Instant`.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The session's two sockets as the core's [`Wire`]: its actions carried out.
struct Sockets<'a> {
    client: &'a SessionIo,
    backend: &'a SessionIo,
    counters: &'a Counters,
}

impl Sockets<'_> {
    fn dst(&self, dir: Dir) -> &SessionIo {
        match dir {
            Dir::Up => self.backend,
            Dir::Down => self.client,
        }
    }
}

impl Wire for Sockets<'_> {
    fn send(&mut self, dir: Dir, bytes: &[u8]) -> io::Result<usize> {
        self.dst(dir).try_write(bytes)
    }
    fn shutdown_write(&mut self, dir: Dir) {
        self.dst(dir).shutdown_write();
    }
    fn close_client(&mut self) {
        self.client.shutdown_both();
    }
    fn close_backend(&mut self) {
        self.backend.shutdown_both();
    }
    fn counters(&self) -> &Counters {
        self.counters
    }
}

/// Reads once from the source of `dir` into the worker's buffer and hands the bytes to the
/// core.
fn read_once(
    core: &mut Session,
    dir: Dir,
    src: &SessionIo,
    readiness: &mut ReadReadiness,
    wire: &mut Sockets<'_>,
) {
    READ_BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        let end = src.read(&mut buf, readiness, |bytes| {
            core.on_bytes(dir, bytes, now(), wire)
        });
        match end {
            ReadEnd::Open => {}
            ReadEnd::Eof => core.on_end(dir, false, now(), wire),
            ReadEnd::Error => core.on_end(dir, true, now(), wire),
        }
    });
}

/// What a session's pump shares with its actor. The actor owns it, and its context polls the
/// pump with it at hand (same task, after the actor's mailbox), so neither an `Rc` nor a waker
/// sits between them: a drain order the actor handles is seen by the pump in the same poll.
#[derive(Default)]
pub struct Shared {
    /// Live counters (read by `GET /sessions` through the actor).
    pub counters: Counters,
    /// A drain order the pump has not acted on yet: why, close in, answer within (boxed: rare,
    /// and an idle session should not carry 40 bytes for it).
    drain: Cell<Option<Box<(DrainReason, Duration, Duration)>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Hands the pump a drain order (the latest wins), seen when the pump is next polled: close
    /// for `reason` in `close_in` (at once when zero), the peers answering within
    /// `answer_within` of a close sent at once (see `machine::Session::on_drain`).
    pub fn drain(&self, reason: DrainReason, close_in: Duration, answer_within: Duration) {
        self.drain
            .set(Some(Box::new((reason, close_in, answer_within))));
    }
}

/// The counters as last added to the process's metrics: `[client bytes, backend bytes, client
/// messages, backend messages]`.
#[derive(Debug, Default)]
struct Reported([u64; 4]);

impl Reported {
    /// Adds what moved since the last report to `metrics` (`tether_websocket_bytes_total`,
    /// `tether_websocket_messages_total`): four relaxed atomic adds, nothing when nothing moved.
    /// The pump reports on each of its timer ticks (a keep-alive ping is due every
    /// `keepalive_interval`), whenever [`TRAFFIC_REPORT_BYTES`] have moved since the last
    /// report (checked once per read, not per frame), and once more when the session ends; so a
    /// long session's traffic shows as it flows, not as one spike at its end.
    fn report(&mut self, c: &Counters, metrics: &Metrics) {
        let now = [
            c.client_bytes.get(),
            c.backend_bytes.get(),
            c.client_messages.get(),
            c.backend_messages.get(),
        ];
        let reported = std::mem::replace(&mut self.0, now);
        if now != reported {
            metrics.session_traffic(std::array::from_fn(|i| now[i] - reported[i]));
        }
    }

    /// Reports the traffic if [`TRAFFIC_REPORT_BYTES`] moved since the last report.
    fn report_by_volume(&mut self, c: &Counters, metrics: &Metrics) {
        let [client, backend, ..] = self.0;
        let moved = c.client_bytes.get() - client + c.backend_bytes.get() - backend;
        if moved >= TRAFFIC_REPORT_BYTES {
            self.report(c, metrics);
        }
    }
}

pin_project_lite::pin_project! {
    /// One session's pump, as a future that resolves to how the session went: the driver of
    /// the session core ([`machine::Session`]) over the two sockets.
    ///
    /// Written by hand rather than as an `async fn` so that its size is exactly its fields:
    /// this is the largest allocation an idle session owns. Every event source is polled
    /// through a single-slot registration (`poll_read_ready`/`poll_write_ready`, the timer),
    /// so nothing is pinned per wait and no waiter node lives in the future; drain orders
    /// arrive through [`Shared`], which the actor passes in on every poll. Events are handled one at a time in a fixed order — drain order, writes
    /// to the backend, writes to the client, reads from the client, reads from the backend,
    /// hang-ups of a stalled client or backend, timer — until none is ready; tokio's
    /// cooperative budget bounds each turn.
    pub struct Pumping {
        client: SessionIo,
        backend: SessionIo,
        core: Session,
        // What was last added to the process's traffic counters.
        reported: Reported,
        // Whether each source may be waited for before a read (see `SessionIo::poll_hangup`).
        client_readiness: ReadReadiness,
        backend_readiness: ReadReadiness,
        // Set once the session is over and only TLS records still wait to be written.
        flushing: bool,
        #[pin]
        timer: Sleep,
    }
}

impl Pumping {
    /// A pump over `streams`; bytes the HTTP layer read past either handshake are forwarded
    /// at once.
    pub fn new(
        streams: SessionStreams,
        cfg: PumpConfig,
        limits: SessionLimits,
        shared: &Shared,
    ) -> Pumping {
        let SessionStreams {
            client,
            client_prefix,
            backend,
            backend_prefix,
        } = streams;
        let mut core = Session::with_limits(cfg, limits, now());
        let mut wire = Sockets {
            client: &client,
            backend: &backend,
            counters: &shared.counters,
        };
        if !client_prefix.is_empty() {
            core.on_bytes(Dir::Up, &client_prefix, now(), &mut wire);
        }
        if !backend_prefix.is_empty() {
            core.on_bytes(Dir::Down, &backend_prefix, now(), &mut wire);
        }
        let timer = tokio::time::sleep_until(Instant::from_std(core.next_deadline()));
        Pumping {
            client,
            backend,
            core,
            reported: Reported::default(),
            client_readiness: ReadReadiness::default(),
            backend_readiness: ReadReadiness::default(),
            flushing: false,
            timer,
        }
    }
}

impl Pumping {
    /// Polls the pump as a future: how the session went, once it is over. `shared` and
    /// `metrics` are the session actor's, passed in on every poll (see [`Shared`]).
    pub fn poll_pump(
        self: Pin<&mut Self>,
        shared: &Shared,
        metrics: &Metrics,
        cx: &mut Context<'_>,
    ) -> Poll<Outcome> {
        let mut this = self.project();
        let (client, backend, core) = (&*this.client, &*this.backend, &mut *this.core);
        let reported = &mut *this.reported;
        let counters = &shared.counters;
        let wire = &mut Sockets {
            client,
            backend,
            counters,
        };
        if !*this.flushing {
            loop {
                if let Some(order) = shared.drain.take() {
                    let (reason, close_in, answer_within) = *order;
                    core.on_drain(reason, close_in, answer_within, now(), wire);
                }
                if core.poll_done(now()) {
                    break;
                }
                let due = Instant::from_std(core.next_deadline());
                if this.timer.deadline() != due {
                    this.timer.as_mut().reset(due);
                }
                if core.wants_write(Dir::Up) || backend.output_pending() {
                    if let Poll::Ready(r) = backend.poll_writable(cx) {
                        let ok = r.is_ok() && backend.flush_output().is_ok();
                        core.on_writable(Dir::Up, ok, now(), wire);
                        continue;
                    }
                }
                if core.wants_write(Dir::Down) || client.output_pending() {
                    if let Poll::Ready(r) = client.poll_writable(cx) {
                        let ok = r.is_ok() && client.flush_output().is_ok();
                        core.on_writable(Dir::Down, ok, now(), wire);
                        continue;
                    }
                }
                if core.can_read(Dir::Up) {
                    if let Poll::Ready(r) = client.poll_readable(cx, *this.client_readiness) {
                        match r {
                            Ok(()) => {
                                read_once(core, Dir::Up, client, this.client_readiness, wire);
                                reported.report_by_volume(counters, metrics);
                            }
                            Err(_) => core.on_end(Dir::Up, true, now(), wire),
                        }
                        continue;
                    }
                }
                if core.can_read(Dir::Down) {
                    if let Poll::Ready(r) = backend.poll_readable(cx, *this.backend_readiness) {
                        match r {
                            Ok(()) => {
                                read_once(core, Dir::Down, backend, this.backend_readiness, wire);
                                reported.report_by_volume(counters, metrics);
                            }
                            Err(_) => core.on_end(Dir::Down, true, now(), wire),
                        }
                        continue;
                    }
                }
                if core.watches_hangup(Dir::Up)
                    && client.poll_hangup(cx, this.client_readiness).is_ready()
                {
                    core.on_hangup(Dir::Up, now());
                    continue;
                }
                if core.watches_hangup(Dir::Down)
                    && backend.poll_hangup(cx, this.backend_readiness).is_ready()
                {
                    core.on_hangup(Dir::Down, now());
                    continue;
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    core.on_timer(now(), wire);
                    reported.report(counters, metrics);
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
            reported.report(counters, metrics);
            return Poll::Ready(core.outcome());
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

    /// The pump is the largest allocation an idle session owns (952 bytes before issue 17's
    /// cuts, 680 after them, on x86-64 Linux): it must not grow back.
    #[test]
    fn the_pump_stays_as_small_as_issue_17_left_it() {
        let (pumping, core) = (
            std::mem::size_of::<Pumping>(),
            std::mem::size_of::<Session>(),
        );
        println!("size_of: Pumping = {pumping} B, Session = {core} B");
        assert!(pumping <= 680, "Pumping grew to {pumping} bytes");
    }

    /// The actor's tokio task is rounded up to 128-byte steps: 768 bytes while the actor's
    /// context (actix's `ContextFut`) stays within 640. A field more can cost 128 bytes a
    /// session.
    #[test]
    fn the_session_actor_keeps_its_task_at_768_bytes() {
        type Fut = actix::dev::ContextFut<
            crate::session::SessionActor,
            actix::Context<crate::session::SessionActor>,
        >;
        let size = std::mem::size_of::<Fut>();
        assert!(
            size <= 640,
            "the session actor's context grew to {size} bytes"
        );
    }

    fn traffic(m: &Metrics) -> ([u64; 2], [u64; 2]) {
        m.traffic()
    }

    #[test]
    fn traffic_is_reported_once_as_it_moves_and_by_volume() {
        let metrics = Metrics::default();
        let shared = Shared::default();
        let mut reported = Reported::default();
        let c = &shared.counters;
        c.client_bytes.set(100);
        c.client_messages.set(2);
        // Below the volume threshold nothing is reported until a tick.
        reported.report_by_volume(c, &metrics);
        assert_eq!(traffic(&metrics), ([0, 0], [0, 0]));
        reported.report(c, &metrics);
        assert_eq!(traffic(&metrics), ([100, 0], [2, 0]));
        // A tick with nothing new adds nothing; the next adds only what moved since.
        reported.report(c, &metrics);
        assert_eq!(traffic(&metrics), ([100, 0], [2, 0]));
        c.backend_bytes.set(TRAFFIC_REPORT_BYTES - 1);
        reported.report_by_volume(c, &metrics);
        assert_eq!(traffic(&metrics), ([100, 0], [2, 0]), "one byte short");
        c.client_bytes.set(101);
        reported.report_by_volume(c, &metrics);
        assert_eq!(traffic(&metrics), ([101, TRAFFIC_REPORT_BYTES - 1], [2, 0]));
    }
}
