//! Pool membership: which addresses each pool stands for, each member's probe health as the
//! route table last heard it, and passive ejection.
//!
//! A member is *in rotation* when its probe says healthy (always, for a pool without a probe)
//! and it is not ejected. Each member's [`Member`] record (load counters, passive count, last
//! probe) is created once per address and carried into every snapshot, so counters survive
//! republishing.
//!
//! # Passive ejection lifecycle
//!
//! ```text
//!                    passive.failures in a row (MemberFailing)
//!   in rotation ───────────────────────────────────────────────▶ ejected(epoch, until)
//!        ▲            length = ejection × 2^streak, ≤ max_ejection          │
//!        │            streak += 1, epoch += 1                                │ timer for `epoch`
//!        │                                                                   ▼ fires at `until`
//!        └──────────────────────────────────────────────────────────── returned
//!                         passive count reset; streak kept
//! ```
//!
//! * **in rotation → ejected**: the data path counts consecutive connect or gateway failures on
//!   the member's record; the one failure that reaches `passive.failures` reports it, and the
//!   member leaves the snapshot for `passive.ejection`, doubled for each ejection in the current
//!   streak, capped at `max_ejection`. A report while ejected does nothing.
//! * **ejected → returned**: a timer tagged with the ejection's `epoch` ends it; a stale timer
//!   (from an ejection that a later one replaced) does nothing. The member's consecutive count
//!   starts over. It is back in rotation unless its probe says otherwise meanwhile.
//! * **streak reset**: a member that stays in rotation `max_ejection` after returning starts the
//!   next ejection from the base length again.
//!
//! [`Ejection`] is this state machine, pure (the clock is passed in), so every transition is
//! unit-tested; the route table only arms the timer and republishes.
//!
//! # Who holds probe health
//!
//! The pool's prober decides it: its [`crate::prober::HealthCounter`] per member is the
//! hysteresis, and only its flips reach the route table ([`crate::messages::MemberHealthChanged`]).
//! [`MemberState::health`] is the routing view of those flips, the only one anything routes by;
//! it lives per *address*, like the prober's counter, so a member record rebuilt by a reload
//! (new weight or passive threshold) keeps it ([`PoolState::reconfigure`]). The shared
//! [`Member`] record holds only the latest probe's result and counts, for `GET /backends`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use tether_config::{BackendPoolConfig, PassiveHealthConfig};

use crate::balance::{Member, Pool};
use crate::member::DnsMember;
use crate::member::Health;
use crate::messages::{MemberFailing, ProbeTargets};

/// The last probe-health flip of a member, for `GET /backends`.
#[derive(Debug, Clone)]
pub(crate) struct Flip {
    pub(crate) healthy: bool,
    pub(crate) after: u32,
    pub(crate) reason: String,
    pub(crate) at: Instant,
}

/// Passive-health state of a member (see the module's lifecycle note).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ejection {
    /// Set while ejected.
    pub(crate) until: Option<Instant>,
    /// Ejections in a row (each doubles the next one's length).
    streak: u32,
    /// Ejections since start-up.
    pub(crate) total: u64,
    /// When the last ejection ended.
    last_return: Option<Instant>,
    /// Length of the current (or last) ejection.
    pub(crate) length: Duration,
    /// The failure that caused the last ejection.
    pub(crate) last_error: Option<String>,
    /// Identifies the current ejection, so a stale re-admission timer does nothing.
    epoch: u64,
}

impl Ejection {
    /// Whether the member is ejected now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// The member reached `passive.failures` at `now` with `error`: ejects it and answers how
    /// long for and the ejection's epoch (to arm the re-admission timer with). `None` when
    /// passive health is off or the member is already ejected.
    pub(crate) fn eject(
        &mut self,
        passive: &PassiveHealthConfig,
        now: Instant,
        error: String,
    ) -> Option<(Duration, u64)> {
        if passive.failures == 0 || self.is_ejected() {
            return None;
        }
        if self
            .last_return
            .is_some_and(|back| now.saturating_duration_since(back) >= passive.max_ejection)
        {
            self.streak = 0;
        }
        let length = passive
            .ejection
            .checked_mul(1u32 << self.streak.min(20))
            .unwrap_or(passive.max_ejection)
            .min(passive.max_ejection);
        self.streak = self.streak.saturating_add(1);
        self.total += 1;
        self.until = Some(now + length);
        self.length = length;
        self.last_error = Some(error);
        self.epoch += 1;
        Some((length, self.epoch))
    }

    /// Ends ejection `epoch` at `now`; `false` (nothing changed) when that ejection is already
    /// over or was replaced by a later one.
    pub(crate) fn readmit(&mut self, epoch: u64, now: Instant) -> bool {
        if self.epoch != epoch || !self.is_ejected() {
            return false;
        }
        self.until = None;
        self.last_return = Some(now);
        true
    }
}

