//! The AMQP 0-9-1 front end (`--amqp-listen`, 127.0.0.1:5672), so RabbitMQ's clients (pika,
//! aio-pika, amqplib, lapin, ...) work against `wharfd` unchanged, on the same exchanges and
//! queues the native protocol serves.
//!
//! This file owns the framing: the protocol header, frame sizes against the negotiated frame
//! max, the frame-end octet, and the decoding of method and content-header frames with the
//! `amq-protocol` crate (generated from RabbitMQ's machine-readable spec). Content body frames
//! are cut out of the read buffer without a copy. `amqp/handlers.rs` translates each method to
//! core calls, `amqp/message.rs` maps message properties to the core's neutral headers and back,
//! `amqp/error_code.rs` maps domain errors to AMQP reply codes and RabbitMQ's texts (in one
//! place).
//!
//! Output order: every frame the connection sends goes through the shared push channel, so
//! it leaves in the order it was queued. Replies and publisher confirms are queued through
//! one sequencer task per connection ([`Output`]): a confirm waits for its message to be
//! stored while later replies wait behind it, as RabbitMQ answers a channel's methods in
//! order. Deliveries are pushed by one forwarder task per consumer, which starts only after
//! its `basic.consume-ok` has been queued.
//!
//! **Invariant:** no client input panics the broker: the codec runs under a panic guard, and
//! a frame that cannot be decoded closes the connection with the reply code AMQP prescribes
//! (501 FRAME_ERROR, 502 SYNTAX_ERROR, 505 UNEXPECTED_FRAME, ...).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{connection, AMQPClass};
use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{AuthPolicy, Authentication, Broker, DefaultGuest, Session};
use crate::net::connection::{BoxFuture, Completion, Fatal, Protocol};

mod deliver;
mod error_code;
mod handlers;
mod message;
pub mod methods;
mod nesting;

pub use error_code::Reply;

/// The protocol header a client must open with (AMQP 0-9-1), and what a client that sends
/// another one gets back before the close.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Frame type (1 byte), channel (2), payload size (4).
const FRAME_HEADER_BYTES: usize = 7;
/// The octet every frame ends with.
const FRAME_END: u8 = 0xCE;
/// The frame max the broker offers in connection.tune (RabbitMQ's default): large enough
/// that a 128 KiB body is one frame, small enough to bound per-frame buffering.
pub const FRAME_BYTES_MAX: u32 = 131_072;
/// The smallest frame max a client may ask for (the spec's frame-min-size).
pub const FRAME_BYTES_MIN: u32 = 4096;
/// The most channels a connection may open (RabbitMQ's default channel_max).
pub const CHANNELS_MAX: u16 = 2047;
/// The heartbeat interval the broker proposes, seconds (RabbitMQ's default).
pub const HEARTBEAT_SECONDS: u16 = 60;
/// Replies and confirms queued per connection before the ordered phase waits.
const OUTPUT_QUEUE_MAX: usize = 1024;
/// How long the broker waits for connection.close-ok after it closed a connection.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(3);

/// The AMQP front end: what every connection shares.
#[derive(Debug)]
pub struct Amqp {
    broker: Arc<Broker>,
    /// Largest message body accepted (the native frame limit, so a message published here
    /// can be delivered through every front end).
    body_bytes_max: u32,
    /// Most body bytes one connection may have buffered across its channels (bodies being
    /// received, publishes of open transactions): `amqp_connection_buffer_bytes_max`.
    buffer_bytes_max: u64,
    /// How long a connection may take to log in (AMQP always needs a login, so the timeout
    /// applies whatever the authentication setting).
    auth: AuthPolicy,
    /// Whether RabbitMQ's default `guest`/`guest` login works (from loopback, while no user
    /// exists).
    default_guest: DefaultGuest,
}

impl Amqp {
    /// The front end over `broker`; bodies above `body_bytes_max` are refused, and a
    /// connection buffering more than `buffer_bytes_max` body bytes is closed; `auth` gives
    /// the login timeout; `default_guest` keeps RabbitMQ's default login (`guest`/`guest`
    /// from loopback while no user exists).
    pub fn new(
        broker: Arc<Broker>,
        (body_bytes_max, buffer_bytes_max): (u32, u64),
        auth: AuthPolicy,
        default_guest: bool,
    ) -> Amqp {
        Amqp {
            broker,
            body_bytes_max,
            buffer_bytes_max,
            auth: AuthPolicy {
                mode: Authentication::Required,
                timeout: auth.timeout,
            },
            default_guest: if default_guest {
                DefaultGuest::LoopbackOnly
            } else {
                DefaultGuest::Off
            },
        }
    }
}

/// One decoded frame (or what was wrong with it, when AMQP answers with a close rather
/// than dropping the socket).
#[derive(Debug)]
pub enum AmqpRequest {
    /// The 8-byte protocol header, as expected.
    ProtocolHeader,
    /// A method frame.
    Method(u16, Box<AMQPClass>),
    /// A content header frame: class, body size, properties.
    ContentHeader(u16, Box<amq_protocol::frame::AMQPContentHeader>),
    /// A content body frame (a slice of the read buffer, not a copy).
    Body(u16, Bytes),
    /// A basic.publish with its content header and its one body frame (none for an empty
    /// body), decoded together because all of them were in the read buffer: the usual
    /// shape of a publish, handled as one request instead of three. Anything else (a body
    /// in several frames, frames not yet read, a frame that does not decode) comes frame
    /// by frame.
    Publish(u16, Box<PublishFrames>),
    /// Whole publishes that followed one another in the read buffer ([`decode_run`]), taken
    /// through the connection machinery as one request: each is handled, in order, exactly
    /// as the [`AmqpRequest::Publish`] it would have been alone.
    Publishes(Vec<(u16, Box<PublishFrames>)>),
    /// A heartbeat frame (on channel 0; another channel is a frame error).
    Heartbeat(u16),
    /// A frame whose payload does not decode: the connection is closed with this reply.
    Malformed(Reply),
}

/// The three frames of a publish, decoded.
#[derive(Debug)]
pub struct PublishFrames {
    /// The basic.publish method.
    pub publish: amq_protocol::protocol::basic::Publish,
    /// Its content header.
    pub header: amq_protocol::frame::AMQPContentHeader,
    /// Its body (a slice of the read buffer; empty when the header declared 0 bytes).
    pub body: Bytes,
}

impl PublishFrames {
    /// The frames one by one, as they would have been decoded apart.
    pub(crate) fn into_frames(self, channel: u16) -> [Option<AmqpRequest>; 3] {
        let PublishFrames {
            publish,
            header,
            body,
        } = self;
        let body = (!body.is_empty()).then_some(AmqpRequest::Body(channel, body));
        [
            Some(AmqpRequest::Method(
                channel,
                Box::new(AMQPClass::Basic(
                    amq_protocol::protocol::basic::AMQPMethod::Publish(publish),
                )),
            )),
            Some(AmqpRequest::ContentHeader(channel, Box::new(header))),
            body,
        ]
    }
}

