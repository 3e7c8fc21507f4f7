//! Limits and quotas (issue #18): per-principal produce and fetch byte rates, and the
//! per-user connection limit. The one place these rules live; every front end applies
//! what they decide.
//!
//! **Byte rates** follow Kafka (KIP-13, KIP-219). Each principal (every connection of one
//! user together; every anonymous connection together) has a produce rate and a fetch rate
//! ([`RateWindow`]): bytes recorded into samples of `window_ms`, at most `window_count` of
//! them, and the rate is their sum over the time they span (at least `window_count - 1`
//! samples long, as Kafka's `Rate` does, so one request early on is not a huge rate). The
//! core charges a request's bytes once, as a whole (the produce's batches, a fetch's
//! records, a publish's body; no per-record work), *then* checks: when the rate is over the
//! quota, the delay is the time the window would have needed at the quota rate minus the
//! time it spans, `bytes * 1000 / quota - window_size_ms`, which is Kafka's
//! `(rate - quota) / quota * window_size_ms` rearranged. The delay goes on the caller's
//! [`Session`] ([`Session::throttled_until`]): a Kafka response carries it as
//! `throttle_time_ms`, and the connection driver reads nothing more from that connection
//! until it passes (KIP-219's muting), so a client of any protocol is held to the rate.
//! Pushed deliveries are charged by their forwarder, which waits the delay before the
//! next one.
//!
//! **Connections per user** are counted here because only the core knows who logged in: a
//! login over the limit fails with [`AuthError::ConnectionLimit`], and the slot a session
//! holds is given back when the session is dropped. Connections per address are counted in
//! `net` (`net::limits`), before any protocol byte is read.
//!
//! Time comes from the broker's injected clock (milliseconds), so the arithmetic is
//! tested without a runtime.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::{AuthError, Principal};
use crate::config::{QuotaConfig, UserQuota};
use crate::core::{Broker, FetchedTopic, Session};

/// Most principals whose rates are remembered; past it, the idle ones are forgotten (they
/// are only users that logged in, so this is reached only with that many users).
const PRINCIPALS_TRACKED_MAX: usize = 10_000;

/// Which rate a charge counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Produce and publish: Kafka's `producer_byte_rate`.
    Produce,
    /// Fetch and deliveries: Kafka's `consumer_byte_rate`.
    Fetch,
}

/// One sample of a [`RateWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    start_ms: i64,
    bytes: u64,
}

/// Bytes over a sliding window of samples, as Kafka's `SampledStat` + `Rate`: a new sample
/// starts when the current one is `window_ms` old; samples `window_ms * window_count` old
/// are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateWindow {
    window_ms: u64,
    window_count: u32,
    samples: VecDeque<Sample>,
}

impl RateWindow {
    /// An empty window of `window_count` samples of `window_ms` (both at least 1).
    pub fn new(window_ms: u64, window_count: u32) -> RateWindow {
        let window_count = window_count.max(2);
        RateWindow {
            window_ms: window_ms.max(1),
            window_count,
            samples: VecDeque::with_capacity(window_count as usize),
        }
    }

    /// Adds `bytes` at `now_ms`.
    pub fn record(&mut self, now_ms: i64, bytes: u64) {
        self.purge(now_ms);
        let window_ms = self.window_ms;
        match self.samples.back_mut() {
            Some(sample) if age_ms(sample.start_ms, now_ms) < window_ms => {
                sample.bytes = sample.bytes.saturating_add(bytes);
            }
            _ => {
                if self.samples.len() >= self.window_count as usize {
                    self.samples.pop_front();
                }
                self.samples.push_back(Sample {
                    start_ms: now_ms,
                    bytes,
                });
            }
        }
    }

    /// Bytes in the window at `now_ms`.
    pub fn total_bytes(&mut self, now_ms: i64) -> u64 {
        self.purge(now_ms);
        self.samples.iter().map(|sample| sample.bytes).sum()
    }

