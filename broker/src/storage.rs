//! The storage engine: partition logs made of segments, their memory-mapped indexes,
//! group-commit durability, crash recovery and the partition registry.
//!
//! This layer is synchronous Rust (std::fs, memmap2, std threads). It never imports tokio,
//! so it is testable without a runtime and callable from `spawn_blocking`. Waiting for new
//! data or for durability is exposed both as a blocking call and as a runtime-agnostic
//! `Future` (see [`watch`]).
//!
//! Invariants the whole module keeps (docs/STORAGE.md has the full list):
//! - Every batch on disk is a Kafka RecordBatch v2 whose CRC-32C was checked before it was
//!   written; readers never see bytes past the published end of a segment.
//! - An acknowledgement that promises durability is given only after an fsync that covers
//!   the data returned success. After a failed fsync the partition refuses all writes.
//! - Only the torn tail of the active segment is ever truncated, and only by recovery.
//! - Files are reached through [`fs::Fs`], so tests inject torn writes, EIO and ENOSPC.

pub mod bytes_field;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod error;
pub mod flusher;
pub mod fs;
pub mod index;
mod mmap;
pub mod partition;
pub mod registry;
pub mod segment;
pub mod sim;
pub mod testing;
pub mod time_index;
pub mod watch;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{FlushPolicy, LogConfig, ReadVerify};
pub use error::{Error, Result};
pub use flusher::Flusher;
pub use fs::{Fs, RealFs};
pub use mmap::{disable_transparent_huge_pages, free_space};
pub use partition::{Appended, Partition, ReadResult, StorageEnv, COPIED_SPAN_MAX};
pub use registry::Registry;