/// What the sequencer task sends, in order, into the connection's push channel.
pub(crate) enum Output {
    /// Encoded frames.
    Frames(BytesMut),
    /// Frames known later (a confirm after the message is stored); `None`: nothing.
    Later(Pin<Box<dyn Future<Output = Option<Later>> + Send>>),
    /// Fired once everything queued before it is in the push channel.
    Signal(oneshot::Sender<()>),
}

/// What a [`Output::Later`] turns out to be.
pub(crate) enum Later {
    /// Encoded frames (a basic.return, a nack).
    Frames(BytesMut),
    /// A publisher confirm (basic.ack) of one delivery tag on a channel: the sequencer
    /// merges a run of them that is ready at once into one basic.ack with `multiple` set,
    /// as RabbitMQ does, so a pipelining publisher reads one frame per round, not one per
    /// message.
    Ack { channel: u16, delivery_tag: u64 },
    /// The answers of a batch of publishes, in order (frames and confirms, never `Many`).
    Many(Vec<Later>),
}

/// A run of consecutive confirms on one channel, not yet sent.
#[derive(Debug, Default)]
struct AckRun {
    /// Channel, first and last delivery tag.
    run: Option<(u16, u64, u64)>,
}

impl AckRun {
    /// Adds a confirm; `false` (and nothing added) when it does not continue the run.
    fn extend(&mut self, channel: u16, delivery_tag: u64) -> bool {
        match &mut self.run {
            None => {
                self.run = Some((channel, delivery_tag, delivery_tag));
                true
            }
            Some((on, _, last)) if *on == channel && delivery_tag == *last + 1 => {
                *last = delivery_tag;
                true
            }
            Some(_) => false,
        }
    }

    /// The basic.ack frame of the run (`multiple` when it holds more than one tag: every
    /// earlier tag of the channel has been confirmed before it, since confirms go out in
    /// publish order), and the run emptied.
    fn take_frame(&mut self) -> Option<BytesMut> {
        let (channel, first, last) = self.run.take()?;
        Some(method_frame(
            channel,
            &AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Ack(
                amq_protocol::protocol::basic::Ack {
                    delivery_tag: last,
                    multiple: last > first,
                },
            )),
        ))
    }
}

/// What one AMQP connection's frames share.
#[derive(Debug)]
pub struct AmqpConnection {
    shared: Arc<Shared>,
}

/// The connection state forwarders and heartbeat tasks also reach.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) session: Arc<Session>,
    pub(crate) peer: SocketAddr,
    pub(crate) body_bytes_max: u32,
    pub(crate) buffer_bytes_max: u64,
    pub(crate) default_guest: DefaultGuest,
    /// Into the sequencer (replies, confirms).
    out: mpsc::Sender<Output>,
    /// Straight into the connection's writer (deliveries, heartbeats).
    pub(crate) push: mpsc::Sender<BytesMut>,
    header_seen: AtomicBool,
    /// The negotiated frame max (the offer until tune-ok).
    pub(crate) frame_max: AtomicU32,
    started: Instant,
    last_read_ms: AtomicU64,
    /// A publish is held by the disk alarm, so the connection reads nothing: its silence is
    /// not a missed heartbeat (RabbitMQ suspends the check for blocked connections too).
    pub(crate) held: AtomicBool,
    closed: watch::Sender<bool>,
    state: Mutex<handlers::State>,
    /// Why the connection is refused at connection.open (530 NOT_ALLOWED, as RabbitMQ
    /// refuses over a connection limit): its address or its user has too many connections.
    pub(crate) refused: Mutex<Option<String>>,
}

impl Shared {
    /// Marks the connection to be refused at connection.open with `reason`.
    pub(crate) fn refuse(&self, reason: String) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(reason);
    }

    /// Why the connection is refused, if it is.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, handlers::State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues frames behind every earlier reply.
    pub(crate) async fn send(&self, frames: BytesMut) {
        let _ = self.out.send(Output::Frames(frames)).await;
    }

    /// Queues frames known later behind every earlier reply.
    pub(crate) async fn send_later(
        &self,
        later: Pin<Box<dyn Future<Output = Option<Later>> + Send>>,
    ) {
        let _ = self.out.send(Output::Later(later)).await;
    }

    /// Resolves once everything queued so far is in the push channel.
    pub(crate) async fn flushed_signal(&self) -> oneshot::Receiver<()> {
        let (signal, flushed) = oneshot::channel();
        let _ = self.out.send(Output::Signal(signal)).await;
        flushed
    }

    /// Ends the connection once everything queued so far has been sent.
    pub(crate) async fn close_after_flush(self: &Arc<Self>) {
        let flushed = self.flushed_signal().await;
        let shared = self.clone();
        tokio::spawn(async move {
            let _ = flushed.await;
            let _ = shared.closed.send(true);
        });
    }

    /// Ends the connection after `delay` unless it ended before (waiting for a close-ok).
    pub(crate) fn close_after(self: &Arc<Self>, delay: Duration) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = shared.closed.send(true);
        });
    }

    /// Starts the heartbeat task: a heartbeat frame every half interval, and the connection
    /// closed when the client sent nothing for two intervals (as RabbitMQ does).
    pub(crate) fn start_heartbeats(self: &Arc<Self>, interval_seconds: u16) {
        if interval_seconds == 0 {
            return;
        }
        let shared = self.clone();
        let interval = Duration::from_secs(u64::from(interval_seconds));
        tokio::spawn(async move {
            let mut closed = shared.closed.subscribe();
            let mut ticker = tokio::time::interval(interval / 2);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = closed.wait_for(|closed| *closed) => return,
                }
                let now_ms = shared.elapsed_ms();
                if shared.held.load(Ordering::Relaxed) {
                    shared.last_read_ms.store(now_ms, Ordering::Relaxed);
                }
                let silent_ms = now_ms.saturating_sub(shared.last_read_ms.load(Ordering::Relaxed));
                if silent_ms >= 2 * interval.as_millis() as u64 {
                    tracing::info!(peer = %shared.peer, silent_ms, "AMQP client missed heartbeats; closing connection");
                    let _ = shared.closed.send(true);
                    return;
                }
                // A full push queue means frames are flowing anyway: skip this beat.
                let _ = shared.push.try_send(BytesMut::from(&HEARTBEAT_FRAME[..]));
            }
        });
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A heartbeat frame on channel 0.
const HEARTBEAT_FRAME: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, FRAME_END];

impl Protocol for Amqp {
    type Request = AmqpRequest;
    type Connection = AmqpConnection;

