//! The session core without sockets: every row of the README's close-code table, every exit
//! rule, and property tests over arbitrary interleavings of events.

use super::*;
use crate::frame::{is_reserved_close_code, parse_header, CloseInfo};
use crate::outcome::Counters;
use crate::pump::direction::PENDING_LIMIT;
use crate::pump::limits::{OverLimit, SessionLimits};

const T0_IDLE: Duration = Duration::from_secs(60);

/// What one peer received from the core.
#[derive(Default)]
struct Peer {
    got: Vec<u8>,
    /// How many more bytes its socket takes; `None`: any number.
    room: Option<usize>,
    /// Its write side was shut down (FIN passed on).
    fin: bool,
    /// Its socket is gone: writes fail.
    gone: bool,
}

/// A recording [`Wire`]: the two peers as the core sees them.
#[derive(Default)]
struct Net {
    client: Peer,
    backend: Peer,
    client_closed: bool,
    backend_closed: bool,
    counters: Counters,
}

impl Net {
    /// The peer that receives what travels in `dir`.
    fn peer(&mut self, dir: Dir) -> &mut Peer {
        match dir {
            Dir::Up => &mut self.backend,
            Dir::Down => &mut self.client,
        }
    }
}

impl Wire for Net {
    fn send(&mut self, dir: Dir, bytes: &[u8]) -> io::Result<usize> {
        let peer = self.peer(dir);
        if peer.gone || peer.fin {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = peer.room.map_or(bytes.len(), |r| r.min(bytes.len()));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        peer.got.extend_from_slice(&bytes[..n]);
        if let Some(room) = &mut peer.room {
            *room -= n;
        }
        Ok(n)
    }
    fn shutdown_write(&mut self, dir: Dir) {
        self.peer(dir).fin = true;
    }
    fn close_client(&mut self) {
        self.client_closed = true;
        self.client.fin = true;
    }
    fn close_backend(&mut self) {
        self.backend_closed = true;
        self.backend.fin = true;
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
}

fn frames_cfg() -> PumpConfig {
    PumpConfig {
        frames: true,
        idle_timeout: T0_IDLE,
        keepalive: None,
        max_message_size: None,
    }
}

/// A session with its recording wire and a hand-moved clock.
struct Rig {
    s: Session,
    net: Net,
    now: Instant,
}

impl Rig {
    fn new(cfg: PumpConfig) -> Rig {
        let now = Instant::now();
        Rig {
            s: Session::new(cfg, now),
            net: Net::default(),
            now,
        }
    }
    fn frames() -> Rig {
        Rig::new(frames_cfg())
    }
    fn client_sends(&mut self, bytes: &[u8]) {
        self.s.on_bytes(Dir::Up, bytes, self.now, &mut self.net);
    }
    fn backend_sends(&mut self, bytes: &[u8]) {
        self.s.on_bytes(Dir::Down, bytes, self.now, &mut self.net);
    }
    fn ends(&mut self, dir: Dir, error: bool) {
        self.s.on_end(dir, error, self.now, &mut self.net);
    }
    /// A drain order as the route table sends one without a spread: shutdown closes at once
    /// and gives the peers `grace`; other drains let the session run for `grace` first.
    fn drain(&mut self, reason: DrainReason, grace: Duration) {
        match reason {
            DrainReason::Shutdown | DrainReason::Restart => {
                self.drain_in(reason, Duration::ZERO, grace)
            }
            _ => self.drain_in(reason, grace, CLOSE_HANDSHAKE_TIMEOUT),
        }
    }
    fn drain_in(&mut self, reason: DrainReason, close_in: Duration, answer_within: Duration) {
        self.s
            .on_drain(reason, close_in, answer_within, self.now, &mut self.net);
    }
    /// Moves the clock on by `d` and fires the timer if anything is due.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.now >= self.s.next_deadline() {
            self.s.on_timer(self.now, &mut self.net);
        }
    }
    fn writable(&mut self, dir: Dir) {
        self.s.on_writable(dir, true, self.now, &mut self.net);
    }
    fn done(&mut self) -> bool {
        self.s.poll_done(self.now)
    }
    fn to_client(&self) -> Vec<Frame> {
        frames_in(&self.net.client.got)
    }
    fn to_backend(&self) -> Vec<Frame> {
        frames_in(&self.net.backend.got)
    }
}

/// One frame as a peer received it: opcode, fin, unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    payload: Vec<u8>,
}

impl Frame {
    fn close(&self) -> Option<(Option<u16>, String)> {
        (self.opcode == OpCode::Close).then(|| {
            let info = CloseInfo::parse(&self.payload);
            (info.code, info.reason)
        })
    }
}

/// The complete frames in `bytes` (a trailing incomplete frame is left out).
fn frames_in(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = parse_header(&bytes[at..]) {
        let start = at + h.header_len as usize;
        let end = start + h.len as usize;
        if end > bytes.len() {
            break;
        }
        let mut payload = bytes[start..end].to_vec();
        if let Some(key) = h.mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        out.push(Frame {
            opcode: h.opcode,
            fin: h.fin,
            payload,
        });
        at = end;
    }
    out
}

/// A frame as a peer sends it (masked from the client, RFC 6455 §5.3).
fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
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
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn client_binary(payload: &[u8]) -> Vec<u8> {
    frame(0x2, true, payload, Some(KEY))
}
fn backend_binary(payload: &[u8]) -> Vec<u8> {
    frame(0x2, true, payload, None)
}
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}
fn client_close(code: u16, reason: &str) -> Vec<u8> {
    frame(0x8, true, &close_payload(code, reason), Some(KEY))
}
fn backend_close(code: u16, reason: &str) -> Vec<u8> {
    frame(0x8, true, &close_payload(code, reason), None)
}

/// The close frames a peer received, as `(code, reason)`.
fn closes(frames: &[Frame]) -> Vec<(Option<u16>, String)> {
    frames.iter().filter_map(Frame::close).collect()
}

fn one_close(code: u16, reason: &str) -> Vec<(Option<u16>, String)> {
    vec![(Some(code), reason.to_string())]
}

// ---- The README's close-code table, row by row ----

