//! Wharf's own small metadata files (clean-shutdown markers today; offset and producer-state
//! checkpoints later), written atomically and checksummed.
//!
//! Layout (big-endian):
//!
//! | off | bytes | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | magic | identifies the kind of file |
//! | 4 | 2 | version | format version of the payload |
//! | 6 | 8 | sequence | increases with every rewrite of the same file |
//! | 14 | 4 | payload_bytes | length of the payload (≤ `CHECKPOINT_PAYLOAD_BYTES_MAX`) |
//! | 18 | n | payload | kind-specific |
//! | 18+n | 4 | crc | CRC-32/IEEE (crc32fast) over bytes 0..18+n |
//!
//! Replacement follows storage rule 6: write `<name>.tmp`, fsync it, rename it over
//! `<name>`, fsync the directory. A reader therefore sees the old file or the new one, and
//! the checksum catches anything else.

use std::path::Path;

use crate::storage::error::{Error, Result};
use crate::storage::fs::{Fs, OpenMode};

/// Bytes before the payload.
pub const CHECKPOINT_HEADER_BYTES: usize = 18;
/// Bytes after the payload.
pub const CHECKPOINT_TRAILER_BYTES: usize = 4;
/// Largest payload accepted when reading: metadata files are small, and the limit keeps a
/// damaged length field from causing a huge allocation.
pub const CHECKPOINT_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A decoded checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Format version of the payload.
    pub version: u16,
    /// Rewrite sequence number.
    pub sequence: u64,
    /// The kind-specific payload.
    pub payload: Vec<u8>,
}

/// Encodes a checkpoint file's bytes.
pub fn encode(magic: [u8; 4], version: u16, sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes =
        Vec::with_capacity(CHECKPOINT_HEADER_BYTES + payload.len() + CHECKPOINT_TRAILER_BYTES);
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&sequence.to_be_bytes());
    let payload_bytes = u32::try_from(payload.len()).expect("checkpoint payloads are small");
    bytes.extend_from_slice(&payload_bytes.to_be_bytes());
    bytes.extend_from_slice(payload);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes
}

/// Decodes a checkpoint file's bytes, checking magic, length and checksum.
///
/// # Errors
/// A description of the first check that failed.
pub fn decode(magic: [u8; 4], bytes: &[u8]) -> Result<Checkpoint, String> {
    if bytes.len() < CHECKPOINT_HEADER_BYTES + CHECKPOINT_TRAILER_BYTES {
        return Err(format!("file of {} bytes is too short", bytes.len()));
    }
    if bytes[..4] != magic {
        return Err(format!("magic {:?} is not {:?}", &bytes[..4], magic));
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&bytes[6..14]);
    let payload_bytes = u32::from_be_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]) as usize;
    if payload_bytes > CHECKPOINT_PAYLOAD_BYTES_MAX {
        return Err(format!(
            "payload of {payload_bytes} bytes exceeds max {CHECKPOINT_PAYLOAD_BYTES_MAX}"
        ));
    }
    let expected_bytes = CHECKPOINT_HEADER_BYTES + payload_bytes + CHECKPOINT_TRAILER_BYTES;
    if bytes.len() != expected_bytes {
        return Err(format!(
            "file of {} bytes but header says {expected_bytes}",
            bytes.len()
        ));
    }
    let crc_at = CHECKPOINT_HEADER_BYTES + payload_bytes;
    let stored = u32::from_be_bytes([
        bytes[crc_at],
        bytes[crc_at + 1],
        bytes[crc_at + 2],
        bytes[crc_at + 3],
    ]);
    let actual = crc32fast::hash(&bytes[..crc_at]);
    if stored != actual {
        return Err(format!(
            "checksum {stored:#010x} does not match {actual:#010x}"
        ));
    }
    Ok(Checkpoint {
        version,
        sequence: u64::from_be_bytes(sequence),
        payload: bytes[CHECKPOINT_HEADER_BYTES..crc_at].to_vec(),
    })
}

