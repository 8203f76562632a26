//! Load balancing: how a request or a WebSocket handshake picks a member of its pool, and the
//! per-member state the data path and the control actors share.
//!
//! A [`Pool`] is part of the published route snapshot and lists the members *in rotation*. Each
//! [`Member`] is an `Arc` the route table keeps across snapshots (by address), so its atomic
//! counters survive every republish:
//!
//! * `requests` and `sessions` — in-flight requests and live WebSocket sessions, held by a
//!   [`MemberLease`] that decrements on drop. `least_connections` reads them; nothing locks.
//! * `passive_failures` — consecutive connect or gateway failures seen by the data path. Only
//!   the failure that *reaches* the pool's `passive.failures` sends a message
//!   ([`MemberFailing`]) to the route table; every other failure or success is one relaxed
//!   atomic operation.
//!
//! Policies (`backend_pools.NAME.load_balancing`):
//!
//! * `round_robin` — a shared cursor (one relaxed `fetch_add` per pick). With unequal weights the
//!   cursor walks an interleaved weighted schedule: every cycle of `sum(weights)` picks gives
//!   each member exactly its weight, spread over the cycle rather than in one run.
//! * `least_connections` — the member with the lowest `(requests + sessions) / weight`; ties go
//!   to the member after the previous pick, so an idle pool still rotates.
//! * `consistent_hash` — weighted rendezvous hashing (highest random weight) of the key
//!   (client IP, a header or a cookie) with each member's address. A member leaving or joining
//!   moves only the keys that belong to it; every other key keeps its member, which is what
//!   makes reconnecting clients land where they were. The hash (FNV-1a + a SplitMix64
//!   finalizer) is fixed, so every sidecar of a fleet maps a key to the same member.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::Recipient;
use http::{header, HeaderMap};
use tether_config::{HashKey, LoadBalancing};

use crate::member::{MemberFailing, ProbeReport};
use crate::metrics::ConnectFailure;

/// One backend address of a pool, shared by the snapshot (data path), the route table, the
/// prober and `GET /backends`.
pub struct Member {
    /// The address connections go to (before a settings' port override).
    pub addr: SocketAddr,
    /// Relative share of new requests and sessions (1..=1000).
    pub weight: u32,
    /// The pool it belongs to.
    pub pool: Arc<str>,
    /// Stable hash of `addr`, for rendezvous hashing.
    key: u64,
    requests: AtomicUsize,
    sessions: AtomicUsize,
    passive_failures: AtomicU32,
    /// Failed connections by [`ConnectFailure`] (`tether_backend_connect_failures_total`).
    connect_failures: [AtomicU64; ConnectFailure::ALL.len()],
    /// `passive.failures` of the pool; 0 = passive health off.
    passive_threshold: u32,
    /// Where a crossed passive threshold is reported (the route table).
    reporter: Option<Recipient<MemberFailing>>,
    /// The prober's latest result; written once per probe, read by `GET /backends`.
    probe: Mutex<Option<ProbeReport>>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .field("pool", &self.pool)
            .field("requests", &self.requests())
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member with zeroed counters. `passive_threshold` 0 disables passive health.
    pub fn new(
        addr: SocketAddr,
        weight: u32,
        pool: Arc<str>,
        passive_threshold: u32,
        reporter: Option<Recipient<MemberFailing>>,
    ) -> Member {
        Member {
            addr,
            weight: weight.max(1),
            pool,
            key: addr_key(addr),
            requests: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            passive_failures: AtomicU32::new(0),
            connect_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            passive_threshold,
            reporter,
            probe: Mutex::new(None),
        }
    }

    /// In-flight requests (including WebSocket handshakes not yet answered).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Live WebSocket sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// What `least_connections` compares (divided by the weight).
    pub fn load(&self) -> usize {
        self.requests() + self.sessions()
    }