#[test]
fn a_peers_close_frame_is_forwarded_and_the_end_is_normal() {
    let mut r = Rig::frames();
    r.client_sends(&client_close(1000, "bye"));
    assert_eq!(closes(&r.to_backend()), one_close(1000, "bye"));
    assert_eq!(r.net.backend.got, client_close(1000, "bye"), "unchanged");
    assert!(!r.done(), "the backend has not answered");
    r.backend_sends(&backend_close(1000, "bye"));
    assert_eq!(closes(&r.to_client()), one_close(1000, "bye"));
    assert!(
        r.done(),
        "close frames went both ways: nothing more can be said"
    );
    let o = r.s.outcome();
    assert_eq!(o.cause, EndCause::Normal);
    assert_eq!(o.initiator, Some(Initiator::Client));
    assert_eq!(o.tether_close, None);
    assert_eq!(o.client_close.and_then(|c| c.code), Some(1000));
    assert_eq!(o.backend_close.and_then(|c| c.code), Some(1000));
}

#[test]
fn idle_for_request_timeout_sends_1001_idle_timeout_both_ways() {
    let mut r = Rig::frames();
    r.client_sends(&client_binary(b"hi"));
    r.advance(T0_IDLE - Duration::from_millis(1));
    assert!(closes(&r.to_client()).is_empty(), "not yet");
    r.advance(Duration::from_millis(1));
    assert_eq!(closes(&r.to_client()), one_close(1001, "idle timeout"));
    assert_eq!(closes(&r.to_backend()), one_close(1001, "idle timeout"));
    assert!(
        r.net.client.fin && r.net.backend.fin,
        "a FIN follows the close"
    );
    assert!(!r.done(), "the peers get the close grace to answer");
    r.client_sends(&client_close(1001, ""));
    r.backend_sends(&backend_close(1001, ""));
    assert!(r.done(), "both answered");
    let o = r.s.outcome();
    assert_eq!(o.cause, EndCause::IdleTimeout);
    assert_eq!(o.tether_close, Some(1001));
    assert_eq!(o.initiator, Some(Initiator::Tether));
}

#[test]
fn a_client_silent_for_twice_the_keepalive_is_unresponsive() {
    let interval = Duration::from_secs(10);
    let mut r = Rig::new(PumpConfig {
        keepalive: Some(interval),
        ..frames_cfg()
    });
    r.advance(interval);
    let pings: Vec<_> = r
        .to_client()
        .into_iter()
        .filter(|f| f.opcode == OpCode::Ping)
        .collect();
    assert_eq!(pings.len(), 1, "pinged after one interval of silence");
    assert_eq!(&pings[0].payload[..4], b"tthr");
    r.advance(interval);
    assert!(r.net.client_closed, "the client's socket is closed");
    assert_eq!(closes(&r.to_client()), vec![], "nothing more to the client");
    assert_eq!(
        closes(&r.to_backend()),
        one_close(1001, "client unresponsive")
    );
    r.backend_sends(&backend_close(1001, ""));
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::ClientUnresponsive);
}

#[test]
fn an_answered_ping_is_swallowed_and_keeps_a_quiet_session_alive() {
    let interval = Duration::from_secs(10);
    let mut r = Rig::new(PumpConfig {
        keepalive: Some(interval),
        idle_timeout: Duration::from_secs(600),
        ..frames_cfg()
    });
    for round in 1..=5u32 {
        r.advance(interval);
        let ping = r
            .to_client()
            .into_iter()
            .rfind(|f| f.opcode == OpCode::Ping)
            .expect("a ping");
        assert_eq!(&ping.payload[4..], &round.to_be_bytes());
        r.now += Duration::from_millis(7);
        r.client_sends(&frame(0xA, true, &ping.payload, Some(KEY)));
    }
    assert!(r.net.backend.got.is_empty(), "the pongs are Tether's");
    assert!(!r.net.client_closed);
    assert_eq!(r.s.ping.rtt_last(), Some(Duration::from_millis(7)));
    // Another pong passes through.
    r.client_sends(&frame(0xA, true, b"other", Some(KEY)));
    assert_eq!(r.to_backend().len(), 1);
}

#[test]
fn a_backend_that_ends_without_a_close_frame_gets_the_client_1014() {
    for error in [false, true] {
        let mut r = Rig::frames();
        r.ends(Dir::Down, error);
        assert_eq!(closes(&r.to_client()), one_close(1014, "backend lost"));
        assert!(r.to_backend().is_empty());
        assert!(!r.net.backend.fin, "a half-close is not a close");
        r.client_sends(&client_close(1000, ""));
        assert!(r.done());
        let o = r.s.outcome();
        assert_eq!(o.cause, EndCause::BackendLost);
        assert_eq!(o.tether_close, Some(1014));
    }
}

#[test]
fn a_client_that_ends_without_a_close_frame_gets_the_backend_1001_client_lost() {
    for error in [false, true] {
        let mut r = Rig::frames();
        r.ends(Dir::Up, error);
        assert_eq!(closes(&r.to_backend()), one_close(1001, "client lost"));
        let h = parse_header(&r.net.backend.got).unwrap();
        assert!(h.mask.is_some(), "masked towards the backend");
        assert!(r.to_client().is_empty());
        r.backend_sends(&backend_close(1000, ""));
        assert!(r.done());
        assert_eq!(r.s.outcome().cause, EndCause::ClientLost);
    }
}

fn limited(max: u64) -> Rig {
    Rig::new(PumpConfig {
        max_message_size: Some(max),
        ..frames_cfg()
    })
}

#[test]
fn a_client_message_over_the_limit_gets_1009_and_the_backend_1001() {
    let mut r = limited(100);
    r.client_sends(&client_binary(&[7; 100]));
    assert_eq!(r.to_backend().len(), 1, "at the limit: forwarded");
    r.client_sends(&client_binary(&[7; 101]));
    assert_eq!(closes(&r.to_client()), one_close(1009, "message too big"));
    let to_backend = r.to_backend();
    assert_eq!(to_backend.len(), 2, "none of the oversize frame went out");
    assert_eq!(closes(&to_backend), one_close(1001, "going away"));
    assert_eq!(r.s.cause, Some(EndCause::MessageTooBig));
}

#[test]
fn a_backend_message_over_the_limit_gets_1009_and_the_client_1001() {
    let mut r = limited(100);
    // A fragmented message: the first fragment goes, the one taking it over does not.
    r.backend_sends(&frame(0x2, false, &[1; 60], None));
    r.backend_sends(&frame(0x0, true, &[1; 60], None));
    let to_client = r.to_client();
    assert_eq!(to_client.len(), 2);
    assert_eq!(to_client[0].payload, vec![1; 60]);
    assert_eq!(closes(&to_client), one_close(1001, "going away"));
    assert_eq!(closes(&r.to_backend()), one_close(1009, "message too big"));
    r.backend_sends(&backend_binary(b"after"));
    assert_eq!(r.to_client().len(), 2, "nothing after Tether's close");
    r.client_sends(&client_close(1009, ""));
    r.ends(Dir::Down, false);
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::MessageTooBig);
}

