//! `wharfd`: the Wharf broker.
//!
//! `wharfd [--data-dir DIR] [--listen HOST:PORT] [--kafka-listen HOST:PORT|off]
//!        [--amqp-listen HOST:PORT|off] [--http-listen HOST:PORT|off] [--config FILE]`; flags
//! override the file. Prints `wharfd listening on ADDR` on stdout once it accepts
//! connections, then one `<front end> listening on ADDR` line per other listener that is
//! on, in this order: `kafka listening on ADDR`, `amqp listening on ADDR`, `http listening
//! on ADDR`; and shuts down cleanly on SIGINT or SIGTERM.
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
use wharf_broker::config::{Authentication, BrokerConfig};
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
    /// Address to listen on (default 127.0.0.1:7420; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Kafka wire protocol listener (default 127.0.0.1:9092; `off` disables it; port 0 picks
    /// a free port).
    #[arg(long, value_name = "HOST:PORT|off")]
    kafka_listen: Option<String>,
    /// AMQP 0-9-1 listener (default 127.0.0.1:5672; `off` disables it; port 0 picks a free
    /// port).
    #[arg(long, value_name = "HOST:PORT|off")]
    amqp_listen: Option<String>,
    /// HTTP listener: metrics, health checks, admin API (default 127.0.0.1:7480; `off`
    /// disables it; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT|off")]
    http_listen: Option<String>,
    /// TOML configuration file for everything else.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Whether connections must log in: `required`, `optional`, or `auto` (the default:
    /// optional while every listener binds to loopback, required otherwise).
    #[arg(long, value_name = "required|optional|auto")]
    authentication: Option<String>,
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Command::User(command)) = args.command.take() {
        return user_command(command);
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
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(listen) = args.kafka_listen {
        config.kafka_listen = wharf_broker::config::listener_address(&listen);
    }
    if let Some(listen) = args.amqp_listen {
        config.amqp_listen = wharf_broker::config::listener_address(&listen);
    }
    if let Some(listen) = args.http_listen {
        config.http_listen = wharf_broker::config::listener_address(&listen);
    }
    if let Some(mode) = args.authentication {
        match Authentication::parse(&mode) {
            Ok(mode) => config.authentication = mode,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        }
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
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: BrokerConfig) -> Result<(), server::ServerError> {
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
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutdown requested");
        let _ = trigger.send(true);
    });
    handle.wait().await
}

/// SIGTERM and SIGINT (Ctrl-C), registered when made.
struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
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