    /// Counts a connection to this member that failed (one relaxed atomic add).
    pub fn connect_failed(&self, reason: ConnectFailure) {
        self.connect_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed connections so far, in [`ConnectFailure::ALL`] order.
    pub fn connect_failures(&self) -> [u64; ConnectFailure::ALL.len()] {
        std::array::from_fn(|i| self.connect_failures[i].load(Ordering::Relaxed))
    }

    /// Consecutive failures the data path has seen since the last success.
    pub fn passive_failures(&self) -> u32 {
        self.passive_failures.load(Ordering::Relaxed)
    }

    /// The data path saw a success: the consecutive count starts over. The load before the
    /// store keeps the common case (already zero) a read, not a write to a shared cache line.
    pub fn passive_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// The data path saw a connect or gateway failure. The one failure that reaches the
    /// threshold reports it (formatting `cause` only then); the route table ejects the member.
    pub fn passive_failure(&self, cause: &dyn fmt::Display) {
        if self.passive_threshold == 0 {
            return;
        }
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.passive_threshold {
            if let Some(reporter) = &self.reporter {
                reporter.do_send(MemberFailing {
                    pool: self.pool.clone(),
                    member: self.addr,
                    failures: n,
                    last_error: cause.to_string(),
                });
            }
        }
    }

    /// Starts the consecutive count over (the route table, when an ejection ends).
    pub fn reset_passive(&self) {
        self.passive_failures.store(0, Ordering::Relaxed);
    }

    /// Records the prober's latest result.
    pub fn set_probe_report(&self, report: ProbeReport) {
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// The prober's latest result, if the member has been probed.
    pub fn probe_report(&self) -> Option<ProbeReport> {
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a lease counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseKind {
    Request,
    Session,
}

/// A claim on a member: counted as one in-flight request (or, after
/// [`MemberLease::into_session`], one live session) until dropped. This is how
/// `least_connections` sees load without any message or lock.
pub struct MemberLease {
    member: Arc<Member>,
    kind: LeaseKind,
}

impl MemberLease {
    /// Counts one in-flight request on `member`.
    pub fn new(member: Arc<Member>) -> MemberLease {
        member.requests.fetch_add(1, Ordering::Relaxed);
        MemberLease {
            member,
            kind: LeaseKind::Request,
        }
    }

    /// The member's address (before a settings' port override).
    pub fn addr(&self) -> SocketAddr {
        self.member.addr
    }

    /// The member.
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// The request became a WebSocket session: count it as a live session from now on.
    pub fn into_session(mut self) -> MemberLease {
        if self.kind == LeaseKind::Request {
            self.member.requests.fetch_sub(1, Ordering::Relaxed);
            self.member.sessions.fetch_add(1, Ordering::Relaxed);
            self.kind = LeaseKind::Session;
        }
        self
    }

    fn counter(&self) -> &AtomicUsize {
        match self.kind {
            LeaseKind::Request => &self.member.requests,
            LeaseKind::Session => &self.member.sessions,
        }
    }
}

impl Clone for MemberLease {
    /// A clone is one more claim of the same kind.
    fn clone(&self) -> Self {
        self.counter().fetch_add(1, Ordering::Relaxed);
        MemberLease {
            member: self.member.clone(),
            kind: self.kind,
        }
    }
}

impl Drop for MemberLease {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for MemberLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberLease")
            .field("member", &self.member.addr)
            .field("kind", &self.kind)
            .finish()
    }
}

/// How a pool picks, resolved from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    LeastConnections,
    ConsistentHash(HashKey),
}

/// Interleaved weighted round robin: a cycle of `sum(weights)` picks made of rounds `1..=max`,
/// where round `r` visits (in weight order) every member whose weight is at least `r`. Each
/// member gets exactly its weight per cycle, spread over the cycle rather than in one run, and
/// a pick is a binary search over at most [`tether_config::MAX_WEIGHT`] round offsets.
#[derive(Debug)]
struct Weighted {
    /// Member indices, heaviest first.
    order: Vec<usize>,
    /// `offsets[r]` = picks in the cycle before round `r + 1`.
    offsets: Vec<u64>,
    total: u64,
}

impl Weighted {
    fn new(members: &[Arc<Member>]) -> Option<Weighted> {
        let first = members.first()?.weight;
        if members.iter().all(|m| m.weight == first) {
            return None;
        }
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(members[i].weight));
        let max = members[order[0]].weight;
        let mut offsets = Vec::with_capacity(max as usize);
        let mut total = 0u64;
        for round in 1..=max {
            offsets.push(total);
            total += members.iter().filter(|m| m.weight >= round).count() as u64;
        }
        Some(Weighted {
            order,
            offsets,
            total,
        })
    }

    fn slot(&self, n: u64) -> usize {
        let pos = n % self.total;
        let round = self.offsets.partition_point(|&o| o <= pos) - 1;
        self.order[(pos - self.offsets[round]) as usize]
    }
}

/// A backend pool as the request path sees it: the members in rotation and how to pick one.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name (used in the 503 body).
    pub name: Arc<str>,
    members: Vec<Arc<Member>>,
    policy: Policy,
    weighted: Option<Weighted>,
    /// Round-robin position, and the tie-break start of least connections (one relaxed atomic
    /// add per pick, shared by every worker).
    cursor: AtomicUsize,
}

