//! Token buckets, as the generic cell rate algorithm (GCRA): a rate, a burst, and one
//! timestamp of state — the *theoretical arrival time* (TAT), when the bucket would be full
//! again had nothing more been taken. Taking `n` tokens moves the TAT `n / rate` later; a take
//! is allowed while the TAT stays within `burst / rate` of now. No refill timer, no float, one
//! word of state.
//!
//! * [`TokenBucket`]: owned by one session's core (per-session message and byte rates). The
//!   clock is passed in, never read here.
//! * [`SharedTokenBucket`]: shared by every worker (a route's `max_new_sessions_per_second`):
//!   the TAT is one atomic, updated by compare-and-swap — no lock on the request path.
//!
//! Lifecycle (both): `full ──take within burst──► partly used ──time passes──► full`; a take
//! that would overdraw is refused and changes nothing ([`TokenBucket::take`]), or, for a
//! session that is paced instead of closed, is charged anyway and says how long the taker must
//! wait before the next one ([`TokenBucket::charge`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A rate and its burst: `per_second` tokens a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens a second (at least 1).
    pub per_second: u64,
    /// Most tokens taken at once from a full bucket (at least 1).
    pub burst: u64,
}

impl Rate {
    /// How long `n` tokens take to come back.
    fn cost(self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.per_second.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How far ahead of now the TAT may be: the whole burst.
    fn window(self) -> Duration {
        self.cost(self.burst.max(1))
    }
}

/// A bucket owned by one taker (see the module doc). Starts full.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: Rate,
    /// When the bucket is full again; at or before now means full.
    tat: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket { rate, tat: now }
    }

    /// Takes `n` tokens if the bucket holds them (`true`); otherwise takes nothing (`false`).
    /// A take of more than the burst never succeeds.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        let tat = self.tat.max(now) + self.rate.cost(n);
        if tat.saturating_duration_since(now) > self.rate.window() {
            return false;
        }
        self.tat = tat;
        true
    }

    /// Takes `n` tokens even if that overdraws the bucket: `None` when it held them, otherwise
    /// the moment it is back within its burst (the taker waits until then before taking more).
    pub fn charge(&mut self, n: u64, now: Instant) -> Option<Instant> {
        self.tat = self.tat.max(now) + self.rate.cost(n);
        let ready = self.tat.checked_sub(self.rate.window()).unwrap_or(now);
        (ready > now).then_some(ready)
    }
}

/// A bucket shared across threads (see the module doc). Starts full.
#[derive(Debug)]
pub struct SharedTokenBucket {
    rate: Rate,
    /// What the TATs are counted from.
    epoch: Instant,
    /// The TAT, in nanoseconds since `epoch`.
    tat: AtomicU64,
}

impl SharedTokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> SharedTokenBucket {
        SharedTokenBucket {
            rate,
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    /// Its rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token at `now`: `Ok` when there was one, else `Err` with how long until there
    /// will be. Lock-free: a compare-and-swap loop on the TAT.
    pub fn take_one(&self, now: Instant) -> Result<(), Duration> {
        let now_ns = nanos(now.saturating_duration_since(self.epoch));
        let cost = nanos(self.rate.cost(1));
        let window = nanos(self.rate.window());
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let tat = current.max(now_ns) + cost;
            let ahead = tat - now_ns;
            if ahead > window {
                return Err(Duration::from_nanos(ahead - window));
            }
            match self
                .tat
                .compare_exchange_weak(current, tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn rate(per_second: u64, burst: u64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_at_once_then_one_token_per_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(10, 5), t0);
        for i in 0..5 {
            assert!(b.take(1, t0), "token {i} of the burst");
        }
        assert!(!b.take(1, t0), "the burst is spent");
        assert!(!b.take(1, t0 + SEC / 20), "half an interval later");
        assert!(b.take(1, t0 + SEC / 10), "one interval later");
        assert!(!b.take(1, t0 + SEC / 10));
        // A second later the whole burst is back, not more.
        let t1 = t0 + 2 * SEC;
        assert_eq!((0..10).filter(|_| b.take(1, t1)).count(), 5);
    }

    #[test]
    fn a_refused_take_changes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(100, 100), t0);
        assert!(b.take(60, t0));
        assert!(!b.take(60, t0), "only 40 left");
        assert!(b.take(40, t0), "the refusal took nothing");
    }

    #[test]
    fn a_take_larger_than_the_burst_never_succeeds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(1000, 100), t0);
        assert!(!b.take(101, t0));
        assert!(!b.take(101, t0 + 60 * SEC));
    }

    #[test]
    fn a_sustained_rate_over_a_long_run_is_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(50, 10), t0);
        // Try every millisecond for 10 s: 10 at once, then 50 a second.
        let taken = (0..10_000u32)
            .filter(|ms| b.take(1, t0 + Duration::from_millis(u64::from(*ms))))
            .count();
        assert!((505..=511).contains(&taken), "{taken}");
    }

    #[test]
    fn charging_overdraws_and_says_when_the_taker_may_go_on() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(1000, 1000), t0);
        assert_eq!(b.charge(1000, t0), None, "within the burst");
        let ready = b.charge(500, t0).expect("overdrawn");
        assert_eq!(ready - t0, SEC / 2, "500 tokens at 1000/s");
        assert_eq!(b.charge(1, ready), Some(ready + Duration::from_millis(1)));
        assert_eq!(b.charge(1, ready + SEC * 2), None, "refilled");
    }

    #[test]
    fn the_shared_bucket_admits_its_burst_then_says_how_long_to_wait() {
        let b = SharedTokenBucket::new(rate(500, 50));
        let t0 = b.epoch;
        assert_eq!((0..100).filter(|_| b.take_one(t0).is_ok()).count(), 50);
        let wait = b.take_one(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(2), "one interval at 500/s");
        assert!(b.take_one(t0 + Duration::from_millis(2)).is_ok());
    }

    #[test]
    fn the_shared_bucket_holds_its_rate_across_threads() {
        let b = std::sync::Arc::new(SharedTokenBucket::new(rate(1000, 100)));
        let t0 = b.epoch;
        // 4 threads try 2,000 times each over 1 s of simulated time (by timestamps).
        let admitted: usize = (0..4)
            .map(|k| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..2000u64)
                        .filter(|i| {
                            let at = t0 + Duration::from_micros(i * 500 + k * 100);
                            b.take_one(at).is_ok()
                        })
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert!((1050..=1101).contains(&admitted), "{admitted}");
    }
}
