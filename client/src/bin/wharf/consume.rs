//! `wharf consume`: prints records, one per line, until `--max-messages`, `--timeout-ms` of
//! silence, Ctrl-C or SIGTERM.
//!
//! Modes: with `--group` (and no `--partition`) the consumer joins the group; with
//! `--partition` it reads that one partition (starting from, and committing to, `--group`'s
//! offsets as a non-member if a group is given); otherwise it reads every partition of the
//! topic without a group. `--from` is where to start without a committed offset (default
//! latest, as kafka-console-consumer). With a group, exactly what was printed is committed
//! before exiting, whichever way the command ends: records a poll returned beyond
//! `--max-messages` are sought back before the commit.
//!
//! Output ([`ConsumeFormat`]): the value per line, one JSON object per line, or a kcat-style
//! template ([`crate::template`]); keys and values in the `--encoding` asked for
//! ([`crate::encoding`]). In text encoding the bytes are written unchanged, so a value that
//! is not UTF-8 or ends with `\r` is printed as stored (JSON shows invalid UTF-8 as U+FFFD).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use wharf_client::{
    Client, CommitPolicy, Consumer, ConsumerConfig, ConsumerRecord, Error, OffsetReset,
    TopicPartition,
};

use crate::encoding::Encoding;
use crate::template::Template;
use crate::{CliError, ConsumeArgs, StartFrom};

/// `wharf consume --format` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeFormat {
    /// The value, one per line.
    Value,
    /// One JSON object per record.
    Json,
    /// A kcat-style template.
    Template(Template),
}

/// Parses `--format`: `value`, `json`, or a template with at least one `%` directive (so a
/// misspelt name is an error, not a template printing that word).
///
/// # Errors
/// A message saying what was expected, or what is wrong with the template.
pub fn parse_format(text: &str) -> Result<ConsumeFormat, String> {
    match text {
        "value" => Ok(ConsumeFormat::Value),
        "json" => Ok(ConsumeFormat::Json),
        template if template.contains('%') => Template::parse(template).map(ConsumeFormat::Template),
        other => Err(format!(
            "expected value, json or a template with % directives (such as '%k:%s\\n'), got \"{other}\""
        )),
    }
}

/// Longest single poll: bounds how late a `--timeout-ms` deadline is noticed.
const POLL_SLICE: Duration = Duration::from_secs(1);

/// Says so on stderr when `--from OFFSET` lies past the end of every partition read (the
/// consumer then starts at the end, as Kafka's does, and prints nothing that is there now).
fn warn_if_past_the_end(
    topic: &wharf_client::TopicDescription,
    partition: Option<u32>,
    offset: i64,
) {
    let ends: Vec<i64> = topic
        .partitions
        .iter()
        .filter(|described| partition.is_none_or(|only| only == described.partition))
        .map(|described| described.high_watermark)
        .collect();
    if let Some(end) = ends.iter().copied().max() {
        if offset > end {
            eprintln!(
                "warning: --from {offset} is past the end of {} (largest end offset {end}); starting at the end",
                topic.name
            );
        }
    }
}

/// Runs `wharf consume`.
pub async fn run(client: &Client, args: ConsumeArgs, json: bool) -> Result<(), CliError> {
    // Unknown topics are an error here; only produce auto-creates.
    let topic = client.refresh_topic(&args.topic).await?;
    if let Some(partition) = args.partition {
        if partition >= topic.partition_count() {
            return Err(Error::UnknownPartition {
                topic: topic.name.clone(),
                partition,
                partition_count: topic.partition_count(),
            }
            .into());
        }
    }
    if let Some(StartFrom::Offset(offset)) = args.from {
        warn_if_past_the_end(&topic, args.partition, offset);
    }
    let reset = match args.from {
        None if args.from_time.is_some() => {
            OffsetReset::Timestamp(args.from_time.unwrap_or_default())
        }
        None | Some(StartFrom::Latest) => OffsetReset::Latest,
        Some(StartFrom::Earliest) => OffsetReset::Earliest,
        Some(StartFrom::Offset(offset)) => OffsetReset::Offset(offset),
    };
    let mut config = ConsumerConfig::default()
        .auto_offset_reset(reset)
        .isolation(args.isolation.into())
        // Periodic commits keep a long-running group consumer's progress across rebalances;
        // the explicit commit at exit covers the rest.
        .commit(CommitPolicy::Auto {
            interval: Duration::from_secs(5),
        });
    config.group_id = args.group.clone();
    let mut consumer = Consumer::new(client, config);
    match (&args.group, args.partition) {
        (Some(group), None) => consumer.subscribe(group, [args.topic.clone()]).await?,
        (_, Some(partition)) => {
            consumer.assign(vec![TopicPartition::new(args.topic.clone(), partition)])?;
        }
        (None, None) => consumer.assign(
            topic
                .partitions
                .iter()
                .map(|partition| TopicPartition::new(args.topic.clone(), partition.partition))
                .collect(),
        )?,
    }
    let format = args.format.clone().unwrap_or(if json {
        ConsumeFormat::Json
    } else {
        ConsumeFormat::Value
    });
    let printed = print_records(&mut consumer, &args, &format).await;
    let committed = match &args.group {
        Some(_) => consumer.commit().await,
        None => Ok(()),
    };
    let closed = consumer.close().await;
    printed?;
    committed?;
    closed?;
    Ok(())
}

