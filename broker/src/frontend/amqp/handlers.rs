//! One handler per AMQP method: frame → core calls → reply frames. Connection and channel
//! state (the negotiation phase, open channels, their publish in progress, consumers,
//! delivery tags) is translation state; every queue and exchange rule is the core's.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{
    access, basic, channel, confirm, connection, exchange, queue, tx, AMQPClass,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::error_code::{self, Reply};
use super::message;
use super::{
    connection_close_frame, method_frame, AmqpRequest, Later, PublishFrames, Shared, CHANNELS_MAX,
    CLOSE_OK_WAIT, FRAME_BYTES_MAX, FRAME_BYTES_MIN, HEARTBEAT_SECONDS,
};
use crate::core::queue_ops::{
    Mandatory, PublishOutcome, PublishQuery, Settle, SettleQuery, SubscribeQuery,
};
use crate::core::PublishCompletion;
use crate::core::{
    AckScope, ConsumerId, ConsumerPush, DefaultGuest, DeleteConditions, DeliveredRun, Deliveries,
    DeliveryTag, Durability, GetMode, QueueError, QueueStats, Requeue, SharedPrefetch, TagMap,
};

/// Prefix of server-named queues, as RabbitMQ names them.
const SERVER_NAMED_PREFIX: &str = "amq.gen-";

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Waiting for the protocol header.
    #[default]
    Header,
    /// connection.start sent.
    StartSent,
    /// connection.tune sent.
    TuneSent,
    /// connection.tune-ok received, waiting for connection.open.
    Tuned,
    /// connection.open-ok sent.
    Open,
    /// connection.close sent or received: only close and close-ok count now.
    Closing,
}

/// The connection's translation state.
#[derive(Debug, Default)]
pub(crate) struct State {
    phase: Phase,
    channel_max: u16,
    channels: HashMap<u16, Channel>,
    /// The client takes connection.blocked / unblocked (its `capabilities` said so).
    takes_blocked: bool,
    /// connection.blocked was sent and connection.unblocked not yet.
    blocked_sent: bool,
    /// Publishes to the default exchange whose content is complete, not yet handed to the
    /// core: handed over together ([`flush_publishes`]) when the read buffer is drained,
    /// before any other frame, or at [`PENDING_PUBLISHES_MAX`].
    pending: Vec<PendingPublish>,
}

/// Most complete publishes a connection holds back before handing them to the core.
const PENDING_PUBLISHES_MAX: usize = 256;

/// A publish whose content is complete, waiting to be handed to the core with others.
#[derive(Debug)]
pub(crate) struct PendingPublish {
    channel: u16,
    sequence: Option<u64>,
    query: PublishQuery,
    /// A mandatory publish's properties, for its return.
    properties: Option<Box<AMQPProperties>>,
}

/// One open channel.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    /// channel.close was sent: everything but close and close-ok is dropped.
    closing: bool,
    /// A basic.publish waiting for its content.
    content: Option<Content>,
    /// confirm.select was received: the sequence number of the last publish.
    confirms: Option<u64>,
    /// basic.qos prefetch count for consumers started after it (0: unlimited).
    prefetch: u16,
    /// basic.qos with `global=true`: the window the channel's consumers share, whatever
    /// their queues (limit 0, unlimited, until a global qos sets one). Every consumer with
    /// acks counts in it, those started before the qos too, as RabbitMQ's channel limiter.
    shared_prefetch: Arc<SharedPrefetch>,
    /// Consumers by tag.
    consumers: HashMap<String, ConsumerSlot>,
    /// Per queue, the core holder of the messages basic.get took with an ack to come.
    holders: HashMap<Arc<str>, ConsumerId>,
    /// Consumers cancelled with basic.cancel while holding deliveries: stopped in the core
    /// until the channel settles what they hold.
    stopped: Vec<(Arc<str>, ConsumerId)>,
    /// The last delivery tag handed out on this channel.
    last_tag: u64,
    /// Unacknowledged deliveries by channel delivery tag.
    unacked: TagMap<u64, Held>,
    /// tx.select was received: the publishes and settlements of the open transaction.
    tx: Option<Vec<TxStep>>,
    /// Body bytes of the publishes in `tx`.
    tx_bytes: u64,
}

impl Channel {
    /// The next publisher-confirm sequence number, in confirm mode.
    fn next_confirm(&mut self) -> Option<u64> {
        self.confirms.as_mut().map(|last| {
            *last += 1;
            *last
        })
    }

    /// Body bytes this channel has the broker hold: the declared size of a body being
    /// received and the publishes of its open transaction.
    fn buffered_bytes(&self) -> u64 {
        let receiving = self
            .content
            .as_ref()
            .and_then(|content| content.header.as_ref())
            .map_or(0, |(declared, _)| *declared);
        receiving.saturating_add(self.tx_bytes)
    }
}

impl State {
    /// Body bytes the connection has the broker hold, over all its channels.
    fn buffered_bytes(&self) -> u64 {
        self.channels
            .values()
            .map(Channel::buffered_bytes)
            .fold(0, u64::saturating_add)
    }
}

/// What a transaction does at tx.commit, in the order the client sent it.
#[derive(Debug)]
enum TxStep {
    Publish(PublishQuery, Box<AMQPProperties>),
    Settle {
        delivery_tag: u64,
        multiple: bool,
        how: Settle,
        method_id: u16,
    },
}

#[derive(Debug)]
struct ConsumerSlot {
    queue: Arc<str>,
    id: ConsumerId,
    /// A no-ack consumer: its deliveries are settled in the core by its forwarding task
    /// after they are pushed, so the task, not the canceller, ends it in the core.
    no_ack: bool,
}

/// A delivery waiting for its ack: to a consumer, or taken by basic.get under the
/// channel's holder for the queue; either way settled in the core.
#[derive(Debug)]
struct Held {
    queue: Arc<str>,
    consumer: ConsumerId,
    tag: DeliveryTag,
}

#[derive(Debug)]
struct Content {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<(u64, AMQPProperties)>,
    body: Body,
}

/// A message body being reassembled: most fit one frame, kept without a copy.
#[derive(Debug, Default)]
enum Body {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(bytes) => bytes.len(),
            Body::Many(bytes) => bytes.len(),
        }
    }

    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + chunk.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(bytes) => bytes,
            Body::Many(bytes) => bytes.freeze(),
        }
    }
}

/// True while `channel` waits for the content of a basic.publish.
pub(crate) fn awaits_content(shared: &Shared, channel: u16) -> bool {
    shared
        .state()
        .channels
        .get(&channel)
        .is_some_and(|open| open.content.is_some())
}

/// Handles one request in the connection's ordered phase: a whole publish (or a run of
/// them, one by one) at once when nothing about it is unusual, else frame by frame.
pub(crate) async fn handle(shared: &Arc<Shared>, request: AmqpRequest) {
    match request {
        AmqpRequest::Publish(channel, frames) => whole_publish(shared, channel, frames).await,
        AmqpRequest::Publishes(run) => {
            for (channel, frames) in run {
                whole_publish(shared, channel, frames).await;
            }
        }
        other => handle_frame(shared, other).await,
    }
}

/// Handles a publish whose frames were decoded together.
async fn whole_publish(shared: &Arc<Shared>, channel: u16, frames: Box<PublishFrames>) {
    match start_publish(shared, channel, frames) {
        Ok(started) => {
            if let Err(reply) = publish_content(shared, channel, started).await {
                fail(shared, reply).await;
            }
        }
        Err(frames) => {
            // Exactly as if the frames had been decoded apart.
            for frame in frames.into_frames(channel).into_iter().flatten() {
                handle_frame(shared, frame).await;
            }
        }
    }
}

/// A publish whose content is complete, taken off its channel: what [`publish_content`]
/// stores.
struct Started {
    content: Content,
    /// Its publisher-confirm sequence number, in confirm mode.
    sequence: Option<u64>,
    /// The channel is in a transaction.
    in_tx: bool,
}

/// Takes a whole publish's method and content as one step when the frame-by-frame path
/// would accept each of its frames and complete the message: the connection is open, the
/// channel open, not closing and not inside another publish's content, the body within
/// the size and buffer caps. Anything else gets the frames back for that path (which
/// answers each case with its error). One lock of the connection state for all of it.
fn start_publish(
    shared: &Shared,
    channel: u16,
    frames: Box<PublishFrames>,
) -> Result<Started, Box<PublishFrames>> {
    let size = frames.header.body_size;
    if frames.publish.immediate
        || frames.header.class_id != 60
        || size > u64::from(shared.body_bytes_max)
    {
        return Err(frames);
    }
    let mut state = shared.state();
    if state.phase != Phase::Open {
        return Err(frames);
    }
    let buffered = state.buffered_bytes();
    if buffered.saturating_add(size) > shared.buffer_bytes_max {
        return Err(frames);
    }
    match state.channels.get_mut(&channel) {
        Some(open) if !open.closing && open.content.is_none() => {
            let PublishFrames {
                publish,
                header,
                body,
            } = *frames;
            Ok(Started {
                content: Content {
                    exchange: publish.exchange.as_str().to_string(),
                    routing_key: publish.routing_key.as_str().to_string(),
                    mandatory: publish.mandatory,
                    header: Some((size, header.properties)),
                    body: if body.is_empty() {
                        Body::Empty
                    } else {
                        Body::One(body)
                    },
                },
                sequence: open.next_confirm(),
                in_tx: open.tx.is_some(),
            })
        }
        _ => Err(frames),
    }
}

