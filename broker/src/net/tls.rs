//! TLS for the listeners (issue #18): the server certificate loaded from PEM files into a
//! rustls `ServerConfig` (ring provider, TLS 1.2 and 1.3), an optional client CA for mutual
//! TLS, the handshake of one accepted connection under [`HANDSHAKE_TIMEOUT`], and reload.
//!
//! Reload: the current `Arc<ServerConfig>` sits behind a `RwLock` that is read once per
//! accepted connection (a clone of the `Arc`, no I/O under the lock). [`Tls::reload`] builds a
//! new configuration from the files and swaps it in only if the whole of it loads, so a
//! half-written or bad PEM file logs an error and the old certificate stays. Open
//! connections keep the configuration they were accepted with; new ones get the new one.
//! `wharfd` reloads on SIGHUP, and [`watch_files`] reloads when a file's modification time
//! or length changes.
//!
//! **Architecture invariant:** nothing a client sends during the handshake can panic the
//! broker or hold up the accept loop: the handshake runs in the connection's own task, a
//! failure is logged at DEBUG and closes only that connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

use crate::net::connection::Transport;
use crate::net::listener::{CappedListener, CappedStream};

/// Longest a TLS handshake may take from accept: a client that connects and sends nothing
/// (or trickles bytes) holds a connection permit, so it must not hold it for long; 10 s is
/// ample for a handshake over a slow link.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`watch_files`] looks at the certificate files' modification times: a renewed
/// certificate (certbot, cert-manager) is served within seconds without a SIGHUP, for the
/// cost of three `stat` calls.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(3);

/// Largest PEM file read: a certificate chain or a CA bundle is tens of kilobytes (the
/// whole Mozilla bundle is about 250 KiB); a path pointing at something else must not make
/// the broker read it into memory.
pub const PEM_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Handshakes of the HTTP listener that may wait, finished, for hyper to take them: the
/// connection cap bounds them anyway; this only bounds the channel.
const HTTP_HANDSHAKES_QUEUED_MAX: usize = 64;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than [`PEM_FILE_BYTES_MAX`].
    #[error("{path} has {file_bytes} bytes, more than the {bytes_max} a PEM file may have")]
    TooLarge {
        path: PathBuf,
        file_bytes: u64,
        bytes_max: u64,
    },
    /// A file is not PEM, or holds nothing of what it should.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// The certificate and key do not make a configuration (the key does not match the
    /// certificate, an unsupported key type, an unusable client CA).
    #[error("{reason}")]
    Config { reason: String },
    /// `tls_cert` or `tls_key` is not set.
    #[error("a TLS listener needs --tls-cert FILE and --tls-key FILE (or `tls_cert` and `tls_key` in the config file)")]
    NotConfigured,
}

/// The certificate files, and the configuration they gave last.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    /// What new connections are accepted with: read (an `Arc` clone) once per connection.
    current: RwLock<Arc<ServerConfig>>,
    /// For a cluster's internal wire ([`Tls::load_cluster`]): what new connections to
    /// other nodes are made with, from the same files. None for the client listeners.
    client: Option<RwLock<Arc<rustls::ClientConfig>>>,
    /// How many reloads have swapped new configurations in: a connection made under an
    /// older one can tell (the internal wire closes its connections then, so a revoked
    /// certificate stops being served).
    generation: std::sync::atomic::AtomicU64,
    /// The files' modification times and lengths when they were last loaded (or tried);
    /// its lock also serializes reloads.
    stamps: Mutex<Vec<FileStamp>>,
}

/// What [`watch_files`] compares: a replaced or rewritten file changes one of them.
type FileStamp = Option<(SystemTime, u64)>;

