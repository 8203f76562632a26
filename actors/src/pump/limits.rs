//! Per-session limits, as the session core enforces them: the client's message and byte rates
//! (token buckets, checked at each frame header so no payload is ever held back), how long a
//! destination may sit with a full buffer (slow consumer), and how old a session may grow.
//!
//! The slow-consumer clock is kept inline (56 bytes with the rest; it is on by default); the
//! rates' state is boxed and absent unless the rule sets a rate, so a session without rates
//! pays one word for them.
//!
//! Lifecycle of the rate limits, per session:
//!
//! ```text
//!            frame header within the buckets
//!   Within ◄──────────────────────────────┐
//!     │                                    │
//!     │ header overdraws a bucket          │ paced: the bucket is back within its burst
//!     ├── action = close ──► Violated(limit) (the core closes: 1008 to the client)
//!     └── action = delay ──► Paused{until} ┘ (the frame goes on; reads stop until `until`)
//! ```
//!
//! Slow consumer, per direction: `Flowing ──pending reaches PENDING_LIMIT──► Full{since}`,
//! back to `Flowing` as soon as the destination takes bytes below the limit; `Full` for
//! `slow_consumer_timeout` ends the session (the core decides how).

use std::time::{Duration, Instant};

use super::direction::{Dir, PENDING_LIMIT};
use crate::frame::{FrameHeader, OpCode};
use crate::token_bucket::{Rate, TokenBucket};

/// What happens to a client over its message or byte rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverLimit {
    /// Close the session: `1008 policy violation` to the client, `1001` to the backend.
    #[default]
    Close,
    /// Backpressure: the frame goes on, and the client's socket is not read until the bucket
    /// is back within its burst.
    Delay,
}

/// Which rate a client broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// `max_messages_per_second`.
    Messages,
    /// `max_bytes_per_second`.
    Bytes,
}

/// A rule's per-session limits, copied into each session it admits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// Messages a second from the client (counted at each message's first frame header).
    pub messages: Option<Rate>,
    /// Payload bytes a second from the client (counted at each data frame's header).
    pub bytes: Option<Rate>,
    /// What a client over either rate gets.
    pub over_limit: OverLimit,
    /// How long a destination may hold a full buffer before the session ends.
    pub slow_consumer_timeout: Option<Duration>,
    /// This session's maximum age (the rule's `max_session_age`, jittered per session).
    pub max_age: Option<Duration>,
}

/// The limits' live state in one session (see the module's lifecycle note): the slow-consumer
/// clock inline (on by default, so nearly every session has it), the client's rates boxed and
/// absent unless the rule sets one.
#[derive(Default)]
pub(super) struct Limits {
    /// How long a destination may hold a full buffer.
    slow_consumer_timeout: Option<Duration>,
    /// Since when each direction's destination holds a full buffer (`[up, down]`).
    full_since: [Option<Instant>; 2],
    /// The client's rates and their state.
    rates: Option<Box<Rates>>,
}

/// The client's message and byte rates and what they decided.
struct Rates {
    over_limit: OverLimit,
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// The rate a frame header broke (close action), for the core to act on.
    violated: Option<RateLimit>,
    /// Reads from the client wait until then (delay action).
    paused_until: Option<Instant>,
}

impl Limits {
    pub(super) fn new(cfg: SessionLimits, now: Instant) -> Limits {
        let rates = (cfg.messages.is_some() || cfg.bytes.is_some()).then(|| {
            Box::new(Rates {
                over_limit: cfg.over_limit,
                messages: cfg.messages.map(|r| TokenBucket::new(r, now)),
                bytes: cfg.bytes.map(|r| TokenBucket::new(r, now)),
                violated: None,
                paused_until: None,
            })
        });
        Limits {
            slow_consumer_timeout: cfg.slow_consumer_timeout,
            full_since: [None, None],
            rates,
        }
    }

    /// Whether the client has a message or byte rate (frame headers are then checked).
    pub(super) fn has_rates(&self) -> bool {
        self.rates.is_some()
    }

    /// The rate a frame header broke (close action), once.
    pub(super) fn take_violated(&mut self) -> Option<RateLimit> {
        self.rates.as_mut().and_then(|r| r.violated.take())
    }

    /// A frame header from the client: charges the buckets. `false` when it broke a rate and
    /// the action is to close (the frame must not be forwarded; [`Limits::take_violated`] says
    /// which).
    pub(super) fn admit(&mut self, h: &FrameHeader, now: Instant) -> bool {
        let Some(rates) = &mut self.rates else {
            return true;
        };
        let (first, data) = match h.opcode {
            OpCode::Text | OpCode::Binary => (true, true),
            OpCode::Continuation => (false, true),
            _ => (false, false),
        };
        if !data {
            return true;
        }
        let charges = [
            (RateLimit::Messages, &mut rates.messages, u64::from(first)),
            (RateLimit::Bytes, &mut rates.bytes, h.len),
        ];
        match rates.over_limit {
            OverLimit::Close => {
                for (limit, bucket, n) in charges {
                    if let (Some(b), true) = (bucket, n > 0) {
                        if !b.take(n, now) {
                            rates.violated = Some(limit);
                            return false;
                        }
                    }
                }
            }
            OverLimit::Delay => {
                for (_, bucket, n) in charges {
                    if let (Some(b), true) = (bucket, n > 0) {
                        if let Some(ready) = b.charge(n, now) {
                            rates.paused_until =
                                Some(rates.paused_until.map_or(ready, |p| p.max(ready)));
                        }
                    }
                }
            }
        }
        true
    }

    /// When reads from the client resume (delay action), if they wait.
    fn paused_until(&self) -> Option<Instant> {
        self.rates.as_ref().and_then(|r| r.paused_until)
    }

    /// Whether reads from the client wait (delay action).
    pub(super) fn paused(&self) -> bool {
        self.paused_until().is_some()
    }

    /// Time passed: ends a pause that is over.
    pub(super) fn tick(&mut self, now: Instant) {
        if let Some(rates) = &mut self.rates {
            if rates.paused_until.is_some_and(|t| now >= t) {
                rates.paused_until = None;
            }
        }
    }

    /// Notes how full the destination of `dir` is after an event.
    pub(super) fn observe(&mut self, dir: Dir, pending: usize, open: bool, now: Instant) {
        if self.slow_consumer_timeout.is_none() {
            return;
        }
        let slot = &mut self.full_since[idx(dir)];
        *slot = (open && pending >= PENDING_LIMIT).then(|| slot.unwrap_or(now));
    }

    /// When the destination of `dir` becomes a slow consumer, if it is full now.
    pub(super) fn slow_at(&self, dir: Dir) -> Option<Instant> {
        let timeout = self.slow_consumer_timeout?;
        self.full_since[idx(dir)].map(|since| since + timeout)
    }

    /// The earliest moment a limit needs the timer.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [
            self.paused_until(),
            self.slow_at(Dir::Up),
            self.slow_at(Dir::Down),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

fn idx(dir: Dir) -> usize {
    match dir {
        Dir::Up => 0,
        Dir::Down => 1,
    }
}
