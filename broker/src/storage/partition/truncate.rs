//! Cutting a closed partition's log back to an offset: what a replica does before it opens
//! its log when the replicated state it can prove durable ends earlier than the records on
//! disk (issue #21: a replica's applied position is checkpointed, and records appended
//! after the checkpoint are applied again from the raft log after a restart, so they must
//! not be there twice).
//!
//! Only for a log nobody has open: files are cut and deleted under the reader's feet
//! otherwise (a mapped segment read past its new end faults). The partition opened next
//! recovers the cut segment by scanning it, as after a crash.

use std::path::Path;

use super::{
    cleaner, delete_segments, segment, Error, LogConfig, Result, StorageEnv, CLEAN_SHUTDOWN_FILE,
};
use crate::storage::fs::OpenMode;
use wharf_protocol::batch::BATCH_HEADER_BYTES;

/// Bytes of a batch header's base offset and length fields, enough to step from batch to
/// batch.
const STEP_BYTES: usize = 12;

/// The checkpoint of a replicated log's applied state, in the log's directory: written by
/// the replica (`cluster/replica.rs`) once everything it applied is fsynced, read by
/// [`super::Partition::open`], which first cuts the log back to its position.
pub const REPLICA_CHECKPOINT_FILE: &str = "replica-applied";
const REPLICA_CHECKPOINT_MAGIC: [u8; 4] = *b"WRAP";
const REPLICA_CHECKPOINT_VERSION: u16 = 1;

/// A replica checkpoint: the position (next offset) the applied state ends at, durably,
/// and the replica's own bytes (its last applied log id and membership), kept in one file
/// so the two are replaced together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCheckpoint {
    /// Where the applied state ends.
    pub position: i64,
    /// The replica's payload, opaque to storage.
    pub replica: Vec<u8>,
    /// The file's rewrite sequence.
    pub sequence: u64,
}

/// Reads the replica checkpoint in `dir`, if there is one.
///
/// # Errors
/// `Error::Io`, or `Error::Corrupt` for a damaged file or an unknown version.
pub fn read_replica_checkpoint(
    fs: &dyn crate::storage::fs::Fs,
    dir: &Path,
) -> Result<Option<ReplicaCheckpoint>> {
    let path = dir.join(REPLICA_CHECKPOINT_FILE);
    let Some(found) = crate::storage::checkpoint::read(fs, &path, REPLICA_CHECKPOINT_MAGIC)? else {
        return Ok(None);
    };
    if found.version != REPLICA_CHECKPOINT_VERSION || found.payload.len() < 8 {
        return Err(Error::corrupt(
            &path,
            0,
            format!(
                "a replica checkpoint of version {} and {} bytes; this build reads version \
                 {REPLICA_CHECKPOINT_VERSION} of at least 8",
                found.version,
                found.payload.len()
            ),
        ));
    }
    let position = i64::from_be_bytes(found.payload[..8].try_into().expect("8 bytes"));
    Ok(Some(ReplicaCheckpoint {
        position,
        replica: found.payload[8..].to_vec(),
        sequence: found.sequence,
    }))
}

/// Writes (fsynced, atomically replaced) the replica checkpoint in `dir`: `position`, then
/// the replica's bytes.
///
/// # Errors
/// `Error::Io`.
pub fn write_replica_checkpoint(
    fs: &dyn crate::storage::fs::Fs,
    dir: &Path,
    sequence: u64,
    position: i64,
    replica: &[u8],
) -> Result<()> {
    let mut payload = Vec::with_capacity(8 + replica.len());
    payload.extend_from_slice(&position.to_be_bytes());
    payload.extend_from_slice(replica);
    crate::storage::checkpoint::write(
        fs,
        dir,
        REPLICA_CHECKPOINT_FILE,
        REPLICA_CHECKPOINT_MAGIC,
        REPLICA_CHECKPOINT_VERSION,
        sequence,
        &payload,
    )
}

