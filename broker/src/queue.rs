//! Queues (the RabbitMQ model): exchanges route published messages by routing key or headers
//! into queues; the broker pushes messages to consumers and waits for acks.
//!
//! Built so far: [`exchange`], the routing of one message to the set of queues its bindings
//! select, as pure functions over the bindings (no I/O, no runtime), unit- and
//! property-tested. Queue storage, push delivery, acks and dead-lettering are issue #5's
//! remaining work.

pub mod delay;
pub mod delivery;
pub mod exchange;
pub mod store;
