//! Helpers shared by the storage tests, the crash tests and the benches: build batches,
//! decode what a read returned, and assemble a storage environment over a simulated or real
//! file system. Not used by the broker itself.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{self, BatchBuilder, NewRecord};

use crate::storage::clock::{Clock, ManualClock};
use crate::storage::flusher::Flusher;
use crate::storage::fs::{Fs, RealFs};
use crate::storage::partition::StorageEnv;
use crate::storage::sim::SimFs;

/// A batch holding one record per value, all stamped `timestamp_ms`.
pub fn batch_of(values: &[&[u8]], timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    for value in values {
        let record = NewRecord {
            timestamp_ms,
            key: None,
            value: Some(Bytes::copy_from_slice(value)),
            headers: Vec::new(),
        };
        builder
            .push(&record)
            .expect("test batches stay far below the batch size limit");
    }
    let mut out = BytesMut::new();
    builder.build_into(&mut out);
    out
}

/// A batch of `record_count` records of `value_bytes` bytes each.
pub fn batch_of_size(record_count: usize, value_bytes: usize, timestamp_ms: i64) -> BytesMut {
    let value = vec![b'x'; value_bytes];
    let values: Vec<&[u8]> = (0..record_count).map(|_| value.as_slice()).collect();
    batch_of(&values, timestamp_ms)
}

/// Every record in `bytes` (whole batches) as (offset, value).
///
/// # Panics
/// If the bytes are not valid batches: tests want to fail loudly there.
pub fn records_of(bytes: Bytes) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for decoded in batch::batches(bytes) {
        let decoded = decoded.expect("stored batches decode");
        for record in decoded.records() {
            let record = record.expect("stored records decode");
            out.push((
                record.offset,
                record.value.map(|v| v.to_vec()).unwrap_or_default(),
            ));
        }
    }
    out
}

/// An environment over `fs` with a manual clock at `now_ms` and one flusher thread.
pub fn env_with(fs: Arc<dyn Fs>, clock: Arc<dyn Clock>) -> StorageEnv {
    StorageEnv {
        fs,
        clock,
        flusher: Flusher::spawn(1),
    }
}

/// An environment over a fresh simulated file system; returns the file system too.
pub fn sim_env(now_ms: i64) -> (StorageEnv, SimFs, Arc<ManualClock>) {
    let fs = SimFs::new();
    let clock = Arc::new(ManualClock::new(now_ms));
    (env_with(Arc::new(fs.clone()), clock.clone()), fs, clock)
}

/// An environment over the real file system with a manual clock.
pub fn real_env(now_ms: i64) -> (StorageEnv, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(now_ms));
    (env_with(Arc::new(RealFs), clock.clone()), clock)
}

/// A randomized test's seed: from `WHARF_TEST_SEED` when set, otherwise from the clock.
/// Printed when the test fails (on drop while panicking), so the failure can be replayed.
#[derive(Debug)]
pub struct Seed(pub u64);

impl Seed {
    /// The seed from `WHARF_TEST_SEED`, or a fresh one from the clock.
    ///
    /// # Panics
    /// If `WHARF_TEST_SEED` is set but not a u64.
    pub fn from_env() -> Seed {
        let seed = match std::env::var("WHARF_TEST_SEED") {
            Ok(text) => text.trim().parse().expect("WHARF_TEST_SEED is a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64),
        };
        Seed(seed)
    }

    /// A generator starting from this seed.
    pub fn rng(&self) -> SplitMix {
        SplitMix(self.0)
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed with seed {0}; replay with WHARF_TEST_SEED={0}",
                self.0
            );
        }
    }
}

/// SplitMix64: a tiny deterministic generator, so a seed replays the same choices.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}
