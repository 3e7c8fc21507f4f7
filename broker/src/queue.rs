//! Queues (the RabbitMQ model): exchanges route published messages by routing key or headers
//! into queues; the broker pushes messages to consumers and waits for acks.
//!
//! - [`exchange`]: routing (direct, fanout, topic trie, headers) as pure functions.
//! - [`delivery`]: one queue's delivery state machine (prefetch, acks, requeue, limits), pure.
//! - [`delay`]: delayed delivery by due time.
//! - [`store`]: durable queue storage on the partition log with ack state and compaction.
//! - [`manager`]: declares, bindings, publish with confirms, subscriptions, and one task per
//!   queue that owns its store, delivery state and delays.
//!
//! The server (`server/dispatch.rs`) maps the queue apis onto the [`manager`]; the manager is
//! also exercised in-process by `broker/tests/queues.rs`.

pub mod delay;
pub mod delivery;
pub mod exchange;
pub mod manager;
pub mod store;
