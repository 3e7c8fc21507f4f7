//! One pipelined TCP connection to one broker.
//!
//! [`Connection::open`] connects, performs the ApiVersions handshake on the bare socket, then
//! splits the socket between two tasks: a writer that drains a bounded channel of encoded
//! frames (coalescing whatever is queued into one flush), and a reader that splits the byte
//! stream into frames and hands each response to the caller waiting on its correlation id
//! through a `oneshot`. Many requests may be in flight; a semaphore bounds how many.
//!
//! Server pushes (`Deliver` frames) are not responses: they carry the correlation id of the
//! Subscribe request that started their consumer, may arrive at any time (even before the
//! Subscribe response), and are never answered. The reader routes them to a bounded
//! per-subscription channel registered with the Subscribe request
//! ([`Connection::begin_with_pushes`]) and never mistakes them for a response.
//!
//! Invariants: a pending entry (and a subscription's push channel) is registered before its
//! frame can reach the socket, so neither a response nor a push can arrive for an unknown
//! request; once the connection is closed every
//! pending caller gets an error and new callers are refused, so nobody waits forever; the
//! pending map's lock is never held across an `.await`; requests one caller starts one after
//! another ([`Connection::begin`]) reach the socket in that order, because the writer drains
//! one FIFO channel. Reconnecting is not this module's job: [`crate::cluster`] replaces a
//! closed connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use wharf_protocol::api::{encode_request, encode_request_at, sent_version};
use wharf_protocol::frame::decode_frame;
use wharf_protocol::messages::{
    Acks, ApiVersionRange, ApiVersionsRequest, ConsumerCancelledPush, DeliverBatchPush,
    DeliverPush, DeliveryMark, ProduceRequest,
};
use wharf_protocol::{ApiKey, Request, Response};

use crate::error::{check_code, Error, Result};
use crate::tls::{self, Tls};

/// Bytes read from the socket per `read` call at most; frames larger than this are
/// assembled over several reads.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Frames the writer coalesces into one flush at most, so one busy caller cannot delay
/// the flush of the others' frames without bound.
const WRITE_COALESCE_FRAMES_MAX: usize = 64;

/// Settings of one connection, taken from [`crate::ClientConfig`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectionOptions {
    pub(crate) client_id: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) in_flight_requests_max: usize,
    pub(crate) frame_bytes_max: u32,
    pub(crate) tls: Option<Tls>,
    /// Who to log in as after the handshake (none: anonymous).
    pub(crate) credentials: Option<crate::auth::Credentials>,
}

/// A live, handshaken connection.
#[derive(Debug)]
pub(crate) struct Connection {
    address: String,
    options: ConnectionOptions,
    broker_apis: Vec<ApiVersionRange>,
    outgoing: mpsc::Sender<Outgoing>,
    pending: Arc<Pending>,
    in_flight: Arc<Semaphore>,
    next_correlation_id: AtomicU32,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

/// A frame on its way to the writer task.
#[derive(Debug)]
struct Outgoing {
    frame: Bytes,
    correlation_id: u32,
    expects_response: bool,
}

/// A caller waiting for the answer to `correlation_id`.
#[derive(Debug)]
struct Waiter {
    api_key: ApiKey,
    reply: oneshot::Sender<Result<Option<Response>>>,
}

/// The callers waiting for responses, and why the connection closed once it has.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<PendingState>,
    /// The broker's last ConnectionBlocked push said its disk alarm holds this
    /// connection's publishes.
    blocked: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct PendingState {
    waiters: HashMap<u32, Waiter>,
    /// Push channels of live subscriptions, by the correlation id of their Subscribe.
    pushes: HashMap<u32, PushSender>,
    closed: Option<Error>,
}

/// Deliveries pushed to one subscription, in the order the broker sent them. Ends (`None`)
/// when the subscription is stopped, the broker cancelled the consumer (then
/// [`PushReceiver::cancelled`] says why) or the connection closes.
#[derive(Debug)]
pub(crate) struct PushReceiver {
    deliveries: mpsc::Receiver<Pushed>,
    /// Set once, by the broker's ConsumerCancelled push; the sender goes with the
    /// subscription's entry, so a waiter also learns when no reason can come any more.
    cancelled: watch::Receiver<Option<ConsumerCancelledPush>>,
}

/// The connection's end of a [`PushReceiver`].
#[derive(Debug)]
struct PushSender {
    deliveries: mpsc::Sender<Pushed>,
    cancelled: watch::Sender<Option<ConsumerCancelledPush>>,
}

/// What a subscription's channel carries: one delivery (a `Deliver` push) or several (a
/// `DeliverBatch` push, from a Subscribe at version 1).
#[derive(Debug)]
pub(crate) enum Pushed {
    One(DeliverPush),
    /// The records of a `DeliverBatch`, decoded by the connection's reader, with their marks.
    Batch(Vec<(DeliveryMark, wharf_protocol::batch::Record)>),
}

/// Decodes a `DeliverBatch` push's records, one per mark.
///
/// # Errors
/// [`Error::Decode`] when the records do not match the marks or one is malformed: the push
/// is undecodable and the connection must close.
fn batch_deliveries(
    pushed: DeliverBatchPush,
) -> Result<Vec<(DeliveryMark, wharf_protocol::batch::Record)>> {
    let refused = |_| {
        Error::Decode(wharf_protocol::DecodeError::InvalidLength {
            field: "DeliverBatch records",
            length: i64::try_from(pushed.records.len()).unwrap_or(i64::MAX),
        })
    };
    let records = pushed
        .records()
        .collect::<std::result::Result<Vec<wharf_protocol::batch::Record>, _>>()
        .map_err(refused)?;
    Ok(pushed.marks.into_iter().zip(records).collect())
}

/// A push channel whose delivery part holds `capacity` (at least 1).
fn push_channel(capacity: usize) -> (PushSender, PushReceiver) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let (cancelled_sender, cancelled_receiver) = watch::channel(None);
    (
        PushSender {
            deliveries: sender,
            cancelled: cancelled_sender,
        },
        PushReceiver {
            deliveries: receiver,
            cancelled: cancelled_receiver,
        },
    )
}

