//! `wharf`: the command line for Wharf, built on the `wharf-client` library.
//!
//! ```text
//! wharf [--broker HOST:PORT] [--json] [--tls [--ca FILE] [--cert FILE --key FILE]] COMMAND
//! wharf topic create NAME --partitions N [--config k=v ...]
//! wharf topic list | topic describe NAME | topic delete NAME
//! wharf produce TOPIC [--key-separator SEP] [--acks all|leader|none] [--partition P]
//!                     [--idempotent | --no-idempotent] [--transactional-id ID]
//!                     [--encoding text|base64|hex]
//! wharf consume TOPIC [--group G] [--from earliest|latest|OFFSET] [--partition P]
//!                     [--max-messages N] [--timeout-ms T] [--format value|json|TEMPLATE]
//!                     [--encoding text|base64|hex]
//!                     [--isolation read_committed|read_uncommitted]
//! wharf group list | group describe G
//! wharf exchange declare NAME --type direct|fanout|topic|headers [--transient]
//! wharf exchange list | exchange delete NAME
//! wharf queue declare NAME [--durable] [--message-ttl-ms N] [--max-length N]
//!                          [--overflow drop-head|reject-publish] [--dead-letter-exchange X]
//!                          [--dead-letter-routing-key K] [--delivery-limit N]
//!                          [--single-active-consumer] [--ack-timeout-ms N]
//!                          [--auto-delete]
//! wharf queue bind|unbind NAME EXCHANGE [--routing-key KEY | --header k=v ... --match all|any]
//! wharf queue list | queue purge NAME | queue delete NAME
//! wharf publish EXCHANGE ROUTING_KEY [--confirm] [--mandatory] [--header k=v]...
//!                                    [--ttl-ms N] [--delay-ms N]
//! wharf subscribe QUEUE [--prefetch N] [--max-messages N] [--timeout-ms T]
//!                       [--ack auto|manual] [--reject] [--format value|json]
//! wharf perf produce|consume|e2e|queue ...       (load generators; see perf.rs)
//! ```
//!
//! Output: aligned tables for people, one JSON document with `--json`. Errors: one line
//! `error: ...` on stderr and exit code 1; usage errors are clap's (exit code 2);
//! `wharf publish` exits with [`EXIT_NOT_STORED`] (3) when some message was not stored
//! (`publish::EXIT_STATUS_HELP`). With `--json` the error line is one JSON object instead
//! (`{"error": MESSAGE, "kind": KIND}`, plus `"code"` when the broker answered with a wire
//! code), still on stderr and with the same exit code ([`error_json`]), so that stdout
//! carries only data. This file holds the argument definitions and the
//! dispatch; each command family has a module.

#![warn(missing_docs)]

// The crate root is `src/bin/wharf.rs` (the path the workspace fixes), so its modules live in
// `src/bin/wharf/` and are named explicitly.
#[path = "wharf/acl.rs"]
mod acl;
#[path = "wharf/admin.rs"]
mod admin;
#[path = "wharf/cluster.rs"]
mod cluster;
#[path = "wharf/consume.rs"]
mod consume;
#[path = "wharf/encoding.rs"]
mod encoding;
#[path = "wharf/perf.rs"]
mod perf;
#[path = "wharf/perf_amqp.rs"]
mod perf_amqp;
#[path = "wharf/produce.rs"]
mod produce;
#[path = "wharf/publish.rs"]
mod publish;
#[path = "wharf/queue.rs"]
mod queue;
#[path = "wharf/subscribe.rs"]
mod subscribe;
#[path = "wharf/table.rs"]
mod table;
#[path = "wharf/template.rs"]
mod template;
#[path = "wharf/user.rs"]
mod user;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use encoding::Encoding;

/// mimalloc instead of the system allocator: the producer and subscriber paths allocate per
/// record on one thread and free on another, which glibc's arenas serialize with a lock
/// (about a fifth of the CLI's CPU in `perf produce`; docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wharf_client::{
    Acks, Client, ClientCertificate, ClientConfig, Idempotence, Isolation, ResetSpec, Tls,
    DEFAULT_BROKER,
};