/// The route table's view of one member.
pub(crate) struct MemberState {
    pub(crate) shared: Arc<Member>,
    /// Index of the configured member it comes from (a DNS name may give several addresses).
    pub(crate) entry: usize,
    /// Probe health as its prober's flips last said; always healthy without a probe.
    pub(crate) health: Health,
    /// The last flip, for `GET /backends`.
    pub(crate) last_flip: Option<Flip>,
    pub(crate) ejection: Ejection,
}

impl MemberState {
    /// Whether new requests and sessions may go to it.
    pub(crate) fn in_rotation(&self) -> bool {
        self.health == Health::Healthy && !self.ejection.is_ejected()
    }

    /// `ejected`, `healthy`, `unhealthy` or `unknown`, for `GET /backends`.
    pub(crate) fn state(&self) -> &'static str {
        match (self.ejection.is_ejected(), self.health) {
            (true, _) => "ejected",
            (false, Health::Healthy) => "healthy",
            (false, Health::Unhealthy) => "unhealthy",
            (false, Health::Unknown) => "unknown",
        }
    }

    /// Records a probe flip at `at`.
    pub(crate) fn flip(&mut self, healthy: bool, after: u32, reason: String, at: Instant) {
        self.health = if healthy {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        self.last_flip = Some(Flip {
            healthy,
            after,
            reason,
            at,
        });
    }
}

/// The route table's view of one pool.
pub(crate) struct PoolState {
    pub(crate) name: Arc<str>,
    pub(crate) config: BackendPoolConfig,
    /// The probe checking the members, if any.
    pub(crate) probe: Option<String>,
    /// The addresses each configured member stands for: itself, or a DNS name's last good set.
    pub(crate) entries: Vec<Vec<SocketAddr>>,
    pub(crate) members: BTreeMap<SocketAddr, MemberState>,
    pub(crate) prober: Option<Recipient<ProbeTargets>>,
}

impl PoolState {
    /// Pool `name` as configured, with the addresses its members stand for (`entries`, see
    /// [`pool_entries`]) and no member records yet ([`PoolState::sync_members`] makes them).
    pub(crate) fn new(
        name: &str,
        config: &BackendPoolConfig,
        probe: Option<String>,
        entries: Vec<Vec<SocketAddr>>,
    ) -> PoolState {
        PoolState {
            name: name.into(),
            config: config.clone(),
            probe,
            entries,
            members: BTreeMap::new(),
            prober: None,
        }
    }

    /// The pool's snapshot: its members in rotation, in address order.
    pub(crate) fn snapshot(&self) -> Pool {
        let members = self
            .members
            .values()
            .filter(|m| m.in_rotation())
            .map(|m| m.shared.clone())
            .collect();
        Pool::new(
            self.name.clone(),
            self.config.load_balancing,
            &self.config.hash_key,
            members,
        )
    }

    /// Makes `members` match `entries`: new addresses get a fresh record (unknown when
    /// probed), vanished ones are dropped. An address listed twice counts once (the first
    /// entry's weight wins). Returns whether the set changed.
    pub(crate) fn sync_members(&mut self, reporter: &Option<Recipient<MemberFailing>>) -> bool {
        let mut wanted: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (entry, addrs) in self.entries.iter().enumerate() {
            for addr in addrs {
                wanted.entry(*addr).or_insert(entry);
            }
        }
        let before = self.members.len();
        self.members.retain(|addr, _| wanted.contains_key(addr));
        let mut changed = self.members.len() != before;
        for (addr, entry) in wanted {
            if self.members.contains_key(&addr) {
                continue;
            }
            changed = true;
            let shared = Arc::new(Member::new(
                addr,
                self.config.members[entry].weight.get(),
                self.name.clone(),
                self.config.passive.failures,
                reporter.clone(),
            ));
            let health = if self.probe.is_some() {
                Health::Unknown
            } else {
                Health::Healthy
            };
            self.members.insert(
                addr,
                MemberState {
                    shared,
                    entry,
                    health,
                    last_flip: None,
                    ejection: Ejection::default(),
                },
            );
        }
        changed
    }

    /// Takes a reloaded configuration of this pool: `probe` is its probe now, `new_prober`
    /// whether the probe changed (the sender then starts a new prober and attaches it), and
    /// makes the members match (see [`PoolState::sync_members`], whose answer it returns). A
    /// member whose weight or passive threshold changed gets a fresh record (those live in the
    /// record) with its probe health carried over: its prober, which only reports flips, goes
    /// on from the health it had. Without a probe every member is healthy.
    pub(crate) fn reconfigure(
        &mut self,
        config: &BackendPoolConfig,
        probe: Option<String>,
        new_prober: bool,
        entries: Vec<Vec<SocketAddr>>,
        reporter: &Option<Recipient<MemberFailing>>,
    ) -> bool {
        let passive_same = config.passive.failures == self.config.passive.failures;
        let mut carried = BTreeMap::new();
        self.members.retain(|addr, m| {
            let keep = config
                .members
                .get(m.entry)
                .is_some_and(|c| c.weight.get() == m.shared.weight)
                && passive_same;
            if !keep {
                carried.insert(*addr, (m.health, m.last_flip.take()));
            }
            keep
        });
        if new_prober {
            self.prober = None;
        }
        self.config = config.clone();
        self.probe = probe;
        self.entries = entries;
        let changed = self.sync_members(reporter);
        for (addr, m) in &mut self.members {
            if let Some((health, last_flip)) = carried.remove(addr) {
                m.health = health;
                m.last_flip = last_flip;
            }
            if self.probe.is_none() {
                m.health = Health::Healthy;
            }
        }
        changed
    }

