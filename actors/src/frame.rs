//! WebSocket frame headers as they pass through (RFC 6455 §5.2), without re-framing.
//!
//! [`FrameTracker`] follows one direction of a session. It is fed each chunk read from the socket
//! and forwards it to a [`Sink`] *unchanged*, while parsing every frame header it contains
//! (incrementally: a header may be split across reads). At each header it asks an [`Inspector`]
//! whether to forward the frame, hold it, or reject it:
//!
//! * **forward** (almost every frame): the bytes stay part of the chunk written straight through;
//! * **hold**: a control frame the session must look at before deciding (a pong that may answer
//!   Tether's own ping, a close frame whose code must be checked). A frame that arrived whole
//!   in one read is inspected where it lies; one split across reads (its payload is at most 125
//!   bytes) is kept in a small box that exists only until the frame is complete;
//! * **reject**: the frame would make a message exceed `max_message_size`; nothing of it is
//!   forwarded, and processing stops.
//!
//! A header split across two reads is withheld (≤ 14 bytes, in the same box) until it is complete, so the
//! destination only ever receives whole headers and the tracker always knows whether the bytes
//! delivered so far end on a frame boundary — the only place Tether may inject a frame of its own.
//! Payload bytes are never copied (except the ≤ 125 bytes of a held control frame) or modified;
//! RSV bits, masks and extension data pass through untouched.

/// The largest frame header: 2 bytes + 8 bytes of extended length + 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;
/// The largest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: first frame of a text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
    /// Any other value (passed through; the endpoints deal with it).
    Reserved(u8),
}

impl OpCode {
    fn from_bits(bits: u8) -> OpCode {
        match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    /// True for close, ping, pong and the reserved control opcodes (0x8–0xF).
    pub fn is_control(self) -> bool {
        match self {
            OpCode::Close | OpCode::Ping | OpCode::Pong => true,
            OpCode::Reserved(bits) => bits >= 0x8,
            _ => false,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: last frame of its message.
    pub fin: bool,
    /// RSV1–3 as the low three bits (extensions such as permessage-deflate use RSV1).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on client-to-server frames.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Length of the header itself in bytes (2 to 14).
    pub header_len: u8,
    /// For data frames: the size of the message so far including this frame; for control
    /// frames: this frame's length.
    pub message_len: u64,
}

/// Parses a frame header from the start of `bytes`; `None` if more bytes are needed.
pub fn parse_header(bytes: &[u8]) -> Option<FrameHeader> {
    if bytes.len() < 2 {
        return None;
    }
    let b0 = bytes[0];
    let b1 = bytes[1];
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if bytes.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4)
        }
        127 => {
            if bytes.len() < 10 {
                return None;
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        small => (u64::from(small), 2),
    };
    let mask = if masked {
        if bytes.len() < at + 4 {
            return None;
        }
        let key = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x07,
        opcode: OpCode::from_bits(b0 & 0x0F),
        mask,
        len,
        header_len: at as u8,
        message_len: len,
    })
}

/// Where forwarded bytes go.
pub trait Sink {
    /// Delivers `bytes` in order after everything delivered before.
    fn send(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn send(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// What to do with a frame whose header is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it through.
    Forward,
    /// Keep it (a control frame of at most 125 bytes) until it is complete, then ask again.
    Hold,
    /// Refuse it: nothing of this frame is forwarded, and processing stops.
    Reject,
}

/// What to do with a held frame once complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Forward it as it was.
    Release,
    /// Drop it.
    Swallow,
    /// Drop it and send this frame in its place.
    Replace(ControlFrame),
}

/// The session's side of inspection: decides about frames and records what it learns.
pub trait Inspector {
    /// A header is complete (its payload has not been forwarded yet).
    fn header(&mut self, header: &FrameHeader) -> Verdict;
    /// A frame is complete. `control` is the unmasked payload of a control frame of at most 125
    /// bytes. For a held frame the answer decides its fate; for others it is ignored.
    fn frame_end(&mut self, header: &FrameHeader, control: Option<&[u8]>) -> Held;
}

/// Forwards everything and looks at nothing.
#[derive(Debug, Default)]
pub struct PassThrough;

impl Inspector for PassThrough {
    fn header(&mut self, _: &FrameHeader) -> Verdict {
        Verdict::Forward
    }
    fn frame_end(&mut self, _: &FrameHeader, _: Option<&[u8]>) -> Held {
        Held::Release
    }
}

/// A frame [`FrameTracker::process`] refused, with the header that made the inspector refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected(pub FrameHeader);

/// Bytes a [`FrameTracker`] keeps across reads: a header split between two reads (withheld from
/// the destination until complete), and the payload of a control frame split between reads.
/// Boxed, and present only while something is split: a frame that arrives in one read is
/// inspected in place.
struct Partial {
    /// Bytes of a header not yet complete, or of a held frame's header.
    header: [u8; MAX_HEADER_LEN],
    header_have: u8,
    /// The raw (still masked) payload of the current control frame so far.
    control: [u8; MAX_CONTROL_PAYLOAD],
    control_have: u8,
}

impl Partial {
    fn boxed() -> Box<Partial> {
        Box::new(Partial {
            header: [0; MAX_HEADER_LEN],
            header_have: 0,
            control: [0; MAX_CONTROL_PAYLOAD],
            control_have: 0,
        })
    }

