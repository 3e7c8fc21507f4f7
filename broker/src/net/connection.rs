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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Most requests in flight on one connection: enough for a publisher that keeps a thousand
/// single-message publishes awaiting their confirms (each in flight costs a small task; the
/// byte budget below bounds the memory their frames hold).
pub const IN_FLIGHT_MAX: usize = 1024;
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

    /// State for a new connection from `peer` that is over a connection limit
    /// (`refusal`), or `None` to close it at once without a byte (the default, what Kafka
    /// does for `max.connections.per.ip`). A front end whose protocol can say why returns
    /// a connection that refuses in its own terms (AMQP: connection.close 530 at
    /// connection.open, as RabbitMQ refuses over its limits).
    fn open_refused(
        &self,
        push: mpsc::Sender<BytesMut>,
        peer: SocketAddr,
        refusal: &crate::net::limits::Refusal,
    ) -> Option<Self::Connection> {
        let _ = (push, peer, refusal);
        None
    }

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

    /// When the connection is muted (a quota throttles it: KIP-219), the moment it ends: the
    /// driver decodes and reads nothing from the connection before then, while responses
    /// and pushes still go out. Asked before each request. Default: never muted.
    fn muted_until(&self, connection: &Self::Connection) -> Option<tokio::time::Instant> {
        let _ = connection;
        None
    }

    /// The read buffer holds no whole request any more and the driver is about to wait for
    /// bytes: a front end that holds requests back to handle them together (AMQP's
    /// publishes to the default exchange) hands them over here, so nothing waits on the
    /// client's next write. Default: nothing.
    fn drained<'a>(&'a self, connection: &'a Self::Connection) -> BoxFuture<'a, ()> {
        let _ = connection;
        Box::pin(std::future::ready(()))
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

/// A connection's byte stream, split into the halves that the reading loop and the writer
/// task own. Plain TCP splits into the socket's own halves (no lock, no copy); TLS
/// ([`crate::net::tls`]) shares its session between the halves.
pub trait Transport: Send + 'static {
    /// What the reading loop reads from.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// What the writer task writes to.
    type Writer: AsyncWrite + Unpin + Send + 'static;

    /// Splits the stream.
    fn split(self) -> (Self::Reader, Self::Writer);
}

