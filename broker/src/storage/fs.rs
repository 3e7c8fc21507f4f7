//! File-system access behind a trait. Production uses [`RealFs`]; tests use
//! [`crate::storage::sim::SimFs`], which keeps written bytes apart from durable bytes and can
//! fail a chosen write or fsync, so crash and fault tests need no real disk failures.
//!
//! Every call that matters for durability is explicit here: `sync_data` for file contents,
//! `sync_dir` for directory entries (created, renamed or deleted files).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A memory map of a file, writable in place.
pub trait MappedRegion: Send + Sync + std::fmt::Debug {
    /// The mapped bytes.
    fn bytes(&self) -> &[u8];
    /// The mapped bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Writes dirty pages back to the file and waits for the device (msync).
    ///
    /// # Errors
    /// The I/O error of the flush.
    fn flush(&self) -> io::Result<()>;
}

/// One open file.
pub trait FileHandle: Send + Sync + std::fmt::Debug {
    /// Writes all of `bytes` at `position`. A failure may leave a partial write behind.
    ///
    /// # Errors
    /// The I/O error, for example ENOSPC.
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()>;
    /// Fills `buf` from `position`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the file is shorter, or the I/O error.
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// Makes the file's contents durable (fdatasync).
    ///
    /// # Errors
    /// The I/O error. After an error the file's durable state is unknown.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file's length, truncating or extending with zeros.
    ///
    /// # Errors
    /// The I/O error.
    fn set_len(&self, bytes: u64) -> io::Result<()>;
    /// Reserves disk blocks for the first `bytes` so that writes through a memory map cannot
    /// hit a full disk later (a sparse mapped file that cannot be backed raises SIGBUS).
    ///
    /// # Errors
    /// The I/O error, for example ENOSPC.
    fn allocate(&self, bytes: u64) -> io::Result<()>;
    /// Reserves disk blocks for `[position, position + bytes)` without changing the file's
    /// length (`fallocate` with `FALLOC_FL_KEEP_SIZE`). Writes into reserved blocks skip the
    /// file system's block reservation for each write (delayed allocation), which is most of
    /// the cost of an append besides the copy into the page cache. Reserved blocks past the
    /// end are released by [`FileHandle::set_len`], even to the current length. A hint: it
    /// may do nothing, and a failure (ENOSPC) may leave part of the range reserved, which
    /// the next `set_len` releases like the rest.
    ///
    /// # Errors
    /// The I/O error, for example ENOSPC.
    fn reserve(&self, position: u64, bytes: u64) -> io::Result<()>;
    /// The file's current length in bytes (not necessarily the length of valid data).
    ///
    /// # Errors
    /// The I/O error.
    fn len_bytes(&self) -> io::Result<u64>;
    /// Maps the first `bytes` of the file, which must already be that long.
    ///
    /// # Errors
    /// The I/O error of the mapping.
    fn map_mut(&self, bytes: u64) -> io::Result<Box<dyn MappedRegion>>;
}

/// Whether `open_file` may create the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file; fail if it is missing.
    Existing,
    /// Create the file if missing; keep its contents otherwise.
    CreateOrOpen,
    /// Create a new, empty file; fail if it exists.
    CreateNew,
}

/// The directory and file operations storage needs.
pub trait Fs: Send + Sync + std::fmt::Debug + 'static {
    /// Opens `path` for reading and writing.
    ///
    /// # Errors
    /// The I/O error; `NotFound` when `Existing` and the file is missing.
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>>;
    /// Opens the existing file `path` for writes that bypass the page cache (`O_DIRECT`):
    /// each write through it must start at a multiple of [`DIRECT_ALIGN`], be a multiple of
    /// it long, and come from memory aligned the same way. `None` where the file system
    /// refuses direct I/O (tmpfs before Linux 6.6), off Linux, and for file systems without it
    /// (the simulated one): the
    /// caller then writes through the page cache. (tmpfs takes direct I/O since Linux 6.6.)
    ///
    /// # Errors
    /// Another I/O error than the refusal.
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn FileHandle>>> {
        let _ = path;
        Ok(None)
    }
    /// Creates `path` and its parents.
    ///
    /// # Errors
    /// The I/O error.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of directory `path` (files and directories), unsorted.
    ///
    /// # Errors
    /// The I/O error.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// True if `path` names a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// True if `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Removes the file `path`.
    ///
    /// # Errors
    /// The I/O error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes the directory `path` and everything in it.
    ///
    /// # Errors
    /// The I/O error.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` over `to` atomically.
    ///
    /// # Errors
    /// The I/O error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync on the directory).
    ///
    /// # Errors
    /// The I/O error.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on directory `path` for as long as the returned guard lives.
    ///
    /// # Errors
    /// `WouldBlock` if another holder has it, or the I/O error.
    fn lock_dir(&self, path: &Path) -> io::Result<DirLock>;
}