/// Handles one frame in the connection's ordered phase.
async fn handle_frame(shared: &Arc<Shared>, request: AmqpRequest) {
    // Publishes held back go to the core before any frame that is not part of a further
    // publish, so every other method sees them done in order (a basic.get, a queue.purge,
    // a channel.close, a confirm.select ...).
    let continues_publishing = matches!(
        &request,
        AmqpRequest::ContentHeader(..)
            | AmqpRequest::Body(..)
            | AmqpRequest::Heartbeat(_)
            | AmqpRequest::Publish(..)
            | AmqpRequest::Publishes(_)
    ) || matches!(&request, AmqpRequest::Method(_, class)
        if matches!(**class, AMQPClass::Basic(basic::AMQPMethod::Publish(_))));
    if !continues_publishing {
        flush_publishes(shared).await;
    }
    let phase = shared.state().phase;
    let outcome = match request {
        AmqpRequest::ProtocolHeader => {
            start(shared).await;
            Ok(())
        }
        AmqpRequest::Malformed(reply) => Err(reply),
        _ if phase == Phase::Closing => closing(shared, request).await,
        AmqpRequest::Heartbeat(0) => Ok(()),
        AmqpRequest::Heartbeat(channel) => Err(Reply::frame_error(format!(
            "heartbeat frame on channel {channel}"
        ))),
        AmqpRequest::Method(0, class) => connection_method(shared, phase, *class).await,
        _ if phase != Phase::Open => Err(Reply::new(
            error_code::CHANNEL_ERROR,
            "expected connection negotiation to finish before channel frames",
        )),
        AmqpRequest::Method(channel, class) => channel_method(shared, channel, *class).await,
        AmqpRequest::ContentHeader(channel, header) => {
            content_header(shared, channel, *header).await
        }
        AmqpRequest::Body(channel, body) => content_body(shared, channel, body).await,
        // `handle` takes these apart before they get here.
        AmqpRequest::Publish(channel, _) => Err(Reply::new(
            error_code::INTERNAL_ERROR,
            format!("a whole publish on channel {channel} reached the frame-by-frame path"),
        )),
        AmqpRequest::Publishes(_) => Err(Reply::new(
            error_code::INTERNAL_ERROR,
            "a run of whole publishes reached the frame-by-frame path",
        )),
    };
    if let Err(reply) = outcome {
        fail(shared, reply).await;
    }
}

/// Closes the connection with `reply` (at the connection level even a soft code such as a
/// refused login closes the connection, as RabbitMQ does).
async fn fail(shared: &Arc<Shared>, reply: Reply) {
    tracing::debug!(peer = %shared.peer, code = reply.code, text = reply.text, "closing AMQP connection");
    fail_hard(shared, reply).await;
}

async fn fail_hard(shared: &Arc<Shared>, reply: Reply) {
    // Publishes held back before the error are answered before the close, as if alone.
    if !shared.broker.alarms().any() {
        for (channel, reply) in publish_pending(shared).await {
            close_channel(shared, channel, reply).await;
        }
    }
    super::methods::count_error(reply.code, reply.class_id, reply.method_id);
    shared.state().phase = Phase::Closing;
    shared.send(connection_close_frame(&reply)).await;
    shared.close_after(CLOSE_OK_WAIT);
}

/// Closes one channel with a soft error: the connection and other channels go on.
/// Publishes held back before the error are handed over and answered first.
async fn fail_channel(shared: &Arc<Shared>, channel: u16, reply: Reply) {
    if reply.is_hard() {
        return fail_hard(shared, reply).await;
    }
    for (refused, refusal) in publish_pending(shared).await {
        close_channel(shared, refused, refusal).await;
    }
    close_channel(shared, channel, reply).await;
}

/// Sends channel.close with `reply` and releases the channel, unless it is closing already
/// (a second error on a closing channel is ignored, as RabbitMQ ignores it).
async fn close_channel(shared: &Arc<Shared>, channel: u16, reply: Reply) {
    if reply.is_hard() {
        return Box::pin(fail_hard(shared, reply)).await;
    }
    let released = {
        let mut state = shared.state();
        match state.channels.get_mut(&channel) {
            Some(open) if open.closing => return,
            Some(open) => {
                open.closing = true;
                release_channel(open)
            }
            None => Released::default(),
        }
    };
    super::methods::count_error(reply.code, reply.class_id, reply.method_id);
    release(shared, released).await;
    shared
        .send(method_frame(
            channel,
            &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: reply.code,
                reply_text: reply.text.as_str().into(),
                class_id: reply.class_id,
                method_id: reply.method_id,
            })),
        ))
        .await;
}

async fn start(shared: &Arc<Shared>) {
    shared.state().phase = Phase::StartSent;
    let mut capabilities = FieldTable::default();
    for (name, on) in [
        ("publisher_confirms", true),
        ("basic.nack", true),
        ("consumer_cancel_notify", true),
        ("exchange_exchange_bindings", true),
        ("per_consumer_qos", true),
        ("connection.blocked", true),
        ("authentication_failure_close", true),
        ("consumer_priorities", true),
        ("direct_reply_to", false),
    ] {
        capabilities.insert(name.into(), AMQPValue::Boolean(on));
    }
    let mut properties = FieldTable::default();
    properties.insert("product".into(), long_string("Wharf"));
    properties.insert("version".into(), long_string(env!("CARGO_PKG_VERSION")));
    properties.insert("platform".into(), long_string("Rust"));
    properties.insert(
        "information".into(),
        long_string("AMQP 0-9-1 front end of the Wharf broker"),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    shared
        .send(method_frame(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: properties,
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        ))
        .await;
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

async fn connection_method(
    shared: &Arc<Shared>,
    phase: Phase,
    class: AMQPClass,
) -> Result<(), Reply> {
    let AMQPClass::Connection(method) = class else {
        return Err(Reply::new(
            error_code::COMMAND_INVALID,
            "only connection methods are allowed on channel 0",
        ));
    };
    match (phase, method) {
        (Phase::StartSent, connection::AMQPMethod::StartOk(start_ok)) => {
            login(shared, &start_ok).await?;
            let takes_blocked = takes_blocked(&start_ok.client_properties);
            {
                let mut state = shared.state();
                state.phase = Phase::TuneSent;
                state.takes_blocked = takes_blocked;
            }
            shared
                .send(method_frame(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                        channel_max: CHANNELS_MAX,
                        frame_max: FRAME_BYTES_MAX,
                        heartbeat: HEARTBEAT_SECONDS,
                    })),
                ))
                .await;
            Ok(())
        }
        (Phase::TuneSent, connection::AMQPMethod::TuneOk(tune_ok)) => {
            let frame_max = match tune_ok.frame_max {
                0 => FRAME_BYTES_MAX,
                asked => asked,
            };
            if !(FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&frame_max) {
                return Err(Reply::new(
                    error_code::NOT_ALLOWED,
                    format!(
                        "negotiated frame_max = {frame_max} is outside {FRAME_BYTES_MIN}..={FRAME_BYTES_MAX}"
                    ),
                ));
            }
            shared
                .frame_max
                .store(frame_max, std::sync::atomic::Ordering::Relaxed);
            {
                let mut state = shared.state();
                state.channel_max = match tune_ok.channel_max {
                    0 => CHANNELS_MAX,
                    asked => asked.min(CHANNELS_MAX),
                };
                state.phase = Phase::Tuned;
            }
            shared.start_heartbeats(tune_ok.heartbeat);
            Ok(())
        }
        (Phase::Tuned, connection::AMQPMethod::Open(open)) => {
            if let Some(reason) = shared.refusal() {
                // RabbitMQ refuses a connection over a connection limit here, with 530.
                return Err(Reply::new(error_code::NOT_ALLOWED, reason).on(10, 40));
            }
            if open.virtual_host.as_str() != "/" {
                return Err(Reply::new(
                    error_code::NOT_ALLOWED,
                    format!(
                        "vhost {} not found (wharf serves the one virtual host '/')",
                        open.virtual_host.as_str()
                    ),
                )
                .on(10, 40));
            }
            shared.state().phase = Phase::Open;
            shared
                .send(method_frame(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                ))
                .await;
            Ok(())
        }
        (_, connection::AMQPMethod::Close(_)) => {
            shared.state().phase = Phase::Closing;
            // Exclusive queues are gone and unacknowledged deliveries back in their queues
            // before the client hears close-ok, so its next connection sees that.
            close_all_channels(shared).await;
            shared.broker.close_session(&shared.session).await;
            shared
                .send(method_frame(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ))
                .await;
            shared.close_after_flush().await;
            Ok(())
        }
        (
            Phase::Open,
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
        ) => Ok(()),
        (_, connection::AMQPMethod::UpdateSecret(_)) => Err(Reply::new(
            error_code::NOT_IMPLEMENTED,
            "connection.update-secret is not supported",
        )
        .on(10, 70)),
        (_, method) => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("unexpected method {method:?} on channel 0 at this stage"),
        )),
    }
}

/// True if the client's `capabilities` table has `connection.blocked` set.
fn takes_blocked(client_properties: &FieldTable) -> bool {
    let Some(AMQPValue::FieldTable(capabilities)) = client_properties.inner().get("capabilities")
    else {
        return false;
    };
    matches!(
        capabilities.inner().get("connection.blocked"),
        Some(AMQPValue::Boolean(true))
    )
}

/// A publisher is held by a resource alarm (`blocked` says why, in RabbitMQ's words: "low on
/// disk", "low on memory") or goes on again (`None`): tells a client that takes it with
/// connection.blocked and connection.unblocked, each once, and keeps the heartbeat check
/// from closing a connection whose reads are held.
async fn tell_blocked(shared: &Arc<Shared>, blocked: Option<&'static str>) {
    let reason = blocked;
    let blocked = reason.is_some();
    shared
        .held
        .store(blocked, std::sync::atomic::Ordering::Relaxed);
    let changed = {
        let mut state = shared.state();
        let changed = state.takes_blocked && state.blocked_sent != blocked;
        if changed {
            state.blocked_sent = blocked;
        }
        changed
    };
    if !changed {
        return;
    }
    let method = match reason {
        Some(reason) => connection::AMQPMethod::Blocked(connection::Blocked {
            reason: ShortString::from(reason),
        }),
        None => connection::AMQPMethod::Unblocked(connection::Unblocked {}),
    };
    shared
        .send(method_frame(0, &AMQPClass::Connection(method)))
        .await;
}

