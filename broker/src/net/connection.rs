//! One client connection of any front end: reads frames with the front end's codec, runs each
//! request's ordered phase (its effects, such as appends) in the order the requests arrived,
//! lets the rest of each request (durability waits, long polls) run concurrently, and writes
//! responses strictly in request order, with pushed frames (queue deliveries) between them.
//!
//! Memory is bounded per connection: at most [`IN_FLIGHT_MAX`] requests and
//! [`IN_FLIGHT_BYTES_MAX`] bytes of request frames are in flight; when either is reached the
//! connection stops reading (TCP backpressure) instead of buffering.
//!
//! A frame the codec cannot decode gets the codec's error bytes (if any) and then the
//! connection is closed: the stream cannot be trusted to be in sync. Nothing a client sends
//! can panic the broker; other connections are unaffected.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Most requests in flight on one connection.
pub const IN_FLIGHT_MAX: usize = 64;
/// Most request bytes in flight on one connection (a few maximal frames).
pub const IN_FLIGHT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pushed frames buffered per connection before pushers wait: the prefetch windows of its
/// consumers already bound how many are outstanding.
pub const PUSH_QUEUE_MAX: usize = 1024;
/// Initial read buffer; it grows to the largest frame seen.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What remains of a request after its ordered phase; resolves to the encoded response
/// (`None`: no response, as for produce with acks = none).
pub type Completion = Pin<Box<dyn Future<Output = Option<BytesMut>> + Send>>;

/// A boxed future borrowing the connection.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A frame that cannot be decoded: the bytes to answer with (if any), then the connection
/// closes.
#[derive(Debug)]
pub struct Fatal {
    /// The error response, if the frame could be attributed to a request.
    pub response: Option<BytesMut>,
    /// What was wrong, for the log.
    pub reason: String,
}

/// A front end's codec and translation: all a front end needs to serve connections.
pub trait Protocol: Send + Sync + 'static {
    /// A decoded request.
    type Request: Send + 'static;
    /// What one connection's requests share (its core session, push sender, ...).
    type Connection: Send + Sync + 'static;

    /// State for a new connection from `peer`; `push` sends frames between responses.
    fn open(&self, push: mpsc::Sender<BytesMut>, peer: SocketAddr) -> Self::Connection;

    /// Decodes the next request at the front of `buffer`, consuming its bytes (the driver
    /// counts what was consumed against the in-flight byte budget); `Ok(None)` when more
    /// bytes are needed. `connection` is there for protocols whose framing depends on
    /// what was negotiated (AMQP's protocol header and frame max).
    ///
    /// # Errors
    /// [`Fatal`] when the stream cannot be trusted any more.
    fn decode(
        &self,
        connection: &Self::Connection,
        buffer: &mut BytesMut,
    ) -> Result<Option<Self::Request>, Fatal>;

    /// Resolves when the front end wants the connection closed although the client has not
    /// closed it (AMQP: after connection.close-ok, or a missed heartbeat). The driver stops
    /// reading, lets every in-flight response and queued push out, and closes. Default:
    /// never.
    fn until_closed<'a>(&'a self, connection: &'a Self::Connection) -> BoxFuture<'a, ()> {
        let _ = connection;
        Box::pin(std::future::pending())
    }

    /// Runs the ordered phase of `request` and returns its completion.
    fn handle<'a>(
        &'a self,
        connection: &'a Self::Connection,
        request: Self::Request,
    ) -> BoxFuture<'a, Completion>;

    /// The connection ended: release what it held.
    fn close<'a>(&'a self, connection: &'a Self::Connection) -> BoxFuture<'a, ()>;
}

/// A response slot, in request order.
enum Pending {
    /// A running request; `None` output means no response.
    Running(JoinHandle<Option<BytesMut>>, OwnedSemaphorePermit),
    /// An error response, after which the connection closes.
    Fatal(Option<BytesMut>),
}

/// Serves one connection until the client closes it, a fatal frame error, or shutdown.
pub async fn serve<P: Protocol>(
    protocol: Arc<P>,
    socket: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::debug!(%peer, "connection opened");
    let mut requests: u64 = 0;
    let (mut reader, writer) = socket.into_split();
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(IN_FLIGHT_MAX);
    let (push_tx, push_rx) = mpsc::channel::<BytesMut>(PUSH_QUEUE_MAX);
    let connection = protocol.open(push_tx, peer);
    let writer_task = tokio::spawn(write_responses(writer, pending_rx, push_rx, peer));
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES_MAX));
    let mut buffer = BytesMut::with_capacity(READ_BUFFER_BYTES);
    'read: loop {
        loop {
            let buffered_bytes = buffer.len();
            let request = match protocol.decode(&connection, &mut buffer) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(Fatal { response, reason }) => {
                    tracing::warn!(%peer, reason, "bad frame; closing connection");
                    let _ = pending_tx.send(Pending::Fatal(response)).await;
                    break 'read;
                }
            };
            // Measured here rather than trusted from the codec.
            let frame_bytes = buffered_bytes.saturating_sub(buffer.len());
            let permits = u32::try_from(frame_bytes.min(IN_FLIGHT_BYTES_MAX)).unwrap_or(u32::MAX);
            let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
                break 'read;
            };
            // The ordered phase runs here, before the next request is read; the rest runs as
            // its own task so slow requests (long polls, fsync waits) overlap.
            requests += 1;
            let completion = protocol.handle(&connection, request).await;
            let task = tokio::spawn(completion);
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
            _ = protocol.until_closed(&connection) => break 'read,
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
    protocol.close(&connection).await;
    // Dropping the senders lets the writer finish every in-flight response, then stop.
    drop(pending_tx);
    drop(connection);
    let _ = writer_task.await;
    tracing::debug!(%peer, requests, "connection closed");
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
                None => {
                    // The reader stopped: pushes already queued (an AMQP close-ok, the
                    // last deliveries) still go out before the socket closes.
                    while let Ok(bytes) = push_rx.try_recv() {
                        if writer.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
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
