//! Starting one node of the cluster (issue #20): its identity, its metadata log, its
//! internal listener, the bootstrap of a new cluster, and its registration in the metadata.
//!
//! - No `--cluster-peers`: a cluster of one. The node forms a cluster with itself on first
//!   start; no internal listener.
//! - `--cluster-peers ID@HOST:PORT,...` (this node among them): the node listens on its own
//!   entry's address. A node whose log is empty asks the others which cluster they are in;
//!   the lowest id among the peers forms the cluster (a new cluster id, the peers as
//!   voters) once a majority answers and none is in a cluster yet. The others join when the
//!   leader first writes to them. A node that finds its peers in a cluster waits to be
//!   written to (a restarted node whose disk was replaced catches up from a snapshot).
//! - Every node records its addresses in the metadata (`RegisterNode`) once a leader is
//!   elected, and again whenever they change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::identity::{new_cluster_id, Identity};
use super::metadata::{MetadataCommand, NodeId, NodeInfo};
use super::raft::{Cluster, RaftReply, RaftRpc, Timing, Transport};
use super::store::{Io, LogStore, MachineStore};
use super::transport::{serve, InternalTls, Secret, TcpTransport};
use crate::storage::fs::Fs;

/// The subdirectory of the data directory the cluster's files live in.
pub const CLUSTER_DIR: &str = "cluster";

/// How this node is configured.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `--node-id`.
    pub node_id: NodeId,
    /// `--cluster-peers`: every node's internal address, this one's included (empty: a
    /// cluster of one).
    pub peers: BTreeMap<NodeId, String>,
    /// The client listeners' advertised addresses, by name, for the metadata.
    pub listeners: BTreeMap<String, String>,
    /// The metadata log's timeouts.
    pub timing: Timing,
    /// `--cluster-secret-file`: the file holding the internal listener's shared secret
    /// (None: frames are not sealed).
    pub secret_file: Option<std::path::PathBuf>,
    /// `--cluster-tls-ca`: mutual TLS on the internal wire (None: plain TCP).
    pub tls: Option<InternalTls>,
    /// What guards the internal listener (`--cluster-secret-file`, `--cluster-tls-ca`,
    /// `--cluster-insecure`): beyond loopback it must be something.
    pub guard: InternalGuard,
    /// The settings every node should share, by config key, as this node runs with them
    /// (registered in its `NodeInfo`; `metadata::settings_differences`).
    pub agreed: BTreeMap<String, String>,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting or the data directory does not fit.
    #[error("{0}")]
    Config(String),
    /// The internal listener's address is taken.
    #[error("cannot bind the cluster listener on {address}: {source}; give this node another HOST:PORT in --cluster-peers (or `cluster_peers` in the config file)")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// Storage or openraft failed while starting.
    #[error("cannot start the metadata log: {0}")]
    Start(String),
}

/// What guards the internal (broker-to-broker) listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalGuard {
    /// A shared secret seals its frames, or mutual TLS.
    SecretOrTls,
    /// Nothing, as `--cluster-insecure` allows.
    OpenAllowed,
    /// Nothing.
    Open,
}

/// Why an internal listener bound at `bound` must not start: others can reach it (beyond
/// loopback) and nothing guards it (neither a secret nor TLS, and no `--cluster-insecure`).
/// Anyone reaching it could propose definitions, change the membership and publish or
/// consume through forwarded queue operations, past every ACL. A listener on loopback (a
/// development cluster on one machine) needs nothing, as the client listeners' logins.
/// `None`: it may start.
pub fn open_internal_listener(bound: SocketAddr, guard: InternalGuard) -> Option<String> {
    if bound.ip().is_loopback() || guard != InternalGuard::Open {
        return None;
    }
    Some(format!(
        "the cluster listener on {bound} (this node's entry of --cluster-peers) can be reached \
         from other machines and would serve them unauthenticated: give every node the same \
         --cluster-secret-file FILE (or mutual TLS with --cluster-tls-ca), or run it open on \
         a trusted network with --cluster-insecure (`cluster_insecure = true`)"
    ))
}

/// A started node: its metadata log and background tasks.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The metadata log.
    pub cluster: Cluster,
    /// The internal listener's bound address, if any.
    pub listen_addr: Option<std::net::SocketAddr>,
}