/// Command line for the Wharf message broker.
// `about` comes from this doc comment, not from the crate's description (which is the
// library's).
#[derive(Debug, Parser)]
#[command(name = "wharf", version, propagate_version = true)]
pub struct Cli {
    /// Broker to contact first (HOST:PORT).
    #[arg(long, env = "WHARF_BROKER", default_value = DEFAULT_BROKER, global = true)]
    pub broker: String,
    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Connect over TLS (to a broker listener `ssl://` or `sasl_ssl://`); the broker's
    /// certificate must be valid for the host of --broker.
    #[arg(long, global = true)]
    pub tls: bool,
    /// PEM file of the CA certificates to trust with --tls (default: the system's trust
    /// store).
    #[arg(long, value_name = "FILE", global = true, requires = "tls")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with --key).
    #[arg(long, value_name = "FILE", global = true, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Log in as this user (SCRAM); the password comes from WHARF_PASSWORD, else from the
    /// first line of standard input with --password-stdin.
    #[arg(long, env = "WHARF_USER", global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// Read a password from the first line of standard input: the new one for `wharf user
    /// create|passwd`, the login's (with --user, when WHARF_PASSWORD is unset) otherwise.
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// The login's SCRAM mechanism.
    #[arg(long, env = "WHARF_SASL_MECHANISM", global = true, default_value = "SCRAM-SHA-256", value_parser = user::parse_mechanism, value_name = "SCRAM-SHA-256|SCRAM-SHA-512")]
    pub sasl_mechanism: wharf_client::ScramMechanism,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe or delete topics.
    Topic {
        /// The topic command.
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce one record per line of standard input.
    Produce(ProduceArgs),
    /// Print records of a topic, one per line.
    Consume(ConsumeArgs),
    /// List or describe consumer groups.
    Group {
        /// The group command.
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Declare, list or delete exchanges.
    Exchange {
        /// The exchange command.
        #[command(subcommand)]
        command: queue::ExchangeCommand,
    },
    /// Declare, bind, unbind, list, purge or delete queues.
    Queue {
        /// The queue command.
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Publish one message per line of standard input to an exchange.
    #[command(after_help = publish::EXIT_STATUS_HELP)]
    Publish(publish::PublishArgs),
    /// Print the messages pushed from a queue, one per line, acking each.
    Subscribe(subscribe::SubscribeArgs),
    /// Load generators (produce, consume, end-to-end latency, queue publish and consume);
    /// one JSON summary line.
    Perf {
        /// The workload.
        #[command(subcommand)]
        command: perf::PerfCommand,
    },
    /// Add, list and remove ACLs (who may do what to which resource).
    Acl {
        /// The ACL command.
        #[command(subcommand)]
        command: acl::AclCommand,
    },
    /// Create, list, delete users or change their passwords.
    User {
        /// The user command.
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// The cluster's members: status, add and remove nodes.
    Cluster {
        /// The cluster command.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

/// `wharf topic ...`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic name.
        name: String,
        /// Number of partitions.
        #[arg(long)]
        partitions: u32,
        /// How many nodes hold each partition (default: 3 in a cluster of three or more
        /// nodes, else 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        replication_factor: Option<u32>,
        /// A topic config override, KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions with their log start and end offsets, and its configs
    /// (overrides and the broker defaults of the rest).
    Describe {
        /// The topic name.
        name: String,
    },
    /// Set config overrides of a topic; stored durably, retention and roll limits apply at
    /// once (`flush` is fixed at create).
    Alter {
        /// The topic name.
        name: String,
        /// A topic config override, KEY=VALUE (repeatable; at least one).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config, required = true)]
        configs: Vec<(String, String)>,
    },
    /// Grow a topic to COUNT partitions in all (records already stored stay where they are;
    /// keys may map to other partitions from now on).
    AddPartitions {
        /// The topic name.
        name: String,
        /// The new total partition count; must exceed the current one.
        #[arg(long)]
        count: u32,
    },
    /// Delete a topic.
    Delete {
        /// The topic name.
        name: String,
    },
}

/// `wharf group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Show a group's committed offset, end offset and lag per partition.
    Describe {
        /// The group id.
        group: String,
    },
    /// Move a group's committed offsets on every partition of a topic. A dry run by
    /// default: prints the plan; --execute commits it. The group must have no active
    /// members.
    ResetOffsets {
        /// The group id.
        group: String,
        /// The topic whose partitions are reset.
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset (42; clamped to each partition's log), or a time
        /// (RFC 3339, or milliseconds since the epoch written with an `ms` suffix:
        /// 1700000000000ms): the first record at or after it, the end if none.
        #[arg(long, value_name = "earliest|latest|OFFSET|TIME", value_parser = parse_reset_to)]
        to: ResetSpec,
        /// Commit the planned offsets (without it nothing changes).
        #[arg(long)]
        execute: bool,
    },
    /// Delete a group's committed offsets. The group must have no active members.
    Delete {
        /// The group id.
        group: String,
    },
}

/// `wharf produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// The topic (created by the broker on first produce if it allows).
    pub topic: String,
    /// Split each line at the first SEP into key and value (lines without SEP get no key).
    /// With --encoding base64, pick a SEP outside the base64 alphabet (`:` or a tab, not
    /// `=`, `+` or `/`).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// How each line's key and value are written. `text`: the bytes as they are; a line ends
    /// at `\n` only, so a `\r` before it stays in the value (as in kcat: what `consume`
    /// printed produces the same values again; strip CRLF line ends with `tr -d '\r'`).
    /// `base64` (standard, padded) or `hex`: decoded, so any bytes can be sent (a trailing
    /// `\r` is ignored); a line that does not decode stops the command with an error
    /// naming the line.
    #[arg(long, value_enum, default_value_t = Encoding::Text)]
    pub encoding: Encoding,
    /// Acknowledgement to wait for. `leader` and `none` turn idempotence off unless
    /// --idempotent is given too (which is then an error: idempotence needs `all`).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Deduplicate retries, so a record is written once even if an answer is lost (the
    /// default with --acks all).
    #[arg(long, overrides_with = "no_idempotent")]
    pub idempotent: bool,
    /// Turn idempotence off: a retry after a lost answer may write records twice.
    #[arg(long, overrides_with = "idempotent")]
    pub no_idempotent: bool,
    /// Write all of standard input in one transaction with this transactional id: it
    /// commits when input ends and aborts on an error or Ctrl-C.
    #[arg(long, value_name = "ID")]
    pub transactional_id: Option<String>,
    /// A header every record carries, KEY=VALUE (repeatable; `wharf consume --format
    /// json` shows them).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_config)]
    pub headers: Vec<(String, String)>,
    /// The timestamp of every record, ms since the Unix epoch (default: when it is sent).
    #[arg(long, value_name = "MS")]
    pub timestamp_ms: Option<i64>,
}

impl ProduceArgs {
    /// The idempotence the flags ask for: on by default, off with --no-idempotent, and off
    /// with --acks leader or none unless --idempotent insists (then the producer refuses the
    /// combination).
    pub fn idempotence(&self) -> Idempotence {
        match (self.idempotent, self.no_idempotent, self.acks) {
            (_, true, _) => Idempotence::Disabled,
            (true, false, _) | (false, false, AcksArg::All) => Idempotence::Enabled,
            (false, false, AcksArg::Leader | AcksArg::None) => Idempotence::Disabled,
        }
    }
}

/// `wharf consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// The topic.
    pub topic: String,
    /// Consume as a member of this group, committing what was printed on exit.
    #[arg(long)]
    pub group: Option<String>,
    /// Where to start without a committed offset: earliest, latest or an offset
    /// (default latest).
    #[arg(long, value_name = "earliest|latest|OFFSET", value_parser = parse_from, conflicts_with = "from_time")]
    pub from: Option<StartFrom>,
    /// Where to start without a committed offset: the first record at or after this time,
    /// as RFC 3339 (`2026-12-03T05:00:00Z`, `...+01:00`) or ms since the Unix epoch (the
    /// end of the log if no record is that new).
    #[arg(long, value_name = "RFC3339|MS", value_parser = parse_time)]
    pub from_time: Option<i64>,
    /// Read only this partition (no group membership).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Exit after printing this many records.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Exit when no record arrived for this many milliseconds.
    #[arg(long, value_name = "T")]
    pub timeout_ms: Option<u64>,
    /// How to print each record: `value` (the value, one per line; `null` for none),
    /// `json` (one object per line; the default with --json) or a kcat-style template such
    /// as '%k:%s\n'.
    #[arg(
        long,
        value_name = "value|json|TEMPLATE",
        value_parser = consume::parse_format,
        long_help = format!(
            "How to print each record: `value` (the value, one per line; `null` for none), \
`json` (one object per line; the default with --json) or a kcat-style template such as \
'%k:%s\\n'. Template: {}.",
            template::TEMPLATE_HELP
        )
    )]
    pub format: Option<consume::ConsumeFormat>,
    /// How keys and values are printed. `text`: the bytes as they are (in JSON, which holds
    /// only Unicode, invalid UTF-8 shows as U+FFFD); `base64` (standard, padded) or `hex`:
    /// any bytes, in every format; what `produce --encoding` of the same name reads.
    #[arg(long, value_enum, default_value_t = Encoding::Text)]
    pub encoding: Encoding,
    /// Whether to show records of open or aborted transactions.
    #[arg(long, value_enum, default_value_t = IsolationArg::ReadUncommitted)]
    pub isolation: IsolationArg,
}

/// `--acks` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Wait until the record is durable.
    All,
    /// Wait until the broker appended the record.
    Leader,
    /// Do not wait (fire and forget).
    None,
}

