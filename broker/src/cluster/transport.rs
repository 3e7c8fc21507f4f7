//! RPCs between nodes over TCP (issue #20): the internal listener (`--cluster-peers` gives
//! each node's `HOST:PORT`) and the client side openraft's connections use.
//!
//! A frame is `[length u32 BE][body]`, at most [`FRAME_BYTES_MAX`], the body
//! `[BODY_ENCODING = 1][MessagePack]` ([`codec`]). A request is an [`Envelope`] (the
//! sender's cluster id, the sender, the intended receiver, the [`RaftRpc`]); the answer is
//! one [`RaftReply`]. The listener refuses a request meant for another node id or coming
//! from another cluster; a node not yet in a cluster adopts the cluster id of the first
//! member that writes to it. A replicated log's RPC from a node the applied metadata no
//! longer lists (`wharf cluster remove-node`) is refused too: the node keeps running until
//! it is stopped, and a group it led must elect another member to move off it (docs/CLUSTER.md,
//! "Moving replicas").
//!
//! With a shared secret (`cluster_secret_file`), the listener first sends a 16-byte nonce
//! of its own on each connection, and every frame's body, both ways, starts with a 32-byte
//! HMAC-SHA256 under the secret of `[nonce][direction u8: 0 request, 1 reply][sequence u64
//! BE, counted per direction from 0][body]`. A frame whose MAC does not verify closes the
//! connection: a node without the secret, or with another one, cannot be served, and a
//! recorded frame cannot be replayed on another connection or out of order.
//!
//! With mutual TLS (`cluster_tls_ca`, [`InternalTls`]) every connection is TLS before its
//! first byte: the listener presents the node's certificate (`tls_cert`) and asks the
//! connecting node for one from the cluster's CA; the connecting node presents its own and
//! accepts the listener's only from that CA and naming the host it dials. Frames and seals
//! are the same inside. A handshake that fails closes the connection (logged at WARN on
//! the listener; one that times out at DEBUG).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::codec;
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

/// The internal listener's shared secret (`cluster_secret_file`); never printed.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

/// Fewest bytes a secret may have.
pub const SECRET_BYTES_MIN: usize = 16;

impl Secret {
    /// A secret from a file's text (surrounding whitespace dropped).
    ///
    /// # Errors
    /// Fewer than [`SECRET_BYTES_MIN`] bytes.
    pub fn from_text(text: &str) -> Result<Secret, String> {
        let text = text.trim();
        if text.len() < SECRET_BYTES_MIN {
            return Err(format!(
                "the cluster secret has {} bytes; it needs at least {SECRET_BYTES_MIN}",
                text.len()
            ));
        }
        Ok(Secret(Arc::from(text.as_bytes())))
    }

    fn mac(&self, nonce: &[u8; NONCE_BYTES], direction: u8, sequence: u64) -> Hmac<Sha256> {
        // An HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(nonce);
        mac.update(&[direction]);
        mac.update(&sequence.to_be_bytes());
        mac
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// Bytes of the listener's per-connection nonce.
const NONCE_BYTES: usize = 16;
/// Bytes of a frame's MAC.
const MAC_BYTES: usize = 32;

/// A sealed frame that does not pass its check: the peer has another cluster secret (or
/// none). Carried inside the `io::Error` a read returns, so the listener can tell it from
/// a broken connection by its type ([`is_unsealed`]), not its text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unsealed(&'static str);

/// A TLS handshake the listener refused (another CA's certificate, or none): told apart from
/// a broken connection by its type, as [`Unsealed`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsRefused(String);

/// Whether `error` is a frame that failed its seal check.
fn is_unsealed(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<Unsealed>())
}
/// The direction byte of a request (client to listener) and of a reply.
const REQUEST: u8 = 0;
const REPLY: u8 = 1;

/// Longest a TLS handshake of the internal wire may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's byte stream: TCP, or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Builds the TLS configuration a new connection takes, or says why it cannot.
pub type TlsConfigSource<C> = Arc<dyn Fn() -> Result<Arc<C>, String> + Send + Sync>;

/// Mutual TLS of the internal wire (`cluster_tls_ca`): the configurations a new connection
/// takes, asked for when it is made, so a renewed certificate counts from the next one.
#[derive(Clone)]
pub struct InternalTls {
    /// The listener's side: the node's certificate, and the CA a connecting node's
    /// certificate must come from.
    pub server: TlsConfigSource<rustls::ServerConfig>,
    /// The connecting side: the node's certificate, and the CA a listener's must come
    /// from.
    pub client: TlsConfigSource<rustls::ClientConfig>,
    /// Counts the reloads of the files: a connection made under an older count is closed
    /// before its next request (pooled) or after its current one (accepted), so a revoked
    /// certificate or a replaced CA stops being served at once.
    pub generation: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InternalTls")
            .finish_non_exhaustive()
    }
}

