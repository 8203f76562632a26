//! What the session core learns from the frames passing one direction: keep-alive pongs,
//! close frames (reserved codes replaced), message sizes and counts. An [`Inspector`] for
//! [`crate::frame::FrameTracker`], with the time passed in.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use super::limits::Limits;
use crate::frame::{
    is_reserved_close_code, CloseInfo, ControlFrame, FrameHeader, Held, Inspector, OpCode, Verdict,
};
use crate::outcome::Initiator;

/// Length of the payload of Tether's keep-alive pings (`tthr` + a sequence number).
pub const PING_PAYLOAD_LEN: usize = 8;

/// Keep-alive state (40 bytes: the payload of the ping in flight is derived from `seq`, and
/// round trips are kept in microseconds).
#[derive(Default)]
pub(super) struct Ping {
    /// The sequence number of the last ping sent.
    pub(super) seq: u32,
    /// The last ping sent (at `last_sent`) is not answered yet.
    pub(super) outstanding: bool,
    pub(super) last_sent: Option<Instant>,
    /// The last and the largest round trip, in microseconds (saturating at `u32::MAX`, 71 min).
    rtt_last_us: Option<u32>,
    rtt_max_us: Option<u32>,
}

impl Ping {
    /// The payload of ping number `seq`: `tthr` and the number.
    pub(super) fn payload(seq: u32) -> [u8; PING_PAYLOAD_LEN] {
        let mut payload = [0u8; PING_PAYLOAD_LEN];
        payload[..4].copy_from_slice(b"tthr");
        payload[4..].copy_from_slice(&seq.to_be_bytes());
        payload
    }

    /// Sends ping number `seq + 1` at `now`: its payload.
    pub(super) fn send(&mut self, now: Instant) -> [u8; PING_PAYLOAD_LEN] {
        self.seq = self.seq.wrapping_add(1);
        self.outstanding = true;
        self.last_sent = Some(now);
        Ping::payload(self.seq)
    }

    /// The ping in flight was answered after `rtt`.
    fn answered(&mut self, rtt: Duration) {
        let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        self.rtt_last_us = Some(us);
        self.rtt_max_us = Some(self.rtt_max_us.map_or(us, |m| m.max(us)));
        self.outstanding = false;
    }

    /// The last round trip, if a ping was answered.
    pub(super) fn rtt_last(&self) -> Option<Duration> {
        self.rtt_last_us
            .map(|us| Duration::from_micros(u64::from(us)))
    }

    /// The largest round trip, if a ping was answered.
    pub(super) fn rtt_max(&self) -> Option<Duration> {
        self.rtt_max_us
            .map(|us| Duration::from_micros(u64::from(us)))
    }
}

/// Watches one direction's frames on behalf of the session.
pub(super) struct Watch<'a> {
    pub(super) from_client: bool,
    pub(super) max_message: Option<u64>,
    pub(super) now: Instant,
    pub(super) ping: &'a mut Ping,
    pub(super) close: &'a mut Option<Box<CloseInfo>>,
    pub(super) first_close: &'a mut Option<Initiator>,
    pub(super) messages: u64,
    /// The client's rate limits (client-to-backend only; `None` when there are none).
    pub(super) limits: Option<&'a mut Limits>,
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
        if let Some(limits) = &mut self.limits {
            if !limits.admit(h, self.now) {
                return Verdict::Reject;
            }
        }
        match h.opcode {
            OpCode::Close => Verdict::Hold,
            OpCode::Pong
                if self.from_client
                    && self.ping.outstanding
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
                self.messages += 1;
                Held::Release
            }
            OpCode::Close => {
                let info = CloseInfo::parse(control.unwrap_or_default());
                let reserved = info.code.is_some_and(is_reserved_close_code);
                if self.close.is_none() {
                    *self.close = Some(Box::new(info));
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
                if let (true, Some(sent)) = (self.ping.outstanding, self.ping.last_sent) {
                    if control == Some(&Ping::payload(self.ping.seq)[..]) {
                        self.ping.answered(self.now.saturating_duration_since(sent));
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
pub(super) fn mask_key() -> [u8; 4] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7465_7468_6572);
    (h.finish() as u32).to_ne_bytes()
}
