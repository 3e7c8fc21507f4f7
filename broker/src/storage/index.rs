//! The sparse offset index of a segment (`<base>.index`) and the memory-mapped entry file it
//! shares with the time index.
//!
//! Entry: `relative_offset: u32 | position: u32`, big-endian, 8 bytes. `relative_offset` is a
//! batch's base offset minus the segment's base offset and `position` is where that batch
//! starts in the `.log` file. Entries strictly increase in both fields. One entry is added
//! every `index_interval_bytes` of log, so a lookup lands at most that far before its batch.
//!
//! The log is the truth and the index a hint: recovery may cut the index short or rebuild it
//! from the log, and a read checks that the batch an entry points at really starts there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::error::{Error, Result};
use crate::storage::fs::{FileHandle, Fs, MappedRegion, OpenMode};

/// Bytes of one offset index entry.
pub const INDEX_ENTRY_BYTES: usize = 8;
const _: () = assert!(INDEX_ENTRY_BYTES == 4 + 4);

/// One offset index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment's `.log` file.
    pub position: u32,
}

/// Bytes an index file starts with: an empty segment (every new partition and queue log
/// has one) costs this much per index on disk, not the index's maximum.
pub const INDEX_INITIAL_BYTES: u64 = 4096;

/// A memory-mapped file of fixed-size entries that grows on demand. Only `entry_count`
/// leading entries are meaningful; the rest of the file is allocated space (`fallocate`d,
/// so writing it through the map can never hit a full disk: that would be a SIGBUS). It
/// starts at [`INDEX_INITIAL_BYTES`] and doubles, allocating again, when full, up to
/// `capacity_max_bytes`.
#[derive(Debug)]
pub(crate) struct EntryFile {
    path: PathBuf,
    file: Arc<dyn FileHandle>,
    map: Box<dyn MappedRegion>,
    entry_bytes: usize,
    entry_count: usize,
    /// The most the file may grow to; 0 for a file opened to read (it never grows).
    capacity_max_bytes: u64,
    /// A growth failed (a full disk): the file counts as full at its current size, so the
    /// segment rolls.
    growth_failed: bool,
}

impl EntryFile {
    /// Creates a new, empty entry file that may grow to `capacity_max_bytes`; it starts with
    /// [`INDEX_INITIAL_BYTES`] allocated (or the max, if smaller).
    pub(crate) fn create(
        fs: &dyn Fs,
        path: &Path,
        entry_bytes: usize,
        capacity_max_bytes: u64,
    ) -> Result<Self> {
        let file = fs
            .open_file(path, OpenMode::CreateOrOpen)
            .map_err(|source| Error::io("create index", path, source))?;
        file.set_len(0)
            .map_err(|source| Error::io("truncate index", path, source))?;
        let mut entries = EntryFile {
            path: path.to_path_buf(),
            map: file
                .map_mut(0)
                .map_err(|source| Error::io("map index", path, source))?,
            file,
            entry_bytes,
            entry_count: 0,
            capacity_max_bytes,
            growth_failed: false,
        };
        entries.resize(INDEX_INITIAL_BYTES.min(capacity_max_bytes))?;
        Ok(entries)
    }

    /// Opens an existing entry file and maps all of it; every whole entry in the file counts
    /// until the caller cuts the count down to the valid prefix.
    pub(crate) fn open(fs: &dyn Fs, path: &Path, entry_bytes: usize) -> Result<Self> {
        let file = fs
            .open_file(path, OpenMode::Existing)
            .map_err(|source| Error::io("open index", path, source))?;
        let file_bytes = file
            .len_bytes()
            .map_err(|source| Error::io("stat index", path, source))?;
        let map = file
            .map_mut(file_bytes)
            .map_err(|source| Error::io("map index", path, source))?;
        let entry_count = map.bytes().len() / entry_bytes;
        Ok(EntryFile {
            path: path.to_path_buf(),
            file,
            map,
            entry_bytes,
            entry_count,
            capacity_max_bytes: 0,
            growth_failed: false,
        })
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entry_count
    }

    pub(crate) fn entry(&self, entry_index: usize) -> &[u8] {
        let start = entry_index * self.entry_bytes;
        &self.map.bytes()[start..start + self.entry_bytes]
    }

    fn capacity_entries(&self) -> usize {
        self.map.bytes().len() / self.entry_bytes
    }

    fn capacity_max_entries(&self) -> usize {
        usize::try_from(self.capacity_max_bytes).unwrap_or(usize::MAX) / self.entry_bytes
    }

    /// True if no further entry fits, even after growing (or growing failed).
    pub(crate) fn is_full(&self) -> bool {
        let reachable = if self.growth_failed {
            self.capacity_entries()
        } else {
            self.capacity_entries().max(self.capacity_max_entries())
        };
        self.entry_count >= reachable
    }

