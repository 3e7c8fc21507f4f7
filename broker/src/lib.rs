//! The Wharf broker library.
//!
//! Layers, top to bottom; each talks only to the ones below it, and no module imports one
//! above it (`broker/tests/architecture.rs` checks this):
//!
//! - [`server`]: wiring; starts the front ends over the core and shuts down gracefully.
//! - [`frontend`]: one folder per protocol (`native` today), a thin translation to the core.
//! - [`net`]: the accept loop and connection driver every front end shares.
//! - [`core`]: the protocol-neutral [`core::Broker`] API and its caller context.
//! - domain: [`txn`] over [`groups`] over [`streams`]; [`queue`] and [`auth`] (users,
//!   SCRAM, logins) beside them.
//! - [`append`]: the one append path to partition logs.
//! - [`storage`]: segments, partitions, group commit, recovery (synchronous, no tokio).
//! - [`config`]: the configuration, read by `server` and `core`.

pub mod acl;
pub mod append;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod core;
pub mod frontend;
pub mod groups;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod server;
pub mod storage;
pub mod streams;
pub mod txn;