impl PushReceiver {
    /// The next delivery; `None` once the channel ended and is drained.
    pub(crate) async fn recv(&mut self) -> Option<Pushed> {
        self.deliveries.recv().await
    }

    /// A delivery already received, if any.
    pub(crate) fn try_recv(&mut self) -> std::result::Result<Pushed, mpsc::error::TryRecvError> {
        self.deliveries.try_recv()
    }

    /// Stops the channel: deliveries already in it can still be taken.
    pub(crate) fn close(&mut self) {
        self.deliveries.close();
    }

    /// Why the broker cancelled the consumer, once it did.
    pub(crate) fn cancelled(&self) -> Option<ConsumerCancelledPush> {
        self.cancelled.borrow().clone()
    }

    /// Why the broker cancelled the consumer, waiting for its push if it has not come yet;
    /// `None` once the subscription ended without one (stopped, or the connection closed).
    pub(crate) async fn wait_cancelled(&mut self) -> Option<ConsumerCancelledPush> {
        let reason = self.cancelled.wait_for(Option::is_some).await.ok()?;
        (*reason).clone()
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // A panic while holding this lock cannot leave the map half-updated (each
        // operation is one insert or remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `waiter`, and `push` for the deliveries of a subscription, under one lock,
    /// so a push that overtakes the response already finds its channel.
    fn insert(&self, correlation_id: u32, waiter: Waiter, push: Option<PushSender>) -> Result<()> {
        let mut state = self.lock();
        if let Some(error) = &state.closed {
            return Err(error.clone());
        }
        state.waiters.insert(correlation_id, waiter);
        if let Some(push) = push {
            state.pushes.insert(correlation_id, push);
        }
        Ok(())
    }

    /// Hands `pushed` to the subscription of `correlation_id`. A push for a stopped
    /// subscription is dropped (the broker returns it to the queue when the consumer is
    /// cancelled).
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the subscription's channel is full: its capacity is the
    /// prefetch window, so the broker pushed more unacknowledged deliveries than allowed.
    fn push(&self, correlation_id: u32, pushed: Pushed) -> Result<()> {
        let mut state = self.lock();
        let Some(sender) = state.pushes.get(&correlation_id) else {
            return Ok(());
        };
        match sender.deliveries.try_send(pushed) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.pushes.remove(&correlation_id);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::InvalidState {
                reason: "broker pushed more deliveries than the prefetch window allows",
            }),
        }
    }

    /// The broker cancelled the consumer of subscription `correlation_id`: records why and
    /// ends its channel (deliveries already in it stay readable).
    fn cancelled(&self, correlation_id: u32, cancelled: ConsumerCancelledPush) {
        if let Some(sender) = self.lock().pushes.remove(&correlation_id) {
            sender.cancelled.send_replace(Some(cancelled));
        }
    }

    fn stop_pushes(&self, correlation_id: u32) {
        self.lock().pushes.remove(&correlation_id);
    }

    fn take(&self, correlation_id: u32) -> Option<Waiter> {
        self.lock().waiters.remove(&correlation_id)
    }

    /// Marks the connection closed and fails every waiter with `error`.
    fn close(&self, error: Error) {
        let waiters: Vec<Waiter> = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(error.clone());
            }
            // Dropping the senders ends every subscription's stream.
            state.pushes.clear();
            state.waiters.drain().map(|(_, waiter)| waiter).collect()
        };
        for waiter in waiters {
            // The caller may have given up already; nothing to tell it then.
            let _ = waiter.reply.send(Err(error.clone()));
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }
}