#[test]
fn shutdown_sends_1001_going_away_and_gives_the_grace() {
    let mut r = Rig::frames();
    let grace = Duration::from_secs(9);
    r.drain(DrainReason::Shutdown, grace);
    assert_eq!(closes(&r.to_client()), one_close(1001, "going away"));
    assert_eq!(closes(&r.to_backend()), one_close(1001, "going away"));
    assert_eq!(r.s.next_deadline(), r.now + grace);
    r.now += grace;
    assert!(r.done(), "the grace is over");
    assert_eq!(r.s.outcome().cause, EndCause::Drain);

    let mut r = Rig::frames();
    r.drain(DrainReason::Restart, grace);
    assert_eq!(closes(&r.to_client()), one_close(1012, "service restart"));
    assert_eq!(closes(&r.to_backend()), one_close(1012, "service restart"));
}

#[test]
fn a_removed_route_drains_after_the_grace() {
    let mut r = Rig::frames();
    r.drain(DrainReason::RouteRemoved, Duration::from_secs(3));
    assert!(r.to_client().is_empty(), "in-flight messages finish first");
    r.advance(Duration::from_secs(3));
    assert_eq!(closes(&r.to_client()), one_close(1001, "going away"));
    assert_eq!(closes(&r.to_backend()), one_close(1001, "going away"));
    assert_eq!(r.s.cause, Some(EndCause::Drain));
}

#[test]
fn an_unhealthy_backend_drains_after_the_grace_as_backend_unhealthy() {
    let mut r = Rig::frames();
    r.drain(DrainReason::BackendUnhealthy, Duration::from_secs(5));
    r.drain(DrainReason::BackendUnhealthy, Duration::from_secs(8));
    assert_eq!(
        r.s.next_deadline(),
        r.now + Duration::from_secs(5),
        "the earlier"
    );
    r.advance(Duration::from_secs(4));
    assert!(r.to_client().is_empty());
    r.advance(Duration::from_secs(1));
    assert_eq!(closes(&r.to_client()), one_close(1001, "going away"));
    assert_eq!(closes(&r.to_backend()), one_close(1001, "going away"));
    r.now += CLOSE_HANDSHAKE_TIMEOUT;
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::BackendUnhealthy);
}

#[test]
fn reserved_close_codes_are_replaced_by_1002_both_ways() {
    for code in [1005, 1006, 1015] {
        let mut r = Rig::frames();
        r.client_sends(&client_close(code, "x"));
        assert_eq!(
            closes(&r.to_backend()),
            one_close(1002, "reserved close code")
        );
        assert!(parse_header(&r.net.backend.got).unwrap().mask.is_some());
        r.backend_sends(&backend_close(code, "x"));
        assert_eq!(
            closes(&r.to_client()),
            one_close(1002, "reserved close code")
        );
        assert!(parse_header(&r.net.client.got).unwrap().mask.is_none());
        let o = r.s.outcome();
        assert_eq!(o.client_close.and_then(|c| c.code), Some(code), "recorded");
        assert_eq!(o.tether_close, None, "forwarded, not Tether's own");
    }
}

#[test]
fn after_tethers_close_the_peers_get_the_close_grace_then_the_session_ends() {
    let mut r = Rig::frames();
    r.advance(T0_IDLE);
    let closed_at = r.now;
    r.now = closed_at + CLOSE_HANDSHAKE_TIMEOUT - Duration::from_millis(1);
    assert!(!r.done());
    r.now = closed_at + CLOSE_HANDSHAKE_TIMEOUT;
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::IdleTimeout);
}

#[test]
fn nothing_goes_to_a_peer_after_tethers_close() {
    let mut r = Rig::frames();
    r.advance(T0_IDLE);
    let sent = (r.net.client.got.len(), r.net.backend.got.len());
    r.backend_sends(&backend_binary(b"late"));
    r.client_sends(&client_binary(b"late"));
    assert_eq!((r.net.client.got.len(), r.net.backend.got.len()), sent);
    r.drain(DrainReason::Shutdown, Duration::from_secs(1));
    assert_eq!(closes(&r.to_client()).len(), 1, "no second close");
}

// ---- Scheduled drains and per-session limits ----

#[test]
fn a_drain_scheduled_later_closes_then_with_its_reasons_frame() {
    let mut r = Rig::frames();
    r.drain_in(
        DrainReason::Restart,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    assert!(r.to_client().is_empty(), "not before its slot");
    assert_eq!(r.s.next_deadline(), r.now + Duration::from_secs(2));
    r.advance(Duration::from_millis(1999));
    assert!(r.to_client().is_empty());
    r.advance(Duration::from_millis(1));
    assert_eq!(closes(&r.to_client()), one_close(1012, "service restart"));
    assert_eq!(closes(&r.to_backend()), one_close(1012, "service restart"));
    assert_eq!(r.s.cause, Some(EndCause::Drain));
}

fn with_limits(limits: SessionLimits) -> Rig {
    let now = Instant::now();
    Rig {
        s: Session::with_limits(frames_cfg(), limits, now),
        net: Net::default(),
        now,
    }
}

fn rate(per_second: u64, burst: u64) -> crate::token_bucket::Rate {
    crate::token_bucket::Rate { per_second, burst }
}

#[test]
fn a_client_over_its_message_rate_gets_1008_and_the_backend_1001() {
    let mut r = with_limits(SessionLimits {
        messages: Some(rate(2, 2)),
        ..SessionLimits::default()
    });
    r.client_sends(&client_binary(b"one"));
    r.client_sends(&client_binary(b"two"));
    // Fragments and control frames of a message do not count as messages.
    r.client_sends(&frame(0x1, false, b"th", Some(KEY)));
    assert_eq!(
        closes(&r.to_client()),
        one_close(1008, "message rate exceeded")
    );
    let to_backend = r.to_backend();
    assert_eq!(
        to_backend.len(),
        3,
        "the message over the rate was not forwarded"
    );
    assert_eq!(closes(&to_backend), one_close(1001, "going away"));
    assert_eq!(r.s.cause, Some(EndCause::MessageRate));
    // Nothing more is read from a stream whose frame was refused: the client's end is.
    r.ends(Dir::Up, false);
    r.backend_sends(&backend_close(1001, ""));
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::MessageRate);
}