/// Checks connection.start-ok's credentials against the broker's users (the core's PLAIN
/// login: the same users and failure limit as every protocol). RabbitMQ's default
/// `guest`/`guest` works from a loopback address while no user exists, unless
/// `amqp_default_guest = false`. A refusal is 403 ACCESS_REFUSED on connection.close
/// (authentication_failure_close), which clients report as an authentication error.
async fn login(shared: &Shared, start_ok: &connection::StartOk) -> Result<(), Reply> {
    let mechanism = start_ok.mechanism.as_str();
    let credentials = match mechanism {
        "PLAIN" => plain_credentials(start_ok.response.as_bytes()),
        "AMQPLAIN" => amqplain_credentials(start_ok.response.as_bytes()),
        other => {
            return Err(Reply::new(
                error_code::ACCESS_REFUSED,
                format!("unsupported authentication mechanism '{other}'; use PLAIN or AMQPLAIN"),
            )
            .on(10, 11))
        }
    };
    let refused = |reason: &str| {
        Reply::new(
            error_code::ACCESS_REFUSED,
            format!(
                "Login was refused using authentication mechanism {mechanism}: {reason}. For details see the broker logfile."
            ),
        )
        .on(10, 11)
    };
    let Some((user, password)) = credentials else {
        tracing::info!(peer = %shared.peer, mechanism, "AMQP login refused: malformed credentials");
        return Err(refused("malformed credentials"));
    };
    let guest = if shared.broker.users_exist() {
        DefaultGuest::Off
    } else {
        shared.default_guest
    };
    match shared
        .broker
        .login_plain(&shared.session, &user, &password, shared.peer, guest)
        .await
    {
        Ok(_) => Ok(()),
        // Over the user's connection limit: refused at connection.open, as RabbitMQ does.
        Err(error @ crate::core::AuthError::ConnectionLimit { .. }) => {
            crate::metrics::AMQP.connection_refused();
            shared.refuse(error.to_string());
            Ok(())
        }
        Err(error) => Err(refused(&error.to_string())),
    }
}

fn plain_credentials(response: &[u8]) -> Option<(String, String)> {
    let plain = wharf_protocol::sasl::parse_plain(response).ok()?;
    Some((plain.user, plain.password))
}

fn amqplain_credentials(response: &[u8]) -> Option<(String, String)> {
    if super::nesting::nesting_bound(response) > super::nesting::NESTING_MAX {
        return None;
    }
    // The response is a field table without its length prefix.
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
    framed.extend_from_slice(response);
    let table =
        std::panic::catch_unwind(|| amq_protocol::types::parsing::parse_field_table(&framed[..]))
            .ok()?
            .ok()?
            .1;
    let text = |key: &str| {
        table
            .inner()
            .iter()
            .find(|(name, _)| name.as_str() == key)
            .and_then(|(_, value)| message::value_text(value))
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

/// While closing, only close and close-ok count.
async fn closing(shared: &Arc<Shared>, request: AmqpRequest) -> Result<(), Reply> {
    let AmqpRequest::Method(0, class) = request else {
        return Ok(());
    };
    match *class {
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
            shared.close_after_flush().await;
        }
        AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
            shared
                .send(method_frame(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ))
                .await;
            shared.close_after_flush().await;
        }
        _ => {}
    }
    Ok(())
}

async fn channel_method(shared: &Arc<Shared>, channel: u16, class: AMQPClass) -> Result<(), Reply> {
    let (class_id, method_id) = ids(&class);
    // channel.open, and the channel's own state.
    let opened = {
        let mut state = shared.state();
        let channel_max = state.channel_max;
        match (&class, state.channels.get(&channel)) {
            (AMQPClass::Channel(channel::AMQPMethod::Open(_)), Some(_)) => {
                return Err(Reply::new(
                    error_code::CHANNEL_ERROR,
                    format!("second 'channel.open' seen on channel {channel}"),
                )
                .on(20, 10));
            }
            (AMQPClass::Channel(channel::AMQPMethod::Open(_)), None) => {
                if channel > channel_max {
                    return Err(Reply::new(
                        error_code::CHANNEL_ERROR,
                        format!("channel {channel} is above channel_max {channel_max}"),
                    )
                    .on(20, 10));
                }
                state.channels.insert(channel, Channel::default());
                true
            }
            (_, None) => {
                return Err(Reply::new(
                    error_code::CHANNEL_ERROR,
                    format!("expected 'channel.open' on channel {channel}"),
                )
                .on(class_id, method_id));
            }
            (AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)), Some(open)) if open.closing => {
                state.channels.remove(&channel);
                return Ok(());
            }
            (AMQPClass::Channel(channel::AMQPMethod::Close(_)), Some(_)) => false,
            (_, Some(open)) if open.closing => return Ok(()),
            (_, Some(open)) if open.content.is_some() => {
                return Err(Reply::new(
                    error_code::UNEXPECTED_FRAME,
                    format!(
                        "expected content header for class 60, got non content header frame instead (method {class_id}.{method_id})"
                    ),
                ));
            }
            (_, Some(_)) => false,
        }
    };
    if opened {
        reply(
            shared,
            channel,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        )
        .await;
        return Ok(());
    }
    let outcome = match class {
        AMQPClass::Channel(method) => channel_class(shared, channel, method).await,
        AMQPClass::Exchange(method) => exchange_class(shared, channel, method).await,
        AMQPClass::Queue(method) => queue_class(shared, channel, method).await,
        AMQPClass::Basic(method) => basic_class(shared, channel, method).await,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
            confirm_select(shared, channel, select).await
        }
        AMQPClass::Access(access::AMQPMethod::Request(_)) => {
            reply(
                shared,
                channel,
                AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
            )
            .await;
            Ok(())
        }
        AMQPClass::Tx(method) => tx_class(shared, channel, method).await,
        AMQPClass::Connection(_) => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("connection method on channel {channel}"),
        )),
        other => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("method {other:?} is not one a client sends"),
        )),
    };
    finish_channel_method(shared, channel, outcome, (class_id, method_id)).await
}

/// confirm.select: every later publish of the channel is confirmed (not in a transaction).
async fn confirm_select(
    shared: &Arc<Shared>,
    channel: u16,
    select: confirm::Select,
) -> Result<(), Reply> {
    if let Some(open) = shared.state().channels.get_mut(&channel) {
        if open.tx.is_some() {
            return Err(Reply::new(
                error_code::PRECONDITION_FAILED,
                "cannot switch from tx to confirm mode",
            ));
        }
        open.confirms.get_or_insert(0);
    }
    if !select.nowait {
        reply(
            shared,
            channel,
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        )
        .await;
    }
    Ok(())
}

/// A channel method's error closes the channel, or for a connection-level code the
/// connection.
async fn finish_channel_method(
    shared: &Arc<Shared>,
    channel: u16,
    outcome: Result<(), Reply>,
    (class_id, method_id): (u16, u16),
) -> Result<(), Reply> {
    match outcome {
        Err(reply) if !reply.is_hard() => {
            fail_channel(shared, channel, reply.on_default(class_id, method_id)).await;
            Ok(())
        }
        Err(reply) => Err(reply.on_default(class_id, method_id)),
        Ok(()) => Ok(()),
    }
}

/// tx.select, commit and rollback. A transaction's publishes and acks are kept in the
/// channel and run at commit, in order: each publish is stored (mandatory returns sent)
/// before the next step, and commit-ok follows the last. Rollback forgets them.
async fn tx_class(shared: &Arc<Shared>, channel: u16, method: tx::AMQPMethod) -> Result<(), Reply> {
    let not_transactional = || {
        Reply::new(
            error_code::PRECONDITION_FAILED,
            "channel is not transactional",
        )
    };
    let answer = match method {
        tx::AMQPMethod::Select(_) => {
            let mut state = shared.state();
            let Some(open) = state.channels.get_mut(&channel) else {
                return Ok(());
            };
            if open.confirms.is_some() {
                return Err(Reply::new(
                    error_code::PRECONDITION_FAILED,
                    "cannot switch from confirm to tx mode",
                ));
            }
            open.tx.get_or_insert_with(Vec::new);
            tx::AMQPMethod::SelectOk(tx::SelectOk {})
        }
        tx::AMQPMethod::Rollback(_) => {
            let mut state = shared.state();
            let Some(open) = state.channels.get_mut(&channel) else {
                return Ok(());
            };
            open.tx.as_mut().ok_or_else(not_transactional)?.clear();
            open.tx_bytes = 0;
            tx::AMQPMethod::RollbackOk(tx::RollbackOk {})
        }
        tx::AMQPMethod::Commit(_) => {
            let steps = {
                let mut state = shared.state();
                let Some(open) = state.channels.get_mut(&channel) else {
                    return Ok(());
                };
                std::mem::take(open.tx.as_mut().ok_or_else(not_transactional)?)
            };
            for step in steps {
                match step {
                    TxStep::Publish(query, properties) => {
                        commit_publish(shared, channel, query, *properties).await?;
                    }
                    TxStep::Settle {
                        delivery_tag,
                        multiple,
                        how,
                        method_id,
                    } => settle(shared, channel, delivery_tag, multiple, how, method_id).await?,
                }
            }
            // The committed publishes are stored: their bodies no longer count (until
            // then they did, as they were still held).
            if let Some(open) = shared.state().channels.get_mut(&channel) {
                open.tx_bytes = 0;
            }
            tx::AMQPMethod::CommitOk(tx::CommitOk {})
        }
        other => {
            return Err(Reply::new(
                error_code::COMMAND_INVALID,
                format!("unexpected {other:?}"),
            ))
        }
    };
    reply(shared, channel, AMQPClass::Tx(answer)).await;
    Ok(())
}

/// One publish of a committing transaction: stored before the commit goes on; a mandatory
/// message no queue took comes back with basic.return.
async fn commit_publish(
    shared: &Arc<Shared>,
    channel: u16,
    query: PublishQuery,
    properties: AMQPProperties,
) -> Result<(), Reply> {
    let exchange = query.exchange.clone();
    let routing_key = query.routing_key.clone();
    let body = query.body.clone();
    let completion = shared
        .broker
        .publish(&shared.session, query)
        .await
        .map_err(|error| error_code::queue(&error, 90, 20))?;
    match completion.await {
        Ok(PublishOutcome::Returned) => {
            let frame_max = shared.frame_max.load(std::sync::atomic::Ordering::Relaxed);
            let returned = Returned {
                channel,
                exchange,
                routing_key,
                properties,
                body,
            };
            shared.send(returned.frames(frame_max)).await;
            Ok(())
        }
        Ok(_) => Ok(()),
        // A full reject-publish queue drops the message, as without confirms.
        Err(QueueError::QueueFull { .. }) => Ok(()),
        Err(error) => Err(error_code::queue(&error, 90, 20)),
    }
}

