//! RPCs between nodes over TCP (issue #20): the internal listener (`--cluster-peers` gives
//! each node's `HOST:PORT`) and the client side openraft's connections use.
//!
//! A frame is `[length u32 BE][JSON]`, at most [`FRAME_BYTES_MAX`]. A request is an
//! [`Envelope`] (the sender's cluster id, the sender, the intended receiver, the
//! [`RaftRpc`]); the answer is one [`RaftReply`]. The listener refuses a request meant for
//! another node id or coming from another cluster; a node not yet in a cluster adopts the
//! cluster id of the first member that writes to it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::identity::Identity;
use super::metadata::NodeId;
use super::raft::{Cluster, RaftReply, RaftRpc, Transport};

/// Largest frame either side accepts: a metadata snapshot must fit.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A request as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's cluster id (None: it is not in a cluster yet).
    pub cluster_id: Option<String>,
    /// The sender.
    pub from: NodeId,
    /// The node the sender means to reach.
    pub to: NodeId,
    /// The request.
    pub rpc: RaftRpc,
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "frame of {} bytes exceeds {FRAME_BYTES_MAX}",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// Decodes a request's JSON (the listener's decoder of untrusted bytes; fuzzed by
/// `fuzz/fuzz_targets/decode_cluster_envelope.rs`).
///
/// # Errors
/// serde's description of what does not parse.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, String> {
    serde_json::from_slice(bytes).map_err(|error| error.to_string())
}

async fn read_frame<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "frame of {length} bytes exceeds {FRAME_BYTES_MAX}"
        )));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// The client side: one pooled connection set per address.
#[derive(Debug)]
pub struct TcpTransport {
    identity: Arc<Identity>,
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl TcpTransport {
    /// A transport sending as `identity`'s node.
    pub fn new(identity: Arc<Identity>) -> TcpTransport {
        TcpTransport {
            identity,
            idle: Mutex::new(HashMap::new()),
        }
    }

    async fn exchange(
        &self,
        target: NodeId,
        addr: &str,
        rpc: RaftRpc,
    ) -> Result<RaftReply, String> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get_mut(addr)
            .and_then(Vec::pop);
        let mut stream = match pooled {
            Some(stream) => stream,
            None => TcpStream::connect(addr)
                .await
                .map_err(|error| format!("connect to node {target} at {addr}: {error}"))?,
        };
        let _ = stream.set_nodelay(true);
        let envelope = Envelope {
            cluster_id: self.identity.cluster_id(),
            from: self.identity.node_id(),
            to: target,
            rpc,
        };
        write_frame(&mut stream, &envelope)
            .await
            .map_err(|error| format!("send to node {target} at {addr}: {error}"))?;
        let reply: RaftReply = read_frame(&mut stream)
            .await
            .map_err(|error| format!("answer of node {target} at {addr}: {error}"))?;
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(addr.to_string())
            .or_default()
            .push(stream);
        match reply {
            RaftReply::Refused(reason) => Err(reason),
            reply => Ok(reply),
        }
    }
}

impl Transport for TcpTransport {
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RaftReply, String>> + Send + '_>> {
        let addr = addr.to_string();
        Box::pin(async move {
            tokio::time::timeout(timeout, self.exchange(target, &addr, rpc))
                .await
                .unwrap_or_else(|_| Err(format!("node {target} at {addr} did not answer in time")))
        })
    }
}

/// Serves the internal listener until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    identity: Arc<Identity>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (cluster, identity, shutdown) = (cluster.clone(), identity.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = connection(stream, cluster, identity, shutdown).await {
                tracing::debug!(%peer, %error, "cluster connection closed");
            }
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    cluster: Cluster,
    identity: Arc<Identity>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    loop {
        let envelope: Envelope = tokio::select! {
            read = read_frame(&mut stream) => read?,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let reply = match admit(&envelope, &identity, &cluster).await {
            Err(reason) => {
                tracing::warn!(from = envelope.from, %reason, "refused a cluster request");
                RaftReply::Refused(reason)
            }
            Ok(()) => cluster.serve(envelope.rpc).await,
        };
        write_frame(&mut stream, &reply).await?;
    }
}

/// Whether a request may be served here (see the module documentation).
async fn admit(
    envelope: &Envelope,
    identity: &Arc<Identity>,
    cluster: &Cluster,
) -> Result<(), String> {
    if envelope.to != identity.node_id() {
        return Err(format!(
            "this is node {}, not node {}: check --cluster-peers",
            identity.node_id(),
            envelope.to
        ));
    }
    match (&envelope.cluster_id, identity.cluster_id()) {
        (_, _) if matches!(envelope.rpc, RaftRpc::Hello) => Ok(()),
        (None, _) => Err(format!(
            "node {} is not in a cluster yet; it cannot send {:?}",
            envelope.from,
            rpc_name(&envelope.rpc)
        )),
        (Some(theirs), Some(ours)) if theirs != &ours => Err(format!(
            "node {} belongs to cluster {ours}; node {} is of cluster {theirs}",
            identity.node_id(),
            envelope.from
        )),
        (Some(_), Some(_)) => Ok(()),
        (Some(theirs), None) => {
            let (adopting, theirs) = (identity.clone(), theirs.clone());
            let adopted = theirs.clone();
            tokio::task::spawn_blocking(move || adopting.adopt(&adopted))
                .await
                .map_err(|error| error.to_string())??;
            cluster.set_cluster_id(theirs);
            Ok(())
        }
    }
}

fn rpc_name(rpc: &RaftRpc) -> &'static str {
    match rpc {
        RaftRpc::Append(_) => "AppendEntries",
        RaftRpc::Vote(_) => "Vote",
        RaftRpc::Snapshot { .. } => "Snapshot",
        RaftRpc::Propose(_) => "Propose",
        RaftRpc::AddNode { .. } => "AddNode",
        RaftRpc::RemoveNode { .. } => "RemoveNode",
        RaftRpc::Hello => "Hello",
        RaftRpc::Forward(_) => "Forward",
    }
}
