//! Just enough of RFC 6455 framing for the benchmark: building client frames, counting the
//! frames a server sends, and echoing a client's frames back (the fast echo backend).
//!
//! Everything here works on byte slices in place and allocates nothing per frame, so that the
//! load tool and the backend spend as little CPU as possible per message: on a two-core machine
//! they share one core, and the cheaper they are, the harder the proxy under test is pushed.
//!
//! Client frames use the all-zero masking key. RFC 6455 §5.3 requires every client frame to be
//! masked and asks for an unpredictable key (to protect intermediaries from cache poisoning by
//! hostile scripts); a zero key is still a valid masked frame, and the masking then leaves the
//! payload unchanged, so neither side spends time XOR-ing it.

use std::fmt;

/// Continuation frame opcode.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// A framing error: the peer sent something that is not a valid frame for this role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(&'static str);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket framing error: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The first byte as sent: FIN, RSV1-3 and the opcode.
    pub first: u8,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Length of the header itself in bytes (2 to [`MAX_HEADER_LEN`]).
    pub header_len: usize,
}

impl Header {
    /// The frame's opcode.
    pub fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    /// Whether this is a data frame (text, binary or continuation).
    pub fn is_data(&self) -> bool {
        matches!(self.opcode(), OP_CONTINUATION | OP_TEXT | OP_BINARY)
    }
}

/// Parses a frame header at the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` holds only part of a header.
pub fn parse_header(bytes: &[u8]) -> Result<Option<Header>, FrameError> {
    let [first, second, rest @ ..] = bytes else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    let (payload_len, ext) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(ext) => {
                let mut len = [0u8; 8];
                len.copy_from_slice(ext);
                let len = u64::from_be_bytes(len);
                if len >> 63 != 0 {
                    return Err(FrameError("64-bit payload length with the top bit set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let mask = if masked {
        match rest.get(ext..ext + 4) {
            Some(key) => Some([key[0], key[1], key[2], key[3]]),
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(Header {
        first: *first,
        mask,
        payload_len,
        header_len: 2 + ext + if masked { 4 } else { 0 },
    }))
}

/// Appends a frame header (FIN set) for `opcode` and `payload_len` to `out`, masked with the
/// all-zero key when `masked` is true.
pub fn write_header(out: &mut Vec<u8>, first: u8, payload_len: u64, masked: bool) {
    let mask_bit = if masked { 0x80 } else { 0 };
    out.push(first);
    if payload_len < 126 {
        // Truncation is impossible: the value is below 126.
        out.push(mask_bit | payload_len as u8);
    } else if let Ok(len) = u16::try_from(payload_len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&payload_len.to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&[0; 4]);
    }
}

/// Builds one complete client frame (FIN set, masked with the zero key) carrying `payload`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    write_header(&mut frame, 0x80 | opcode, payload.len() as u64, true);
    frame.extend_from_slice(payload);
    frame
}

/// Builds a client close frame with status code 1000 (normal closure).
pub fn client_close_frame() -> Vec<u8> {
    client_frame(OP_CLOSE, &1000u16.to_be_bytes())
}

/// Gathers a header that arrives split across reads.
#[derive(Debug, Default)]
struct HeaderBuf {
    bytes: [u8; MAX_HEADER_LEN],
    have: usize,
}

impl HeaderBuf {
    /// Takes the next header from `data` (advancing it), or keeps the partial header for the
    /// next call and returns `Ok(None)` once `data` is used up.
    fn next(&mut self, data: &mut &[u8]) -> Result<Option<Header>, FrameError> {
        if self.have == 0 {
            // Fast path: the whole header is in this read.
            if let Some(header) = parse_header(data)? {
                *data = &data[header.header_len..];
                return Ok(Some(header));
            }
        }
        loop {
            if let Some(header) = parse_header(&self.bytes[..self.have])? {
                self.have = 0;
                return Ok(Some(header));
            }
            let Some((&byte, rest)) = data.split_first() else {
                return Ok(None);
            };
            self.bytes[self.have] = byte;
            self.have += 1;
            *data = rest;
        }
    }
}

/// Counts the frames in a byte stream without copying payloads: the client side of the
/// benchmark, which only needs to know when an echo (or a close) has fully arrived.
#[derive(Debug, Default)]
pub struct FrameScanner {
    header: HeaderBuf,
    current: Option<(Header, u64)>,
}

impl FrameScanner {
    /// A scanner at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream; calls `on_frame` with the header of every frame whose
    /// last payload byte is in `data`, in order.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(&Header),
    ) -> Result<(), FrameError> {
        loop {
            let (header, remaining) = match self.current.take() {
                Some(current) => current,
                None => match self.header.next(&mut data)? {
                    Some(header) => (header, header.payload_len),
                    None => return Ok(()),
                },
            };
            let take = remaining.min(data.len() as u64);
            data = &data[take as usize..];
            if take == remaining {
                on_frame(&header);
            } else {
                self.current = Some((header, remaining - take));
                return Ok(());
            }
        }
    }
}

/// The largest frame [`CloseFinder`] buffers whole; anything bigger is a protocol surprise on an
/// idle session and ends the wait with an error.
pub const MAX_BUFFERED_FRAME: u64 = 1 << 20;

/// The status code the RFC reserves for "a close frame without a code" (RFC 6455 §7.1.5).
pub const NO_STATUS_CODE: u16 = 1005;

/// Finds the first close frame in a byte stream and reads its status code: the client side of
/// the drain scenario, where each session waits for the proxy's close frame at shutdown. Frames
/// before it (data, pings) are skipped. Unlike [`FrameScanner`] it needs the payload, so it
/// buffers one frame at a time (at most [`MAX_BUFFERED_FRAME`] bytes).
#[derive(Debug, Default)]
pub struct CloseFinder {
    buf: Vec<u8>,
}

impl CloseFinder {
    /// A finder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream. Returns `Ok(Some(code))` once a whole close frame has
    /// arrived: its status code, or [`NO_STATUS_CODE`] when it carries none. Bytes after the
    /// close frame are ignored.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<u16>, FrameError> {
        self.buf.extend_from_slice(data);
        loop {
            let Some(header) = parse_header(&self.buf)? else {
                return Ok(None);
            };
            if header.payload_len > MAX_BUFFERED_FRAME {
                return Err(FrameError("frame too large while waiting for a close"));
            }
            // Within MAX_BUFFERED_FRAME, so it fits in usize.
            let end = header.header_len + header.payload_len as usize;
            if self.buf.len() < end {
                return Ok(None);
            }
            if header.opcode() == OP_CLOSE {
                let payload = &mut self.buf[header.header_len..end];
                if let Some(mask) = header.mask {
                    unmask(payload, mask, 0);
                }
                return Ok(Some(match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => NO_STATUS_CODE,
                }));
            }
            self.buf.drain(..end);
        }
    }
}