impl Reply {
    fn on_default(self, class_id: u16, method_id: u16) -> Reply {
        if self.class_id == 0 && self.method_id == 0 {
            self.on(class_id, method_id)
        } else {
            self
        }
    }
}

fn ids(class: &AMQPClass) -> (u16, u16) {
    (class.get_amqp_class_id(), class.get_amqp_method_id())
}

async fn reply(shared: &Shared, channel: u16, class: AMQPClass) {
    shared.send(method_frame(channel, &class)).await;
}

async fn channel_class(
    shared: &Arc<Shared>,
    channel: u16,
    method: channel::AMQPMethod,
) -> Result<(), Reply> {
    match method {
        channel::AMQPMethod::Close(_) => {
            let released = shared
                .state()
                .channels
                .remove(&channel)
                .map(|mut open| release_channel(&mut open))
                .unwrap_or_default();
            release(shared, released).await;
            reply(
                shared,
                channel,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            )
            .await;
            Ok(())
        }
        // RabbitMQ does not pause deliveries on a client's request either.
        channel::AMQPMethod::Flow(flow) if !flow.active => {
            Err(Reply::new(error_code::NOT_IMPLEMENTED, "active=false"))
        }
        channel::AMQPMethod::Flow(flow) => {
            reply(
                shared,
                channel,
                AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: flow.active,
                })),
            )
            .await;
            Ok(())
        }
        channel::AMQPMethod::CloseOk(_) | channel::AMQPMethod::FlowOk(_) => Ok(()),
        other => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("unexpected {other:?}"),
        )),
    }
}

/// The type of exchange to declare: the declared one, or for the delayed-message plugin's
/// `x-delayed-message` its `x-delayed-type` (the core delays any message with `x-delay`).
fn exchange_kind(declare: &exchange::Declare) -> Result<&str, Reply> {
    let kind = declare.kind.as_str();
    if kind != "x-delayed-message" || declare.passive {
        return Ok(kind);
    }
    match declare.arguments.inner().get("x-delayed-type") {
        Some(AMQPValue::LongString(inner)) => std::str::from_utf8(inner.as_bytes()).ok(),
        Some(AMQPValue::ShortString(inner)) => Some(inner.as_str()),
        _ => None,
    }
    .filter(|inner| matches!(*inner, "direct" | "fanout" | "topic" | "headers"))
    .ok_or_else(|| {
        Reply::new(
            error_code::PRECONDITION_FAILED,
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    })
}

async fn exchange_class(
    shared: &Arc<Shared>,
    channel: u16,
    method: exchange::AMQPMethod,
) -> Result<(), Reply> {
    let broker = &shared.broker;
    let session = &shared.session;
    match method {
        exchange::AMQPMethod::Declare(declare) => {
            let name = declare.exchange.as_str().to_string();
            let kind = exchange_kind(&declare)?;
            if declare.passive {
                let info = broker
                    .exchange_info(session, &name)
                    .map_err(|error| error_code::queue(&error, 40, 10))?;
                if info.is_none() && !name.is_empty() {
                    return Err(Reply::new(
                        error_code::NOT_FOUND,
                        format!("no exchange '{name}' in vhost '/'"),
                    ));
                }
            } else {
                if !matches!(kind, "direct" | "fanout" | "topic" | "headers") {
                    return Err(Reply::new(
                        error_code::COMMAND_INVALID,
                        format!("invalid exchange type '{kind}'"),
                    ));
                }
                broker
                    .declare_exchange(session, name, kind, durability(declare.durable))
                    .await
                    .map_err(|error| error_code::queue(&error, 40, 10))?;
            }
            if !declare.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                )
                .await;
            }
            Ok(())
        }
        exchange::AMQPMethod::Delete(delete) => {
            let name = delete.exchange.as_str().to_string();
            let info = broker
                .exchange_info(session, &name)
                .map_err(|error| error_code::queue(&error, 40, 20))?;
            if let Some((_, bindings)) = info {
                if delete.if_unused && bindings > 0 {
                    return Err(Reply::new(
                        error_code::PRECONDITION_FAILED,
                        format!("exchange '{name}' in vhost '/' in use"),
                    ));
                }
                broker
                    .delete_exchange(session, name)
                    .await
                    .map_err(|error| error_code::queue(&error, 40, 20))?;
            }
            if !delete.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                )
                .await;
            }
            Ok(())
        }
        exchange::AMQPMethod::Bind(bind) => {
            if bind.source.as_str().is_empty() || bind.destination.as_str().is_empty() {
                return Err(Reply::new(
                    error_code::ACCESS_REFUSED,
                    "operation not permitted on the default exchange",
                ));
            }
            broker
                .bind_exchange(
                    session,
                    bind.destination.as_str().to_string(),
                    bind.source.as_str().to_string(),
                    bind.routing_key.as_str().to_string(),
                    binding_args(&bind.arguments),
                )
                .await
                .map_err(|error| error_code::queue(&error, 40, 30))?;
            if !bind.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                )
                .await;
            }
            Ok(())
        }
        exchange::AMQPMethod::Unbind(unbind) => {
            broker
                .unbind_exchange(
                    session,
                    unbind.destination.as_str().to_string(),
                    unbind.source.as_str().to_string(),
                    unbind.routing_key.as_str().to_string(),
                    binding_args(&unbind.arguments),
                )
                .await
                .map_err(|error| error_code::queue(&error, 40, 40))?;
            if !unbind.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                )
                .await;
            }
            Ok(())
        }
        other => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("unexpected {other:?}"),
        )),
    }
}

fn durability(durable: bool) -> Durability {
    if durable {
        Durability::Durable
    } else {
        Durability::Transient
    }
}

/// Queue arguments RabbitMQ clients pass, as the core's `key=value` pairs.
fn queue_args(arguments: &FieldTable) -> Result<Vec<(String, String)>, Reply> {
    let mut pairs = Vec::new();
    for (key, value) in arguments {
        let text = message::value_text(value).ok_or_else(|| {
            Reply::new(
                error_code::PRECONDITION_FAILED,
                format!("invalid arg '{}': value of unsupported type", key.as_str()),
            )
        })?;
        let core_key = match key.as_str() {
            "x-message-ttl" => "message-ttl-ms",
            "x-max-length" => "max-length",
            "x-max-length-bytes" => "max-length-bytes",
            "x-overflow" => "overflow",
            "x-dead-letter-exchange" => "dead-letter-exchange",
            "x-dead-letter-routing-key" => "dead-letter-routing-key",
            "x-delivery-limit" => "delivery-limit",
            "x-single-active-consumer" => "single-active-consumer",
            "x-consumer-timeout" => "ack-timeout-ms",
            "x-expires" => "expires-ms",
            "x-max-priority" => "max-priority",
            // RabbitMQ's quorum queues: in a cluster, replicated through a replicated log
            // (three replicas, or the group size asked for); on a lone node a durable queue.
            "x-quorum-initial-group-size" => "replication-factor",
            "x-queue-type" => match text.as_str() {
                // Not replicated: one copy, on its placed node.
                "classic" => {
                    pairs.push(("replication-factor".to_string(), "1".to_string()));
                    continue;
                }
                "quorum" => "queue-type",
                "stream" => {
                    return Err(Reply::new(
                        error_code::PRECONDITION_FAILED,
                        "x-queue-type 'stream' is not served over AMQP: wharf's streams are topics, reached with the Kafka protocol (port 9092) or `wharf produce`/`wharf consume`",
                    ))
                }
                other => {
                    return Err(Reply::new(
                        error_code::PRECONDITION_FAILED,
                        format!("invalid arg 'x-queue-type': '{other}' is not classic, quorum or stream"),
                    ))
                }
            },
            unsupported @ "x-dead-letter-strategy" => {
                return Err(Reply::new(
                    error_code::PRECONDITION_FAILED,
                    format!("queue argument '{unsupported}' is not supported by wharf yet"),
                ))
            }
            // RabbitMQ ignores arguments it does not know (and these tune storage only).
            _ => continue,
        };
        pairs.push((core_key.to_string(), text));
    }
    Ok(pairs)
}

