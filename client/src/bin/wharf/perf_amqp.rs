//! `wharf perf amqp`: RabbitMQ PerfTest's publish-then-consume method over AMQP 0-9-1, so
//! one client measures wharfd's AMQP listener and RabbitMQ itself (issue #16).
//!
//! The publisher declares the queue afresh (deleted first, then durable, with
//! `x-queue-type`), turns on publisher confirms and publishes N persistent messages
//! (delivery mode 2) through the default exchange, keeping at most `--confirm-window`
//! unconfirmed; the frames of one message are encoded once and written as many times as
//! the window allows, so the client does no per-message encoding. Then a consumer on a new
//! connection takes them back with basic.consume at `--prefetch`, acknowledging
//! cumulatively (`multiple`) every `--ack-every` deliveries. Frames are encoded and parsed
//! with amq-protocol, the crate wharfd's AMQP listener uses.
//!
//! The summary has the fields of `perf queue`: the publish phase's rate, then `consume_*`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::perf::{consume_fields, Summary};
use crate::CliError;

/// A consumer or a confirm wait that hears nothing for this long gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most messages written in one system call.
const WRITE_BATCH_MAX: u64 = 256;
/// The channel every command uses.
const CHANNEL: u16 = 1;
/// The frame size the client offers when the server does not limit it.
const FRAME_MAX: u32 = 131_072;

/// The queue type `perf amqp` declares (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// RabbitMQ's replicated Raft queue (wharfd: the same durable queue).
    Quorum,
    /// RabbitMQ's classic queue (wharfd: the same durable queue).
    Classic,
}

/// `wharf perf amqp`.
#[derive(Debug, clap::Args)]
pub struct PerfAmqpArgs {
    /// The AMQP server: `amqp://USER:PASSWORD@HOST:PORT/VHOST` (`%2f` is the vhost `/`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub url: String,
    /// The queue (deleted and declared again, durable).
    #[arg(long)]
    pub queue: String,
    /// Messages to publish and then consume.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Bytes of each message body.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub size: usize,
    /// `x-queue-type` of the declared queue.
    #[arg(long, value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,
    /// Most unconfirmed publishes in flight.
    #[arg(long, value_name = "W", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub confirm_window: u64,
    /// The consumer's prefetch count (basic.qos).
    #[arg(long, value_name = "P", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// The consumer acknowledges (cumulatively) every this many deliveries.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_every: u64,
    /// The publish phase stops after this long even if not every message is sent; the
    /// consumer then reads what was confirmed.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    pub max_seconds: f64,
}

/// Runs `perf amqp`.
///
/// # Errors
/// A connection that fails or closes, a refused method, a nack, a silent server.
pub async fn run(args: &PerfAmqpArgs) -> Result<Summary, CliError> {
    let target = Target::parse(&args.url)?;
    let (confirmed, publish_seconds) = publish(&target, args).await?;
    let (consumed, consume_seconds) = consume(&target, args, confirmed).await?;
    Ok(Summary {
        workload: "amqp",
        messages: confirmed,
        bytes: confirmed * args.size as u64,
        seconds: publish_seconds,
        latency: None,
        extra: consume_fields(consumed, consume_seconds, args.size),
    })
}

fn failed(message: impl Into<String>) -> CliError {
    CliError::Amqp(message.into())
}