    fn header(&self) -> &[u8] {
        &self.header[..self.header_have as usize]
    }
}

/// Follows the frames of one direction. About 64 bytes; the ≤ 140 bytes of a header or control
/// frame split across reads are boxed while they are split.
#[derive(Default)]
pub struct FrameTracker {
    /// What is kept across reads, while a header or a control frame is split between them.
    partial: Option<Box<Partial>>,
    /// The frame whose payload is passing, if any.
    current: Option<FrameHeader>,
    /// Payload bytes of `current` still to come.
    remaining: u64,
    /// Whether `current` is held rather than forwarded.
    holding: bool,
    /// Size of the data message in progress (for `max_message_size`).
    message_len: u64,
    /// Set after a rejection: nothing more is parsed or forwarded.
    stopped: bool,
    /// The stream ended inside a header and its withheld bytes went out as they were
    /// ([`FrameTracker::release_truncated`]): it never reaches a boundary again.
    truncated: bool,
}

impl std::fmt::Debug for FrameTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameTracker")
            .field("withheld", &self.withheld())
            .field("current", &self.current)
            .field("remaining", &self.remaining)
            .field("holding", &self.holding)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// Whether frames with `header` are control frames small enough to be inspected whole.
fn small_control(header: &FrameHeader) -> bool {
    header.opcode.is_control() && header.len <= MAX_CONTROL_PAYLOAD as u64
}

impl FrameTracker {
    /// True when everything forwarded so far ends on a frame boundary, so a frame of Tether's
    /// own may be sent to the destination now.
    pub fn at_boundary(&self) -> bool {
        !self.truncated && (self.current.is_none() || self.holding)
    }

    /// At the end of the stream: the bytes of an incomplete header that were withheld, now to be
    /// forwarded as they are (so a truncated stream still passes unchanged). From then on the
    /// stream is never at a boundary: a frame of Tether's after them would be read as part of
    /// the broken header.
    pub fn release_truncated(&mut self) -> &[u8] {
        if !self.withheld().is_empty() && !self.holding {
            self.truncated = true;
        }
        self.withheld()
    }

    /// Bytes of an incomplete header withheld so far (and of a held frame's header). At end of
    /// stream they are delivered as they are, so even a truncated stream passes unchanged.
    pub fn withheld(&self) -> &[u8] {
        self.partial.as_deref().map_or(&[], Partial::header)
    }