/// Starts the node over `data_dir` (see the module documentation); its tasks stop when
/// `shutdown` turns true.
///
/// # Errors
/// `NodeError` with what to change.
pub async fn start(
    settings: NodeSettings,
    data_dir: &Path,
    fs: Arc<dyn Fs>,
    shutdown: watch::Receiver<bool>,
) -> Result<ClusterNode, NodeError> {
    let dir = data_dir.join(CLUSTER_DIR);
    let node_id = settings.node_id;
    let own_addr = if settings.peers.is_empty() {
        None
    } else {
        Some(settings.peers.get(&node_id).cloned().ok_or_else(|| {
            NodeError::Config(format!(
                "--cluster-peers must list this node (--node-id {node_id}) with its own HOST:PORT"
            ))
        })?)
    };
    let listener = match &own_addr {
        None => None,
        Some(address) => {
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| NodeError::Bind {
                        address: address.clone(),
                        source,
                    })?,
            )
        }
    };
    let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    // An address given as an IP was checked as the server started (`server::start`); a
    // host name is checked as it resolved.
    if let Some(bound) = listen_addr {
        if let Some(refusal) = open_internal_listener(bound, settings.guard) {
            return Err(NodeError::Config(refusal));
        }
        if settings.guard == InternalGuard::OpenAllowed && !bound.ip().is_loopback() {
            tracing::warn!(
                %bound,
                "the cluster listener serves anyone who reaches it (--cluster-insecure): \
                 proposals, membership changes and queue operations, past every ACL"
            );
        }
    }
    let (identity, log, machine) = {
        let (fs, dir) = (fs.clone(), dir.clone());
        tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let identity = Identity::open(fs.clone(), &dir, node_id).map_err(NodeError::Config)?;
            let log = LogStore::open(fs.clone(), &dir, Io::Blocking)
                .map_err(|error| NodeError::Start(error.to_string()))?;
            let machine = MachineStore::open(fs, &dir, Io::Blocking)
                .map_err(|error| NodeError::Start(error.to_string()))?;
            Ok((Arc::new(identity), log, machine))
        })
        .await
        .map_err(|error| NodeError::Start(error.to_string()))??
    };
    let secret = match &settings.secret_file {
        None => None,
        Some(path) => {
            let reading = path.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(reading))
                .await
                .map_err(|error| NodeError::Start(error.to_string()))?;
            let text = read.map_err(|error| {
                NodeError::Config(format!(
                    "cannot read the cluster secret from {} (--cluster-secret-file): {error}",
                    path.display()
                ))
            })?;
            Some(Secret::from_text(&text).map_err(|error| {
                NodeError::Config(format!(
                    "{error} ({}, --cluster-secret-file)",
                    path.display()
                ))
            })?)
        }
    };
    let transport: Arc<dyn Transport> = Arc::new(TcpTransport::new(
        identity.clone(),
        secret.clone(),
        settings.tls.clone(),
    ));
    let cluster = Cluster::start(
        node_id,
        identity.cluster_id(),
        log,
        machine,
        transport.clone(),
        settings.timing,
    )
    .await
    .map_err(|error| NodeError::Start(error.to_string()))?;
    if let Some(listener) = listener {
        tokio::spawn(serve(
            listener,
            cluster.clone(),
            identity.clone(),
            (secret, settings.tls.clone()),
            shutdown.clone(),
        ));
    }
    if !cluster.is_initialized().await {
        if settings.peers.is_empty() {
            form(
                &cluster,
                &identity,
                BTreeMap::from([(node_id, String::new())]),
            )
            .await?;
        } else {
            tokio::spawn(bootstrap(
                cluster.clone(),
                identity.clone(),
                transport,
                settings.peers.clone(),
                shutdown.clone(),
            ));
        }
    }
    let info = NodeInfo {
        cluster_addr: own_addr.unwrap_or_default(),
        listeners: settings.listeners.clone(),
        settings: settings.agreed.clone(),
    };
    tokio::spawn(register(cluster.clone(), info, shutdown));
    Ok(ClusterNode {
        cluster,
        listen_addr,
    })
}

