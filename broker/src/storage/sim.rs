//! An in-memory file system for crash and fault tests (STYLE.md section 7, level 1).
//!
//! It keeps, for every file, the *live* bytes (what reads see, the page cache) apart from the
//! *durable* bytes (the contents as of the last successful `sync_data`), and for every
//! directory the live entries apart from the durable ones (as of the last `sync_dir`). From
//! that it builds the image a power loss would leave behind, optionally with a torn,
//! partially persisted tail. It can fail fsyncs with EIO, writes with any errno, and run out
//! of space (ENOSPC after a partial write), so tests check each storage rule without real
//! disk failures.
//!
//! Simplification: directories themselves are durable as soon as they are created; only file
//! entries need a directory fsync.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::fs::{DirLock, FileHandle, Fs, MappedRegion, OpenMode};
use crate::storage::testing::SplitMix;

#[derive(Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Blocks are reserved up to here (`FileHandle::reserve`); only the part past the live
    /// length matters, and a length change releases it, as truncating a real file does.
    reserved_end: u64,
}

impl Inode {
    /// Bytes of disk the file takes: its data plus its reservation past the end.
    fn used_bytes(&self) -> u64 {
        (self.live.len() as u64).max(self.reserved_end)
    }
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Debug, Default)]
struct Faults {
    /// Syncs (file or directory) left before every further sync fails with EIO.
    syncs_until_failure: Option<u64>,
    /// Once a sync has failed, every later one fails too (fsyncgate: the kernel may have
    /// dropped the dirty pages, so a later "success" would be a lie).
    sync_failed: bool,
    /// The next write fails with this errno after writing nothing.
    next_write_errno: Option<i32>,
    /// Total live bytes the "disk" holds; a write past it is cut short and fails with ENOSPC.
    space_bytes_max: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    live_files: BTreeMap<PathBuf, InodeRef>,
    durable_files: BTreeMap<PathBuf, InodeRef>,
    dirs: std::collections::BTreeSet<PathBuf>,
    locked_dirs: std::collections::BTreeSet<PathBuf>,
    faults: Faults,
    sync_count: u64,
    write_count: u64,
}

/// How a simulated power loss treats bytes written after the last fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Torn {
    /// Everything not fsynced is lost.
    None,
    /// A pseudo-random prefix of each file's unsynced tail survives, and its last bytes may
    /// be garbage (a torn sector); the seed makes it reproducible.
    Random { seed: u64 },
}

