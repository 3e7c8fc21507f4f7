//! [`ClientConfig`]: how to reach the cluster and how hard to try.
//!
//! Every timeout and limit is a named field with its unit last and a default that says why
//! it is what it is. Producer and consumer settings live beside their types
//! ([`crate::ProducerConfig`], [`crate::ConsumerConfig`]).

use std::time::Duration;

use crate::tls::Tls;

/// The address `wharf` and the client use when none is given: `wharfd`'s default listener.
pub const DEFAULT_BROKER: &str = "127.0.0.1:7420";

/// Settings shared by every connection of a [`crate::Client`].
///
/// ```
/// use std::time::Duration;
/// use wharf_client::ClientConfig;
///
/// let config = ClientConfig::new("127.0.0.1:7420")
///     .client_id("billing")
///     .request_timeout(Duration::from_secs(10));
/// assert_eq!(config.bootstrap, "127.0.0.1:7420");
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The first broker to contact (`host:port`); later connections use the addresses the
    /// brokers advertise in metadata.
    pub bootstrap: String,
    /// Sent in the handshake and in group heartbeats, for the broker's logs.
    pub client_id: String,
    /// How long one request may wait for its response (default 30 s, as Kafka's
    /// `request.timeout.ms`). Long-poll fetches wait less than this by construction.
    pub request_timeout: Duration,
    /// How long one TCP connect plus handshake may take (default 10 s).
    pub connect_timeout: Duration,
    /// How long to keep retrying a broker this client has never reached (default 10 s), so
    /// a client started together with its broker waits for it. Zero means one attempt.
    pub bootstrap_timeout: Duration,
    /// How long to keep reconnecting to a broker that was reachable before, before a
    /// request fails with the last connection error (default 30 s: a restarting broker
    /// comes back well within it).
    pub reconnect_timeout: Duration,
    /// First retry delay of the exponential backoff (default 100 ms, Kafka's
    /// `retry.backoff.ms`).
    pub retry_backoff_base: Duration,
    /// Largest retry delay (default 1 s, Kafka's `retry.backoff.max.ms`).
    pub retry_backoff_max: Duration,
    /// Consecutive connection failures that open a broker's circuit breaker (default 5).
    pub breaker_failure_threshold: u32,
    /// How long an open breaker fails fast before it lets one probe through (default 2 s).
    pub breaker_cooldown: Duration,
    /// Requests one connection may have in flight (default 64): bounds the memory a slow
    /// broker can make the client hold.
    pub in_flight_requests_max: usize,
    /// Largest response frame accepted, in bytes (default 64 MiB: a fetch response of
    /// maximal batches fits with room to spare; a corrupt length prefix cannot make the
    /// client allocate more).
    pub frame_bytes_max: u32,
    /// Speak TLS to every broker (default `None`: plaintext), as [`ClientConfig::tls`] sets.
    pub tls: Option<Tls>,
    /// Who every connection logs in as (SCRAM, right after the handshake); `None`: no
    /// login, which a broker that requires authentication refuses (issue #18).
    pub credentials: Option<crate::Credentials>,
}

impl ClientConfig {
    /// Defaults with `bootstrap` as the first broker.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        ClientConfig {
            bootstrap: bootstrap.into(),
            client_id: "wharf-client".to_string(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            bootstrap_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(30),
            retry_backoff_base: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            breaker_failure_threshold: 5,
            breaker_cooldown: Duration::from_secs(2),
            in_flight_requests_max: 64,
            frame_bytes_max: 64 * 1024 * 1024,
            tls: None,
            credentials: None,
        }
    }

    /// Sets [`ClientConfig::credentials`].
    #[must_use]
    pub fn credentials(mut self, credentials: crate::Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Sets [`ClientConfig::client_id`].
    #[must_use]
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::bootstrap_timeout`].
    #[must_use]
    pub fn bootstrap_timeout(mut self, timeout: Duration) -> Self {
        self.bootstrap_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::reconnect_timeout`].
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Sets the retry backoff's first and largest delay.
    #[must_use]
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_backoff_base = base;
        self.retry_backoff_max = max;
        self
    }

    /// Connects to every broker over TLS: the bootstrap address and the ones metadata
    /// advertises, each checked against its certificate by its host name or IP address.
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the circuit breaker's failure threshold and cool-down.
    #[must_use]
    pub fn circuit_breaker(mut self, failure_threshold: u32, cooldown: Duration) -> Self {
        self.breaker_failure_threshold = failure_threshold;
        self.breaker_cooldown = cooldown;
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new(DEFAULT_BROKER)
    }
}
