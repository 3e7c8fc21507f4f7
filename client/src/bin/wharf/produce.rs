//! `wharf produce`: one record per line of standard input.
//!
//! Lines are raw bytes (no UTF-8 requirement) without their `\n` or `\r\n`. With
//! `--key-separator SEP` a line is split at the first SEP into key and value; a line
//! without SEP becomes a record without a key. Records are enqueued without waiting for
//! each acknowledgement (bounded by [`DELIVERIES_PENDING_MAX`]); at the end the command waits
//! for all of them and prints the throughput to stderr, or the first delivery error.
//! Idempotence is on unless `--no-idempotent` or `--acks leader|none` turns it off
//! ([`crate::ProduceArgs::idempotence`]).
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
use wharf_client::{Client, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};

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
    let counts = match &args.transactional_id {
        None => send_lines(&producer, &args).await?,
        Some(transactional_id) => in_transaction(&producer, &args, transactional_id).await?,
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
) -> Result<(u64, u64), CliError> {
    producer.init_transactions().await?;
    producer.begin_transaction().await?;
    let sent = tokio::select! {
        sent = send_lines(producer, args) => sent,
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
async fn send_lines(producer: &Producer, args: &ProduceArgs) -> Result<(u64, u64), CliError> {
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
    Ok((record_count, payload_bytes))
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
            "produced {} in {seconds:.3} s ({records_per_second:.0} msgs/s, {megabytes_per_second:.2} MB/s)",
            counted(record_count, "record")
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
