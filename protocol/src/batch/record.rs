//! One record inside a batch: its encoding, its decoding and the iterator over a batch's
//! records.
//!
//! A record is `length` (varint, bytes after itself), `attributes` (i8, unused),
//! `timestamp_delta` (varlong), `offset_delta` (varint), key and value (varint length, -1 =
//! null, then bytes), `header_count` (varint) and the headers (key length >= 0 and UTF-8 key,
//! then value length, -1 = null, and value).
//!
//! Decoding never copies key or value bytes: they are `Bytes` slices of the batch. It never
//! trusts a length before checking it against the bytes present, never allocates more than the
//! remaining bytes could fill, and never panics. Every record must end exactly where its
//! length says; a batch must hold exactly `record_count` records and nothing after them.

use std::iter::FusedIterator;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::BatchError;
use crate::varint::{
    decode_varint, decode_varlong, encode_varint, encode_varlong, varint_bytes, varlong_bytes,
};

/// A record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header key; never null on the wire.
    pub key: String,
    /// The header value; `None` is written as length -1.
    pub value: Option<Bytes>,
}

/// A record to be added to a [`BatchBuilder`](crate::batch::BatchBuilder).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    /// Creation time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key; `None` is written as length -1.
    pub key: Option<Bytes>,
    /// The value; `None` is written as length -1 (a tombstone).
    pub value: Option<Bytes>,
    /// The headers, in order.
    pub headers: Vec<Header>,
}

/// A record read from a [`Batch`](crate::batch::Batch); key, value and header values share
/// the batch's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `base_offset + offset_delta`, wrapping on overflow.
    pub offset: i64,
    /// `base_timestamp + timestamp_delta` (wrapping), or the batch's `max_timestamp` when the
    /// batch uses log-append time, as Kafka readers do.
    pub timestamp_ms: i64,
    /// The key, or `None` for length -1.
    pub key: Option<Bytes>,
    /// The value, or `None` for length -1.
    pub value: Option<Bytes>,
    /// The headers, in order.
    pub headers: Vec<Header>,
}

/// Iterator over the records of one [`Batch`](crate::batch::Batch).
///
/// Yields each record in order, then `None`. On the first malformed record, on a count
/// mismatch, on trailing bytes or on a compressed batch it yields one `Err` and then `None`
/// forever.
#[derive(Debug, Clone)]
pub struct Records {
    /// The bytes after the 61-byte batch header.
    bytes: Bytes,
    cursor: Cursor,
    finished: bool,
}

/// The fields a record iterator takes from its batch header.
#[derive(Debug, Clone)]
pub(crate) struct RecordsContext {
    pub(crate) record_count: i32,
    pub(crate) base_offset: i64,
    pub(crate) base_timestamp: i64,
    pub(crate) log_append_time_ms: Option<i64>,
    /// An error to yield instead of any record, such as an unreadable compression codec.
    pub(crate) refusal: Option<BatchError>,
}

impl Records {
    pub(crate) fn new(bytes: Bytes, context: RecordsContext) -> Self {
        Records {
            bytes,
            cursor: Cursor::new(context),
            finished: false,
        }
    }

    fn next_result(&mut self) -> Option<Result<Record, BatchError>> {
        let fields = match self.cursor.step(&self.bytes)? {
            Ok(fields) => fields,
            Err(error) => return Some(Err(error)),
        };
        let mut reader = Reader {
            bytes: &self.bytes,
            position: fields.headers.start,
            end: fields.headers.end,
        };
        let headers = match decode_headers(&mut reader) {
            Ok(headers) => headers,
            Err(error) => return Some(Err(error)),
        };
        Some(Ok(Record {
            offset: fields.offset,
            timestamp_ms: fields.timestamp_ms,
            key: fields.key.map(|range| self.bytes.slice(range)),
            value: fields.value.map(|range| self.bytes.slice(range)),
            headers,
        }))
    }

    /// The records not read yet, read in place ([`RecordView`]): nothing is allocated or
    /// reference-counted per record, and the headers are left encoded. Same sequence and
    /// errors as [`Iterator::next`], except that a record's headers are only checked when
    /// [`RecordView::headers`] decodes them.
    pub fn views(&self) -> RecordViews<'_> {
        RecordViews {
            bytes: &self.bytes,
            cursor: self.cursor.clone(),
        }
    }
}

