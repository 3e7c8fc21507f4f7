//! One client connection: reads frames, runs each request's ordered phase (its effects, such
//! as appends) in the order the requests arrived, lets the rest of each request (durability
//! waits, long polls) run concurrently, and writes responses strictly in request order.
//!
//! Memory is bounded per connection: at most `IN_FLIGHT_MAX` requests and
//! `IN_FLIGHT_BYTES_MAX` bytes of request frames are in flight; when either is reached the
//! connection stops reading (TCP backpressure) instead of buffering.
//!
//! A frame that cannot be attributed or decoded (oversized or undersized length, unknown api
//! key, unsupported version, a body that does not decode) gets an error response when the
//! header was readable, and then the connection is closed: the stream cannot be trusted to be
//! in sync. Nothing a client sends can panic the broker; other connections are unaffected.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use wharf_protocol::api::{check_header, encode_response};
use wharf_protocol::frame::{decode_frame, encode_frame, FrameHeader};
use wharf_protocol::wire::Wire;
use wharf_protocol::{DecodeError, ErrorCode, Request, Response};

use crate::queue::{CancelReason, ConsumerId, SessionId};
use crate::server::{dispatch, Broker};

/// Most requests in flight on one connection.
pub const IN_FLIGHT_MAX: usize = 64;
/// Most request bytes in flight on one connection (a few maximal frames).
pub const IN_FLIGHT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Initial read buffer; it grows to the largest frame seen.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A response slot, in request order.
enum Pending {
    /// A running request; `None` output means no response (acks = none).
    Running(JoinHandle<Option<BytesMut>>, OwnedSemaphorePermit),
    /// An error response, after which the connection closes.
    Fatal(Option<BytesMut>),
}

/// Serves one connection until the client closes it, a fatal frame error, or shutdown.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    socket: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut reader, writer) = socket.into_split();
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(IN_FLIGHT_MAX);
    let (push_tx, push_rx) = mpsc::channel::<BytesMut>(PUSH_QUEUE_MAX);
    let session = Session::new(push_tx);
    let writer_task = tokio::spawn(write_responses(writer, pending_rx, push_rx, peer));
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES_MAX));
    let mut buffer = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let frame_bytes_max = broker.config.frame_bytes_max;
    'read: loop {
        loop {
            let frame = match decode_frame(&mut buffer, frame_bytes_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "bad frame; closing connection");
                    let header = peek_header(&buffer);
                    let response = header.map(|header| {
                        error_frame(header, error_code_of(&error), &error.to_string())
                    });
                    let _ = pending_tx.send(Pending::Fatal(response)).await;
                    break 'read;
                }
            };
            let frame_bytes = frame.body.len() + 12;
            let request = match check_header(&frame.header)
                .and_then(|key| Request::decode(key, frame.body))
            {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(%peer, %error, api_key = frame.header.api_key, "undecodable request; closing connection");
                    let response =
                        error_frame(frame.header, error_code_of(&error), &error.to_string());
                    let _ = pending_tx.send(Pending::Fatal(Some(response))).await;
                    break 'read;
                }
            };
            let permits = u32::try_from(frame_bytes.min(IN_FLIGHT_BYTES_MAX)).unwrap_or(u32::MAX);
            let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
                break 'read;
            };
            let header = frame.header;
            let handler_broker = broker.clone();
            // The ordered phase runs here, before the next request is read; the rest runs as
            // its own task so slow requests (long polls, fsync waits) overlap.
            let completion = dispatch::handle(&handler_broker, request, &session, header).await;
            let task = tokio::spawn(async move {
                let response = completion.await?;
                let mut out = BytesMut::new();
                encode_response(&response, header, &mut out);
                Some(out)
            });
            if pending_tx
                .send(Pending::Running(task, permit))
                .await
                .is_err()
            {
                break 'read;
            }
        }
        let read = tokio::select! {
            read = reader.read_buf(&mut buffer) => read,
            _ = shutdown.changed() => break 'read,
        };
        match read {
            Ok(0) => {
                if !buffer.is_empty() {
                    tracing::debug!(%peer, bytes = buffer.len(), "connection closed mid-frame");
                }
                break;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%peer, %error, "read failed");
                break;
            }
        }
    }
    // The connection's consumers go away with it: their unacknowledged deliveries return
    // to their queues, marked redelivered.
    session.cancel_all(&broker).await;
    // Dropping the senders lets the writer finish every in-flight response, then stop.
    drop(pending_tx);
    drop(session);
    let _ = writer_task.await;
}

