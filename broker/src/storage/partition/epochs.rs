//! A replicated partition's leader epochs (issue #21): the epoch each stored batch carries
//! in its header's partition leader epoch field, and the offset at which each epoch's
//! records start, so Kafka's OffsetForLeaderEpoch can say where an epoch ended.
//!
//! A partition that is not replicated never starts an epoch: its batches carry
//! `NO_PARTITION_LEADER_EPOCH` (-1) and it has no file. A replicated partition starts epoch
//! E when its replica applies the first entry of raft term E (the new leader's blank entry,
//! at the log end then), so every replica records the same starts, and each batch applied
//! after that is stamped E. Epochs only grow along the log.
//!
//! The starts are kept in `leader-epochs`, a checkpoint file (storage rule 6) rewritten
//! before the first batch of a new epoch is appended, so the file never misses an epoch a
//! stored batch carries. At open, starts past the log end (the batches after them were cut
//! by recovery or by a replica's cut back to its checkpoint) are dropped.
//!
//! Payload (big-endian): `count: u32`, then `count` entries of `epoch: i32` and
//! `start_offset: i64`, epochs strictly increasing, starts non-decreasing.

use std::path::Path;

use super::NO_PARTITION_LEADER_EPOCH;
use crate::storage::checkpoint;
use crate::storage::error::{Error, Result};
use crate::storage::fs::Fs;

/// The file holding a partition's epoch starts.
pub const LEADER_EPOCHS_FILE: &str = "leader-epochs";
const LEADER_EPOCHS_MAGIC: [u8; 4] = *b"WLEP";
const LEADER_EPOCHS_VERSION: u16 = 1;
const ENTRY_BYTES: usize = 12;

/// Where one leader epoch's records start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: i32,
    /// The offset of its first record (the log end when it started).
    pub start_offset: i64,
}

/// A partition's epoch starts, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    starts: Vec<EpochStart>,
    /// The file's rewrite sequence.
    sequence: u64,
}

impl LeaderEpochs {
    /// The starts, oldest first.
    pub fn starts(&self) -> &[EpochStart] {
        &self.starts
    }

    /// The epoch appended batches carry: the latest started, or -1 when none has.
    pub fn current(&self) -> i32 {
        self.starts
            .last()
            .map_or(NO_PARTITION_LEADER_EPOCH, |start| start.epoch)
    }

    /// Records that `epoch` starts at `offset`; false when it is not newer than the current
    /// epoch (a replica applying a term's first entry again after a restart).
    pub fn start(&mut self, epoch: i32, offset: i64) -> bool {
        if epoch <= self.current() {
            return false;
        }
        self.starts.push(EpochStart {
            epoch,
            start_offset: offset,
        });
        true
    }

    /// The epoch of the record at `offset`: that of the last epoch started at or before it
    /// (the one its batch carries), -1 before every start.
    pub fn epoch_at(&self, offset: i64) -> i32 {
        self.starts
            .iter()
            .rev()
            .find(|start| start.start_offset <= offset)
            .map_or(NO_PARTITION_LEADER_EPOCH, |start| start.epoch)
    }

    /// Drops the starts past `end`; true when any was.
    pub fn cut(&mut self, end: i64) -> bool {
        let before = self.starts.len();
        self.starts.retain(|start| start.start_offset <= end);
        self.starts.len() != before
    }