/// Where an iterator over a records section is, and the checks of its framing: each record
/// ends where its length says, there are exactly `record_count` of them and nothing after.
/// Offsets and timestamps are made absolute here, from the batch's fields.
#[derive(Debug, Clone)]
struct Cursor {
    position: usize,
    record_count: i32,
    records_read: i32,
    pending_error: Option<BatchError>,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time_ms: Option<i64>,
}

impl Cursor {
    fn new(context: RecordsContext) -> Cursor {
        Cursor {
            position: 0,
            record_count: context.record_count,
            records_read: 0,
            pending_error: context.refusal,
            base_offset: context.base_offset,
            base_timestamp: context.base_timestamp,
            log_append_time_ms: context.log_append_time_ms,
        }
    }

    /// The context of a run: `count` records whose deltas count from `base_offset` and
    /// `base_timestamp` (create time).
    fn of_run(count: i32, base_offset: i64, base_timestamp: i64) -> Cursor {
        Cursor::new(RecordsContext {
            record_count: count,
            base_offset,
            base_timestamp,
            log_append_time_ms: None,
            refusal: None,
        })
    }

    /// The next record's fields (`None` after the last), advancing past it.
    fn step(&mut self, bytes: &Bytes) -> Option<Result<BodyFields, BatchError>> {
        if let Some(error) = self.pending_error.take() {
            return Some(Err(error));
        }
        let remaining_bytes = bytes.len() - self.position;
        if self.records_read >= self.record_count {
            if remaining_bytes == 0 {
                return None;
            }
            return Some(Err(BatchError::TrailingBytes {
                field: "records",
                extra_bytes: remaining_bytes,
            }));
        }
        if remaining_bytes == 0 {
            return Some(Err(BatchError::RecordCountMismatch {
                declared: self.record_count,
                actual: self.records_read,
            }));
        }
        let mut reader = Reader {
            bytes,
            position: self.position,
            end: bytes.len(),
        };
        let fields = reader.record_end().and_then(|body_end| {
            reader.end = body_end;
            decode_body(&mut reader, self)
        });
        if fields.is_ok() {
            self.position = reader.end;
            self.records_read += 1;
        }
        Some(fields)
    }
}

/// A record read in place from a records section (issue #16): key and value borrowed, the
/// headers as stored (their count and entries), for a reader that only copies bytes out or
/// compares headers with ones it decoded before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// As [`Record::offset`].
    pub offset: i64,
    /// As [`Record::timestamp_ms`].
    pub timestamp_ms: i64,
    /// The key, or `None` for length -1.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for length -1.
    pub value: Option<&'a [u8]>,
    /// The header count varint and the headers, as stored.
    pub raw_headers: &'a [u8],
}

impl RecordView<'_> {
    /// The headers, decoded (their values copied out).
    ///
    /// # Errors
    /// As for a [`Record`]'s headers: a malformed header, or bytes after the last one.
    pub fn headers(&self) -> Result<Vec<Header>, BatchError> {
        let bytes = Bytes::copy_from_slice(self.raw_headers);
        let mut reader = Reader {
            bytes: &bytes,
            position: 0,
            end: bytes.len(),
        };
        decode_headers(&mut reader)
    }
}

/// Iterator over records read in place ([`Records::views`]).
#[derive(Debug, Clone)]
pub struct RecordViews<'a> {
    bytes: &'a Bytes,
    cursor: Cursor,
}

impl<'a> RecordViews<'a> {
    /// The records of a run read in place: as [`Records::of_run`], borrowing `bytes`.
    pub fn of_run(
        bytes: &'a Bytes,
        count: i32,
        base_offset: i64,
        base_timestamp: i64,
    ) -> RecordViews<'a> {
        RecordViews {
            bytes,
            cursor: Cursor::of_run(count, base_offset, base_timestamp),
        }
    }
}