impl Connection {
    /// Connects to `address`, performs the handshake and starts the reader and writer.
    ///
    /// # Errors
    /// [`Error::Connect`] if the TCP connection fails or times out, the handshake's
    /// errors otherwise.
    pub(crate) async fn open(address: &str, options: ConnectionOptions) -> Result<Connection> {
        let connect_error = |source: std::io::Error| Error::Connect {
            address: address.to_string(),
            source: Arc::new(source),
        };
        let mut stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(connect_error)?;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true).map_err(connect_error)?;
        // A broker that accepts but never answers is as unreachable as one that refuses.
        let timed_out = || {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timed out",
            ))
        };
        let Some(tls) = options.tls.clone() else {
            let broker_apis = tokio::time::timeout(
                options.connect_timeout,
                handshake(&mut stream, address, &options),
            )
            .await
            .map_err(|_| timed_out())??;
            let (read_half, write_half) = stream.into_split();
            return Ok(Connection::start(
                read_half,
                write_half,
                address.to_string(),
                options,
                broker_apis,
            ));
        };
        // Over TLS the reader and the writer share the session through tokio's `split`.
        let handshaken = async {
            let mut stream = tls.connect(address, stream).await?;
            let broker_apis = handshake(&mut stream, address, &options).await?;
            Ok::<_, Error>((stream, broker_apis))
        };
        let (stream, broker_apis) = tokio::time::timeout(options.connect_timeout, handshaken)
            .await
            .map_err(|_| timed_out())??;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok(Connection::start(
            read_half,
            write_half,
            address.to_string(),
            options,
            broker_apis,
        ))
    }

    fn start<R, W>(
        read_half: R,
        write_half: W,
        address: String,
        options: ConnectionOptions,
        broker_apis: Vec<ApiVersionRange>,
    ) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let in_flight_max = options.in_flight_requests_max.max(1);
        let (outgoing, outgoing_rx) = mpsc::channel(in_flight_max);
        let pending = Arc::new(Pending::default());
        let writer = tokio::spawn(write_loop(
            write_half,
            outgoing_rx,
            Arc::clone(&pending),
            address.clone(),
        ));
        let reader = tokio::spawn(read_loop(
            read_half,
            Arc::clone(&pending),
            address.clone(),
            options.frame_bytes_max,
        ));
        Connection {
            address,
            options,
            broker_apis,
            outgoing,
            pending,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            next_correlation_id: AtomicU32::new(1),
            writer,
            reader,
        }
    }

    /// True once the connection failed or the broker closed it.
    pub(crate) fn is_closed(&self) -> bool {
        self.pending.is_closed()
    }

    /// True while the broker holds this connection's publishes (its disk alarm is on; a
    /// ConnectionBlocked push said so).
    pub(crate) fn is_blocked(&self) -> bool {
        self.pending.blocked.load(Ordering::Relaxed)
    }

    /// Sends `request` and waits for its response. Produce requests with `Acks::None` get
    /// no response: they complete with `Ok(None)` once written.
    ///
    /// # Errors
    /// [`Error::UnsupportedApi`] if the broker lacks the api, [`Error::Timeout`] after the
    /// request timeout, [`Error::Io`] or [`Error::Disconnected`] if the connection breaks,
    /// [`Error::Decode`] for an undecodable response. A top-level error code in the
    /// response is not checked here.
    pub(crate) async fn request(&self, request: &Request) -> Result<Option<Response>> {
        self.begin(request).await?.finish().await
    }

    /// Queues `request` for the writer and returns once it is queued, without waiting for the
    /// answer ([`InFlight::finish`] waits). Requests started one after another reach the
    /// broker in that order, which is what lets a producer pipeline batches of one partition.
    ///
    /// # Errors
    /// [`Error::UnsupportedApi`] if the broker lacks the api, [`Error::Disconnected`] (or
    /// the error that closed it) if the connection is closed.
    pub(crate) async fn begin(&self, request: &Request) -> Result<InFlight> {
        self.begin_inner(request, None).await
    }

    /// Like [`Connection::begin`] for a Subscribe: also registers a channel of
    /// `push_capacity` deliveries (at least 1) for the `Deliver` pushes of the consumer it
    /// starts, before the request can reach the socket. Stop them with
    /// [`Connection::stop_pushes`].
    ///
    /// # Errors
    /// As [`Connection::begin`].
    pub(crate) async fn begin_with_pushes(
        &self,
        request: &Request,
        push_capacity: usize,
    ) -> Result<(InFlight, PushReceiver)> {
        let (sender, receiver) = push_channel(push_capacity);
        let in_flight = self.begin_inner(request, Some(sender)).await?;
        Ok((in_flight, receiver))
    }

    /// Drops the push channel of the subscription started by request `correlation_id`.
    pub(crate) fn stop_pushes(&self, correlation_id: u32) {
        self.pending.stop_pushes(correlation_id);
    }

    async fn begin_inner(&self, request: &Request, push: Option<PushSender>) -> Result<InFlight> {
        let api_key = request.api_key();
        let version = self.check_api(api_key)?;
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| self.disconnected())?;
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let expects_response = !matches!(
            request,
            Request::Produce(ProduceRequest {
                acks: Acks::None,
                ..
            })
        );
        let (reply, answer) = oneshot::channel();
        self.pending
            .insert(correlation_id, Waiter { api_key, reply }, push)?;
        let mut frame = BytesMut::new();
        encode_request_at(request, version, correlation_id, &mut frame);
        let outgoing = Outgoing {
            frame: frame.freeze(),
            correlation_id,
            expects_response,
        };
        if self.outgoing.send(outgoing).await.is_err() {
            self.pending.take(correlation_id);
            self.pending.stop_pushes(correlation_id);
            return Err(self.disconnected());
        }
        Ok(InFlight {
            api_key,
            correlation_id,
            answer,
            pending: Arc::clone(&self.pending),
            address: self.address.clone(),
            request_timeout: self.options.request_timeout,
            _permit: permit,
        })
    }

    /// The version to send `api_key` at: the newest both this client and the broker speak
    /// (every api exists at version 0; Subscribe v1 asks for DeliverBatch pushes, so an
    /// older broker gets v0 and pushes one Deliver per message).
    fn check_api(&self, api_key: ApiKey) -> Result<u16> {
        self.broker_apis
            .iter()
            .find(|range| range.api_key == api_key.code() && range.min_version == 0)
            .map(|range| range.max_version.min(sent_version(api_key)))
            .ok_or_else(|| Error::UnsupportedApi {
                address: self.address.clone(),
                api_key,
            })
    }

    /// Why the connection closed (or `Disconnected` if it recorded no reason).
    pub(crate) fn disconnected(&self) -> Error {
        closed_error(&self.pending, &self.address)
    }
}