/// Where to connect and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    address: String,
    user: String,
    password: String,
    vhost: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, CliError> {
        let bad = || {
            failed(format!(
                "--url {url:?} is not amqp://USER:PASSWORD@HOST:PORT/VHOST"
            ))
        };
        let rest = url.strip_prefix("amqp://").ok_or_else(bad)?;
        let (login, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
        let (user, password) = login.split_once(':').ok_or_else(bad)?;
        let (address, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
        let address = if address.contains(':') {
            address.to_string()
        } else {
            format!("{address}:5672")
        };
        let vhost = match vhost {
            "" => "/".to_string(),
            vhost => vhost.replace("%2f", "/").replace("%2F", "/"),
        };
        Ok(Target {
            address,
            user: user.to_string(),
            password: password.to_string(),
            vhost,
        })
    }
}

/// Appends `frame`'s bytes to `out`.
fn encode(frame: &AMQPFrame, out: &mut Vec<u8>) -> Result<(), CliError> {
    let context = gen_frame(frame)(WriteContext::from(Vec::new()))
        .map_err(|error| failed(format!("encoding a frame: {error}")))?;
    out.extend_from_slice(&context.into_inner().0);
    Ok(())
}

fn method(class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(CHANNEL, class)
}

/// Cuts the next whole frame off `buffer` and parses it; `None` when more bytes are needed.
fn cut_frame(buffer: &mut BytesMut) -> Result<Option<AMQPFrame>, CliError> {
    if buffer.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]) as usize;
    if buffer.len() < 8 + size {
        return Ok(None);
    }
    let bytes = buffer.split_to(8 + size);
    match amq_protocol::frame::parsing::parse_frame(&bytes[..]) {
        Ok((_, frame)) => Ok(Some(frame)),
        Err(error) => Err(failed(format!(
            "a frame from the server does not parse: {error}"
        ))),
    }
}

/// Free bytes the read buffer has before each read from the server.
const READ_BYTES_MIN: usize = 64 * 1024;

/// Reads until a whole frame is in `buffer`, then returns it.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<AMQPFrame, CliError> {
    loop {
        if let Some(frame) = cut_frame(buffer)? {
            return Ok(frame);
        }
        // Room for a large read: a full buffer would otherwise be refilled 64 bytes at a
        // time (read_buf's minimum), one system call each.
        buffer.reserve(READ_BYTES_MIN);
        let read = tokio::time::timeout(IDLE_TIMEOUT, reader.read_buf(buffer))
            .await
            .map_err(|_| failed(format!("the server sent nothing for {IDLE_TIMEOUT:?}")))?
            .map_err(|error| failed(format!("reading from the server: {error}")))?;
        if read == 0 {
            return Err(failed("the server closed the connection"));
        }
    }
}

/// The error a connection.close or channel.close from the server is.
fn closed_by_server(class: &AMQPClass) -> Option<CliError> {
    match class {
        AMQPClass::Connection(connection::AMQPMethod::Close(close)) => Some(failed(format!(
            "the server closed the connection: {} {}",
            close.reply_code, close.reply_text
        ))),
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => Some(failed(format!(
            "the server closed the channel: {} {}",
            close.reply_code, close.reply_text
        ))),
        _ => None,
    }
}

/// An open connection with channel 1 open.
struct Session {
    stream: TcpStream,
    buffer: BytesMut,
    frame_max: u32,
}

