//! Zig-zag variable-length integers, as Kafka's record format uses them.
//!
//! A value is first zig-zag mapped (0, -1, 1, -2, ... become 0, 1, 2, 3, ...) so that small
//! negative numbers stay short, then written seven bits at a time, least significant group
//! first, with the high bit of each byte set when another byte follows.
//!
//! This module owns only the integer encoding. It must never panic on input: a decoder given
//! too few bytes answers `Ok(None)`, and one given a value that does not fit its type answers
//! [`VarintError::Overflow`].
//!
//! Invariants: an `i32` takes at most [`VARINT_BYTES_MAX`] bytes and an `i64` at most
//! [`VARLONG_BYTES_MAX`]; the encoders always write the shortest form, and
//! [`varint_bytes`] / [`varlong_bytes`] return exactly what the encoders write.

use std::fmt;

use bytes::{BufMut, BytesMut};

/// Longest encoding of an `i32`: 32 bits need five groups of seven.
pub const VARINT_BYTES_MAX: usize = 5;

/// Longest encoding of an `i64`: 64 bits need ten groups of seven.
pub const VARLONG_BYTES_MAX: usize = 10;

/// A variable-length integer that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The encoding is longer than the type allows or carries bits beyond its width.
    Overflow {
        /// Width of the target type: 32 for a varint, 64 for a varlong.
        value_bits: u32,
    },
}

impl fmt::Display for VarintError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VarintError::Overflow { value_bits } => {
                write!(formatter, "varint does not fit in {value_bits} bits")
            }
        }
    }
}

impl std::error::Error for VarintError {}

/// Appends `value` as a zig-zag varint (1 to 5 bytes).
pub fn encode_varint(value: i32, out: &mut BytesMut) {
    encode_unsigned(u64::from(zigzag_encode_32(value)), out);
}

/// Appends `value` as a zig-zag varlong (1 to 10 bytes).
pub fn encode_varlong(value: i64, out: &mut BytesMut) {
    encode_unsigned(zigzag_encode_64(value), out);
}

/// Decodes a zig-zag varint from the start of `bytes`.
///
/// Returns the value and the number of bytes it took, or `Ok(None)` if `bytes` ends before
/// the varint does. Non-shortest encodings are accepted, as Kafka accepts them.
///
/// # Errors
///
/// [`VarintError::Overflow`] if the encoding runs past five bytes or its fifth byte carries
/// bits beyond 32.
pub fn decode_varint(bytes: &[u8]) -> Result<Option<(i32, usize)>, VarintError> {
    let decoded = decode_unsigned(bytes, 32, VARINT_BYTES_MAX)?;
    // decode_unsigned has checked that `raw` fits in 32 bits, so the cast keeps every bit.
    Ok(decoded.map(|(raw, consumed)| (zigzag_decode_32(raw as u32), consumed)))
}

/// Decodes a zig-zag varlong from the start of `bytes`.
///
/// Returns the value and the number of bytes it took, or `Ok(None)` if `bytes` ends before
/// the varlong does.
///
/// # Errors
///
/// [`VarintError::Overflow`] if the encoding runs past ten bytes or its tenth byte carries
/// bits beyond 64.
pub fn decode_varlong(bytes: &[u8]) -> Result<Option<(i64, usize)>, VarintError> {
    let decoded = decode_unsigned(bytes, 64, VARLONG_BYTES_MAX)?;
    Ok(decoded.map(|(raw, consumed)| (zigzag_decode_64(raw), consumed)))
}

/// Number of bytes [`encode_varint`] writes for `value`.
pub fn varint_bytes(value: i32) -> usize {
    unsigned_bytes(u64::from(zigzag_encode_32(value)))
}

/// Number of bytes [`encode_varlong`] writes for `value`.
pub fn varlong_bytes(value: i64) -> usize {
    unsigned_bytes(zigzag_encode_64(value))
}

fn zigzag_encode_32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

fn zigzag_encode_64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn zigzag_decode_32(raw: u32) -> i32 {
    ((raw >> 1) as i32) ^ -((raw & 1) as i32)
}

