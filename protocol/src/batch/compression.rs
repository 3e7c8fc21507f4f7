//! Decompression of the records section of compressed batches (gzip, snappy, lz4, zstd), as
//! Kafka clients write them, for readers that need the records (the client and the log
//! cleaner; never the broker's produce or fetch path, which moves batches as bytes), and
//! compression with the same codecs for the log cleaner, which rewrites a compacted batch
//! with the codec it arrived with.
//!
//! - gzip: RFC 1952 (flate2).
//! - snappy: either one raw snappy block (librdkafka) or Xerial's framing, which the Java
//!   client writes: an 8-byte magic `\x82SNAPPY\0`, two 4-byte versions, then blocks of a
//!   4-byte big-endian length and a raw snappy block (snap).
//! - lz4: the LZ4 frame format (lz4_flex).
//! - zstd: a zstd frame (zstd).
//!
//! Output is capped at [`DECOMPRESSED_BYTES_MAX`]: a small batch must not make a reader
//! allocate without bound.

use std::io::Read;

use crate::batch::{BatchError, Compression};

/// The most bytes one batch's records may decompress to.
pub const DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Xerial's snappy framing starts with this.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Magic plus the two version fields.
const XERIAL_HEADER_BYTES: usize = 16;

/// The records section `data` of a batch compressed with `codec`, decompressed.
///
/// # Errors
/// [`BatchError::Decompression`] when the bytes are not valid for the codec or exceed
/// [`DECOMPRESSED_BYTES_MAX`].
pub fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    decompress_within(codec, data, DECOMPRESSED_BYTES_MAX)
}

/// Like [`decompress`], with a smaller cap: a reader that keeps less in memory than
/// [`DECOMPRESSED_BYTES_MAX`] (the HTTP streams) refuses a batch past `bytes_max` before
/// allocating more than `bytes_max` (plus one byte) for it.
///
/// # Errors
/// [`BatchError::Decompression`] when the bytes are not valid for the codec or exceed
/// `bytes_max` (or [`DECOMPRESSED_BYTES_MAX`], whichever is smaller).
pub fn decompress_within(
    codec: Compression,
    data: &[u8],
    bytes_max: usize,
) -> Result<Vec<u8>, BatchError> {
    let bytes_max = bytes_max.min(DECOMPRESSED_BYTES_MAX);
    let code = codec.code();
    let failed = |reason: &'static str| BatchError::Decompression {
        codec: code,
        reason,
    };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_capped(flate2::read::GzDecoder::new(data), code, bytes_max),
        Compression::Lz4 => read_capped(lz4_flex::frame::FrameDecoder::new(data), code, bytes_max),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(data).map_err(|_| failed("bad zstd frame"))?;
            read_capped(decoder, code, bytes_max)
        }
        Compression::Snappy => {
            if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
                let mut out = Vec::new();
                let mut rest = &data[XERIAL_HEADER_BYTES..];
                while !rest.is_empty() {
                    let Some((length, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(failed("truncated xerial block length"));
                    };
                    let length = u32::from_be_bytes(*length) as usize;
                    let Some(block) = tail.get(..length) else {
                        return Err(failed("truncated xerial block"));
                    };
                    snappy_block(block, &mut out, code, bytes_max)?;
                    rest = &tail[length..];
                }
                Ok(out)
            } else {
                let mut out = Vec::new();
                snappy_block(data, &mut out, code, bytes_max)?;
                Ok(out)
            }
        }
    }
}