/// What the echoer found in the bytes it was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoStatus {
    /// Keep going.
    Open,
    /// A close frame was echoed; the caller should flush the output and end the connection.
    /// Bytes after the close frame were ignored.
    Closed,
}

/// The fast echo backend's frame engine: turns the masked frames a client sends into the
/// unmasked frames the server sends back, streaming (a frame need not arrive in one read), with
/// pings answered by pongs and a close frame echoed before the connection ends.
#[derive(Debug, Default)]
pub struct Echoer {
    header: HeaderBuf,
    /// The masking key and remaining payload of the frame being echoed, and the payload offset
    /// reached (for the key's rotation).
    payload: Option<PayloadState>,
}

#[derive(Debug, Clone, Copy)]
struct PayloadState {
    mask: [u8; 4],
    remaining: u64,
    offset: usize,
    close: bool,
}

impl Echoer {
    /// An echoer at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes from the client and appends the server's answer to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<EchoStatus, FrameError> {
        loop {
            let mut state = match self.payload.take() {
                Some(state) => state,
                None => {
                    let Some(header) = self.header.next(&mut data)? else {
                        return Ok(EchoStatus::Open);
                    };
                    let Some(mask) = header.mask else {
                        return Err(FrameError("client frame is not masked"));
                    };
                    let opcode = header.opcode();
                    let first = if opcode == OP_PING {
                        (header.first & 0xF0) | OP_PONG
                    } else {
                        header.first
                    };
                    write_header(out, first, header.payload_len, false);
                    PayloadState {
                        mask,
                        remaining: header.payload_len,
                        offset: 0,
                        close: opcode == OP_CLOSE,
                    }
                }
            };
            let take = state.remaining.min(data.len() as u64) as usize;
            let start = out.len();
            out.extend_from_slice(&data[..take]);
            unmask(&mut out[start..], state.mask, state.offset);
            data = &data[take..];
            state.remaining -= take as u64;
            state.offset = (state.offset + take) % 4;
            if state.remaining > 0 {
                self.payload = Some(state);
                return Ok(EchoStatus::Open);
            }
            if state.close {
                return Ok(EchoStatus::Closed);
            }
        }
    }
}

