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
//! compares every frame with a fresh encoding.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{Header, Record};

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
    exchange: String,
    routing_key: Option<Bytes>,
    redelivered: bool,
    frame: Vec<u8>,
}

/// The content header frame last encoded, and what it was made from.
struct HeaderTemplate {
    headers: Vec<Header>,
    /// The record timestamp, when the properties depend on it (an `x-death` entry).
    timestamp_ms: Option<i64>,
    /// The exchange the headers name (for the `basic.deliver` frame).
    exchange: String,
    frame: Vec<u8>,
}

/// Encodes the deliveries of one consumer on one channel.
pub(crate) struct DeliverEncoder {
    channel: u16,
    consumer_tag: ShortString,
    scratch: Vec<u8>,
    method: Option<MethodTemplate>,
    header: Option<HeaderTemplate>,
}

impl DeliverEncoder {
    pub(crate) fn new(channel: u16, consumer_tag: &str) -> DeliverEncoder {
        DeliverEncoder {
            channel,
            consumer_tag: ShortString::from(consumer_tag),
            scratch: Vec::new(),
            method: None,
            header: None,
        }
    }

    /// Appends the frames delivering `record` under `delivery_tag` to `out`.
    pub(crate) fn encode(
        &mut self,
        delivery_tag: u64,
        record: &Record,
        redelivered: bool,
        frame_max: u32,
        out: &mut BytesMut,
    ) {
        let body = record.value.as_deref().unwrap_or_default();
        out.reserve(body.len() + 256);
        let (exchange, unkept) = self.header_frame(record, body.len() as u64);
        self.method_frame(delivery_tag, record, &exchange, redelivered, out);
        match (&unkept, &self.header) {
            (Some(frame), _) => out.extend_from_slice(frame),
            (None, Some(header)) => out.extend_from_slice(&header.frame),
            // Only if amq-protocol refused to encode the header (logged).
            (None, None) => {}
        }
        super::encode_body(self.channel, body, frame_max, out);
    }

    /// Makes `self.header` the content header for `record` with `body_size`, reusing the
    /// previous one when the record's headers are the same. Returns the exchange the
    /// headers name, and a header frame that could not be kept as a template (its body size
    /// was not where expected) to send as it is.
    fn header_frame(&mut self, record: &Record, body_size: u64) -> (String, Option<Vec<u8>>) {
        let timestamp_ms = record
            .headers
            .iter()
            .any(|header| header.key.starts_with("x-death-"))
            .then_some(record.timestamp_ms);
        if let Some(header) = self.header.as_mut().filter(|header| {
            header.timestamp_ms == timestamp_ms && header.headers == record.headers
        }) {
            header.frame[BODY_SIZE_AT..BODY_SIZE_AT + 8].copy_from_slice(&body_size.to_be_bytes());
            return (header.exchange.clone(), None);
        }
        let (properties, exchange) =
            message::properties_from_headers(&record.headers, record.timestamp_ms);
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
            return (exchange, Some(frame));
        }
        self.header = Some(HeaderTemplate {
            headers: record.headers.clone(),
            timestamp_ms,
            exchange: exchange.clone(),
            frame,
        });
        (exchange, None)
    }

    fn method_frame(
        &mut self,
        delivery_tag: u64,
        record: &Record,
        exchange: &str,
        redelivered: bool,
        out: &mut BytesMut,
    ) {
        let tag_at = delivery_tag_at(&self.consumer_tag);
        if let Some(method) = self.method.as_mut().filter(|method| {
            method.redelivered == redelivered
                && method.exchange == exchange
                && method.routing_key == record.key
        }) {
            method.frame[tag_at..tag_at + 8].copy_from_slice(&delivery_tag.to_be_bytes());
            out.extend_from_slice(&method.frame);
            return;
        }
        let (routing_key, _) = message::key_and_body(record);
        let frame = self.encoded(&AMQPFrame::Method(
            self.channel,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: self.consumer_tag.clone(),
                delivery_tag,
                redelivered,
                exchange: message::short_string(exchange.to_string()),
                routing_key: message::short_string(routing_key),
            })),
        ));
        out.extend_from_slice(&frame);
        let patchable = frame.get(tag_at..tag_at + 8) == Some(&delivery_tag.to_be_bytes());
        self.method = patchable.then(|| MethodTemplate {
            exchange: exchange.to_string(),
            routing_key: record.key.clone(),
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
    use proptest::prelude::*;

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

    fn record(key: Option<&'static str>, choice: u8, body: usize, timestamp_ms: i64) -> Record {
        Record {
            key: key.map(|key| Bytes::from_static(key.as_bytes())),
            value: Some(Bytes::from(vec![b'x'; body])),
            headers: headers(choice),
            offset: 0,
            timestamp_ms,
        }
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
                let record = record(key, choice, body, timestamp_ms);
                let mut out = BytesMut::new();
                encoder.encode(tag, &record, redelivered, 128, &mut out);
                let expected = reference(7, &consumer_tag, tag, &record, redelivered, 128);
                prop_assert_eq!(&out[..], &expected[..]);
            }
        }
    }

    #[test]
    fn a_run_of_like_messages_reuses_both_templates() {
        let mut encoder = DeliverEncoder::new(1, "ctag");
        let mut out = BytesMut::new();
        for tag in 1..=3 {
            encoder.encode(tag, &record(Some("k"), 1, 10, 0), false, 4096, &mut out);
        }
        assert!(encoder.method.is_some());
        assert_eq!(encoder.header.as_ref().unwrap().headers, headers(1));
        let mut expected = BytesMut::new();
        for tag in 1..=3 {
            expected.extend_from_slice(&reference(
                1,
                "ctag",
                tag,
                &record(Some("k"), 1, 10, 0),
                false,
                4096,
            ));
        }
        assert_eq!(out, expected);
    }
}