impl<'a> Iterator for RecordViews<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bytes: &'a Bytes = self.bytes;
        let fields = match self.cursor.step(bytes)? {
            Ok(fields) => fields,
            Err(error) => {
                // Nothing follows an error.
                self.cursor.records_read = self.cursor.record_count;
                self.cursor.position = bytes.len();
                return Some(Err(error));
            }
        };
        Some(Ok(RecordView {
            offset: fields.offset,
            timestamp_ms: fields.timestamp_ms,
            key: fields.key.map(|range| &bytes[range]),
            value: fields.value.map(|range| &bytes[range]),
            raw_headers: &bytes[fields.headers],
        }))
    }
}

impl FusedIterator for RecordViews<'_> {}

impl Records {
    /// The records of a run: `count` encoded records taken out of a batch (its records
    /// section, or a selection of its records, each with its length prefix), whose deltas
    /// count from `base_offset` and `base_timestamp` (create time). Errors as for a batch's
    /// records: a malformed record, fewer records or trailing bytes.
    pub fn of_run(bytes: Bytes, count: i32, base_offset: i64, base_timestamp: i64) -> Records {
        Records {
            bytes,
            cursor: Cursor::of_run(count, base_offset, base_timestamp),
            finished: false,
        }
    }
}

/// Where each of the `count` records of an (uncompressed) records section starts, plus
/// the end of the last: `count + 1` positions, found from the length prefixes alone
/// (nothing inside a record is decoded). Record `i` is `records[starts[i]..starts[i + 1]]`,
/// length prefix included.
///
/// # Errors
/// [`BatchError::Truncated`] for a record that runs past the end, a negative length,
/// [`BatchError::RecordCountMismatch`] or [`BatchError::TrailingBytes`] for a section that
/// holds another number of records.
pub fn record_starts(records: &Bytes, count: i32) -> Result<Vec<u32>, BatchError> {
    if u32::try_from(records.len()).is_err() {
        return Err(BatchError::TrailingBytes {
            field: "records",
            extra_bytes: records.len() - u32::MAX as usize,
        });
    }
    let expected = usize::try_from(count).unwrap_or(0);
    // Every record takes at least 7 bytes, so a count the bytes cannot hold cannot size a
    // larger allocation than the bytes themselves.
    let mut starts = Vec::with_capacity(expected.min(records.len() / 7) + 1);
    let mut reader = Reader {
        bytes: records,
        position: 0,
        end: records.len(),
    };
    starts.push(0);
    for read in 0..expected {
        if reader.position == reader.end {
            return Err(BatchError::RecordCountMismatch {
                declared: count,
                actual: i32::try_from(read).unwrap_or(i32::MAX),
            });
        }
        let body_end = reader.record_end()?;
        reader.position = body_end;
        // Within the u32 range checked above.
        starts.push(body_end as u32);
    }
    if reader.position != reader.end {
        return Err(BatchError::TrailingBytes {
            field: "records",
            extra_bytes: reader.end - reader.position,
        });
    }
    Ok(starts)
}

impl Records {
    /// The next record together with its encoded bytes (length prefix included, a slice of
    /// the records section), so a rewriter can copy the records it keeps unchanged. Same
    /// sequence and errors as [`Iterator::next`].
    pub fn next_with_bytes(&mut self) -> Option<Result<(Record, Bytes), BatchError>> {
        let start = self.cursor.position;
        let record = self.next()?;
        Some(record.map(|record| (record, self.bytes.slice(start..self.cursor.position))))
    }
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = self.next_result();
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
        }
        item
    }
}

impl FusedIterator for Records {}

/// Bytes `record` takes in a batch, length prefix included, or `None` if it cannot fit in
/// `bytes_max` whatever its offset and timestamp deltas.
pub(crate) fn record_bytes(
    record: &NewRecord,
    offset_delta: i32,
    timestamp_delta: i64,
    bytes_max: usize,
) -> Option<usize> {
    let body_bytes = body_bytes(record, offset_delta, timestamp_delta, bytes_max)?;
    let length = i32::try_from(body_bytes).ok()?;
    Some(varint_bytes(length) + body_bytes)
}