    fn open(&self, push: mpsc::Sender<BytesMut>, peer: SocketAddr) -> AmqpConnection {
        crate::metrics::AMQP.connection_opened();
        let (out, out_rx) = mpsc::channel(OUTPUT_QUEUE_MAX);
        tokio::spawn(sequence_output(out_rx, push.clone()));
        let (closed, _) = watch::channel(false);
        AmqpConnection {
            shared: Arc::new(Shared {
                broker: self.broker.clone(),
                session: Arc::new(Session::at(peer)),
                peer,
                body_bytes_max: self.body_bytes_max,
                buffer_bytes_max: self.buffer_bytes_max,
                default_guest: self.default_guest,
                out,
                push,
                header_seen: AtomicBool::new(false),
                frame_max: AtomicU32::new(FRAME_BYTES_MAX),
                started: Instant::now(),
                last_read_ms: AtomicU64::new(0),
                held: AtomicBool::new(false),
                closed,
                state: Mutex::new(handlers::State::default()),
                refused: Mutex::new(None),
            }),
        }
    }

    fn open_refused(
        &self,
        push: mpsc::Sender<BytesMut>,
        peer: SocketAddr,
        refusal: &crate::net::limits::Refusal,
    ) -> Option<AmqpConnection> {
        // Served through the handshake, then refused at connection.open in AMQP's terms.
        crate::metrics::AMQP.connection_refused();
        let connection = self.open(push, peer);
        connection.shared.refuse(refusal.to_string());
        Some(connection)
    }

    fn decode(
        &self,
        connection: &AmqpConnection,
        buffer: &mut BytesMut,
    ) -> Result<Option<AmqpRequest>, Fatal> {
        let shared = &connection.shared;
        if !buffer.is_empty() {
            shared
                .last_read_ms
                .store(shared.elapsed_ms(), Ordering::Relaxed);
        }
        if !shared.header_seen.load(Ordering::Relaxed) {
            return decode_protocol_header(shared, buffer);
        }
        decode_run(buffer, shared.frame_max.load(Ordering::Relaxed))
    }

    // The ordered phase yields the completion on purpose: every AMQP reply goes out through
    // the sequencer, so the completion itself answers nothing.
    #[allow(clippy::async_yields_async)]
    fn handle<'a>(
        &'a self,
        connection: &'a AmqpConnection,
        request: AmqpRequest,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let shared = &connection.shared;
            // One observation per method (docs/METRICS.md): basic.publish at the frame that
            // completes its content.
            let observed = match &request {
                AmqpRequest::Method(_, class) => {
                    let (class_id, method_id) =
                        (class.get_amqp_class_id(), class.get_amqp_method_id());
                    let slot = methods::method_slot(class_id, method_id);
                    (slot != methods::PUBLISH_SLOT).then_some(Observed::Method(slot))
                }
                // A whole publish counts once, as basic.publish.
                AmqpRequest::Publish(..) => Some(Observed::Method(methods::PUBLISH_SLOT)),
                AmqpRequest::Publishes(run) => Some(Observed::Publishes(run.len())),
                AmqpRequest::ContentHeader(channel, _) | AmqpRequest::Body(channel, _) => {
                    handlers::awaits_content(shared, *channel)
                        .then_some(Observed::Content(*channel))
                }
                _ => None,
            };
            let started = Instant::now();
            handlers::handle(shared, request).await;
            let api = match observed {
                Some(Observed::Method(slot)) => Some(slot),
                Some(Observed::Publishes(count)) => {
                    // Each publish of the run took its share of the run's time.
                    let each = started.elapsed() / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
                    crate::metrics::AMQP.requests(methods::PUBLISH_SLOT, count as u64, each);
                    None
                }
                Some(Observed::Content(channel)) => {
                    (!handlers::awaits_content(shared, channel)).then_some(methods::PUBLISH_SLOT)
                }
                None => None,
            };
            if let Some(api) = api {
                crate::metrics::AMQP.request(api, None, started.elapsed());
            }
            Box::pin(std::future::ready(None)) as Completion
        })
    }

    fn muted_until(&self, connection: &AmqpConnection) -> Option<tokio::time::Instant> {
        let until = connection.shared.session.throttled_until();
        if until.is_some() {
            // Its silence while muted is not a missed heartbeat.
            let shared = &connection.shared;
            shared
                .last_read_ms
                .store(shared.elapsed_ms(), Ordering::Relaxed);
        }
        until
    }

    fn until_closed<'a>(&'a self, connection: &'a AmqpConnection) -> BoxFuture<'a, ()> {
        let mut closed = connection.shared.closed.subscribe();
        let shared = &connection.shared;
        let opened = tokio::time::Instant::from_std(shared.started);
        Box::pin(async move {
            tokio::select! {
                _ = closed.wait_for(|closed| *closed) => {}
                () = self.auth.until_timed_out(&shared.session, shared.peer, opened) => {}
            }
        })
    }

    fn drained<'a>(&'a self, connection: &'a AmqpConnection) -> BoxFuture<'a, ()> {
        Box::pin(handlers::flush_publishes(&connection.shared))
    }

    fn close<'a>(&'a self, connection: &'a AmqpConnection) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            crate::metrics::AMQP.connection_closed();
            let shared = &connection.shared;
            // Publishes the client sent before it went are stored, as RabbitMQ stores them
            // (unless a resource alarm holds publishers: the channels are released now).
            if !shared.broker.alarms().any() {
                handlers::flush_publishes(shared).await;
            }
            let _ = shared.closed.send(true);
            handlers::close_all_channels(shared).await;
            shared.broker.close_session(&shared.session).await;
        })
    }
}

/// What a frame counts as in the request metrics, once handled.
#[derive(Debug, Clone, Copy)]
enum Observed {
    /// A method (the api slot); basic.publish only when it came with its content.
    Method(u16),
    /// A run of this many whole publishes, each a basic.publish.
    Publishes(usize),
    /// A content frame of a publish on this channel: the publish is counted if the frame
    /// completed its content.
    Content(u16),
}

