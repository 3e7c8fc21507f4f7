//! The Wharf broker library: the storage engine today; topics, groups, queues and the
//! `wharfd` server build on it.
//!
//! Layers, top to bottom (each talks only to the next one down): `server` (listener,
//! connection, dispatch) → domain (`log`, `queue`, `offsets`, `producer`) → [`storage`].

pub mod config;
pub mod group;
pub mod offsets;
pub mod producer;
pub mod queue;
pub mod server;
pub mod storage;
pub mod topic;
pub mod txn;