impl Pool {
    /// A pool snapshot over the members in rotation (kept in the given order).
    pub fn new(
        name: Arc<str>,
        load_balancing: LoadBalancing,
        hash_key: &HashKey,
        members: Vec<Arc<Member>>,
    ) -> Pool {
        let policy = match load_balancing {
            LoadBalancing::RoundRobin => Policy::RoundRobin,
            LoadBalancing::LeastConnections => Policy::LeastConnections,
            LoadBalancing::ConsistentHash => Policy::ConsistentHash(hash_key.clone()),
        };
        let weighted = match policy {
            Policy::RoundRobin => Weighted::new(&members),
            _ => None,
        };
        Pool {
            name,
            members,
            policy,
            weighted,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The members in rotation.
    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// Picks a member for a request from `client` with `headers` (the hash key's source), or
    /// `None` when no member is in rotation. The lease counts the request on the member.
    pub fn pick(&self, client: IpAddr, headers: &HeaderMap) -> Option<MemberLease> {
        self.pick_other(client, headers, &[])
    }

    /// Picks a member as [`Pool::pick`] does, skipping the members at `tried` (a retry never
    /// goes to a member twice); `None` when every member in rotation was tried. Round robin
    /// takes the next untried member in rotation; least connections the least loaded untried
    /// one; consistent hashing the untried member with the highest score, which is where the
    /// key would go if the tried members left the pool.
    pub fn pick_other(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
        tried: &[SocketAddr],
    ) -> Option<MemberLease> {
        let index = self.pick_index(client, headers, tried)?;
        Some(MemberLease::new(self.members[index].clone()))
    }

    fn pick_index(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
        tried: &[SocketAddr],
    ) -> Option<usize> {
        let n = self.members.len();
        let open = |i: usize| !tried.contains(&self.members[i].addr);
        if n == 0 {
            return None;
        }
        if n == 1 {
            return open(0).then_some(0);
        }
        match &self.policy {
            Policy::RoundRobin => {
                // A first pick takes the cursor's turn; a retry looks ahead from the next turn
                // without taking it, so a failing member does not make its neighbour lose turns.
                let first = if tried.is_empty() {
                    self.cursor.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.cursor.load(Ordering::Relaxed)
                };
                let cycle = self.weighted.as_ref().map_or(n as u64, |w| w.total);
                (0..cycle).find_map(|k| {
                    let turn = first.wrapping_add(k as usize);
                    let i = match &self.weighted {
                        Some(w) => w.slot(turn as u64),
                        None => turn % n,
                    };
                    open(i).then_some(i)
                })
            }
            Policy::LeastConnections => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                let mut best: Option<(usize, u64, u64)> = None;
                for step in 0..n {
                    let i = (start + step) % n;
                    if !open(i) {
                        continue;
                    }
                    let m = &self.members[i];
                    let load = m.load() as u64;
                    let weight = u64::from(m.weight);
                    // load / weight < best_load / best_weight, without division.
                    match best {
                        Some((_, best_load, best_weight))
                            if load * best_weight >= best_load * weight => {}
                        _ => best = Some((i, load, weight)),
                    }
                }
                best.map(|(i, _, _)| i)
            }
            Policy::ConsistentHash(key) => {
                rendezvous(&self.members, hash_key(key, client, headers), tried)
            }
        }
    }
}

/// The member with the highest weighted rendezvous score for `key`, among those not `tried`.
fn rendezvous(members: &[Arc<Member>], key: u64, tried: &[SocketAddr]) -> Option<usize> {
    let weighted = members.iter().any(|m| m.weight != members[0].weight);
    let mut best = None;
    if weighted {
        // Weighted rendezvous: score = w / -ln(u), u uniform in (0, 1] from the hash.
        let mut best_score = f64::NEG_INFINITY;
        for (i, m) in members.iter().enumerate() {
            if tried.contains(&m.addr) {
                continue;
            }
            let h = mix(key ^ m.key);
            let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let score = f64::from(m.weight) / -u.ln();
            if best.is_none() || score > best_score {
                best = Some(i);
                best_score = score;
            }
        }
    } else {
        let mut best_hash = 0;
        for (i, m) in members.iter().enumerate() {
            if tried.contains(&m.addr) {
                continue;
            }
            let h = mix(key ^ m.key);
            if best.is_none() || h > best_hash {
                best = Some(i);
                best_hash = h;
            }
        }
    }
    best
}

/// The hash of a request's key: the header or cookie when present, else the client's IP.
fn hash_key(key: &HashKey, client: IpAddr, headers: &HeaderMap) -> u64 {
    let value = match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => find_cookie(headers, name),
    };
    match value {
        Some(bytes) => mix(fnv1a(bytes)),
        None => ip_key(client),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4), if any.
fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix(fnv1a(&v4.octets())),
        IpAddr::V6(v6) => mix(fnv1a(&v6.octets())),
    }
}