/// The simulated file system. Cloning shares the same state.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> Self {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// After `syncs` more successful syncs, every sync fails with EIO.
    pub fn fail_syncs_after(&self, syncs: u64) {
        self.lock().faults.syncs_until_failure = Some(syncs);
    }

    /// The next write fails with `errno` and writes nothing.
    pub fn fail_next_write(&self, errno: i32) {
        self.lock().faults.next_write_errno = Some(errno);
    }

    /// Limits the disk to `bytes` of live file data (None: unlimited).
    pub fn set_space_bytes(&self, bytes: Option<u64>) {
        self.lock().faults.space_bytes_max = bytes;
    }

    /// Number of successful syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.lock().sync_count
    }

    /// Number of write calls so far.
    pub fn write_count(&self) -> u64 {
        self.lock().write_count
    }

    /// Disk bytes in use: every file's data plus the blocks reserved past its end.
    pub fn used_bytes(&self) -> u64 {
        SimFs::used_bytes_total(&self.lock())
    }

    /// Bytes reserved past the live end of a file (`FileHandle::reserve`), if it exists.
    pub fn reserved_bytes(&self, path: &Path) -> Option<u64> {
        let state = self.lock();
        let inode = lock_inode(state.live_files.get(path)?);
        Some(inode.reserved_end.saturating_sub(inode.live.len() as u64))
    }

    /// The live bytes of a file (what a reader would see now).
    pub fn live_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.live_files.get(path)?;
        let bytes = lock_inode(inode).live.clone();
        Some(bytes)
    }

    /// Replaces the live and durable bytes of a file (for corruption tests).
    pub fn overwrite(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let state = self.lock();
        let inode = state.live_files.get(path).ok_or_else(not_found)?;
        let mut inode = lock_inode(inode);
        inode.live = bytes.to_vec();
        inode.durable = bytes.to_vec();
        Ok(())
    }

    /// Paths of all live files, sorted.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.lock().live_files.keys().cloned().collect()
    }

    /// The file system a power loss would leave: durable directory entries with their durable
    /// bytes, plus (with `Torn::Random`) part of each unsynced tail. Faults are not carried
    /// over.
    pub fn crash_image(&self, torn: Torn) -> SimFs {
        let state = self.lock();
        let mut image = State {
            dirs: state.dirs.clone(),
            ..State::default()
        };
        let mut rng = match torn {
            Torn::None => None,
            Torn::Random { seed } => Some(SplitMix(seed)),
        };
        for (path, inode) in &state.durable_files {
            let inode = lock_inode(inode);
            let mut bytes = inode.durable.clone();
            if let Some(rng) = rng.as_mut() {
                tear_tail(&mut bytes, &inode.live, rng);
            }
            // Reservations may have reached the journal: keep them, so tests see recovery
            // release them.
            let copy = Arc::new(Mutex::new(Inode {
                live: bytes.clone(),
                durable: bytes,
                reserved_end: inode.reserved_end,
            }));
            image.live_files.insert(path.clone(), copy.clone());
            image.durable_files.insert(path.clone(), copy);
        }
        SimFs {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// The file system a process crash (SIGKILL) would leave: the page cache survives, so all
    /// live data and entries persist. Faults are not carried over.
    pub fn process_crash_image(&self) -> SimFs {
        let state = self.lock();
        let mut image = State {
            dirs: state.dirs.clone(),
            ..State::default()
        };
        for (path, inode) in &state.live_files {
            let inode = lock_inode(inode);
            let bytes = inode.live.clone();
            // Reserved blocks are file-system state too: they outlive the process.
            let copy = Arc::new(Mutex::new(Inode {
                live: bytes.clone(),
                durable: bytes,
                reserved_end: inode.reserved_end,
            }));
            image.live_files.insert(path.clone(), copy.clone());
            image.durable_files.insert(path.clone(), copy);
        }
        SimFs {
            state: Arc::new(Mutex::new(image)),
        }
    }

    fn check_sync(&self) -> io::Result<()> {
        let mut state = self.lock();
        let faults = &mut state.faults;
        if faults.sync_failed {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if let Some(left) = faults.syncs_until_failure.as_mut() {
            if *left == 0 {
                faults.sync_failed = true;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            *left -= 1;
        }
        state.sync_count += 1;
        Ok(())
    }

    /// Disk bytes in use: every file's data and reservations.
    fn used_bytes_total(state: &State) -> u64 {
        state
            .live_files
            .values()
            .map(|inode| lock_inode(inode).used_bytes())
            .sum()
    }
}

/// Keeps a pseudo-random prefix of the unsynced tail of `live` beyond `bytes`, and may turn
/// its last few bytes into garbage, as a torn sector would.
fn tear_tail(bytes: &mut Vec<u8>, live: &[u8], rng: &mut SplitMix) {
    if live.len() <= bytes.len() || !live.starts_with(bytes) {
        return;
    }
    let unsynced = live.len() - bytes.len();
    let kept = (rng.next_u64() % (unsynced as u64 + 1)) as usize;
    bytes.extend_from_slice(&live[bytes.len()..bytes.len() + kept]);
    if kept > 0 && rng.next_u64().is_multiple_of(2) {
        let garbage = kept.min(1 + (rng.next_u64() % 16) as usize);
        let start = bytes.len() - garbage;
        for byte in &mut bytes[start..] {
            *byte = rng.next_u64() as u8;
        }
    }
}

fn lock_inode(inode: &InodeRef) -> MutexGuard<'_, Inode> {
    inode.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    inode: InodeRef,
}

impl FileHandle for SimFile {
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        let mut state = self.fs.lock();
        state.write_count += 1;
        if let Some(errno) = state.faults.next_write_errno.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let start = to_usize(position)?;
        let mut writable = bytes.len();
        if let Some(space) = state.faults.space_bytes_max {
            let used = SimFs::used_bytes_total(&state);
            // Writes within the file or its reservation take no new space.
            let current = lock_inode(&self.inode).used_bytes();
            let end = position + bytes.len() as u64;
            let growth = end.saturating_sub(current);
            let free = space.saturating_sub(used);
            if growth > free {
                // Write what fits, then report a full disk, as a real short write would.
                let fits = current.saturating_sub(position) + free;
                writable = to_usize(fits.min(bytes.len() as u64))?;
            }
        }
        let mut inode = lock_inode(&self.inode);
        let end = start + writable;
        if inode.live.len() < end {
            inode.live.resize(end, 0);
        }
        inode.live[start..end].copy_from_slice(&bytes[..writable]);
        if writable < bytes.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        let inode = lock_inode(&self.inode);
        let start = to_usize(position)?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if end > inode.live.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&inode.live[start..end]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        let mut inode = lock_inode(&self.inode);
        inode.durable = inode.live.clone();
        Ok(())
    }

    fn set_len(&self, bytes: u64) -> io::Result<()> {
        let length = to_usize(bytes)?;
        let mut inode = lock_inode(&self.inode);
        // As on ext4: growing keeps the blocks reserved past the new end; keeping or cutting
        // the length releases them.
        if length <= inode.live.len() {
            inode.reserved_end = 0;
        }
        inode.live.resize(length, 0);
        Ok(())
    }

    fn reserve(&self, position: u64, bytes: u64) -> io::Result<()> {
        let end = position
            .checked_add(bytes)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let state = self.fs.lock();
        let used = SimFs::used_bytes_total(&state);
        let mut inode = lock_inode(&self.inode);
        let growth = end.saturating_sub(inode.used_bytes());
        if let Some(space) = state.faults.space_bytes_max {
            let free = space.saturating_sub(used);
            if growth > free {
                // Like a real fallocate that runs out of space midway: what fitted stays
                // reserved, and the call fails.
                inode.reserved_end = inode.used_bytes() + free;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        inode.reserved_end = inode.reserved_end.max(end);
        Ok(())
    }

    fn allocate(&self, bytes: u64) -> io::Result<()> {
        let length = to_usize(bytes)?;
        let state = self.fs.lock();
        let used = SimFs::used_bytes_total(&state);
        let mut inode = lock_inode(&self.inode);
        let growth = (length as u64).saturating_sub(inode.used_bytes());
        if let Some(space) = state.faults.space_bytes_max {
            if growth > space.saturating_sub(used) {
                // posix_fallocate that does not fit fails and leaves the file as it was.
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        if inode.live.len() < length {
            inode.live.resize(length, 0);
        }
        Ok(())
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(lock_inode(&self.inode).live.len() as u64)
    }

    fn map_mut(&self, bytes: u64) -> io::Result<Box<dyn MappedRegion>> {
        let length = to_usize(bytes)?;
        let inode = lock_inode(&self.inode);
        if inode.live.len() < length {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "map past the end of the file",
            ));
        }
        Ok(Box::new(SimMap {
            fs: self.fs.clone(),
            inode: self.inode.clone(),
            data: inode.live[..length].to_vec(),
        }))
    }
}

/// A simulated memory map: a private copy written back to the live bytes when dropped (the
/// page cache keeps it) and to the durable bytes on `flush` (msync).
#[derive(Debug)]
struct SimMap {
    fs: SimFs,
    inode: InodeRef,
    data: Vec<u8>,
}

impl SimMap {
    fn write_back(&self, inode: &mut Inode) {
        let end = self.data.len().min(inode.live.len());
        inode.live[..end].copy_from_slice(&self.data[..end]);
    }
}

impl MappedRegion for SimMap {
    fn bytes(&self) -> &[u8] {
        &self.data
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    fn flush(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        let mut inode = lock_inode(&self.inode);
        self.write_back(&mut inode);
        inode.durable = inode.live.clone();
        Ok(())
    }
}

impl Drop for SimMap {
    fn drop(&mut self) {
        let mut inode = lock_inode(&self.inode);
        self.write_back(&mut inode);
    }
}

impl Fs for SimFs {
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let mut state = self.lock();
        let parent = path.parent().ok_or_else(not_found)?;
        if !state.dirs.contains(parent) {
            return Err(not_found());
        }
        let existing = state.live_files.get(path).cloned();
        let inode = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists))
            }
            (Some(inode), _) => inode,
            (None, OpenMode::Existing) => return Err(not_found()),
            (None, _) => {
                let inode: InodeRef = Arc::default();
                state.live_files.insert(path.to_path_buf(), inode.clone());
                inode
            }
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(path) {
            return Err(not_found());
        }
        let child_name = |child: &PathBuf| {
            (child.parent() == Some(path))
                .then(|| child.file_name()?.to_str().map(str::to_string))
                .flatten()
        };
        let mut names: Vec<String> = state.live_files.keys().filter_map(child_name).collect();
        names.extend(state.dirs.iter().filter_map(child_name));
        Ok(names)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock().dirs.contains(path)
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.dirs.contains(path) || state.live_files.contains_key(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.lock()
            .live_files
            .remove(path)
            .map(|_| ())
            .ok_or_else(not_found)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.live_files.retain(|file, _| !file.starts_with(path));
        state
            .durable_files
            .retain(|file, _| !file.starts_with(path));
        state.dirs.retain(|dir| !dir.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state.dirs.contains(from) {
            // Directories are durable at once in this model, so their renames are too.
            let moved = |path: &PathBuf| to.join(path.strip_prefix(from).unwrap_or(path));
            state.dirs = state
                .dirs
                .iter()
                .map(|dir| {
                    if dir.starts_with(from) {
                        moved(dir)
                    } else {
                        dir.clone()
                    }
                })
                .collect();
            let state = &mut *state;
            for files in [&mut state.live_files, &mut state.durable_files] {
                let (inside, outside): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(files)
                    .into_iter()
                    .partition(|(path, _)| path.starts_with(from));
                *files = outside;
                files.extend(
                    inside
                        .into_iter()
                        .map(|(path, inode)| (moved(&path), inode)),
                );
            }
            return Ok(());
        }
        let inode = state.live_files.remove(from).ok_or_else(not_found)?;
        state.live_files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check_sync()?;
        let mut state = self.lock();
        let in_dir = |file: &PathBuf| file.parent() == Some(path);
        state.durable_files.retain(|file, _| !in_dir(file));
        let entries: Vec<(PathBuf, InodeRef)> = state
            .live_files
            .iter()
            .filter(|(file, _)| in_dir(file))
            .map(|(file, inode)| (file.clone(), inode.clone()))
            .collect();
        state.durable_files.extend(entries);
        Ok(())
    }

    fn lock_dir(&self, path: &Path) -> io::Result<DirLock> {
        if !self.lock().locked_dirs.insert(path.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(DirLock::new(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        })))
    }
}

#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.lock().locked_dirs.remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    #[test]
    fn unsynced_file_entry_is_lost_in_crash_image() {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let file = fs.open_file(&dir().join("a"), OpenMode::CreateNew).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        assert!(!fs.crash_image(Torn::None).exists(&dir().join("a")));
        fs.sync_dir(&dir()).unwrap();
        let image = fs.crash_image(Torn::None);
        assert_eq!(image.live_bytes(&dir().join("a")).unwrap(), b"hello");
    }

    #[test]
    fn unsynced_bytes_are_lost_in_crash_image() {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let file = fs.open_file(&dir().join("a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&dir()).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"def", 3).unwrap();
        let image = fs.crash_image(Torn::None);
        assert_eq!(image.live_bytes(&dir().join("a")).unwrap(), b"abc");
        let process = fs.process_crash_image();
        assert_eq!(process.live_bytes(&dir().join("a")).unwrap(), b"abcdef");
    }

    #[test]
    fn failed_sync_stays_failed() {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let file = fs.open_file(&dir().join("a"), OpenMode::CreateNew).unwrap();
        fs.fail_syncs_after(1);
        file.sync_data().unwrap();
        assert!(file.sync_data().is_err());
        assert!(file.sync_data().is_err());
    }

    #[test]
    fn full_disk_writes_partially_then_fails() {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let file = fs.open_file(&dir().join("a"), OpenMode::CreateNew).unwrap();
        fs.set_space_bytes(Some(4));
        let error = file.write_all_at(b"abcdef", 0).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs.live_bytes(&dir().join("a")).unwrap(), b"abcd");
    }
}