/// XORs `bytes` with `mask`, starting at position `offset` of the key.
pub fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: usize) {
    if mask == [0; 4] {
        return;
    }
    // The key as it lines up with `bytes[0..4]`: word-wise XOR in memory order then needs no
    // byte-order care.
    let key = std::array::from_fn::<u8, 4, _>(|i| mask[(offset + i) % 4]);
    let key = u32::from_ne_bytes(key);
    let mut chunks = bytes.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ key;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let key = key.to_ne_bytes();
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = Vec::new();
        write_header(&mut frame, 0x80 | opcode, payload.len() as u64, true);
        frame.truncate(frame.len() - 4); // drop the zero key written by `write_header`
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn header_lengths_round_trip() {
        for len in [0u64, 1, 125, 126, 127, 4096, 65535, 65536, 1 << 40] {
            for masked in [false, true] {
                let mut out = Vec::new();
                write_header(&mut out, 0x82, len, masked);
                let header = parse_header(&out).unwrap().unwrap();
                assert_eq!(header.payload_len, len);
                assert_eq!(header.header_len, out.len());
                assert_eq!(header.mask.is_some(), masked);
                assert_eq!(header.opcode(), OP_BINARY);
                // Every strict prefix is incomplete.
                for cut in 0..out.len() {
                    assert_eq!(parse_header(&out[..cut]).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn unmask_matches_bytewise_xor_at_every_offset() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..=255u8).collect();
        for offset in 0..4 {
            for len in [0, 1, 3, 4, 5, 17, 256] {
                let mut fast = data[..len].to_vec();
                unmask(&mut fast, mask, offset);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn echoer_unmasks_answers_pings_and_stops_at_close() {
        let mut input = masked(OP_TEXT, b"hello", [1, 2, 3, 4]);
        input.extend(masked(OP_PING, b"p", [9, 9, 9, 9]));
        input.extend(client_frame(OP_BINARY, &[7; 300]));
        input.extend(client_close_frame());
        input.extend(client_frame(OP_TEXT, b"after close"));

        // Feed in every split size to exercise partial headers and payloads.
        for chunk in 1..input.len() {
            let mut echoer = Echoer::new();
            let mut out = Vec::new();
            let mut status = EchoStatus::Open;
            for piece in input.chunks(chunk) {
                status = echoer.feed(piece, &mut out).unwrap();
                if status == EchoStatus::Closed {
                    break;
                }
            }
            assert_eq!(status, EchoStatus::Closed);

            let mut frames = Vec::new();
            let mut rest = &out[..];
            while !rest.is_empty() {
                let header = parse_header(rest).unwrap().unwrap();
                assert_eq!(header.mask, None);
                let end = header.header_len + header.payload_len as usize;
                frames.push((header.opcode(), rest[header.header_len..end].to_vec()));
                rest = &rest[end..];
            }
            assert_eq!(
                frames,
                vec![
                    (OP_TEXT, b"hello".to_vec()),
                    (OP_PONG, b"p".to_vec()),
                    (OP_BINARY, vec![7; 300]),
                    (OP_CLOSE, 1000u16.to_be_bytes().to_vec()),
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn echoer_rejects_unmasked_frames() {
        let mut frame = Vec::new();
        write_header(&mut frame, 0x81, 2, false);
        frame.extend_from_slice(b"hi");
        assert!(Echoer::new().feed(&frame, &mut Vec::new()).is_err());
    }

    #[test]
    fn close_finder_reads_the_code_across_any_split() {
        let mut stream = Vec::new();
        write_header(&mut stream, 0x80 | OP_BINARY, 3, false);
        stream.extend_from_slice(b"abc");
        write_header(&mut stream, 0x80 | OP_PING, 0, false);
        write_header(&mut stream, 0x80 | OP_CLOSE, 4, false);
        stream.extend_from_slice(&1001u16.to_be_bytes());
        stream.extend_from_slice(b"go");
        for split in 0..=stream.len() {
            let mut finder = CloseFinder::new();
            let first = finder.feed(&stream[..split]).unwrap();
            if split == stream.len() {
                assert_eq!(first, Some(1001));
            } else {
                assert_eq!(first, None, "split at {split}");
                assert_eq!(finder.feed(&stream[split..]).unwrap(), Some(1001));
            }
        }
        // Masked, and without a code.
        let mut finder = CloseFinder::new();
        assert_eq!(
            finder
                .feed(&masked(OP_CLOSE, &1012u16.to_be_bytes(), [1, 2, 3, 4]))
                .unwrap(),
            Some(1012)
        );
        let mut empty = Vec::new();
        write_header(&mut empty, 0x80 | OP_CLOSE, 0, false);
        assert_eq!(
            CloseFinder::new().feed(&empty).unwrap(),
            Some(NO_STATUS_CODE)
        );
        let mut huge = Vec::new();
        write_header(&mut huge, 0x80 | OP_BINARY, MAX_BUFFERED_FRAME + 1, false);
        assert!(CloseFinder::new().feed(&huge).is_err());
    }

    #[test]
    fn scanner_counts_frames_across_any_split() {
        let mut stream = Vec::new();
        for len in [0u64, 64, 4096, 70_000] {
            write_header(&mut stream, 0x82, len, false);
            stream.extend(std::iter::repeat_n(0xAB, len as usize));
        }
        write_header(&mut stream, 0x88, 2, false);
        stream.extend_from_slice(&1000u16.to_be_bytes());
        for chunk in [1, 2, 3, 13, 64, 4096, stream.len()] {
            let mut scanner = FrameScanner::new();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner
                    .feed(piece, |h| seen.push((h.opcode(), h.payload_len)))
                    .unwrap();
            }
            assert_eq!(
                seen,
                vec![
                    (OP_BINARY, 0),
                    (OP_BINARY, 64),
                    (OP_BINARY, 4096),
                    (OP_BINARY, 70_000),
                    (OP_CLOSE, 2)
                ],
                "chunk size {chunk}"
            );
        }
    }
}