/// The host part of `HOST:PORT` (an IPv6 address without its brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

/// One connection's framing: plain, or sealed under a secret with the listener's nonce
/// and a sequence number per direction.
struct Link {
    stream: Box<dyn Conn>,
    seal: Option<(Secret, [u8; NONCE_BYTES])>,
    sent: u64,
    received: u64,
    /// The TLS files' reload count when the connection was made (0 without TLS).
    generation: u64,
}

impl Link {
    /// The listener's side of a new connection: the TLS handshake when there is TLS, then
    /// the nonce when there is a secret.
    async fn accept(
        stream: TcpStream,
        secret: Option<Secret>,
        tls: Option<&InternalTls>,
    ) -> std::io::Result<Link> {
        // Read before the configuration: a reload between makes the link look older, not
        // newer, than what it was made with.
        let generation = tls.map_or(0, |tls| (tls.generation)());
        let mut stream: Box<dyn Conn> = match tls {
            None => Box::new(stream),
            Some(tls) => {
                let config = (tls.server)().map_err(std::io::Error::other)?;
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                    .map_err(|_| std::io::Error::other("the TLS handshake took too long"))?
                    .map_err(|error| {
                        std::io::Error::other(TlsRefused(format!("TLS handshake failed: {error}")))
                    })?;
                Box::new(accepted)
            }
        };
        let seal = match secret {
            None => None,
            Some(secret) => {
                let mut nonce = [0u8; NONCE_BYTES];
                getrandom::fill(&mut nonce)
                    .map_err(|error| std::io::Error::other(error.to_string()))?;
                stream.write_all(&nonce).await?;
                stream.flush().await?;
                Some((secret, nonce))
            }
        };
        let mut link = Link::new(stream, seal);
        link.generation = generation;
        Ok(link)
    }

    /// The client's side of a new connection to `addr`: the TLS handshake when there is
    /// TLS (the listener's certificate must name `addr`'s host), then the nonce when there
    /// is a secret.
    async fn connect(
        stream: TcpStream,
        secret: Option<Secret>,
        tls: Option<(&InternalTls, &str)>,
    ) -> std::io::Result<Link> {
        let generation = tls.map_or(0, |(tls, _)| (tls.generation)());
        let mut stream: Box<dyn Conn> = match tls {
            None => Box::new(stream),
            Some((tls, addr)) => {
                let config = (tls.client)().map_err(std::io::Error::other)?;
                let name = rustls::pki_types::ServerName::try_from(host_of(addr).to_string())
                    .map_err(|error| {
                        std::io::Error::other(format!("{addr} names no TLS server: {error}"))
                    })?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let connected =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
                        .await
                        .map_err(|_| std::io::Error::other("the TLS handshake took too long"))?
                        .map_err(|error| {
                            std::io::Error::other(format!("TLS handshake failed: {error}"))
                        })?;
                Box::new(connected)
            }
        };
        let seal = match secret {
            None => None,
            Some(secret) => {
                let mut nonce = [0u8; NONCE_BYTES];
                stream.read_exact(&mut nonce).await?;
                Some((secret, nonce))
            }
        };
        let mut link = Link::new(stream, seal);
        link.generation = generation;
        Ok(link)
    }

    fn new(stream: Box<dyn Conn>, seal: Option<(Secret, [u8; NONCE_BYTES])>) -> Link {
        Link {
            stream,
            seal,
            sent: 0,
            received: 0,
            generation: 0,
        }
    }