/// Polls and prints until a stop condition; returns after seeking back over anything
/// polled but not printed.
async fn print_records(
    consumer: &mut Consumer,
    args: &ConsumeArgs,
    format: &ConsumeFormat,
) -> Result<(), CliError> {
    let idle_max = args.timeout_ms.map(Duration::from_millis);
    let mut printed: u64 = 0;
    let mut last_record_at = Instant::now();
    let mut out = io::BufWriter::new(io::stdout());
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        let wait = match idle_max {
            Some(idle_max) => {
                let idle = last_record_at.elapsed();
                if idle >= idle_max {
                    return Ok(());
                }
                (idle_max - idle).min(POLL_SLICE)
            }
            None => POLL_SLICE,
        };
        let records = tokio::select! {
            records = consumer.poll(wait) => records?,
            _ = &mut interrupted => return Ok(()),
        };
        if !records.is_empty() {
            last_record_at = Instant::now();
        }
        let mut records = records.into_iter();
        for record in records.by_ref() {
            if let Err(error) = write_record(&mut out, &record, format, args.encoding) {
                return stdout_closed(error);
            }
            printed += 1;
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
        }
        rewind(consumer, records)?;
        if let Err(error) = out.flush() {
            return stdout_closed(error);
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: both end `consume` the same clean way.
/// A signal that cannot be watched never resolves rather than ending the command at once.
///
/// On Unix the handlers are installed by this call, not when the future is first polled: a
/// `select!` may leave the future unpolled while another branch is ready, and a signal
/// arriving then would otherwise kill the process with the default action. Once the future
/// is dropped, SIGINT stays caught (tokio keeps its handler), so a Ctrl-C during the
/// closing commit is ignored rather than cutting it short.
pub(crate) fn interrupted() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    Some(()) = interrupt.recv() => {}
                    Some(()) = terminate.recv() => {}
                    else => std::future::pending::<()>().await,
                }
            });
        }
    }
    Box::pin(ctrl_c())
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A reader that went away (`| head`) ends the command quietly; other errors are errors.
fn stdout_closed(error: io::Error) -> Result<(), CliError> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(CliError::Stdout(error))
    }
}

/// Seeks each partition back to its first record that was polled but not printed.
fn rewind(
    consumer: &mut Consumer,
    unprinted: impl Iterator<Item = ConsumerRecord>,
) -> Result<(), CliError> {
    let mut first_unprinted: BTreeMap<(String, u32), i64> = BTreeMap::new();
    for record in unprinted {
        first_unprinted
            .entry((record.topic, record.partition))
            .and_modify(|offset| *offset = (*offset).min(record.offset))
            .or_insert(record.offset);
    }
    for ((topic, partition), offset) in first_unprinted {
        consumer.seek(&topic, partition, offset)?;
    }
    Ok(())
}

fn write_record(
    out: &mut impl Write,
    record: &ConsumerRecord,
    format: &ConsumeFormat,
    encoding: Encoding,
) -> io::Result<()> {
    match format {
        ConsumeFormat::Value => match &record.value {
            Some(value) => {
                out.write_all(&encoding.encode(value))?;
                out.write_all(b"\n")
            }
            None => out.write_all(b"null\n"),
        },
        ConsumeFormat::Json => writeln!(out, "{}", record_json(record, encoding)),
        ConsumeFormat::Template(template) => template.write(out, record, encoding),
    }
}