/// A stable hash of a member's address (IP octets, then the port).
fn addr_key(addr: SocketAddr) -> u64 {
    let mut h = match addr.ip() {
        IpAddr::V4(v4) => fnv1a(&v4.octets()),
        IpAddr::V6(v6) => fnv1a(&v6.octets()),
    };
    for b in addr.port().to_be_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    mix(h)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits: fixed across processes and releases (unlike `std`'s `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn member(port: u16, weight: u32) -> Arc<Member> {
        Arc::new(Member::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            "p".into(),
            0,
            None,
        ))
    }

    fn pool(policy: LoadBalancing, key: HashKey, members: &[Arc<Member>]) -> Pool {
        Pool::new("p".into(), policy, &key, members.to_vec())
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ports(pool: &Pool, picks: usize) -> Vec<u16> {
        (0..picks)
            .map(|_| pool.pick(LOCAL, &HeaderMap::new()).unwrap().addr().port())
            .collect()
    }

    #[test]
    fn round_robin_cycles_and_empty_pool_picks_nothing() {
        let members = [member(1, 1), member(2, 1), member(3, 1)];
        let p = pool(LoadBalancing::RoundRobin, HashKey::ClientIp, &members);
        assert_eq!(ports(&p, 6), [1, 2, 3, 1, 2, 3]);
        let empty = pool(LoadBalancing::RoundRobin, HashKey::ClientIp, &[]);
        assert!(empty.pick(LOCAL, &HeaderMap::new()).is_none());
    }

    #[test]
    fn a_retry_never_picks_a_tried_member_and_round_robin_keeps_its_turns() {
        let members = [member(1, 1), member(2, 1), member(3, 1)];
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let p = pool(LoadBalancing::RoundRobin, HashKey::ClientIp, &members);
        let first = p.pick(LOCAL, &HeaderMap::new()).unwrap().addr().port();
        assert_eq!(first, 1);
        // The retry takes the next member without taking its turn: the next request gets it too.
        let retry = p.pick_other(LOCAL, &HeaderMap::new(), &[addr(1)]).unwrap();
        assert_eq!(retry.addr().port(), 2);
        assert_eq!(ports(&p, 2), [2, 3]);
        let none = p.pick_other(LOCAL, &HeaderMap::new(), &[addr(1), addr(2), addr(3)]);
        assert!(none.is_none());
        for policy in [
            LoadBalancing::LeastConnections,
            LoadBalancing::ConsistentHash,
        ] {
            let p = pool(policy, HashKey::ClientIp, &members);
            for _ in 0..6 {
                let tried = [addr(2), addr(3)];
                let lease = p.pick_other(LOCAL, &HeaderMap::new(), &tried).unwrap();
                assert_eq!(lease.addr().port(), 1, "{policy:?}");
            }
            assert!(p
                .pick_other(LOCAL, &HeaderMap::new(), &[addr(1), addr(2), addr(3)])
                .is_none());
        }
        let single = pool(LoadBalancing::RoundRobin, HashKey::ClientIp, &members[..1]);
        assert!(single
            .pick_other(LOCAL, &HeaderMap::new(), &[addr(1)])
            .is_none());
    }

    #[test]
    fn weighted_round_robin_gives_each_member_its_weight_per_cycle_interleaved() {
        let members = [member(1, 3), member(2, 1), member(3, 2)];
        let p = pool(LoadBalancing::RoundRobin, HashKey::ClientIp, &members);
        let picks = ports(&p, 60);
        for cycle in picks.chunks(6) {
            let count = |port| cycle.iter().filter(|&&p| p == port).count();
            assert_eq!((count(1), count(2), count(3)), (3, 1, 2), "{cycle:?}");
        }
        // Interleaved: the weight-3 member never gets three picks in a row.
        assert!(
            !picks.windows(3).any(|w| w.iter().all(|&p| p == 1)),
            "{picks:?}"
        );
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_and_rotates_ties() {
        let members = [member(1, 1), member(2, 1), member(3, 1)];
        let p = pool(LoadBalancing::LeastConnections, HashKey::ClientIp, &members);
        // Held leases: each pick sees the previous ones, so 9 picks spread 3/3/3.
        let leases: Vec<_> = (0..9)
            .map(|_| p.pick(LOCAL, &HeaderMap::new()).unwrap())
            .collect();
        for m in &members {
            assert_eq!(m.requests(), 3);
        }
        // Sessions count too: two sessions on member 1 steer picks away from it.
        let sessions: Vec<_> = leases
            .into_iter()
            .filter(|l| l.addr().port() == 1)
            .map(MemberLease::into_session)
            .take(2)
            .collect();
        assert_eq!(members[0].sessions(), 2);
        assert_eq!(members[0].requests(), 0);
        let next: Vec<_> = (0..2)
            .map(|_| p.pick(LOCAL, &HeaderMap::new()).unwrap())
            .collect();
        assert!(next.iter().all(|l| l.addr().port() != 1));
        drop((sessions, next));
        assert!(members.iter().all(|m| m.load() == 0));
        // Idle pool: ties rotate instead of always taking the first member.
        assert_eq!(
            {
                let mut seen = ports(&p, 3);
                seen.sort();
                seen
            },
            [1, 2, 3]
        );
    }

    #[test]
    fn least_connections_honours_weights() {
        let members = [member(1, 3), member(2, 1)];
        let p = pool(LoadBalancing::LeastConnections, HashKey::ClientIp, &members);
        let leases: Vec<_> = (0..8)
            .map(|_| p.pick(LOCAL, &HeaderMap::new()).unwrap())
            .collect();
        assert_eq!((members[0].requests(), members[1].requests()), (6, 2));
        drop(leases);
    }

    #[test]
    fn lease_clone_and_drop_balance_the_counters() {
        let m = member(1, 1);
        let lease = MemberLease::new(m.clone());
        let copy = lease.clone();
        assert_eq!(m.requests(), 2);
        let session = copy.into_session();
        let session2 = session.clone();
        assert_eq!((m.requests(), m.sessions()), (1, 2));
        drop((lease, session, session2));
        assert_eq!((m.requests(), m.sessions()), (0, 0));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; sid = abc ;b=2"), ("cookie", "c=3")]);
        assert_eq!(find_cookie(&h, "sid"), Some(&b"abc"[..]));
        assert_eq!(find_cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(find_cookie(&h, "si"), None);
    }

    #[test]
    fn consistent_hash_keys_by_header_cookie_or_client_ip() {
        let members: Vec<_> = (1..=5).map(|p| member(p, 1)).collect();
        let by_header = pool(
            LoadBalancing::ConsistentHash,
            HashKey::Header("x-user".into()),
            &members,
        );
        let pick = |p: &Pool, ip: IpAddr, h: &HeaderMap| p.pick(ip, h).unwrap().addr().port();
        let ip = |last: u8| IpAddr::V4([10, 0, 0, last].into());
        let mut seen = HashMap::new();
        for user in 0..200 {
            let h = headers(&[("x-user", &format!("user-{user}"))]);
            let first = pick(&by_header, ip(1), &h);
            // Same key, any client address: same member.
            assert_eq!(pick(&by_header, ip(2), &h), first);
            *seen.entry(first).or_insert(0) += 1;
        }
        // 200 keys over 5 members: every member gets some, none gets most.
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(seen.values().all(|&n| (15..=70).contains(&n)), "{seen:?}");
        // Without the header, the client IP decides.
        let no_header = HeaderMap::new();
        assert_eq!(
            pick(&by_header, ip(7), &no_header),
            pick(
                &pool(LoadBalancing::ConsistentHash, HashKey::ClientIp, &members),
                ip(7),
                &no_header
            )
        );
        let by_cookie = pool(
            LoadBalancing::ConsistentHash,
            HashKey::Cookie("sid".into()),
            &members,
        );
        let h = headers(&[("cookie", "sid=s1")]);
        assert_eq!(pick(&by_cookie, ip(1), &h), pick(&by_cookie, ip(9), &h));
    }

    #[test]
    fn weighted_rendezvous_follows_weights() {
        let members = [member(1, 4), member(2, 1)];
        let p = pool(
            LoadBalancing::ConsistentHash,
            HashKey::Header("k".into()),
            &members,
        );
        let heavy = (0..2000)
            .filter(|k| {
                let h = headers(&[("k", &k.to_string())]);
                p.pick(LOCAL, &h).unwrap().addr().port() == 1
            })
            .count();
        // Expected 80 %.
        assert!((1500..=1700).contains(&heavy), "{heavy}");
    }

    proptest! {
        /// Removing a member moves only the keys that were on it; adding one moves keys only
        /// onto it. This is the property reconnecting clients rely on.
        #[test]
        fn rendezvous_moves_only_the_keys_of_the_changed_member(
            n in 2usize..12,
            gone in 0usize..12,
            weights in proptest::collection::vec(1u32..5, 12),
            keys in proptest::collection::vec(any::<u64>(), 50),
        ) {
            let gone = gone % n;
            let all: Vec<_> = (0..n).map(|i| member(1000 + i as u16, weights[i])).collect();
            let rest: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, m)| m.clone()).collect();
            for key in keys {
                let before = all[rendezvous(&all, key, &[]).unwrap()].addr;
                let after = rest[rendezvous(&rest, key, &[]).unwrap()].addr;
                // Excluding a member picks what its absence would.
                let skipped = all[rendezvous(&all, key, &[all[gone].addr]).unwrap()].addr;
                prop_assert_eq!(skipped, after);
                if before != all[gone].addr {
                    prop_assert_eq!(before, after);
                }
            }
        }

        #[test]
        fn weighted_round_robin_is_exact_per_cycle(weights in proptest::collection::vec(1u32..20, 2..8)) {
            let members: Vec<_> = weights.iter().enumerate().map(|(i, &w)| member(1 + i as u16, w)).collect();
            let p = pool(LoadBalancing::RoundRobin, HashKey::ClientIp, &members);
            let total: u32 = weights.iter().sum();
            let picks = ports(&p, total as usize);
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(picks.iter().filter(|&&port| port == 1 + i as u16).count(), w as usize);
            }
        }
    }
}
