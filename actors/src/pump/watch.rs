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

/// Keep-alive state.
#[derive(Default)]
pub(super) struct Ping {
    pub(super) seq: u32,
    pub(super) outstanding: Option<([u8; PING_PAYLOAD_LEN], Instant)>,
    pub(super) last_sent: Option<Instant>,
    pub(super) rtt_last: Option<Duration>,
    pub(super) rtt_max: Option<Duration>,
}

/// Watches one direction's frames on behalf of the session.
pub(super) struct Watch<'a> {
    pub(super) from_client: bool,
    pub(super) max_message: Option<u64>,
    pub(super) now: Instant,
    pub(super) ping: &'a mut Ping,
    pub(super) close: &'a mut Option<CloseInfo>,
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
                self.messages += 1;
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
                        let rtt = self.now.saturating_duration_since(sent);
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
pub(super) fn mask_key() -> [u8; 4] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7465_7468_6572);
    (h.finish() as u32).to_ne_bytes()
}
