//! The limit on failed logins per client address: after `failures_max` (the
//! `login_failures_per_minute_max` setting, default [`FAILED_LOGINS_PER_MINUTE_MAX`])
//! failures within a minute, further logins from that address
//! are refused without being checked until the oldest failure is a minute old. That makes
//! online password guessing slow (at most that many guesses a minute per address) while an
//! honest user who mistyped waits at most a minute.
//!
//! Time comes from the caller (the core's injected clock), so the rule is tested without a
//! runtime.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

/// Default of the failed logins one address may make within [`WINDOW_MS`] before it is
/// refused: a person mistyping stays well under it, a guesser gets ten tries a minute.
pub const FAILED_LOGINS_PER_MINUTE_MAX: usize = 10;
/// The window the limit counts over.
pub const WINDOW_MS: i64 = 60_000;
/// Most addresses tracked: beyond it the address with the oldest failure is forgotten, so a
/// flood of spoofed-looking sources cannot grow the map without bound.
pub const TRACKED_ADDRESSES_MAX: usize = 10_000;

/// Recent failed logins by client address.
#[derive(Debug)]
pub struct FailedLogins {
    failures: Mutex<HashMap<IpAddr, VecDeque<i64>>>,
    failures_max: usize,
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins::new(FAILED_LOGINS_PER_MINUTE_MAX)
    }
}

impl FailedLogins {
    /// A limiter that refuses an address after `failures_max` failures within a minute
    /// (at least one).
    pub fn new(failures_max: usize) -> FailedLogins {
        FailedLogins {
            failures: Mutex::new(HashMap::new()),
            failures_max: failures_max.max(1),
        }
    }

    /// True if `address` may try to log in at `now_ms`.
    pub fn allows(&self, address: IpAddr, now_ms: i64) -> bool {
        let mut failures = self.lock();
        let Some(times) = failures.get_mut(&address) else {
            return true;
        };
        prune(times, now_ms);
        if times.is_empty() {
            failures.remove(&address);
            return true;
        }
        times.len() < self.failures_max
    }

    /// Records a failed login of `address` at `now_ms`.
    pub fn record_failure(&self, address: IpAddr, now_ms: i64) {
        let mut failures = self.lock();
        if failures.len() >= TRACKED_ADDRESSES_MAX && !failures.contains_key(&address) {
            let oldest = failures
                .iter()
                .min_by_key(|(_, times)| times.back().copied().unwrap_or(i64::MIN))
                .map(|(address, _)| *address);
            if let Some(oldest) = oldest {
                failures.remove(&oldest);
            }
        }
        let times = failures.entry(address).or_default();
        prune(times, now_ms);
        times.push_back(now_ms);
        while times.len() > self.failures_max {
            times.pop_front();
        }
    }

    /// Forgets `address`'s failures (it logged in).
    pub fn record_success(&self, address: IpAddr) {
        self.lock().remove(&address);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<i64>>> {
        self.failures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn prune(times: &mut VecDeque<i64>, now_ms: i64) {
    while times
        .front()
        .is_some_and(|time| now_ms.saturating_sub(*time) >= WINDOW_MS)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn refuses_after_max_failures_within_a_minute_then_allows_again() {
        let limiter = FailedLogins::default();
        for attempt in 0..FAILED_LOGINS_PER_MINUTE_MAX {
            assert!(limiter.allows(ADDRESS, 1_000));
            limiter.record_failure(ADDRESS, 1_000 + i64::try_from(attempt).expect("small"));
        }
        assert!(!limiter.allows(ADDRESS, 2_000));
        assert!(limiter.allows(OTHER, 2_000));
        assert!(limiter.allows(ADDRESS, 1_000 + WINDOW_MS + 10));
    }

    #[test]
    fn success_forgets_failures() {
        let limiter = FailedLogins::default();
        for _ in 0..FAILED_LOGINS_PER_MINUTE_MAX {
            limiter.record_failure(ADDRESS, 0);
        }
        limiter.record_success(ADDRESS);
        assert!(limiter.allows(ADDRESS, 1));
    }
}