    /// The span the rate is measured over at `now_ms`, ms: from the oldest sample's start,
    /// but at least `window_count - 1` whole samples (Kafka's `Rate.windowSize`), and at
    /// least 1.
    pub fn window_size_ms(&mut self, now_ms: i64) -> u64 {
        self.purge(now_ms);
        let mut elapsed_ms = self
            .samples
            .front()
            .map_or(0, |oldest| age_ms(oldest.start_ms, now_ms));
        let full_windows = elapsed_ms / self.window_ms;
        let full_windows_min = u64::from(self.window_count - 1);
        if full_windows < full_windows_min {
            elapsed_ms += (full_windows_min - full_windows) * self.window_ms;
        }
        elapsed_ms.max(1)
    }

    /// Bytes per second at `now_ms`.
    pub fn rate(&mut self, now_ms: i64) -> f64 {
        let total = self.total_bytes(now_ms) as f64;
        total * 1000.0 / self.window_size_ms(now_ms) as f64
    }

    /// How long the owner must wait, ms, for the window's rate to come down to
    /// `quota_bytes_per_s` (0 when it is not above it; always 0 for a quota of 0, which
    /// means unlimited). Capped at the whole window: bytes older than that are forgotten
    /// anyway, so a longer wait would hold a client for what no longer counts.
    pub fn throttle_ms(&mut self, now_ms: i64, quota_bytes_per_s: u64) -> u64 {
        if quota_bytes_per_s == 0 {
            return 0;
        }
        let total = u128::from(self.total_bytes(now_ms));
        let window_size_ms = u128::from(self.window_size_ms(now_ms));
        let needed_ms = total * 1000 / u128::from(quota_bytes_per_s);
        let throttle_ms = needed_ms.saturating_sub(window_size_ms);
        let cap_ms = u128::from(self.window_ms) * u128::from(self.window_count);
        u64::try_from(throttle_ms.min(cap_ms)).unwrap_or(u64::MAX)
    }

    /// Records `bytes` at `now_ms` and returns the throttle it causes (Kafka records, then
    /// checks).
    pub fn record_and_throttle_ms(&mut self, now_ms: i64, bytes: u64, quota: u64) -> u64 {
        self.record(now_ms, bytes);
        self.throttle_ms(now_ms, quota)
    }

    /// True when no sample holds bytes at `now_ms`.
    fn is_idle(&mut self, now_ms: i64) -> bool {
        self.total_bytes(now_ms) == 0
    }

