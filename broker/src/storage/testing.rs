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
