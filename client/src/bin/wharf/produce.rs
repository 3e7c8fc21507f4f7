//! `wharf produce`: one record per line of standard input.
//!
//! Lines are raw bytes (no UTF-8 requirement) without their `\n` or `\r\n`. With
//! `--key-separator SEP` a line is split at the first SEP into key and value; a line
//! without SEP becomes a record without a key. Records are enqueued without waiting for
//! each acknowledgement (bounded by [`DELIVERIES_PENDING_MAX`]); at the end the command waits
//! for all of them and prints the throughput to stderr, or the first delivery error.
//! Idempotence is on unless `--no-idempotent` or `--acks leader|none` turns it off
//! ([`crate::ProduceArgs::idempotence`]).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use wharf_client::{Client, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};

use crate::{CliError, ProduceArgs};

/// Acknowledgements awaited at most at once: bounds memory for huge inputs while leaving
/// plenty of records in flight for batching.
const DELIVERIES_PENDING_MAX: usize = 16 * 1024;

/// Runs `wharf produce`.
pub async fn run(client: &Client, args: ProduceArgs, json: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let config = ProducerConfig::default()
        .acks(args.acks.into())
        .idempotence(args.idempotence());
    let producer = Producer::try_new(client, config)?;
    let mut stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut record_count: u64 = 0;
    let mut payload_bytes: u64 = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = stdin
            .read_until(b'\n', &mut line)
            .await
            .map_err(CliError::Stdin)?;
        if read == 0 {
            break;
        }
        let (key, value) = split_line(trim_newline(&line), args.key_separator.as_deref());
        payload_bytes += (key.as_ref().map_or(0, Bytes::len) + value.len()) as u64;
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(value),
            ..ProducerRecord::default()
        };
        pending.push_back(producer.enqueue(record).await?);
        record_count += 1;
        if pending.len() >= DELIVERIES_PENDING_MAX {
            if let Some(delivery) = pending.pop_front() {
                delivery.await?;
            }
        }
    }
    while let Some(delivery) = pending.pop_front() {
        delivery.await?;
    }
    producer.close().await?;
    report(
        record_count,
        payload_bytes,
        started.elapsed().as_secs_f64(),
        json,
    );
    Ok(())
}

fn report(record_count: u64, payload_bytes: u64, seconds: f64, json: bool) {
    let seconds = seconds.max(1e-6);
    let records_per_second = record_count as f64 / seconds;
    let megabytes_per_second = payload_bytes as f64 / 1e6 / seconds;
    if json {
        let document = json!({
            "records": record_count,
            "bytes": payload_bytes,
            "seconds": seconds,
            "records_per_second": records_per_second,
            "megabytes_per_second": megabytes_per_second,
        });
        println!("{document}");
    } else {
        eprintln!(
            "produced {record_count} records in {seconds:.3} s ({records_per_second:.0} msgs/s, {megabytes_per_second:.2} MB/s)"
        );
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
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
    fn line_endings_are_removed() {
        assert_eq!(trim_newline(b"abc\n"), b"abc");
        assert_eq!(trim_newline(b"abc\r\n"), b"abc");
        assert_eq!(trim_newline(b"abc"), b"abc");
        assert_eq!(trim_newline(b"\n"), b"");
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