#[test]
fn a_client_within_its_rates_is_never_touched() {
    let mut r = with_limits(SessionLimits {
        messages: Some(rate(10, 2)),
        bytes: Some(rate(1000, 200)),
        ..SessionLimits::default()
    });
    for _ in 0..100 {
        r.client_sends(&client_binary(&[1; 100]));
        r.client_sends(&frame(0x9, true, b"ping", Some(KEY)));
        r.advance(Duration::from_millis(100));
    }
    assert_eq!(r.to_backend().len(), 200);
    assert!(r.to_client().is_empty());
    assert_eq!(r.s.cause, None);
}

#[test]
fn a_client_over_its_byte_rate_gets_1008_naming_the_byte_rate() {
    let mut r = with_limits(SessionLimits {
        bytes: Some(rate(100, 100)),
        ..SessionLimits::default()
    });
    r.client_sends(&frame(0x2, false, &[1; 60], Some(KEY)));
    r.client_sends(&frame(0x0, true, &[1; 60], Some(KEY)));
    assert_eq!(
        closes(&r.to_client()),
        one_close(1008, "byte rate exceeded")
    );
    assert_eq!(r.to_backend().len(), 2, "first fragment and the 1001");
    assert_eq!(r.s.cause, Some(EndCause::ByteRate));
}

#[test]
fn with_the_delay_action_a_client_over_its_rate_is_paced_not_closed() {
    let mut r = with_limits(SessionLimits {
        messages: Some(rate(1, 1)),
        over_limit: OverLimit::Delay,
        ..SessionLimits::default()
    });
    let two = [client_binary(b"a"), client_binary(b"b")].concat();
    r.client_sends(&two);
    assert_eq!(
        r.to_backend().len(),
        2,
        "what was read goes on: nothing is held"
    );
    assert!(!r.s.can_read(Dir::Up), "reads wait");
    assert!(r.s.can_read(Dir::Down), "the backend is not paced");
    assert_eq!(r.s.next_deadline(), r.now + Duration::from_secs(1));
    r.advance(Duration::from_millis(999));
    assert!(!r.s.can_read(Dir::Up));
    r.advance(Duration::from_millis(1));
    assert!(r.s.can_read(Dir::Up), "the bucket is back within its burst");
    assert!(r.to_client().is_empty());
    assert_eq!(r.s.cause, None);
}

fn slow(dir: Dir, timeout: Duration) -> Rig {
    let mut r = with_limits(SessionLimits {
        slow_consumer_timeout: Some(timeout),
        ..SessionLimits::default()
    });
    r.net.peer(dir).room = Some(0);
    let chunk = match dir {
        Dir::Up => frame(0x2, true, &[0; 8192], Some(KEY)),
        Dir::Down => backend_binary(&[0; 8192]),
    };
    while r.s.can_read(dir) {
        r.s.on_bytes(dir, &chunk, r.now, &mut r.net);
    }
    r
}

#[test]
fn a_client_that_reads_nothing_with_a_full_buffer_ends_as_slow_consumer() {
    let timeout = Duration::from_secs(10);
    let mut r = slow(Dir::Down, timeout);
    assert_eq!(r.s.next_deadline(), r.now + timeout);
    r.advance(timeout - Duration::from_millis(1));
    assert!(!r.net.client_closed);
    r.advance(Duration::from_millis(1));
    assert!(r.net.client_closed, "its socket is closed");
    assert_eq!(closes(&r.to_backend()), one_close(1001, "client too slow"));
    assert_eq!(r.s.cause, Some(EndCause::SlowConsumer));
    r.backend_sends(&backend_close(1001, ""));
    assert!(
        r.done(),
        "the backend answered; nothing waits for the client"
    );
    let o = r.s.outcome();
    assert_eq!(
        (o.cause, o.tether_close),
        (EndCause::SlowConsumer, Some(1001))
    );
}

#[test]
fn a_backend_that_reads_nothing_ends_as_slow_consumer_with_1013_to_the_client() {
    let timeout = Duration::from_secs(10);
    let mut r = slow(Dir::Up, timeout);
    r.advance(timeout);
    assert!(r.net.backend_closed);
    assert_eq!(closes(&r.to_client()), one_close(1013, "backend too slow"));
    r.client_sends(&client_close(1013, ""));
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::SlowConsumer);
}

#[test]
fn a_consumer_that_reads_some_starts_the_slow_timeout_over() {
    let timeout = Duration::from_secs(10);
    let mut r = slow(Dir::Down, timeout);
    r.advance(Duration::from_secs(9));
    r.net.client.room = Some(8192);
    r.writable(Dir::Down);
    assert!(r.s.can_read(Dir::Down), "below the limit again");
    r.backend_sends(&backend_binary(&[0; 16384]));
    r.advance(Duration::from_secs(9));
    assert_eq!(r.s.cause, None, "full again only since 9 s");
    r.advance(Duration::from_secs(1));
    assert_eq!(r.s.cause, Some(EndCause::SlowConsumer));
}

#[test]
fn a_session_past_its_max_age_closes_with_1001_max_session_age() {
    let mut r = with_limits(SessionLimits {
        max_age: Some(Duration::from_secs(100)),
        ..SessionLimits::default()
    });
    r.client_sends(&client_binary(b"hi"));
    assert_eq!(
        r.s.next_deadline(),
        r.now + Duration::from_secs(60),
        "idle first"
    );
    r.advance(Duration::from_secs(50));
    r.client_sends(&client_binary(b"hi"));
    r.advance(Duration::from_secs(49));
    r.client_sends(&client_binary(b"hi"));
    assert!(r.to_client().is_empty());
    r.advance(Duration::from_secs(1));
    assert_eq!(closes(&r.to_client()), one_close(1001, "max session age"));
    assert_eq!(closes(&r.to_backend()), one_close(1001, "max session age"));
    assert_eq!(r.s.cause, Some(EndCause::MaxSessionAge));
}

#[test]
fn a_session_without_rates_carries_no_rate_state() {
    let r = with_limits(SessionLimits::default());
    assert!(!r.s.limits.has_rates());
    // The slow-consumer clock (on by default) keeps the rates' box away too.
    let r = with_limits(SessionLimits {
        slow_consumer_timeout: Some(Duration::from_secs(30)),
        ..SessionLimits::default()
    });
    assert!(!r.s.limits.has_rates());
}

// ---- Hang-up while a source is not read ----