    /// Drops samples that ended more than the whole window ago.
    fn purge(&mut self, now_ms: i64) {
        let span_ms = self.window_ms * u64::from(self.window_count);
        while let Some(oldest) = self.samples.front() {
            if age_ms(oldest.start_ms, now_ms) >= span_ms {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Milliseconds from `start_ms` to `now_ms` (0 if the clock went back).
fn age_ms(start_ms: i64, now_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(start_ms)).unwrap_or(0)
}

/// The two rates of one principal.
#[derive(Debug)]
struct PrincipalRates {
    produce: RateWindow,
    fetch: RateWindow,
}

/// Every principal's rates and the configured quotas.
#[derive(Debug)]
pub struct Quotas {
    producer_byte_rate: u64,
    consumer_byte_rate: u64,
    window_ms: u64,
    window_count: u32,
    users: BTreeMap<String, UserQuota>,
    /// True when no principal has a quota: charging costs nothing then.
    unlimited: bool,
    rates: Mutex<HashMap<String, PrincipalRates>>,
}

impl Quotas {
    /// The quotas `config` sets.
    pub fn new(config: &QuotaConfig) -> Quotas {
        let unlimited = config.producer_byte_rate == 0
            && config.consumer_byte_rate == 0
            && config.users.values().all(|user| {
                user.producer_byte_rate.unwrap_or(0) == 0
                    && user.consumer_byte_rate.unwrap_or(0) == 0
            });
        Quotas {
            producer_byte_rate: config.producer_byte_rate,
            consumer_byte_rate: config.consumer_byte_rate,
            window_ms: config.window_ms,
            window_count: config.window_count,
            users: config.users.clone(),
            unlimited,
            rates: Mutex::new(HashMap::new()),
        }
    }

    /// `principal`'s quota of `kind`, bytes per second (0: unlimited): its user's override,
    /// else the default.
    pub fn quota(&self, principal: &Principal, kind: QuotaKind) -> u64 {
        let user = self.users.get(principal.name());
        match kind {
            QuotaKind::Produce => user
                .and_then(|user| user.producer_byte_rate)
                .unwrap_or(self.producer_byte_rate),
            QuotaKind::Fetch => user
                .and_then(|user| user.consumer_byte_rate)
                .unwrap_or(self.consumer_byte_rate),
        }
    }

    /// Charges `bytes` of `kind` to `principal` at `now_ms`; returns the throttle delay.
    pub fn charge(&self, principal: &Principal, kind: QuotaKind, bytes: u64, now_ms: i64) -> u64 {
        if self.unlimited {
            return 0;
        }
        let quota = self.quota(principal, kind);
        if quota == 0 {
            return 0;
        }
        let mut rates = self
            .rates
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if rates.len() >= PRINCIPALS_TRACKED_MAX && !rates.contains_key(principal.name()) {
            rates.retain(|_, rates| !rates.produce.is_idle(now_ms) || !rates.fetch.is_idle(now_ms));
        }
        let rates = rates
            .entry(principal.name().to_string())
            .or_insert_with(|| PrincipalRates {
                produce: RateWindow::new(self.window_ms, self.window_count),
                fetch: RateWindow::new(self.window_ms, self.window_count),
            });
        let window = match kind {
            QuotaKind::Produce => &mut rates.produce,
            QuotaKind::Fetch => &mut rates.fetch,
        };
        window.record_and_throttle_ms(now_ms, bytes, quota)
    }
}

/// Connections logged in per user, for `connections_per_user_max`.
#[derive(Debug)]
pub struct UserConnections {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One connection of a user, counted until dropped.
#[derive(Debug)]
pub struct UserSlot {
    connections: Arc<UserConnections>,
    user: String,
}

impl UserConnections {
    /// At most `max` connections per user (0: no limit).
    pub fn new(max: usize) -> Arc<UserConnections> {
        Arc::new(UserConnections {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection of `user`.
    ///
    /// # Errors
    /// [`AuthError::ConnectionLimit`] when `user` already has `max` connections.
    pub fn admit(self: &Arc<Self>, user: &str) -> Result<Option<UserSlot>, AuthError> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = open.entry(user.to_string()).or_insert(0);
        if *count >= self.max {
            return Err(AuthError::ConnectionLimit {
                user: user.to_string(),
                max: self.max,
            });
        }
        *count += 1;
        Ok(Some(UserSlot {
            connections: self.clone(),
            user: user.to_string(),
        }))
    }

    /// Connections of `user` counted now.
    pub fn open(&self, user: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(user)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl Broker {
    /// Charges `bytes` of `kind` to `caller`'s principal and throttles `caller` (mutes its
    /// connection) for the delay it causes; returns the delay.
    pub fn charge_quota(&self, caller: &Session, kind: QuotaKind, bytes: u64) -> Duration {
        let delay = self.charge_delivered(caller, kind, bytes);
        if !delay.is_zero() {
            caller.throttle(delay);
        }
        delay
    }

    /// Charges `bytes` of `kind` to `caller`'s principal and returns the delay it causes,
    /// without muting the connection: for pushed deliveries, whose forwarder waits the
    /// delay itself while the connection keeps reading acks and heartbeats.
    pub fn charge_delivered(&self, caller: &Session, kind: QuotaKind, bytes: u64) -> Duration {
        if self.quotas.unlimited {
            return Duration::ZERO;
        }
        let principal = caller.principal();
        let throttle_ms = self
            .quotas
            .charge(&principal, kind, bytes, self.clock.now_ms());
        if throttle_ms > 0 {
            tracing::debug!(%principal, ?kind, bytes, throttle_ms, "quota exceeded; throttling");
        }
        Duration::from_millis(throttle_ms)
    }

    /// Charges a produce's batches (their bytes as sent) to `caller`.
    pub(crate) fn charge_produced<'a>(
        &self,
        caller: &Session,
        batches: impl Iterator<Item = &'a bytes::Bytes>,
    ) {
        if self.quotas.unlimited {
            return;
        }
        let bytes: usize = batches.map(bytes::Bytes::len).sum();
        self.charge_quota(caller, QuotaKind::Produce, bytes as u64);
    }

    /// Charges a fetch's records to `caller`.
    pub(crate) fn charge_fetched(&self, caller: &Session, topics: &[FetchedTopic]) {
        if self.quotas.unlimited {
            return;
        }
        let bytes: usize = topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.records.len())
            .sum();
        if bytes > 0 {
            self.charge_quota(caller, QuotaKind::Fetch, bytes as u64);
        }
    }

    /// Counts a connection logged in as `principal` against `connections_per_user_max`
    /// (anonymous connections are limited per address only).
    pub(crate) fn admit_user(&self, principal: &Principal) -> Result<Option<UserSlot>, AuthError> {
        match principal {
            Principal::Anonymous => Ok(None),
            Principal::User(user) => self.user_connections.admit(user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_fresh_window_measures_over_window_count_minus_one_samples() {
        let mut window = RateWindow::new(1000, 11);
        window.record(0, 10_000);
        assert_eq!(window.window_size_ms(0), 10_000);
        assert_eq!(window.rate(0), 1000.0);
        // 10 000 bytes in a 10 s window is 1000 B/s: at a 1000 B/s quota, no throttle.
        assert_eq!(window.throttle_ms(0, 1000), 0);
        assert_eq!(window.throttle_ms(0, 500), 10_000);
    }

    #[test]
    fn throttle_is_kafkas_formula() {
        // Kafka: (rate - quota) / quota * window_size_ms.
        let mut window = RateWindow::new(1000, 5);
        window.record(0, 1_000);
        window.record(1_250, 3_000);
        let size_ms = window.window_size_ms(1_250);
        let rate = window.rate(1_250);
        let quota = 500u64;
        let kafka = ((rate - quota as f64) / quota as f64 * size_ms as f64).round() as u64;
        let ours = window.throttle_ms(1_250, quota);
        assert!(ours > 0);
        assert!(ours.abs_diff(kafka) <= 1, "ours {ours}, Kafka's {kafka}");
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut window = RateWindow::new(100, 3);
        window.record(0, 5_000);
        assert_eq!(window.total_bytes(299), 5_000);
        assert_eq!(window.total_bytes(300), 0);
        window.record(1_000, 7);
        assert_eq!(window.total_bytes(1_000), 7);
    }

    #[test]
    fn a_zero_quota_never_throttles_and_the_cap_is_the_whole_window() {
        let mut window = RateWindow::new(100, 3);
        window.record(0, u64::MAX / 2);
        assert_eq!(window.throttle_ms(0, 0), 0);
        assert_eq!(window.throttle_ms(0, 1), 300);
    }

    #[test]
    fn user_overrides_win_over_defaults_and_anonymous_is_a_principal() {
        let mut users = BTreeMap::new();
        users.insert(
            "alice".to_string(),
            UserQuota {
                producer_byte_rate: Some(7),
                consumer_byte_rate: None,
            },
        );
        users.insert(
            "ANONYMOUS".to_string(),
            UserQuota {
                producer_byte_rate: Some(0),
                consumer_byte_rate: Some(3),
            },
        );
        let quotas = Quotas::new(&QuotaConfig {
            producer_byte_rate: 100,
            consumer_byte_rate: 200,
            users,
            ..QuotaConfig::default()
        });
        let alice = Principal::User("alice".to_string());
        let bob = Principal::User("bob".to_string());
        assert_eq!(quotas.quota(&alice, QuotaKind::Produce), 7);
        assert_eq!(quotas.quota(&alice, QuotaKind::Fetch), 200);
        assert_eq!(quotas.quota(&bob, QuotaKind::Produce), 100);
        assert_eq!(quotas.quota(&Principal::Anonymous, QuotaKind::Produce), 0);
        assert_eq!(quotas.quota(&Principal::Anonymous, QuotaKind::Fetch), 3);
        // Unlimited: never throttled however much is charged.
        assert_eq!(
            quotas.charge(&Principal::Anonymous, QuotaKind::Produce, 1 << 40, 0),
            0
        );
        // Principals do not share rates.
        assert!(quotas.charge(&alice, QuotaKind::Produce, 1_000, 0) > 0);
        assert_eq!(quotas.charge(&bob, QuotaKind::Produce, 100, 0), 0);
    }

    #[test]
    fn user_connections_are_counted_until_their_slots_drop() {
        let connections = UserConnections::new(2);
        let first = connections.admit("alice").unwrap();
        let second = connections.admit("alice").unwrap();
        assert!(matches!(
            connections.admit("alice"),
            Err(AuthError::ConnectionLimit { max: 2, .. })
        ));
        assert!(connections.admit("bob").unwrap().is_some());
        drop(first);
        assert_eq!(connections.open("alice"), 1);
        let third = connections.admit("alice").unwrap();
        drop((second, third));
        assert_eq!(connections.open("alice"), 0);
        assert!(UserConnections::new(0).admit("x").unwrap().is_none());
    }

    /// A client that sends `chunk` bytes, then waits the throttle it is given (plus
    /// `think_ms`), for `duration_ms`; returns the bytes it sent per second.
    fn achieved_rate(
        quota: u64,
        chunk: u64,
        window_ms: u64,
        window_count: u32,
        think_ms: i64,
        duration_ms: i64,
    ) -> f64 {
        let mut window = RateWindow::new(window_ms, window_count);
        let mut now_ms = 0i64;
        let mut sent = 0u64;
        while now_ms < duration_ms {
            let throttle = window.record_and_throttle_ms(now_ms, chunk, quota);
            sent += chunk;
            now_ms += i64::try_from(throttle).unwrap() + think_ms;
        }
        sent as f64 * 1000.0 / now_ms as f64
    }

    proptest! {
        // Goal: the rule holds any obedient client to its quota over time. Method: simulate
        // clients of random speeds and request sizes (each below a tenth of a window's
        // worth, as real batches are) for 200 windows; the initial burst a fresh window
        // allows (window_count - 1 samples' worth) is then at most a few percent.
        #[test]
        fn an_obedient_client_converges_to_its_quota(
            quota in 10_000u64..10_000_000,
            chunk_fraction in 1u64..100,
            window_ms in 50u64..2_000,
            window_count in 2u32..12,
            think_ms in 0i64..20,
        ) {
            let chunk = (quota * window_ms / 1000 * chunk_fraction / 1000).max(1);
            let duration_ms = i64::try_from(window_ms * 200).unwrap();
            let rate = achieved_rate(quota, chunk, window_ms, window_count, think_ms, duration_ms);
            let burst = (quota * window_ms * u64::from(window_count)) as f64
                / duration_ms as f64;
            prop_assert!(rate <= quota as f64 * 1.02 + burst, "rate {rate} over quota {quota}");
            // A client that thinks longer than the quota needs is slower than the quota;
            // otherwise it is held close to it.
            let natural = chunk as f64 * 1000.0 / think_ms.max(1) as f64;
            if natural > quota as f64 * 1.5 {
                prop_assert!(rate >= quota as f64 * 0.9, "rate {rate} under quota {quota}");
            }
        }

        #[test]
        fn throttle_never_exceeds_the_window_and_zero_quota_is_free(
            records in proptest::collection::vec((0i64..5_000, 0u64..1_000_000), 0..50),
            quota in 0u64..1_000_000,
        ) {
            let mut window = RateWindow::new(100, 5);
            let mut now_ms = 0;
            for (step_ms, bytes) in records {
                now_ms += step_ms;
                let throttle = window.record_and_throttle_ms(now_ms, bytes, quota);
                prop_assert!(throttle <= 500);
                if quota == 0 {
                    prop_assert_eq!(throttle, 0);
                }
            }
        }
    }
}
