//! `wharfd`: the Wharf broker.
//!
//! `wharfd [--data-dir DIR] [--listen [SCHEME://]HOST:PORT] [--kafka-listen ...|off]
//!        [--amqp-listen ...|off] [--http-listen ...|off] [--tls-cert FILE --tls-key FILE
//!        [--tls-client-ca FILE]] [--authentication MODE] [--config FILE]`; flags override
//! the file. Prints `wharfd listening on ADDR` on stdout once it accepts connections, then
//! one `<front end> listening on ADDR` line per other listener that is on, in this order:
//! `kafka listening on ADDR`, `amqp listening on ADDR`, `http listening on ADDR` (ADDR is
//! the bound `HOST:PORT`, without the scheme, whether the listener speaks TLS or not);
//! shuts down cleanly on SIGINT or SIGTERM; on SIGHUP reloads the TLS certificate and the
//! resource alarms' limits from the config file.
//!
//! `wharfd user create NAME --data-dir DIR --password-stdin [--mechanism M]` creates a user
//! in a data directory no broker is running on (the first user, before any listener
//! requires authentication; issue #18).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: requests are decoded on one worker and their
/// buffers freed on another, which glibc's arenas serialize with a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wharf_broker::auth::Users;
use wharf_broker::config::{
    listener_setting, Authentication, BrokerConfig, ListenerKind, ListenerSpec,
};
use wharf_broker::core::auth_ops::set_credentials_blocking;
use wharf_broker::core::{Existing, NewCredential};
use wharf_broker::server;
use wharf_protocol::sasl::ScramMechanism;

/// The Wharf message broker.
#[derive(Debug, Parser)]
#[command(name = "wharfd", version, about = "The Wharf message broker")]
struct Args {
    /// Directory for partitions and metadata (default ./wharf-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Native protocol listener (default 127.0.0.1:7420; port 0 picks a free port). SCHEME
    /// is plaintext (the default), ssl (TLS), sasl_plaintext or sasl_ssl.
    #[arg(long, value_name = "[SCHEME://]HOST:PORT")]
    listen: Option<String>,
    /// Kafka wire protocol listener (default 127.0.0.1:9092; `off` disables it; port 0 picks
    /// a free port). SCHEME is plaintext (the default), ssl (TLS), sasl_plaintext or
    /// sasl_ssl, as Kafka names its listeners.
    #[arg(long, value_name = "[SCHEME://]HOST:PORT|off")]
    kafka_listen: Option<String>,
    /// AMQP 0-9-1 listener (default 127.0.0.1:5672; `off` disables it; port 0 picks a free
    /// port). amqps:// speaks TLS.
    #[arg(long, value_name = "[amqp://|amqps://]HOST:PORT|off")]
    amqp_listen: Option<String>,
    /// HTTP listener: metrics, health checks, admin API (default 127.0.0.1:7480; `off`
    /// disables it; port 0 picks a free port). https:// speaks TLS.
    #[arg(long, value_name = "[http://|https://]HOST:PORT|off")]
    http_listen: Option<String>,
    /// PEM certificate chain (leaf first) of every TLS listener; reloaded on SIGHUP and when
    /// the file changes.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates for mutual TLS: TLS clients must present a certificate signed by
    /// one of them, or the handshake fails.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// TOML configuration file for everything else.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Whether connections must log in: `required`, `optional`, or `auto` (the default:
    /// optional while every listener binds to loopback, required otherwise).
    #[arg(long, value_name = "required|optional|auto")]
    authentication: Option<String>,
    /// This node's id in the cluster (default 1).
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// Every node of the cluster as ID@HOST:PORT, this one included, comma-separated: the
    /// address of each node's internal (broker-to-broker) listener. Unset: a cluster of one.
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    cluster_peers: Option<String>,
    /// A file holding the secret every node of the cluster shares (16 bytes or more): the
    /// internal listener then serves only frames sealed with it (HMAC-SHA256), and this
    /// node seals its own. Give every node the same secret.
    #[arg(long, value_name = "PATH")]
    cluster_secret_file: Option<std::path::PathBuf>,
    /// PEM CA certificates of the cluster: the internal wire then speaks mutual TLS, this
    /// node presenting --tls-cert and accepting only peers whose certificate comes from
    /// these CAs (and names the host it dials). Give every node the same CA.
    #[arg(long, value_name = "PATH")]
    cluster_tls_ca: Option<std::path::PathBuf>,
    /// Let the internal listener bind beyond loopback with neither --cluster-secret-file
    /// nor --cluster-tls-ca: anyone who reaches it can change the cluster (a trusted
    /// network only). Without it such a node does not start.
    #[arg(long)]
    cluster_insecure: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Users of a stopped broker's data directory.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Creates a user (refused while a broker runs on the directory: use `wharf user create`).
    Create {
        /// The user name.
        name: String,
        /// The broker's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Only this mechanism's credential (default: both SCRAM-SHA-256 and SCRAM-SHA-512).
        #[arg(long, value_name = "SCRAM-SHA-256|SCRAM-SHA-512")]
        mechanism: Option<String>,
    },
}