/// Forwards replies and confirms to the push channel in the order they were queued.
async fn sequence_output(mut out: mpsc::Receiver<Output>, push: mpsc::Sender<BytesMut>) {
    let mut acks = AckRun::default();
    loop {
        // While confirms wait to be merged, only what is already queued may join them.
        let item = if acks.run.is_none() {
            match out.recv().await {
                Some(item) => item,
                None => return,
            }
        } else {
            match out.try_recv() {
                Ok(item) => item,
                Err(error) => {
                    if !send_acks(&mut acks, &push).await
                        || error == mpsc::error::TryRecvError::Disconnected
                    {
                        return;
                    }
                    continue;
                }
            }
        };
        let frames = match item {
            Output::Frames(frames) => Some(frames),
            Output::Later(mut later) => {
                let ready = if acks.run.is_none() {
                    Some((&mut later).await)
                } else {
                    // Joins the run only if ready now: a confirm is never held back
                    // waiting for a later one.
                    tokio::select! {
                        biased;
                        value = &mut later => Some(value),
                        () = std::future::ready(()) => None,
                    }
                };
                let value = match ready {
                    Some(value) => value,
                    None => {
                        if !send_acks(&mut acks, &push).await {
                            return;
                        }
                        later.await
                    }
                };
                let mut frames = None;
                let laters = match value {
                    None => Vec::new(),
                    Some(Later::Many(laters)) => laters,
                    Some(later) => vec![later],
                };
                for later in laters {
                    // Frames wait behind the confirms before them; only the last frames
                    // of the batch are left for the write below.
                    if let Some(earlier) = frames.take() {
                        if !send_acks(&mut acks, &push).await || push.send(earlier).await.is_err() {
                            return;
                        }
                    }
                    match later {
                        Later::Frames(out) => frames = Some(out),
                        Later::Ack {
                            channel,
                            delivery_tag,
                        } => {
                            if !acks.extend(channel, delivery_tag) {
                                if !send_acks(&mut acks, &push).await {
                                    return;
                                }
                                acks.extend(channel, delivery_tag);
                            }
                        }
                        Later::Many(_) => {}
                    }
                }
                frames
            }
            Output::Signal(signal) => {
                if !send_acks(&mut acks, &push).await {
                    return;
                }
                let _ = signal.send(());
                None
            }
        };
        if let Some(frames) = frames {
            if !send_acks(&mut acks, &push).await || push.send(frames).await.is_err() {
                return;
            }
        }
    }
}

/// Sends the run of confirms, if any; `false` when the connection's writer is gone.
async fn send_acks(acks: &mut AckRun, push: &mpsc::Sender<BytesMut>) -> bool {
    match acks.take_frame() {
        Some(frame) => push.send(frame).await.is_ok(),
        None => true,
    }
}

fn decode_protocol_header(
    shared: &Shared,
    buffer: &mut BytesMut,
) -> Result<Option<AmqpRequest>, Fatal> {
    // A header that already differs is refused at once, without waiting for 8 bytes.
    let have = buffer.len().min(PROTOCOL_HEADER.len());
    if buffer[..have] == PROTOCOL_HEADER[..have] && have < PROTOCOL_HEADER.len() {
        return Ok(None);
    }
    shared.header_seen.store(true, Ordering::Relaxed);
    if buffer[..have] == PROTOCOL_HEADER[..] {
        buffer.advance(PROTOCOL_HEADER.len());
        return Ok(Some(AmqpRequest::ProtocolHeader));
    }
    let received = buffer[..have].to_vec();
    buffer.clear();
    Err(Fatal {
        response: Some(BytesMut::from(&PROTOCOL_HEADER[..])),
        reason: format!(
            "AMQP protocol header {received:?} is not {:?}; answered with the supported one",
            &PROTOCOL_HEADER[..]
        ),
    })
}

/// Cuts one frame off `buffer` (`Ok(None)`: more bytes needed) and decodes it.
///
/// # Errors
/// A frame larger than `frame_max`, an unknown frame type or a missing frame-end octet:
/// the stream cannot be trusted, so the connection is closed with 501 FRAME_ERROR.
pub fn decode_frame(buffer: &mut BytesMut, frame_max: u32) -> Result<Option<AmqpRequest>, Fatal> {
    if buffer.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let frame_type = buffer[0];
    let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
    let payload_bytes = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]);
    let frame_bytes = u64::from(payload_bytes) + FRAME_HEADER_BYTES as u64 + 1;
    if frame_bytes > u64::from(frame_max) {
        return Err(frame_error(format!(
            "frame of {frame_bytes} bytes exceeds the negotiated frame max of {frame_max} bytes"
        )));
    }
    if !matches!(frame_type, 1 | 2 | 3 | 8) {
        return Err(frame_error(format!("unknown frame type {frame_type}")));
    }
    // Bounded by frame_max above.
    let frame_bytes = frame_bytes as usize;
    if buffer.len() < frame_bytes {
        buffer.reserve(frame_bytes - buffer.len());
        return Ok(None);
    }
    if frame_type == 1 && channel != 0 && buffer[FRAME_HEADER_BYTES..].starts_with(&PUBLISH_IDS) {
        if let Some(publish) = decode_publish(buffer, channel, frame_bytes, frame_max) {
            return Ok(Some(AmqpRequest::Publish(channel, publish)));
        }
    }
    let frame = buffer.split_to(frame_bytes).freeze();
    if frame[frame_bytes - 1] != FRAME_END {
        return Err(frame_error(format!(
            "frame ends with {:#04x}, not the frame-end octet 0xce",
            frame[frame_bytes - 1]
        )));
    }
    let payload = frame.slice(FRAME_HEADER_BYTES..frame_bytes - 1);
    Ok(Some(match frame_type {
        1 => decode_method(channel, &payload),
        2 => decode_content_header(channel, &payload),
        3 => AmqpRequest::Body(channel, payload),
        _ => AmqpRequest::Heartbeat(channel),
    }))
}

/// Most whole publishes [`decode_run`] takes as one request.
const PUBLISH_RUN_MAX: usize = 256;

/// [`decode_frame`], and when that gives a whole publish, the whole publishes right behind
/// it in `buffer` too (at most [`PUBLISH_RUN_MAX`]), as one [`AmqpRequest::Publishes`]: a
/// pipelining publisher's reads hold many, and each request costs the connection machinery
/// a round (a byte budget permit, a boxed future, a timing) that a run pays once. The run
/// ends at the first frame that is not the start of a whole publish, which the next call
/// decodes as [`decode_frame`] would.
///
/// # Errors
/// As [`decode_frame`]; a run never ends in an error (the frame that would give one is left
/// for the next call).
pub fn decode_run(buffer: &mut BytesMut, frame_max: u32) -> Result<Option<AmqpRequest>, Fatal> {
    let request = decode_frame(buffer, frame_max)?;
    let Some(AmqpRequest::Publish(channel, first)) = request else {
        return Ok(request);
    };
    let mut run = Vec::new();
    while run.len() + 1 < PUBLISH_RUN_MAX {
        let Some((kind, channel, payload, method_end)) = peek_frame(buffer, 0, frame_max) else {
            break;
        };
        if kind != 1 || channel == 0 || !buffer[payload].starts_with(&PUBLISH_IDS) {
            break;
        }
        let Some(frames) = decode_publish(buffer, channel, method_end, frame_max) else {
            break;
        };
        run.push((channel, frames));
    }
    if run.is_empty() {
        return Ok(Some(AmqpRequest::Publish(channel, first)));
    }
    run.insert(0, (channel, first));
    Ok(Some(AmqpRequest::Publishes(run)))
}

/// Class and method id of basic.publish, as a method frame's payload starts.
const PUBLISH_IDS: [u8; 4] = [0, 60, 0, 40];

