//! The storage layer's error type. I/O failures are kept apart from corruption: an I/O error
//! says the operating system refused something, corruption says the bytes on disk are wrong.

use std::io;
use std::path::PathBuf;

use wharf_protocol::batch::BatchError;

/// Result alias for the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the storage layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on a file or directory.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what was written; the range is refused, never skipped.
    #[error("corrupt data in {segment} at position {position}: {reason}")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        reason: String,
    },
    /// A batch handed to `append` is malformed; nothing was written.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The requested offset is outside `[log_start, high_watermark]`.
    /// Batches another replica stored do not continue this log offset for offset (its
    /// offsets are kept, so a mismatch is refused rather than renumbered).
    #[error("stored batches starting at offset {found} do not continue the log at {expected}")]
    NotContinuous { expected: i64, found: i64 },
    #[error("offset {offset} is out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    /// An earlier fsync (or another fatal error) failed; the partition refuses all writes and
    /// no acknowledgement can cover data written before it.
    #[error("partition {partition} is failed and refuses writes: {reason}")]
    Failed { partition: PathBuf, reason: String },
    /// The partition was closed.
    #[error("partition {partition} is closed")]
    Closed { partition: PathBuf },
    /// A configuration value is outside its allowed range.
    #[error("invalid storage config: {reason}")]
    Config { reason: String },
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another process")]
    Locked { path: PathBuf },
    /// A topic or partition name is not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The partition already exists.
    #[error("partition {topic}-{partition} already exists")]
    AlreadyExists { topic: String, partition: u32 },
    /// Waiting for durability or data took longer than allowed.
    #[error("timed out after {waited_ms} ms")]
    TimedOut { waited_ms: u64 },
    /// A replicated log did not take a write (issue #21): this node no longer leads it,
    /// or the commit was not confirmed in time (it may still be).
    #[error("the replicated log {log} did not take the write: {reason}")]
    NotReplicated { log: String, reason: String },
}

impl Error {
    /// Whether this is a failure of this node's disk or log (I/O, a failed or closed log),
    /// as opposed to bytes any node would refuse alike: a replica that meets one stops
    /// applying (issue #21), since every other replica wrote what it could not.
    pub fn is_local_failure(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Failed { .. } | Error::Closed { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(segment: impl Into<PathBuf>, position: u64, reason: String) -> Self {
        Error::Corrupt {
            segment: segment.into(),
            position,
            reason,
        }
    }

    /// True when the error is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}