/// Holds a directory lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    _guard: Box<dyn std::fmt::Debug + Send + Sync>,
}

impl DirLock {
    /// Wraps whatever keeps the lock held.
    pub fn new(guard: Box<dyn std::fmt::Debug + Send + Sync>) -> Self {
        DirLock { _guard: guard }
    }
}

/// Name of the lock file in a locked directory.
pub const LOCK_FILE_NAME: &str = ".lock";

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
    path: PathBuf,
}

impl FileHandle for RealFile {
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, position)
    }

    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, position)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, bytes: u64) -> io::Result<()> {
        self.file.set_len(bytes)
    }

    fn allocate(&self, bytes: u64) -> io::Result<()> {
        crate::storage::mmap::allocate(&self.file, bytes)
    }

    fn reserve(&self, position: u64, bytes: u64) -> io::Result<()> {
        crate::storage::mmap::reserve(&self.file, position, bytes)
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map_mut(&self, bytes: u64) -> io::Result<Box<dyn MappedRegion>> {
        let region = crate::storage::mmap::map_file(&self.file, &self.path, bytes)?;
        Ok(Box::new(region))
    }
}

/// The alignment of direct writes ([`Fs::open_direct`]): the page size, a multiple of
/// every logical block size Linux file systems use.
pub const DIRECT_ALIGN: usize = 4096;

impl Fs for RealFs {
    #[cfg(target_os = "linux")]
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn FileHandle>>> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Ok(Some(Arc::new(RealFile {
                file,
                path: path.to_path_buf(),
            }))),
            Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::CreateOrOpen => {
                options.create(true);
            }
            OpenMode::CreateNew => {
                options.create_new(true);
            }
        }
        let file = options.open(path)?;
        Ok(Arc::new(RealFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock_dir(&self, path: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE_NAME))?;
        file.try_lock().map_err(|error| match error {
            std::fs::TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            std::fs::TryLockError::Error(error) => error,
        })?;
        Ok(DirLock::new(Box::new(file)))
    }
}

/// Creates `dir` and any missing parents, then fsyncs the parent of every directory it
/// created, top down, so the new entries survive a power loss (storage rule 2).
///
/// # Errors
/// `Error::Io` naming the step that failed.
pub fn create_dir_durable(fs: &dyn Fs, dir: &Path) -> crate::storage::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !fs.is_dir(ancestor))
        .collect();
    fs.create_dir_all(dir)
        .map_err(|source| crate::storage::Error::io("create directory", dir, source))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            fs.sync_dir(parent)
                .map_err(|source| crate::storage::Error::io("sync directory", parent, source))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn reserving_blocks_keeps_the_length_and_setting_the_length_releases_them() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("reserved");
        let file = RealFs
            .open_file(&path, OpenMode::CreateNew)
            .expect("create");
        file.write_all_at(&[7u8; 1000], 0).expect("write");
        let allocated = || std::fs::metadata(&path).expect("stat").blocks() * 512;
        let before = allocated();
        file.reserve(1000, 4 * 1024 * 1024).expect("reserve");
        assert_eq!(
            file.len_bytes().expect("len"),
            1000,
            "a reservation is not data"
        );
        if allocated() < before + 4 * 1024 * 1024 {
            // A file system without `fallocate` (reserve is then a no-op): nothing to release.
            eprintln!("skipped: {} reserves no blocks", dir.path().display());
            return;
        }
        file.set_len(1000).expect("set the same length");
        assert!(
            allocated() < 1024 * 1024,
            "the reservation is released: {}",
            allocated()
        );
        let mut read = vec![0u8; 1000];
        file.read_exact_at(&mut read, 0).expect("read");
        assert_eq!(read, vec![7u8; 1000]);
    }

    #[test]
    fn creating_nested_directories_syncs_each_new_level() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/data")).unwrap();
        let before = fs.sync_count();
        create_dir_durable(&fs, Path::new("/data/queues/durable/jobs")).unwrap();
        // Three levels were created: the parents /data, /data/queues and
        // /data/queues/durable each had a new entry to make durable.
        assert_eq!(fs.sync_count() - before, 3);
        create_dir_durable(&fs, Path::new("/data/queues/durable/jobs")).unwrap();
        assert_eq!(fs.sync_count() - before, 3, "nothing new, nothing to sync");
    }
}