    /// True while a held control frame is being collected.
    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// True once a frame was rejected.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Processes one chunk read from the source, forwarding to `out` everything the inspector
    /// does not hold or reject. Stops at a rejected frame (bytes before it are forwarded).
    pub fn process(
        &mut self,
        chunk: &[u8],
        inspector: &mut impl Inspector,
        out: &mut impl Sink,
    ) -> Result<(), Rejected> {
        if self.stopped {
            return Ok(());
        }
        // `fwd` is where the run of bytes to forward unchanged, not yet sent, begins.
        let mut fwd = 0usize;
        let mut pos = 0usize;
        while pos < chunk.len() {
            if let Some(header) = self.current {
                self.consume_payload(header, chunk, &mut pos, &mut fwd);
                if self.remaining == 0 {
                    self.finish_split_frame(header, inspector, out, &mut fwd, pos);
                }
                continue;
            }
            // Between frames: parse the next header.
            let header_start = pos;
            let from_buffer = !self.withheld().is_empty();
            let header = if from_buffer {
                match self.complete_header(chunk, &mut pos) {
                    Some(h) => h,
                    None => return Ok(()), // still incomplete; the chunk is all withheld
                }
            } else {
                match parse_header(&chunk[pos..]) {
                    Some(h) => {
                        pos += h.header_len as usize;
                        h
                    }
                    None => {
                        // Split header: forward what precedes it, withhold the rest.
                        flush(out, chunk, fwd, pos);
                        let rest = &chunk[pos..];
                        let partial = self.partial.get_or_insert_with(Partial::boxed);
                        partial.header[..rest.len()].copy_from_slice(rest);
                        partial.header_have = rest.len() as u8;
                        return Ok(());
                    }
                }
            };
            let header = self.account(header);
            match inspector.header(&header) {
                Verdict::Reject => {
                    if !from_buffer {
                        flush(out, chunk, fwd, header_start);
                    }
                    self.partial = None;
                    self.stopped = true;
                    return Err(Rejected(header));
                }
                Verdict::Hold if small_control(&header) => self.holding = true,
                // Forward, or too large to hold: pass it through (a control frame this large
                // is a protocol error the endpoints will answer).
                Verdict::Forward | Verdict::Hold => {
                    if from_buffer {
                        out.send(self.withheld());
                        fwd = pos;
                    }
                    self.holding = false;
                }
            }
            if small_control(&header) && (chunk.len() - pos) as u64 >= header.len {
                // The whole control frame is in this chunk: inspected in place.
                let payload = pos..pos + header.len as usize;
                pos = payload.end;
                self.finish_whole_control(
                    header,
                    (header_start, payload, from_buffer),
                    chunk,
                    inspector,
                    out,
                    &mut fwd,
                );
                continue;
            }
            // The frame goes on past this chunk (or has no payload to keep).
            if self.holding {
                if !from_buffer {
                    flush(out, chunk, fwd, header_start);
                    let raw = &chunk[header_start..pos];
                    let partial = self.partial.get_or_insert_with(Partial::boxed);
                    partial.header[..raw.len()].copy_from_slice(raw);
                    partial.header_have = raw.len() as u8;
                }
                fwd = pos;
            } else if small_control(&header) {
                // Forwarded, but its payload is collected for the inspector.
                self.partial.get_or_insert_with(Partial::boxed).header_have = 0;
            } else {
                self.partial = None;
            }
            if let Some(partial) = &mut self.partial {
                partial.control_have = 0;
            }
            self.current = Some(header);
            self.remaining = header.len;
            if self.remaining == 0 {
                self.finish_split_frame(header, inspector, out, &mut fwd, pos);
            }
        }
        flush(out, chunk, fwd, chunk.len());
        Ok(())
    }

    /// Completes a withheld header from `chunk`, one byte at a time (at most 13): the header
    /// once complete, `None` while the whole chunk went into it.
    fn complete_header(&mut self, chunk: &[u8], pos: &mut usize) -> Option<FrameHeader> {
        let partial = self.partial.as_mut()?;
        while *pos < chunk.len() && (partial.header_have as usize) < MAX_HEADER_LEN {
            partial.header[partial.header_have as usize] = chunk[*pos];
            partial.header_have += 1;
            *pos += 1;
            if let Some(h) = parse_header(partial.header()) {
                return Some(h);
            }
        }
        None
    }