/// Atomically replaces `dir/name` with a checkpoint: temp file, fsync, rename, fsync dir.
///
/// # Errors
/// `Error::Io` for the first step that failed; the old file, if any, is then still intact.
pub fn write(
    fs: &dyn Fs,
    dir: &Path,
    name: &str,
    magic: [u8; 4],
    version: u16,
    sequence: u64,
    payload: &[u8],
) -> Result<()> {
    let bytes = encode(magic, version, sequence, payload);
    let temp_path = dir.join(format!("{name}.tmp"));
    let final_path = dir.join(name);
    let file = fs
        .open_file(&temp_path, OpenMode::CreateOrOpen)
        .map_err(|source| Error::io("create checkpoint", &temp_path, source))?;
    file.set_len(0)
        .map_err(|source| Error::io("truncate checkpoint", &temp_path, source))?;
    file.write_all_at(&bytes, 0)
        .map_err(|source| Error::io("write checkpoint", &temp_path, source))?;
    file.sync_data()
        .map_err(|source| Error::io("sync checkpoint", &temp_path, source))?;
    fs.rename(&temp_path, &final_path)
        .map_err(|source| Error::io("rename checkpoint", &final_path, source))?;
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))
}

/// Reads and verifies `path`; `Ok(None)` if it does not exist.
///
/// # Errors
/// `Error::Io` if it cannot be read, `Error::Corrupt` if a check fails.
pub fn read(fs: &dyn Fs, path: &Path, magic: [u8; 4]) -> Result<Option<Checkpoint>> {
    let file = match fs.open_file(path, OpenMode::Existing) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::io("open checkpoint", path, source)),
    };
    let file_bytes = file
        .len_bytes()
        .map_err(|source| Error::io("stat checkpoint", path, source))?;
    let limit =
        (CHECKPOINT_HEADER_BYTES + CHECKPOINT_PAYLOAD_BYTES_MAX + CHECKPOINT_TRAILER_BYTES) as u64;
    if file_bytes > limit {
        return Err(Error::corrupt(
            path,
            0,
            format!("file of {file_bytes} bytes exceeds max {limit}"),
        ));
    }
    let mut bytes = vec![0u8; file_bytes as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|source| Error::io("read checkpoint", path, source))?;
    decode(magic, &bytes)
        .map(Some)
        .map_err(|reason| Error::corrupt(path, 0, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::{SimFs, Torn};

    const MAGIC: [u8; 4] = *b"WTST";

    #[test]
    fn checkpoint_round_trips() {
        let bytes = encode(MAGIC, 3, 42, b"payload");
        let decoded = decode(MAGIC, &bytes).unwrap();
        assert_eq!(decoded.version, 3);
        assert_eq!(decoded.sequence, 42);
        assert_eq!(decoded.payload, b"payload");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(MAGIC, 1, 7, b"some payload bytes");
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x01;
            assert!(
                decode(MAGIC, &damaged).is_err(),
                "flip at {position} undetected"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(MAGIC, 1, 7, b"some payload bytes");
        for length in 0..bytes.len() {
            assert!(decode(MAGIC, &bytes[..length]).is_err());
        }
    }

    #[test]
    fn write_is_atomic_and_durable() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        write(&fs, dir, "state", MAGIC, 1, 1, b"old").unwrap();
        let image = fs.crash_image(Torn::None);
        let read_back = read(&image, &dir.join("state"), MAGIC).unwrap().unwrap();
        assert_eq!(read_back.payload, b"old");
        // A failing fsync of the temp file leaves the old file in place.
        fs.fail_syncs_after(0);
        assert!(write(&fs, dir, "state", MAGIC, 1, 2, b"new").is_err());
        let image = fs.crash_image(Torn::None);
        let read_back = read(&image, &dir.join("state"), MAGIC).unwrap().unwrap();
        assert_eq!(read_back.payload, b"old");
    }
}
