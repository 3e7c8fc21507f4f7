//! The frames of one consumer's deliveries (`basic.deliver`, content header, body), encoded
//! by amq-protocol once and reused while they stay the same.
//!
//! Between two deliveries to one consumer the `basic.deliver` frame usually differs only in
//! its delivery tag, and the content header only in its body size: the same exchange,
//! routing key and properties come message after message. Encoding both through the crate's
//! generators for every message was most of an AMQP consumer's cost in the broker
//! (docs/BENCHMARKS.md, issue #16), so [`DeliverEncoder`] keeps the bytes the crate produced
//! for the previous delivery and writes the new tag and body size into a copy of them. The
//! positions patched are checked against the crate's own output when a template is made (a
//! template whose bytes are not where this module expects them is not kept), and a test
//! compares every frame with a fresh encoding. Records are read in place from their stored
//! bytes ([`RecordView`]): a template is reused when the record's stored headers are the
//! same bytes as the last ones, so a run of like messages decodes no headers at all.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::BytesMut;
use wharf_protocol::batch::{BatchError, RecordView};

use super::message;

/// Where the delivery tag of a `basic.deliver` frame starts: the frame header (type,
/// channel, size: 7 bytes), class and method ids (4), then the consumer tag as a short
/// string (a length byte and the tag).
fn delivery_tag_at(consumer_tag: &ShortString) -> usize {
    super::FRAME_HEADER_BYTES + 4 + 1 + consumer_tag.as_str().len()
}

/// Where the body size of a content header frame starts: the frame header, class id and
/// weight (2 + 2).
const BODY_SIZE_AT: usize = super::FRAME_HEADER_BYTES + 4;

/// The `basic.deliver` frame last encoded, and what it was made from.
struct MethodTemplate {
    /// The [`DeliverEncoder::generation`] of the headers that named its exchange.
    generation: u64,
    routing_key: Option<Vec<u8>>,
    redelivered: bool,
    frame: Vec<u8>,
}

/// The content header frame last encoded, and what it was made from.
struct HeaderTemplate {
    /// The record's headers as stored (compared as bytes, never decoded again).
    raw_headers: Vec<u8>,
    /// The record timestamp, when the properties depend on it (an `x-death` entry).
    timestamp_ms: Option<i64>,
    frame: Vec<u8>,
}

/// Encodes the deliveries of one consumer on one channel.
pub(crate) struct DeliverEncoder {
    channel: u16,
    consumer_tag: ShortString,
    scratch: Vec<u8>,
    method: Option<MethodTemplate>,
    header: Option<HeaderTemplate>,
    /// The exchange the last record's headers name (for the `basic.deliver` frame).
    exchange: String,
    /// Counts the headers decoded: the exchange is the same while it stays the same.
    generation: u64,
}

impl DeliverEncoder {
    pub(crate) fn new(channel: u16, consumer_tag: &str) -> DeliverEncoder {
        DeliverEncoder {
            channel,
            consumer_tag: ShortString::from(consumer_tag),
            scratch: Vec::new(),
            method: None,
            header: None,
            exchange: String::new(),
            generation: 0,
        }
    }

    /// Appends the frames delivering `record` (read in place from its stored bytes) under
    /// `delivery_tag` to `out`.
    ///
    /// # Errors
    /// The record's stored headers do not decode; nothing is appended then.
    pub(crate) fn encode(
        &mut self,
        delivery_tag: u64,
        record: &RecordView<'_>,
        redelivered: bool,
        frame_max: u32,
        out: &mut BytesMut,
    ) -> Result<(), BatchError> {
        let body = record.value.unwrap_or_default();
        let unkept = self.header_frame(record, body.len() as u64)?;
        out.reserve(body.len() + 256);
        self.method_frame(delivery_tag, record, redelivered, out);
        match (&unkept, &self.header) {
            (Some(frame), _) => out.extend_from_slice(frame),
            (None, Some(header)) => out.extend_from_slice(&header.frame),
            // Only if amq-protocol refused to encode the header (logged).
            (None, None) => {}
        }
        super::encode_body(self.channel, body, frame_max, out);
        Ok(())
    }

