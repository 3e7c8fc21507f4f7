//! `wharf produce`: one record per line of standard input.
//!
//! Lines are raw bytes (no UTF-8 requirement) without their `\n`. A `\r` before the `\n`
//! stays in the value in text encoding (as in kcat), so that what `wharf consume` printed
//! produces the same values again; with `--encoding base64|hex` it is ignored, as those
//! alphabets have no `\r`. With `--key-separator SEP` a line is split at the first SEP into
//! key and value; a line without SEP becomes a record without a key. Then the key and the
//! value are decoded from the `--encoding` ([`crate::encoding`]); a line that does not
//! decode stops the command with an error naming its number. Records are enqueued without waiting for
//! each acknowledgement (bounded by [`DELIVERIES_PENDING_MAX`]); at the end the command waits
//! for all of them and prints the throughput to stderr, or the first delivery error.
//! Idempotence is on unless `--no-idempotent` or `--acks leader|none` turns it off
//! ([`crate::ProduceArgs::idempotence`]).
//!
//! A topic the broker creates for this command (auto-create) is reported on stderr once the
//! first record is acknowledged: `created topic "T" with N partitions (auto-create)`
//! ([`AutoCreateNotice`]).
//!
//! With `--transactional-id ID` all of standard input is one transaction: it commits when
//! input ends, and aborts on an error or on Ctrl-C (SIGINT) or SIGTERM; either way one line
//! on stderr says which (`transaction ID committed: N records` or
//! `error: transaction ID aborted: REASON`).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use wharf_client::{Client, DeliveryFuture, Error, Producer, ProducerConfig, ProducerRecord};

use crate::encoding::Encoding;
use crate::table::counted;
use crate::{CliError, ProduceArgs};

/// Acknowledgements awaited at most at once: bounds memory for huge inputs while leaving
/// plenty of records in flight for batching.
const DELIVERIES_PENDING_MAX: usize = 16 * 1024;

/// Runs `wharf produce`.
pub async fn run(client: &Client, args: ProduceArgs, json: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let mut config = ProducerConfig::default()
        .acks(args.acks.into())
        .idempotence(args.idempotence());
    if let Some(transactional_id) = &args.transactional_id {
        config = config.transactional_id(transactional_id.clone());
    }
    let producer = Producer::try_new(client, config)?;
    let mut notice = AutoCreateNotice::check(client, &args.topic).await;
    let counts = match &args.transactional_id {
        None => send_lines(&producer, &args, &mut notice).await?,
        Some(transactional_id) => {
            in_transaction(&producer, &args, transactional_id, &mut notice).await?
        }
    };
    producer.close().await?;
    // A transaction's outcome is its one line on stderr; `--json` still reports on stdout.
    if args.transactional_id.is_none() || json {
        report(counts.0, counts.1, started.elapsed().as_secs_f64(), json);
    }
    Ok(())
}

/// Runs [`send_lines`] in one transaction: commits at the end of input, aborts on an error
/// or a signal.
async fn in_transaction(
    producer: &Producer,
    args: &ProduceArgs,
    transactional_id: &str,
    notice: &mut AutoCreateNotice<'_>,
) -> Result<(u64, u64), CliError> {
    producer.init_transactions().await?;
    producer.begin_transaction().await?;
    let sent = tokio::select! {
        sent = send_lines(producer, args, notice) => sent,
        () = crate::consume::interrupted() => Err(CliError::Interrupted),
    };
    let sent = match sent {
        Ok(counts) => producer
            .commit_transaction()
            .await
            .map(|()| counts)
            .map_err(CliError::from),
        Err(error) => Err(error),
    };
    match sent {
        Ok(counts) => {
            eprintln!(
                "transaction {transactional_id} committed: {}",
                counted(counts.0, "record")
            );
            Ok(counts)
        }
        // The caller prints the error: one line, naming the transaction.
        Err(error) => {
            let reason = match producer.abort_transaction().await {
                Ok(()) => error.to_string(),
                Err(abort_error) => format!("{error} (the abort failed too: {abort_error})"),
            };
            Err(CliError::TransactionAborted {
                transactional_id: transactional_id.to_string(),
                reason,
            })
        }
    }
}

