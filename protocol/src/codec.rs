//! tokio-util codec adapters over [`crate::frame`]: thin wrappers, no logic of their own.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{decode_frame, Frame, FRAME_BYTES_MAX_DEFAULT};
use crate::wire::DecodeError;

/// Splits a byte stream into [`Frame`]s; encoding takes pre-encoded frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    frame_bytes_max: u32,
}

impl FrameCodec {
    /// A codec refusing frames longer than `frame_bytes_max`.
    pub fn new(frame_bytes_max: u32) -> Self {
        FrameCodec { frame_bytes_max }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(FRAME_BYTES_MAX_DEFAULT)
    }
}

/// Errors of the codec: the stream's I/O or an undecodable frame.
#[derive(Debug)]
pub enum CodecError {
    /// The socket failed.
    Io(std::io::Error),
    /// A frame's length is out of bounds; the stream cannot be resynchronized.
    Frame(DecodeError),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Io(error) => write!(formatter, "i/o error: {error}"),
            CodecError::Frame(error) => write!(formatter, "bad frame: {error}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl From<std::io::Error> for CodecError {
    fn from(error: std::io::Error) -> Self {
        CodecError::Io(error)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, source: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        decode_frame(source, self.frame_bytes_max).map_err(CodecError::Frame)
    }
}

impl Encoder<BytesMut> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: BytesMut, destination: &mut BytesMut) -> Result<(), CodecError> {
        destination.extend_from_slice(&frame);
        Ok(())
    }
}
