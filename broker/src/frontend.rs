//! Front ends: one folder per protocol, each a thin translation between its wire format and
//! the [`crate::core`] API, served by the shared [`crate::net`] machinery.
//!
//! - [`native`]: Wharf's own protocol (`--listen`, 127.0.0.1:7420), used by the `wharf` CLI
//!   and the client crate.
//!
//! - [`kafka`]: Kafka's wire protocol (`--kafka-listen`, 127.0.0.1:9092), for Kafka clients
//!   and tools.
//!
//! - [`amqp`]: AMQP 0-9-1 (`--amqp-listen`, 127.0.0.1:5672), for RabbitMQ clients (pika,
//!   aio-pika, amqplib, lapin, ...).
//! - [`http`]: HTTP (`--http-listen`, 127.0.0.1:7480): Prometheus metrics, health probes and
//!   the admin JSON API, on axum.
//!
//! Adding a protocol means adding a folder here: its codec,
//! its translation of each request to one core call, and its mapping from domain errors to
//! its own error codes (in one place per front end).
//!
//! **Architecture invariant:** a front end calls only the core (and `net` for sockets); it
//! decides nothing a second protocol would have to decide again.

pub mod amqp;
pub mod http;
pub mod kafka;
pub mod native;