impl Tls {
    /// Loads the certificate chain `cert`, its key `key` and, for mutual TLS, the client
    /// CA certificates `client_ca` (PEM files).
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, TlsError> {
        let stamps = stamps([Some(cert), Some(key), client_ca].into_iter().flatten());
        let config = build(cert, key, client_ca)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(config)),
            client: None,
            generation: std::sync::atomic::AtomicU64::new(0),
            stamps: Mutex::new(stamps),
        })
    }

    /// The TLS of a cluster's internal wire (`--cluster-tls-ca`, issue #20): the node's
    /// certificate chain `cert` and key `key` on both sides, and the cluster's CA
    /// certificates `ca`, which a connecting node's certificate must come from (the
    /// listener asks for one) and which a listener's must come from (naming the host
    /// dialled). Reloaded as the listeners' is.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load_cluster(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, TlsError> {
        let mut tls = Tls::load(cert, key, Some(ca))?;
        tls.client = Some(RwLock::new(Arc::new(client_config(cert, key, ca)?)));
        Ok(tls)
    }

    /// How many reloads have succeeded since the load.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The configuration a connection to another node made now gets (`None` unless
    /// loaded with [`Tls::load_cluster`]).
    pub fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.client.as_ref().map(|client| {
            client
                .read()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone()
        })
    }

    /// Reads the files again and, if they make a configuration, serves it to new
    /// connections; otherwise the old one stays.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn reload(&self) -> Result<(), TlsError> {
        // Held for the whole reload, so a SIGHUP and the file watcher reloading at once
        // cannot swap in what the slower of them read before the faster one's newer files.
        // No `.await` runs under it: reloads run on the blocking pool.
        let mut last_stamps = self
            .stamps
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *last_stamps = stamps(self.paths());
        let config = build(&self.cert, &self.key, self.client_ca.as_deref())?;
        // Both sides of a cluster's TLS load, or neither is swapped in.
        let client = match (&self.client, &self.client_ca) {
            (Some(_), Some(ca)) => Some(client_config(&self.cert, &self.key, ca)?),
            _ => None,
        };
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(config);
        if let (Some(current), Some(client)) = (&self.client, client) {
            *current.write().unwrap_or_else(|poison| poison.into_inner()) = Arc::new(client);
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// [`Tls::reload`], logged: INFO when the new certificate is served, ERROR (the old one
    /// stays, the operator must fix the files) when it cannot be.
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.cert.display(),
                internal_wire = self.client.is_some(),
                "TLS certificate reloaded"
            ),
            Err(error) => tracing::error!(
                %error,
                "TLS certificate not reloaded; new connections keep the previous one"
            ),
        }
    }

    /// Reloads (logged) if a file's modification time or length changed since the last
    /// load or attempt. A failed attempt is not repeated until a file changes again.
    pub fn reload_if_changed(&self) {
        let stamps = stamps(self.paths());
        let changed = *self
            .stamps
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            != stamps;
        if changed {
            self.reload_logged();
        }
    }

    /// The configuration a connection accepted now gets.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Runs the server side of the handshake on `stream`, at most [`HANDSHAKE_TIMEOUT`];
    /// `None` (logged at DEBUG) if the client failed it, sent something else, went away or
    /// took too long.
    pub async fn handshake<S>(&self, stream: S, peer: SocketAddr) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed; closing connection");
                None
            }
            Err(_) => {
                tracing::debug!(
                    %peer,
                    timeout_ms = HANDSHAKE_TIMEOUT.as_millis(),
                    "TLS handshake timed out; closing connection"
                );
                None
            }
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// Reloads `tls` whenever its files change, every [`RELOAD_POLL_INTERVAL`], until
/// `shutdown` turns true. The files are read on the blocking pool.
pub async fn watch_files(tls: Arc<Tls>, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(RELOAD_POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let tls = tls.clone();
        if tokio::task::spawn_blocking(move || tls.reload_if_changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A TLS connection: the reader and the writer share the rustls session through tokio's
/// `split` (a lock held only while one polls), since TLS records cannot be read and written
/// by two owners of the socket.
impl Transport for TlsStream<TcpStream> {
    type Reader = ReadHalf<TlsStream<TcpStream>>;
    type Writer = WriteHalf<TlsStream<TcpStream>>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// The HTTP listener's connections, handshaken in tasks of their own so a slow handshake
/// never holds up the next accept; hyper takes them finished, in the order they finish.
#[derive(Debug)]
pub struct TlsIncoming {
    handshaken: mpsc::Receiver<(TlsStream<CappedStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsIncoming {
    /// Accepts from `listener` (under its connection cap) until this is dropped, and
    /// handshakes each connection with `tls`.
    ///
    /// # Errors
    /// The listener's address could not be read.
    pub fn start(listener: CappedListener, tls: Arc<Tls>) -> std::io::Result<TlsIncoming> {
        let local_addr = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(HTTP_HANDSHAKES_QUEUED_MAX);
        tokio::spawn(accept_and_handshake(listener, tls, sender));
        Ok(TlsIncoming {
            handshaken,
            local_addr,
        })
    }

    /// The next handshaken connection.
    pub async fn accept(&mut self) -> (TlsStream<CappedStream>, SocketAddr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_and_handshake(
    mut listener: CappedListener,
    tls: Arc<Tls>,
    sender: mpsc::Sender<(TlsStream<CappedStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = sender.closed() => return,
        };
        let (tls, sender) = (tls.clone(), sender.clone());
        tokio::spawn(async move {
            if let Some(stream) = tls.handshake(stream, peer).await {
                // Fails only when the HTTP server has stopped: the connection just closes.
                let _ = sender.send((stream, peer)).await;
            }
        });
    }
}

/// The modification time and length of each file (`None` for one that cannot be read).
fn stamps<'a>(paths: impl Iterator<Item = &'a Path>) -> Vec<FileStamp> {
    paths
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}

/// The client configuration of one node of a cluster whose internal traffic speaks mutual
/// TLS (`--cluster-tls-ca`, issue #20): it presents the certificate chain `cert` with its
/// key `key`, and trusts a listener only with a certificate from the CA certificates in
/// `ca` that names the host it dials.
///
/// # Errors
/// [`TlsError`] naming the file and what is wrong with it.
fn client_config(cert: &Path, key: &Path, ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let chain = read_certificates(cert)?;
    let private_key = read_private_key(key)?;
    let roots = read_roots(ca)?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|error| TlsError::Config {
            reason: error.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private_key)
        .map_err(|error| TlsError::Config {
            reason: format!(
                "certificate {} with key {}: {error}",
                cert.display(),
                key.display()
            ),
        })
}

/// The CA certificates of a PEM file, as a trust store.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|error| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {error}"),
        })?;
    }
    Ok(roots)
}

/// The private key of a PEM file.
fn read_private_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key_pem = read_pem(key)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::Pem {
        path: key.to_path_buf(),
        reason: pem_reason(&error, "private key"),
    })
}