async fn queue_class(
    shared: &Arc<Shared>,
    channel: u16,
    method: queue::AMQPMethod,
) -> Result<(), Reply> {
    let broker = &shared.broker;
    let session = &shared.session;
    match method {
        queue::AMQPMethod::Declare(declare) => {
            let mut name = declare.queue.as_str().to_string();
            if declare.passive {
                if name.is_empty() {
                    return Err(Reply::new(
                        error_code::NOT_FOUND,
                        "no queue '' in vhost '/'",
                    ));
                }
            } else {
                let mut args = queue_args(&declare.arguments)?;
                if declare.exclusive {
                    args.push(("exclusive".to_string(), "true".to_string()));
                }
                if declare.auto_delete {
                    args.push(("auto-delete".to_string(), "true".to_string()));
                }
                // An exclusive queue dies with its connection: stored transiently.
                let durability = durability(declare.durable && !declare.exclusive);
                if name.is_empty() {
                    name = broker
                        .declare_server_named_queue(
                            session,
                            SERVER_NAMED_PREFIX.to_string(),
                            args,
                            durability,
                        )
                        .await
                        .map_err(|error| error_code::queue(&error, 50, 10))?;
                } else {
                    broker
                        .declare_queue(session, name.clone(), args, durability)
                        .await
                        .map_err(|error| error_code::queue(&error, 50, 10))?;
                }
            }
            let stats = match broker.queue_stats(session, &name).await {
                Ok(Some(stats)) => stats,
                Ok(None) => {
                    return Err(Reply::new(
                        error_code::NOT_FOUND,
                        format!("no queue '{name}' in vhost '/'"),
                    ))
                }
                // A caller who may create the queue but not describe it sees no counts.
                Err(QueueError::Unauthorized(_)) if !declare.passive => QueueStats::default(),
                Err(error) => return Err(error_code::queue(&error, 50, 10)),
            };
            broker
                .check_queue_access(session, &name)
                .map_err(|error| error_code::queue(&error, 50, 10))?;
            if !declare.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: name.into(),
                        message_count: saturate(stats.ready),
                        consumer_count: saturate(stats.consumers),
                    })),
                )
                .await;
            }
            Ok(())
        }
        queue::AMQPMethod::Bind(bind) => {
            broker
                .check_queue_access(session, bind.queue.as_str())
                .map_err(|error| error_code::queue(&error, 50, 20))?;
            if bind.exchange.as_str().is_empty() {
                return Err(Reply::new(
                    error_code::ACCESS_REFUSED,
                    format!(
                        "operation not permitted on the default exchange (binding queue '{}')",
                        bind.queue.as_str()
                    ),
                ));
            }
            broker
                .bind_queue(
                    session,
                    bind.queue.as_str().to_string(),
                    bind.exchange.as_str().to_string(),
                    bind.routing_key.as_str().to_string(),
                    binding_args(&bind.arguments),
                )
                .await
                .map_err(|error| error_code::queue(&error, 50, 20))?;
            if !bind.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                )
                .await;
            }
            Ok(())
        }
        queue::AMQPMethod::Unbind(unbind) => {
            broker
                .unbind_queue(
                    session,
                    unbind.queue.as_str().to_string(),
                    unbind.exchange.as_str().to_string(),
                    unbind.routing_key.as_str().to_string(),
                    binding_args(&unbind.arguments),
                )
                .await
                .map_err(|error| error_code::queue(&error, 50, 50))?;
            reply(
                shared,
                channel,
                AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
            )
            .await;
            Ok(())
        }
        queue::AMQPMethod::Purge(purge) => {
            broker
                .check_queue_access(session, purge.queue.as_str())
                .map_err(|error| error_code::queue(&error, 50, 30))?;
            let purged = broker
                .purge_queue(session, purge.queue.as_str())
                .await
                .map_err(|error| error_code::queue(&error, 50, 30))?;
            if !purge.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: saturate(purged),
                    })),
                )
                .await;
            }
            Ok(())
        }
        queue::AMQPMethod::Delete(delete) => {
            let name = delete.queue.as_str();
            broker
                .check_queue_access(session, name)
                .map_err(|error| error_code::queue(&error, 50, 40))?;
            // The conditions are decided in the queue's task (406 "in use", "is not
            // empty"); RabbitMQ answers delete-ok for a queue that does not exist.
            let conditions = DeleteConditions {
                if_unused: delete.if_unused,
                if_empty: delete.if_empty,
            };
            let count = match broker.delete_queue_if(session, name, conditions).await {
                Ok(count) => count,
                Err(QueueError::UnknownQueue(_) | QueueError::Gone(_)) => 0,
                Err(error) => return Err(error_code::queue(&error, 50, 40)),
            };
            if !delete.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: saturate(count),
                    })),
                )
                .await;
            }
            Ok(())
        }
        other => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("unexpected {other:?}"),
        )),
    }
}

fn saturate(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn binding_args(arguments: &FieldTable) -> Vec<(String, String)> {
    arguments
        .inner()
        .iter()
        .filter_map(|(key, value)| Some((key.as_str().to_string(), message::value_text(value)?)))
        .collect()
}

async fn basic_class(
    shared: &Arc<Shared>,
    channel: u16,
    method: basic::AMQPMethod,
) -> Result<(), Reply> {
    match method {
        basic::AMQPMethod::Publish(publish) if publish.immediate => {
            Err(Reply::new(error_code::NOT_IMPLEMENTED, "immediate=true"))
        }
        basic::AMQPMethod::Publish(publish) => {
            if let Some(open) = shared.state().channels.get_mut(&channel) {
                open.content = Some(Content {
                    exchange: publish.exchange.as_str().to_string(),
                    routing_key: publish.routing_key.as_str().to_string(),
                    mandatory: publish.mandatory,
                    header: None,
                    body: Body::Empty,
                });
            }
            Ok(())
        }
        basic::AMQPMethod::Qos(qos) => {
            if let Some(open) = shared.state().channels.get_mut(&channel) {
                if qos.global {
                    open.shared_prefetch
                        .set_limit(u32::from(qos.prefetch_count));
                } else {
                    open.prefetch = qos.prefetch_count;
                }
            }
            reply(
                shared,
                channel,
                AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
            )
            .await;
            Ok(())
        }
        basic::AMQPMethod::Consume(consume) => basic_consume(shared, channel, consume).await,
        basic::AMQPMethod::Cancel(cancel) => {
            let tag = cancel.consumer_tag.as_str().to_string();
            // As RabbitMQ, a cancelled consumer's unacknowledged deliveries stay with the
            // channel, to be acked or nacked; only a consumer holding none is cancelled in
            // the core at once.
            let (slot, holds) = {
                let mut state = shared.state();
                match state.channels.get_mut(&channel) {
                    Some(open) => {
                        let slot = open.consumers.remove(&tag);
                        let holds = slot.as_ref().is_some_and(|slot| {
                            open.unacked.values().any(|held| held.consumer == slot.id)
                        });
                        if let (Some(slot), true) = (&slot, holds) {
                            open.stopped.push((slot.queue.clone(), slot.id));
                        }
                        (slot, holds)
                    }
                    None => (None, false),
                }
            };
            if let Some(slot) = slot {
                // A no-ack consumer is only stopped: deliveries pushed to the client and
                // not yet settled must not go back to the queue; its forwarding task
                // cancels it once its deliveries are settled.
                let _ = if holds || slot.no_ack {
                    shared
                        .broker
                        .stop_consumer(&shared.session, &slot.queue, slot.id)
                        .await
                } else {
                    shared
                        .broker
                        .cancel(&shared.session, &slot.queue, slot.id)
                        .await
                };
            }
            if !cancel.nowait {
                reply(
                    shared,
                    channel,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: tag.into(),
                    })),
                )
                .await;
            }
            Ok(())
        }
        basic::AMQPMethod::Get(get) => basic_get(shared, channel, get).await,
        basic::AMQPMethod::Ack(ack) => {
            settle_or_defer(
                shared,
                channel,
                ack.delivery_tag,
                ack.multiple,
                Settle::Ack,
                80,
            )
            .await
        }
        basic::AMQPMethod::Nack(nack) => {
            settle_or_defer(
                shared,
                channel,
                nack.delivery_tag,
                nack.multiple,
                nack_settle(nack.requeue),
                120,
            )
            .await
        }
        basic::AMQPMethod::Reject(reject) => {
            settle_or_defer(
                shared,
                channel,
                reject.delivery_tag,
                false,
                nack_settle(reject.requeue),
                90,
            )
            .await
        }
        basic::AMQPMethod::Recover(_) | basic::AMQPMethod::RecoverAsync(_) => {
            let is_sync = matches!(method, basic::AMQPMethod::Recover(_));
            // Every unacknowledged delivery of the channel goes back to its queue, marked
            // redelivered (requeue=false is treated as true, as RabbitMQ does).
            let last = shared
                .state()
                .channels
                .get(&channel)
                .map_or(0, |open| open.last_tag);
            if last > 0 {
                settle(shared, channel, 0, true, Settle::Nack(Requeue::Yes), 110).await?;
            }
            if is_sync {
                reply(
                    shared,
                    channel,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                )
                .await;
            }
            Ok(())
        }
        other => Err(Reply::new(
            error_code::COMMAND_INVALID,
            format!("unexpected {other:?}"),
        )),
    }
}

fn nack_settle(requeue: bool) -> Settle {
    Settle::Nack(if requeue { Requeue::Yes } else { Requeue::No })
}

async fn basic_consume(
    shared: &Arc<Shared>,
    channel: u16,
    consume: basic::Consume,
) -> Result<(), Reply> {
    let queue: Arc<str> = Arc::from(consume.queue.as_str());
    let tag = match consume.consumer_tag.as_str() {
        "" => format!("amq.ctag-{}", shared.broker_unique()),
        tag => tag.to_string(),
    };
    let (prefetch, shared_prefetch) = {
        let state = shared.state();
        let Some(open) = state.channels.get(&channel) else {
            return Ok(());
        };
        if open.consumers.contains_key(&tag) {
            return Err(Reply::new(
                error_code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            )
            .on(60, 20));
        }
        if consume.no_ack {
            (0, None)
        } else {
            (
                u32::from(open.prefetch),
                Some(Arc::clone(&open.shared_prefetch)),
            )
        }
    };
    let priority = match consume.arguments.inner().get("x-priority") {
        None => 0,
        Some(value) => message::value_text(value)
            .and_then(|text| text.parse::<i32>().ok())
            .ok_or_else(|| {
                Reply::new(
                    error_code::PRECONDITION_FAILED,
                    "invalid arg 'x-priority': it must be an integer",
                )
            })?,
    };
    let (consumer, events) = shared
        .broker
        .subscribe(
            &shared.session,
            SubscribeQuery {
                queue: queue.to_string(),
                prefetch,
                priority,
                // Decided in the queue's task (403 "in exclusive use").
                exclusive: consume.exclusive,
                shared_prefetch,
            },
        )
        .await
        .map_err(|error| error_code::queue(&error, 60, 20))?;
    if let Some(open) = shared.state().channels.get_mut(&channel) {
        open.consumers.insert(
            tag.clone(),
            ConsumerSlot {
                queue: queue.clone(),
                id: consumer,
                no_ack: consume.no_ack,
            },
        );
    }
    if !consume.nowait {
        reply(
            shared,
            channel,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.as_str().into(),
            })),
        )
        .await;
    }
    let started = shared.flushed_signal().await;
    tokio::spawn(forward_deliveries(
        shared.clone(),
        channel,
        (queue, tag),
        consumer,
        consume.no_ack,
        events,
        started,
    ));
    Ok(())
}