/// A request on its way: queued for the socket, its answer not yet read. Holds one of the
/// connection's in-flight permits until it is finished or dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    api_key: ApiKey,
    correlation_id: u32,
    answer: oneshot::Receiver<Result<Option<Response>>>,
    pending: Arc<Pending>,
    address: String,
    request_timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    /// The correlation id of the request (for a Subscribe: the id its pushes carry).
    pub(crate) fn correlation_id(&self) -> u32 {
        self.correlation_id
    }

    /// Waits for the answer, at most the request timeout.
    ///
    /// # Errors
    /// [`Error::Timeout`] after the request timeout, [`Error::Io`] or
    /// [`Error::Disconnected`] if the connection breaks, [`Error::Decode`] for an
    /// undecodable response.
    pub(crate) async fn finish(self) -> Result<Option<Response>> {
        match tokio::time::timeout(self.request_timeout, self.answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed_error(&self.pending, &self.address)),
            Err(_) => {
                // A late response finds no waiter and is dropped by the reader.
                self.pending.take(self.correlation_id);
                Err(Error::Timeout {
                    operation: format!("{:?} request to {}", self.api_key, self.address),
                    after: self.request_timeout,
                })
            }
        }
    }
}

/// Why the connection closed, or `Disconnected` if it has not recorded a reason.
fn closed_error(pending: &Pending, address: &str) -> Error {
    let state = pending.lock();
    state.closed.clone().unwrap_or_else(|| Error::Disconnected {
        address: address.to_string(),
    })
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
        self.pending.close(Error::Disconnected {
            address: self.address.clone(),
        });
    }
}