/// Appends `record` with its length prefix. The caller has checked its size with
/// [`record_bytes`], so every length fits in an `i32`.
pub(crate) fn encode_record(
    record: &NewRecord,
    offset_delta: i32,
    timestamp_delta: i64,
    out: &mut BytesMut,
) {
    let body_bytes = body_bytes(record, offset_delta, timestamp_delta, usize::MAX)
        .expect("caller checked the record size");
    let start = out.len();
    encode_varint(length_i32(body_bytes), out);
    let body_start = out.len();
    out.put_i8(0);
    encode_varlong(timestamp_delta, out);
    encode_varint(offset_delta, out);
    encode_nullable(record.key.as_deref(), out);
    encode_nullable(record.value.as_deref(), out);
    encode_varint(length_i32(record.headers.len()), out);
    for header in &record.headers {
        encode_varint(length_i32(header.key.len()), out);
        out.put_slice(header.key.as_bytes());
        encode_nullable(header.value.as_deref(), out);
    }
    debug_assert_eq!(out.len() - body_start, body_bytes);
    debug_assert!(out.len() - start <= i32::MAX as usize);
}

/// A record body's offset and timestamp, made absolute, and where its fields are.
struct BodyFields {
    offset: i64,
    timestamp_ms: i64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    /// The header count and the headers, to the record's end.
    headers: Range<usize>,
}

/// Reads a record body up to its headers, which are only located; its deltas count from
/// `cursor`'s batch fields.
fn decode_body(reader: &mut Reader<'_>, cursor: &Cursor) -> Result<BodyFields, BatchError> {
    // The record attributes byte is unused in v2; it is read and ignored, as Kafka does.
    reader.take(1, "record attributes")?;
    let timestamp_delta = reader.varlong("record timestamp delta")?;
    let offset_delta = reader.varint("record offset delta")?;
    let key = reader.nullable_range("record key")?;
    let value = reader.nullable_range("record value")?;
    Ok(BodyFields {
        // `base_offset + offset_delta` and `base_timestamp + timestamp_delta`, wrapping; the
        // batch's max timestamp under log-append time, as Kafka readers do.
        offset: cursor.base_offset.wrapping_add(i64::from(offset_delta)),
        timestamp_ms: cursor
            .log_append_time_ms
            .unwrap_or(cursor.base_timestamp.wrapping_add(timestamp_delta)),
        key,
        value,
        headers: reader.position..reader.end,
    })
}

/// Reads the header count and the headers, which must end exactly at the reader's end.
fn decode_headers(reader: &mut Reader<'_>) -> Result<Vec<Header>, BatchError> {
    let header_count = reader.varint("record header count")?;
    let header_count = non_negative(header_count, "record header count")?;
    // Every header takes at least two bytes (two one-byte lengths), so the remaining bytes
    // bound the allocation whatever the count claims.
    let capacity = header_count.min(reader.remaining_bytes() / 2);
    let mut headers = Vec::with_capacity(capacity);
    for _ in 0..header_count {
        headers.push(decode_header(reader)?);
    }
    if reader.position != reader.end {
        return Err(BatchError::TrailingBytes {
            field: "record",
            extra_bytes: reader.end - reader.position,
        });
    }
    Ok(headers)
}

fn decode_header(reader: &mut Reader<'_>) -> Result<Header, BatchError> {
    let key_length = non_negative(reader.varint("header key length")?, "header key length")?;
    let key_range = reader.take(key_length, "header key")?;
    let key = std::str::from_utf8(&reader.bytes[key_range])
        .map_err(|_| BatchError::InvalidUtf8 {
            field: "header key",
        })?
        .to_owned();
    let value = reader.nullable("header value")?;
    Ok(Header { key, value })
}

fn body_bytes(
    record: &NewRecord,
    offset_delta: i32,
    timestamp_delta: i64,
    bytes_max: usize,
) -> Option<usize> {
    // Saturating sums: anything that saturates is far above `bytes_max` and is refused below.
    let mut total = 1 + varlong_bytes(timestamp_delta) + varint_bytes(offset_delta);
    total = total.saturating_add(nullable_bytes(record.key.as_deref(), bytes_max)?);
    total = total.saturating_add(nullable_bytes(record.value.as_deref(), bytes_max)?);
    total = total.saturating_add(length_bytes(record.headers.len(), bytes_max)?);
    for header in &record.headers {
        let key_bytes = header.key.len();
        total = total.saturating_add(length_bytes(key_bytes, bytes_max)?);
        total = total.saturating_add(key_bytes);
        total = total.saturating_add(nullable_bytes(header.value.as_deref(), bytes_max)?);
        if total > bytes_max {
            return None;
        }
    }
    (total <= bytes_max).then_some(total)
}