    /// Makes `self.header` the content header for `record` with `body_size`, reusing the
    /// previous one when the record's stored headers are the same bytes, and
    /// `self.exchange` the exchange they name. Returns a header frame that could not be
    /// kept as a template (its body size was not where expected) to send as it is.
    fn header_frame(
        &mut self,
        record: &RecordView<'_>,
        body_size: u64,
    ) -> Result<Option<Vec<u8>>, BatchError> {
        if let Some(header) = self.header.as_mut().filter(|header| {
            header.raw_headers == record.raw_headers
                && header
                    .timestamp_ms
                    .is_none_or(|timestamp_ms| timestamp_ms == record.timestamp_ms)
        }) {
            header.frame[BODY_SIZE_AT..BODY_SIZE_AT + 8].copy_from_slice(&body_size.to_be_bytes());
            return Ok(None);
        }
        let headers = record.headers()?;
        let timestamp_ms = headers
            .iter()
            .any(|header| header.key.starts_with("x-death-"))
            .then_some(record.timestamp_ms);
        let (properties, exchange) =
            message::properties_from_headers(&headers, record.timestamp_ms);
        self.exchange = exchange;
        self.generation += 1;
        let frame = self.encoded(&AMQPFrame::Header(
            self.channel,
            AMQPContentHeader {
                class_id: 60,
                body_size,
                properties,
            },
        ));
        if frame.get(BODY_SIZE_AT..BODY_SIZE_AT + 8) != Some(&body_size.to_be_bytes()) {
            self.header = None;
            return Ok(Some(frame));
        }
        self.header = Some(HeaderTemplate {
            raw_headers: record.raw_headers.to_vec(),
            timestamp_ms,
            frame,
        });
        Ok(None)
    }

