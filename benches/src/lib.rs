//! Criterion benchmarks of Wharf; see benches/benches/ and docs/BENCHMARKS.md. This library
//! holds what several benches share.

use tokio::runtime::Runtime;
use wharf_broker::config::BrokerConfig;
use wharf_broker::server::ServerHandle;
use wharf_client::{Client, ClientConfig};

/// A real broker in this process (native listener on a loopback port, the other front
/// ends off, `flush = always`), with its data under `$WHARF_BENCH_DIR` (default: the
/// current directory), and a client connected to it.
pub struct InProcess {
    /// Runs the broker and the client; benches `block_on` it.
    pub runtime: Runtime,
    /// The connected client.
    pub client: Client,
    server: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("in-process broker")
    }
}

impl InProcess {
    /// Starts the broker (data dir named after `prefix`) and connects the client.
    ///
    /// # Panics
    /// If the runtime, the data dir, the broker or the connection cannot be made: a bench
    /// cannot run without them.
    pub fn start(prefix: &str) -> InProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let base = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| ".".to_string());
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(base)
            .expect("bench dir");
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: wharf_broker::config::ListenerSpec::plaintext("127.0.0.1:0"),
            kafka_listen: None,
            amqp_listen: None,
            http_listen: None,
            ..BrokerConfig::default()
        };
        let server = runtime
            .block_on(wharf_broker::server::start(config))
            .expect("broker starts");
        let address = server.local_addr().to_string();
        let client = runtime
            .block_on(Client::connect(ClientConfig::new(address)))
            .expect("client connects");
        InProcess {
            runtime,
            client,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Stops the broker cleanly.
    ///
    /// # Panics
    /// If the broker does not stop cleanly.
    pub fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            self.runtime
                .block_on(server.shutdown())
                .expect("clean shutdown");
        }
    }
}