/// `wharfd user create`: salts and stores the password's SCRAM credentials under the data
/// directory's lock.
fn user_command(command: UserCommand) -> ExitCode {
    let UserCommand::Create {
        name,
        data_dir,
        password_stdin: _,
        mechanism,
    } = command;
    let mechanisms = match mechanism.as_deref() {
        None => ScramMechanism::ALL.to_vec(),
        Some(text) => match ScramMechanism::from_name(text) {
            Some(mechanism) => vec![mechanism],
            None => {
                eprintln!("error: mechanism {text:?} is not SCRAM-SHA-256 or SCRAM-SHA-512");
                return ExitCode::from(2);
            }
        },
    };
    let mut password = String::new();
    if let Err(error) = std::io::stdin().read_line(&mut password) {
        eprintln!("error: cannot read the password from standard input: {error}");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    let fs: std::sync::Arc<dyn wharf_broker::storage::Fs> =
        std::sync::Arc::new(wharf_broker::storage::RealFs);
    if wharf_broker::core::cluster_ops::followed_a_cluster(&data_dir) {
        eprintln!(
            "error: {} is a cluster node's data directory: its users are the cluster's; create the user through any running node with `wharf user create {name} --password-stdin`",
            data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let (users, _lock) = match Users::open_offline(fs, &data_dir) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let credentials = mechanisms
        .iter()
        .map(|mechanism| (*mechanism, NewCredential::Password(password.clone())))
        .collect();
    match set_credentials_blocking(&users, &name, Existing::MustNotExist, credentials) {
        Ok(()) => {
            let names: Vec<&str> = mechanisms
                .iter()
                .map(|mechanism| mechanism.name())
                .collect();
            println!("created user {name} ({})", names.join(", "));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Command::User(command)) = args.command.take() {
        return user_command(command);
    }
    // Before storage and listeners start: see the function's doc (latency stalls on
    // huge-page faults).
    if let Err(error) = wharf_broker::storage::disable_transparent_huge_pages() {
        tracing::warn!(%error, "could not turn transparent huge pages off for this process");
    }
    let mut config = match &args.config {
        Some(path) => match BrokerConfig::from_file(path) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        },
        None => BrokerConfig::default(),
    };
    let reload = Reload {
        config_path: args.config.clone(),
    };
    if let Err(message) = apply_flags(&mut config, args) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Applies the flags over the file's settings.
///
/// # Errors
/// A listener setting that does not parse, naming its flag; an unknown `--authentication`.
fn apply_flags(config: &mut BrokerConfig, args: Args) -> Result<(), String> {
    let flag_error = |kind: ListenerKind| move |error| format!("{} {error}", kind.flag());
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = ListenerSpec::parse(ListenerKind::Native, &listen)
            .map_err(flag_error(ListenerKind::Native))?;
    }
    for (kind, setting, spec) in [
        (
            ListenerKind::Kafka,
            args.kafka_listen,
            &mut config.kafka_listen,
        ),
        (
            ListenerKind::Amqp,
            args.amqp_listen,
            &mut config.amqp_listen,
        ),
        (
            ListenerKind::Http,
            args.http_listen,
            &mut config.http_listen,
        ),
    ] {
        if let Some(setting) = setting {
            *spec = listener_setting(kind, &setting).map_err(flag_error(kind))?;
        }
    }
    if let Some(path) = args.tls_cert {
        config.tls.cert = Some(path);
    }
    if let Some(path) = args.tls_key {
        config.tls.key = Some(path);
    }
    if let Some(path) = args.tls_client_ca {
        config.tls.client_ca = Some(path);
    }
    if let Some(mode) = args.authentication {
        config.authentication = Authentication::parse(&mode)?;
    }
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(path) = args.cluster_secret_file {
        config.cluster_secret_file = Some(path);
    }
    if let Some(path) = args.cluster_tls_ca {
        config.cluster_tls_ca = Some(path);
    }
    if args.cluster_insecure {
        config.cluster_insecure = true;
    }
    if let Some(peers) = args.cluster_peers {
        config.cluster_peers = wharf_broker::config::parse_peers(&peers)
            .map_err(|error| format!("--cluster-peers {error}"))?;
    }
    Ok(())
}

async fn run(config: BrokerConfig, reload: Reload) -> Result<(), server::ServerError> {
    // The signal handlers go in before the broker says it is listening: whoever waits for
    // that line may send SIGTERM at once, and before the handler exists SIGTERM kills the
    // process without a clean stop (the next start then recovers every log).
    let signals = Signals::install();
    let handle = server::start(config).await?;
    println!("wharfd listening on {}", handle.local_addr());
    if let Some(kafka) = handle.kafka_addr() {
        println!("kafka listening on {kafka}");
    }
    if let Some(amqp) = handle.amqp_addr() {
        println!("amqp listening on {amqp}");
    }
    if let Some(http) = handle.http_addr() {
        println!("http listening on {http}");
    }
    let _ = std::io::stdout().flush();
    let trigger = handle.shutdown_trigger();
    let mut signals = signals;
    let hangup = signals.hangup.take();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutdown requested");
        let _ = trigger.send(true);
    });
    tokio::spawn(reload_on_hangup(
        hangup,
        (handle.tls(), handle.cluster_tls()),
        handle.broker(),
        reload,
    ));
    handle.wait().await
}

/// What a SIGHUP re-reads besides the certificate: the config file, if one was given, for
/// the settings that change while the broker runs.
struct Reload {
    config_path: Option<std::path::PathBuf>,
}

/// At every SIGHUP: reloads the TLS certificate (only logs when no listener speaks TLS)
/// and the internal wire's (`--cluster-tls-ca`), and re-reads the resource alarms' limits (`disk_free_limit_bytes`,
/// `memory_high_watermark`, `memory_high_watermark_bytes`) from the config file, as
/// `rabbitmqctl set_vm_memory_high_watermark` changes RabbitMQ's. A file that no longer
/// loads is logged and changes nothing.
async fn reload_on_hangup(
    hangup: Option<tokio::signal::unix::Signal>,
    (tls, cluster_tls): (
        Option<std::sync::Arc<wharf_broker::net::tls::Tls>>,
        Option<std::sync::Arc<wharf_broker::net::tls::Tls>>,
    ),
    broker: std::sync::Arc<wharf_broker::core::Broker>,
    reload: Reload,
) {
    let Some(mut hangup) = hangup else {
        return;
    };
    while hangup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP: no listener speaks TLS, nothing to reload"),
            Some(tls) => {
                let tls = tls.clone();
                // Reading the files is blocking work: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || tls.reload_logged()).await;
            }
        }
        if let Some(tls) = cluster_tls.clone() {
            let _ = tokio::task::spawn_blocking(move || tls.reload_logged()).await;
        }
        if let Some(path) = reload.config_path.clone() {
            let broker = broker.clone();
            let _ = tokio::task::spawn_blocking(move || {
                match BrokerConfig::from_file(&path).and_then(|config| {
                    config.validate()?;
                    Ok(config)
                }) {
                    Ok(config) => broker.set_alarm_limits(&config),
                    Err(error) => {
                        tracing::warn!(%error, "SIGHUP: config not reloaded");
                    }
                }
            })
            .await;
        }
    }
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP, registered when made: SIGHUP's default action
/// would end the process, so it is caught from the start as well (and taken out for the
/// reload task once the broker runs).
struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
            hangup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at the first SIGTERM or SIGINT (never, if neither could be registered).
    async fn wait(mut self) {
        tokio::select! {
            () = received(self.terminate.as_mut()) => {}
            () = received(self.interrupt.as_mut()) => {}
        }
    }
}

/// Resolves when `signal` arrives (never, for a signal that could not be registered).
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