/// Enqueues one record per line of standard input and waits for every acknowledgement;
/// returns the record count and payload bytes.
async fn send_lines(
    producer: &Producer,
    args: &ProduceArgs,
    notice: &mut AutoCreateNotice<'_>,
) -> Result<(u64, u64), CliError> {
    let mut stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut record_count: u64 = 0;
    let mut payload_bytes: u64 = 0;
    let mut line = Vec::new();
    let mut line_number: u64 = 0;
    loop {
        line.clear();
        let read = stdin
            .read_until(b'\n', &mut line)
            .await
            .map_err(CliError::Stdin)?;
        if read == 0 {
            break;
        }
        line_number += 1;
        let body = line_body(&line, args.encoding);
        let (key, value) = split_line(body, args.key_separator.as_deref());
        let (key, value) =
            decode_parts(key, value, args.encoding).map_err(|reason| CliError::BadInput {
                line_number,
                reason,
            })?;
        payload_bytes += (key.as_ref().map_or(0, Bytes::len) + value.len()) as u64;
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(value),
            headers: args
                .headers
                .iter()
                .map(|(key, value)| wharf_client::Header {
                    key: key.clone(),
                    value: Some(Bytes::copy_from_slice(value.as_bytes())),
                })
                .collect(),
            timestamp_ms: args.timestamp_ms,
        };
        let delivery = producer.enqueue(record).await?;
        record_count += 1;
        if notice.is_pending() {
            notice.report_after(delivery).await?;
            continue;
        }
        pending.push_back(delivery);
        if pending.len() >= DELIVERIES_PENDING_MAX {
            if let Some(delivery) = pending.pop_front() {
                delivery.await?;
            }
        }
    }
    while let Some(delivery) = pending.pop_front() {
        delivery.await?;
    }
    Ok((record_count, payload_bytes))
}

/// Says on stderr that `produce` made the broker create its topic. The produce answer of the
/// native protocol does not tell whether a topic was created, so the command looks the topic
/// up once before producing (one Metadata request) and, if the broker did not know it,
/// reports the creation when the first record is acknowledged: the topic exists then, and
/// the one wait costs a round trip once, only for a new topic.
#[derive(Debug)]
struct AutoCreateNotice<'a> {
    client: &'a Client,
    topic: &'a str,
    state: NoticeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoticeState {
    /// The topic was unknown at the start; nothing is reported yet.
    Pending,
    /// The topic existed, the lookup failed (the producer reports such errors), or the
    /// creation was reported.
    Done,
}

impl<'a> AutoCreateNotice<'a> {
    async fn check(client: &'a Client, topic: &'a str) -> AutoCreateNotice<'a> {
        let state = match client.refresh_topic(topic).await {
            Err(Error::UnknownTopic { .. }) => NoticeState::Pending,
            _ => NoticeState::Done,
        };
        AutoCreateNotice {
            client,
            topic,
            state,
        }
    }

    fn is_pending(&self) -> bool {
        self.state == NoticeState::Pending
    }

    /// Waits for the first record's acknowledgement, then reports the new topic.
    async fn report_after(&mut self, first: DeliveryFuture) -> Result<(), CliError> {
        first.await?;
        self.state = NoticeState::Done;
        match self.client.topic(self.topic).await {
            Ok(topic) => eprintln!(
                "created topic \"{}\" with {} (auto-create)",
                self.topic,
                counted(topic.partition_count(), "partition")
            ),
            Err(_) => eprintln!("created topic \"{}\" (auto-create)", self.topic),
        }
        Ok(())
    }
}

fn report(record_count: u64, payload_bytes: u64, seconds: f64, json: bool) {
    let seconds = seconds.max(1e-6);
    let messages_per_second = record_count as f64 / seconds;
    let megabytes_per_second = payload_bytes as f64 / 1e6 / seconds;
    if json {
        // The field names every throughput summary of the CLI shares (README, "JSON output").
        let document = json!({
            "messages": record_count,
            "bytes": payload_bytes,
            "seconds": seconds,
            "messages_per_second": messages_per_second,
            "megabytes_per_second": megabytes_per_second,
        });
        println!("{document}");
    } else {
        eprintln!(
            "produced {} in {seconds:.3} s ({messages_per_second:.0} msgs/s, {megabytes_per_second:.2} MB/s)",
            counted(record_count, "record")
        );
    }
}