impl Session {
    async fn open(target: &Target) -> Result<Session, CliError> {
        let stream = TcpStream::connect(&target.address)
            .await
            .map_err(|error| failed(format!("cannot connect to {}: {error}", target.address)))?;
        let _ = stream.set_nodelay(true);
        let mut session = Session {
            stream,
            buffer: BytesMut::with_capacity(64 * 1024),
            frame_max: FRAME_MAX,
        };
        session.write(b"AMQP\x00\x00\x09\x01").await?;
        match session.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            other => return Err(failed(format!("expected connection.start, got {other:?}"))),
        }
        let mut response = Vec::new();
        response.push(0);
        response.extend_from_slice(target.user.as_bytes());
        response.push(0);
        response.extend_from_slice(target.password.as_bytes());
        let mut capabilities = FieldTable::default();
        capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
        let mut properties = FieldTable::default();
        properties.insert(
            "product".into(),
            AMQPValue::LongString("wharf perf amqp".into()),
        );
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        session
            .send_on(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                    client_properties: properties,
                    mechanism: ShortString::from("PLAIN"),
                    response: LongString::from(response),
                    locale: ShortString::from("en_US"),
                })),
            )
            .await?;
        let tune = match session.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => {
                return Err(failed(format!(
                    "expected connection.tune (is the login right?), got {other:?}"
                )))
            }
        };
        session.frame_max = match tune.frame_max {
            0 => FRAME_MAX,
            offered => offered.min(FRAME_MAX),
        };
        session
            .send_on(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: tune.channel_max,
                    frame_max: session.frame_max,
                    heartbeat: 0,
                })),
            )
            .await?;
        session
            .send_on(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: ShortString::from(target.vhost.clone()),
                })),
            )
            .await?;
        match session.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => {
                return Err(failed(format!(
                    "expected connection.open-ok, got {other:?}"
                )))
            }
        }
        session
            .call(AMQPClass::Channel(channel::AMQPMethod::Open(
                channel::Open {},
            )))
            .await?;
        Ok(session)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|error| failed(format!("writing to the server: {error}")))
    }

    async fn send_on(&mut self, channel: u16, class: AMQPClass) -> Result<(), CliError> {
        let mut out = Vec::new();
        encode(&AMQPFrame::Method(channel, class), &mut out)?;
        self.write(&out).await
    }

    /// The next method frame (heartbeats and content frames are skipped).
    async fn next_method(&mut self) -> Result<AMQPClass, CliError> {
        loop {
            if let AMQPFrame::Method(_, class) =
                read_frame(&mut self.stream, &mut self.buffer).await?
            {
                if let Some(error) = closed_by_server(&class) {
                    return Err(error);
                }
                return Ok(class);
            }
        }
    }

    /// Sends a synchronous method on channel 1 and returns the answer.
    async fn call(&mut self, class: AMQPClass) -> Result<AMQPClass, CliError> {
        self.send_on(CHANNEL, class).await?;
        self.next_method().await
    }

    /// Closes the connection politely (waits a moment for close-ok).
    /// Puts a connection split for reading and writing back together and closes it.
    async fn close_halves(
        reader: tokio::net::tcp::OwnedReadHalf,
        writer: tokio::net::tcp::OwnedWriteHalf,
        buffer: BytesMut,
        frame_max: u32,
    ) -> Result<(), CliError> {
        let stream = reader
            .reunite(writer)
            .map_err(|error| failed(format!("rejoining the connection: {error}")))?;
        Session {
            stream,
            buffer,
            frame_max,
        }
        .close()
        .await;
        Ok(())
    }

    async fn close(mut self) {
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: ShortString::from("bye"),
            class_id: 0,
            method_id: 0,
        }));
        if self.send_on(0, close).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.next_method()).await;
        }
    }
}

/// Which delivery tags the server has confirmed.
#[derive(Debug, Default)]
struct Confirms {
    /// Every tag up to this one is confirmed.
    through: u64,
    /// Confirmed tags above `through`.
    above: BTreeSet<u64>,
}

impl Confirms {
    fn ack(&mut self, tag: u64, multiple: bool) {
        if multiple {
            self.through = self.through.max(tag);
        } else if tag > self.through {
            self.above.insert(tag);
        }
        while self.above.remove(&(self.through + 1)) {
            self.through += 1;
        }
        let through = self.through;
        self.above.retain(|tag| *tag > through);
    }

    fn count(&self) -> u64 {
        self.through + self.above.len() as u64
    }
}