/// Pushed frames (queue deliveries) buffered per connection before forwarders wait: the
/// prefetch windows of its consumers already bound how many are outstanding.
pub const PUSH_QUEUE_MAX: usize = 1024;

/// What a connection's requests share: the channel for pushed frames and the consumers
/// started on it.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    push: mpsc::Sender<BytesMut>,
    consumers: std::sync::Mutex<Vec<(String, u64)>>,
}

/// Connection ids, unique within the process.
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Session {
    fn new(push: mpsc::Sender<BytesMut>) -> Session {
        Session {
            id: NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            push,
            consumers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// This connection's id (owner of its exclusive queues).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The sender for pushed frames.
    pub fn push(&self) -> mpsc::Sender<BytesMut> {
        self.push.clone()
    }

    /// Remembers a consumer started on this connection.
    pub fn add_consumer(&self, queue: &str, consumer: u64) {
        self.consumers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((queue.to_string(), consumer));
    }

    /// True if this connection started `consumer` on `queue`.
    pub fn owns_consumer(&self, queue: &str, consumer: u64) -> bool {
        self.consumers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .any(|(name, id)| name == queue && *id == consumer)
    }

    /// Forgets a cancelled consumer.
    pub fn remove_consumer(&self, queue: &str, consumer: u64) {
        self.consumers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|(name, id)| !(name == queue && *id == consumer));
    }

    async fn cancel_all(&self, broker: &Broker) {
        let consumers = std::mem::take(
            &mut *self
                .consumers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for (queue, consumer) in consumers {
            broker
                .queues
                .cancel(&queue, ConsumerId(consumer), CancelReason::ConnectionClosed)
                .await;
        }
        broker.queues.release_session(self.id).await;
    }
}

/// Writes responses in request order, and pushed frames whenever they come (between
/// responses, never inside one).
async fn write_responses(
    mut writer: OwnedWriteHalf,
    mut pending_rx: mpsc::Receiver<Pending>,
    mut push_rx: mpsc::Receiver<BytesMut>,
    peer: SocketAddr,
) {
    let mut current: Option<(JoinHandle<Option<BytesMut>>, OwnedSemaphorePermit)> = None;
    let mut pushes_open = true;
    loop {
        let (bytes, close) = tokio::select! {
            pushed = push_rx.recv(), if pushes_open => match pushed {
                Some(bytes) => (Some(bytes), false),
                None => {
                    pushes_open = false;
                    continue;
                }
            },
            finished = async { current.as_mut().map(|(task, _)| task).expect("guarded by is_some").await }, if current.is_some() => {
                current = None;
                match finished {
                    Ok(bytes) => (bytes, false),
                    Err(error) => {
                        // A handler panicked: a bug. Close rather than answer out of order.
                        tracing::error!(%peer, %error, "request handler failed");
                        break;
                    }
                }
            },
            next = pending_rx.recv(), if current.is_none() => match next {
                Some(Pending::Running(task, permit)) => {
                    current = Some((task, permit));
                    continue;
                }
                Some(Pending::Fatal(bytes)) => (bytes, true),
                None => break,
            },
        };
        if let Some(bytes) = bytes {
            if let Err(error) = writer.write_all(&bytes).await {
                tracing::debug!(%peer, %error, "write failed");
                break;
            }
        }
        if close {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// The frame header at the front of `buffer`, if enough bytes are there.
fn peek_header(buffer: &BytesMut) -> Option<FrameHeader> {
    if buffer.len() < 12 {
        return None;
    }
    Some(FrameHeader {
        api_key: u16::from_be_bytes([buffer[4], buffer[5]]),
        api_version: u16::from_be_bytes([buffer[6], buffer[7]]),
        correlation_id: u32::from_be_bytes([buffer[8], buffer[9], buffer[10], buffer[11]]),
    })
}

fn error_code_of(error: &DecodeError) -> ErrorCode {
    match error {
        DecodeError::UnknownApiKey { .. } => ErrorCode::UnknownApiKey,
        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        DecodeError::FrameTooLarge { .. } => ErrorCode::MessageTooLarge,
        _ => ErrorCode::InvalidRequest,
    }
}

/// An error response for `header`: a typed body where the api is known, otherwise the common
/// prefix of every response body (error code and message).
fn error_frame(header: FrameHeader, code: ErrorCode, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    match wharf_protocol::ApiKey::from_code(header.api_key) {
        Some(key) => encode_response(
            &Response::error_only(key, code, message.to_string()),
            header,
            &mut out,
        ),
        None => encode_frame(header, &mut out, |body| {
            body.put_u16(code.code());
            Some(message.to_string()).encode(body);
        }),
    }
    out
}