impl From<AcksArg> for Acks {
    fn from(acks: AcksArg) -> Acks {
        match acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// The value as text.
    Value,
    /// One JSON object per record.
    Json,
}

/// `--isolation` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// Only committed transactional records.
    #[value(name = "read_committed")]
    ReadCommitted,
    /// Everything up to the high watermark.
    #[value(name = "read_uncommitted")]
    ReadUncommitted,
}

impl From<IsolationArg> for Isolation {
    fn from(isolation: IsolationArg) -> Isolation {
        match isolation {
            IsolationArg::ReadCommitted => Isolation::ReadCommitted,
            IsolationArg::ReadUncommitted => Isolation::ReadUncommitted,
        }
    }
}

/// `--from` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first stored record.
    Earliest,
    /// Only new records.
    Latest,
    /// This offset.
    Offset(i64),
}

/// A time as ms since the Unix epoch, from digits or RFC 3339
/// (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`).
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("expected RFC 3339 (2026-12-03T05:00:00Z) or milliseconds, got \"{text}\"")
    })
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let number = |part: &str| part.parse::<i64>().ok();
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let (year, month, day) = (
        number(date_parts.next()?)?,
        number(date_parts.next()?)?,
        number(date_parts.next()?)?,
    );
    let zone_at = rest.find(['Z', 'z', '+', '-'])?;
    let (clock, zone) = rest.split_at(zone_at);
    let mut clock_parts = clock.splitn(3, ':');
    let (hour, minute) = (number(clock_parts.next()?)?, number(clock_parts.next()?)?);
    let seconds = clock_parts.next()?;
    let (second, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let second = number(second)?;
    let millis = format!("{fraction:0<3}")
        .get(..3)
        .and_then(number)
        .unwrap_or(0);
    let offset_minutes = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = zone[1..].split_once(':')?;
            sign * (number(hours)? * 60 + number(minutes)?)
        }
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..61).contains(&second);
    if !valid {
        return None;
    }
    // Days from the civil date (the proleptic Gregorian calendar) to 1970-01-01.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let since_epoch = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(since_epoch * 1_000 + millis)
}

