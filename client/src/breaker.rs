//! The circuit breaker of one broker connection: closed → open → half-open → closed.
//!
//! - **Closed**: requests go through; consecutive connection failures are counted and
//!   `failure_threshold` of them open the breaker. A success resets the count.
//! - **Open**: every request fails fast with [`crate::Error::CircuitOpen`] until `cooldown`
//!   has passed since it opened, so a dead broker is not hammered by every caller.
//! - **Half-open**: one probe goes through; its success closes the breaker, its failure
//!   opens it again for another cool-down. Other callers keep failing fast meanwhile. A
//!   probe whose outcome never arrives (its caller was cancelled) is replaced by another
//!   after one more cool-down, so the breaker cannot stick half-open.
//!
//! The state machine is pure: every method takes `now`, so tests inject time and never
//! sleep. Only connection failures count; a broker answering with an error code is healthy.

use std::time::{Duration, Instant};

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests pass; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures since the last success.
        failures: u32,
    },
    /// Requests fail fast until `since + cooldown`.
    Open {
        /// When the breaker opened.
        since: Instant,
    },
    /// One probe is out since `probe_since`; the next outcome decides.
    HalfOpen {
        /// When the probe was let through.
        probe_since: Instant,
    },
}

/// The breaker of one broker connection.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    cooldown: Duration,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker opening after `failure_threshold` consecutive failures (at least 1)
    /// and staying open for `cooldown`.
    pub fn new(failure_threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            cooldown,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to send a request at `now`.
    ///
    /// # Errors
    /// While open (or half-open with a probe out), the time left until a probe may go.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { since } => {
                let probe_at = since + self.cooldown;
                if now >= probe_at {
                    self.state = BreakerState::HalfOpen { probe_since: now };
                    Ok(())
                } else {
                    Err(probe_at - now)
                }
            }
            BreakerState::HalfOpen { probe_since } => {
                let replace_at = probe_since + self.cooldown;
                if now >= replace_at {
                    self.state = BreakerState::HalfOpen { probe_since: now };
                    Ok(())
                } else {
                    Err(replace_at - now)
                }
            }
        }
    }

    /// Records a request that reached the broker and got an answer.
    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// Records a connection failure at `now`.
    pub fn record_failure(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.failure_threshold {
                    BreakerState::Open { since: now }
                } else {
                    BreakerState::Closed { failures }
                }
            }
            BreakerState::HalfOpen { .. } => BreakerState::Open { since: now },
            // A request admitted before the breaker opened failed late: the cool-down
            // still runs from the first opening.
            open @ BreakerState::Open { .. } => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(2);

    fn breaker() -> (CircuitBreaker, Instant) {
        (CircuitBreaker::new(3, COOLDOWN), Instant::now())
    }

    fn fail(breaker: &mut CircuitBreaker, now: Instant, times: u32) {
        for _ in 0..times {
            breaker.try_acquire(now).expect("admitted while closed");
            breaker.record_failure(now);
        }
    }

    #[test]
    fn stays_closed_below_threshold() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 2);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 2 });
        assert_eq!(breaker.try_acquire(start), Ok(()));
    }

    #[test]
    fn success_resets_failure_count() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 2);
        breaker.record_success();
        fail(&mut breaker, start, 2);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 2 });
    }

    #[test]
    fn opens_at_threshold_and_fails_fast_until_cooldown() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 3);
        assert_eq!(breaker.state(), BreakerState::Open { since: start });
        let later = start + Duration::from_millis(500);
        assert_eq!(
            breaker.try_acquire(later),
            Err(COOLDOWN - Duration::from_millis(500))
        );
    }

    #[test]
    fn half_open_admits_one_probe_after_cooldown() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 3);
        let probe_time = start + COOLDOWN;
        assert_eq!(breaker.try_acquire(probe_time), Ok(()));
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen {
                probe_since: probe_time
            }
        );
        assert!(breaker.try_acquire(probe_time).is_err(), "second caller");
    }

    #[test]
    fn probe_success_closes() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 3);
        breaker.try_acquire(start + COOLDOWN).unwrap();
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(breaker.try_acquire(start + COOLDOWN), Ok(()));
    }

    #[test]
    fn probe_failure_reopens_for_a_new_cooldown() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 3);
        let probe_time = start + COOLDOWN;
        breaker.try_acquire(probe_time).unwrap();
        breaker.record_failure(probe_time);
        assert_eq!(breaker.state(), BreakerState::Open { since: probe_time });
        assert!(breaker.try_acquire(probe_time + COOLDOWN / 2).is_err());
        assert_eq!(breaker.try_acquire(probe_time + COOLDOWN), Ok(()));
    }

    #[test]
    fn lost_probe_is_replaced_after_another_cooldown() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 3);
        let probe_time = start + COOLDOWN;
        breaker.try_acquire(probe_time).unwrap();
        // The probe's caller was cancelled: no outcome is ever recorded.
        assert!(breaker.try_acquire(probe_time + COOLDOWN / 2).is_err());
        assert_eq!(breaker.try_acquire(probe_time + COOLDOWN), Ok(()));
    }

    #[test]
    fn late_failure_while_open_keeps_original_cooldown() {
        let (mut breaker, start) = breaker();
        fail(&mut breaker, start, 3);
        breaker.record_failure(start + Duration::from_secs(1));
        assert_eq!(breaker.state(), BreakerState::Open { since: start });
    }
}