async fn publish(target: &Target, args: &PerfAmqpArgs) -> Result<(u64, f64), CliError> {
    let mut session = Session::open(target).await?;
    session
        .call(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: ShortString::from(args.queue.clone()),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })))
        .await?;
    let mut arguments = FieldTable::default();
    let kind = match args.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    session
        .call(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: ShortString::from(args.queue.clone()),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            },
        )))
        .await?;
    session
        .call(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))
        .await?;

    // One message's frames, written as many times as the window allows.
    let body = vec![b'x'; args.size];
    let mut message = Vec::new();
    encode(
        &method(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: ShortString::from(""),
                routing_key: ShortString::from(args.queue.clone()),
                mandatory: false,
                immediate: false,
            },
        ))),
        &mut message,
    )?;
    encode(
        &AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: BasicProperties::default().with_delivery_mode(2),
            },
        ),
        &mut message,
    )?;
    let chunk = (session.frame_max as usize).saturating_sub(8).max(1);
    for piece in body.chunks(chunk) {
        encode(&AMQPFrame::Body(CHANNEL, piece.to_vec()), &mut message)?;
    }

    let Session {
        stream,
        mut buffer,
        frame_max,
    } = session;
    let (mut reader, mut writer) = stream.into_split();
    let confirmed = Arc::new(AtomicU64::new(0));
    let goal = Arc::new(AtomicU64::new(u64::MAX));
    let wake = Arc::new(Notify::new());
    let confirms = {
        let (confirmed, goal, wake) = (confirmed.clone(), goal.clone(), wake.clone());
        tokio::spawn(async move {
            let mut tags = Confirms::default();
            while tags.count() < goal.load(Ordering::Acquire) {
                let frame = read_frame(&mut reader, &mut buffer).await;
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(error) => {
                        wake.notify_one();
                        return Err(error);
                    }
                };
                let AMQPFrame::Method(_, class) = frame else {
                    continue;
                };
                match class {
                    AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                        tags.ack(ack.delivery_tag, ack.multiple);
                        confirmed.store(tags.count(), Ordering::Release);
                        wake.notify_one();
                    }
                    AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                        wake.notify_one();
                        return Err(failed(format!(
                            "the server nacked publish {}",
                            nack.delivery_tag
                        )));
                    }
                    other => {
                        if let Some(error) = closed_by_server(&other) {
                            wake.notify_one();
                            return Err(error);
                        }
                    }
                }
            }
            Ok((reader, buffer))
        })
    };

    let started = Instant::now();
    let deadline = Duration::from_secs_f64(args.max_seconds.max(0.0));
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(message.len() * WRITE_BATCH_MAX as usize);
    while sent < args.messages && started.elapsed() < deadline {
        let room = loop {
            let room = args
                .confirm_window
                .saturating_sub(sent - confirmed.load(Ordering::Acquire));
            if room > 0 || confirms.is_finished() {
                break room;
            }
            wake.notified().await;
        };
        if confirms.is_finished() {
            break;
        }
        let count = room.min(WRITE_BATCH_MAX).min(args.messages - sent);
        batch.clear();
        for _ in 0..count {
            batch.extend_from_slice(&message);
        }
        writer
            .write_all(&batch)
            .await
            .map_err(|error| failed(format!("writing to the server: {error}")))?;
        sent += count;
    }
    goal.store(sent, Ordering::Release);
    wake.notify_one();
    let (reader, buffer) = confirms
        .await
        .map_err(|error| failed(format!("the confirm reader failed: {error}")))??;
    let seconds = started.elapsed().as_secs_f64();
    Session::close_halves(reader, writer, buffer, frame_max).await?;
    Ok((sent, seconds))
}

async fn consume(target: &Target, args: &PerfAmqpArgs, count: u64) -> Result<(u64, f64), CliError> {
    let mut session = Session::open(target).await?;
    session
        .call(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: args.prefetch,
            global: false,
        })))
        .await?;
    let started = Instant::now();
    session
        .call(AMQPClass::Basic(basic::AMQPMethod::Consume(
            basic::Consume {
                queue: ShortString::from(args.queue.clone()),
                consumer_tag: ShortString::from("wharf-perf"),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )))
        .await?;
    // As the publisher's confirms, the frames are read and parsed by a task of their own,
    // so parsing overlaps with the acks (a client library's reader does the same).
    let Session {
        stream,
        buffer,
        frame_max,
    } = session;
    let (reader, mut writer) = stream.into_split();
    let (tags, mut delivered) = tokio::sync::mpsc::channel(64);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let reading = tokio::spawn(read_deliveries(reader, buffer, tags, stopped));
    let mut got = 0u64;
    let mut ack = Vec::new();
    let mut failure = None;
    while got < count {
        let run = match delivered.recv().await {
            Some(Ok(run)) => run,
            Some(Err(error)) => {
                failure = Some(error);
                break;
            }
            None => {
                failure = Some(failed("the connection's reader stopped"));
                break;
            }
        };
        for delivery_tag in run {
            got += 1;
            if got.is_multiple_of(args.ack_every) || got == count {
                ack.clear();
                encode(
                    &method(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag,
                        multiple: true,
                    }))),
                    &mut ack,
                )?;
                if let Err(error) = writer.write_all(&ack).await {
                    failure = Some(failed(format!("writing to the server: {error}")));
                    break;
                }
            }
        }
        if failure.is_some() {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    drop(delivered);
    let (reader, buffer) = reading
        .await
        .map_err(|error| failed(format!("the connection's reader failed: {error}")))?;
    if let Some(error) = failure {
        return Err(error);
    }
    Session::close_halves(reader, writer, buffer, frame_max).await?;
    Ok((got, seconds))
}