    /// Kafka's answer to OffsetForLeaderEpoch for `requested` on a log ending at `log_end`:
    /// the largest epoch at or below it and the offset where the epoch after that starts
    /// (the log end for the current epoch); `(-1, -1)` for an epoch newer than any. An
    /// epoch older than the first gets itself and the first start.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (-1, -1);
        if requested < 0 {
            return UNDEFINED;
        }
        if requested == self.current() {
            return (requested, log_end);
        }
        let Some(later) = self.starts.iter().find(|start| start.epoch > requested) else {
            return UNDEFINED;
        };
        match self
            .starts
            .iter()
            .rev()
            .find(|start| start.epoch <= requested)
        {
            Some(floor) => (floor.epoch, later.start_offset),
            None => (requested, later.start_offset),
        }
    }

    /// The file's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(4 + self.starts.len() * ENTRY_BYTES);
        let count = u32::try_from(self.starts.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&count.to_be_bytes());
        for start in &self.starts {
            bytes.extend_from_slice(&start.epoch.to_be_bytes());
            bytes.extend_from_slice(&start.start_offset.to_be_bytes());
        }
        bytes
    }

    /// Reads a payload [`LeaderEpochs::encode`] wrote.
    ///
    /// # Errors
    /// A description of what is wrong with it.
    pub fn decode(payload: &[u8]) -> std::result::Result<LeaderEpochs, String> {
        let (count, mut rest) = payload
            .split_first_chunk::<4>()
            .ok_or("a payload shorter than its count")?;
        let count = u32::from_be_bytes(*count) as usize;
        if rest.len() != count.saturating_mul(ENTRY_BYTES) {
            return Err(format!(
                "{count} entries need {} bytes, the payload has {}",
                count.saturating_mul(ENTRY_BYTES),
                rest.len()
            ));
        }
        let mut epochs = LeaderEpochs::default();
        while let Some((epoch, after)) = rest.split_first_chunk::<4>() {
            let (start, after) = after.split_first_chunk::<8>().ok_or("a truncated entry")?;
            let epoch = i32::from_be_bytes(*epoch);
            let start_offset = i64::from_be_bytes(*start);
            let ordered = epochs
                .starts
                .last()
                .is_none_or(|last| epoch > last.epoch && start_offset >= last.start_offset);
            if epoch < 0 || start_offset < 0 || !ordered {
                return Err(format!(
                    "entry (epoch {epoch}, start {start_offset}) does not follow the one before it"
                ));
            }
            epochs.starts.push(EpochStart {
                epoch,
                start_offset,
            });
            rest = after;
        }
        Ok(epochs)
    }

    /// Reads `dir`'s file: empty when there is none.
    ///
    /// # Errors
    /// `Error::Io`, or `Error::Corrupt` for a damaged file (which the partition cannot do
    /// without: its answers about epochs would be wrong).
    pub fn read(fs: &dyn Fs, dir: &Path) -> Result<LeaderEpochs> {
        let path = dir.join(LEADER_EPOCHS_FILE);
        let Some(found) = checkpoint::read(fs, &path, LEADER_EPOCHS_MAGIC)? else {
            return Ok(LeaderEpochs::default());
        };
        if found.version != LEADER_EPOCHS_VERSION {
            return Err(Error::corrupt(
                &path,
                0,
                format!(
                    "leader epochs of version {}; this build reads version {LEADER_EPOCHS_VERSION}",
                    found.version
                ),
            ));
        }
        let mut epochs = LeaderEpochs::decode(&found.payload)
            .map_err(|reason| Error::corrupt(&path, 0, reason))?;
        epochs.sequence = found.sequence;
        Ok(epochs)
    }

    /// Replaces `dir`'s file with these starts (atomically, fsynced).
    ///
    /// # Errors
    /// `Error::Io`; the old file is then intact.
    pub fn write(&mut self, fs: &dyn Fs, dir: &Path) -> Result<()> {
        self.sequence += 1;
        checkpoint::write(
            fs,
            dir,
            LEADER_EPOCHS_FILE,
            LEADER_EPOCHS_MAGIC,
            LEADER_EPOCHS_VERSION,
            self.sequence,
            &self.encode(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(starts: &[(i32, i64)]) -> LeaderEpochs {
        let mut epochs = LeaderEpochs::default();
        for &(epoch, offset) in starts {
            assert!(epochs.start(epoch, offset));
        }
        epochs
    }

    #[test]
    fn end_offsets_answer_as_kafka_does() {
        let epochs = epochs(&[(2, 0), (5, 10), (7, 10), (9, 25)]);
        // The current epoch ends at the log end.
        assert_eq!(epochs.end_offset_for(9, 40), (9, 40));
        // An earlier one where the next starts; one with no records of its own too.
        assert_eq!(epochs.end_offset_for(2, 40), (2, 10));
        assert_eq!(epochs.end_offset_for(5, 40), (5, 10));
        assert_eq!(epochs.end_offset_for(7, 40), (7, 25));
        // An epoch nobody led: the one below it, and the start of the one after.
        assert_eq!(epochs.end_offset_for(6, 40), (5, 10));
        assert_eq!(epochs.end_offset_for(8, 40), (7, 25));
        // Older than the first: itself, and the first start.
        assert_eq!(epochs.end_offset_for(1, 40), (1, 0));
        // Newer than any, or undefined.
        assert_eq!(epochs.end_offset_for(10, 40), (-1, -1));
        assert_eq!(epochs.end_offset_for(-1, 40), (-1, -1));
        // No epoch at all: nothing is known.
        assert_eq!(LeaderEpochs::default().end_offset_for(0, 40), (-1, -1));
    }

    #[test]
    fn starts_only_grow_and_cuts_drop_what_is_past_the_end() {
        let mut epochs = epochs(&[(1, 0), (3, 5)]);
        assert!(!epochs.start(3, 9), "an epoch starts once");
        assert!(!epochs.start(2, 9), "an older epoch does not start again");
        assert_eq!(epochs.current(), 3);
        assert!(epochs.start(4, 9));
        assert!(!epochs.cut(9), "a start at the end stays");
        assert!(epochs.cut(8));
        assert_eq!(
            epochs.starts(),
            &[
                EpochStart {
                    epoch: 1,
                    start_offset: 0
                },
                EpochStart {
                    epoch: 3,
                    start_offset: 5
                }
            ]
        );
        assert_eq!(LeaderEpochs::default().current(), NO_PARTITION_LEADER_EPOCH);
    }

    #[test]
    fn a_record_has_the_epoch_started_last_at_or_before_it() {
        let epochs = epochs(&[(0, 0), (1, 0), (4, 7), (6, 12)]);
        assert_eq!(
            epochs.epoch_at(0),
            1,
            "epoch 0 started and ended at offset 0"
        );
        assert_eq!(epochs.epoch_at(6), 1);
        assert_eq!(epochs.epoch_at(7), 4);
        assert_eq!(epochs.epoch_at(11), 4);
        assert_eq!(epochs.epoch_at(500), 6);
        assert_eq!(epochs.epoch_at(-1), NO_PARTITION_LEADER_EPOCH);
        assert_eq!(
            LeaderEpochs::default().epoch_at(3),
            NO_PARTITION_LEADER_EPOCH
        );
    }

    /// docs/STORAGE.md's table of the `leader-epochs` payload, byte for byte.
    #[test]
    fn golden_payload() {
        let epochs = epochs(&[(1, 0), (4, 0x0102)]);
        let payload = epochs.encode();
        assert_eq!(
            payload,
            [
                0, 0, 0, 2, // count
                0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, // epoch 1 from offset 0
                0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, // epoch 4 from offset 258
            ]
        );
        assert_eq!(LeaderEpochs::decode(&payload), Ok(epochs));
    }

    #[test]
    fn damaged_payloads_are_refused() {
        assert!(LeaderEpochs::decode(&[0, 0]).is_err());
        assert!(LeaderEpochs::decode(&[0, 0, 0, 1, 0, 0, 0, 1]).is_err());
        // Epochs going down.
        let mut bytes = vec![0, 0, 0, 2];
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert!(LeaderEpochs::decode(&bytes).is_err());
        // Starts going back.
        let mut bytes = vec![0, 0, 0, 2];
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9]);
        bytes.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(LeaderEpochs::decode(&bytes).is_err());
    }
}
