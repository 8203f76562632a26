//! Drain schedules: when each session of a drain gets its close frame, so that N sessions end
//! at a steady rate over a window (`drain_spread`) instead of all at once, and every client
//! does not reconnect in the same second.
//!
//! A [`DrainPlan`] says when a drain's closes begin, over how long they are spread, and how long
//! the peers get to answer. [`DrainPlan::order`] turns it into the order for the `i`-th of `n`
//! sessions: slot `i` of `n` equal slots of the window, at a random point within the slot
//! ([`crate::jitter::slot`]), so the rate is steady and no two drains have the same pattern.
//!
//! | drain | closes begin | spread over | peers answer |
//! |---|---|---|---|
//! | shutdown (SIGTERM), reload-free | at once | `drain_spread` (≤ `shutdown_grace`) | until `shutdown_grace` after the signal |
//! | unhealthy member, removed route | after `drain_grace − drain_spread` | `drain_spread` | [`CLOSE_HANDSHAKE_TIMEOUT`] after each close |
//! | admin drain of a fraction of a member | at once | `over` | [`CLOSE_HANDSHAKE_TIMEOUT`] after each close |
//!
//! So the last close frame of a drain goes out by `shutdown_grace`/`drain_grace` (validation
//! keeps `drain_spread` below both), and with `drain_spread = 0` every drain behaves as before
//! it existed.
//!
//! Pure: no actor, no clock (the route table passes the samples and records the schedule).

use std::time::Duration;

use crate::messages::DrainSession;
use crate::pump::CLOSE_HANDSHAKE_TIMEOUT;
use crate::shutdown::DrainReason;

/// When a drain's sessions close (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    reason: DrainReason,
    /// When the first close may go out, from the drain order.
    start: Duration,
    /// The window the closes are spread over, from `start`.
    spread: Duration,
    /// How long the peers may answer.
    answer: Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Until this long after the drain order, whenever their close went out.
    Until(Duration),
    /// This long after their close went out.
    After(Duration),
}

impl DrainPlan {
    /// Shutdown: closes from now, spread over `spread` (at most `grace`); every peer answers by
    /// `grace` after the signal.
    pub fn shutdown(reason: DrainReason, grace: Duration, spread: Duration) -> DrainPlan {
        DrainPlan {
            reason,
            start: Duration::ZERO,
            spread: spread.min(grace),
            answer: Answer::Until(grace),
        }
    }

    /// An unhealthy member or a removed route: sessions run on for `grace − spread` (so
    /// in-flight messages finish), then close over the last `spread` of `grace`.
    pub fn after_grace(reason: DrainReason, grace: Duration, spread: Duration) -> DrainPlan {
        let spread = spread.min(grace);
        DrainPlan {
            reason,
            start: grace - spread,
            spread,
            answer: Answer::After(CLOSE_HANDSHAKE_TIMEOUT),
        }
    }

    /// Closes from now, spread over `window` (an admin drain of a fraction of a member).
    pub fn over(reason: DrainReason, window: Duration) -> DrainPlan {
        DrainPlan {
            reason,
            start: Duration::ZERO,
            spread: window,
            answer: Answer::After(CLOSE_HANDSHAKE_TIMEOUT),
        }
    }

    /// The order for the `i`-th of `n` sessions of this drain; `sample` in `[0, 1)` places it
    /// within its slot.
    pub fn order(&self, i: usize, n: usize, sample: f64) -> DrainSession {
        let close_in = self.start + crate::jitter::slot(self.spread, i, n, sample);
        let answer_within = match self.answer {
            Answer::Until(end) => end.saturating_sub(close_in),
            Answer::After(d) => d,
        };
        DrainSession {
            reason: self.reason,
            close_in,
            answer_within,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn without_a_spread_shutdown_closes_at_once_with_the_whole_grace() {
        let plan = DrainPlan::shutdown(DrainReason::Shutdown, 30 * SEC, Duration::ZERO);
        for i in 0..10 {
            let o = plan.order(i, 10, 0.7);
            assert_eq!((o.close_in, o.answer_within), (Duration::ZERO, 30 * SEC));
        }
    }

    #[test]
    fn without_a_spread_an_unhealthy_drain_closes_after_the_grace_as_before() {
        let plan = DrainPlan::after_grace(DrainReason::BackendUnhealthy, 10 * SEC, Duration::ZERO);
        let o = plan.order(3, 7, 0.5);
        assert_eq!(o.close_in, 10 * SEC);
        assert_eq!(o.answer_within, CLOSE_HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn a_spread_shutdown_closes_at_a_steady_rate_and_ends_within_the_grace() {
        let plan = DrainPlan::shutdown(DrainReason::Restart, 30 * SEC, 10 * SEC);
        let n = 2000;
        let orders: Vec<_> = (0..n)
            .map(|i| plan.order(i, n, crate::jitter::unit()))
            .collect();
        for s in 0..10 {
            let k = orders.iter().filter(|o| o.close_in.as_secs() == s).count();
            assert!((199..=201).contains(&k), "second {s}: {k}");
        }
        assert!(orders
            .iter()
            .all(|o| o.close_in + o.answer_within == 30 * SEC));
        assert!(orders.iter().all(|o| o.reason == DrainReason::Restart));
    }

    #[test]
    fn a_spread_longer_than_the_grace_is_cut_to_the_grace() {
        let plan = DrainPlan::shutdown(DrainReason::Shutdown, 5 * SEC, 60 * SEC);
        assert!(plan.order(99, 100, 0.999).close_in < 5 * SEC);
        let plan = DrainPlan::after_grace(DrainReason::RouteRemoved, 5 * SEC, 60 * SEC);
        assert_eq!(plan.order(0, 100, 0.0).close_in, Duration::ZERO);
        assert!(plan.order(99, 100, 0.999).close_in < 5 * SEC);
    }

    #[test]
    fn an_unhealthy_drain_spreads_over_the_end_of_its_grace() {
        let plan = DrainPlan::after_grace(DrainReason::BackendUnhealthy, 10 * SEC, 4 * SEC);
        let first = plan.order(0, 4, 0.0).close_in;
        let last = plan.order(3, 4, 0.999).close_in;
        assert_eq!(first, 6 * SEC);
        assert!(last < 10 * SEC && last > 9 * SEC, "{last:?}");
    }
}