/// A rig whose `dir` destination takes nothing and has a full pending buffer.
fn stalled(dir: Dir) -> Rig {
    let mut r = Rig::frames();
    r.net.peer(dir).room = Some(0);
    let chunk = match dir {
        Dir::Up => frame(0x2, true, &[0; 8192], Some(KEY)),
        Dir::Down => backend_binary(&[0; 8192]),
    };
    while r.s.can_read(dir) {
        r.s.on_bytes(dir, &chunk, r.now, &mut r.net);
    }
    r
}

#[test]
fn only_a_direction_stopped_by_a_full_destination_watches_for_a_hang_up() {
    let mut r = Rig::frames();
    assert!(!r.s.watches_hangup(Dir::Up), "still reading");
    let mut r2 = stalled(Dir::Up);
    assert!(r2.s.watches_hangup(Dir::Up));
    assert!(r2.s.up.pending.len() >= PENDING_LIMIT);
    r2.s.on_hangup(Dir::Up, r2.now);
    assert!(!r2.s.watches_hangup(Dir::Up), "already noticed");
    r.s.up.close = Some(Box::new(CloseInfo::parse(&[0x03, 0xe8])));
    r.s.up.pending = vec![0; PENDING_LIMIT];
    assert!(
        !r.s.watches_hangup(Dir::Up),
        "said goodbye: its end is expected"
    );
    let mut opaque = Rig::new(PumpConfig {
        frames: false,
        ..frames_cfg()
    });
    opaque.s.up.pending = vec![0; PENDING_LIMIT];
    assert!(
        !opaque.s.watches_hangup(Dir::Up),
        "a byte pipe has no watch"
    );
}

#[test]
fn a_stalled_client_that_hangs_up_gets_the_grace_then_ends_as_client_lost() {
    let mut r = stalled(Dir::Up);
    r.s.on_hangup(Dir::Up, r.now);
    assert_eq!(r.s.next_deadline(), r.now + CLOSE_HANDSHAKE_TIMEOUT);
    assert_eq!(r.s.cause, None, "not decided while its bytes may be read");
    assert!(
        r.s.up.queued.is_none(),
        "no close frame before its end is read"
    );
    r.advance(CLOSE_HANDSHAKE_TIMEOUT - Duration::from_millis(1));
    assert!(!r.done());
    r.advance(Duration::from_millis(1));
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::ClientLost);
}

#[test]
fn the_end_of_a_hung_up_client_read_later_sends_the_backend_1001() {
    let mut r = stalled(Dir::Up);
    r.s.on_hangup(Dir::Up, r.now);
    r.net.backend.room = None;
    r.writable(Dir::Up);
    r.ends(Dir::Up, false);
    assert_eq!(closes(&r.to_backend()), one_close(1001, "client lost"));
    assert_eq!(r.s.cause, Some(EndCause::ClientLost));
    assert_eq!(r.s.tether_close, Some(1001));
}

#[test]
fn a_close_frame_read_after_the_hang_up_makes_the_end_normal() {
    let mut r = stalled(Dir::Up);
    r.s.on_hangup(Dir::Up, r.now);
    r.net.backend.room = None;
    r.writable(Dir::Up);
    r.client_sends(&client_close(1000, ""));
    r.ends(Dir::Up, false);
    assert_eq!(
        closes(&r.to_backend()),
        one_close(1000, ""),
        "forwarded only"
    );
    r.now += CLOSE_HANDSHAKE_TIMEOUT;
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::Normal);
}

#[test]
fn a_stalled_backend_that_hangs_up_ends_as_backend_lost() {
    let mut r = stalled(Dir::Down);
    r.s.on_hangup(Dir::Down, r.now);
    r.now += CLOSE_HANDSHAKE_TIMEOUT;
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::BackendLost);

    let mut r = stalled(Dir::Down);
    r.s.on_hangup(Dir::Down, r.now);
    r.ends(Dir::Down, true);
    assert_eq!(r.s.cause, Some(EndCause::BackendLost));
    assert_eq!(r.s.tether_close, Some(1014));
    assert!(
        r.s.down.queued.is_none(),
        "queued behind the bytes before it"
    );
    r.net.client.room = None;
    r.writable(Dir::Down);
    let to_client = r.to_client();
    assert_eq!(closes(&to_client), one_close(1014, "backend lost"));
    assert_eq!(
        to_client.last().and_then(Frame::close).map(|c| c.0),
        Some(Some(1014))
    );
}

// ---- Frame boundaries, limits and failures ----

#[test]
fn a_queued_close_waits_for_a_frame_boundary() {
    let mut r = Rig::frames();
    let message = client_binary(&[5; 300]);
    r.client_sends(&message[..100]);
    r.advance(T0_IDLE);
    assert_eq!(
        r.net.backend.got,
        message[..100],
        "mid-frame: nothing injected"
    );
    r.client_sends(&message[100..]);
    let to_backend = r.to_backend();
    assert_eq!(to_backend.len(), 2);
    assert_eq!(to_backend[0].payload, vec![5; 300]);
    assert_eq!(closes(&to_backend), one_close(1001, "idle timeout"));
}

/// A ping that waits for a frame boundary (the backend is mid-frame) is not due again while it
/// waits: the next deadline always lies ahead of a timer that has just fired, or the driver's
/// timer would fire again at once, over and over, until the boundary came (found by the
/// interleaving property test).
#[test]
fn a_ping_waiting_for_a_frame_boundary_does_not_keep_the_timer_due() {
    let interval = Duration::from_secs(10);
    let mut r = Rig::new(PumpConfig {
        keepalive: Some(interval),
        ..frames_cfg()
    });
    let message = backend_binary(&[7; 3000]);
    r.backend_sends(&message[..4]);
    // The ping is queued behind the backend's frame; the client is alive.
    r.advance(interval);
    r.client_sends(&client_binary(b"x"));
    // One interval later the next ping would be due, but the first still waits.
    r.now += interval;
    r.s.on_timer(r.now, &mut r.net);
    assert!(
        r.s.next_deadline() > r.now,
        "a deadline at or before the timer that just fired"
    );
    assert!(!r.done());
    r.backend_sends(&message[4..]);
    let pings = r
        .to_client()
        .into_iter()
        .filter(|f| f.opcode == OpCode::Ping)
        .count();
    assert_eq!(pings, 1, "the queued ping goes out at the boundary");
}

#[test]
fn a_source_that_ends_mid_frame_gets_a_fin_instead_of_the_close() {
    let mut r = Rig::frames();
    let message = client_binary(&[5; 300]);
    r.client_sends(&message[..100]);
    r.advance(T0_IDLE);
    r.ends(Dir::Up, false);
    assert_eq!(r.net.backend.got, message[..100]);
    assert!(r.net.backend.fin);
}

