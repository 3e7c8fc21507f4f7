//! Arbitrary bytes as a log slice into the record batch parser: `validate`, the splitter
//! `batches`, and every record and control marker of each batch it yields. The bytes go in
//! once as they are and once with the first batch's length and CRC rewritten to cover the
//! whole input, so mutations also reach the record decoder instead of all stopping at the
//! checksum. Property: no input panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_protocol::batch::{
    batches, compute_crc, validate, Batch, BATCH_HEADER_BYTES, BATCH_LENGTH_POS, CRC_POS,
    LOG_OVERHEAD_BYTES,
};

fn decode_everything(batch: &Batch) {
    for record in batch.records() {
        if record.is_err() {
            break;
        }
    }
    let _ = batch.control_marker();
}

fuzz_target!(|data: &[u8]| {
    let _ = validate(data);
    for batch in batches(Bytes::copy_from_slice(data)) {
        match batch {
            Ok(batch) => decode_everything(&batch),
            Err(_) => break,
        }
    }
    if data.len() >= BATCH_HEADER_BYTES {
        let mut fixed = data.to_vec();
        let batch_length = i32::try_from(data.len() - LOG_OVERHEAD_BYTES).unwrap_or(i32::MAX);
        fixed[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&batch_length.to_be_bytes());
        let crc = compute_crc(&fixed);
        fixed[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        if let Ok(batch) = Batch::decode(Bytes::from(fixed)) {
            decode_everything(&batch);
        }
    }
});