impl Shared {
    /// A unique suffix for consumer tags of this process.
    fn broker_unique(&self) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        format!(
            "{}-{}",
            self.session.id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Pushes a consumer's deliveries as basic.deliver frames once its consume-ok is queued,
/// until the consumer ends; a broker-side cancel (queue deleted, ack timeout) is told to
/// the client with basic.cancel (consumer_cancel_notify). A no-ack consumer is cancelled
/// in the core here, after the last of its pushed deliveries is settled: cancelling it
/// earlier would put pushed deliveries back in the queue (delivered twice).
async fn forward_deliveries(
    shared: Arc<Shared>,
    channel: u16,
    (queue, consumer_tag): (Arc<str>, String),
    consumer: ConsumerId,
    no_ack: bool,
    events: Deliveries,
    started: oneshot::Receiver<()>,
) {
    let _ = started.await;
    push_until_end(
        &shared,
        channel,
        (&queue, &consumer_tag),
        consumer,
        no_ack,
        events,
    )
    .await;
    if no_ack {
        let _ = shared
            .broker
            .cancel(&shared.session, &queue, consumer)
            .await;
    }
}

/// The loop of [`forward_deliveries`].
async fn push_until_end(
    shared: &Arc<Shared>,
    channel: u16,
    (queue, consumer_tag): (&Arc<str>, &str),
    consumer: ConsumerId,
    no_ack: bool,
    mut events: Deliveries,
) {
    let mut frames = super::deliver::DeliverEncoder::new(channel, consumer_tag);
    let tag_short = ShortString::from(consumer_tag);
    while let Some(first) = events.recv_push().await {
        // The runs already waiting go out in one push (one wake-up of the writer), up to
        // DELIVERY_PUSH_BYTES_MAX.
        let mut out = BytesMut::new();
        let mut bytes = 0u64;
        // (channel delivery tag, core tag) of each delivery encoded into `out`.
        let mut encoded: Vec<(u64, DeliveryTag)> = Vec::new();
        let mut next = Some(first);
        while let Some(push) = next.take() {
            let run = match push {
                ConsumerPush::Run(run) => run,
                ConsumerPush::Cancelled(_) => {
                    if !encoded.is_empty() {
                        let pushed =
                            push_deliveries(shared, channel, consumer_tag, out, &encoded).await;
                        if pushed == Pushed::Sent && no_ack {
                            settle_no_ack(shared, queue, consumer, &encoded).await;
                        }
                        if pushed == Pushed::Gone {
                            let back: Vec<DeliveryTag> =
                                encoded.iter().map(|(_, tag)| *tag).collect();
                            requeue(shared, queue, consumer, back).await;
                        }
                    }
                    let removed = shared
                        .state()
                        .channels
                        .get_mut(&channel)
                        .and_then(|open| open.consumers.remove(consumer_tag));
                    if removed.is_some() {
                        let frame = method_frame(
                            channel,
                            &AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                                consumer_tag: tag_short.clone(),
                                nowait: true,
                            })),
                        );
                        let _ = shared.push.send(frame).await;
                    }
                    return;
                }
            };
            // The run's channel tags, taken together under one lock.
            let Some(first_tag) = hold_run(shared, channel, consumer_tag, queue, no_ack, &run)
            else {
                // The consumer went: what was encoded for it and not sent goes back too.
                let mut back: Vec<DeliveryTag> = encoded.iter().map(|(_, tag)| *tag).collect();
                forget_unsent(shared, channel, encoded.iter().map(|(tag, _)| *tag));
                back.extend(run.marks.iter().map(|(tag, _)| *tag));
                return_undelivered(shared, queue, consumer, back, events).await;
                return;
            };
            let frame_max = shared.frame_max.load(std::sync::atomic::Ordering::Relaxed);
            let mut delivery_tag = first_tag;
            for ((tag, redelivered), record) in run.views() {
                let written = record.and_then(|record| {
                    frames.encode(delivery_tag, &record, redelivered, frame_max, &mut out)?;
                    Ok(record.value.map_or(0, <[u8]>::len))
                });
                match written {
                    Ok(body_bytes) => {
                        bytes += body_bytes as u64;
                        encoded.push((delivery_tag, tag));
                        delivery_tag += 1;
                    }
                    Err(error) => {
                        // The store found the record's bounds, so this is damage inside
                        // one record; it and the rest of its run stay unacknowledged at
                        // this consumer and come back when the consumer goes.
                        tracing::warn!(%error, queue = &**queue, "a stored queue message does not decode");
                        break;
                    }
                }
            }
            // The tags of a damaged record and the rest of its run were never sent.
            let unsent = delivery_tag..first_tag + run.marks.len() as u64;
            if !unsent.is_empty() {
                forget_unsent(shared, channel, unsent);
            }
            if out.len() < DELIVERY_PUSH_BYTES_MAX {
                next = events.try_recv_push().ok();
            }
        }
        match push_deliveries(shared, channel, consumer_tag, out, &encoded).await {
            Pushed::Sent => {}
            Pushed::Closed => return,
            Pushed::Gone => {
                let back = encoded.iter().map(|(_, tag)| *tag).collect();
                return_undelivered(shared, queue, consumer, back, events).await;
                return;
            }
        }
        if no_ack {
            settle_no_ack(shared, queue, consumer, &encoded).await;
        }
        // The consumer's byte rate (issue #18): the next deliveries wait out the delay,
        // while the connection keeps reading acks and heartbeats.
        let delay =
            shared
                .broker
                .charge_delivered(&shared.session, crate::core::QuotaKind::Fetch, bytes);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Gives the deliveries of `run` the channel's next delivery tags (consecutive, the first
/// returned) and, unless the consumer acks nothing, holds them as unacknowledged: one
/// lock of the connection's state for the run. `None` if the consumer is gone.
fn hold_run(
    shared: &Shared,
    channel: u16,
    consumer_tag: &str,
    queue: &Arc<str>,
    no_ack: bool,
    run: &DeliveredRun,
) -> Option<u64> {
    let mut state = shared.state();
    let open = state
        .channels
        .get_mut(&channel)
        .filter(|open| open.consumers.contains_key(consumer_tag))?;
    let first_tag = open.last_tag + 1;
    open.last_tag += run.marks.len() as u64;
    if !no_ack {
        for (delivery_tag, (tag, _)) in (first_tag..).zip(&run.marks) {
            open.unacked.insert(
                delivery_tag,
                Held {
                    queue: queue.clone(),
                    consumer: run.consumer,
                    tag: *tag,
                },
            );
        }
    }
    Some(first_tag)
}

/// Most bytes of deliveries gathered into one push to the connection's writer.
const DELIVERY_PUSH_BYTES_MAX: usize = 64 * 1024;

/// What became of a run of encoded deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// In the connection's push queue.
    Sent,
    /// Not sent: the consumer was cancelled (or its channel closed) since they were
    /// encoded; their channel tags are forgotten.
    Gone,
    /// The connection is gone.
    Closed,
}

/// Pushes a run of deliveries if their consumer is still subscribed, checked under the
/// state lock and pushed before it is released (a basic.cancel-ok or channel.close-ok
/// then always follows them); only when the push queue is full is the push awaited after
/// the check.
async fn push_deliveries(
    shared: &Shared,
    channel: u16,
    consumer_tag: &str,
    out: BytesMut,
    encoded: &[(u64, DeliveryTag)],
) -> Pushed {
    let attempt = {
        let state = shared.state();
        let subscribed = state
            .channels
            .get(&channel)
            .is_some_and(|open| !open.closing && open.consumers.contains_key(consumer_tag));
        subscribed.then(|| shared.push.try_send(out))
    };
    match attempt {
        None => {
            forget_unsent(shared, channel, encoded.iter().map(|(tag, _)| *tag));
            Pushed::Gone
        }
        Some(Ok(())) => Pushed::Sent,
        Some(Err(mpsc::error::TrySendError::Full(out))) => {
            if shared.push.send(out).await.is_ok() {
                Pushed::Sent
            } else {
                Pushed::Closed
            }
        }
        Some(Err(mpsc::error::TrySendError::Closed(_))) => Pushed::Closed,
    }
}

/// Removes the channel tags of deliveries that were never sent.
fn forget_unsent(shared: &Shared, channel: u16, delivery_tags: impl IntoIterator<Item = u64>) {
    if let Some(open) = shared.state().channels.get_mut(&channel) {
        for delivery_tag in delivery_tags {
            open.unacked.remove(delivery_tag);
        }
    }
}

/// Settles deliveries sent to a no-ack consumer.
async fn settle_no_ack(
    shared: &Shared,
    queue: &str,
    consumer: ConsumerId,
    encoded: &[(u64, DeliveryTag)],
) {
    for (_, tag) in encoded {
        let _ = shared
            .broker
            .settle(
                &shared.session,
                SettleQuery {
                    queue: queue.to_string(),
                    consumer,
                    tag: *tag,
                    scope: AckScope::Single,
                    settle: Settle::Ack,
                },
            )
            .await;
    }
}

/// Deliveries that reached a consumer after it was cancelled (or its channel closed) were
/// never sent: they go back to the queue (counted as delivered once more).
async fn return_undelivered(
    shared: &Shared,
    queue: &str,
    consumer: ConsumerId,
    mut tags: Vec<DeliveryTag>,
    mut events: Deliveries,
) {
    while let Some(push) = events.recv_push().await {
        if let ConsumerPush::Run(run) = push {
            tags.extend(run.marks.iter().map(|(tag, _)| *tag));
        }
    }
    requeue(shared, queue, consumer, tags).await;
}

/// Puts deliveries that were never sent back in their queue, at their places.
async fn requeue(shared: &Shared, queue: &str, consumer: ConsumerId, tags: Vec<DeliveryTag>) {
    for tag in tags {
        // A consumer cancelled in the core has returned them already.
        let _ = shared
            .broker
            .settle(
                &shared.session,
                SettleQuery {
                    queue: queue.to_string(),
                    consumer,
                    tag,
                    scope: AckScope::Single,
                    settle: Settle::Nack(Requeue::Yes),
                },
            )
            .await;
    }
}