fn parse_from(text: &str) -> Result<StartFrom, String> {
    match text {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        number => match number.parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(StartFrom::Offset(offset)),
            _ => Err(format!(
                "expected earliest, latest or a non-negative offset, got \"{number}\""
            )),
        },
    }
}

/// `--to` of `group reset-offsets`: a bare integer is an offset; a time is RFC 3339 or
/// milliseconds with an `ms` suffix (so it cannot be mistaken for an offset).
fn parse_reset_to(text: &str) -> Result<ResetSpec, String> {
    match text {
        "earliest" => return Ok(ResetSpec::Earliest),
        "latest" => return Ok(ResetSpec::Latest),
        _ => {}
    }
    if let Ok(offset) = text.parse::<i64>() {
        return if offset >= 0 {
            Ok(ResetSpec::Offset(offset))
        } else {
            Err(format!("offset {offset} is negative"))
        };
    }
    if let Some(ms) = text.strip_suffix("ms") {
        if let Ok(ms) = ms.parse::<i64>() {
            return Ok(ResetSpec::Timestamp(ms));
        }
    }
    parse_rfc3339(text).map(ResetSpec::Timestamp).ok_or_else(|| {
        format!(
            "expected earliest, latest, an offset, or a time (RFC 3339 such as 2026-12-03T05:00:00Z, or milliseconds such as 1700000000000ms), got \"{text}\""
        )
    })
}

fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got \"{text}\"")),
    }
}

/// Exit code of `wharf publish` when every message was answered but some were not stored
/// (unroutable or refused): distinct from 1, where the command stopped early and the fate of
/// the unanswered messages is unknown.
pub const EXIT_NOT_STORED: u8 = 3;