    /// Passes (or, for a held frame, keeps) payload bytes of the current frame.
    fn consume_payload(
        &mut self,
        header: FrameHeader,
        chunk: &[u8],
        pos: &mut usize,
        fwd: &mut usize,
    ) {
        let take = (chunk.len() - *pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if small_control(&header) {
            if let Some(partial) = &mut self.partial {
                let at = partial.control_have as usize;
                partial.control[at..at + take].copy_from_slice(&chunk[*pos..*pos + take]);
                partial.control_have += take as u8;
            }
        }
        *pos += take;
        self.remaining -= take as u64;
        if self.holding {
            *fwd = *pos;
        }
    }

    /// Tracks message size across fragments.
    fn account(&mut self, mut header: FrameHeader) -> FrameHeader {
        match header.opcode {
            OpCode::Text | OpCode::Binary => self.message_len = header.len,
            OpCode::Continuation => self.message_len = self.message_len.saturating_add(header.len),
            _ => return header,
        }
        header.message_len = self.message_len;
        header
    }

    /// A control frame read whole in this chunk (`at`: where its header starts, its payload,
    /// and whether its header was withheld from an earlier read): asks the inspector, and for a
    /// held frame forwards, drops or replaces it, copying nothing.
    fn finish_whole_control(
        &mut self,
        header: FrameHeader,
        at: (usize, std::ops::Range<usize>, bool),
        chunk: &[u8],
        inspector: &mut impl Inspector,
        out: &mut impl Sink,
        fwd: &mut usize,
    ) {
        let (header_start, payload, from_buffer) = at;
        let mut plain = [0u8; MAX_CONTROL_PAYLOAD];
        let plain = unmask(&mut plain, &chunk[payload.clone()], header.mask);
        let verdict = inspector.frame_end(&header, Some(plain));
        if self.holding {
            match verdict {
                // Its bytes stay in the run forwarded unchanged (a withheld header first).
                Held::Release if from_buffer => {
                    out.send(self.withheld());
                    *fwd = payload.start;
                }
                Held::Release => {}
                Held::Swallow | Held::Replace(_) => {
                    if !from_buffer {
                        flush(out, chunk, *fwd, header_start);
                    }
                    if let Held::Replace(frame) = verdict {
                        out.send(frame.as_bytes());
                    }
                    *fwd = payload.end;
                }
            }
        }
        self.holding = false;
        self.partial = None;
    }

    /// The current frame ended: tells the inspector (with a control frame's payload collected
    /// across reads) and, for a held frame, forwards, drops or replaces it.
    fn finish_split_frame(
        &mut self,
        header: FrameHeader,
        inspector: &mut impl Inspector,
        out: &mut impl Sink,
        fwd: &mut usize,
        pos: usize,
    ) {
        let partial = self.partial.take();
        let collected = match (&partial, small_control(&header)) {
            (Some(p), true) => &p.control[..p.control_have as usize],
            _ => &[][..],
        };
        let mut plain = [0u8; MAX_CONTROL_PAYLOAD];
        let control = small_control(&header).then(|| unmask(&mut plain, collected, header.mask));
        let verdict = inspector.frame_end(&header, control);
        if self.holding {
            // Everything before the held frame went out already (flushed at its header).
            match verdict {
                Held::Release => {
                    // One write for the whole frame: a close or ping split in two would cost
                    // a second system call (and, with TCP_NODELAY, a second segment).
                    let header = partial.as_ref().map_or(&[][..], |p| p.header());
                    let mut frame = [0u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD];
                    let len = header.len() + collected.len();
                    frame[..header.len()].copy_from_slice(header);
                    frame[header.len()..len].copy_from_slice(collected);
                    out.send(&frame[..len]);
                }
                Held::Swallow => {}
                Held::Replace(frame) => out.send(frame.as_bytes()),
            }
            *fwd = pos;
        }
        self.current = None;
        self.holding = false;
    }
}

/// `raw` unmasked with `mask` into `buf` (raw is at most [`MAX_CONTROL_PAYLOAD`] bytes).
fn unmask<'a>(
    buf: &'a mut [u8; MAX_CONTROL_PAYLOAD],
    raw: &[u8],
    mask: Option<[u8; 4]>,
) -> &'a [u8] {
    let plain = &mut buf[..raw.len()];
    plain.copy_from_slice(raw);
    if let Some(key) = mask {
        for (i, b) in plain.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    plain
}

fn flush(out: &mut impl Sink, chunk: &[u8], from: usize, to: usize) {
    if to > from {
        out.send(&chunk[from..to]);
    }
}

/// A control frame Tether writes itself (ping, close): at most 2 + 4 + 125 bytes, inline.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlFrame {
    bytes: [u8; 2 + 4 + MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlFrame")
            .field(&self.as_bytes())
            .finish()
    }
}

impl ControlFrame {
    /// Builds a control frame with `payload` (truncated to 125 bytes), masked with `mask` when
    /// it goes to a server (RFC 6455 §5.3: client-to-server frames are masked).
    pub fn new(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> ControlFrame {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut bytes = [0u8; 2 + 4 + MAX_CONTROL_PAYLOAD];
        let code = match opcode {
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
            _ => 0x8,
        };
        bytes[0] = 0x80 | code;
        bytes[1] = payload.len() as u8;
        let mut at = 2;
        if let Some(key) = mask {
            bytes[1] |= 0x80;
            bytes[2..6].copy_from_slice(&key);
            at = 6;
        }
        for (i, b) in payload.iter().enumerate() {
            bytes[at + i] = match mask {
                Some(key) => b ^ key[i % 4],
                None => *b,
            };
        }
        ControlFrame {
            bytes,
            len: (at + payload.len()) as u8,
        }
    }

    /// A close frame with `code` and `reason` (truncated on a UTF-8 boundary to fit).
    pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> ControlFrame {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
        ControlFrame::new(OpCode::Close, &payload[..2 + end], mask)
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A close frame's status code and reason (RFC 6455 §5.5.1), as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The status code; `None` when the close frame had no body (the API-level 1005).
    pub code: Option<u16>,
    /// The reason text (lossy UTF-8).
    pub reason: String,
}

impl CloseInfo {
    /// Reads a close frame's unmasked payload.
    pub fn parse(payload: &[u8]) -> CloseInfo {
        if payload.len() < 2 {
            return CloseInfo {
                code: None,
                reason: String::new(),
            };
        }
        CloseInfo {
            code: Some(u16::from_be_bytes([payload[0], payload[1]])),
            reason: String::from_utf8_lossy(&payload[2..]).into_owned(),
        }
    }
}

/// True for codes that must never appear in a close frame (RFC 6455 §7.4.1): 1005, 1006 and 1015
/// are reserved for reporting, not sending.
pub fn is_reserved_close_code(code: u16) -> bool {
    matches!(code, 1005 | 1006 | 1015)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes one frame (test helper; the tracker itself never builds data frames).
    fn encode(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    #[test]
    fn parses_all_three_length_forms_and_masks() {
        let h = parse_header(&encode(true, 0, 1, None, b"hi")).unwrap();
        assert_eq!(
            (h.len, h.header_len, h.opcode, h.fin),
            (2, 2, OpCode::Text, true)
        );
        let h = parse_header(&encode(false, 4, 2, Some([1, 2, 3, 4]), &[0; 300])).unwrap();
        assert_eq!((h.len, h.header_len, h.rsv, h.fin), (300, 8, 4, false));
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        let h = parse_header(&encode(true, 0, 2, None, &vec![0; 70_000])).unwrap();
        assert_eq!((h.len, h.header_len), (70_000, 10));
        assert_eq!(parse_header(&[0x82, 127, 0, 0]), None);
    }

    #[derive(Default)]
    struct Recorder {
        ends: Vec<(OpCode, Option<Vec<u8>>)>,
        hold_pongs: bool,
        max_message: Option<u64>,
    }

    impl Inspector for Recorder {
        fn header(&mut self, h: &FrameHeader) -> Verdict {
            if self.max_message.is_some_and(|max| h.message_len > max) {
                return Verdict::Reject;
            }
            if self.hold_pongs && h.opcode == OpCode::Pong {
                return Verdict::Hold;
            }
            Verdict::Forward
        }
        fn frame_end(&mut self, h: &FrameHeader, control: Option<&[u8]>) -> Held {
            self.ends.push((h.opcode, control.map(<[u8]>::to_vec)));
            if h.opcode == OpCode::Pong && control == Some(b"mine") {
                Held::Swallow
            } else {
                Held::Release
            }
        }
    }

    #[test]
    fn swallows_a_held_pong_and_releases_others_even_split_byte_by_byte() {
        let mut input = encode(true, 0, 1, Some([9, 8, 7, 6]), b"before");
        let mine = encode(true, 0, 0xA, Some([1, 2, 3, 4]), b"mine");
        let theirs = encode(true, 0, 0xA, Some([5, 5, 5, 5]), b"theirs");
        input.extend_from_slice(&mine);
        input.extend_from_slice(&theirs);
        input.extend(encode(true, 0, 2, Some([0, 0, 0, 1]), b"after"));
        let mut expected = encode(true, 0, 1, Some([9, 8, 7, 6]), b"before");
        expected.extend_from_slice(&theirs);
        expected.extend(encode(true, 0, 2, Some([0, 0, 0, 1]), b"after"));
        for step in [1usize, 2, 3, 7, input.len()] {
            let mut tracker = FrameTracker::default();
            let mut inspector = Recorder {
                hold_pongs: true,
                ..Recorder::default()
            };
            let mut out = Vec::new();
            for chunk in input.chunks(step) {
                tracker.process(chunk, &mut inspector, &mut out).unwrap();
            }
            assert_eq!(out, expected, "step {step}");
            assert!(tracker.at_boundary());
            assert_eq!(inspector.ends[1], (OpCode::Pong, Some(b"mine".to_vec())));
        }
    }

    /// Counts the runs a tracker hands on (each is one write to the destination).
    #[derive(Default)]
    struct Runs(Vec<Vec<u8>>);

    impl Sink for Runs {
        fn send(&mut self, bytes: &[u8]) {
            self.0.push(bytes.to_vec());
        }
    }

    #[test]
    fn a_control_frame_read_whole_is_inspected_in_place_and_one_split_is_boxed_while_split() {
        let mut input = encode(true, 0, 2, Some([9, 8, 7, 6]), b"before");
        input.extend(encode(true, 0, 0xA, Some([5, 5, 5, 5]), b"theirs"));
        input.extend(encode(true, 0, 2, Some([0, 0, 0, 1]), b"after"));
        // Read whole: nothing is kept, the held pong is released where it lies, and the chunk
        // leaves as one run (one write).
        let mut tracker = FrameTracker::default();
        let mut inspector = Recorder {
            hold_pongs: true,
            ..Recorder::default()
        };
        let mut runs = Runs::default();
        tracker.process(&input, &mut inspector, &mut runs).unwrap();
        assert_eq!(runs.0, vec![input.clone()]);
        assert!(tracker.partial.is_none());
        assert_eq!(inspector.ends[1], (OpCode::Pong, Some(b"theirs".to_vec())));
        // Split inside the pong's payload: boxed until the pong is complete, then freed.
        let cut = input.len() - 14;
        let mut tracker = FrameTracker::default();
        let mut out = Vec::new();
        tracker
            .process(&input[..cut], &mut inspector, &mut out)
            .unwrap();
        assert!(
            tracker.partial.is_some(),
            "a pong split across reads is kept"
        );
        tracker
            .process(&input[cut..], &mut inspector, &mut out)
            .unwrap();
        assert!(tracker.partial.is_none(), "and freed once complete");
        assert_eq!(out, input);
    }

    #[test]
    fn rejects_a_message_over_the_limit_before_forwarding_any_of_it() {
        let first = encode(false, 0, 2, None, &[1; 60]);
        let second = encode(true, 0, 0, None, &[2; 60]);
        let mut input = first.clone();
        input.extend_from_slice(&second);
        let mut tracker = FrameTracker::default();
        let mut inspector = Recorder {
            max_message: Some(100),
            ..Recorder::default()
        };
        let mut out = Vec::new();
        let err = tracker
            .process(&input, &mut inspector, &mut out)
            .unwrap_err();
        assert_eq!(err.0.message_len, 120);
        assert_eq!(out, first, "only the fragment within the limit went out");
        assert!(tracker.is_stopped());
        assert!(tracker.at_boundary());
    }

    #[test]
    fn close_frames_and_control_frames_between_fragments() {
        let mut input = encode(false, 0, 1, None, b"frag");
        input.extend(encode(true, 0, 9, None, b"ping"));
        input.extend(encode(true, 0, 0, None, b"ment"));
        input.extend(encode(true, 0, 8, Some([1, 1, 1, 1]), b"\x0f\xa1bye"));
        let mut tracker = FrameTracker::default();
        let mut inspector = Recorder::default();
        let mut out = Vec::new();
        tracker.process(&input, &mut inspector, &mut out).unwrap();
        assert_eq!(out, input);
        let close = inspector.ends.last().unwrap().1.clone().unwrap();
        let info = CloseInfo::parse(&close);
        assert_eq!(info.code, Some(4001));
        assert_eq!(info.reason, "bye");
    }

    #[test]
    fn control_frames_we_build_parse_back() {
        let f = ControlFrame::close(1001, "idle timeout", Some([1, 2, 3, 4]));
        let h = parse_header(f.as_bytes()).unwrap();
        assert_eq!(h.opcode, OpCode::Close);
        let mut payload = f.as_bytes()[h.header_len as usize..].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= [1, 2, 3, 4][i % 4];
        }
        assert_eq!(CloseInfo::parse(&payload).code, Some(1001));
        assert_eq!(CloseInfo::parse(&payload).reason, "idle timeout");
        let long = "é".repeat(100);
        let f = ControlFrame::close(1000, &long, None);
        assert!(f.as_bytes().len() <= 2 + MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&f.as_bytes()[4..]).is_ok());
        assert!(is_reserved_close_code(1006));
        assert!(!is_reserved_close_code(1001));
    }

    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            0u8..8,
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(2),
                Just(8),
                Just(9),
                Just(0xA),
                Just(3)
            ],
            proptest::option::of(any::<[u8; 4]>()),
            // Lengths covering the 7-, 16- and 64-bit forms; contents derived from a seed so
            // that large payloads cost nothing to generate.
            prop_oneof![0usize..130, 126usize..1_000, 65_530usize..70_000],
            any::<u8>(),
        )
            .prop_map(|(fin, rsv, op, mask, len, seed)| {
                let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
                encode(fin, rsv, op, mask, &payload)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any sequence of frames, split at any points, comes out byte-identical; the tracker
        /// ends on a boundary and saw every frame.
        #[test]
        fn bytes_out_equal_bytes_in_for_any_split(
            frames in proptest::collection::vec(arb_frame(), 1..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let input: Vec<u8> = frames.concat();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.push(0);
            points.push(input.len());
            points.sort_unstable();
            let mut tracker = FrameTracker::default();
            let mut inspector = Recorder::default();
            let mut out = Vec::new();
            for w in points.windows(2) {
                tracker.process(&input[w[0]..w[1]], &mut inspector, &mut out).unwrap();
            }
            prop_assert_eq!(&out, &input);
            prop_assert!(tracker.at_boundary());
            prop_assert_eq!(inspector.ends.len(), frames.len());
        }
    }
}