    /// Whether an idle link's peer has closed it or sent something unasked: a read
    /// polled once completes instead of waiting. An idle link in order has nothing to read.
    fn closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.stream.read(&mut byte).now_or_never().is_some()
    }

    async fn write<T: Serialize>(&mut self, direction: u8, value: &T) -> std::io::Result<()> {
        // Length and MAC first as placeholders, so the body is encoded in place.
        let head = 4 + if self.seal.is_some() { MAC_BYTES } else { 0 };
        let mut frame = vec![0u8; head];
        frame.push(BODY_ENCODING);
        codec::encode_into(value, &mut frame)?;
        let length = frame.len() - 4;
        if length > FRAME_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "frame of {length} bytes exceeds {FRAME_BYTES_MAX}"
            )));
        }
        frame[..4].copy_from_slice(&(length as u32).to_be_bytes());
        if let Some((secret, nonce)) = &self.seal {
            let mut mac = secret.mac(nonce, direction, self.sent);
            mac.update(&frame[head..]);
            frame[4..head].copy_from_slice(&mac.finalize().into_bytes());
        }
        self.stream.write_all(&frame).await?;
        // TLS keeps what it encrypted until flushed (a no-op on TCP).
        self.stream.flush().await?;
        self.sent += 1;
        Ok(())
    }

    async fn read<T: for<'de> Deserialize<'de>>(&mut self, direction: u8) -> std::io::Result<T> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).await?;
        let length = u32::from_be_bytes(length) as usize;
        if length > FRAME_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "frame of {length} bytes exceeds {FRAME_BYTES_MAX}"
            )));
        }
        let mut frame = vec![0u8; length];
        self.stream.read_exact(&mut frame).await?;
        let body = match &self.seal {
            None => &frame[..],
            Some((secret, nonce)) => {
                if frame.len() < MAC_BYTES {
                    return Err(std::io::Error::other(Unsealed(
                        "a frame too short to carry its MAC",
                    )));
                }
                let (mac, body) = frame.split_at(MAC_BYTES);
                let mut expected = secret.mac(nonce, direction, self.received);
                expected.update(body);
                expected.verify_slice(mac).map_err(|_| {
                    std::io::Error::other(Unsealed(
                        "a frame's MAC does not verify: the peer has another cluster secret (or none)",
                    ))
                })?;
                body
            }
        };
        self.received += 1;
        decode_body(body)
    }
}

/// The first byte of a frame's body: its encoding, MessagePack ([`codec`]).
pub const BODY_ENCODING: u8 = 1;

/// A frame's body: [`BODY_ENCODING`], then the value.
///
/// # Errors
/// Another first byte (a JSON body, `{`, comes from a build before the binary wire), or
/// bytes that do not decode as a `T`.
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> std::io::Result<T> {
    match body.split_first() {
        Some((&BODY_ENCODING, value)) => codec::decode(value),
        Some((b'{', _)) => Err(std::io::Error::other(
            "a frame in JSON: the peer runs a Wharf build from before the binary internal wire \
             (2026-12-05); run one build on every node",
        )),
        Some((other, _)) => Err(std::io::Error::other(format!(
            "a frame of body encoding {other}; this build reads {BODY_ENCODING} (MessagePack)"
        ))),
        None => Err(std::io::Error::other("an empty frame")),
    }
}

/// The body of a request frame to an [`Envelope`] (the listener's decoder of untrusted
/// bytes; fuzzed by `fuzz/fuzz_targets/decode_cluster_envelope.rs`).
///
/// # Errors
/// What [`decode_body`] says does not decode.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, String> {
    decode_body(bytes).map_err(|error| error.to_string())
}

/// A request's frame body (the inverse of [`decode_envelope`]).
///
/// # Errors
/// A value serde cannot encode.
pub fn encode_body<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut body = vec![BODY_ENCODING];
    codec::encode_into(value, &mut body)?;
    Ok(body)
}