/// Bytes of a nullable field: its length varint plus its contents.
fn nullable_bytes(field: Option<&[u8]>, bytes_max: usize) -> Option<usize> {
    match field {
        None => Some(varint_bytes(-1)),
        Some(contents) => Some(length_bytes(contents.len(), bytes_max)? + contents.len()),
    }
}

/// Bytes of a length varint, or `None` if the length itself exceeds `bytes_max` or `i32`.
fn length_bytes(length: usize, bytes_max: usize) -> Option<usize> {
    if length > bytes_max {
        return None;
    }
    Some(varint_bytes(i32::try_from(length).ok()?))
}

fn length_i32(length: usize) -> i32 {
    i32::try_from(length).expect("record sizes were checked against BATCH_BYTES_MAX")
}

fn encode_nullable(field: Option<&[u8]>, out: &mut BytesMut) {
    match field {
        None => encode_varint(-1, out),
        Some(contents) => {
            encode_varint(length_i32(contents.len()), out);
            out.put_slice(contents);
        }
    }
}

fn non_negative(count: i32, field: &'static str) -> Result<usize, BatchError> {
    usize::try_from(count).map_err(|_| BatchError::NegativeCount {
        field,
        count: i64::from(count),
    })
}

/// A bounded cursor over the record region; `end` is the end of the current record.
struct Reader<'a> {
    bytes: &'a Bytes,
    position: usize,
    end: usize,
}

impl Reader<'_> {
    /// Reads a record's length prefix; where the record's body ends, checked to be within
    /// the bytes present.
    fn record_end(&mut self) -> Result<usize, BatchError> {
        let length = self.varint("record length")?;
        let body_bytes = non_negative(length, "record length")?;
        let body_end = self.position.saturating_add(body_bytes);
        if body_end > self.end {
            return Err(BatchError::Truncated {
                field: "record",
                need_bytes: body_bytes,
                have_bytes: self.end - self.position,
            });
        }
        Ok(body_end)
    }

    fn remaining_bytes(&self) -> usize {
        self.end - self.position
    }

    fn varint(&mut self, field: &'static str) -> Result<i32, BatchError> {
        let available = &self.bytes[self.position..self.end];
        match decode_varint(available) {
            Ok(Some((value, consumed))) => {
                self.position += consumed;
                Ok(value)
            }
            Ok(None) => Err(varint_truncated(field, available.len())),
            Err(_) => Err(BatchError::VarintOverflow { field }),
        }
    }

    fn varlong(&mut self, field: &'static str) -> Result<i64, BatchError> {
        let available = &self.bytes[self.position..self.end];
        match decode_varlong(available) {
            Ok(Some((value, consumed))) => {
                self.position += consumed;
                Ok(value)
            }
            Ok(None) => Err(varint_truncated(field, available.len())),
            Err(_) => Err(BatchError::VarintOverflow { field }),
        }
    }

    /// Advances past `length` bytes and returns their range in `bytes`.
    fn take(&mut self, length: usize, field: &'static str) -> Result<Range<usize>, BatchError> {
        let have_bytes = self.remaining_bytes();
        if length > have_bytes {
            return Err(BatchError::Truncated {
                field,
                need_bytes: length,
                have_bytes,
            });
        }
        let start = self.position;
        self.position += length;
        Ok(start..self.position)
    }

    /// Reads a varint length (-1 = null) and the bytes it announces, without copying them.
    fn nullable(&mut self, field: &'static str) -> Result<Option<Bytes>, BatchError> {
        Ok(self
            .nullable_range(field)?
            .map(|range| self.bytes.slice(range)))
    }

    /// Reads a varint length (-1 = null) and returns where the bytes it announces are.
    fn nullable_range(&mut self, field: &'static str) -> Result<Option<Range<usize>>, BatchError> {
        let length = self.varint(field)?;
        if length == -1 {
            return Ok(None);
        }
        let length = non_negative(length, field)?;
        Ok(Some(self.take(length, field)?))
    }
}

fn varint_truncated(field: &'static str, have_bytes: usize) -> BatchError {
    BatchError::Truncated {
        field,
        need_bytes: have_bytes + 1,
        have_bytes,
    }
}