/// The line without its `\n`; in base64 and hex also without a `\r` before it (CRLF
/// input), which those alphabets cannot hold. Text keeps the `\r`: it may be data.
fn line_body(line: &[u8], encoding: Encoding) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    match encoding {
        Encoding::Text => line,
        Encoding::Base64 | Encoding::Hex => line.strip_suffix(b"\r").unwrap_or(line),
    }
}

/// The key and value as bytes, decoded from `encoding`.
fn decode_parts(
    key: Option<Bytes>,
    value: Bytes,
    encoding: Encoding,
) -> Result<(Option<Bytes>, Bytes), String> {
    if encoding == Encoding::Text {
        return Ok((key, value));
    }
    let key = match key {
        Some(key) => Some(Bytes::from(
            encoding
                .decode(&key)
                .map_err(|error| format!("key is {}", error.reason))?,
        )),
        None => None,
    };
    let value = encoding
        .decode(&value)
        .map_err(|error| format!("value is {}", error.reason))?;
    Ok((key, Bytes::from(value)))
}

/// Splits `line` at the first `separator` into key and value.
fn split_line(line: &[u8], separator: Option<&str>) -> (Option<Bytes>, Bytes) {
    let Some(separator) = separator.map(str::as_bytes).filter(|sep| !sep.is_empty()) else {
        return (None, Bytes::copy_from_slice(line));
    };
    match line
        .windows(separator.len())
        .position(|window| window == separator)
    {
        Some(at) => (
            Some(Bytes::copy_from_slice(&line[..at])),
            Bytes::copy_from_slice(&line[at + separator.len()..]),
        ),
        None => (None, Bytes::copy_from_slice(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newline_is_removed_and_a_carriage_return_is_text_data() {
        assert_eq!(line_body(b"abc\n", Encoding::Text), b"abc");
        assert_eq!(line_body(b"abc\r\n", Encoding::Text), b"abc\r");
        assert_eq!(line_body(b"abc", Encoding::Text), b"abc");
        assert_eq!(line_body(b"\n", Encoding::Text), b"");
        assert_eq!(line_body(b"YWJj\r\n", Encoding::Base64), b"YWJj");
        assert_eq!(line_body(b"616263\r\n", Encoding::Hex), b"616263");
    }

    #[test]
    fn keys_and_values_are_decoded_and_a_bad_one_is_named() {
        let (key, value) = split_line(b"6b:fffe0d", Some(":"));
        let (key, value) = decode_parts(key, value, Encoding::Hex).unwrap();
        assert_eq!(key.as_deref(), Some(&b"k"[..]));
        assert_eq!(&value[..], b"\xff\xfe\r");
        let (key, value) = split_line(b"zz:00", Some(":"));
        let error = decode_parts(key, value, Encoding::Hex).unwrap_err();
        assert_eq!(error, "key is not valid hex: byte 'z' at position 0");
        let error = decode_parts(None, Bytes::from_static(b"@@"), Encoding::Base64).unwrap_err();
        assert!(error.starts_with("value is not valid base64"), "{error}");
    }

    #[test]
    fn key_separator_splits_at_first_occurrence() {
        let (key, value) = split_line(b"user-1::a::b", Some("::"));
        assert_eq!(key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&value[..], b"a::b");
    }

    #[test]
    fn line_without_separator_has_no_key() {
        let (key, value) = split_line(b"plain", Some(":"));
        assert_eq!(key, None);
        assert_eq!(&value[..], b"plain");
        let (key, value) = split_line(b"k:v", None);
        assert_eq!(key, None);
        assert_eq!(&value[..], b"k:v");
    }

    #[test]
    fn empty_key_is_kept() {
        let (key, value) = split_line(b":v", Some(":"));
        assert_eq!(key.as_deref(), Some(&b""[..]));
        assert_eq!(&value[..], b"v");
    }
}