    /// Appends one entry, growing the file when its allocated space is used up; false if
    /// it is at its maximum, or cannot grow (a full disk: logged, and the segment rolls).
    pub(crate) fn push(&mut self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.entry_bytes);
        if self.entry_count >= self.capacity_entries() && !self.grow() {
            return false;
        }
        let start = self.entry_count * self.entry_bytes;
        self.map.bytes_mut()[start..start + self.entry_bytes].copy_from_slice(entry);
        self.entry_count += 1;
        true
    }

    /// Doubles the allocated space (at least [`INDEX_INITIAL_BYTES`]), up to the maximum.
    fn grow(&mut self) -> bool {
        let current = self.map.bytes().len() as u64;
        let entry_bytes = self.entry_bytes as u64;
        let wanted = current.saturating_mul(2).max(INDEX_INITIAL_BYTES);
        let grown = wanted.min(self.capacity_max_bytes) / entry_bytes * entry_bytes;
        if grown <= current {
            return false;
        }
        match self.resize(grown) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(index = %self.path.display(), %error, "cannot grow index; the segment rolls");
                self.growth_failed = true;
                false
            }
        }
    }

    /// Lets the file grow to `capacity_max_bytes` (a segment that becomes active again).
    pub(crate) fn set_capacity_max(&mut self, capacity_max_bytes: u64) {
        self.capacity_max_bytes = capacity_max_bytes;
        self.growth_failed = false;
    }

    /// Forgets every entry from `entry_count` on.
    pub(crate) fn truncate_entries(&mut self, entry_count: usize) {
        self.entry_count = self.entry_count.min(entry_count);
    }

    /// Changes the file to `capacity_bytes` (at least the valid entries) and remaps it.
    pub(crate) fn resize(&mut self, capacity_bytes: u64) -> Result<()> {
        let valid_bytes = (self.entry_count * self.entry_bytes) as u64;
        let capacity_bytes = capacity_bytes.max(valid_bytes);
        let previous_bytes = self.map.bytes().len() as u64;
        let path = &self.path;
        // Write back and drop the old map before the file changes size under it.
        self.map
            .flush()
            .map_err(|source| Error::io("flush index", path, source))?;
        self.map = self
            .file
            .map_mut(0)
            .map_err(|source| Error::io("map index", path, source))?;
        // Allocate first (it extends the file, as posix_fallocate does): a growth that does
        // not fit then fails before the file changes, and the old map is restored below.
        if let Err(source) = self.file.allocate(capacity_bytes) {
            self.map = self
                .file
                .map_mut(previous_bytes)
                .map_err(|source| Error::io("map index", path, source))?;
            return Err(Error::io("allocate index", path, source));
        }
        self.file
            .set_len(capacity_bytes)
            .map_err(|source| Error::io("resize index", path, source))?;
        self.map = self
            .file
            .map_mut(capacity_bytes)
            .map_err(|source| Error::io("map index", path, source))?;
        Ok(())
    }

    /// Trims the file to its valid entries and makes it durable.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.resize((self.entry_count * self.entry_bytes) as u64)?;
        self.sync()
    }

    /// Makes the mapped entries durable (msync).
    pub(crate) fn sync(&self) -> Result<()> {
        self.map
            .flush()
            .map_err(|source| Error::io("sync index", &self.path, source))
    }
}

/// The offset index of one segment.
#[derive(Debug)]
pub struct OffsetIndex {
    entries: EntryFile,
    /// Whole entries the file held when opened, before the valid prefix was taken.
    file_entry_count: usize,
}

impl OffsetIndex {
    /// Creates an empty index file that grows on demand up to `capacity_bytes`.
    ///
    /// # Errors
    /// `Error::Io` if the file cannot be created, sized or mapped.
    pub fn create(fs: &dyn Fs, path: &Path, capacity_bytes: u64) -> Result<Self> {
        let entries = EntryFile::create(fs, path, INDEX_ENTRY_BYTES, capacity_bytes)?;
        Ok(OffsetIndex {
            entries,
            file_entry_count: 0,
        })
    }

    /// Opens an existing index and keeps only its valid prefix: entries strictly increasing
    /// in both fields, with positions inside `log_bytes` and offsets below
    /// `relative_offset_end` when that is known.
    ///
    /// # Errors
    /// `Error::Io` if the file cannot be opened or mapped.
    pub fn open(
        fs: &dyn Fs,
        path: &Path,
        log_bytes: u64,
        relative_offset_end: Option<u64>,
    ) -> Result<Self> {
        let entries = EntryFile::open(fs, path, INDEX_ENTRY_BYTES)?;
        let mut index = OffsetIndex {
            file_entry_count: entries.entry_count(),
            entries,
        };
        let valid = index.valid_prefix(log_bytes, relative_offset_end);
        index.entries.truncate_entries(valid);
        Ok(index)
    }