async fn basic_get(shared: &Arc<Shared>, channel: u16, get: basic::Get) -> Result<(), Reply> {
    let queue = get.queue.as_str();
    // With an ack to come the message is delivered to the channel's holder for the queue,
    // so a reject dead-letters it and a closed channel returns it, as for a consumer.
    let mode = if get.no_ack {
        GetMode::Ack
    } else {
        let mut state = shared.state();
        let Some(open) = state.channels.get_mut(&channel) else {
            return Ok(());
        };
        let holder = *open
            .holders
            .entry(Arc::from(queue))
            .or_insert_with(|| shared.broker.new_holder(&shared.session, queue));
        GetMode::Hold(holder)
    };
    let got = shared
        .broker
        .queue_get(&shared.session, queue, 1, mode)
        .await
        .map_err(|error| error_code::queue(&error, 60, 70))?;
    let Some(message) = got.into_iter().next() else {
        reply(
            shared,
            channel,
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        )
        .await;
        return Ok(());
    };
    let remaining = shared
        .broker
        .queue_stats(&shared.session, queue)
        .await
        .ok()
        .flatten()
        .map_or(0, |stats| saturate(stats.ready));
    let (properties, exchange) =
        message::properties_from_headers(&message.record.headers, message.record.timestamp_ms);
    let (routing_key, body) = message::key_and_body(&message.record);
    let delivery_tag = {
        let mut state = shared.state();
        let Some(open) = state.channels.get_mut(&channel) else {
            return Ok(());
        };
        open.last_tag += 1;
        if let (GetMode::Hold(consumer), Some(tag)) = (mode, message.tag) {
            open.unacked.insert(
                open.last_tag,
                Held {
                    queue: Arc::from(queue),
                    consumer,
                    tag,
                },
            );
        }
        open.last_tag
    };
    let mut out = method_frame(
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag,
            redelivered: message.redelivered,
            exchange: message::short_string(exchange),
            routing_key: message::short_string(routing_key),
            message_count: remaining,
        })),
    );
    let frame_max = shared.frame_max.load(std::sync::atomic::Ordering::Relaxed);
    message::encode_content(
        channel,
        properties,
        &body,
        frame_max,
        &mut out,
        &mut Vec::new(),
    );
    shared.send(out).await;
    Ok(())
}

/// basic.ack, nack and reject: kept for tx.commit in a transaction, settled now otherwise.
async fn settle_or_defer(
    shared: &Arc<Shared>,
    channel: u16,
    delivery_tag: u64,
    multiple: bool,
    how: Settle,
    method_id: u16,
) -> Result<(), Reply> {
    {
        let mut state = shared.state();
        if let Some(steps) = state
            .channels
            .get_mut(&channel)
            .and_then(|open| open.tx.as_mut())
        {
            steps.push(TxStep::Settle {
                delivery_tag,
                multiple,
                how,
                method_id,
            });
            return Ok(());
        }
    }
    settle(shared, channel, delivery_tag, multiple, how, method_id).await
}

/// basic.ack, nack and reject: channel delivery tags (one, or every one up to the tag; 0
/// with `multiple` means all) to the core's per-consumer tags.
async fn settle(
    shared: &Arc<Shared>,
    channel: u16,
    delivery_tag: u64,
    multiple: bool,
    how: Settle,
    method_id: u16,
) -> Result<(), Reply> {
    let (held, finished) = {
        let mut state = shared.state();
        let Some(open) = state.channels.get_mut(&channel) else {
            return Ok(());
        };
        let held = settled_held(open, delivery_tag, multiple, method_id)?;
        // Stopped consumers that now hold nothing are done with.
        let mut finished = Vec::new();
        open.stopped.retain(|(queue, consumer)| {
            let holds = open.unacked.values().any(|held| held.consumer == *consumer);
            if !holds {
                finished.push((queue.clone(), *consumer));
            }
            holds
        });
        (held, finished)
    };
    settle_in_core(shared, held, multiple, how, method_id).await?;
    for (queue, consumer) in finished {
        let _ = shared
            .broker
            .cancel(&shared.session, &queue, consumer)
            .await;
    }
    Ok(())
}

/// Takes the held deliveries a settlement of `delivery_tag` covers out of the channel.
fn settled_held(
    open: &mut Channel,
    delivery_tag: u64,
    multiple: bool,
    method_id: u16,
) -> Result<Vec<Held>, Reply> {
    Ok({
        if multiple {
            let upto = if delivery_tag == 0 {
                u64::MAX
            } else {
                delivery_tag
            };
            let held = open.unacked.take_up_to(upto);
            if held.is_empty() && delivery_tag != 0 && delivery_tag > open.last_tag {
                return Err(unknown_tag(delivery_tag, method_id));
            }
            held
        } else {
            match open.unacked.remove(delivery_tag) {
                Some(held) => vec![held],
                None => return Err(unknown_tag(delivery_tag, method_id)),
            }
        }
    })
}

/// Settles held deliveries in the core.
async fn settle_in_core(
    shared: &Shared,
    held: Vec<Held>,
    multiple: bool,
    how: Settle,
    method_id: u16,
) -> Result<(), Reply> {
    // Per consumer, the highest core tag settles every earlier one with `Multiple` (a
    // consumer's tags grow with the channel's).
    let mut groups: Vec<(Arc<str>, ConsumerId, DeliveryTag, usize)> = Vec::new();
    for Held {
        queue,
        consumer,
        tag,
    } in held
    {
        match groups
            .iter_mut()
            .find(|(q, c, _, _)| *c == consumer && **q == *queue)
        {
            Some(group) => {
                group.2 = tag;
                group.3 += 1;
            }
            None => groups.push((queue, consumer, tag, 1)),
        }
    }
    for (queue, consumer, tag, count) in groups {
        let query = SettleQuery {
            queue: queue.to_string(),
            consumer,
            tag,
            scope: if count > 1 || multiple {
                AckScope::Multiple
            } else {
                AckScope::Single
            },
            settle: how,
        };
        // The durability of a settlement is not awaited: AMQP answers nothing to an ack.
        if let Err(error) = shared.broker.settle(&shared.session, query).await {
            if !matches!(
                error,
                QueueError::UnknownDeliveryTag(_) | QueueError::Gone(_)
            ) {
                return Err(error_code::queue(&error, 60, method_id));
            }
        }
    }
    Ok(())
}

fn unknown_tag(delivery_tag: u64, method_id: u16) -> Reply {
    Reply::new(
        error_code::PRECONDITION_FAILED,
        format!("unknown delivery tag {delivery_tag}"),
    )
    .on(60, method_id)
}

async fn content_header(
    shared: &Arc<Shared>,
    channel: u16,
    header: AMQPContentHeader,
) -> Result<(), Reply> {
    let ready = {
        let mut state = shared.state();
        // This channel's body is not counted yet: it has no header.
        let buffered = state.buffered_bytes();
        let Some(open) = state.channels.get_mut(&channel) else {
            return Err(Reply::new(
                error_code::CHANNEL_ERROR,
                format!("content header on channel {channel}, which is not open"),
            ));
        };
        if open.closing {
            return Ok(());
        }
        let Some(content) = open
            .content
            .as_mut()
            .filter(|content| content.header.is_none())
        else {
            return Err(Reply::new(
                error_code::UNEXPECTED_FRAME,
                format!("content header on channel {channel} without a basic.publish"),
            ));
        };
        if header.class_id != 60 {
            return Err(Reply::new(
                error_code::FRAME_ERROR,
                format!("content header of class {} (not basic)", header.class_id),
            ));
        }
        if header.body_size > u64::from(shared.body_bytes_max) {
            open.content = None;
            Err(header.body_size)
        } else if buffered.saturating_add(header.body_size) > shared.buffer_bytes_max {
            // Counted at the declared size, before a byte of the body is held, so the
            // connection never makes the broker hold more than the cap.
            return Err(Reply::new(
                error_code::RESOURCE_ERROR,
                format!(
                    "connection buffers {buffered} body bytes across its channels (partly received messages and open transactions); a body of {} would pass amqp_connection_buffer_bytes_max {}",
                    header.body_size, shared.buffer_bytes_max
                ),
            ));
        } else {
            content.header = Some((header.body_size, header.properties));
            Ok(header.body_size == 0)
        }
    };
    match ready {
        Ok(true) => publish(shared, channel).await?,
        Ok(false) => {}
        Err(size) => {
            let reply = Reply::new(
                error_code::PRECONDITION_FAILED,
                format!(
                    "message size {size} is larger than configured max size {}",
                    shared.body_bytes_max
                ),
            );
            fail_channel(shared, channel, reply.on(60, 40)).await;
        }
    }
    Ok(())
}

async fn content_body(shared: &Arc<Shared>, channel: u16, chunk: Bytes) -> Result<(), Reply> {
    let complete = {
        let mut state = shared.state();
        let Some(open) = state.channels.get_mut(&channel) else {
            return Err(Reply::new(
                error_code::CHANNEL_ERROR,
                format!("content body on channel {channel}, which is not open"),
            ));
        };
        if open.closing {
            return Ok(());
        }
        let Some(content) = open.content.as_mut() else {
            return Err(Reply::new(
                error_code::UNEXPECTED_FRAME,
                format!("content body on channel {channel} without a basic.publish"),
            ));
        };
        let Some((expected, _)) = content.header else {
            return Err(Reply::new(
                error_code::UNEXPECTED_FRAME,
                format!("content body on channel {channel} before its content header"),
            ));
        };
        let total = content.body.len() as u64 + chunk.len() as u64;
        if total > expected {
            return Err(Reply::new(
                error_code::FRAME_ERROR,
                format!("content body of {total} bytes exceeds the {expected} bytes its header declared"),
            ));
        }
        content.body.push(chunk);
        total == expected
    };
    if complete {
        publish(shared, channel).await?;
    }
    Ok(())
}

/// A whole message arrived: publish it through the core; confirm and return as RabbitMQ.
async fn publish(shared: &Arc<Shared>, channel: u16) -> Result<(), Reply> {
    let started = {
        let mut state = shared.state();
        let Some(open) = state.channels.get_mut(&channel) else {
            return Ok(());
        };
        let Some(content) = open.content.take() else {
            return Ok(());
        };
        Started {
            content,
            sequence: open.next_confirm(),
            in_tx: open.tx.is_some(),
        }
    };
    publish_content(shared, channel, started).await
}