/// A failure of a command: the client's typed error, or the terminal's.
#[derive(Debug)]
pub enum CliError {
    /// The client failed.
    Client(wharf_client::Error),
    /// Reading standard input failed.
    Stdin(std::io::Error),
    /// Writing standard output failed.
    Stdout(std::io::Error),
    /// Ctrl-C (SIGINT) or SIGTERM ended the command early.
    Interrupted,
    /// `produce --transactional-id` did not commit: `reason` says why and whether the abort
    /// itself went through.
    TransactionAborted {
        /// The transactional id.
        transactional_id: String,
        /// What went wrong.
        reason: String,
    },
    /// `publish` got every answer, but some messages were stored in no queue.
    NotStored {
        /// What became of the messages.
        counts: publish::Counts,
        /// How long the command ran.
        seconds: f64,
    },
    /// `group describe` of a group with no members and no committed offsets.
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// The broker cancelled `subscribe`'s consumer (an ack timeout, the queue deleted).
    SubscriptionCancelled {
        /// The queue.
        queue: String,
        /// Why, as a wire code.
        code: wharf_client::ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// A file named on the command line cannot be read (`--ca`, `--cert`, `--key`).
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `perf amqp` failed: the AMQP server refused, closed or went silent.
    Amqp(String),
    /// `cluster rebalance` did not see its moves finish in time.
    Unfinished {
        /// Moves still under way.
        moves_left: usize,
        /// How long it waited.
        timeout_ms: u64,
    },
    /// A line of standard input cannot be read as a record (`produce --encoding`).
    BadInput {
        /// The line, counted from 1.
        line_number: u64,
        /// What is wrong with it.
        reason: String,
    },
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotStored { .. } => EXIT_NOT_STORED,
            _ => 1,
        }
    }

    /// A stable snake_case name of the failure for `--json` errors: the client error's
    /// [`wharf_client::Error::kind`], or the CLI's own.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Client(error) => error.kind(),
            CliError::Stdin(_) => "stdin",
            CliError::Stdout(_) => "stdout",
            CliError::Interrupted => "interrupted",
            CliError::TransactionAborted { .. } => "transaction_aborted",
            CliError::NotStored { .. } => "not_stored",
            CliError::UnknownGroup { .. } => "unknown_group",
            CliError::SubscriptionCancelled { .. } => "subscription_cancelled",
            CliError::BadInput { .. } => "bad_input",
            CliError::File { .. } => "file",
            CliError::Amqp(_) => "amqp",
            CliError::Unfinished { .. } => "unfinished",
        }
    }

    /// The wire error code the broker answered with, if any.
    pub fn code(&self) -> Option<wharf_client::ErrorCode> {
        match self {
            CliError::Client(error) => error.code(),
            CliError::SubscriptionCancelled { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The `--json` form of an error: `{"error": MESSAGE, "kind": KIND}`, with `"code"` (the wire
/// code's name in snake_case) when the broker answered with one.
pub fn error_json(message: &str, kind: &str, code: Option<wharf_client::ErrorCode>) -> String {
    let mut object = serde_json::Map::new();
    object.insert("error".into(), message.into());
    object.insert("kind".into(), kind.into());
    if let Some(code) = code {
        object.insert("code".into(), snake_case(&format!("{code:?}")).into());
    }
    serde_json::Value::Object(object).to_string()
}

/// `TopicAlreadyExists` → `topic_already_exists`.
fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, character) in name.chars().enumerate() {
        if character.is_ascii_uppercase() {
            if index > 0 {
                snake.push('_');
            }
            snake.push(character.to_ascii_lowercase());
        } else {
            snake.push(character);
        }
    }
    snake
}

/// Reports a command line clap refused. Help and version go out as clap prints them; a real
/// usage error is one JSON line on stderr when `--json` is among the arguments (clap had no
/// chance to parse it), else clap's text. Returns the exit code (2 for usage errors).
fn usage_error(error: &clap::Error) -> ExitCode {
    let json_asked = std::env::args_os()
        .skip(1)
        .take_while(|argument| argument != "--")
        .any(|argument| argument == "--json");
    if !error.use_stderr() || !json_asked {
        let _ = error.print();
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    }
    let rendered = error.render().to_string();
    let first_line = rendered.lines().next().unwrap_or_default();
    let message = first_line.strip_prefix("error: ").unwrap_or(first_line);
    eprintln!("{}", error_json(message, "usage", None));
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

impl fmt::Display for CliError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Client(error) => write!(formatter, "{error}"),
            CliError::Stdin(error) => write!(formatter, "cannot read standard input: {error}"),
            CliError::Stdout(error) => write!(formatter, "cannot write standard output: {error}"),
            CliError::Interrupted => formatter.write_str("interrupted"),
            CliError::TransactionAborted {
                transactional_id,
                reason,
            } => write!(
                formatter,
                "transaction {transactional_id} aborted: {reason}"
            ),
            CliError::NotStored { counts, seconds } => {
                formatter.write_str(&counts.summary(*seconds))
            }
            CliError::UnknownGroup { group } => write!(
                formatter,
                "unknown group \"{group}\": it has no members and no committed offsets (wharf group list shows the groups)"
            ),
            CliError::SubscriptionCancelled {
                queue,
                code,
                message,
            } => match code {
                wharf_client::ErrorCode::AckTimeout => write!(
                    formatter,
                    "the broker cancelled the subscription to queue \"{queue}\" for an ack timeout: a delivery stayed unacknowledged longer than the queue's ack-timeout-ms and went back to the queue; to give the reader more time, subscribe with a smaller --prefetch (deliveries wait in line to be printed) or re-declare the queue with a larger --ack-timeout-ms"
                ),
                wharf_client::ErrorCode::UnknownQueue => write!(
                    formatter,
                    "the broker cancelled the subscription to queue \"{queue}\": the queue was deleted"
                ),
                _ => write!(
                    formatter,
                    "the broker cancelled the subscription to queue \"{queue}\": {message}"
                ),
            },
            CliError::BadInput {
                line_number,
                reason,
            } => write!(formatter, "line {line_number} of standard input: {reason}"),
            CliError::File { path, source } => {
                write!(formatter, "cannot read {}: {source}", path.display())
            }
            CliError::Amqp(message) => write!(formatter, "AMQP: {message}"),
            CliError::Unfinished {
                moves_left,
                timeout_ms,
            } => write!(
                formatter,
                "{moves_left} replica move(s) still under way after {timeout_ms} ms; they go on \
                 (wharf cluster rebalance --no-wait lists them)"
            ),
        }
    }
}

impl std::error::Error for CliError {}