/// The server configuration of a certificate chain file, its key file and, for mutual TLS,
/// a client CA file.
fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates(cert)?;
    let private_key = read_private_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|error| TlsError::Config {
            reason: error.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|error| TlsError::Config {
                    reason: format!("client CA {}: {error}", path.display()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, private_key)
        .map_err(|error| TlsError::Config {
            reason: format!(
                "certificate {} with key {}: {error}",
                cert.display(),
                key.display()
            ),
        })
}

/// The crypto provider: ring, named here rather than taken from a process-wide default, so
/// another crate enabling aws-lc-rs cannot change (or make ambiguous) what the broker uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file of at most [`PEM_FILE_BYTES_MAX`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file_bytes = std::fs::metadata(path).map_err(read_error)?.len();
    if file_bytes > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            file_bytes,
            bytes_max: PEM_FILE_BYTES_MAX,
        });
    }
    std::fs::read(path).map_err(read_error)
}

/// Every certificate of a PEM file, in file order; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_path_buf(),
            reason: pem_reason(&error, "certificate"),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
        });
    }
    Ok(certificates)
}

fn pem_reason(error: &rustls::pki_types::pem::Error, what: &str) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => format!("holds no PEM {what}"),
        other => format!("invalid PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    /// A self-signed certificate for 127.0.0.1 named `common_name`: (certificate PEM, key
    /// PEM, certificate DER).
    fn self_signed(common_name: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key).expect("certificate");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    impl Files {
        fn write(&self, cert_pem: &str, key_pem: &str) {
            std::fs::write(&self.cert, cert_pem).expect("write");
            std::fs::write(&self.key, key_pem).expect("write");
        }

        fn load(&self) -> Result<Tls, TlsError> {
            Tls::load(&self.cert, &self.key, None)
        }
    }

    fn files(cert_pem: &str, key_pem: &str) -> Files {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.write(cert_pem, key_pem);
        files
    }

    /// Handshakes a client trusting `trusted_der` with `tls` over an in-memory pipe and
    /// returns the certificate it was served (`None`: the handshake failed).
    async fn served(tls: &Tls, trusted_der: &[u8]) -> Option<Vec<u8>> {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(trusted_der.to_vec()))
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let (client, server) = tokio::join!(
            connector.connect(name, client_end),
            tls.handshake(server_end, peer)
        );
        server?;
        let client = client.ok()?;
        let (_, session) = client.get_ref();
        Some(session.peer_certificates()?.first()?.to_vec())
    }

    /// A CA and, written under `dir` as `<name>.pem`/`<name>.key`, a node certificate it
    /// signed for `hosts` (server and client use, as a cluster node's); returns the CA's
    /// file and the node's (cert, key) files.
    fn cluster_pki(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let node = params.signed_by(&key, &ca, &ca_key).expect("node");
        std::fs::create_dir_all(dir).expect("dir");
        let paths = (
            dir.join("ca.pem"),
            dir.join("node.pem"),
            dir.join("node.key"),
        );
        std::fs::write(&paths.0, ca.pem()).expect("write");
        std::fs::write(&paths.1, node.pem()).expect("write");
        std::fs::write(&paths.2, key.serialize_pem()).expect("write");
        paths
    }

    /// Whether a node dialling `host` with `client` and a node listening with `server`
    /// complete their handshake (both sides must).
    async fn handshake(client: &Tls, server: &Tls, host: &str) -> bool {
        handshake_as(client.client_config().expect("client"), server, host).await
    }

    /// As [`handshake`], with the dialling side's configuration `client`.
    async fn handshake_as(client: Arc<rustls::ClientConfig>, server: &Tls, host: &str) -> bool {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let (connected, accepted) = tokio::join!(
            async {
                // A refused client certificate shows only when the client reads.
                let mut stream = connector.connect(name, client_end).await.ok()?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                stream.write_all(b"ping").await.ok()?;
                stream.flush().await.ok()?;
                let mut answer = [0u8; 4];
                stream.read_exact(&mut answer).await.ok()?;
                Some(answer)
            },
            async {
                let mut stream = server.handshake(server_end, peer).await?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut asked = [0u8; 4];
                stream.read_exact(&mut asked).await.ok()?;
                stream.write_all(b"pong").await.ok()?;
                stream.flush().await.ok()?;
                Some(())
            }
        );
        connected == Some(*b"pong") && accepted.is_some()
    }

    #[tokio::test]
    async fn cluster_nodes_handshake_only_with_the_clusters_ca_and_the_host_dialled() {
        // Goal: the internal wire's mutual TLS (`--cluster-tls-ca`): two nodes with
        // certificates from the cluster's CA talk; a node with another CA's certificate is
        // refused by the listener (and refuses it), and a listener whose certificate does
        // not name the host dialled is refused by the connecting node.
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = cluster_pki(&dir.path().join("ours"), &["127.0.0.1", "localhost"]);
        let theirs = cluster_pki(&dir.path().join("theirs"), &["127.0.0.1"]);
        let node = Tls::load_cluster(&ours.1, &ours.2, &ours.0).expect("loads");
        let other = Tls::load_cluster(&ours.1, &ours.2, &ours.0).expect("loads");
        let stranger = Tls::load_cluster(&theirs.1, &theirs.2, &theirs.0).expect("loads");
        assert!(handshake(&node, &other, "127.0.0.1").await);
        assert!(handshake(&node, &other, "localhost").await);
        assert!(!handshake(&stranger, &node, "127.0.0.1").await);
        assert!(!handshake(&node, &stranger, "127.0.0.1").await);
        assert!(!handshake(&node, &other, "10.9.9.9").await);
        // The listener's own check: a dialler that trusts the cluster's CA (so it accepts
        // the listener) but presents another CA's certificate, or none, is refused.
        let impostor = client_config(&theirs.1, &theirs.2, &ours.0).expect("config");
        assert!(!handshake_as(Arc::new(impostor), &node, "127.0.0.1").await);
        let roots = read_roots(&ours.0).expect("CA");
        let anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(!handshake_as(Arc::new(anonymous), &node, "127.0.0.1").await);
        // A listener's configuration has no client side.
        let (cert_pem, key_pem, _) = self_signed("listener");
        assert!(files(&cert_pem, &key_pem)
            .load()
            .expect("loads")
            .client_config()
            .is_none());
    }

    #[tokio::test]
    async fn a_cluster_reload_swaps_both_sides_to_the_new_files() {
        // Goal: a renewed cluster CA and certificate count for the next connections on both
        // sides (the listener's client CA and the dialler's trust and certificate).
        let dir = tempfile::tempdir().expect("temp dir");
        let first = cluster_pki(&dir.path().join("first"), &["127.0.0.1"]);
        let second = cluster_pki(&dir.path().join("second"), &["127.0.0.1"]);
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).expect("dir");
        let files = (
            live.join("ca.pem"),
            live.join("node.pem"),
            live.join("node.key"),
        );
        let install = |from: &(PathBuf, PathBuf, PathBuf)| {
            std::fs::copy(&from.0, &files.0).expect("copy");
            std::fs::copy(&from.1, &files.1).expect("copy");
            std::fs::copy(&from.2, &files.2).expect("copy");
        };
        install(&first);
        let node = Tls::load_cluster(&files.1, &files.2, &files.0).expect("loads");
        let old = Tls::load_cluster(&first.1, &first.2, &first.0).expect("loads");
        let new = Tls::load_cluster(&second.1, &second.2, &second.0).expect("loads");
        assert!(handshake(&node, &old, "127.0.0.1").await);
        assert!(!handshake(&node, &new, "127.0.0.1").await);
        install(&second);
        node.reload().expect("reloads");
        assert!(handshake(&node, &new, "127.0.0.1").await);
        assert!(handshake(&new, &node, "127.0.0.1").await);
        assert!(!handshake(&node, &old, "127.0.0.1").await);
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_to_new_connections() {
        let (cert_pem, key_pem, first_der) = self_signed("first");
        let files = files(&cert_pem, &key_pem);
        let tls = files.load().expect("loads");
        assert_eq!(served(&tls, &first_der).await, Some(first_der.clone()));
        let (cert_pem, key_pem, second_der) = self_signed("second, renewed");
        files.write(&cert_pem, &key_pem);
        tls.reload().expect("reloads");
        assert_eq!(served(&tls, &second_der).await, Some(second_der));
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_certificate_served() {
        let (cert_pem, key_pem, der) = self_signed("kept");
        let files = files(&cert_pem, &key_pem);
        let tls = files.load().expect("loads");
        let before = tls.server_config();
        // Bad PEM, then a key that belongs to another certificate.
        files.write("-----BEGIN CERTIFICATE-----\nnot base64\n", &key_pem);
        let error = tls.reload().expect_err("bad PEM");
        assert!(matches!(error, TlsError::Pem { .. }), "{error}");
        let (_, other_key, _) = self_signed("other");
        files.write(&cert_pem, &other_key);
        let error = tls.reload().expect_err("mismatched key");
        assert!(matches!(error, TlsError::Config { .. }), "{error}");
        assert!(Arc::ptr_eq(&before, &tls.server_config()));
        assert_eq!(served(&tls, &der).await, Some(der));
    }

    #[test]
    fn reload_if_changed_reloads_only_after_a_file_changed() {
        let (cert_pem, key_pem, _) = self_signed("a");
        let files = files(&cert_pem, &key_pem);
        let tls = files.load().expect("loads");
        let before = tls.server_config();
        tls.reload_if_changed();
        assert!(
            Arc::ptr_eq(&before, &tls.server_config()),
            "nothing changed"
        );
        // A longer name makes longer files, so the change shows even within one mtime tick.
        let (cert_pem, key_pem, _) = self_signed("a much longer common name than before");
        files.write(&cert_pem, &key_pem);
        tls.reload_if_changed();
        assert!(
            !Arc::ptr_eq(&before, &tls.server_config()),
            "the files changed"
        );
    }

    #[test]
    fn load_names_the_file_that_is_wrong() {
        let (cert_pem, _, _) = self_signed("no key");
        let files = files(&cert_pem, "no key here");
        let error = files.load().expect_err("no key");
        assert!(error.to_string().contains("key.pem"), "{error}");
        assert!(
            error.to_string().contains("holds no PEM private key"),
            "{error}"
        );
        let error = Tls::load(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
            None,
        )
        .expect_err("missing file");
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/cert.pem"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_client_that_sends_garbage_fails_the_handshake_without_harm() {
        let (cert_pem, key_pem, _) = self_signed("garbage");
        let files = files(&cert_pem, &key_pem);
        let tls = files.load().expect("loads");
        for garbage in [
            &b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01][..],
            &[0x16; 4096][..],
        ] {
            let (mut client_end, server_end) = tokio::io::duplex(64 * 1024);
            tokio::io::AsyncWriteExt::write_all(&mut client_end, garbage)
                .await
                .expect("write");
            tokio::io::AsyncWriteExt::shutdown(&mut client_end)
                .await
                .expect("shutdown");
            let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
            assert!(tls.handshake(server_end, peer).await.is_none());
        }
    }
}
