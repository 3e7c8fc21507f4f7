//! Accepts connections for one front end, caps how many are open at once with a semaphore,
//! and stops accepting on shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::net::connection::{self, Protocol};
use crate::net::limits::{AddressLimits, AddressSlot, Refusal};
use crate::net::tls::Tls;

/// How long to wait after a failed accept (for example out of file descriptors) before
/// trying again, so the loop does not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Binds a listener on `address` (`HOST:PORT`); returns it with the address it got (the
/// port is the kernel's choice for port 0).
///
/// # Errors
/// The I/O error of the bind (address in use, permission, bad address).
pub async fn bind(address: &str) -> std::io::Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local_addr = listener.local_addr()?;
    Ok((listener, local_addr))
}

/// Accepts until `shutdown` turns true, serving each connection with `protocol`; at most
/// `connections_max` are open at once. With `tls`, each connection's TLS handshake runs
/// first, in the connection's own task, so a slow one never holds up the next accept. Each
/// connection task holds a clone of `done` so the caller can wait for all of them to
/// finish. A connection from an address over its limit (`limits`, shared by every
/// listener) is handed to the front end as refused ([`Protocol::open_refused`]).
pub async fn accept_loop<P: Protocol>(
    protocol: Arc<P>,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    (connections_max, limits): (usize, Arc<AddressLimits>),
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let permits = Arc::new(Semaphore::new(connections_max));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Running out of file descriptors and the like: back off briefly, keep going.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        if let Err(error) = socket.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let (slot, refusal) = split_admission(limits.admit(peer.ip()));
        let protocol = protocol.clone();
        let mut shutdown = shutdown.clone();
        let done = done.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection::serve(protocol, socket, peer, shutdown, refusal).await,
                Some(tls) => {
                    let handshaken = tokio::select! {
                        handshaken = tls.handshake(socket, peer) => handshaken,
                        _ = shutdown.changed() => None,
                    };
                    if let Some(stream) = handshaken {
                        connection::serve(protocol, stream, peer, shutdown, refusal).await;
                    }
                }
            }
            drop(slot);
            drop(permit);
            drop(done);
        });
    }
}

/// The slot of an admitted connection, or the refusal of one over its limit.
fn split_admission(
    admission: Result<Option<AddressSlot>, Refusal>,
) -> (Option<AddressSlot>, Option<Refusal>) {
    match admission {
        Ok(slot) => (slot, None),
        Err(refusal) => (None, Some(refusal)),
    }
}

/// A listener whose accepted connections each hold a permit of a semaphore: at most
/// `connections_max` are open at once, and the next accept waits for one to close. For front
/// ends that bring their own connection driver (HTTP: hyper's), which cannot use
/// [`accept_loop`].
#[derive(Debug)]
pub struct CappedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: Arc<AddressLimits>,
    first_byte_timeout: Option<std::time::Duration>,
}

impl CappedListener {
    /// Caps `listener` at `connections_max` open connections, and each address at what
    /// `limits` allows (a connection over it is accepted with [`CappedStream::refusal`]
    /// set, for the front end to refuse in its terms).
    pub fn new(
        listener: TcpListener,
        connections_max: usize,
        limits: Arc<AddressLimits>,
    ) -> CappedListener {
        CappedListener {
            listener,
            permits: Arc::new(Semaphore::new(connections_max)),
            limits,
            first_byte_timeout: None,
        }
    }

    /// Closes a connection that sends no byte within `timeout` (an idle socket that never
    /// makes a request, so never authenticates: issue #18's authentication timeout for
    /// front ends whose connection driver is not `net`'s).
    pub fn close_silent_after(mut self, timeout: std::time::Duration) -> CappedListener {
        self.first_byte_timeout = Some(timeout);
        self
    }

    /// Waits for a free permit, then for a connection; retries failed accepts after a short
    /// delay (out of file descriptors and the like), so it returns only with a connection.
    pub async fn accept(&mut self) -> (CappedStream, std::net::SocketAddr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed: it lives as long as the listener.
            Err(_) => std::future::pending().await,
        };
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    if let Err(error) = socket.set_nodelay(true) {
                        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                    let (slot, refusal) = split_admission(self.limits.admit(peer.ip()));
                    return (
                        CappedStream {
                            socket,
                            _permit: permit,
                            _slot: slot,
                            refusal,
                            first_byte_deadline: self
                                .first_byte_timeout
                                .map(|timeout| Box::pin(tokio::time::sleep(timeout))),
                        },
                        peer,
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            }
        }
    }

    /// The address it is bound to.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection that gives its permit back when dropped.
#[derive(Debug)]
pub struct CappedStream {
    socket: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
    refusal: Option<Refusal>,
    /// Until the first byte arrives: when it fires first, reads end (EOF).
    first_byte_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl CappedStream {
    /// Why this connection is refused, when its address is over its limit.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }
}

impl tokio::io::AsyncRead for CappedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let filled = buffer.filled().len();
        let read = std::pin::Pin::new(&mut self.socket).poll_read(context, buffer);
        if self.first_byte_deadline.is_none() {
            return read;
        }
        match read {
            std::task::Poll::Ready(Ok(())) if buffer.filled().len() > filled => {
                self.first_byte_deadline = None;
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Pending => {
                let expired = self
                    .first_byte_deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(context).is_ready());
                if expired {
                    tracing::info!(
                        "closing a connection that sent nothing before the authentication timeout"
                    );
                    // End of stream: the connection driver closes the connection.
                    return std::task::Poll::Ready(Ok(()));
                }
                std::task::Poll::Pending
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for CappedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.socket).poll_write(context, bytes)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.socket).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}