impl Transport for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;

    fn split(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

/// A response slot, in request order.
enum Pending {
    /// A running request; `None` output means no response.
    Running(JoinHandle<Option<BytesMut>>, OwnedSemaphorePermit),
    /// A request whose completion was ready as soon as its ordered phase ended (most AMQP
    /// frames, a Kafka acks=0 produce): its response, with no task spawned for it.
    Done(BytesMut),
    /// An error response, after which the connection closes.
    Fatal(Option<BytesMut>),
}

/// Serves one connection until the client closes it, a fatal frame error, or shutdown.
/// `refusal`: the connection is over a connection limit ([`Protocol::open_refused`]).
pub async fn serve<P: Protocol, T: Transport>(
    protocol: Arc<P>,
    socket: T,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    refusal: Option<crate::net::limits::Refusal>,
) {
    tracing::debug!(%peer, "connection opened");
    let mut requests: u64 = 0;
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(IN_FLIGHT_MAX);
    let (push_tx, push_rx) = mpsc::channel::<BytesMut>(PUSH_QUEUE_MAX);
    let connection = match &refusal {
        None => protocol.open(push_tx, peer),
        Some(refusal) => match protocol.open_refused(push_tx, peer, refusal) {
            Some(connection) => connection,
            None => return,
        },
    };
    let (mut reader, writer) = socket.split();
    let writer_task = tokio::spawn(write_responses(writer, pending_rx, push_rx, peer));
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES_MAX));
    let mut buffer = BytesMut::with_capacity(READ_BUFFER_BYTES);
    'read: loop {
        loop {
            if let Some(until) = protocol.muted_until(&connection) {
                // What the front end holds back goes before the connection sleeps.
                protocol.drained(&connection).await;
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    _ = shutdown.changed() => break 'read,
                    _ = protocol.until_closed(&connection) => break 'read,
                }
            }
            let buffered_bytes = buffer.len();
            let request = match protocol.decode(&connection, &mut buffer) {
                Ok(Some(request)) => request,
                Ok(None) => {
                    protocol.drained(&connection).await;
                    break;
                }
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
            let mut completion = protocol.handle(&connection, request).await;
            // A completion that is ready at once costs no task: no response at all (an AMQP
            // content frame, a publish outside confirm mode) needs nothing from the writer.
            let pending = match futures_util::FutureExt::now_or_never(&mut completion) {
                Some(None) => continue,
                Some(Some(bytes)) => Pending::Done(bytes),
                None => Pending::Running(tokio::spawn(completion), permit),
            };
            if pending_tx.send(pending).await.is_err() {
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

/// Frames at most this large are gathered into one write with the others ready at the
/// same moment; a larger one (a fetch's records) is written on its own, uncopied.
const COALESCE_FRAME_BYTES_MAX: usize = 16 * 1024;
/// Most bytes gathered into one write.
const COALESCE_BYTES_MAX: usize = 256 * 1024;

/// Writes responses in request order, and pushed frames whenever they come (between
/// responses, never inside one). Whatever is ready at the same moment (responses already
/// finished, pushes already queued) goes out in one write, so a pipelining client's many
/// small answers and a consumer's deliveries cost one system call per round, not one each.
async fn write_responses<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut pending_rx: mpsc::Receiver<Pending>,
    mut push_rx: mpsc::Receiver<BytesMut>,
    peer: SocketAddr,
) {
    let mut current: Option<(JoinHandle<Option<BytesMut>>, OwnedSemaphorePermit)> = None;
    let mut pushes_open = true;
    let mut out = BytesMut::new();
    'write: loop {
        let (bytes, mut close) = tokio::select! {
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
                Some(Pending::Done(bytes)) => (Some(bytes), false),
                Some(Pending::Fatal(bytes)) => (bytes, true),
                None => {
                    // The reader stopped: pushes already queued (an AMQP close-ok, the
                    // last deliveries) still go out before the socket closes.
                    while let Ok(bytes) = push_rx.try_recv() {
                        if !write(&mut writer, &bytes, peer).await {
                            break;
                        }
                    }
                    break;
                }
            },
        };
        if let Some(bytes) = bytes {
            if !write_frame(&mut writer, &mut out, bytes, peer).await {
                break;
            }
        }
        // Gather what else is ready now, without waiting.
        while !close && out.len() < COALESCE_BYTES_MAX {
            if pushes_open {
                match push_rx.try_recv() {
                    Ok(bytes) => {
                        if !write_frame(&mut writer, &mut out, bytes, peer).await {
                            break 'write;
                        }
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => pushes_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if current.is_none() {
                match pending_rx.try_recv() {
                    Ok(Pending::Running(task, permit)) => current = Some((task, permit)),
                    Ok(Pending::Done(bytes)) => {
                        if !write_frame(&mut writer, &mut out, bytes, peer).await {
                            break 'write;
                        }
                        continue;
                    }
                    Ok(Pending::Fatal(bytes)) => {
                        if let Some(bytes) = bytes {
                            if !write_frame(&mut writer, &mut out, bytes, peer).await {
                                break 'write;
                            }
                        }
                        close = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            match current.take() {
                Some((task, permit)) if task.is_finished() => {
                    drop(permit);
                    match task.await {
                        Ok(Some(bytes)) => {
                            if !write_frame(&mut writer, &mut out, bytes, peer).await {
                                break 'write;
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::error!(%peer, %error, "request handler failed");
                            close = true;
                        }
                    }
                }
                still_running => {
                    current = still_running;
                    break;
                }
            }
        }
        if !flush(&mut writer, &mut out, peer).await {
            break;
        }
        if close {
            break;
        }
    }
    let _ = flush(&mut writer, &mut out, peer).await;
    let _ = writer.shutdown().await;
}

/// Adds a frame to the pending write: a small one is copied into `out`; a large one goes
/// out at once after what `out` holds, uncopied. False if the connection failed.
async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
    bytes: BytesMut,
    peer: SocketAddr,
) -> bool {
    if bytes.len() <= COALESCE_FRAME_BYTES_MAX {
        out.extend_from_slice(&bytes);
        return true;
    }
    if !flush(writer, out, peer).await {
        return false;
    }
    write(writer, &bytes, peer).await
}

/// Writes what `out` holds and empties it. False if the connection failed.
async fn flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
    peer: SocketAddr,
) -> bool {
    if out.is_empty() {
        return true;
    }
    let written = write(writer, out, peer).await;
    out.clear();
    written
}

/// Writes `bytes` and flushes them out of the stream's own buffer: a TCP socket has none
/// (its flush does nothing), but a TLS session may hold the last record until flushed.
async fn write<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8], peer: SocketAddr) -> bool {
    let written = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match written.await {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%peer, %error, "write failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A response that finishes after `delay_ms`.
    fn running(bytes: Vec<u8>, delay_ms: u64, budget: &Arc<Semaphore>) -> Pending {
        let task = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            Some(BytesMut::from(&bytes[..]))
        });
        Pending::Running(task, budget.clone().try_acquire_owned().unwrap())
    }

    #[tokio::test]
    async fn gathered_writes_keep_request_order_whatever_order_answers_finish_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let (_, writer) = server.into_split();
        let (pending_tx, pending_rx) = mpsc::channel(IN_FLIGHT_MAX);
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_MAX);
        let budget = Arc::new(Semaphore::new(1_000));
        let large = vec![b'L'; COALESCE_FRAME_BYTES_MAX + 1];
        let mut expected = Vec::new();
        let mut boundaries = vec![0];
        // Later answers finish first; a large frame sits among small ones.
        for index in 0..200u8 {
            let bytes = if index == 100 {
                large.clone()
            } else {
                vec![index; 3]
            };
            expected.extend_from_slice(&bytes);
            boundaries.push(expected.len());
            let delay = u64::from(200 - index) / 20;
            pending_tx
                .send(running(bytes, delay, &budget))
                .await
                .unwrap();
        }
        push_tx.send(BytesMut::from(&b"push"[..])).await.unwrap();
        let writing = tokio::spawn(write_responses(writer, pending_rx, push_rx, peer));
        drop(pending_tx);
        drop(push_tx);
        writing.await.unwrap();
        let mut received = Vec::new();
        let mut client = client;
        client.read_to_end(&mut received).await.unwrap();
        // The push goes out between two responses, never inside one: removing it leaves
        // the responses in request order.
        let at = received
            .windows(4)
            .position(|window| window == b"push")
            .expect("the push is written");
        assert!(boundaries.contains(&at), "the push splits no response");
        received.drain(at..at + 4);
        assert_eq!(received, expected);
        assert_eq!(
            budget.available_permits(),
            1_000,
            "every permit is released"
        );
    }
}