#[test]
fn a_truncated_header_at_the_end_still_goes_through() {
    let mut r = Rig::frames();
    let message = client_binary(&[5; 300]);
    r.client_sends(&message[..3]);
    assert!(r.net.backend.got.is_empty(), "a split header is withheld");
    r.ends(Dir::Up, false);
    assert!(
        r.s.up.pending.starts_with(&message[..3]),
        "delivered as it is, ahead of anything else"
    );
}

#[test]
fn a_direction_stops_reading_at_the_pending_limit_and_frees_its_buffer_once_flushed() {
    let mut r = stalled(Dir::Down);
    assert!(!r.s.can_read(Dir::Down));
    assert!(r.s.down.pending.len() < PENDING_LIMIT + 8192 + 14);
    assert!(r.s.wants_write(Dir::Down));
    r.net.client.room = Some(1000);
    r.writable(Dir::Down);
    assert!(r.s.wants_write(Dir::Down), "partly flushed");
    r.net.client.room = None;
    r.writable(Dir::Down);
    assert!(r.s.can_read(Dir::Down));
    assert_eq!(r.s.down.pending.capacity(), 0, "freed");
}

#[test]
fn a_failed_write_is_the_peer_lost() {
    let mut r = Rig::frames();
    r.net.backend.gone = true;
    r.client_sends(&client_binary(b"x"));
    assert_eq!(closes(&r.to_client()), one_close(1014, "backend lost"));
    assert_eq!(r.s.cause, Some(EndCause::BackendLost));
    let mut r = Rig::frames();
    r.net.client.room = Some(0);
    r.backend_sends(&backend_binary(b"x"));
    r.s.on_writable(Dir::Down, false, r.now, &mut r.net);
    assert_eq!(closes(&r.to_backend()), one_close(1001, "client lost"));
    assert_eq!(r.s.cause, Some(EndCause::ClientLost));
}

#[test]
fn the_first_cause_wins() {
    let mut r = Rig::frames();
    r.advance(T0_IDLE);
    r.ends(Dir::Down, true);
    r.drain(DrainReason::Shutdown, Duration::from_secs(1));
    r.now += CLOSE_HANDSHAKE_TIMEOUT;
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::IdleTimeout);
}

// ---- Opaque mode ----

fn opaque() -> Rig {
    Rig::new(PumpConfig {
        frames: false,
        ..frames_cfg()
    })
}

#[test]
fn opaque_sessions_pass_bytes_and_half_closes_and_end_normally() {
    let mut r = opaque();
    r.client_sends(b"\x88\x02\x03\xee not a frame boundary");
    assert_eq!(r.net.backend.got, b"\x88\x02\x03\xee not a frame boundary");
    r.ends(Dir::Up, false);
    assert!(r.net.backend.fin, "the half-close passes through");
    assert!(!r.done());
    r.backend_sends(b"still talking");
    assert_eq!(r.net.client.got, b"still talking");
    r.ends(Dir::Down, false);
    assert!(r.done(), "both sources ended");
    assert_eq!(r.s.outcome().cause, EndCause::Normal);
}

#[test]
fn opaque_sessions_close_sockets_instead_of_sending_frames() {
    let mut r = opaque();
    r.advance(T0_IDLE);
    assert!(r.net.client.got.is_empty() && r.net.backend.got.is_empty());
    assert!(r.done(), "closed at once");
    assert_eq!(r.s.outcome().cause, EndCause::IdleTimeout);

    let mut r = opaque();
    r.drain(DrainReason::Shutdown, Duration::from_secs(30));
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::Drain);

    let mut r = opaque();
    r.ends(Dir::Down, true);
    r.ends(Dir::Up, false);
    assert!(r.done());
    assert_eq!(
        r.s.outcome().cause,
        EndCause::BackendLost,
        "a reset is a loss"
    );
}

// ---- Exit rules ----

#[test]
fn exit_waits_until_every_destination_took_its_bytes() {
    let mut r = opaque();
    r.net.backend.room = Some(0);
    r.client_sends(b"abc");
    r.ends(Dir::Up, false);
    r.ends(Dir::Down, false);
    assert!(!r.done(), "bytes still wait for the backend");
    assert!(!r.net.backend.fin, "the FIN follows them");
    r.net.backend.room = None;
    r.writable(Dir::Up);
    assert!(r.net.backend.fin);
    assert!(r.done());
}

#[test]
fn exit_when_tethers_close_was_answered_by_close_frames_without_an_end() {
    let mut r = Rig::frames();
    r.drain(DrainReason::Shutdown, Duration::from_secs(30));
    r.client_sends(&client_close(1001, ""));
    assert!(!r.done(), "the backend has not answered");
    r.backend_sends(&backend_close(1001, ""));
    assert!(r.done());
}

#[test]
fn exit_once_close_frames_went_both_ways_and_every_write_settled() {
    let mut r = Rig::frames();
    r.net.backend.room = Some(0);
    r.backend_sends(&backend_close(4000, "app"));
    r.client_sends(&client_close(4000, "app"));
    assert_eq!(r.s.next_deadline(), r.now + CLOSE_HANDSHAKE_TIMEOUT);
    assert!(!r.done(), "the client's close still waits for the backend");
    r.now += CLOSE_HANDSHAKE_TIMEOUT;
    assert!(r.done(), "a peer that takes nothing is not waited for");
    let o = r.s.outcome();
    assert_eq!(o.cause, EndCause::Normal);
    assert_eq!(o.initiator, Some(Initiator::Backend));
}

#[test]
fn done_is_final_and_the_cause_is_recorded_once() {
    let mut r = Rig::frames();
    r.ends(Dir::Up, false);
    r.ends(Dir::Down, false);
    assert!(r.done());
    assert_eq!(
        r.s.phase,
        Phase::Done {
            cause: EndCause::ClientLost
        }
    );
    assert!(r.done());
    assert_eq!(r.s.outcome().cause, EndCause::ClientLost);
}

#[test]
fn counters_count_bytes_and_complete_messages() {
    let mut r = Rig::frames();
    let first = frame(0x1, false, b"he", Some(KEY));
    let rest = frame(0x0, true, b"llo", Some(KEY));
    r.client_sends(&first);
    r.client_sends(&rest);
    r.backend_sends(&backend_binary(b"x"));
    let c = &r.net.counters;
    assert_eq!(c.client_bytes.get(), (first.len() + rest.len()) as u64);
    assert_eq!(c.client_messages.get(), 1);
    assert_eq!(c.backend_messages.get(), 1);
    assert_eq!(c.backend_bytes.get(), 3);
}

