//! The only module of the broker allowed to use `unsafe`: memory maps of index files,
//! block preallocation (of mapped index files, and ahead of the active segment's appends),
//! the file system's free space (`statvfs`, for the disk alarm), and the process's
//! transparent-huge-page switch (`prctl`, see [`disable_transparent_huge_pages`]).
//!
//! Why mapping is sound here: the broker owns its data directory exclusively (the registry
//! holds a lock file), so no other process truncates or rewrites a mapped file; inside the
//! broker an index file is only resized by its owning `Segment` while it holds the index
//! lock, after dropping the old map. Mapped files are preallocated with `fallocate` so that a
//! write through the map cannot fault on a full disk.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

use crate::storage::fs::MappedRegion;

/// A writable shared mapping of a real file.
#[derive(Debug)]
pub(crate) struct FileMap {
    map: MmapMut,
}

/// Maps the first `bytes` of `file` read-write and shared.
pub(crate) fn map_file(file: &File, path: &Path, bytes: u64) -> io::Result<FileMap> {
    let map_bytes = usize::try_from(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("map of {bytes} bytes of {} too large", path.display()),
        )
    })?;
    if map_bytes == 0 {
        // A zero-length mapping is an error on Linux; use an anonymous empty map instead.
        return Ok(FileMap {
            map: MmapOptions::new().len(0).map_anon()?,
        });
    }
    // SAFETY: the data directory is locked by this process, and the file is only resized by
    // its owner after this map is dropped (see the module doc), so the mapped range stays
    // backed by the file for the map's whole life.
    let map = unsafe { MmapOptions::new().len(map_bytes).map_mut(file)? };
    Ok(FileMap { map })
}

/// Reserves blocks for the first `bytes` of `file` (posix_fallocate).
pub(crate) fn allocate(file: &File, bytes: u64) -> io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let length = libc::off_t::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "allocation too large"))?;
    // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is valid for
    // the borrow of `file`.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    match rc {
        0 => Ok(()),
        // Some file systems (tmpfs on old kernels) do not support it; the map still works,
        // it just is not protected against a full disk.
        libc::EOPNOTSUPP => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Reserves blocks for `[position, position + bytes)` of `file` without changing its length
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`). Where the file system or platform has no such
/// call this does nothing: the reservation only makes later writes cheaper.
pub(crate) fn reserve(file: &File, position: u64, bytes: u64) -> io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    reserve_keep_size(file, position, bytes)
}

#[cfg(target_os = "linux")]
fn reserve_keep_size(file: &File, position: u64, bytes: u64) -> io::Result<()> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("reservation of {bytes} bytes at {position} exceeds off_t"),
        )
    };
    let offset = libc::off_t::try_from(position).map_err(|_| too_large())?;
    let length = libc::off_t::try_from(bytes).map_err(|_| too_large())?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is valid for the
    // borrow of `file`.
    let rc =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, length) };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // tmpfs on old kernels, some network file systems: nothing to reserve with.
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve_keep_size(_file: &File, _position: u64, _bytes: u64) -> io::Result<()> {
    Ok(())
}

impl MappedRegion for FileMap {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `path`
/// (`statvfs`: available blocks × fragment size), for the disk alarm.
///
/// # Errors
/// The I/O error of `statvfs` (a missing path, a path with a NUL byte).
pub fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` points to writable
    // memory of the right type; statvfs fills it completely when it returns 0.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), as
/// Redis does at start-up; it holds for every later fault, on mappings made before or
/// after the call (Linux 5.0 and later; before that only for mappings made after it). With them on, the first touch of a fresh 2 MiB region of the
/// heap (a produce request's buffer, a fetch response) faults in and zeroes a whole huge page
/// at once: 40 ms on this project's VMs, where the host backs fresh memory lazily (issue #15's
/// e2e stalls), and still a fraction of a millisecond on bare metal, on the request path. Small
/// pages spread that cost over the touches that need it. Returns false where the platform has
/// no such switch.
///
/// # Errors
/// The `prctl` error (none is expected: the call only sets a flag of the calling process).
#[cfg(target_os = "linux")]
pub fn disable_transparent_huge_pages() -> io::Result<bool> {
    let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours;
    // prctl is variadic and reads them as unsigned longs, so they are passed as such.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused) };
    if status == 0 {
        Ok(true)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// See the Linux version: elsewhere there is nothing to turn off.
///
/// # Errors
/// None.
#[cfg(not(target_os = "linux"))]
pub fn disable_transparent_huge_pages() -> io::Result<bool> {
    Ok(false)
}