fn zigzag_decode_64(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

fn encode_unsigned(mut raw: u64, out: &mut BytesMut) {
    while raw >= 0x80 {
        out.put_u8((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    out.put_u8(raw as u8);
}

fn unsigned_bytes(raw: u64) -> usize {
    let significant_bits = (u64::BITS - raw.leading_zeros()) as usize;
    significant_bits.div_ceil(7).max(1)
}

/// Reads groups of seven bits until a byte without the continuation bit, refusing to read
/// more than `bytes_max` bytes or bits beyond `value_bits`.
fn decode_unsigned(
    bytes: &[u8],
    value_bits: u32,
    bytes_max: usize,
) -> Result<Option<(u64, usize)>, VarintError> {
    let mut raw: u64 = 0;
    for (byte_index, &byte) in bytes.iter().take(bytes_max).enumerate() {
        let shift = 7 * byte_index as u32;
        let group = u64::from(byte & 0x7f);
        let is_last_allowed = byte_index + 1 == bytes_max;
        // The last allowed byte may only fill the bits the type has left.
        if is_last_allowed && group >> (value_bits - shift) != 0 {
            return Err(VarintError::Overflow { value_bits });
        }
        raw |= group << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((raw, byte_index + 1)));
        }
        if is_last_allowed {
            return Err(VarintError::Overflow { value_bits });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_encoding(value: i32) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_varint(value, &mut out);
        out.to_vec()
    }

    fn varlong_encoding(value: i64) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_varlong(value, &mut out);
        out.to_vec()
    }

    /// Checks encoding, size and decoding of one varint against known bytes.
    fn check_varint(value: i32, expected: &[u8]) {
        assert_eq!(varint_encoding(value), expected, "encoding of {value}");
        assert_eq!(varint_bytes(value), expected.len(), "size of {value}");
        assert_eq!(decode_varint(expected), Ok(Some((value, expected.len()))));
        // The same value encoded as a varlong has the same bytes.
        assert_eq!(varlong_encoding(i64::from(value)), expected);
        assert_eq!(
            decode_varlong(expected),
            Ok(Some((i64::from(value), expected.len())))
        );
    }

    #[test]
    fn varint_known_encodings() {
        check_varint(0, &[0x00]);
        check_varint(-1, &[0x01]);
        check_varint(1, &[0x02]);
        check_varint(-2, &[0x03]);
        check_varint(63, &[0x7e]);
        check_varint(-64, &[0x7f]);
        check_varint(64, &[0x80, 0x01]);
        check_varint(-65, &[0x81, 0x01]);
        check_varint(300, &[0xd8, 0x04]);
        check_varint(i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        check_varint(i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    #[test]
    fn varlong_extremes_take_ten_bytes() {
        let max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let min = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(varlong_encoding(i64::MAX), max);
        assert_eq!(varlong_encoding(i64::MIN), min);
        assert_eq!(decode_varlong(&max), Ok(Some((i64::MAX, 10))));
        assert_eq!(decode_varlong(&min), Ok(Some((i64::MIN, 10))));
        assert_eq!(varlong_bytes(i64::MAX), 10);
        assert_eq!(varlong_bytes(i64::MIN), 10);
    }

    #[test]
    fn varint_round_trips_across_widths() {
        let mut value: i64 = 1;
        while value <= i64::from(i32::MAX) {
            for candidate in [value, -value, value - 1, -value + 1] {
                let narrow = candidate as i32;
                let encoded = varint_encoding(narrow);
                assert_eq!(varint_bytes(narrow), encoded.len());
                assert_eq!(decode_varint(&encoded), Ok(Some((narrow, encoded.len()))));
            }
            value *= 3;
        }
    }

    #[test]
    fn varlong_round_trips_across_widths() {
        let mut value: i64 = 1;
        while value < i64::MAX / 3 {
            for candidate in [value, -value, value - 1, -value + 1] {
                let encoded = varlong_encoding(candidate);
                assert_eq!(varlong_bytes(candidate), encoded.len());
                assert_eq!(
                    decode_varlong(&encoded),
                    Ok(Some((candidate, encoded.len())))
                );
            }
            value *= 3;
        }
    }

    #[test]
    fn decode_stops_at_the_first_final_byte() {
        assert_eq!(decode_varint(&[0x02, 0xff, 0xff]), Ok(Some((1, 1))));
        assert_eq!(decode_varlong(&[0x80, 0x01, 0x00]), Ok(Some((64, 2))));
    }

    #[test]
    fn decode_accepts_non_shortest_encoding() {
        assert_eq!(decode_varint(&[0x80, 0x00]), Ok(Some((0, 2))));
    }

    #[test]
    fn decode_of_incomplete_input_returns_none() {
        assert_eq!(decode_varint(&[]), Ok(None));
        assert_eq!(decode_varint(&[0x80]), Ok(None));
        assert_eq!(decode_varint(&[0xff, 0xff, 0xff, 0xff]), Ok(None));
        assert_eq!(decode_varlong(&[0xff; 9]), Ok(None));
    }

    #[test]
    fn varint_longer_than_five_bytes_is_overflow() {
        let overflow = Err(VarintError::Overflow { value_bits: 32 });
        assert_eq!(
            decode_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            overflow
        );
        assert_eq!(
            decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            overflow
        );
    }

    #[test]
    fn varint_fifth_byte_beyond_32_bits_is_overflow() {
        let overflow = Err(VarintError::Overflow { value_bits: 32 });
        assert_eq!(decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]), overflow);
        assert_eq!(decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x10]), overflow);
    }

    #[test]
    fn varlong_longer_than_ten_bytes_is_overflow() {
        let overflow = Err(VarintError::Overflow { value_bits: 64 });
        let mut eleven = [0xff; 11];
        eleven[10] = 0x01;
        assert_eq!(decode_varlong(&eleven), overflow);
        let mut tenth_too_big = [0xff; 10];
        tenth_too_big[9] = 0x02;
        assert_eq!(decode_varlong(&tenth_too_big), overflow);
    }

    #[test]
    fn overflow_message_names_the_width() {
        let message = VarintError::Overflow { value_bits: 32 }.to_string();
        assert_eq!(message, "varint does not fit in 32 bits");
    }
}