    fn method_frame(
        &mut self,
        delivery_tag: u64,
        record: &RecordView<'_>,
        redelivered: bool,
        out: &mut BytesMut,
    ) {
        let tag_at = delivery_tag_at(&self.consumer_tag);
        if let Some(method) = self.method.as_mut().filter(|method| {
            method.generation == self.generation
                && method.redelivered == redelivered
                && method.routing_key.as_deref() == record.key
        }) {
            method.frame[tag_at..tag_at + 8].copy_from_slice(&delivery_tag.to_be_bytes());
            out.extend_from_slice(&method.frame);
            return;
        }
        let routing_key = record
            .key
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default();
        let frame = self.encoded(&AMQPFrame::Method(
            self.channel,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: self.consumer_tag.clone(),
                delivery_tag,
                redelivered,
                exchange: message::short_string(self.exchange.clone()),
                routing_key: message::short_string(routing_key),
            })),
        ));
        out.extend_from_slice(&frame);
        let patchable = frame.get(tag_at..tag_at + 8) == Some(&delivery_tag.to_be_bytes());
        self.method = patchable.then(|| MethodTemplate {
            generation: self.generation,
            routing_key: record.key.map(<[u8]>::to_vec),
            redelivered,
            frame,
        });
    }

    fn encoded(&mut self, frame: &AMQPFrame) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        super::encode_frame_with(frame, &mut bytes, &mut self.scratch);
        bytes.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use wharf_protocol::batch::{Batch, BatchBuilder, Header, NewRecord, Record, Records};

    /// The frames as the handlers encoded them before the templates: every one through
    /// amq-protocol.
    fn reference(
        channel: u16,
        consumer_tag: &str,
        delivery_tag: u64,
        record: &Record,
        redelivered: bool,
        frame_max: u32,
    ) -> BytesMut {
        let mut out = BytesMut::new();
        let mut scratch = Vec::new();
        let (properties, exchange) =
            message::properties_from_headers(&record.headers, record.timestamp_ms);
        let (routing_key, body) = message::key_and_body(record);
        super::super::encode_frame_with(
            &AMQPFrame::Method(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: ShortString::from(consumer_tag),
                    delivery_tag,
                    redelivered,
                    exchange: message::short_string(exchange),
                    routing_key: message::short_string(routing_key),
                })),
            ),
            &mut out,
            &mut scratch,
        );
        message::encode_content(
            channel,
            properties,
            &body,
            frame_max,
            &mut out,
            &mut scratch,
        );
        out
    }

    fn header(key: &str, value: &str) -> Header {
        Header {
            key: key.to_string(),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    fn headers(choice: u8) -> Vec<Header> {
        match choice {
            0 => Vec::new(),
            1 => vec![
                header("content-type", "text/plain"),
                header("delivery-mode", "2"),
            ],
            2 => vec![
                header(crate::core::EXCHANGE_HEADER, "orders"),
                header("app", "shop"),
            ],
            _ => vec![
                header("x-death-reason", "rejected"),
                header("x-death-queue", "q"),
                header("x-death-exchange", ""),
            ],
        }
    }

    /// The record as the queue stores it: one record in a batch.
    fn stored(key: Option<&'static str>, choice: u8, body: usize, timestamp_ms: i64) -> Records {
        let mut builder = BatchBuilder::new(0);
        builder
            .push(&NewRecord {
                timestamp_ms,
                key: key.map(|key| Bytes::from_static(key.as_bytes())),
                value: Some(Bytes::from(vec![b'x'; body])),
                headers: headers(choice),
            })
            .expect("a small record");
        Batch::decode(builder.build()).expect("decodes").records()
    }

    /// Encodes the stored record through `encoder` and through amq-protocol afresh.
    fn both(
        encoder: &mut DeliverEncoder,
        (channel, consumer_tag): (u16, &str),
        tag: u64,
        records: &Records,
        redelivered: bool,
        frame_max: u32,
    ) -> (BytesMut, BytesMut) {
        let view = records.views().next().expect("one").expect("reads");
        let record = records.clone().next().expect("one").expect("decodes");
        let mut out = BytesMut::new();
        encoder
            .encode(tag, &view, redelivered, frame_max, &mut out)
            .expect("encodes");
        let expected = reference(channel, consumer_tag, tag, &record, redelivered, frame_max);
        (out, expected)
    }

    proptest! {
        /// Whatever changes between deliveries (tag, key, headers, body size, redelivered,
        /// timestamp), the frames are byte for byte the ones amq-protocol encodes afresh.
        #[test]
        fn frames_match_a_fresh_encoding(
            deliveries in proptest::collection::vec(
                (
                    1u64..u64::MAX,
                    prop_oneof![Just(None), Just(Some("a")), Just(Some("orders.eu"))],
                    0u8..4,
                    0usize..300,
                    any::<bool>(),
                    0i64..3,
                ),
                1..40,
            ),
            consumer_tag in "[a-z.-]{0,40}",
        ) {
            let mut encoder = DeliverEncoder::new(7, &consumer_tag);
            for (tag, key, choice, body, redelivered, timestamp_ms) in deliveries {
                let records = stored(key, choice, body, timestamp_ms);
                let (out, expected) =
                    both(&mut encoder, (7, &consumer_tag), tag, &records, redelivered, 128);
                prop_assert_eq!(&out[..], &expected[..]);
            }
        }
    }

    #[test]
    fn a_run_of_like_messages_reuses_both_templates() {
        let mut encoder = DeliverEncoder::new(1, "ctag");
        let records = stored(Some("k"), 1, 10, 0);
        for tag in 1..=3 {
            let (out, expected) = both(&mut encoder, (1, "ctag"), tag, &records, false, 4096);
            assert_eq!(out, expected);
        }
        assert!(encoder.method.is_some());
        let template = encoder.header.as_ref().expect("kept");
        let view = records.views().next().expect("one").expect("reads");
        assert_eq!(template.raw_headers, view.raw_headers);
    }

    #[test]
    fn damaged_stored_headers_are_an_error_and_nothing_is_written() {
        let mut encoder = DeliverEncoder::new(1, "ctag");
        let view = RecordView {
            offset: 0,
            timestamp_ms: 0,
            key: Some(b"k"),
            value: Some(b"body"),
            // One header announced, its key cut short.
            raw_headers: &[2, 10, b'a'],
        };
        let mut out = BytesMut::new();
        assert!(encoder.encode(1, &view, false, 4096, &mut out).is_err());
        assert!(out.is_empty());
    }
}
