//! The `wharfd` server: validates the configuration, binds the front ends' listeners, opens
//! the broker core off the runtime, serves until shutdown, then closes gracefully.
//!
//! Layers, top to bottom: this file (wiring) → [`crate::frontend`] (one per protocol, over
//! the shared [`crate::net`] machinery) → [`crate::core`] → domain (`streams`, `groups`,
//! `txn`, `queue`) → [`crate::append`] → [`crate::storage`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::core::{Broker, OpenError};
use crate::frontend::native::Native;
use crate::net::listener;
use crate::storage::{Clock, SystemClock};

/// How long shutdown waits for in-flight requests before closing storage anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening the broker's state failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Binding a listener failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// A background task panicked or closing storage failed.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The address the native listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, finishes in-flight requests, flushes and closes storage cleanly.
    ///
    /// # Errors
    /// `ServerError::Shutdown` if storage could not be closed cleanly.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after a shutdown).
    ///
    /// # Errors
    /// As for `shutdown`.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(ServerError::Shutdown(error.to_string())),
        }
    }

    /// A sender that triggers shutdown (for signal handlers).
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Opens storage, binds the listener and starts serving.
///
/// # Errors
/// `ServerError` if the config is invalid, storage cannot be opened or the address bound.
pub async fn start(config: BrokerConfig) -> Result<ServerHandle, ServerError> {
    config
        .validate()
        .map_err(|error| ServerError::Config(error.to_string()))?;
    let (listener, local_addr) =
        listener::bind(&config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                address: config.listen.clone(),
                source,
            })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let open_config = config.clone();
    // Opening storage reads and fsyncs many files: keep it off the runtime's workers.
    let opened = tokio::task::spawn_blocking(move || Broker::open(&open_config, clock))
        .await
        .map_err(|error| ServerError::Shutdown(error.to_string()))??;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (broker, background) = opened.start(shutdown_rx.clone());
    let native = Native::new(
        broker.clone(),
        config.frame_bytes_max,
        config.advertised_address.as_deref(),
        local_addr,
    )
    .map_err(ServerError::Config)?;
    let task = tokio::spawn(async move {
        // Every connection holds a clone of `done_tx`; when all are dropped, `done_rx`
        // yields None.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        listener::accept_loop(
            Arc::new(native),
            listener,
            config.connections_max,
            shutdown_rx,
            done_tx,
        )
        .await;
        if tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish within the shutdown grace period");
        }
        broker
            .close(background)
            .await
            .map_err(|error| ServerError::Shutdown(error.to_string()))?;
        tracing::info!("wharfd stopped cleanly");
        Ok(())
    });
    tracing::info!(%local_addr, "wharfd listening");
    Ok(ServerHandle {
        local_addr,
        shutdown,
        task,
    })
}