/// Compresses a records section with `codec`. Snappy is written in the framing `like` uses
/// (Xerial's when `like` starts with its magic, as the Java client writes it; else one raw
/// block, as librdkafka writes it), so a rewritten batch reads as the original did.
///
/// # Errors
/// [`BatchError::Decompression`] (carrying the codec) if an encoder fails, which for these
/// in-memory encoders means an input larger than the format allows.
pub fn compress(codec: Compression, data: &[u8], like: &[u8]) -> Result<Vec<u8>, BatchError> {
    use std::io::Write;
    let code = codec.code();
    let failed = |_| BatchError::Decompression {
        codec: code,
        reason: "cannot compress",
    };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(data).map_err(failed)?;
            encoder.finish().map_err(|_| BatchError::Decompression {
                codec: code,
                reason: "cannot compress",
            })
        }
        Compression::Zstd => zstd::bulk::compress(data, 0).map_err(failed),
        Compression::Snappy => {
            let block = snap::raw::Encoder::new().compress_vec(data).map_err(|_| {
                BatchError::Decompression {
                    codec: code,
                    reason: "cannot compress",
                }
            })?;
            if !(like.len() >= XERIAL_HEADER_BYTES && like.starts_with(XERIAL_MAGIC)) {
                return Ok(block);
            }
            let length = u32::try_from(block.len()).map_err(|_| BatchError::Decompression {
                codec: code,
                reason: "cannot compress",
            })?;
            // The magic, then the two version fields as the original carries them.
            let mut out = like[..XERIAL_HEADER_BYTES].to_vec();
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(&block);
            Ok(out)
        }
    }
}

fn snappy_block(
    block: &[u8],
    out: &mut Vec<u8>,
    code: u8,
    bytes_max: usize,
) -> Result<(), BatchError> {
    let failed = |reason: &'static str| BatchError::Decompression {
        codec: code,
        reason,
    };
    let length = snap::raw::decompress_len(block).map_err(|_| failed("bad snappy block"))?;
    if out.len() + length > bytes_max {
        return Err(failed("decompresses past the limit"));
    }
    let start = out.len();
    out.resize(start + length, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|_| failed("bad snappy block"))?;
    Ok(())
}

fn read_capped(reader: impl Read, code: u8, bytes_max: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let limit = bytes_max as u64 + 1;
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| BatchError::Decompression {
            codec: code,
            reason: "bad compressed data",
        })?;
    if out.len() > bytes_max {
        return Err(BatchError::Decompression {
            codec: code,
            reason: "decompresses past the limit",
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] = b"the same bytes, the same bytes, the same bytes, compressed four ways";

    #[test]
    fn every_codec_round_trips_through_its_reference_encoder() {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(TEXT).expect("gzip");
        let gzip = gzip.finish().expect("gzip");
        let snappy = snap::raw::Encoder::new()
            .compress_vec(TEXT)
            .expect("snappy");
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for chunk in [&TEXT[..20], &TEXT[20..]] {
            let block = snap::raw::Encoder::new()
                .compress_vec(chunk)
                .expect("block");
            xerial.extend_from_slice(&(block.len() as u32).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz4.write_all(TEXT).expect("lz4");
        let lz4 = lz4.finish().expect("lz4");
        let zstd = zstd::encode_all(TEXT, 3).expect("zstd");
        for (codec, bytes) in [
            (Compression::Gzip, gzip),
            (Compression::Snappy, snappy),
            (Compression::Snappy, xerial),
            (Compression::Lz4, lz4),
            (Compression::Zstd, zstd),
        ] {
            assert_eq!(decompress(codec, &bytes).expect("decompresses"), TEXT);
            // A cap of exactly the output passes; one byte less refuses the batch.
            assert_eq!(
                decompress_within(codec, &bytes, TEXT.len()).expect("fits"),
                TEXT
            );
            assert!(matches!(
                decompress_within(codec, &bytes, TEXT.len() - 1),
                Err(BatchError::Decompression {
                    reason: "decompresses past the limit",
                    ..
                })
            ));
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            for bytes in [
                &b""[..],
                b"\x00\x01\x02",
                b"\xff\xff\xff\xff\xff\xff\xff\xff",
            ] {
                if let Ok(out) = decompress(codec, bytes) {
                    assert!(out.len() <= DECOMPRESSED_BYTES_MAX);
                }
            }
        }
        let mut truncated = XERIAL_MAGIC.to_vec();
        truncated.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1]);
        assert!(matches!(
            decompress(Compression::Snappy, &truncated),
            Err(BatchError::Decompression { .. })
        ));
    }
}
