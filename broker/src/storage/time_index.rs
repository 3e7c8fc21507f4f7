//! The time index of a segment (`<base>.timeindex`).
//!
//! Entry: `timestamp: i64 | relative_offset: u32`, big-endian, 12 bytes. An entry `(T, R)`
//! promises that every batch of the segment whose base offset is below `base + R` has a
//! max timestamp of at most `T`. Entries strictly increase in both fields. So to find the
//! first record at or after a target time, a reader takes the last entry with `T < target`
//! and scans from `R`: nothing before `R` can qualify.
//!
//! When a segment is sealed (and at clean close) a final entry `(max timestamp of the
//! segment, end offset)` is added, so reopening learns the segment's newest timestamp (used
//! by retention) without scanning the log.

use std::path::Path;

use crate::storage::error::Result;
use crate::storage::fs::Fs;
use crate::storage::index::EntryFile;

/// Bytes of one time index entry.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;
const _: () = assert!(TIME_INDEX_ENTRY_BYTES == 8 + 4);

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    /// Largest timestamp of the batches before `relative_offset`.
    pub timestamp_ms: i64,
    /// A batch's base offset (or the segment end) minus the segment's base offset.
    pub relative_offset: u32,
}

/// The time index of one segment.
#[derive(Debug)]
pub struct TimeIndex {
    entries: EntryFile,
    /// Whole entries the file held when opened, before the valid prefix was taken.
    file_entry_count: usize,
}

impl TimeIndex {
    /// Creates an empty time index that grows on demand up to `capacity_bytes`.
    ///
    /// # Errors
    /// `Error::Io` if the file cannot be created, sized or mapped.
    pub fn create(fs: &dyn Fs, path: &Path, capacity_bytes: u64) -> Result<Self> {
        let entries = EntryFile::create(fs, path, TIME_INDEX_ENTRY_BYTES, capacity_bytes)?;
        Ok(TimeIndex {
            entries,
            file_entry_count: 0,
        })
    }

    /// Opens an existing time index and keeps its valid prefix: strictly increasing entries
    /// with offsets at or below `relative_offset_end`.
    ///
    /// # Errors
    /// `Error::Io` if the file cannot be opened or mapped.
    pub fn open(fs: &dyn Fs, path: &Path, relative_offset_end: u64) -> Result<Self> {
        let entries = EntryFile::open(fs, path, TIME_INDEX_ENTRY_BYTES)?;
        let mut index = TimeIndex {
            file_entry_count: entries.entry_count(),
            entries,
        };
        let mut valid = 0;
        let mut previous: Option<TimeIndexEntry> = None;
        while valid < index.entries.entry_count() {
            let entry = index.entry(valid);
            let in_range = u64::from(entry.relative_offset) <= relative_offset_end;
            let increasing = previous.is_none_or(|prev| {
                entry.timestamp_ms > prev.timestamp_ms
                    && entry.relative_offset > prev.relative_offset
            });
            if !(in_range && increasing) {
                break;
            }
            previous = Some(entry);
            valid += 1;
        }
        index.entries.truncate_entries(valid);
        Ok(index)
    }

    /// True if opening cut entries off because they were not a valid prefix.
    pub fn was_cut(&self) -> bool {
        self.file_entry_count > self.entry_count()
    }

    /// Number of valid entries.
    pub fn entry_count(&self) -> usize {
        self.entries.entry_count()
    }

    /// The entry at `entry_index` (< `entry_count`).
    pub fn entry(&self, entry_index: usize) -> TimeIndexEntry {
        let bytes = self.entries.entry(entry_index);
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&bytes[..8]);
        TimeIndexEntry {
            timestamp_ms: i64::from_be_bytes(timestamp),
            relative_offset: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        }
    }

    /// The last valid entry.
    pub fn last_entry(&self) -> Option<TimeIndexEntry> {
        let count = self.entry_count();
        (count > 0).then(|| self.entry(count - 1))
    }

    /// The last entry whose timestamp is strictly below `timestamp_ms`.
    pub fn lookup_before(&self, timestamp_ms: i64) -> Option<TimeIndexEntry> {
        let mut low = 0;
        let mut high = self.entry_count();
        while low < high {
            let middle = low + (high - low) / 2;
            if self.entry(middle).timestamp_ms < timestamp_ms {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        (low > 0).then(|| self.entry(low - 1))
    }

    /// Appends `entry` if it increases both fields over the last entry. Returns false only
    /// when the index is full.
    pub fn maybe_append(&mut self, entry: TimeIndexEntry) -> bool {
        let increases = self.last_entry().is_none_or(|last| {
            entry.timestamp_ms > last.timestamp_ms && entry.relative_offset > last.relative_offset
        });
        if !increases {
            return true;
        }
        let mut bytes = [0u8; TIME_INDEX_ENTRY_BYTES];
        bytes[..8].copy_from_slice(&entry.timestamp_ms.to_be_bytes());
        bytes[8..].copy_from_slice(&entry.relative_offset.to_be_bytes());
        self.entries.push(&bytes)
    }

    /// True if no further entry fits.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.truncate_entries(0);
    }

    /// Lets the index grow again, up to `capacity_bytes` (a segment that becomes active
    /// again after a clean open, or its seal adding the final entry).
    pub fn reactivate(&mut self, capacity_bytes: u64) {
        self.entries.set_capacity_max(capacity_bytes);
    }

    /// Trims the file to its valid entries and makes it durable.
    ///
    /// # Errors
    /// `Error::Io` if the file cannot be resized or synced.
    pub fn seal(&mut self) -> Result<()> {
        self.entries.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn lookup_before_returns_last_strictly_older_entry() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut index = TimeIndex::create(&fs, Path::new("/d/0.timeindex"), 1200).unwrap();
        for (timestamp_ms, relative_offset) in [(100, 5), (200, 9), (300, 14)] {
            assert!(index.maybe_append(TimeIndexEntry {
                timestamp_ms,
                relative_offset
            }));
        }
        assert_eq!(index.lookup_before(100), None);
        assert_eq!(index.lookup_before(101).unwrap().relative_offset, 5);
        assert_eq!(index.lookup_before(300).unwrap().relative_offset, 9);
        assert_eq!(index.lookup_before(i64::MAX).unwrap().relative_offset, 14);
    }

    #[test]
    fn non_increasing_entry_is_skipped() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut index = TimeIndex::create(&fs, Path::new("/d/0.timeindex"), 1200).unwrap();
        index.maybe_append(TimeIndexEntry {
            timestamp_ms: 100,
            relative_offset: 5,
        });
        index.maybe_append(TimeIndexEntry {
            timestamp_ms: 100,
            relative_offset: 6,
        });
        assert_eq!(index.entry_count(), 1);
    }
}
