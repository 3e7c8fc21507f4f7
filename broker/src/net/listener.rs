//! Accepts connections for one front end, caps how many are open at once with a semaphore,
//! and stops accepting on shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::net::connection::{self, Protocol};

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
/// `connections_max` are open at once. Each connection task holds a clone of `done` so the
/// caller can wait for all of them to finish.
pub async fn accept_loop<P: Protocol>(
    protocol: Arc<P>,
    listener: TcpListener,
    connections_max: usize,
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
        let protocol = protocol.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            connection::serve(protocol, socket, peer, shutdown).await;
            drop(permit);
            drop(done);
        });
    }
}