/// Reads and parses the consumer's frames, sending the delivery tags of each read's
/// deliveries to the consume loop, until told to stop (or the connection fails, which is
/// sent as an error). Gives the read half and the buffer back.
async fn read_deliveries(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut buffer: BytesMut,
    tags: tokio::sync::mpsc::Sender<Result<Vec<u64>, CliError>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (tokio::net::tcp::OwnedReadHalf, BytesMut) {
    loop {
        let mut run = Vec::new();
        let parsed = loop {
            match cut_frame(&mut buffer) {
                Ok(Some(AMQPFrame::Method(
                    _,
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
                ))) => run.push(deliver.delivery_tag),
                Ok(Some(AMQPFrame::Method(_, other))) => {
                    if let Some(error) = closed_by_server(&other) {
                        break Err(error);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if !run.is_empty() && tags.send(Ok(run)).await.is_err() {
            return (reader, buffer);
        }
        if let Err(error) = parsed {
            let _ = tags.send(Err(error)).await;
            return (reader, buffer);
        }
        buffer.reserve(READ_BYTES_MIN);
        let read = tokio::select! {
            _ = &mut stop => return (reader, buffer),
            read = tokio::time::timeout(IDLE_TIMEOUT, reader.read_buf(&mut buffer)) => read,
        };
        let error = match read {
            Ok(Ok(0)) => failed("the server closed the connection"),
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => failed(format!("reading from the server: {error}")),
            Err(_) => failed(format!("the server sent nothing for {IDLE_TIMEOUT:?}")),
        };
        let _ = tags.send(Err(error)).await;
        return (reader, buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_server_the_login_and_the_vhost() {
        let target = Target::parse("amqp://u:p@10.0.0.1:5699/%2f").expect("parses");
        assert_eq!(
            target,
            Target {
                address: "10.0.0.1:5699".into(),
                user: "u".into(),
                password: "p".into(),
                vhost: "/".into(),
            }
        );
        let target = Target::parse("amqp://localhost").expect("defaults");
        assert_eq!(
            (
                target.address.as_str(),
                target.user.as_str(),
                target.vhost.as_str()
            ),
            ("localhost:5672", "guest", "/")
        );
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn confirms_count_single_and_multiple_acks_once_each() {
        let mut confirms = Confirms::default();
        confirms.ack(2, false);
        assert_eq!(confirms.count(), 1);
        confirms.ack(1, false);
        assert_eq!((confirms.through, confirms.count()), (2, 2));
        confirms.ack(5, false);
        confirms.ack(4, true);
        assert_eq!((confirms.through, confirms.count()), (5, 5));
        confirms.ack(3, false);
        assert_eq!(confirms.count(), 5, "a tag already covered counts once");
    }

    #[test]
    fn frames_are_cut_whole_and_parsed() {
        let mut out = Vec::new();
        encode(
            &method(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 7,
                multiple: true,
            }))),
            &mut out,
        )
        .expect("encodes");
        let mut buffer = BytesMut::from(&out[..out.len() - 1]);
        assert!(cut_frame(&mut buffer).expect("no error").is_none());
        buffer.extend_from_slice(&out[out.len() - 1..]);
        match cut_frame(&mut buffer).expect("no error") {
            Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))) => {
                assert_eq!((ack.delivery_tag, ack.multiple), (7, true));
            }
            other => panic!("{other:?}"),
        }
        assert!(buffer.is_empty());
    }
}