/// Sends ApiVersions on the bare stream, then logs in if the options carry credentials;
/// returns what the broker supports.
async fn handshake<S: BareIo>(
    stream: &mut S,
    address: &str,
    options: &ConnectionOptions,
) -> Result<Vec<ApiVersionRange>> {
    let request = Request::ApiVersions(ApiVersionsRequest {
        client_name: options.client_id.clone(),
    });
    let apis = match round_trip(stream, address, options, &request, 0).await? {
        Response::ApiVersions(response) => {
            check_code(response.error, response.error_message)?;
            response.apis
        }
        _ => unreachable!("decoded as ApiVersions"),
    };
    if let Some(credentials) = &options.credentials {
        let mut bare = BareStream {
            stream,
            address,
            options,
            correlation_id: 0,
        };
        crate::auth::login(credentials, &mut bare).await?;
    }
    Ok(apis)
}

/// A connection's byte stream before the reader and writer start: TCP, or TLS over it.
pub(crate) trait BareIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> BareIo for S {}

/// The socket before the reader and writer start, for the login's requests.
pub(crate) struct BareStream<'a> {
    stream: &'a mut dyn BareIo,
    address: &'a str,
    options: &'a ConnectionOptions,
    correlation_id: u32,
}

impl std::fmt::Debug for BareStream<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BareStream")
            .field("address", &self.address)
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl BareStream<'_> {
    /// Sends `request` and reads its response.
    pub(crate) async fn call(&mut self, request: Request) -> Result<Response> {
        self.correlation_id += 1;
        round_trip(
            self.stream,
            self.address,
            self.options,
            &request,
            self.correlation_id,
        )
        .await
    }
}

/// Sends one request on the bare stream (before the reader and writer start) and reads its
/// response: the handshake and the login.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    address: &str,
    options: &ConnectionOptions,
    request: &Request,
    correlation_id: u32,
) -> Result<Response> {
    // Over TLS 1.3 a broker that refuses this client's certificate says so only now, after
    // the client's side of the TLS handshake finished: a TLS error, not an I/O one.
    let io_error = |source: std::io::Error| tls::io_error(address, source);
    let mut frame = BytesMut::new();
    encode_request(request, correlation_id, &mut frame);
    stream.write_all(&frame).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let mut buffer = BytesMut::with_capacity(4096);
    let frame = loop {
        match decode_frame(&mut buffer, options.frame_bytes_max) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            // The first answer is where another protocol shows: a length prefix out of
            // bounds (an HTTP server's "HTTP" reads as 1,213,486,160 bytes) means the peer
            // is not a Wharf broker. A failed decode leaves the buffer as it was.
            Err(_) => return Err(Error::not_wharf_broker(address, &buffer)),
        }
        if stream.read_buf(&mut buffer).await.map_err(io_error)? == 0 {
            return Err(Error::Disconnected {
                address: address.to_string(),
            });
        }
    };
    let api_key = request.api_key();
    if frame.header.correlation_id != correlation_id || frame.header.api_key != api_key.code() {
        return Err(Error::Decode(wharf_protocol::DecodeError::InvalidValue {
            field: "handshake response header",
            value: i64::from(frame.header.api_key),
        }));
    }
    Ok(Response::decode(api_key, frame.body)?)
}

