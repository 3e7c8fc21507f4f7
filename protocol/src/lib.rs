//! Wharf's wire protocol and record batch format.
//!
//! This crate is pure: it encodes and decodes bytes and never touches sockets, files or a
//! runtime. The broker and the client both depend on it and never on each other.
//!
//! It owns [`batch`], Kafka's RecordBatch v2 byte for byte (the one format for the wire and
//! the disk), and [`varint`], the zig-zag integers inside records. Decoders never panic on
//! any input and check every length before trusting it; docs/PROTOCOL.md is the byte-level
//! specification and the golden tests in `tests/` pin it.

pub mod api;
pub mod batch;
pub mod codec;
pub mod error_code;
pub mod frame;
pub mod messages;
pub mod sasl;
pub mod varint;
pub mod wire;

pub use batch::{
    batches, control_batch, parse_header, validate, Attributes, Batch, BatchBuilder, BatchError,
    BatchHeader, BatchIter, Compression, ControlKind, ControlMarker, Header, NewRecord, Record,
    Records, TimestampType,
};
pub use varint::VarintError;

pub use api::{ApiKey, Request, Response};
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameHeader};
pub use wire::DecodeError;