/// Cuts the closed log in `dir` so that it ends before `next_offset`: every batch whose base
/// offset is `next_offset` or more is removed (whole segments deleted, the segment holding
/// the cut truncated at the batch boundary) and the next append gets `next_offset` (or the
/// end of the first batch that starts below it and reaches past it, which a caller that
/// cuts at an end it recorded never meets). A log that ends at or before `next_offset`
/// is left alone. Returns the offset the log ends at.
///
/// The clean-shutdown marker is removed first, so the next open scans the cut segment and
/// rebuilds its indexes; a producer snapshot or cleaner point beyond the new end is
/// ignored or dropped by that open.
///
/// # Errors
/// `Error::Io` if a file cannot be listed, read, cut or deleted. A failure part way leaves
/// a log the next open recovers (the marker is gone before anything is cut), possibly
/// longer than asked: call again.
pub fn truncate_closed(
    dir: &Path,
    next_offset: i64,
    config: &LogConfig,
    env: &StorageEnv,
) -> Result<i64> {
    let fs = env.fs.as_ref();
    let mut bases: Vec<i64> = fs
        .list_dir(dir)
        .map_err(|source| Error::io("list partition dir", dir, source))?
        .iter()
        .filter_map(|name| match segment::parse_file_name(name) {
            Some((base, "log")) => Some(base),
            _ => None,
        })
        .collect();
    bases.sort_unstable();
    let Some(&last_base) = bases.last() else {
        return Ok(0);
    };
    let cut_base = bases.iter().copied().rfind(|&base| base < next_offset);
    // Where the log ends now, and where the cut goes in the segment that holds it.
    let (end, cut_at) = match cut_base {
        Some(base) => scan_to(fs, dir, base, next_offset)?,
        None => (last_base, None),
    };
    let doomed: Vec<i64> = bases
        .iter()
        .copied()
        .filter(|&base| base >= next_offset)
        .collect();
    if doomed.is_empty() && cut_at.is_none() {
        return Ok(end);
    }
    match fs.remove_file(&dir.join(CLEAN_SHUTDOWN_FILE)) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::io(
                "remove clean-shutdown marker",
                dir.join(CLEAN_SHUTDOWN_FILE),
                source,
            ))
        }
    }
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))?;
    delete_segments(fs, dir, &doomed)?;
    let end = match (cut_base, cut_at) {
        (Some(base), Some((position, end))) => {
            let path = dir.join(segment::file_name(base, "log"));
            let file = fs
                .open_file(&path, OpenMode::Existing)
                .map_err(|source| Error::io("open segment", &path, source))?;
            file.set_len(position)
                .and_then(|()| file.sync_data())
                .map_err(|source| Error::io("truncate segment", &path, source))?;
            // Stale indexes would point past the end: the next open rebuilds them.
            delete_indexes(fs, dir, base)?;
            end
        }
        (Some(_), None) => end,
        (None, _) => {
            // Nothing below the cut is stored: an empty segment starting at it.
            segment::Segment::create(fs, dir, next_offset, config, env.clock.now_ms())?;
            fs.sync_dir(dir)
                .map_err(|source| Error::io("sync directory", dir, source))?;
            next_offset
        }
    };
    if cleaner::read_cleaner_point(fs, dir)? > end {
        let path = dir.join(cleaner::CLEANER_POINT_FILE);
        fs.remove_file(&path)
            .map_err(|source| Error::io("remove cleaner point", &path, source))?;
    }
    tracing::info!(partition = %dir.display(), end, "log cut back for a replica");
    Ok(end)
}

/// Steps through the batches of segment `base` up to the first that starts at `next_offset`
/// or later: the offset the kept batches end at, and the cut (byte position and that end)
/// if there is anything after them.
fn scan_to(
    fs: &dyn crate::storage::fs::Fs,
    dir: &Path,
    base: i64,
    next_offset: i64,
) -> Result<(i64, Option<(u64, i64)>)> {
    let path = dir.join(segment::file_name(base, "log"));
    let file = fs
        .open_file(&path, OpenMode::Existing)
        .map_err(|source| Error::io("open segment", &path, source))?;
    let length = file
        .len_bytes()
        .map_err(|source| Error::io("read segment length", &path, source))?;
    let mut position = 0u64;
    let mut end = base;
    let mut header = [0u8; BATCH_HEADER_BYTES];
    while position + BATCH_HEADER_BYTES as u64 <= length {
        file.read_exact_at(&mut header, position)
            .map_err(|source| Error::io("read segment", &path, source))?;
        let base_offset = i64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
        let batch_length = i32::from_be_bytes(header[8..STEP_BYTES].try_into().expect("4 bytes"));
        let last_offset_delta = i32::from_be_bytes(header[23..27].try_into().expect("4 bytes"));
        let Ok(batch_length) = u64::try_from(batch_length) else {
            break;
        };
        let batch_end = position + STEP_BYTES as u64 + batch_length;
        if base_offset >= next_offset || batch_end > length {
            break;
        }
        end = base_offset + i64::from(last_offset_delta) + 1;
        position = batch_end;
    }
    let cut = (position < length).then_some((position, end));
    Ok((end, cut))
}