async fn write_loop<W: AsyncWrite + Unpin>(
    write_half: W,
    mut outgoing: mpsc::Receiver<Outgoing>,
    pending: Arc<Pending>,
    address: String,
) {
    let mut writer = BufWriter::new(write_half);
    let mut written_without_response = Vec::new();
    while let Some(first) = outgoing.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_COALESCE_FRAMES_MAX {
            match outgoing.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut result = Ok(());
        for item in &batch {
            result = writer.write_all(&item.frame).await;
            if result.is_err() {
                break;
            }
            if !item.expects_response {
                written_without_response.push(item.correlation_id);
            }
        }
        if result.is_ok() {
            result = writer.flush().await;
        }
        if let Err(source) = result {
            pending.close(tls::io_error(&address, source));
            return;
        }
        for correlation_id in written_without_response.drain(..) {
            if let Some(waiter) = pending.take(correlation_id) {
                let _ = waiter.reply.send(Ok(None));
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut read_half: R,
    pending: Arc<Pending>,
    address: String,
    frame_bytes_max: u32,
) {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match decode_frame(&mut buffer, frame_bytes_max) {
                Ok(Some(frame)) => {
                    if let Err(error) = deliver(&pending, frame) {
                        pending.close(error);
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    // The stream is out of sync: nothing after this can be trusted.
                    pending.close(Error::Decode(error));
                    return;
                }
            }
        }
        buffer.reserve(READ_CHUNK_BYTES);
        match read_half.read_buf(&mut buffer).await {
            Ok(0) => {
                pending.close(Error::Disconnected { address });
                return;
            }
            Ok(_) => {}
            Err(source) => {
                pending.close(tls::io_error(&address, source));
                return;
            }
        }
    }
}

/// Hands one response frame to its waiter, if it is still waiting, and one push to its
/// subscription.
///
/// # Errors
/// An undecodable push, or a push beyond the prefetch window: the connection must close.
fn deliver(pending: &Pending, frame: wharf_protocol::Frame) -> Result<()> {
    if frame.header.api_key == ApiKey::ConnectionBlocked.code() {
        let Request::ConnectionBlocked(pushed) =
            Request::decode(ApiKey::ConnectionBlocked, frame.body)?
        else {
            unreachable!("decoded as ConnectionBlocked")
        };
        pending.blocked.store(pushed.blocked, Ordering::Relaxed);
        return Ok(());
    }
    if frame.header.api_key == ApiKey::Deliver.code() {
        let correlation_id = frame.header.correlation_id;
        let Request::Deliver(pushed) = Request::decode(ApiKey::Deliver, frame.body)? else {
            unreachable!("decoded as Deliver")
        };
        return pending.push(correlation_id, Pushed::One(pushed));
    }
    if frame.header.api_key == ApiKey::DeliverBatch.code() {
        let correlation_id = frame.header.correlation_id;
        let Request::DeliverBatch(pushed) = Request::decode(ApiKey::DeliverBatch, frame.body)?
        else {
            unreachable!("decoded as DeliverBatch")
        };
        return pending.push(correlation_id, Pushed::Batch(batch_deliveries(pushed)?));
    }
    if frame.header.api_key == ApiKey::ConsumerCancelled.code() {
        let correlation_id = frame.header.correlation_id;
        let Request::ConsumerCancelled(cancelled) =
            Request::decode(ApiKey::ConsumerCancelled, frame.body)?
        else {
            unreachable!("decoded as ConsumerCancelled")
        };
        pending.cancelled(correlation_id, cancelled);
        return Ok(());
    }
    let Some(waiter) = pending.take(frame.header.correlation_id) else {
        return Ok(());
    };
    let result = if frame.header.api_key == waiter.api_key.code() {
        Response::decode(waiter.api_key, frame.body)
            .map(Some)
            .map_err(Error::Decode)
    } else {
        Err(Error::Decode(wharf_protocol::DecodeError::InvalidValue {
            field: "response api_key",
            value: i64::from(frame.header.api_key),
        }))
    };
    let _ = waiter.reply.send(result);
    Ok(())
}

#[cfg(test)]
mod tests {
    use wharf_protocol::messages::SubscribeResponse;
    use wharf_protocol::FrameHeader;

    use super::*;

    fn push_frame(correlation_id: u32, delivery_tag: u64) -> wharf_protocol::Frame {
        let mut body = BytesMut::new();
        Request::Deliver(DeliverPush {
            consumer_id: 1,
            delivery_tag,
            ..DeliverPush::default()
        })
        .encode_body(&mut body);
        wharf_protocol::Frame {
            header: FrameHeader {
                api_key: ApiKey::Deliver.code(),
                api_version: 0,
                correlation_id,
            },
            body: body.freeze(),
        }
    }

    fn subscribe_response_frame(correlation_id: u32) -> wharf_protocol::Frame {
        let mut body = BytesMut::new();
        Response::Subscribe(SubscribeResponse {
            consumer_id: 1,
            ..SubscribeResponse::default()
        })
        .encode_body(&mut body);
        wharf_protocol::Frame {
            header: FrameHeader {
                api_key: ApiKey::Subscribe.code(),
                api_version: 0,
                correlation_id,
            },
            body: body.freeze(),
        }
    }

    /// The broker's ConsumerCancelled push for an ack timeout.
    fn cancelled_frame(correlation_id: u32) -> wharf_protocol::Frame {
        let mut body = BytesMut::new();
        Request::ConsumerCancelled(ConsumerCancelledPush {
            consumer_id: 1,
            queue: "q".to_string(),
            error: wharf_protocol::ErrorCode::AckTimeout,
            error_message: Some("too slow".to_string()),
        })
        .encode_body(&mut body);
        wharf_protocol::Frame {
            header: FrameHeader {
                api_key: ApiKey::ConsumerCancelled.code(),
                api_version: 0,
                correlation_id,
            },
            body: body.freeze(),
        }
    }

    /// Registers a Subscribe waiter with a push channel of `capacity`, as `begin_with_pushes`.
    fn subscribed(
        pending: &Pending,
        capacity: usize,
    ) -> (oneshot::Receiver<Result<Option<Response>>>, PushReceiver) {
        let (reply, answer) = oneshot::channel();
        let (sender, pushes) = push_channel(capacity);
        let waiter = Waiter {
            api_key: ApiKey::Subscribe,
            reply,
        };
        pending.insert(7, waiter, Some(sender)).expect("open");
        (answer, pushes)
    }

    /// The tag of a push's first delivery.
    fn first_tag(pushed: Pushed) -> u64 {
        match pushed {
            Pushed::One(pushed) => pushed.delivery_tag,
            Pushed::Batch(batch) => batch.first().expect("one delivery at least").0.delivery_tag,
        }
    }

    fn batch_frame(
        correlation_id: u32,
        tags: &[u64],
        records: bytes::Bytes,
    ) -> wharf_protocol::Frame {
        let mut body = BytesMut::new();
        Request::DeliverBatch(DeliverBatchPush {
            consumer_id: 1,
            base_offset: 100,
            base_timestamp: 5_000,
            marks: tags
                .iter()
                .map(|&delivery_tag| DeliveryMark {
                    delivery_tag,
                    redelivered: delivery_tag % 2 == 0,
                })
                .collect(),
            records,
        })
        .encode_body(&mut body);
        wharf_protocol::Frame {
            header: FrameHeader {
                api_key: ApiKey::DeliverBatch.code(),
                api_version: 0,
                correlation_id,
            },
            body: body.freeze(),
        }
    }

    /// Goal: a DeliverBatch push reaches its subscription as its decoded records, each with
    /// its mark; records that do not match the marks make the push undecodable (the
    /// connection then closes), never a partial hand-out.
    #[test]
    fn a_deliver_batch_push_reaches_the_subscription_as_its_records() {
        use wharf_protocol::batch::{Batch, BatchBuilder, NewRecord, BATCH_HEADER_BYTES};
        let mut builder = BatchBuilder::new(5_000).base_offset(100);
        for (key, value) in [("k0", "v0"), ("k1", "v1")] {
            builder
                .push(&NewRecord {
                    timestamp_ms: 5_007,
                    key: Some(bytes::Bytes::from(key)),
                    value: Some(bytes::Bytes::from(value)),
                    headers: Vec::new(),
                })
                .expect("small");
        }
        let batch = Batch::decode(builder.build()).expect("valid");
        let section = batch.as_bytes().slice(BATCH_HEADER_BYTES..);
        let pending = Pending::default();
        let (_answer, mut pushes) = subscribed(&pending, 4);
        deliver(&pending, batch_frame(7, &[3, 4], section.clone())).expect("routed");
        let Pushed::Batch(batch) = pushes.try_recv().expect("pushed") else {
            panic!("a batch push stays a batch")
        };
        let seen: Vec<(u64, bool, i64, i64, &[u8])> = batch
            .iter()
            .map(|(mark, record)| {
                (
                    mark.delivery_tag,
                    mark.redelivered,
                    record.offset,
                    record.timestamp_ms,
                    record.value.as_deref().expect("a body"),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (3, false, 100, 5_007, b"v0".as_slice()),
                (4, true, 101, 5_007, b"v1".as_slice())
            ]
        );
        // Three marks for two records, or a record cut short: undecodable.
        assert!(deliver(&pending, batch_frame(7, &[5, 6, 7], section.clone())).is_err());
        let cut = section.slice(..section.len() - 1);
        assert!(deliver(&pending, batch_frame(7, &[5, 6], cut)).is_err());
        assert!(
            pushes.try_recv().is_err(),
            "nothing of a refused push is handed out"
        );
    }

    #[test]
    fn pushes_that_overtake_the_subscribe_response_reach_the_subscription() {
        let pending = Pending::default();
        let (mut answer, mut pushes) = subscribed(&pending, 2);
        deliver(&pending, push_frame(7, 1)).expect("routed");
        assert_eq!(first_tag(pushes.try_recv().expect("pushed")), 1);
        assert!(answer.try_recv().is_err(), "a push is not the response");
        deliver(&pending, subscribe_response_frame(7)).expect("answered");
        let response = answer.try_recv().expect("answered").expect("ok");
        assert!(matches!(response, Some(Response::Subscribe(_))));
        // Pushes keep flowing after the response, and stop once the subscription stops.
        deliver(&pending, push_frame(7, 2)).expect("routed");
        assert_eq!(first_tag(pushes.try_recv().expect("pushed")), 2);
        pending.stop_pushes(7);
        deliver(&pending, push_frame(7, 3)).expect("dropped quietly");
        assert!(pushes.try_recv().is_err());
    }

    #[test]
    fn a_consumer_cancelled_push_ends_the_subscription_with_its_reason() {
        let pending = Pending::default();
        let (_answer, mut pushes) = subscribed(&pending, 2);
        deliver(&pending, push_frame(7, 1)).expect("routed");
        deliver(&pending, cancelled_frame(7)).expect("routed");
        // The delivery before the cancel is still readable, then the channel ends.
        assert_eq!(first_tag(pushes.try_recv().expect("pushed")), 1);
        assert!(matches!(
            pushes.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        let reason = pushes.cancelled().expect("the reason is kept");
        assert_eq!(reason.error, wharf_protocol::ErrorCode::AckTimeout);
        assert_eq!(reason.error_message.as_deref(), Some("too slow"));
        // A late push for the cancelled consumer is dropped quietly.
        deliver(&pending, push_frame(7, 2)).expect("dropped");
    }

    /// Goal: after an ack timeout the broker's answer to a late ack (UnknownDeliveryTag) may
    /// come before the ConsumerCancelled push that explains it; a caller can wait for that
    /// push. Method: the wait starts before the push is delivered.
    #[tokio::test]
    async fn a_cancel_reason_can_be_awaited_until_its_push_arrives() {
        let pending = Arc::new(Pending::default());
        let (_answer, mut pushes) = subscribed(&pending, 2);
        assert!(pushes.cancelled().is_none());
        let pusher = Arc::clone(&pending);
        // On this single-threaded runtime the task runs only once the wait below is parked.
        let push = tokio::spawn(async move {
            deliver(&pusher, cancelled_frame(7)).expect("routed");
        });
        let reason = pushes.wait_cancelled().await.expect("the reason arrives");
        assert_eq!(reason.error, wharf_protocol::ErrorCode::AckTimeout);
        push.await.expect("pushed");
        // Already there: the wait returns at once.
        assert!(pushes.wait_cancelled().await.is_some());
        // A subscription that ends without a cancel (the connection closed) has no reason.
        let (_answer, mut closed) = subscribed(&pending, 2);
        pending.close(Error::Disconnected {
            address: "a:1".to_string(),
        });
        assert!(closed.wait_cancelled().await.is_none());
    }

    #[test]
    fn a_push_beyond_the_prefetch_window_is_an_error() {
        let pending = Pending::default();
        let (_answer, _pushes) = subscribed(&pending, 1);
        deliver(&pending, push_frame(7, 1)).expect("within the window");
        assert!(matches!(
            deliver(&pending, push_frame(7, 2)),
            Err(Error::InvalidState { .. })
        ));
    }

    #[test]
    fn closing_ends_every_subscription() {
        let pending = Pending::default();
        let (_answer, mut pushes) = subscribed(&pending, 1);
        pending.close(Error::Disconnected {
            address: "a:1".to_string(),
        });
        assert!(matches!(
            pushes.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
