//! Exponential backoff with jitter, and the small random source behind the jitter.
//!
//! [`Backoff::delay`] is a pure function of the attempt number and a jitter fraction, so its
//! bounds are unit-tested without a clock. The jitter spreads the retries of many clients
//! that failed together (a broker restart) instead of having them knock in lockstep.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays that double from `base` up to `max`, with "equal jitter": attempt `n` waits a
/// random duration in `[d / 2, d]` where `d = min(max, base * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay of attempt 0 before jitter.
    pub base: Duration,
    /// Cap of the delay before jitter.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay before jitter of retry `attempt` (0-based): `min(max, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^20 times any sane base already exceeds any sane max; capping the shift keeps
        // the multiplication from overflowing.
        let factor = 1u32 << attempt.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay of retry `attempt` with `jitter` in `[0, 1]`: between half the ceiling
    /// (jitter 0) and the ceiling (jitter 1).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A tiny xorshift64* generator: plenty for jitter and sticky partition choice, and no
/// dependency. Seeded from the standard library's per-process random hash keys.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A generator with a random seed.
    pub fn from_entropy() -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        Jitter::with_seed(hasher.finish())
    }

    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Jitter { state: seed | 1 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut value = self.state;
        value ^= value >> 12;
        value ^= value << 25;
        value ^= value >> 27;
        self.state = value;
        value.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fraction in `[0, 1)`.
    pub fn fraction(&mut self) -> f64 {
        // 53 random bits fill an f64's mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u32) -> u32 {
        debug_assert!(bound > 0);
        u32::try_from(self.next_u64() % u64::from(bound.max(1))).expect("below a u32 bound")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let backoff = backoff();
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(4), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delay_stays_within_half_ceiling_and_ceiling() {
        let backoff = backoff();
        let mut jitter = Jitter::with_seed(7);
        for attempt in 0..40 {
            let ceiling = backoff.ceiling(attempt);
            assert_eq!(backoff.delay(attempt, 0.0), ceiling / 2);
            assert_eq!(backoff.delay(attempt, 1.0), ceiling);
            let delay = backoff.delay(attempt, jitter.fraction());
            assert!(delay >= ceiling / 2, "attempt {attempt}: {delay:?}");
            assert!(delay <= ceiling, "attempt {attempt}: {delay:?}");
        }
    }

    #[test]
    fn jitter_fraction_is_in_unit_interval_and_varies() {
        let mut jitter = Jitter::with_seed(42);
        let values: Vec<f64> = (0..1000).map(|_| jitter.fraction()).collect();
        assert!(values.iter().all(|value| (0.0..1.0).contains(value)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }

    #[test]
    fn below_stays_below_bound() {
        let mut jitter = Jitter::with_seed(3);
        assert!((0..1000).all(|_| jitter.below(6) < 6));
        assert_eq!(jitter.below(1), 0);
    }
}