    /// Sends the pool's prober (if attached) every member to probe.
    pub(crate) fn tell_prober(&self) {
        if let Some(prober) = &self.prober {
            prober.do_send(ProbeTargets {
                members: self.members.values().map(|m| m.shared.clone()).collect(),
            });
        }
    }
}

/// The addresses each configured member of `pool` stands for: an IP member itself, a DNS
/// member its start-up (or reload) resolution.
pub(crate) fn pool_entries(
    name: &str,
    pool: &BackendPoolConfig,
    resolved: &[(Arc<str>, Vec<DnsMember>)],
) -> Vec<Vec<SocketAddr>> {
    let mut entries: Vec<Vec<SocketAddr>> = pool
        .members
        .iter()
        .map(|m| match m.address {
            tether_config::Member::Addr(addr) => vec![addr],
            tether_config::Member::Dns { .. } => Vec::new(),
        })
        .collect();
    for (_, dns) in resolved.iter().filter(|(pool, _)| **pool == *name) {
        for member in dns {
            if let Some(slot) = entries.get_mut(member.entry) {
                slot.clone_from(&member.addrs);
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(failures: u32, ejection_ms: u64, max_ms: u64) -> PassiveHealthConfig {
        PassiveHealthConfig {
            failures,
            ejection: Duration::from_millis(ejection_ms),
            max_ejection: Duration::from_millis(max_ms),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn each_ejection_in_a_streak_doubles_up_to_the_cap() {
        let p = passive(2, 40, 100);
        let mut e = Ejection::default();
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let (length, epoch) = e.eject(&p, now, "refused".into()).expect("ejected");
            assert!(e.is_ejected());
            assert_eq!(e.until, Some(now + length));
            now += length;
            assert!(e.readmit(epoch, now));
            assert!(!e.is_ejected());
            // Failing again soon after returning: the streak goes on.
            now += 10 * MS;
            lengths.push(length.as_millis());
        }
        assert_eq!(lengths, [40, 80, 100, 100]);
        assert_eq!(e.total, 4);
        assert_eq!(e.last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn in_rotation_for_max_ejection_after_returning_resets_the_streak() {
        let p = passive(1, 40, 100);
        let mut e = Ejection::default();
        let now = Instant::now();
        let (first, epoch) = e.eject(&p, now, "a".into()).unwrap();
        let back = now + first;
        assert!(e.readmit(epoch, back));
        // Just short of max_ejection in rotation: still a streak.
        let (second, epoch) = e.eject(&p, back + 99 * MS, "b".into()).unwrap();
        assert_eq!(second, 80 * MS);
        let back = back + 99 * MS + second;
        assert!(e.readmit(epoch, back));
        // max_ejection in rotation: the next one starts from the base again.
        let (third, _) = e.eject(&p, back + 100 * MS, "c".into()).unwrap();
        assert_eq!(third, 40 * MS);
        assert_eq!(e.total, 3);
    }

    #[test]
    fn a_report_while_ejected_or_with_passive_off_does_nothing() {
        let now = Instant::now();
        let mut off = Ejection::default();
        assert_eq!(off.eject(&passive(0, 40, 100), now, "x".into()), None);
        assert!(!off.is_ejected());

        let p = passive(2, 40, 100);
        let mut e = Ejection::default();
        let (_, epoch) = e.eject(&p, now, "first".into()).unwrap();
        assert_eq!(e.eject(&p, now + MS, "second".into()), None);
        assert_eq!((e.total, e.last_error.as_deref()), (1, Some("first")));
        assert!(e.readmit(epoch, now + 40 * MS));
    }

    #[test]
    fn a_stale_or_repeated_readmission_does_nothing() {
        let p = passive(1, 40, 100);
        let mut e = Ejection::default();
        let now = Instant::now();
        let (_, first) = e.eject(&p, now, "a".into()).unwrap();
        assert!(e.readmit(first, now + 40 * MS));
        assert!(!e.readmit(first, now + 41 * MS), "already returned");
        let (_, second) = e.eject(&p, now + 50 * MS, "b".into()).unwrap();
        assert_ne!(first, second);
        assert!(
            !e.readmit(first, now + 60 * MS),
            "the first ejection's timer"
        );
        assert!(e.is_ejected());
        assert!(e.readmit(second, now + 130 * MS));
    }
}