fn delete_indexes(fs: &dyn crate::storage::fs::Fs, dir: &Path, base: i64) -> Result<()> {
    for extension in ["index", "timeindex"] {
        let path = dir.join(segment::file_name(base, extension));
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::io("delete segment index", &path, source)),
        }
    }
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::truncate_closed;
    use crate::storage::partition::Partition;
    use crate::storage::testing::{batch_of, records_of, sim_env};
    use crate::storage::LogConfig;

    const DIR: &str = "/data/replica-0";

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes_max: 64 * 1024,
            index_interval_bytes: 256,
            index_bytes_max: 4096,
            ..LogConfig::default()
        }
    }

    fn values(partition: &Partition) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut offset = partition.log_start_offset();
        while offset < partition.high_watermark() {
            let records = records_of(partition.read(offset, 1 << 20).unwrap().bytes);
            offset = records.last().unwrap().0 + 1;
            out.extend(records);
        }
        out
    }

    #[test]
    fn a_log_restarted_past_its_end_holds_nothing_below_and_goes_on_from_there() {
        let (env, _fs, _) = sim_env(1_000);
        let dir = Path::new(DIR);
        let partition = Partition::open(dir, config(), env.clone()).unwrap();
        for round in 0..40u32 {
            let value = format!("{round}-{}", "x".repeat(4_000));
            partition
                .append(&mut batch_of(&[value.as_bytes()], 1_000))
                .unwrap();
        }
        let end = partition.log_end_offset();
        assert!(partition.restart_at(end).is_err(), "not past the end");
        partition.restart_at(500).unwrap();
        assert_eq!(
            (partition.log_start_offset(), partition.log_end_offset()),
            (500, 500)
        );
        assert_eq!(partition.segment_count(), 1);
        assert!(partition.read(end - 1, 1 << 20).is_err(), "nothing below");
        // Stored batches keep their offsets: these continue the log at 500.
        let mut stored = batch_of(&[b"again", b"more"], 1_000);
        wharf_protocol::batch::set_base_offset(&mut stored, 500);
        let appended = partition.append_keeping_epochs(&mut stored).unwrap();
        assert_eq!((appended.base_offset, appended.next_offset), (500, 502));
        partition
            .wait_durable_blocking(appended.next_offset, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            values(&partition),
            vec![(500, b"again".to_vec()), (501, b"more".to_vec())]
        );
        partition.close().unwrap();
        drop(partition);
        let reopened = Partition::open(dir, config(), env).unwrap();
        assert_eq!(
            (reopened.log_start_offset(), reopened.log_end_offset()),
            (500, 502)
        );
        assert_eq!(values(&reopened).len(), 2);
    }

    #[test]
    fn a_restart_cut_short_by_a_crash_leaves_a_log_that_ends_below_it_or_the_restarted_one() {
        // At every fsync of the restart in turn: the fsync fails (the process would stop
        // there), the disk keeps what was synced; the log opened from it is either the
        // restarted one or one ending below the new start, which a second restart mends.
        for syncs in 0..12u64 {
            let (env, fs, clock) = sim_env(1_000);
            let dir = Path::new(DIR);
            let partition = Partition::open(dir, config(), env).unwrap();
            partition.start_epoch(3).unwrap();
            for round in 0..30u32 {
                let value = format!("{round}-{}", "x".repeat(4_000));
                let appended = partition
                    .append(&mut batch_of(&[value.as_bytes()], 1_000))
                    .unwrap();
                partition
                    .wait_durable_blocking(appended.next_offset, Duration::from_secs(5))
                    .unwrap();
            }
            fs.fail_syncs_after(syncs);
            let finished = partition.restart_at(400).is_ok();
            let image = fs.crash_image(crate::storage::sim::Torn::None);
            drop(partition);
            let env = crate::storage::testing::env_with(Arc::new(image), clock);
            let opened = Partition::open(dir, config(), env).unwrap();
            let (start, end) = (opened.log_start_offset(), opened.log_end_offset());
            if finished {
                assert_eq!((start, end), (400, 400), "after {syncs} syncs");
            } else {
                assert!(
                    (start, end) == (400, 400) || end < 400,
                    "after {syncs} syncs: [{start}, {end})"
                );
                if end < 400 {
                    opened.restart_at(400).unwrap();
                }
            }
            assert_eq!(
                (opened.log_start_offset(), opened.log_end_offset()),
                (400, 400),
                "after {syncs} syncs"
            );
            assert!(
                opened.leader_epochs().starts().is_empty(),
                "after {syncs} syncs: the old epochs went"
            );
            let appended = opened.append(&mut batch_of(&[b"next"], 1_000)).unwrap();
            assert_eq!(appended.base_offset, 400);
        }
    }

    #[test]
    fn a_replica_checkpoint_is_the_position_then_the_replicas_bytes() {
        use crate::storage::fs::{Fs, OpenMode};
        let (env, fs, _) = sim_env(1_000);
        let dir = Path::new(DIR);
        fs.create_dir_all(dir).unwrap();
        super::write_replica_checkpoint(env.fs.as_ref(), dir, 7, 0x0102, b"{}").unwrap();
        let file = fs
            .open_file(
                &dir.join(super::REPLICA_CHECKPOINT_FILE),
                OpenMode::Existing,
            )
            .unwrap();
        let mut bytes = vec![0u8; file.len_bytes().unwrap() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let payload = [0, 0, 0, 0, 0, 0, 0x01, 0x02, b'{', b'}'];
        assert_eq!(
            bytes,
            crate::storage::checkpoint::encode(*b"WRAP", 1, 7, &payload)
        );
        let read = super::read_replica_checkpoint(env.fs.as_ref(), dir)
            .unwrap()
            .unwrap();
        assert_eq!(
            (read.position, read.replica.as_slice(), read.sequence),
            (0x0102, &b"{}"[..], 7)
        );
    }

    #[test]
    fn a_replicated_log_is_cut_back_to_its_checkpoint_when_opened() {
        let (env, _fs, _) = sim_env(1_000);
        let dir = Path::new(DIR);
        let partition = Partition::open(dir, config(), env.clone()).unwrap();
        let mut ends = Vec::new();
        for round in 0..10u32 {
            let value = format!("{round}");
            let mut batch = batch_of(&[value.as_bytes()], 1_000);
            ends.push(partition.append(&mut batch).unwrap().next_offset);
        }
        super::write_replica_checkpoint(env.fs.as_ref(), dir, 1, ends[3], b"{}").unwrap();
        partition.close().unwrap();
        drop(partition);
        let reopened = Partition::open(dir, config(), env.clone()).unwrap();
        assert_eq!(reopened.log_end_offset(), ends[3]);
    }

    #[test]
    fn a_closed_log_is_cut_at_a_batch_boundary_and_appends_go_on_from_there() {
        let (env, _fs, _) = sim_env(1_000);
        let partition = Partition::open(Path::new(DIR), config(), env.clone()).unwrap();
        let mut ends = Vec::new();
        for round in 0..60u32 {
            let value = format!("{round}-{}", "x".repeat(4_000));
            let mut batch = batch_of(&[value.as_bytes(), b"second"], 1_000);
            let appended = partition.append(&mut batch).unwrap();
            partition
                .wait_durable_blocking(appended.next_offset, Duration::from_secs(5))
                .unwrap();
            ends.push(appended.next_offset);
        }
        let all = values(&partition);
        assert!(
            partition.segment_count() > 3,
            "the test needs several segments"
        );
        partition.close().unwrap();
        drop(partition);

        // A cut inside the log: later segments go, the holding one is cut.
        let cut = ends[24];
        assert_eq!(
            truncate_closed(Path::new(DIR), cut, &config(), &env).unwrap(),
            cut
        );
        let reopened = Partition::open(Path::new(DIR), config(), env.clone()).unwrap();
        assert_eq!(reopened.log_end_offset(), cut);
        let kept = values(&reopened);
        assert_eq!(kept, all[..usize::try_from(cut).unwrap()]);
        let mut batch = batch_of(&[b"after the cut"], 1_000);
        assert_eq!(reopened.append(&mut batch).unwrap().base_offset, cut);
        reopened.close().unwrap();
        drop(reopened);

        // At or past the end: nothing changes.
        let end = cut + 1;
        assert_eq!(
            truncate_closed(Path::new(DIR), end + 5, &config(), &env).unwrap(),
            end
        );
        assert_eq!(
            truncate_closed(Path::new(DIR), end, &config(), &env).unwrap(),
            end
        );
        let reopened = Partition::open(Path::new(DIR), config(), env.clone()).unwrap();
        assert_eq!(reopened.log_end_offset(), end);
        reopened.close().unwrap();
        drop(reopened);

        // To the very start: an empty log that goes on at 0.
        assert_eq!(
            truncate_closed(Path::new(DIR), 0, &config(), &env).unwrap(),
            0
        );
        let reopened = Partition::open(Path::new(DIR), config(), env.clone()).unwrap();
        assert_eq!(reopened.log_end_offset(), 0);
        assert!(values(&reopened).is_empty());
        let mut batch = batch_of(&[b"fresh"], 1_000);
        assert_eq!(reopened.append(&mut batch).unwrap().base_offset, 0);
        let _ = Arc::clone(&reopened);
    }
}