/// A whole frame at `at` in `buffer`: its type, channel and payload range, and where it
/// ends; `None` when it is not all buffered or breaks a framing rule (the frame-by-frame
/// path then reports it, or waits for it).
fn peek_frame(
    buffer: &[u8],
    at: usize,
    frame_max: u32,
) -> Option<(u8, u16, std::ops::Range<usize>, usize)> {
    let header = buffer.get(at..at + FRAME_HEADER_BYTES)?;
    let payload_bytes = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    let frame_bytes = u64::from(payload_bytes) + FRAME_HEADER_BYTES as u64 + 1;
    if frame_bytes > u64::from(frame_max) {
        return None;
    }
    // Bounded by frame_max above.
    let end = at + frame_bytes as usize;
    if *buffer.get(end - 1)? != FRAME_END {
        return None;
    }
    let channel = u16::from_be_bytes([header[1], header[2]]);
    Some((header[0], channel, at + FRAME_HEADER_BYTES..end - 1, end))
}

/// The basic.publish method frame at the front of `buffer` (`method_end` bytes, channel
/// `channel`, not 0) with the content header and the one body frame that follow it on the
/// same channel, cut off `buffer` as one request; `None` (and `buffer` untouched) when
/// they are not all there, the body takes more than one frame, or a frame does not decode.
fn decode_publish(
    buffer: &mut BytesMut,
    channel: u16,
    method_end: usize,
    frame_max: u32,
) -> Option<Box<PublishFrames>> {
    if buffer[method_end - 1] != FRAME_END {
        return None;
    }
    let (kind, on, header_payload, header_end) = peek_frame(buffer, method_end, frame_max)?;
    if kind != 2 || on != channel || header_payload.len() < 12 {
        return None;
    }
    let at = header_payload.start;
    let body_size = u64::from_be_bytes(buffer[at + 4..at + 12].try_into().ok()?);
    let (body, end) = if body_size == 0 {
        (None, header_end)
    } else {
        let (kind, on, body, body_end) = peek_frame(buffer, header_end, frame_max)?;
        if kind != 3 || on != channel || body.len() as u64 != body_size {
            return None;
        }
        (Some(body), body_end)
    };
    // Anything unusual (bytes that are not UTF-8, bytes after the flags) goes frame by frame,
    // where decode_method leaves it to amq-protocol and an error keeps its reply.
    let publish = publish_arguments(&buffer[FRAME_HEADER_BYTES..method_end - 1])?;
    let AmqpRequest::ContentHeader(_, header) =
        decode_content_header(channel, &buffer[header_payload])
    else {
        return None;
    };
    let frames = buffer.split_to(end).freeze();
    let body = body.map_or_else(Bytes::new, |body| frames.slice(body));
    Some(Box::new(PublishFrames {
        publish,
        header: *header,
        body,
    }))
}

/// basic.publish's arguments read straight from a method frame's payload: reserved short,
/// exchange and routing key (short strings), one octet of flags (bit 0 mandatory, bit 1
/// immediate; the others ignored, as amq-protocol ignores them). `None` unless the payload
/// is exactly that with UTF-8 strings; the caller then decodes it with amq-protocol, whose
/// answer this one equals wherever it gives one (a property test below checks it). Both the
/// whole-publish path and [`decode_method`] take it first, so a publish is read the same way
/// however its frames arrive (basic.publish has no tables, so the nesting check has nothing
/// to look at). The hot path of every publish: amq-protocol's parse of it (each string
/// collected byte by byte, a `Box` per method) was 9 % of the broker's samples in a 100 B
/// publish run (docs/BENCHMARKS.md).
fn publish_arguments(payload: &[u8]) -> Option<amq_protocol::protocol::basic::Publish> {
    fn short_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
        let (&length, rest) = bytes.split_first()?;
        let (text, rest) = rest.split_at_checked(usize::from(length))?;
        Some((std::str::from_utf8(text).ok()?, rest))
    }
    let arguments = payload.strip_prefix(&PUBLISH_IDS)?;
    let (exchange, rest) = short_str(arguments.get(2..)?)?;
    let (routing_key, rest) = short_str(rest)?;
    let [flags] = rest else {
        return None;
    };
    Some(amq_protocol::protocol::basic::Publish {
        exchange: exchange.to_string().into(),
        routing_key: routing_key.to_string().into(),
        mandatory: flags & 1 != 0,
        immediate: flags & 2 != 0,
    })
}

fn decode_method(channel: u16, payload: &[u8]) -> AmqpRequest {
    if payload.len() < 4 {
        return AmqpRequest::Malformed(Reply::syntax_error(format!(
            "method frame of {} bytes is too short",
            payload.len()
        )));
    }
    if let Some(publish) = publish_arguments(payload) {
        return AmqpRequest::Method(
            channel,
            Box::new(AMQPClass::Basic(
                amq_protocol::protocol::basic::AMQPMethod::Publish(publish),
            )),
        );
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if nesting::nesting_bound(payload) > nesting::NESTING_MAX {
        return AmqpRequest::Malformed(Reply::syntax_error_in(
            class_id,
            method_id,
            format!(
                "arguments of method {class_id}.{method_id} nest tables or arrays more than {} deep",
                nesting::NESTING_MAX
            ),
        ));
    }
    let parsed = std::panic::catch_unwind(|| amq_protocol::protocol::parse_class(payload));
    match parsed {
        Ok(Ok(([], class))) => AmqpRequest::Method(channel, Box::new(class)),
        Ok(Ok(_)) => AmqpRequest::Malformed(Reply::syntax_error_in(
            class_id,
            method_id,
            "method frame has bytes after its arguments".to_string(),
        )),
        _ if !known_method(class_id, method_id) => AmqpRequest::Malformed(Reply::command_invalid(
            class_id,
            method_id,
            format!("unknown method {class_id}.{method_id}"),
        )),
        _ => AmqpRequest::Malformed(Reply::syntax_error_in(
            class_id,
            method_id,
            format!("arguments of method {class_id}.{method_id} do not decode"),
        )),
    }
}

/// True for the classes and methods AMQP 0-9-1 (with RabbitMQ's extensions) defines.
fn known_method(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(method_id, 10..=120),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

fn decode_content_header(channel: u16, payload: &[u8]) -> AmqpRequest {
    if nesting::nesting_bound(payload) > nesting::NESTING_MAX {
        return AmqpRequest::Malformed(Reply::frame_error(format!(
            "content header nests tables or arrays more than {} deep",
            nesting::NESTING_MAX
        )));
    }
    let parsed =
        std::panic::catch_unwind(|| amq_protocol::frame::parsing::parse_content_header(payload));
    match parsed {
        Ok(Ok(([], header))) => AmqpRequest::ContentHeader(channel, Box::new(header)),
        _ => AmqpRequest::Malformed(Reply::frame_error(
            "content header frame does not decode".to_string(),
        )),
    }
}

fn frame_error(reason: String) -> Fatal {
    let reply = Reply::frame_error(reason.clone());
    Fatal {
        response: Some(connection_close_frame(&reply)),
        reason,
    }
}

/// The connection.close a reply turns into.
pub(crate) fn connection_close_frame(reply: &Reply) -> BytesMut {
    method_frame(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: reply.code,
            reply_text: reply.text.as_str().into(),
            class_id: reply.class_id,
            method_id: reply.method_id,
        })),
    )
}