    fn valid_prefix(&self, log_bytes: u64, relative_offset_end: Option<u64>) -> usize {
        let mut previous: Option<IndexEntry> = None;
        for entry_index in 0..self.entries.entry_count() {
            let entry = self.entry(entry_index);
            let in_log = u64::from(entry.position) < log_bytes;
            let in_range =
                relative_offset_end.is_none_or(|end| u64::from(entry.relative_offset) < end);
            let increasing = previous.is_none_or(|prev| {
                entry.relative_offset > prev.relative_offset && entry.position > prev.position
            });
            if !(in_log && in_range && increasing) {
                return entry_index;
            }
            previous = Some(entry);
        }
        self.entries.entry_count()
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
    pub fn entry(&self, entry_index: usize) -> IndexEntry {
        let bytes = self.entries.entry(entry_index);
        IndexEntry {
            relative_offset: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            position: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// The last valid entry.
    pub fn last_entry(&self) -> Option<IndexEntry> {
        let count = self.entry_count();
        (count > 0).then(|| self.entry(count - 1))
    }

    /// The entry with the largest relative offset at or below `relative_offset`, if any.
    pub fn lookup(&self, relative_offset: u32) -> Option<IndexEntry> {
        let mut low = 0;
        let mut high = self.entry_count();
        // Invariant: entries below `low` are <= target, entries at or above `high` are >.
        while low < high {
            let middle = low + (high - low) / 2;
            if self.entry(middle).relative_offset <= relative_offset {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        (low > 0).then(|| self.entry(low - 1))
    }

    /// Appends an entry; false if the index is full (the segment must roll).
    pub fn append(&mut self, entry: IndexEntry) -> bool {
        debug_assert!(self.last_entry().is_none_or(|last| {
            entry.relative_offset > last.relative_offset && entry.position > last.position
        }));
        let mut bytes = [0u8; INDEX_ENTRY_BYTES];
        bytes[..4].copy_from_slice(&entry.relative_offset.to_be_bytes());
        bytes[4..].copy_from_slice(&entry.position.to_be_bytes());
        self.entries.push(&bytes)
    }

    /// True if no further entry fits.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// Forgets every entry (before a rebuild from the log).
    pub fn clear(&mut self) {
        self.entries.truncate_entries(0);
    }

    /// Forgets every entry whose position is at or past `position`.
    pub fn truncate_to_position(&mut self, position: u64) {
        let keep = (0..self.entry_count())
            .take_while(|&entry_index| u64::from(self.entry(entry_index).position) < position)
            .count();
        self.entries.truncate_entries(keep);
    }

    /// Lets the index grow again, up to `capacity_bytes` (a segment that becomes active
    /// again after a clean open); nothing is allocated until an entry needs it.
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

    /// Makes the entries durable.
    ///
    /// # Errors
    /// `Error::Io` if msync fails.
    pub fn sync(&self) -> Result<()> {
        self.entries.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    fn index_with(entries: &[(u32, u32)]) -> OffsetIndex {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut index = OffsetIndex::create(&fs, Path::new("/d/0.index"), 1024).unwrap();
        for &(relative_offset, position) in entries {
            assert!(index.append(IndexEntry {
                relative_offset,
                position
            }));
        }
        index
    }

    #[test]
    fn index_lookup_before_first_entry_returns_none() {
        let index = index_with(&[(10, 100), (20, 200)]);
        assert_eq!(index.lookup(9), None);
    }

    #[test]
    fn index_lookup_finds_floor_entry() {
        let index = index_with(&[(10, 100), (20, 200), (30, 300)]);
        assert_eq!(index.lookup(10).unwrap().position, 100);
        assert_eq!(index.lookup(25).unwrap().position, 200);
        assert_eq!(index.lookup(30).unwrap().position, 300);
    }

    #[test]
    fn index_lookup_past_last_entry_returns_last() {
        let index = index_with(&[(10, 100), (20, 200)]);
        assert_eq!(index.lookup(1_000_000).unwrap().relative_offset, 20);
    }

    #[test]
    fn full_index_refuses_append() {
        let mut index = index_with(&[]);
        for entry_index in 0..128u32 {
            assert!(index.append(IndexEntry {
                relative_offset: entry_index + 1,
                position: entry_index + 1
            }));
        }
        assert!(index.is_full());
        assert!(!index.append(IndexEntry {
            relative_offset: 1000,
            position: 1000
        }));
    }

    #[test]
    fn reopen_keeps_only_valid_prefix() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/0.index");
        let mut index = OffsetIndex::create(&fs, path, 64).unwrap();
        index.append(IndexEntry {
            relative_offset: 1,
            position: 10,
        });
        index.append(IndexEntry {
            relative_offset: 2,
            position: 20,
        });
        drop(index);
        // The rest of the preallocated file is zeros, which do not increase: cut there.
        let reopened = OffsetIndex::open(&fs, path, 1000, None).unwrap();
        assert_eq!(reopened.entry_count(), 2);
        // An entry pointing past the log end is cut too.
        let short_log = OffsetIndex::open(&fs, path, 15, None).unwrap();
        assert_eq!(short_log.entry_count(), 1);
    }
}