/// The record as JSON, its key and value in `encoding`; header values are text.
fn record_json(record: &ConsumerRecord, encoding: Encoding) -> Value {
    let encoded = |bytes: &Option<bytes::Bytes>, encoding: Encoding| {
        bytes.as_ref().map(|bytes| encoding.encode_to_string(bytes))
    };
    let headers: Vec<Value> = record
        .headers
        .iter()
        .map(|header| json!({ "key": header.key, "value": encoded(&header.value, Encoding::Text) }))
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": encoded(&record.key, encoding),
        "value": encoded(&record.value, encoding),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wharf_client::Header;

    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".to_string(),
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from("k")),
            value: Some(Bytes::from("v\u{e9}")),
            headers: vec![Header {
                key: "trace".to_string(),
                value: None,
            }],
        }
    }

    #[test]
    fn value_format_prints_the_value_line() {
        let mut out = Vec::new();
        write_record(&mut out, &record(), &ConsumeFormat::Value, Encoding::Text).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "v\u{e9}\n");
        let mut tombstone = record();
        tombstone.value = None;
        let mut out = Vec::new();
        write_record(&mut out, &tombstone, &ConsumeFormat::Value, Encoding::Text).unwrap();
        assert_eq!(out, b"null\n");
    }

    #[test]
    fn json_format_has_every_field() {
        let mut out = Vec::new();
        write_record(&mut out, &record(), &ConsumeFormat::Json, Encoding::Text).unwrap();
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["topic"], "orders");
        assert_eq!(parsed["partition"], 2);
        assert_eq!(parsed["offset"], 41);
        assert_eq!(parsed["timestamp"], 1_700_000_000_000i64);
        assert_eq!(parsed["key"], "k");
        assert_eq!(parsed["value"], "v\u{e9}");
        assert_eq!(parsed["headers"][0]["key"], "trace");
        assert!(parsed["headers"][0]["value"].is_null());
        assert_eq!(out.iter().filter(|byte| **byte == b'\n').count(), 1);
    }

    fn written(record: &ConsumerRecord, format: &str, encoding: Encoding) -> Vec<u8> {
        let format = parse_format(format).unwrap();
        let mut out = Vec::new();
        write_record(&mut out, record, &format, encoding).unwrap();
        out
    }

    #[test]
    fn text_prints_the_stored_bytes_unchanged_except_in_json() {
        let mut awkward = record();
        awkward.value = Some(Bytes::from_static(b"f\xff\r"));
        assert_eq!(written(&awkward, "value", Encoding::Text), b"f\xff\r\n");
        let parsed: Value =
            serde_json::from_slice(&written(&awkward, "json", Encoding::Text)).unwrap();
        assert_eq!(
            parsed["value"], "f\u{fffd}\r",
            "JSON strings hold only Unicode"
        );
    }

    #[test]
    fn every_format_writes_keys_and_values_in_the_encoding() {
        let mut awkward = record();
        awkward.value = Some(Bytes::from_static(b"\xff\xfe\r"));
        assert_eq!(written(&awkward, "value", Encoding::Base64), b"//4N\n");
        assert_eq!(written(&awkward, "value", Encoding::Hex), b"fffe0d\n");
        let parsed: Value =
            serde_json::from_slice(&written(&awkward, "json", Encoding::Hex)).unwrap();
        assert_eq!(
            (&parsed["key"], &parsed["value"]),
            (&json!("6b"), &json!("fffe0d"))
        );
        assert_eq!(
            written(&awkward, "%k=%s\\n", Encoding::Base64),
            b"aw===//4N\n"
        );
    }

    #[test]
    fn format_names_a_format_or_takes_a_template() {
        assert_eq!(parse_format("value"), Ok(ConsumeFormat::Value));
        assert_eq!(parse_format("json"), Ok(ConsumeFormat::Json));
        assert!(matches!(
            parse_format("%s\\n"),
            Ok(ConsumeFormat::Template(_))
        ));
        let misspelt = parse_format("jsn").unwrap_err();
        assert!(
            misspelt.starts_with("expected value, json or a template"),
            "{misspelt}"
        );
        assert!(parse_format("%q").unwrap_err().contains("%q"));
    }
}