/// Stores (or holds back for the next flush, or adds to the open transaction) a publish
/// whose content is complete.
async fn publish_content(
    shared: &Arc<Shared>,
    channel: u16,
    started: Started,
) -> Result<(), Reply> {
    let Started {
        content,
        sequence,
        in_tx,
    } = started;
    let Content {
        exchange,
        routing_key,
        mandatory,
        header,
        body,
    } = content;
    let properties = header.map(|(_, properties)| properties).unwrap_or_default();
    let headers = match message::headers_from_properties(&properties) {
        Ok(headers) => headers,
        Err(message::BadProperty(detail)) => {
            fail_channel(
                shared,
                channel,
                Reply::new(error_code::PRECONDITION_FAILED, detail).on(60, 40),
            )
            .await;
            return Ok(());
        }
    };
    let query = PublishQuery {
        exchange,
        routing_key,
        mandatory: if mandatory {
            Mandatory::Return
        } else {
            Mandatory::Drop
        },
        headers,
        body: body.into_bytes(),
    };
    if in_tx {
        let mut state = shared.state();
        if let Some(open) = state.channels.get_mut(&channel) {
            open.tx_bytes = open.tx_bytes.saturating_add(query.body.len() as u64);
            if let Some(steps) = open.tx.as_mut() {
                steps.push(TxStep::Publish(query, Box::new(properties)));
            }
        }
        return Ok(());
    }
    // Only a returned message needs its properties again, and only a mandatory one can be.
    let properties = mandatory.then(|| Box::new(properties));
    if shared.broker.publish_batchable(&shared.session, &query) {
        // The default exchange routes to the queue the key names or drops (or returns) the
        // message; with the write allowed and no delay to check it is not refused: such
        // publishes go to the core together (one routing pass, one command per queue for
        // the run) without a later one being stored after an earlier one closed its channel.
        let full = {
            let mut state = shared.state();
            state.pending.push(PendingPublish {
                channel,
                sequence,
                query,
                properties,
            });
            state.pending.len() >= PENDING_PUBLISHES_MAX
        };
        if full {
            flush_publishes(shared).await;
        }
        return Ok(());
    }
    flush_publishes(shared).await;
    let answer = Answer::of(channel, sequence, &query, properties);
    let held = shared.broker.alarms().reason();
    if held.is_some() {
        tell_blocked(shared, held).await;
    }
    let published = shared.broker.publish(&shared.session, query).await;
    if held.is_some() {
        tell_blocked(shared, None).await;
    }
    match published {
        Ok(completion) => answer_publish(shared, answer, completion).await,
        Err(error) => fail_channel(shared, channel, error_code::queue(&error, 60, 40)).await,
    }
    Ok(())
}

/// What a publish's answer needs besides its completion.
struct Answer {
    channel: u16,
    sequence: Option<u64>,
    mandatory: bool,
    exchange: String,
    routing_key: String,
    /// A mandatory publish's properties (nothing else can be returned).
    properties: Option<Box<AMQPProperties>>,
    body: Bytes,
}

impl Answer {
    /// The answer `query` gets; what only a return needs is kept for a mandatory one only.
    fn of(
        channel: u16,
        sequence: Option<u64>,
        query: &PublishQuery,
        properties: Option<Box<AMQPProperties>>,
    ) -> Answer {
        let mandatory = query.mandatory == Mandatory::Return;
        Answer {
            channel,
            sequence,
            mandatory,
            exchange: if mandatory {
                query.exchange.clone()
            } else {
                String::new()
            },
            routing_key: if mandatory {
                query.routing_key.clone()
            } else {
                String::new()
            },
            properties,
            body: if mandatory {
                query.body.clone()
            } else {
                Bytes::new()
            },
        }
    }
}

/// Hands the publishes held back to the core together (one [`Broker::publish_batch`]), in
/// order, and queues their answers; a refused one (a race: an ACL or the queue changed
/// since it was held back) closes its channel, and the rest of its channel's run gets no
/// answer.
pub(crate) async fn flush_publishes(shared: &Arc<Shared>) {
    for (channel, reply) in publish_pending(shared).await {
        close_channel(shared, channel, reply).await;
    }
}

/// [`flush_publishes`] but the channel closes: returned, for the caller to send.
async fn publish_pending(shared: &Arc<Shared>) -> Vec<(u16, Reply)> {
    let pending = std::mem::take(&mut shared.state().pending);
    if pending.is_empty() {
        return Vec::new();
    }
    let held = shared.broker.alarms().reason();
    if held.is_some() {
        tell_blocked(shared, held).await;
    }
    let mut answers = Vec::with_capacity(pending.len());
    let mut queries = Vec::with_capacity(pending.len());
    for publish in pending {
        answers.push(Answer::of(
            publish.channel,
            publish.sequence,
            &publish.query,
            publish.properties,
        ));
        queries.push(publish.query);
    }
    let published = shared.broker.publish_batch(&shared.session, queries).await;
    if held.is_some() {
        tell_blocked(shared, None).await;
    }
    let mut refused: Vec<(u16, Reply)> = Vec::new();
    // The publishes to answer, with their places in the batch.
    let mut answered = Vec::with_capacity(answers.len());
    for (place, (answer, refusal)) in answers.into_iter().zip(published.refused).enumerate() {
        if refused
            .iter()
            .any(|(channel, _)| *channel == answer.channel)
        {
            continue;
        }
        match refusal {
            None if answer.sequence.is_some() || answer.mandatory => answered.push((place, answer)),
            // Nothing to answer: the message is in its queues' command channels already.
            None => {}
            Some(error) => refused.push((answer.channel, error_code::queue(&error, 60, 40))),
        }
    }
    if !answered.is_empty() {
        let frame_max = shared.frame_max.load(std::sync::atomic::Ordering::Relaxed);
        let completion = published.completion;
        shared
            .send_later(Box::pin(async move {
                let mut outcomes: Vec<Option<Result<PublishOutcome, QueueError>>> =
                    completion.await.into_iter().map(Some).collect();
                let laters: Vec<Later> = answered
                    .into_iter()
                    .filter_map(|(place, answer)| {
                        let outcome = outcomes.get_mut(place).and_then(Option::take)?;
                        publish_later(answer, outcome, frame_max)
                    })
                    .collect();
                (!laters.is_empty()).then_some(Later::Many(laters))
            }))
            .await;
    }
    refused
}

/// Queues the answer a stored (or returned) publish gets: nothing outside confirm mode
/// unless it was returned, else its basic.return and its ack or nack, in publish order.
async fn answer_publish(shared: &Arc<Shared>, answer: Answer, completion: PublishCompletion) {
    if answer.sequence.is_none() && !answer.mandatory {
        // Nothing to answer: the message is in its queues' command channels already.
        drop(completion);
        return;
    }
    let frame_max = shared.frame_max.load(std::sync::atomic::Ordering::Relaxed);
    shared
        .send_later(Box::pin(async move {
            publish_later(answer, completion.await, frame_max)
        }))
        .await;
}

/// The answer a publish gets once `outcome` is known: its confirm (merged with its
/// neighbours' by the sequencer), or its basic.return and its ack or nack; `None`: nothing.
fn publish_later(
    answer: Answer,
    outcome: Result<PublishOutcome, QueueError>,
    frame_max: u32,
) -> Option<Later> {
    let Answer {
        channel,
        sequence,
        mandatory: _,
        exchange,
        routing_key,
        properties,
        body,
    } = answer;
    if let (Some(delivery_tag), Ok(PublishOutcome::Routed(_) | PublishOutcome::Dropped)) =
        (sequence, &outcome)
    {
        return Some(Later::Ack {
            channel,
            delivery_tag,
        });
    }
    let mut out = BytesMut::new();
    if matches!(outcome, Ok(PublishOutcome::Returned)) {
        let returned = Returned {
            channel,
            exchange,
            routing_key,
            properties: properties.map(|properties| *properties).unwrap_or_default(),
            body,
        };
        out = returned.frames(frame_max);
    }
    if let Some(delivery_tag) = sequence {
        let method = match outcome {
            Ok(_) => basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple: false,
            }),
            Err(_) => basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag,
                multiple: false,
                requeue: false,
            }),
        };
        out.extend_from_slice(&method_frame(channel, &AMQPClass::Basic(method)));
    }
    (!out.is_empty()).then_some(Later::Frames(out))
}

/// A mandatory message no queue took, to hand back.
struct Returned {
    channel: u16,
    exchange: String,
    routing_key: String,
    properties: AMQPProperties,
    body: Bytes,
}

impl Returned {
    /// Its basic.return (312 NO_ROUTE, as RabbitMQ) and content frames.
    fn frames(self, frame_max: u32) -> BytesMut {
        let mut out = method_frame(
            self.channel,
            &AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: self.exchange.into(),
                routing_key: self.routing_key.into(),
            })),
        );
        message::encode_content(
            self.channel,
            self.properties,
            &self.body,
            frame_max,
            &mut out,
            &mut Vec::new(),
        );
        out
    }
}

/// What a closing channel leaves to release: its consumers and basic.get holders.
#[derive(Debug, Default)]
pub(crate) struct Released {
    consumers: Vec<(Arc<str>, ConsumerId)>,
    /// No-ack consumers: stopped here, ended by their forwarding tasks.
    no_ack: Vec<(Arc<str>, ConsumerId)>,
}

fn release_channel(open: &mut Channel) -> Released {
    let (no_ack, acking): (Vec<ConsumerSlot>, Vec<ConsumerSlot>) = open
        .consumers
        .drain()
        .map(|(_, slot)| slot)
        .partition(|slot| slot.no_ack);
    let consumers = acking
        .into_iter()
        .map(|slot| (slot.queue, slot.id))
        .chain(open.holders.drain())
        .chain(open.stopped.drain(..))
        .collect();
    let no_ack = no_ack
        .into_iter()
        .map(|slot| (slot.queue, slot.id))
        .collect();
    open.unacked.clear();
    open.content = None;
    Released { consumers, no_ack }
}

/// Cancels the consumers and holders: their unacknowledged deliveries and basic.get
/// messages return to their queues at their places, marked redelivered. No-ack consumers
/// are stopped instead; their forwarding tasks end them after settling what they pushed.
async fn release(shared: &Shared, released: Released) {
    for (queue, consumer) in released.consumers {
        let _ = shared
            .broker
            .cancel(&shared.session, &queue, consumer)
            .await;
    }
    for (queue, consumer) in released.no_ack {
        let _ = shared
            .broker
            .stop_consumer(&shared.session, &queue, consumer)
            .await;
    }
}

/// The connection ended: release every channel.
pub(crate) async fn close_all_channels(shared: &Arc<Shared>) {
    let released: Vec<Released> = shared
        .state()
        .channels
        .drain()
        .map(|(_, mut open)| release_channel(&mut open))
        .collect();
    for released in released {
        release(shared, released).await;
    }
}
