//! TLS on every listener (issue #18, transport), end to end against the real `wharfd`:
//! certificates made in the test (rcgen, `integration_tests::tls`), the `wharf` CLI and the
//! client crate on the native listener, confluent-kafka on the Kafka listener, pika on the
//! AMQP listener, HTTPS on the HTTP listener, mutual TLS, certificate reload on SIGHUP, and
//! plaintext beside TLS. Each test would fail if its listener served plaintext instead.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use integration_tests::tls::TestPki;
use integration_tests::{
    run_client_script, wharf, wharf_ok, wharfd_path, wharfd_user_create, BrokerProcess,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_protocol::messages::ApiVersionsRequest;
use wharf_protocol::{ApiKey, Request, Response};

/// How long a reload may take to show after SIGHUP (it runs on the blocking pool at once).
const RELOAD_DEADLINE: Duration = Duration::from_secs(20);

/// A broker whose four listeners all speak TLS with `pki`'s server certificate, plus
/// `extra` flags.
fn start_tls_broker(
    data_dir: &Path,
    pki: &TestPki,
    extra: &[&str],
    log: Option<&Path>,
) -> BrokerProcess {
    let mut args: Vec<String> = [
        "--kafka-listen",
        "ssl://127.0.0.1:0",
        "--amqp-listen",
        "amqps://127.0.0.1:0",
        "--http-listen",
        "https://127.0.0.1:0",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(pki.wharfd_args());
    args.extend(extra.iter().map(ToString::to_string));
    BrokerProcess::start_listening(
        data_dir,
        "ssl://127.0.0.1:0",
        &args,
        log.map(|path| (path, "info")),
    )
}

/// `wharf --tls --ca CA args...` against `broker`.
fn wharf_tls(broker: &BrokerProcess, ca: &Path, args: &[&str], stdin: &str) -> Output {
    let ca = ca.display().to_string();
    let mut all = vec!["--tls", "--ca", &ca];
    all.extend_from_slice(args);
    wharf(&broker.address(), &all, stdin)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        stderr(output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A rustls client configuration trusting `ca` (ring, as the broker), with an optional
/// client certificate.
fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots
            .add(certificate.expect("CA PEM"))
            .expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("client certificate file")
                    .map(|certificate| certificate.expect("client certificate PEM"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("client key"),
            )
            .expect("client certificate"),
    };
    Arc::new(config)
}

/// A TLS connection to `address`, checked against `ca` for the name 127.0.0.1.
async fn connect_tls(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP address");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, socket)
        .await
}

/// The DER certificate a new TLS connection to `address` is served.
async fn served_certificate(address: SocketAddr, ca: &Path) -> Vec<u8> {
    let stream = connect_tls(address, client_config(ca, None))
        .await
        .expect("TLS handshake");
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the broker presents a certificate")
        .to_vec()
}

/// Sends ApiVersions on an open native connection and checks the answer: the connection
/// still serves requests.
async fn api_versions<S>(stream: &mut S, correlation_id: u32)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let request = Request::ApiVersions(ApiVersionsRequest {
        client_name: "tls-test".to_string(),
    });
    wharf_protocol::api::encode_request(&request, correlation_id, &mut out);
    stream.write_all(&out).await.expect("write");
    stream.flush().await.expect("flush");
    let mut buffer = BytesMut::new();
    let frame = loop {
        if let Some(frame) =
            wharf_protocol::frame::decode_frame(&mut buffer, 1 << 20).expect("a valid frame")
        {
            break frame;
        }
        let read = stream.read_buf(&mut buffer).await.expect("read");
        assert!(read > 0, "the broker closed the connection");
    };
    assert_eq!(frame.header.correlation_id, correlation_id);
    match Response::decode(ApiKey::ApiVersions, frame.body).expect("decodes") {
        Response::ApiVersions(response) => assert!(!response.apis.is_empty()),
        other => panic!("not an ApiVersions answer: {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn the_cli_produces_and_consumes_over_tls_and_refuses_plaintext_and_untrusted_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let broker = start_tls_broker(&dir.path().join("data"), &pki, &[], None);
    let ca = &pki.ca_path;
    assert_ok(
        "topic create",
        &wharf_tls(
            &broker,
            ca,
            &["topic", "create", "secure", "--partitions", "1"],
            "",
        ),
    );
    assert_ok(
        "produce",
        &wharf_tls(&broker, ca, &["produce", "secure"], "one\ntwo\nthree\n"),
    );
    let consumed = assert_ok(
        "consume",
        &wharf_tls(
            &broker,
            ca,
            &[
                "consume",
                "secure",
                "--from",
                "earliest",
                "--max-messages",
                "3",
                "--timeout-ms",
                "10000",
            ],
            "",
        ),
    );
    assert_eq!(consumed, "one\ntwo\nthree\n");

    // A plaintext client gets a clear error, not a hang, and the broker keeps serving.
    let plaintext = wharf(&broker.address(), &["topic", "list"], "");
    assert!(
        !plaintext.status.success(),
        "plaintext against a TLS listener"
    );
    let message = stderr(&plaintext);
    assert!(message.starts_with("error: "), "{message}");
    assert!(
        message.contains("--tls"),
        "the error says what to do: {message}"
    );

    // A client that does not trust the broker's CA refuses it.
    let other = TestPki::create(&dir.path().join("other-pki"), "Another CA");
    let untrusted = wharf_tls(&broker, &other.ca_path, &["topic", "list"], "");
    assert!(
        !untrusted.status.success(),
        "a broker signed by an untrusted CA"
    );
    let message = stderr(&untrusted);
    assert!(message.contains("TLS handshake with broker"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");

    let listed = assert_ok(
        "topic list",
        &wharf_tls(&broker, ca, &["topic", "list"], ""),
    );
    assert!(listed.contains("secure"), "{listed}");

    // `wharf perf` makes its further connections with the same TLS settings.
    let summary = assert_ok(
        "perf produce",
        &wharf_tls(
            &broker,
            ca,
            &[
                "perf",
                "produce",
                "--topic",
                "perf-tls",
                "--messages",
                "200",
                "--size",
                "64",
                "--producers",
                "2",
            ],
            "",
        ),
    );
    let summary: Value = serde_json::from_str(summary.trim()).expect("one JSON summary");
    assert_eq!(summary["messages"], 200, "{summary}");

    // After a restart on the same ports the listeners speak TLS again.
    let mut broker = broker;
    broker.restart();
    let consumed = assert_ok(
        "consume after a restart",
        &wharf_tls(
            &broker,
            ca,
            &[
                "consume",
                "secure",
                "--from",
                "earliest",
                "--max-messages",
                "1",
                "--timeout-ms",
                "10000",
            ],
            "",
        ),
    );
    assert_eq!(consumed, "one\n");
    let kafka: SocketAddr = broker.kafka_address().parse().expect("address");
    runtime().block_on(async {
        assert_eq!(served_certificate(kafka, ca).await, pki.server_cert_der);
    });
}

#[test]
fn a_plaintext_listener_and_a_tls_listener_serve_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let mut args = vec![
        "--kafka-listen".to_string(),
        "ssl://127.0.0.1:0".to_string(),
    ];
    args.extend(pki.wharfd_args());
    let broker =
        BrokerProcess::start_listening(&dir.path().join("data"), "127.0.0.1:0", &args, None);
    // Produced in plaintext on the native listener, read by librdkafka over TLS.
    wharf_ok(
        &broker.address(),
        &["topic", "create", "mixed", "--partitions", "1"],
        "",
    );
    let output = run_client_script(
        "confluent_tls.py",
        &[
            &broker.kafka_address(),
            &pki.ca_path.display().to_string(),
            "mixed",
            "3",
        ],
    );
    let summary: Value =
        serde_json::from_str(assert_ok("confluent-kafka over SSL", &output).trim()).expect("JSON");
    assert_eq!(summary["acked"], 3);
    assert_eq!(
        summary["read"],
        serde_json::json!(["tls-0", "tls-1", "tls-2"])
    );
    let consumed = wharf_ok(
        &broker.address(),
        &[
            "consume",
            "mixed",
            "--from",
            "earliest",
            "--max-messages",
            "3",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    assert_eq!(consumed, "tls-0\ntls-1\ntls-2\n");
    // A TLS client at the plaintext listener is told so.
    let mismatched = wharf_tls(&broker, &pki.ca_path, &["topic", "list"], "");
    assert!(
        !mismatched.status.success(),
        "TLS against a plaintext listener"
    );
    let message = stderr(&mismatched);
    assert!(message.contains("does not seem to speak TLS"), "{message}");
}

#[test]
fn confluent_kafka_produces_and_consumes_over_ssl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let broker = start_tls_broker(&dir.path().join("data"), &pki, &[], None);
    let output = run_client_script(
        "confluent_tls.py",
        &[
            &broker.kafka_address(),
            &pki.ca_path.display().to_string(),
            "kafka-tls",
            "20",
        ],
    );
    let summary: Value =
        serde_json::from_str(assert_ok("confluent-kafka over SSL", &output).trim()).expect("JSON");
    assert_eq!(summary["acked"], 20);
    let expected: Vec<String> = (0..20).map(|index| format!("tls-{index}")).collect();
    assert_eq!(summary["read"], serde_json::json!(expected));
    // What librdkafka produced over TLS is the same topic the CLI reads over TLS.
    let consumed = assert_ok(
        "consume",
        &wharf_tls(
            &broker,
            &pki.ca_path,
            &[
                "consume",
                "kafka-tls",
                "--from",
                "earliest",
                "--max-messages",
                "1",
                "--timeout-ms",
                "10000",
            ],
            "",
        ),
    );
    assert_eq!(consumed, "tls-0\n");
}

#[test]
fn pika_publishes_and_consumes_over_amqps() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let broker = start_tls_broker(&dir.path().join("data"), &pki, &[], None);
    let output = run_client_script(
        "pika_tls.py",
        &[
            "127.0.0.1",
            &broker.amqp_address().port().to_string(),
            &pki.ca_path.display().to_string(),
            "amqps-queue",
            "10",
        ],
    );
    assert_eq!(assert_ok("pika over TLS", &output).trim(), "ok 10");
}

#[test]
fn https_serves_the_health_probe_and_refuses_plaintext_http() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let broker = start_tls_broker(&dir.path().join("data"), &pki, &[], None);
    let address: SocketAddr = broker.http_address().parse().expect("address");
    runtime().block_on(async {
        let mut stream = connect_tls(address, client_config(&pki.ca_path, None))
            .await
            .expect("TLS handshake");
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        stream.flush().await.expect("flush");
        let mut answer = Vec::new();
        // The server may end TLS without close_notify after `Connection: close`.
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // Plain HTTP to the HTTPS port gets no HTTP answer.
        let mut plain = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        plain
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut answer)).await;
        assert!(
            !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
            "plaintext HTTP was served on the HTTPS listener"
        );
    });
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let client_ca = pki.ca_path.display().to_string();
    let broker = start_tls_broker(
        &dir.path().join("data"),
        &pki,
        &["--tls-client-ca", &client_ca],
        None,
    );
    let ca = &pki.ca_path;
    let refused = wharf_tls(&broker, ca, &["topic", "list"], "");
    assert!(!refused.status.success(), "a client without a certificate");
    let message = stderr(&refused);
    assert!(message.contains("TLS handshake with broker"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    let cert = pki.client_cert_path.display().to_string();
    let key = pki.client_key_path.display().to_string();
    let with_certificate = |args: &[&str], stdin: &str| {
        let mut all = vec!["--cert", cert.as_str(), "--key", key.as_str()];
        all.extend_from_slice(args);
        wharf_tls(&broker, ca, &all, stdin)
    };
    assert_ok(
        "produce",
        &with_certificate(&["produce", "mtls"], "signed\n"),
    );
    let consumed = assert_ok(
        "consume",
        &with_certificate(
            &[
                "consume",
                "mtls",
                "--from",
                "earliest",
                "--max-messages",
                "1",
                "--timeout-ms",
                "10000",
            ],
            "",
        ),
    );
    assert_eq!(consumed, "signed\n");

    // A certificate from another CA is refused too.
    let other = TestPki::create(&dir.path().join("other-pki"), "Another CA");
    let other_cert = other.client_cert_path.display().to_string();
    let other_key = other.client_key_path.display().to_string();
    let foreign = wharf_tls(
        &broker,
        ca,
        &["--cert", &other_cert, "--key", &other_key, "topic", "list"],
        "",
    );
    assert!(
        !foreign.status.success(),
        "a certificate from an unknown CA"
    );

    // librdkafka with the client certificate.
    let output = run_client_script(
        "confluent_tls.py",
        &[
            &broker.kafka_address(),
            &client_ca,
            "mtls-kafka",
            "2",
            &cert,
            &key,
        ],
    );
    let summary: Value = serde_json::from_str(
        assert_ok("confluent-kafka with a client certificate", &output).trim(),
    )
    .expect("JSON");
    assert_eq!(summary["acked"], 2);
}

/// Goal: a renewed certificate is served to new connections after SIGHUP while a
/// connection opened before keeps working, and a broken one is refused with the old one
/// kept. Method: compare the DER of the certificate served to fresh connections with the
/// files written; exercise the old connection with a request after each reload.
#[test]
fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let log = dir.path().join("wharfd.log");
    let broker = start_tls_broker(&dir.path().join("data"), &pki, &[], Some(&log));
    let native = broker.addr();
    let first = pki.server_cert_der.clone();
    runtime().block_on(async {
        assert_eq!(served_certificate(native, &pki.ca_path).await, first);
        let mut open = connect_tls(native, client_config(&pki.ca_path, None))
            .await
            .expect("TLS handshake");
        api_versions(&mut open, 1).await;

        let renewed = pki.issue_server(2);
        pki.install_server(&renewed);
        broker.hangup();
        let deadline = Instant::now() + RELOAD_DEADLINE;
        while served_certificate(native, &pki.ca_path).await != renewed.cert_der {
            assert!(
                Instant::now() < deadline,
                "the renewed certificate is not served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The Kafka listener serves it too: one certificate for every TLS listener.
        let kafka: SocketAddr = broker.kafka_address().parse().expect("address");
        assert_eq!(
            served_certificate(kafka, &pki.ca_path).await,
            renewed.cert_der
        );
        api_versions(&mut open, 2).await;

        // A broken certificate file is refused: the renewed certificate stays.
        std::fs::write(
            &pki.server_cert_path,
            "-----BEGIN CERTIFICATE-----\ngarbage\n",
        )
        .unwrap();
        broker.hangup();
        let deadline = Instant::now() + RELOAD_DEADLINE;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("TLS certificate not reloaded")
        {
            assert!(Instant::now() < deadline, "the failed reload is not logged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            served_certificate(native, &pki.ca_path).await,
            renewed.cert_der
        );
        api_versions(&mut open, 3).await;
    });
}

#[test]
fn tls_settings_that_cannot_work_are_startup_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(wharfd_path())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--amqp-listen", "off", "--http-listen", "off"])
            .args(args)
            .output()
            .expect("running wharfd");
        assert!(!output.status.success(), "wharfd {args:?} started");
        stderr(&output)
    };
    let message = run(&[
        "--listen",
        "127.0.0.1:0",
        "--kafka-listen",
        "amqps://127.0.0.1:0",
    ]);
    assert!(
        message.contains(
            "--kafka-listen scheme amqps:// in \"amqps://127.0.0.1:0\" is for --amqp-listen"
        ),
        "{message}"
    );
    let message = run(&["--listen", "tls://127.0.0.1:0", "--kafka-listen", "off"]);
    assert!(
        message.contains("--listen unknown scheme tls://"),
        "{message}"
    );
    let message = run(&["--listen", "ssl://127.0.0.1:0", "--kafka-listen", "off"]);
    assert!(
        message.contains("--tls-cert FILE and --tls-key FILE"),
        "{message}"
    );
    let missing = dir.path().join("missing.pem").display().to_string();
    let message = run(&[
        "--listen",
        "ssl://127.0.0.1:0",
        "--kafka-listen",
        "off",
        "--tls-cert",
        &missing,
        "--tls-key",
        &missing,
    ]);
    assert!(
        message.contains("cannot load the TLS certificate"),
        "{message}"
    );
    assert!(message.contains("missing.pem"), "{message}");
}

/// Runs `wharfd user create NAME --data-dir DIR --password-stdin` with `password`.
fn create_user_offline(data_dir: &Path, name: &str, password: &str) {
    assert_ok(
        "wharfd user create",
        &wharfd_user_create(data_dir, name, password, &[]),
    );
}

/// `wharf --tls --ca CA [--user NAME with WHARF_PASSWORD] args` against `broker`.
fn wharf_tls_as(
    broker: &BrokerProcess,
    ca: &Path,
    login: Option<(&str, &str)>,
    args: &[&str],
) -> Output {
    let mut command = std::process::Command::new(integration_tests::wharf_path());
    command
        .arg("--broker")
        .arg(broker.address())
        .args(["--tls", "--ca"])
        .arg(ca)
        .env_remove("WHARF_PASSWORD")
        .env_remove("WHARF_USER");
    if let Some((user, password)) = login {
        command
            .args(["--user", user])
            .env("WHARF_PASSWORD", password);
    }
    command.args(args).output().expect("wharf runs")
}

#[test]
fn sasl_ssl_listeners_take_scram_logins_over_tls_and_refuse_bad_passwords() {
    // The issue's contract: `--kafka-listen sasl_ssl://…` with SCRAM-SHA-512 users, driven by
    // confluent-kafka with security.protocol=SASL_SSL; the native listener likewise with the
    // CLI. A sasl_* listener requires a login even on loopback. Authorization is required:
    // alice is a super user, bob has no ACL and is refused with Kafka's error.
    const PASSWORD: &str = "tls and scram";
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"), "Wharf test CA");
    let data = dir.path().join("data");
    create_user_offline(&data, "alice", PASSWORD);
    create_user_offline(&data, "bob", PASSWORD);
    let config = dir.path().join("wharfd.toml");
    std::fs::write(
        &config,
        "authorization = \"required\"\nsuper_users = [\"User:alice\"]\n",
    )
    .unwrap();
    let mut args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--kafka-listen",
        "sasl_ssl://127.0.0.1:0",
        "--amqp-listen",
        "off",
        "--http-listen",
        "off",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(pki.wharfd_args());
    let broker = BrokerProcess::start_listening(&data, "sasl_ssl://127.0.0.1:0", &args, None);
    let ca = pki.ca_path.display().to_string();

    let kafka = broker.kafka_address();
    let good = run_client_script(
        "sasl_clients.py",
        &[
            "kafka",
            &kafka,
            "SCRAM-SHA-512",
            "alice",
            PASSWORD,
            "sasl-ssl",
            &ca,
        ],
    );
    let stdout = assert_ok("confluent-kafka SASL_SSL SCRAM-SHA-512", &good);
    assert!(stdout.starts_with("ok v0,v1,v2"), "{stdout}");
    // A user with the right password but no ACL: logged in, refused the produce.
    let unallowed = run_client_script(
        "sasl_clients.py",
        &[
            "kafka",
            &kafka,
            "SCRAM-SHA-512",
            "bob",
            PASSWORD,
            "sasl-ssl",
            &ca,
        ],
    );
    assert_eq!(
        unallowed.status.code(),
        Some(4),
        "bob without an ACL over SASL_SSL: {}\n{}",
        String::from_utf8_lossy(&unallowed.stdout),
        stderr(&unallowed)
    );
    assert!(
        String::from_utf8_lossy(&unallowed.stdout).contains("TOPIC_AUTHORIZATION_FAILED"),
        "{}",
        String::from_utf8_lossy(&unallowed.stdout)
    );
    // The native listener: SCRAM over TLS works; no login is refused.
    let listed = assert_ok(
        "wharf --tls --user alice topic list",
        &wharf_tls_as(
            &broker,
            &pki.ca_path,
            Some(("alice", PASSWORD)),
            &["topic", "list"],
        ),
    );
    assert!(listed.contains("sasl-ssl"), "{listed}");
    let anonymous = wharf_tls_as(&broker, &pki.ca_path, None, &["topic", "list"]);
    assert!(!anonymous.status.success());
    assert!(
        stderr(&anonymous).contains("requires authentication"),
        "{}",
        stderr(&anonymous)
    );
    let wrong = wharf_tls_as(
        &broker,
        &pki.ca_path,
        Some(("alice", "wrong")),
        &["topic", "list"],
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("authentication failed"),
        "{}",
        stderr(&wrong)
    );
    // Last: librdkafka retries a refused login, which spends this address's failed-login
    // allowance for the minute.
    let bad = run_client_script(
        "sasl_clients.py",
        &[
            "kafka",
            &kafka,
            "SCRAM-SHA-512",
            "alice",
            "wrong",
            "sasl-ssl-bad",
            &ca,
        ],
    );
    assert_eq!(
        bad.status.code(),
        Some(3),
        "a wrong password over SASL_SSL: {}\n{}",
        String::from_utf8_lossy(&bad.stdout),
        stderr(&bad)
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("_AUTHENTICATION"));
}