// ---- Properties over arbitrary interleavings ----

mod props {
    /// Found by the interleaving property: the client sends one byte of a frame header, then
    /// is lost. That byte still goes to the backend (a truncated stream passes unchanged), so
    /// no close frame of Tether's may follow it — it would be read as the rest of the header.
    /// The backend gets the byte and a FIN instead.
    #[test]
    fn no_close_frame_follows_a_truncated_header() {
        let cfg = PumpConfig {
            frames: true,
            idle_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(10)),
            max_message_size: None,
        };
        let client = encode(&[Sent::Data { fin: false, len: 0 }], Some(KEY), 0);
        let run = play(
            cfg,
            client.clone(),
            Vec::new(),
            &[Ev::Read(true, 1), Ev::Fail(false)],
        );
        assert_eq!(run.rig.net.backend.got, client[..1]);
        assert_eq!(run.outcome.cause, EndCause::ClientLost);
        check_frames_run(&run);
    }

    use super::*;
    use proptest::prelude::*;

    /// The reasons of Tether's own close frames.
    const TETHER_REASONS: [&str; 7] = [
        "idle timeout",
        "client unresponsive",
        "backend lost",
        "client lost",
        "message too big",
        "going away",
        "service restart",
    ];

    /// A frame a peer sends, before it is encoded.
    #[derive(Debug, Clone)]
    enum Sent {
        Data { fin: bool, len: usize },
        Close(u16),
        Ping(u8),
        Pong(u8),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            6 => (any::<bool>(), 0usize..20_000).prop_map(|(fin, len)| Sent::Data { fin, len }),
            1 => prop::sample::select(vec![1000u16, 1001, 1005, 1006, 1011, 1015, 4000])
                .prop_map(Sent::Close),
            1 => (0u8..20).prop_map(Sent::Ping),
            1 => (0u8..20).prop_map(Sent::Pong),
        ]
    }

    /// Encodes a peer's frames; data frames of a message keep a valid opcode sequence.
    fn encode(frames: &[Sent], mask: Option<[u8; 4]>, seed: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let mut in_message = false;
        for (i, f) in frames.iter().enumerate() {
            let fill = |len: usize| -> Vec<u8> {
                (0..len)
                    .map(|j| (j as u8).wrapping_add(seed ^ i as u8))
                    .collect()
            };
            match f {
                Sent::Data { fin, len } => {
                    let op = if in_message { 0x0 } else { 0x2 };
                    out.extend(frame(op, *fin, &fill(*len), mask));
                    in_message = !fin;
                }
                Sent::Close(code) => {
                    out.extend(frame(0x8, true, &close_payload(*code, "peer"), mask))
                }
                Sent::Ping(len) => out.extend(frame(0x9, true, &fill(*len as usize), mask)),
                Sent::Pong(len) => out.extend(frame(0xA, true, &fill(*len as usize), mask)),
            }
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Read(bool, usize),
        End(bool, bool),
        HangUp(bool),
        Room(bool, usize),
        Fail(bool),
        Tick(u64),
        Drain(u8, u64),
    }

    fn dir(up: bool) -> Dir {
        if up {
            Dir::Up
        } else {
            Dir::Down
        }
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            8 => (any::<bool>(), 1usize..9000).prop_map(|(u, n)| Ev::Read(u, n)),
            1 => (any::<bool>(), any::<bool>()).prop_map(|(u, e)| Ev::End(u, e)),
            1 => any::<bool>().prop_map(Ev::HangUp),
            4 => (any::<bool>(), 0usize..40_000).prop_map(|(u, n)| Ev::Room(u, n)),
            1 => any::<bool>().prop_map(Ev::Fail),
            3 => (0u64..40_000).prop_map(Ev::Tick),
            1 => (0u8..4, 0u64..10_000).prop_map(|(r, g)| Ev::Drain(r, g)),
        ]
    }

    fn reason(r: u8) -> DrainReason {
        match r {
            0 => DrainReason::Shutdown,
            1 => DrainReason::Restart,
            2 => DrainReason::BackendUnhealthy,
            _ => DrainReason::RouteRemoved,
        }
    }

    /// One run: what each peer sent and was read of it, what each received, how it ended.
    struct Run {
        cfg: PumpConfig,
        streams: [Vec<u8>; 2],
        read: [usize; 2],
        rig: Rig,
        outcome: Outcome,
        first_cause: Option<EndCause>,
    }

    fn idx(d: Dir) -> usize {
        match d {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }

    fn play(cfg: PumpConfig, client: Vec<u8>, backend: Vec<u8>, events: &[Ev]) -> Run {
        let mut rig = Rig::new(cfg);
        rig.net.client.room = Some(0);
        rig.net.backend.room = Some(0);
        let streams = [client, backend];
        let mut read = [0usize; 2];
        let mut first_cause = None;
        let check = |rig: &Rig, first: &mut Option<EndCause>| {
            match (*first, rig.s.cause) {
                (None, c) => *first = c,
                (Some(a), b) => assert_eq!(Some(a), b, "a recorded cause never changes"),
            }
            for h in [&rig.s.up, &rig.s.down] {
                assert!(
                    h.pending.len() <= PENDING_LIMIT + 9000 + 2 + 4 + 125,
                    "pending {} over the bound",
                    h.pending.len()
                );
            }
        };
        for e in events {
            if rig.s.poll_done(rig.now) {
                break;
            }
            match *e {
                Ev::Read(up, n) => {
                    let d = dir(up);
                    let i = idx(d);
                    if rig.s.can_read(d) && read[i] < streams[i].len() {
                        let end = (read[i] + n).min(streams[i].len());
                        let chunk = &streams[i][read[i]..end];
                        read[i] = end;
                        rig.s.on_bytes(d, chunk, rig.now, &mut rig.net);
                    }
                }
                Ev::End(up, error) => {
                    let d = dir(up);
                    if rig.s.can_read(d) {
                        rig.ends(d, error);
                    }
                }
                Ev::HangUp(up) => {
                    let d = dir(up);
                    if rig.s.watches_hangup(d) {
                        rig.s.on_hangup(d, rig.now);
                    }
                }
                Ev::Room(up, n) => {
                    let d = dir(up);
                    let peer = rig.net.peer(d);
                    peer.room = Some(peer.room.unwrap_or(0) + n);
                    if rig.s.wants_write(d) {
                        rig.writable(d);
                    }
                }
                Ev::Fail(up) => {
                    let d = dir(up);
                    rig.net.peer(d).gone = true;
                    if rig.s.wants_write(d) {
                        rig.s.on_writable(d, false, rig.now, &mut rig.net);
                    }
                }
                Ev::Tick(ms) => rig.advance(Duration::from_millis(ms)),
                Ev::Drain(r, g) => rig.drain(reason(r), Duration::from_millis(g)),
            }
            check(&rig, &mut first_cause);
        }
        // Let every destination take everything and time run out: every session ends.
        rig.net.client.room = None;
        rig.net.backend.room = None;
        let mut turns = 0;
        while !rig.s.poll_done(rig.now) {
            turns += 1;
            assert!(turns < 10, "the session never ended");
            for d in [Dir::Up, Dir::Down] {
                if rig.s.wants_write(d) {
                    rig.writable(d);
                }
            }
            if rig.s.poll_done(rig.now) {
                break;
            }
            rig.now = rig.now.max(rig.s.next_deadline());
            rig.s.on_timer(rig.now, &mut rig.net);
            check(&rig, &mut first_cause);
        }
        let outcome = rig.s.outcome();
        if let Some(first) = first_cause {
            assert_eq!(outcome.cause, first, "the one recorded cause");
        }
        Run {
            cfg,
            streams,
            read,
            rig,
            outcome,
            first_cause,
        }
    }

    /// Tether's own frames: its pings to the client and its close frames.
    fn tethers(f: &Frame) -> bool {
        match f.opcode {
            OpCode::Ping => f.payload.starts_with(b"tthr"),
            OpCode::Close => f
                .close()
                .is_some_and(|(_, reason)| TETHER_REASONS.contains(&reason.as_str())),
            _ => false,
        }
    }

    /// A peer's frame as it should arrive: a reserved close code replaced by 1002.
    fn as_forwarded(mut f: Frame) -> Frame {
        if let Some((Some(code), _)) = f.close() {
            if is_reserved_close_code(code) {
                f.payload = close_payload(1002, "reserved close code");
            }
        }
        f
    }

    fn check_frames_run(run: &Run) {
        for d in [Dir::Up, Dir::Down] {
            let (src, got) = match d {
                Dir::Up => (&run.streams[0], &run.rig.net.backend.got),
                Dir::Down => (&run.streams[1], &run.rig.net.client.got),
            };
            let received = frames_in(got);
            // Reserved codes never reach the wire.
            for f in &received {
                if let Some((Some(code), _)) = f.close() {
                    assert!(!is_reserved_close_code(code), "{code} on the wire");
                }
            }
            // Nothing after Tether's close: it is the last complete frame, and nothing follows.
            if let Some(at) = received
                .iter()
                .position(|f| f.opcode == OpCode::Close && tethers(f))
            {
                assert_eq!(at, received.len() - 1, "frames after Tether's close");
                let encoded: usize = received
                    .iter()
                    .map(|f| {
                        let header = parse_header(&frame(0, true, &f.payload, None)).unwrap();
                        header.header_len as usize + f.payload.len()
                    })
                    .sum();
                let masks = if d == Dir::Up { 4 * received.len() } else { 0 };
                assert_eq!(got.len(), encoded + masks, "bytes after Tether's close");
            }
            // Forwarded once, in order: the peer's frames as read, a prefix of them.
            let theirs: Vec<Frame> = received.into_iter().filter(|f| !tethers(f)).collect();
            let read = &src[..run.read[idx(d)]];
            let expected: Vec<Frame> = frames_in(read).into_iter().map(as_forwarded).collect();
            // (The generator's pongs never carry Tether's ping payload: none is swallowed.)
            assert!(
                theirs.len() <= expected.len() && theirs[..] == expected[..theirs.len()],
                "{d:?}: forwarded frames are not a prefix of the frames read"
            );
            // Everything, when the session ended on its own with every write flushed.
            let whole = run.read[idx(d)] == src.len();
            let undisturbed = run.outcome.tether_close.is_none()
                && run.first_cause.is_none()
                && !run.rig.net.client.gone
                && !run.rig.net.backend.gone
                && run.rig.s.half(d).pending.is_empty();
            if whole && undisturbed && run.rig.s.half(d).source.ended() {
                assert_eq!(theirs, expected, "{d:?}: bytes lost");
            }
        }
    }

    fn check_opaque_run(run: &Run) {
        for d in [Dir::Up, Dir::Down] {
            let (src, got) = match d {
                Dir::Up => (&run.streams[0], &run.rig.net.backend.got),
                Dir::Down => (&run.streams[1], &run.rig.net.client.got),
            };
            let read = &src[..run.read[idx(d)]];
            assert!(got.len() <= read.len() && got[..] == read[..got.len()]);
            let gone = run.rig.net.peer_ref(d).gone;
            if !gone && run.rig.s.half(d).pending.is_empty() && run.rig.s.half(d).source.ended() {
                assert_eq!(got, read, "{d:?}: bytes lost");
            }
        }
        assert!(run.cfg.frames || run.outcome.tether_close.is_none());
    }

    fn configs() -> impl Strategy<Value = PumpConfig> {
        (
            any::<bool>(),
            prop::option::of(Just(Duration::from_secs(10))),
            prop::option::of(1u64..30_000),
        )
            .prop_map(|(frames, keepalive, max)| PumpConfig {
                frames,
                idle_timeout: Duration::from_secs(30),
                keepalive,
                max_message_size: max,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn interleavings_forward_each_byte_once_in_order_and_end_with_one_cause(
            cfg in configs(),
            client in prop::collection::vec(sent(), 0..12),
            backend in prop::collection::vec(sent(), 0..12),
            seed in any::<u8>(),
            events in prop::collection::vec(ev(), 0..80),
        ) {
            let client = encode(&client, Some(KEY), seed);
            let backend = encode(&backend, None, seed.wrapping_add(1));
            let run = play(cfg, client, backend, &events);
            if cfg.frames {
                check_frames_run(&run);
            } else {
                check_opaque_run(&run);
            }
            let done = matches!(run.rig.s.phase, Phase::Done { .. });
            prop_assert!(done);
        }
    }
}

impl Net {
    fn peer_ref(&self, dir: Dir) -> &Peer {
        match dir {
            Dir::Up => &self.backend,
            Dir::Down => &self.client,
        }
    }
}