/// Encodes a method frame.
pub(crate) fn method_frame(channel: u16, class: &AMQPClass) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&AMQPFrame::Method(channel, class.clone()), &mut out);
    out
}

/// Appends an encoded frame to `out`.
pub(crate) fn encode_frame(frame: &AMQPFrame, out: &mut BytesMut) {
    let mut scratch = Vec::new();
    encode_frame_with(frame, out, &mut scratch);
}

/// Appends an encoded frame to `out`, encoding through `scratch` (kept by the caller so a
/// forwarder reuses one buffer for every delivery).
pub(crate) fn encode_frame_with(frame: &AMQPFrame, out: &mut BytesMut, scratch: &mut Vec<u8>) {
    scratch.clear();
    match gen_frame(frame)(WriteContext::from(std::mem::take(scratch))) {
        Ok(context) => {
            let (bytes, _) = context.into_inner();
            out.extend_from_slice(&bytes);
            *scratch = bytes;
        }
        Err(error) => {
            // Only a value that breaks the format (a short string over 255 bytes) gets here;
            // the handlers bound what they put in frames, so this is a bug.
            tracing::error!(%error, "encoding an AMQP frame failed");
        }
    }
}

/// Appends body frames for `body`, each at most `frame_max` bytes.
pub(crate) fn encode_body(channel: u16, body: &[u8], frame_max: u32, out: &mut BytesMut) {
    let chunk_bytes = (frame_max as usize)
        .saturating_sub(FRAME_HEADER_BYTES + 1)
        .max(1);
    out.reserve(body.len() + (body.len() / chunk_bytes + 1) * (FRAME_HEADER_BYTES + 1));
    for chunk in body.chunks(chunk_bytes) {
        out.extend_from_slice(&[3]);
        out.extend_from_slice(&channel.to_be_bytes());
        // A chunk is at most frame_max (a u32) bytes.
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(&[FRAME_END]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack_of(frame: &BytesMut) -> (u16, u64, bool) {
        let mut buffer = frame.clone();
        match decode_frame(&mut buffer, FRAME_BYTES_MAX) {
            Ok(Some(AmqpRequest::Method(channel, method))) => match *method {
                AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Ack(ack)) => {
                    (channel, ack.delivery_tag, ack.multiple)
                }
                other => panic!("not an ack: {other:?}"),
            },
            other => panic!("not a method frame: {other:?}"),
        }
    }

    #[test]
    fn a_run_of_confirms_is_one_ack_with_multiple_and_a_gap_or_another_channel_ends_it() {
        let mut acks = AckRun::default();
        assert!(acks.take_frame().is_none());
        assert!(acks.extend(1, 5));
        let single = acks.take_frame().expect("one");
        assert_eq!(ack_of(&single), (1, 5, false), "one tag: multiple unset");
        for tag in 6..=9 {
            assert!(acks.extend(1, tag));
        }
        assert!(!acks.extend(1, 11), "a gap ends the run");
        assert!(!acks.extend(2, 10), "another channel ends the run");
        assert_eq!(ack_of(&acks.take_frame().expect("run")), (1, 9, true));
        assert!(acks.extend(2, 10));
        assert_eq!(ack_of(&acks.take_frame().expect("next")), (2, 10, false));
    }

    fn decode(bytes: &[u8]) -> Result<Option<AmqpRequest>, Fatal> {
        decode_frame(&mut BytesMut::from(bytes), FRAME_BYTES_MAX)
    }

    #[test]
    fn heartbeat_frame_decodes() {
        assert!(matches!(
            decode(&HEARTBEAT_FRAME),
            Ok(Some(AmqpRequest::Heartbeat(0)))
        ));
    }

    #[test]
    fn partial_frame_needs_more_bytes() {
        assert!(matches!(decode(&HEARTBEAT_FRAME[..5]), Ok(None)));
        assert!(matches!(decode(&[1, 0, 1, 0, 0, 0, 12]), Ok(None)));
    }

    #[test]
    fn oversized_frame_is_a_frame_error() {
        let fatal = decode(&[1, 0, 1, 0x7f, 0, 0, 0]).expect_err("too large");
        assert!(fatal.reason.contains("exceeds"), "{}", fatal.reason);
        assert!(fatal.response.is_some());
    }

    #[test]
    fn missing_frame_end_is_a_frame_error() {
        let mut frame = HEARTBEAT_FRAME;
        frame[7] = 0;
        assert!(decode(&frame).is_err());
    }

    #[test]
    fn garbage_method_is_a_syntax_error_not_a_panic() {
        let frame = [1, 0, 1, 0, 0, 0, 5, 0, 60, 0, 40, 9, FRAME_END];
        match decode(&frame) {
            Ok(Some(AmqpRequest::Malformed(reply))) => assert_eq!(reply.code, 502),
            other => panic!("{other:?}"),
        }
    }

    /// Every request [`decode_run`] decodes from `buffer` with `frame_max`, whole publishes
    /// (alone or in runs) taken apart into their frames, as Debug text (the decoded types
    /// compare by their fields there); with the number of whole publishes.
    fn frames_of(buffer: &mut BytesMut, frame_max: u32) -> (Vec<String>, usize) {
        let mut frames = Vec::new();
        let mut publishes = 0;
        while let Ok(Some(request)) = decode_run(buffer, frame_max) {
            let run = match request {
                AmqpRequest::Publish(channel, whole) => vec![(channel, whole)],
                AmqpRequest::Publishes(run) => run,
                other => {
                    frames.push(format!("{other:?}"));
                    continue;
                }
            };
            for (channel, whole) in run {
                publishes += 1;
                for frame in whole.into_frames(channel).into_iter().flatten() {
                    frames.push(format!("{frame:?}"));
                }
            }
        }
        (frames, publishes)
    }

    #[test]
    fn whole_publishes_in_a_row_are_one_run_up_to_its_cap() {
        let frame_max = FRAME_BYTES_MIN;
        let mut buffer = BytesMut::new();
        for n in 0..PUBLISH_RUN_MAX + 3 {
            publish_bytes(1 + (n % 2) as u16, "k", b"body", frame_max, &mut buffer);
        }
        buffer.extend_from_slice(&HEARTBEAT_FRAME);
        publish_bytes(1, "after", b"x", frame_max, &mut buffer);
        let mut lengths = Vec::new();
        while let Ok(Some(request)) = decode_run(&mut buffer, frame_max) {
            lengths.push(match request {
                AmqpRequest::Publishes(run) => {
                    let channels: Vec<u16> = run.iter().map(|(channel, _)| *channel).collect();
                    assert_eq!(channels[..2], [1, 2], "in buffer order, any channel");
                    run.len()
                }
                AmqpRequest::Publish(..) => 1,
                AmqpRequest::Heartbeat(0) => 0,
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(lengths, [PUBLISH_RUN_MAX, 3, 0, 1]);
        assert!(buffer.is_empty());

        // A publish whose body is not all read yet ends the run and waits.
        let mut buffer = BytesMut::new();
        publish_bytes(1, "a", b"one", frame_max, &mut buffer);
        publish_bytes(1, "b", b"two", frame_max, &mut buffer);
        let cut = buffer.len() - 1;
        let mut partial = BytesMut::from(&buffer[..cut]);
        assert!(matches!(
            decode_run(&mut partial, frame_max),
            Ok(Some(AmqpRequest::Publish(1, _)))
        ));
        assert!(matches!(
            decode_run(&mut partial, frame_max),
            Ok(Some(AmqpRequest::Method(1, _)))
        ));
    }

    #[test]
    fn frames_pika_sends_decode() {
        // Recorded with pika's own encoder (fuzz/seeds/decode_amqp_frame).
        let publish = include_bytes!("../../../fuzz/seeds/decode_amqp_frame/publish");
        let mut buffer = BytesMut::from(&publish[..]);
        match decode_frame(&mut buffer, FRAME_BYTES_MAX) {
            Ok(Some(AmqpRequest::Publish(1, whole))) => {
                assert_eq!(&whole.body[..], b"hello");
                assert_eq!(whole.header.body_size, 5);
            }
            other => panic!("not one whole publish: {other:?}"),
        }
        assert!(buffer.is_empty());
        // Read a byte at a time, the same bytes come frame by frame.
        let mut buffer = BytesMut::new();
        let mut kinds = Vec::new();
        for byte in publish {
            buffer.extend_from_slice(&[*byte]);
            while let Ok(Some(request)) = decode_frame(&mut buffer, FRAME_BYTES_MAX) {
                kinds.push(match request {
                    AmqpRequest::Method(1, _) => "method",
                    AmqpRequest::ContentHeader(1, _) => "header",
                    AmqpRequest::Body(1, body) if &body[..] == b"hello" => "body",
                    other => panic!("{other:?}"),
                });
            }
        }
        assert_eq!(kinds, ["method", "header", "body"]);
    }

    /// A basic.publish on `channel` with its content, encoded as a client sends it.
    fn publish_bytes(channel: u16, key: &str, body: &[u8], frame_max: u32, out: &mut BytesMut) {
        use amq_protocol::protocol::basic;
        encode_frame(
            &AMQPFrame::Method(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "".into(),
                    routing_key: key.into(),
                    mandatory: key.len().is_multiple_of(2),
                    immediate: false,
                })),
            ),
            out,
        );
        let properties = basic::AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id(key.into());
        message::encode_content(channel, properties, body, frame_max, out, &mut Vec::new());
    }

    #[test]
    fn a_publish_is_whole_only_when_its_frames_are_all_there_on_its_channel() {
        let frame_max = 4096;
        let mut buffer = BytesMut::new();
        publish_bytes(1, "a", b"", frame_max, &mut buffer); // no body frame
        publish_bytes(2, "b", &[7; 5000], frame_max, &mut buffer); // body in two frames
        publish_bytes(3, "c", b"xyz", frame_max, &mut buffer);
        let cut = buffer.len() - 2; // the last body frame not all read yet
        let mut partial = BytesMut::from(&buffer[..cut]);
        let mut kinds = Vec::new();
        while let Ok(Some(request)) = decode_frame(&mut partial, frame_max) {
            kinds.push(match request {
                AmqpRequest::Publish(channel, whole) => {
                    format!("publish {channel} {}", whole.body.len())
                }
                AmqpRequest::Method(channel, _) => format!("method {channel}"),
                AmqpRequest::ContentHeader(channel, _) => format!("header {channel}"),
                AmqpRequest::Body(channel, body) => format!("body {channel} {}", body.len()),
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(
            kinds,
            [
                "publish 1 0",
                "method 2",
                "header 2",
                &format!("body 2 {}", frame_max - 8),
                &format!("body 2 {}", 5000 - (frame_max - 8)),
                "method 3",
                "header 3",
            ]
        );
        partial.extend_from_slice(&buffer[cut..]);
        assert!(matches!(
            decode_frame(&mut partial, frame_max),
            Ok(Some(AmqpRequest::Body(3, body))) if &body[..] == b"xyz"
        ));

        // Another channel's frame between a publish's frames: frame by frame.
        let mut buffer = BytesMut::new();
        publish_bytes(1, "a", b"x", frame_max, &mut buffer);
        let method_bytes = 7 + 4 + 2 + 1 + 2 + 1 + 1;
        let mut interleaved = BytesMut::from(&buffer[..method_bytes]);
        interleaved.extend_from_slice(&HEARTBEAT_FRAME);
        interleaved.extend_from_slice(&buffer[method_bytes..]);
        let (frames, publishes) = frames_of(&mut interleaved, frame_max);
        assert_eq!((frames.len(), publishes), (4, 0), "{frames:?}");
    }

    proptest::proptest! {
        /// Decoding a buffer of publishes (and heartbeats) whole gives the same frames, in the
        /// same order, as decoding it as it trickles in a few bytes at a time.
        #[test]
        fn whole_publishes_are_the_frames_they_replace(
            messages in proptest::collection::vec(
                (1u16..4, "[a-z]{0,12}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), proptest::prelude::any::<bool>()),
                1..12,
            ),
            chunk in 1usize..40,
        ) {
            let frame_max = FRAME_BYTES_MIN;
            let mut bytes = BytesMut::new();
            for (channel, key, body, beat) in &messages {
                let body: Vec<u8> = body.iter().copied().cycle().take(body.len() * 20).collect();
                publish_bytes(*channel, key, &body, frame_max, &mut bytes);
                if *beat {
                    bytes.extend_from_slice(&HEARTBEAT_FRAME);
                }
            }
            let (whole, _) = frames_of(&mut bytes.clone(), frame_max);
            let mut trickled = Vec::new();
            let mut buffer = BytesMut::new();
            for piece in bytes.chunks(chunk) {
                buffer.extend_from_slice(piece);
                let (frames, _) = frames_of(&mut buffer, frame_max);
                trickled.extend(frames);
            }
            proptest::prop_assert!(buffer.is_empty());
            proptest::prop_assert_eq!(whole, trickled);
        }
    }

    /// A basic.publish payload: ids, reserved short, the two short strings as raw bytes (not
    /// always UTF-8), flags, trailing bytes.
    fn publish_payload(
        ticket: u16,
        exchange: &[u8],
        routing_key: &[u8],
        flags: u8,
        trailing: &[u8],
    ) -> Vec<u8> {
        let mut payload = PUBLISH_IDS.to_vec();
        payload.extend_from_slice(&ticket.to_be_bytes());
        for text in [exchange, routing_key] {
            payload.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            payload.extend_from_slice(&text[..text.len().min(255)]);
        }
        payload.push(flags);
        payload.extend_from_slice(trailing);
        payload
    }

    /// What amq-protocol reads from a basic.publish payload, if it reads a publish.
    fn crate_publish(payload: &[u8]) -> Option<amq_protocol::protocol::basic::Publish> {
        match amq_protocol::protocol::parse_class(payload) {
            Ok(([], AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(p)))) => {
                Some(p)
            }
            _ => None,
        }
    }

    /// A basic.publish payload with a 255-byte exchange and routing key, both ASCII, that
    /// the nesting scan takes for arrays 52 deep: `A` and a four-byte length every five
    /// bytes, each extent ending where the routing key ends.
    fn nested_looking_publish() -> Vec<u8> {
        const STRING_BYTES: usize = 255;
        let exchange_at = PUBLISH_IDS.len() + 2 + 1;
        let key_at = exchange_at + STRING_BYTES + 1;
        let end = key_at + STRING_BYTES;
        let mut strings = [vec![b'e'; STRING_BYTES], vec![b'k'; STRING_BYTES]];
        for (string, at) in strings.iter_mut().zip([exchange_at, key_at]) {
            for offset in (123..=250).step_by(5) {
                let length = u32::try_from(end - (at + offset) - 5).expect("small");
                let length_bytes = length.to_be_bytes();
                assert!(
                    length_bytes.iter().all(u8::is_ascii),
                    "a length of {length}"
                );
                string[offset] = b'A';
                string[offset + 1..offset + 5].copy_from_slice(&length_bytes);
            }
        }
        let [exchange, key] = strings;
        publish_payload(0, &exchange, &key, 0, b"")
    }

    #[test]
    fn a_publish_reads_the_same_whole_or_frame_by_frame() {
        let payload = nested_looking_publish();
        assert!(
            nesting::nesting_bound(&payload) > nesting::NESTING_MAX,
            "the payload must trip the nesting scan for this test to mean anything"
        );
        let expected = crate_publish(&payload).expect("amq-protocol reads it");
        let mut frames = BytesMut::new();
        frames.extend_from_slice(&[1, 0, 1]);
        frames.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        frames.extend_from_slice(&payload);
        frames.extend_from_slice(&[FRAME_END]);
        let method_bytes = frames.len();
        let properties = amq_protocol::protocol::basic::AMQPProperties::default();
        message::encode_content(
            1,
            properties,
            b"x",
            FRAME_BYTES_MIN,
            &mut frames,
            &mut Vec::new(),
        );
        match decode(&frames[..method_bytes]) {
            Ok(Some(AmqpRequest::Method(1, method))) => assert_eq!(
                *method,
                AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(
                    expected.clone()
                ))
            ),
            other => panic!("the method frame alone: {other:?}"),
        }
        match decode_frame(&mut frames, FRAME_BYTES_MIN) {
            Ok(Some(AmqpRequest::Publish(1, publish))) => assert_eq!(publish.publish, expected),
            other => panic!("the whole publish: {other:?}"),
        }
    }

    #[test]
    fn publish_arguments_read_what_amq_protocol_reads() {
        let payload = publish_payload(0, b"orders", "k\u{e9}y".as_bytes(), 0b11, b"");
        assert_eq!(publish_arguments(&payload), crate_publish(&payload));
        let fast = publish_arguments(&payload).expect("a plain publish");
        assert_eq!(
            (fast.exchange.as_str(), fast.routing_key.as_str()),
            ("orders", "k\u{e9}y")
        );
        assert!(fast.mandatory && fast.immediate);
        // Left to amq-protocol: not UTF-8, bytes after the flags, another method, too short.
        assert!(publish_arguments(&publish_payload(0, b"\xff", b"k", 0, b"")).is_none());
        assert!(publish_arguments(&publish_payload(0, b"x", b"k", 0, b"!")).is_none());
        assert!(publish_arguments(&[0, 60, 0, 80, 0, 0]).is_none());
        assert!(publish_arguments(&payload[..payload.len() - 1]).is_none());
    }

    /// Mostly UTF-8 text (the reading the fast path takes), sometimes any bytes.
    fn text_or_bytes(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::strategy::Strategy;
        proptest::prop_oneof![
            3 => proptest::collection::vec(proptest::char::any(), 0..max / 4)
                .prop_map(|chars| chars.into_iter().collect::<String>().into_bytes()),
            1 => proptest::collection::vec(proptest::prelude::any::<u8>(), 0..max),
            // What the nesting scan takes for tables and arrays: `A`/`F`, zeros, a length.
            1 => proptest::collection::vec((proptest::bool::ANY, 0u8..0x80), 0..max / 5)
                .prop_map(|parts| parts.into_iter().flat_map(|(table, length)| {
                    [if table { b'F' } else { b'A' }, 0, 0, 0, length]
                }).collect()),
        ]
    }

    proptest::proptest! {
        /// Wherever the fast reading of basic.publish answers, amq-protocol reads the same
        /// arguments from the same bytes (also from the payload cut short at a random place,
        /// where a length octet may claim more than is there); and the fast reading answers
        /// every well-formed UTF-8 publish.
        #[test]
        fn publish_arguments_agree_with_amq_protocol(
            ticket in proptest::prelude::any::<u16>(),
            exchange in text_or_bytes(40),
            routing_key in text_or_bytes(300),
            flags in proptest::prelude::any::<u8>(),
            trailing in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let payload = publish_payload(ticket, &exchange, &routing_key, flags, &trailing);
            for payload in [&payload[..], &payload[..cut.index(payload.len() + 1)]] {
                let Some(fast) = publish_arguments(payload) else { continue };
                proptest::prop_assert_eq!(Some(fast), crate_publish(payload));
            }
            let well_formed = std::str::from_utf8(&exchange).is_ok()
                && std::str::from_utf8(&routing_key).is_ok()
                && routing_key.len() <= 255
                && trailing.is_empty();
            if well_formed {
                proptest::prop_assert!(publish_arguments(&payload).is_some());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut buffer = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_run(&mut buffer, FRAME_BYTES_MAX) {}
        }

        #[test]
        fn decoder_never_panics_on_well_framed_garbage(
            frame_type in proptest::sample::select(vec![1u8, 2, 3, 8]),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let mut bytes = vec![frame_type, 0, 1];
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&payload);
            bytes.push(FRAME_END);
            let decoded = decode_frame(&mut BytesMut::from(&bytes[..]), FRAME_BYTES_MAX);
            proptest::prop_assert!(matches!(decoded, Ok(Some(_))));
        }
    }

    #[test]
    fn body_frames_split_at_frame_max() {
        let mut out = BytesMut::new();
        encode_body(1, &[7u8; 10], 12, &mut out);
        // 4 payload bytes per frame of 12: 3 frames.
        assert_eq!(out.len(), 10 + 3 * 8);
    }
}
