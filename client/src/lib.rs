//! The Wharf client library: an async producer, consumer and admin client over Wharf's
//! wire protocol, and the `wharf` command line built on them.
//!
//! Start with a [`Client`] (one per application: it owns the connections and the metadata
//! cache), then build a [`Producer`], a [`Consumer`] or an [`Admin`] on it for streams, or a
//! [`Publisher`] and [`Subscriber`]s for queues (exchanges, routing keys, push delivery with
//! acks; see [`Publisher`] and [`Subscriber`] for examples).
//!
//! ```no_run
//! # async fn example() -> wharf_client::Result<()> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use wharf_client::{Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig};
//!
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
//!
//! let producer = Producer::new(&client, ProducerConfig::default());
//! producer.send("orders", None, Some(Bytes::from("hello")), vec![]).await?;
//!
//! let config = ConsumerConfig::default().auto_offset_reset(OffsetReset::Earliest);
//! let mut consumer = Consumer::new(&client, config);
//! consumer.subscribe("billing", ["orders"]).await?;
//! let records = consumer.poll(Duration::from_secs(1)).await?;
//! consumer.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Layers, top to bottom: [`Producer`] / [`Consumer`] / [`Admin`] → [`Client`] (routing,
//! metadata, reconnects, circuit breakers) → `connection` (one pipelined TCP connection) →
//! `wharf_protocol` (bytes). This crate never depends on the broker and never touches
//! files (except the system's trust store when [`Tls`] is given no CA). Every failure is
//! a typed [`Error`]. Over TLS ([`ClientConfig::tls`]) everything above the connection
//! is the same.

#![warn(missing_docs)]

mod acl_admin;
mod admin;
mod auth;
mod backoff;
mod breaker;
mod cluster;
mod cluster_admin;
mod config;
mod connection;
mod consumer;
mod error;
mod fetch;
mod metadata;
mod offsets;
mod partitioner;
mod producer;
mod publisher;
mod queue_admin;
mod subscriber;
mod tls;
mod user_admin;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod fake_broker;
#[cfg(test)]
mod idempotence_tests;

pub use admin::{
    Admin, GroupDescription, GroupMemberDescription, GroupSummary, OffsetResetPlan, PartitionLag,
    ResetMode, ResetSpec, TopicConfigValue,
};
pub use auth::Credentials;
pub use backoff::{Backoff, Jitter};
pub use breaker::{BreakerState, CircuitBreaker};
pub use cluster::Client;
pub use cluster_admin::{ClusterDescription, PartitionReplicas};
pub use config::{ClientConfig, DEFAULT_BROKER};
pub use consumer::{CommitPolicy, Consumer, ConsumerConfig, ConsumerGroupMetadata, OffsetReset};
pub use error::{Error, Result};
pub use fetch::ConsumerRecord;
pub use metadata::{PartitionDescription, TopicDescription, TopicId, TopicPartition};
pub use partitioner::{jump_consistent_hash, murmur2, Partitioner};
pub use producer::{
    DeliveryFuture, Idempotence, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
pub use user_admin::UserDescription;

pub use publisher::{PublishConfirm, Publisher, Routing, DELAY_HEADER, EXPIRATION_HEADER};
pub use queue_admin::{
    Binding, BindingInfo, Durability, ExchangeInfo, ExchangeKind, GetMode, HeadersMatch,
    MoveOutcome, Overflow, QueueArgs, QueueInfo, QueueMessage,
};
pub use subscriber::{Delivery, Requeue, Subscriber, PREFETCH_MAX};
pub use tls::{ClientCertificate, Tls};

pub use wharf_protocol::messages::{
    Acks, AclEntry, AclFilterRequest, ConfigSource, Isolation, ReplicaMoveEntry, TxnResult,
};
pub use wharf_protocol::sasl::ScramMechanism;
pub use wharf_protocol::{ErrorCode, Header};