/// The client side: one pooled connection set per address.
#[derive(Debug)]
pub struct TcpTransport {
    identity: Arc<Identity>,
    secret: Option<Secret>,
    tls: Option<InternalTls>,
    idle: Mutex<HashMap<String, Vec<Link>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Link")
            .field("sealed", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// A transport sending as `identity`'s node, sealing its frames under `secret` if any,
    /// over mutual TLS if `tls`.
    pub fn new(
        identity: Arc<Identity>,
        secret: Option<Secret>,
        tls: Option<InternalTls>,
    ) -> TcpTransport {
        TcpTransport {
            identity,
            secret,
            tls,
            idle: Mutex::new(HashMap::new()),
        }
    }

    async fn exchange(
        &self,
        target: NodeId,
        addr: &str,
        rpc: RaftRpc,
    ) -> Result<RaftReply, String> {
        let pooled = loop {
            let Some(mut link) = self
                .idle
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .get_mut(addr)
                .and_then(Vec::pop)
            else {
                break None;
            };
            // One made before the TLS files were reloaded goes: its peer's certificate may
            // have been revoked since. One its peer closed goes too (a restarted node's
            // old process): a request sent on it would end in an early EOF and read as
            // an unanswered change.
            let current = self
                .tls
                .as_ref()
                .is_none_or(|tls| link.generation == (tls.generation)());
            if current && !link.closed_by_peer() {
                break Some(link);
            }
        };
        let mut link = match pooled {
            Some(link) => link,
            None => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|error| format!("connect to node {target} at {addr}: {error}"))?;
                let _ = stream.set_nodelay(true);
                let tls = self.tls.as_ref().map(|tls| (tls, addr));
                Link::connect(stream, self.secret.clone(), tls)
                    .await
                    .map_err(|error| format!("connect to node {target} at {addr}: {error}"))?
            }
        };
        let envelope = Envelope {
            cluster_id: self.identity.cluster_id(),
            from: self.identity.node_id(),
            to: target,
            rpc,
        };
        link.write(REQUEST, &envelope)
            .await
            .map_err(|error| format!("send to node {target} at {addr}: {error}"))?;
        let reply: RaftReply = link
            .read(REPLY)
            .await
            .map_err(|error| format!("answer of node {target} at {addr}: {error}"))?;
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(addr.to_string())
            .or_default()
            .push(link);
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
    (secret, tls): (Option<Secret>, Option<InternalTls>),
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
        let (secret, tls) = (secret.clone(), tls.clone());
        tokio::spawn(async move {
            if let Err(error) = connection(stream, cluster, identity, (secret, tls), shutdown).await
            {
                if error
                    .get_ref()
                    .is_some_and(|inner| inner.is::<TlsRefused>())
                {
                    tracing::warn!(%peer, %error, "refused a cluster connection");
                } else {
                    tracing::debug!(%peer, %error, "cluster connection closed");
                }
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    cluster: Cluster,
    identity: Arc<Identity>,
    (secret, tls): (Option<Secret>, Option<InternalTls>),
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let sealed = secret.is_some();
    let mut link = Link::accept(stream, secret, tls.as_ref()).await?;
    loop {
        let envelope: Envelope = tokio::select! {
            read = link.read(REQUEST) => match read {
                Ok(envelope) => envelope,
                Err(error) => {
                    if sealed && is_unsealed(&error) {
                        tracing::warn!(%error, "refused a cluster connection");
                    }
                    return Err(error);
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let reply = match admit(&envelope, &identity, &cluster).await {
            Err(reason) => {
                tracing::warn!(from = envelope.from, %reason, "refused a cluster request");
                RaftReply::Refused(reason)
            }
            Ok(()) => cluster.serve(envelope.rpc).await,
        };
        link.write(REPLY, &reply).await?;
        // The TLS files were reloaded since the handshake: the peer's certificate may have
        // been revoked, so it must make a new connection (and handshake) to go on.
        if tls
            .as_ref()
            .is_some_and(|tls| link.generation != (tls.generation)())
        {
            return Ok(());
        }
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
    if matches!(envelope.rpc, RaftRpc::Replica { .. }) {
        let nodes = &cluster.applied().state.nodes;
        if !nodes.is_empty() && !nodes.contains_key(&envelope.from) {
            return Err(format!(
                "node {} was removed from the cluster; its replicated logs are not served",
                envelope.from
            ));
        }
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
        RaftRpc::Replica { .. } => "Replica",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected (client, listener) pair of links under the given secrets.
    async fn pair(client: Option<&str>, listener: Option<&str>) -> (Link, Link) {
        let secret = |text: Option<&str>| text.map(|text| Secret::from_text(text).expect("secret"));
        let bound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = bound.local_addr().expect("addr");
        let listener_secret = secret(listener);
        let accepting = tokio::spawn(async move {
            let (stream, _) = bound.accept().await.expect("accept");
            Link::accept(stream, listener_secret, None)
                .await
                .expect("accept link")
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        // A client without a secret does not wait for the nonce.
        let client = Link::connect(stream, secret(client), None)
            .await
            .expect("connect link");
        (client, accepting.await.expect("accepted"))
    }

    #[tokio::test]
    async fn sealed_frames_pass_under_one_secret_both_ways_and_in_order() {
        let shared = "a secret of some length";
        let (mut client, mut server) = pair(Some(shared), Some(shared)).await;
        for round in 0..3u64 {
            client.write(REQUEST, &round).await.expect("request");
            assert_eq!(server.read::<u64>(REQUEST).await.expect("read"), round);
            server.write(REPLY, &(round * 10)).await.expect("reply");
            assert_eq!(client.read::<u64>(REPLY).await.expect("read"), round * 10);
        }
        // Unsealed links speak the plain framing.
        let (mut client, mut server) = pair(None, None).await;
        client.write(REQUEST, &7u64).await.expect("request");
        assert_eq!(server.read::<u64>(REQUEST).await.expect("read"), 7);
    }

    #[tokio::test]
    async fn another_secret_or_none_is_refused() {
        let (mut client, mut server) =
            pair(Some("the client's secret"), Some("the listener's secret")).await;
        client.write(REQUEST, &1u64).await.expect("request");
        let error = server.read::<u64>(REQUEST).await.expect_err("refused");
        assert!(error.to_string().contains("MAC does not verify"), "{error}");
        assert!(is_unsealed(&error), "{error:?}");

        let (mut client, mut server) = pair(None, Some("the listener's secret")).await;
        client
            .write(REQUEST, &"a long enough plain request to pass the MAC size")
            .await
            .expect("request");
        let error = server.read::<String>(REQUEST).await.expect_err("refused");
        assert!(error.to_string().contains("MAC"), "{error}");
        assert!(is_unsealed(&error), "{error:?}");
    }

    #[tokio::test]
    async fn a_frame_sent_out_of_its_place_is_refused() {
        let shared = "a secret of some length";
        let (mut client, mut server) = pair(Some(shared), Some(shared)).await;
        // A request sealed as a reply (direction), or as the second (sequence), fails.
        client.write(REPLY, &1u64).await.expect("request");
        assert!(server.read::<u64>(REQUEST).await.is_err());
        let (mut client, mut server) = pair(Some(shared), Some(shared)).await;
        client.sent = 1;
        client.write(REQUEST, &1u64).await.expect("request");
        assert!(server.read::<u64>(REQUEST).await.is_err());
    }

    #[test]
    fn a_short_secret_is_refused_and_none_is_printed() {
        assert!(Secret::from_text("  short \n").is_err());
        let secret = Secret::from_text("sixteen bytes ok\n").expect("secret");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[tokio::test]
    async fn a_frame_is_its_length_the_encoding_octet_and_messagepack() {
        let bound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = bound.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut raw, _) = bound.accept().await.expect("accept");
        let mut client = Link::new(Box::new(stream), None);
        let envelope = Envelope {
            cluster_id: None,
            from: 1,
            to: 2,
            rpc: RaftRpc::Hello,
        };
        client.write(REQUEST, &envelope).await.expect("write");
        let mut frame = vec![0u8; 64];
        let read = raw.read(&mut frame).await.expect("read");
        let mut expected = vec![0, 0, 0, 0, BODY_ENCODING];
        // fixmap of 4: "cluster_id" nil, "from" 1, "to" 2, "rpc" "Hello".
        expected.push(0x84);
        expected.push(0xa0 | 10);
        expected.extend_from_slice(b"cluster_id");
        expected.push(0xc0);
        expected.extend_from_slice(&[0xa4, b'f', b'r', b'o', b'm', 1]);
        expected.extend_from_slice(&[0xa2, b't', b'o', 2]);
        expected.extend_from_slice(&[0xa3, b'r', b'p', b'c', 0xa5]);
        expected.extend_from_slice(b"Hello");
        let length = (expected.len() - 4) as u32;
        expected[..4].copy_from_slice(&length.to_be_bytes());
        assert_eq!(&frame[..read], &expected[..]);
        let decoded = decode_envelope(&expected[4..]).expect("decodes");
        assert_eq!((decoded.from, decoded.to), (1, 2));
        assert!(matches!(decoded.rpc, RaftRpc::Hello));
        assert_eq!(encode_body(&envelope).expect("encodes"), &expected[4..]);
    }

    /// What a test peer does with a connection after answering.
    #[derive(Clone, Copy, PartialEq)]
    enum AfterAnswer {
        Keep,
        Close,
    }

    /// A peer at a fresh address answering `calls` Hellos: all on one connection, or one
    /// per connection, closing each after its answer. Gives the address and the task,
    /// which answers how many connections it accepted.
    async fn hello_peer(
        after: AfterAnswer,
        calls: usize,
    ) -> (String, tokio::task::JoinHandle<usize>) {
        let bound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = bound.local_addr().expect("addr").to_string();
        let peer = tokio::spawn(async move {
            let (mut accepted, mut answered) = (0, 0);
            let mut link = None;
            while answered < calls {
                if link.is_none() {
                    let (stream, _) = bound.accept().await.expect("accept");
                    accepted += 1;
                    link = Some(Link::accept(stream, None, None).await.expect("link"));
                }
                let open = link.as_mut().expect("a link");
                let _: Envelope = open.read(REQUEST).await.expect("request");
                let reply = RaftReply::Hello {
                    node_id: 2,
                    cluster_id: None,
                };
                open.write(REPLY, &reply).await.expect("reply");
                answered += 1;
                if after == AfterAnswer::Close {
                    link = None;
                }
            }
            accepted
        });
        (addr, peer)
    }

    fn transport() -> TcpTransport {
        let fs: Arc<dyn crate::storage::Fs> = Arc::new(crate::storage::sim::SimFs::new());
        let identity = Identity::open(fs, std::path::Path::new("/cluster"), 1).expect("id");
        TcpTransport::new(Arc::new(identity), None, None)
    }

    #[tokio::test]
    async fn a_pooled_link_its_peer_closed_is_not_sent_on_and_an_open_one_is() {
        // A restarted node's old process closed every link to it; a request sent on one
        // ended in an early EOF, read as "the change may or may not have been made"
        // (CI, 2026-12-07). Method: a peer answers one Hello per connection and closes
        // it; once the close has reached the pooled link, the next call must still be
        // answered (on a fresh connection). A peer that keeps its connection answers
        // every call on the one link.
        let (addr, peer) = hello_peer(AfterAnswer::Close, 3).await;
        let transport = transport();
        for call in 0..3 {
            if call > 0 {
                // Wait until the pooled link reads the peer's close (a read that ends is
                // sticky: the EOF is read again).
                let mut link = transport
                    .idle
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .get_mut(&addr)
                    .and_then(Vec::pop)
                    .expect("the last call's link is pooled");
                let mut byte = [0u8; 1];
                let read =
                    tokio::time::timeout(Duration::from_secs(5), link.stream.read(&mut byte))
                        .await
                        .expect("the peer's close arrives");
                assert_eq!(read.expect("an EOF"), 0);
                transport
                    .idle
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .entry(addr.clone())
                    .or_default()
                    .push(link);
            }
            let reply = transport
                .call(2, &addr, RaftRpc::Hello, Duration::from_secs(5))
                .await
                .unwrap_or_else(|error| panic!("call {call}: {error}"));
            assert!(matches!(reply, RaftReply::Hello { node_id: 2, .. }));
        }
        assert_eq!(peer.await.expect("peer"), 3);

        let (addr, peer) = hello_peer(AfterAnswer::Keep, 3).await;
        for call in 0..3 {
            transport
                .call(2, &addr, RaftRpc::Hello, Duration::from_secs(5))
                .await
                .unwrap_or_else(|error| panic!("call {call} on a kept link: {error}"));
        }
        assert_eq!(
            peer.await.expect("peer"),
            1,
            "one connection for every call"
        );
    }

    #[test]
    fn a_json_body_or_an_unknown_encoding_is_refused_by_name() {
        let json = br#"{"cluster_id":null,"from":1,"to":2,"rpc":"Hello"}"#;
        let error = decode_envelope(json).expect_err("JSON refused");
        assert!(error.contains("a frame in JSON"), "{error}");
        let error = decode_envelope(&[9, 0x80]).expect_err("unknown refused");
        assert!(error.contains("body encoding 9"), "{error}");
        assert!(decode_envelope(&[]).is_err());
        assert!(decode_envelope(&[BODY_ENCODING, 0x80]).is_err());
    }

    #[test]
    fn the_fuzz_seeds_decode() {
        // fuzz/seeds/decode_cluster_envelope: each `.msgpack` seed is a valid request body,
        // so the fuzzer starts from inputs that reach deep into the decoder.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/decode_cluster_envelope");
        let mut decoded = 0;
        for entry in std::fs::read_dir(&dir).expect("seed dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|ext| ext == "msgpack") {
                let bytes = std::fs::read(&path).expect("seed");
                let envelope = decode_envelope(&bytes)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert_eq!(encode_body(&envelope).expect("encodes"), bytes);
                decoded += 1;
            }
        }
        assert!(decoded >= 4, "{decoded} seeds");
    }
}