impl From<wharf_client::Error> for CliError {
    fn from(error: wharf_client::Error) -> Self {
        CliError::Client(error)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A blocked stdin read must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if json => {
            eprintln!(
                "{}",
                error_json(&error.to_string(), error.kind(), error.code())
            );
            ExitCode::from(error.exit_code())
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    // One attempt to reach the broker: a command line should say at once that the broker is
    // down. Once connected, broker restarts are still ridden out (reconnect timeout).
    let mut config = ClientConfig::new(cli.broker.clone())
        .client_id("wharf-cli")
        .bootstrap_timeout(Duration::ZERO);
    if cli.tls {
        config = config.tls(tls_settings(&cli)?);
    }
    if let Some(name) = &cli.user {
        config = config.credentials(login_credentials(name, &cli)?);
    }
    if let Command::Perf {
        command: perf::PerfCommand::Amqp(args),
    } = &cli.command
    {
        // Speaks AMQP to its own --url: no native connection.
        return perf::print(&perf_amqp::run(args).await?);
    }
    let client = Client::connect(config).await?;
    match cli.command {
        Command::Topic { command } => admin::topic(&client, command, cli.json).await,
        Command::Group { command } => admin::group(&client, command, cli.json).await,
        Command::Produce(args) => produce::run(&client, args, cli.json).await,
        Command::Consume(args) => consume::run(&client, args, cli.json).await,
        Command::Exchange { command } => queue::exchange(&client, command, cli.json).await,
        Command::Queue { command } => queue::queue(&client, command, cli.json).await,
        Command::Publish(args) => publish::run(&client, args, cli.json).await,
        Command::Subscribe(args) => subscribe::run(&client, args, cli.json).await,
        Command::Perf { command } => perf::run(&client, command).await,
        Command::User { command } => {
            user::run(&client, command, cli.password_stdin, cli.json).await
        }
        Command::Acl { command } => acl::run(&client, command, cli.json).await,
        Command::Cluster { command } => cluster::run(&client, command, cli.json).await,
    }
}

/// The login password: `WHARF_PASSWORD`, else the first line of standard input when
/// `--password-stdin` belongs to the login (not to `wharf user create|passwd`, whose
/// `--password-stdin` is the new password).
fn login_credentials(name: &str, cli: &Cli) -> Result<wharf_client::Credentials, CliError> {
    let password = match std::env::var("WHARF_PASSWORD") {
        Ok(password) => password,
        Err(_) => match &cli.command {
            Command::User { command } if user::reads_new_password(command) => {
                return Err(CliError::BadInput {
                    line_number: 1,
                    reason: "standard input holds the new password: give the login's password in WHARF_PASSWORD".to_string(),
                })
            }
            _ if cli.password_stdin => user::read_password()?,
            _ => {
                return Err(CliError::BadInput {
                    line_number: 1,
                    reason: format!("--user {name} needs a password: set WHARF_PASSWORD or pass --password-stdin"),
                })
            }
        },
    };
    Ok(wharf_client::Credentials::new(
        name,
        password,
        cli.sasl_mechanism,
    ))
}

/// The TLS settings of `--ca`, `--cert` and `--key`, read from their files.
fn tls_settings(cli: &Cli) -> Result<Tls, CliError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| CliError::File {
            path: path.clone(),
            source,
        })
    };
    let ca = cli.ca.as_ref().map(read).transpose()?;
    let cert = cli.cert.as_ref().map(read).transpose()?;
    let key = cli.key.as_ref().map(read).transpose()?;
    let client_certificate = match (&cert, &key) {
        (Some(cert_pem), Some(key_pem)) => Some(ClientCertificate { cert_pem, key_pem }),
        _ => None,
    };
    Ok(Tls::new(ca.as_deref(), client_certificate)?)
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wharf").chain(args.iter().copied()))
    }

    #[test]
    fn topic_create_takes_partitions_and_configs() {
        let cli = parse(&[
            "--broker",
            "10.0.0.1:9000",
            "topic",
            "create",
            "orders",
            "--partitions",
            "6",
            "--config",
            "retention.ms=1000",
            "--config",
            "segment.bytes=1048576",
        ])
        .unwrap();
        assert_eq!(cli.broker, "10.0.0.1:9000");
        let Command::Topic {
            command:
                TopicCommand::Create {
                    name,
                    partitions,
                    configs,
                    replication_factor,
                },
        } = cli.command
        else {
            panic!("not topic create");
        };
        assert_eq!(name, "orders");
        assert_eq!(partitions, 6);
        assert_eq!(configs[0], ("retention.ms".to_string(), "1000".to_string()));
        assert_eq!(configs.len(), 2);
        assert_eq!(replication_factor, None);
    }

    #[test]
    fn reset_to_tells_offsets_from_times() {
        assert_eq!(parse_reset_to("earliest"), Ok(ResetSpec::Earliest));
        assert_eq!(parse_reset_to("latest"), Ok(ResetSpec::Latest));
        assert_eq!(parse_reset_to("42"), Ok(ResetSpec::Offset(42)));
        assert_eq!(
            parse_reset_to("1700000000000ms"),
            Ok(ResetSpec::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse_reset_to("1970-01-01T00:00:01Z"),
            Ok(ResetSpec::Timestamp(1000))
        );
        assert!(parse_reset_to("-1").is_err());
        assert!(parse_reset_to("yesterday").is_err());
        let cli = parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "earliest",
        ])
        .unwrap();
        let Command::Group {
            command: GroupCommand::ResetOffsets { execute, .. },
        } = cli.command
        else {
            panic!("not group reset-offsets");
        };
        assert!(!execute, "a dry run unless --execute");
    }

    #[test]
    fn topic_create_requires_partitions() {
        let error = parse(&["topic", "create", "orders"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn bad_config_is_a_usage_error() {
        let error = parse(&["topic", "create", "t", "--partitions", "1", "--config", "x"]);
        assert_eq!(error.unwrap_err().kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn produce_flags() {
        let cli = parse(&[
            "produce",
            "orders",
            "--key-separator",
            ":",
            "--acks",
            "leader",
            "--partition",
            "2",
        ])
        .unwrap();
        let Command::Produce(args) = cli.command else {
            panic!("not produce");
        };
        assert_eq!(args.key_separator.as_deref(), Some(":"));
        assert_eq!(args.acks, AcksArg::Leader);
        assert_eq!(args.partition, Some(2));
    }

    #[test]
    fn produce_defaults_to_acks_all() {
        let Command::Produce(args) = parse(&["produce", "t"]).unwrap().command else {
            panic!("not produce");
        };
        assert_eq!(args.acks, AcksArg::All);
        assert_eq!(Acks::from(args.acks), Acks::All);
        assert_eq!(args.idempotence(), Idempotence::Enabled);
    }

    #[test]
    fn produce_takes_a_transactional_id() {
        let Command::Produce(args) = parse(&["produce", "t", "--transactional-id", "load-1"])
            .unwrap()
            .command
        else {
            panic!("not produce");
        };
        assert_eq!(args.transactional_id.as_deref(), Some("load-1"));
        let Command::Produce(args) = parse(&["produce", "t"]).unwrap().command else {
            panic!("not produce");
        };
        assert_eq!(args.transactional_id, None);
    }

    fn produce_idempotence(args: &[&str]) -> Idempotence {
        let all: Vec<&str> = ["produce", "t"].iter().chain(args).copied().collect();
        let Command::Produce(args) = parse(&all).unwrap().command else {
            panic!("not produce");
        };
        args.idempotence()
    }

    #[test]
    fn produce_idempotence_flags() {
        assert_eq!(produce_idempotence(&["--idempotent"]), Idempotence::Enabled);
        assert_eq!(
            produce_idempotence(&["--no-idempotent"]),
            Idempotence::Disabled
        );
        // The last of the two flags wins.
        assert_eq!(
            produce_idempotence(&["--idempotent", "--no-idempotent"]),
            Idempotence::Disabled
        );
        assert_eq!(
            produce_idempotence(&["--no-idempotent", "--idempotent"]),
            Idempotence::Enabled
        );
        // Weaker acks imply no idempotence, unless it is asked for (then the producer refuses).
        assert_eq!(
            produce_idempotence(&["--acks", "leader"]),
            Idempotence::Disabled
        );
        assert_eq!(
            produce_idempotence(&["--acks", "none"]),
            Idempotence::Disabled
        );
        assert_eq!(
            produce_idempotence(&["--acks", "leader", "--idempotent"]),
            Idempotence::Enabled
        );
    }

    #[test]
    fn consume_flags() {
        let cli = parse(&[
            "--json",
            "consume",
            "orders",
            "--group",
            "billing",
            "--from",
            "earliest",
            "--max-messages",
            "10",
            "--timeout-ms",
            "2000",
            "--format",
            "json",
            "--isolation",
            "read_committed",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Consume(args) = cli.command else {
            panic!("not consume");
        };
        assert_eq!(args.group.as_deref(), Some("billing"));
        assert_eq!(args.from, Some(StartFrom::Earliest));
        assert_eq!(args.max_messages, Some(10));
        assert_eq!(args.timeout_ms, Some(2000));
        assert_eq!(args.format, Some(consume::ConsumeFormat::Json));
        assert_eq!(args.isolation, IsolationArg::ReadCommitted);
    }

    #[test]
    fn consume_from_accepts_an_offset_and_rejects_garbage() {
        let Command::Consume(args) = parse(&["consume", "t", "--from", "42", "--partition", "1"])
            .unwrap()
            .command
        else {
            panic!("not consume");
        };
        assert_eq!(args.from, Some(StartFrom::Offset(42)));
        assert_eq!(args.partition, Some(1));
        let error = parse(&["consume", "t", "--from", "yesterday"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(parse(&["consume", "t", "--from", "-3"]).is_err());
        let Command::Consume(args) = parse(&[
            "consume",
            "t",
            "--from-time",
            "2026-12-03T05:00:00.250+01:00",
        ])
        .unwrap()
        .command
        else {
            panic!("consume")
        };
        assert_eq!(args.from_time, Some(1_796_270_400_250));
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert!(parse_time("yesterday").is_err());
        assert!(parse(&["consume", "t", "--from", "1", "--from-time", "0"]).is_err());
    }

    #[test]
    fn bad_enum_values_are_usage_errors() {
        assert!(parse(&["produce", "t", "--acks", "some"]).is_err());
        assert!(parse(&["consume", "t", "--format", "xml"]).is_err());
        assert!(parse(&["consume", "t", "--isolation", "read-committed"]).is_err());
    }

    #[test]
    fn group_commands() {
        let cli = parse(&["group", "describe", "billing"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Group {
                command: GroupCommand::Describe { ref group }
            } if group == "billing"
        ));
        assert!(matches!(
            parse(&["group", "list"]).unwrap().command,
            Command::Group {
                command: GroupCommand::List
            }
        ));
    }

    #[test]
    fn broker_defaults_to_local_listener() {
        // WHARF_BROKER may be set in the environment running the tests.
        if std::env::var_os("WHARF_BROKER").is_none() {
            assert_eq!(parse(&["topic", "list"]).unwrap().broker, "127.0.0.1:7420");
        }
    }

    #[test]
    fn queue_commands_follow_the_contract() {
        let cli = parse(&[
            "queue",
            "declare",
            "orders",
            "--durable",
            "--max-length",
            "5",
            "--overflow",
            "reject-publish",
            "--dead-letter-exchange",
            "dlx",
        ])
        .unwrap();
        let Command::Queue {
            command: queue::QueueCommand::Declare(args),
        } = cli.command
        else {
            panic!("not queue declare");
        };
        assert!(args.durable);
        assert_eq!(args.max_length, Some(5));
        assert_eq!(args.overflow, Some(queue::OverflowArg::RejectPublish));
        assert!(parse(&["queue", "bind", "q", "x", "--routing-key", "a.*"]).is_ok());
        assert!(parse(&["queue", "bind", "q", "x", "--header", "a=1", "--match", "any"]).is_ok());
        // --match needs headers; a routing key and headers exclude each other.
        assert!(parse(&["queue", "bind", "q", "x", "--match", "any"]).is_err());
        assert!(parse(&[
            "queue",
            "unbind",
            "q",
            "x",
            "--routing-key",
            "k",
            "--header",
            "a=1"
        ])
        .is_err());
        assert!(parse(&["exchange", "declare", "x", "--type", "topic", "--transient"]).is_ok());
        assert!(parse(&["exchange", "declare", "x", "--type", "direkt"]).is_err());
    }

    #[test]
    fn publish_and_subscribe_flags() {
        let cli = parse(&[
            "publish",
            "events",
            "a.b",
            "--confirm",
            "--mandatory",
            "--header",
            "k=v",
            "--ttl-ms",
            "100",
            "--delay-ms",
            "500",
        ])
        .unwrap();
        let Command::Publish(args) = cli.command else {
            panic!("not publish");
        };
        assert!(args.confirm && args.mandatory);
        assert_eq!((args.ttl_ms, args.delay_ms), (Some(100), Some(500)));
        let cli = parse(&[
            "subscribe",
            "orders",
            "--ack",
            "auto",
            "--reject",
            "--prefetch",
            "5",
        ])
        .unwrap();
        let Command::Subscribe(args) = cli.command else {
            panic!("not subscribe");
        };
        assert_eq!(args.ack, subscribe::AckArg::Auto);
        assert!(args.reject);
        assert_eq!(args.prefetch, 5);
        let Command::Subscribe(args) = parse(&["subscribe", "q"]).unwrap().command else {
            panic!("not subscribe");
        };
        assert_eq!(args.ack, subscribe::AckArg::Manual, "manual is the default");
    }

    #[test]
    fn json_errors_carry_message_kind_and_wire_code() {
        let error = CliError::Client(wharf_client::Error::server(
            wharf_client::ErrorCode::TopicAlreadyExists,
            Some("topic \"a\" already exists".to_string()),
        ));
        let parsed: serde_json::Value =
            serde_json::from_str(&error_json(&error.to_string(), error.kind(), error.code()))
                .unwrap();
        assert_eq!(parsed["error"], "topic \"a\" already exists");
        assert_eq!(parsed["kind"], "server");
        assert_eq!(parsed["code"], "topic_already_exists");
        let stdin = CliError::Stdin(std::io::Error::other("gone"));
        let parsed: serde_json::Value =
            serde_json::from_str(&error_json(&stdin.to_string(), stdin.kind(), stdin.code()))
                .unwrap();
        assert_eq!(parsed["kind"], "stdin");
        assert!(parsed.get("code").is_none());
        assert_eq!(
            snake_case("UnknownTopicOrPartition"),
            "unknown_topic_or_partition"
        );
    }

    #[test]
    fn unknown_subcommand_is_a_usage_error() {
        let error = parse(&["topics", "list"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidSubcommand);
    }
}
