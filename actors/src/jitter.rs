//! Randomness for spreading things out over time: drain close frames, `max_session_age`,
//! `Retry-After`. Pure functions over a uniform sample in `[0, 1)` (tested with fixed
//! samples), and one source of samples ([`unit`]) that is unpredictable but not
//! cryptographic: it only has to keep thousands of clients from acting in the same second.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A uniform sample in `[0, 1)`: std's per-process random hash keys mixed with a counter (no
/// lock, no allocation).
pub fn unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` moved by up to `± fraction` of itself, as `sample` (in `[0, 1)`) says: `sample = 0.5`
/// is `base`, `0` is `base × (1 − fraction)`.
pub fn around(base: Duration, fraction: f64, sample: f64) -> Duration {
    let f = fraction.clamp(0.0, 1.0);
    base.mul_f64(1.0 - f + 2.0 * f * sample.clamp(0.0, 1.0))
}

/// The moment, within a `window`, at which the `i`-th of `n` things happens when they are spread
/// at a steady rate with jitter: slot `i` of `n` equal slots, at `sample` within its slot.
/// Every slot gets one thing, so the rate is steady over the window; where in its slot each
/// lands is random, so no two drains produce the same pattern.
pub fn slot(window: Duration, i: usize, n: usize, sample: f64) -> Duration {
    if n == 0 || window.is_zero() {
        return Duration::ZERO;
    }
    window.mul_f64((i as f64 + sample.clamp(0.0, 1.0)) / n as f64)
}

/// A `Retry-After` value in whole seconds between `min` and `max` (inclusive), as `sample`
/// says: refused clients spread their retries instead of coming back together.
pub fn retry_after_secs(min: u64, max: u64, sample: f64) -> u64 {
    let span = max.saturating_sub(min) + 1;
    (min + (sample.clamp(0.0, 1.0) * span as f64) as u64).min(max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn samples_are_in_the_unit_interval_and_vary() {
        let samples: Vec<f64> = (0..1000).map(|_| unit()).collect();
        assert!(samples.iter().all(|s| (0.0..1.0).contains(s)));
        let low = samples.iter().filter(|s| **s < 0.5).count();
        assert!((400..=600).contains(&low), "{low} of 1000 below 0.5");
    }

    #[test]
    fn around_stays_within_the_fraction() {
        assert_eq!(around(10 * SEC, 0.1, 0.5), 10 * SEC);
        assert_eq!(around(10 * SEC, 0.1, 0.0), 9 * SEC);
        assert!(around(10 * SEC, 0.1, 0.999_999) <= 11 * SEC);
        assert_eq!(around(10 * SEC, 0.0, 0.9), 10 * SEC);
    }

    #[test]
    fn slots_cover_the_window_at_a_steady_rate() {
        let n = 1000;
        let at: Vec<Duration> = (0..n).map(|i| slot(10 * SEC, i, n, unit())).collect();
        assert!(at.iter().all(|d| *d < 10 * SEC));
        // Each second of the window holds a tenth of them.
        for s in 0..10 {
            let k = at.iter().filter(|d| d.as_secs() == s).count();
            assert!((99..=101).contains(&k), "second {s}: {k}");
        }
        assert_eq!(slot(SEC, 0, 1, 0.0), Duration::ZERO);
        assert_eq!(slot(Duration::ZERO, 5, 10, 0.5), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_within_its_bounds() {
        assert_eq!(retry_after_secs(1, 5, 0.0), 1);
        assert_eq!(retry_after_secs(1, 5, 0.999), 5);
        assert_eq!(retry_after_secs(3, 3, 0.7), 3);
        let seen: std::collections::BTreeSet<u64> =
            (0..200).map(|_| retry_after_secs(1, 5, unit())).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    }
}
