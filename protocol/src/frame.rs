//! Frames: the unit on the TCP connection.
//!
//! | off | bytes | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | length | u32, bytes after this field (header rest + body), ≤ the frame limit |
//! | 4 | 2 | api_key | u16, which request (responses echo it) |
//! | 6 | 2 | api_version | u16, the body's version (responses echo it) |
//! | 8 | 4 | correlation_id | u32, chosen by the client, echoed in the response |
//! | 12 | n | body | the request or response body |
//!
//! Decoding is plain functions over `BytesMut`: `Ok(None)` when more bytes are needed, an
//! error for a length out of bounds. [`crate::codec`] wraps them for tokio-util.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::DecodeError;

/// Bytes of the length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Bytes of the header after the length prefix: api key, version, correlation id.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Default largest frame (length field value): one produce request of a few maximal batches
/// fits, and a hostile length prefix costs at most this much buffering.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 * 1024 * 1024 + 64 * 1024;

/// The fixed part of every frame after the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Which api.
    pub api_key: u16,
    /// The body's version.
    pub api_version: u16,
    /// Chosen by the client, echoed by the broker.
    pub correlation_id: u32,
}

/// One whole frame: header plus undecoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: FrameHeader,
    /// The body, a zero-copy slice of the receive buffer.
    pub body: Bytes,
}

/// Takes one frame off the front of `buffer` if it is complete.
///
/// # Errors
/// `FrameTooLarge` if the length exceeds `frame_bytes_max`, `FrameTooSmall` if it cannot
/// hold a header. The connection must then be closed: the stream is out of sync.
pub fn decode_frame(
    buffer: &mut BytesMut,
    frame_bytes_max: u32,
) -> Result<Option<Frame>, DecodeError> {
    if buffer.len() < FRAME_LENGTH_BYTES {
        return Ok(None);
    }
    let declared = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    if declared > frame_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            declared_bytes: declared,
            bytes_max: frame_bytes_max,
        });
    }
    if (declared as usize) < FRAME_HEADER_BYTES {
        return Err(DecodeError::FrameTooSmall {
            declared_bytes: declared,
        });
    }
    let total = FRAME_LENGTH_BYTES + declared as usize;
    if buffer.len() < total {
        buffer.reserve(total - buffer.len());
        return Ok(None);
    }
    let mut frame = buffer.split_to(total).freeze();
    frame.advance(FRAME_LENGTH_BYTES);
    let header = FrameHeader {
        api_key: frame.get_u16(),
        api_version: frame.get_u16(),
        correlation_id: frame.get_u32(),
    };
    Ok(Some(Frame {
        header,
        body: frame,
    }))
}

/// Appends a frame whose body `write_body` produces; the length is patched afterwards.
pub fn encode_frame(
    header: FrameHeader,
    out: &mut BytesMut,
    write_body: impl FnOnce(&mut BytesMut),
) {
    let start = out.len();
    out.put_u32(0);
    out.put_u16(header.api_key);
    out.put_u16(header.api_version);
    out.put_u32(header.correlation_id);
    write_body(out);
    let length = u32::try_from(out.len() - start - FRAME_LENGTH_BYTES)
        .expect("frames are bounded far below 4 GiB");
    out[start..start + FRAME_LENGTH_BYTES].copy_from_slice(&length.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            api_key: 4,
            api_version: 0,
            correlation_id: 77,
        }
    }

    #[test]
    fn frame_golden_bytes() {
        let mut out = BytesMut::new();
        encode_frame(header(), &mut out, |body| body.put_slice(b"xy"));
        assert_eq!(
            &out[..],
            &[0, 0, 0, 10, 0, 4, 0, 0, 0, 0, 0, 77, b'x', b'y'][..]
        );
    }

    #[test]
    fn partial_frame_needs_more_bytes() {
        let mut out = BytesMut::new();
        encode_frame(header(), &mut out, |body| body.put_slice(b"xyz"));
        for cut in 0..out.len() {
            let mut partial = BytesMut::from(&out[..cut]);
            assert_eq!(decode_frame(&mut partial, 1024).unwrap(), None);
        }
        let frame = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!(frame.header, header());
        assert_eq!(&frame.body[..], b"xyz");
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_without_buffering() {
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_frame(&mut buffer, 1024),
            Err(DecodeError::FrameTooLarge {
                declared_bytes: u32::MAX,
                bytes_max: 1024
            })
        );
    }

    #[test]
    fn length_below_header_is_rejected() {
        let mut buffer = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert!(matches!(
            decode_frame(&mut buffer, 1024),
            Err(DecodeError::FrameTooSmall { declared_bytes: 3 })
        ));
    }
}