/// Forms a new cluster of `members` with this node in it.
async fn form(
    cluster: &Cluster,
    identity: &Arc<Identity>,
    members: BTreeMap<NodeId, String>,
) -> Result<(), NodeError> {
    let id = new_cluster_id().map_err(NodeError::Start)?;
    let stamping = identity.clone();
    let stamped = id.clone();
    tokio::task::spawn_blocking(move || stamping.adopt(&stamped))
        .await
        .map_err(|error| NodeError::Start(error.to_string()))?
        .map_err(NodeError::Config)?;
    cluster.set_cluster_id(id.clone());
    cluster
        .initialize(members)
        .await
        .map_err(|error| NodeError::Start(error.to_string()))?;
    tracing::info!(cluster_id = id, "formed a new cluster");
    Ok(())
}

/// Asks the peers until the cluster forms (see the module documentation).
async fn bootstrap(
    cluster: Cluster,
    identity: Arc<Identity>,
    transport: Arc<dyn Transport>,
    peers: BTreeMap<NodeId, String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node_id = identity.node_id();
    let lowest = peers.keys().next().copied() == Some(node_id);
    loop {
        if identity.cluster_id().is_some() || cluster.is_initialized().await {
            return;
        }
        let mut answered = 1;
        let mut in_a_cluster = false;
        for (peer, addr) in &peers {
            if *peer == node_id {
                continue;
            }
            if let Ok(RaftReply::Hello { cluster_id, .. }) = transport
                .call(*peer, addr, RaftRpc::Hello, Duration::from_secs(1))
                .await
            {
                answered += 1;
                in_a_cluster |= cluster_id.is_some();
            }
        }
        if lowest && !in_a_cluster && answered * 2 > peers.len() {
            match form(&cluster, &identity, peers.clone()).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, "could not form the cluster yet"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// How long a registration waits to be applied here before it is checked.
const REGISTERED_WAIT: Duration = Duration::from_secs(5);
/// How long before a registration applied without all its fields is proposed again.
const REGISTER_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Records this node's addresses and shared settings in the metadata once a leader takes
/// them, as this node sends them.
async fn register(cluster: Cluster, info: NodeInfo, mut shutdown: watch::Receiver<bool>) {
    let node_id = cluster.node_id();
    loop {
        if cluster.applied().state.nodes.get(&node_id) == Some(&info) {
            return;
        }
        let command = MetadataCommand::RegisterNode {
            node_id,
            info: info.clone(),
        };
        let mut wait = Duration::from_millis(500);
        match cluster.propose(command).await {
            Ok(proposed) => {
                // Checked as applied: a leader of an older build decodes the forwarded
                // command without the fields it does not know (the settings) and commits
                // that; this node then proposes again, seldom, until a leader of this
                // build takes it.
                cluster.wait_applied(proposed.index, REGISTERED_WAIT).await;
                if cluster.applied().state.nodes.get(&node_id) == Some(&info) {
                    return;
                }
                tracing::debug!("this node's registration was applied without all its fields; registering again later");
                wait = REGISTER_AGAIN_AFTER;
            }
            Err(error) => tracing::debug!(%error, "registering this node in the metadata"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_listener_beyond_loopback_needs_a_secret_tls_or_cluster_insecure() {
        let loopback: SocketAddr = "127.0.0.1:7521".parse().expect("address");
        let ipv6_loopback: SocketAddr = "[::1]:7521".parse().expect("address");
        let everywhere: SocketAddr = "0.0.0.0:7521".parse().expect("address");
        let private: SocketAddr = "10.0.0.7:7521".parse().expect("address");
        for bound in [loopback, ipv6_loopback] {
            assert_eq!(open_internal_listener(bound, InternalGuard::Open), None);
        }
        for bound in [everywhere, private] {
            let refused = open_internal_listener(bound, InternalGuard::Open).expect("refused");
            for named in [
                bound.to_string().as_str(),
                "--cluster-secret-file",
                "--cluster-tls-ca",
                "--cluster-insecure",
            ] {
                assert!(refused.contains(named), "{named} in {refused}");
            }
            for guard in [InternalGuard::SecretOrTls, InternalGuard::OpenAllowed] {
                assert_eq!(open_internal_listener(bound, guard), None, "{guard:?}");
            }
        }
    }
}
