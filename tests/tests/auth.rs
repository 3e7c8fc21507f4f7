//! Authentication end to end (issue #18): users made offline with `wharfd user create` and
//! online with `wharf user`, then logins on every protocol against the same users: the
//! native CLI (SCRAM), confluent-kafka (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN on
//! SASL_PLAINTEXT), pika (PLAIN), HTTP basic auth; refusals of bad passwords and of
//! unauthenticated requests when authentication is required; users surviving a restart; the
//! authentication timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::{
    basic, http_call, http_get, run_client_script, wharf_as, wharfd_path, wharfd_user_create,
    BrokerProcess,
};

const PASSWORD: &str = "correct horse battery staple";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Starts a broker on `data_dir` that requires authentication.
fn start_required(data_dir: &Path, extra_toml: &str) -> BrokerProcess {
    BrokerProcess::start_with_config(
        data_dir,
        &format!("authentication = \"required\"\n{extra_toml}"),
    )
}

#[test]
fn offline_user_then_every_protocol_logs_in_and_refuses_bad_passwords() {
    // Goal: one user, made offline, logs in on every protocol with the right password and is
    // refused with each protocol's own error on a wrong one; requests without a login are
    // refused when authentication is required; the user survives a restart.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let created = wharfd_user_create(&data_dir, "alice", PASSWORD, &[]);
    let stdout = assert_ok(&created, "wharfd user create");
    assert!(stdout.contains("created user alice"), "{stdout}");
    // librdkafka retries a refused login several times a second; the failure limit is
    // raised here so the refusals below do not lock the test's address out (its own test
    // follows).
    let mut broker = start_required(&data_dir, "login_failures_per_minute_max = 1000\n");
    let address = broker.address();

    // Native CLI: SCRAM-SHA-256 (the default) and SCRAM-SHA-512 log in; a wrong password and
    // no login are refused with clear errors.
    let topic_create = ["topic", "create", "orders", "--partitions", "1"];
    assert_ok(
        &wharf_as(&address, Some(("alice", PASSWORD)), &topic_create, ""),
        "wharf topic create as alice",
    );
    assert_ok(
        &wharf_as(
            &address,
            Some(("alice", PASSWORD)),
            &["--sasl-mechanism", "SCRAM-SHA-512", "topic", "list"],
            "",
        ),
        "wharf topic list with SCRAM-SHA-512",
    );
    let wrong = wharf_as(&address, Some(("alice", "wrong")), &["topic", "list"], "");
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("authentication failed"),
        "{}",
        text(&wrong.stderr)
    );
    let anonymous = wharf_as(&address, None, &["topic", "list"], "");
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous.stderr).contains("requires authentication"),
        "{}",
        text(&anonymous.stderr)
    );

    // Kafka: confluent-kafka over SASL_PLAINTEXT with both SCRAM mechanisms and PLAIN.
    let kafka = broker.kafka_address();
    for (mechanism, topic) in [
        ("SCRAM-SHA-512", "kafka-512"),
        ("SCRAM-SHA-256", "kafka-256"),
        ("PLAIN", "kafka-plain"),
    ] {
        let output = run_client_script(
            "sasl_clients.py",
            &["kafka", &kafka, mechanism, "alice", PASSWORD, topic],
        );
        let stdout = assert_ok(&output, &format!("confluent-kafka {mechanism}"));
        assert!(stdout.starts_with("ok v0,v1,v2"), "{mechanism}: {stdout}");
    }
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
        let output = run_client_script(
            "sasl_clients.py",
            &["kafka", &kafka, mechanism, "alice", "wrong", "kafka-bad"],
        );
        assert_eq!(
            output.status.code(),
            Some(3),
            "{mechanism} with a wrong password: {}\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        assert!(
            text(&output.stdout).contains("_AUTHENTICATION"),
            "{}",
            text(&output.stdout)
        );
    }
    // A Kafka request before the login closes the connection, as Kafka's authenticator does.
    assert_kafka_metadata_refused(&kafka);

    // AMQP: pika with PLAIN; a wrong password is 403 ACCESS_REFUSED, which pika reports as an
    // authentication error.
    let amqp = broker.amqp_address();
    let (host, port) = (amqp.ip().to_string(), amqp.port().to_string());
    let good = run_client_script(
        "sasl_clients.py",
        &["amqp", &host, &port, "alice", PASSWORD, "q1"],
    );
    assert!(assert_ok(&good, "pika as alice").starts_with("ok hello"));
    let bad = run_client_script(
        "sasl_clients.py",
        &["amqp", &host, &port, "alice", "wrong", "q1"],
    );
    assert_eq!(
        bad.status.code(),
        Some(3),
        "{}\n{}",
        text(&bad.stdout),
        text(&bad.stderr)
    );
    // The default guest login is gone once a user exists.
    let guest = run_client_script(
        "sasl_clients.py",
        &["amqp", &host, &port, "guest", "guest", "q1"],
    );
    assert_eq!(guest.status.code(), Some(3), "{}", text(&guest.stdout));

    // HTTP: basic auth; missing or wrong credentials are 401 with a challenge; probes stay
    // open.
    let http = broker.http_address();
    let (status, _) = http_get(&http, "/api/v1/topics", Some(&basic("alice", PASSWORD)));
    assert_eq!(status, 200);
    for authorization in [None, Some(basic("alice", "wrong"))] {
        let (status, answer) = http_get(&http, "/api/v1/topics", authorization.as_deref());
        assert_eq!(status, 401, "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{answer}"
        );
    }
    let (status, _) = http_get(&http, "/metrics", None);
    assert_eq!(
        status, 401,
        "metrics need a login when authentication is required"
    );
    for probe in ["/health/live", "/health/ready"] {
        assert_eq!(http_get(&http, probe, None).0, 200, "{probe}");
    }

    // HTTP bearer tokens: made by a logged-in user, usable, revocable; anonymous callers get
    // none.
    let alice = basic("alice", PASSWORD);
    let (kept_id, kept) = create_token(&http, &alice);
    let (revoked_id, revoked) = create_token(&http, &alice);
    assert_eq!(
        http_get(&http, "/api/v1/topics", Some(&format!("Bearer {kept}"))).0,
        200
    );
    let (status, listing) = http_get(&http, "/api/v1/tokens", Some(&format!("Bearer {kept}")));
    assert_eq!(status, 200, "{listing}");
    assert!(
        listing.contains(&kept_id) && listing.contains(&revoked_id),
        "{listing}"
    );
    assert!(
        !listing.contains(&kept),
        "a listing shows the token itself: {listing}"
    );
    let path = format!("/api/v1/tokens/{revoked_id}");
    assert_eq!(http_call(&http, "DELETE", &path, Some(&alice)).0, 204);
    assert_eq!(
        http_get(&http, "/api/v1/topics", Some(&format!("Bearer {revoked}"))).0,
        401
    );
    assert_eq!(
        http_get(&http, "/api/v1/topics", Some("Bearer wharf_00_nope")).0,
        401
    );
    let users_file = std::fs::read(data_dir.join("users")).expect("users file");
    assert!(
        !users_file
            .windows(kept.len())
            .any(|window| window == kept.as_bytes()),
        "the users file holds a token"
    );

    // The user and its token survive a restart.
    broker.restart();
    let address = broker.address();
    assert_ok(
        &wharf_as(&address, Some(("alice", PASSWORD)), &["topic", "list"], ""),
        "wharf after a restart",
    );
    let http = broker.http_address();
    assert_eq!(
        http_get(&http, "/api/v1/topics", Some(&format!("Bearer {kept}"))).0,
        200
    );
}

/// `POST /api/v1/tokens` as `authorization`; returns the token's id and the token.
fn create_token(http: &str, authorization: &str) -> (String, String) {
    let (status, answer) = http_call(http, "POST", "/api/v1/tokens", Some(authorization));
    assert_eq!(status, 201, "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let value: serde_json::Value = serde_json::from_str(body.trim()).expect("json");
    let field = |name: &str| value[name].as_str().expect("a string field").to_string();
    assert!(field("token").starts_with("wharf_"), "{body}");
    (field("id"), field("token"))
}

/// Sends a Kafka Metadata v1 request before any login and expects the broker to close.
fn assert_kafka_metadata_refused(kafka: &str) {
    let mut stream = TcpStream::connect(kafka).expect("connect to the Kafka listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // Metadata (key 3) v1: header v1 (key, version, correlation id, null client id), then a
    // null topic array.
    let mut frame = Vec::new();
    frame.extend_from_slice(&3i16.to_be_bytes());
    frame.extend_from_slice(&1i16.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.extend_from_slice(&(-1i32).to_be_bytes());
    let mut request = (i32::try_from(frame.len()).expect("small"))
        .to_be_bytes()
        .to_vec();
    request.extend_from_slice(&frame);
    stream.write_all(&request).expect("write metadata");
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(
        read.is_ok() && answer.is_empty(),
        "the broker answered {answer:?} ({read:?}) instead of closing"
    );
}

#[test]
fn online_user_admin_creates_lists_changes_and_deletes_users() {
    // Goal: `wharf user create|list|passwd|delete` against a running broker (authentication
    // optional on loopback), and the users they make log in; Kafka's admin client manages
    // SCRAM users too.
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(dir.path());
    let address = broker.address();
    let created = wharf_as(
        &address,
        None,
        &["user", "create", "bob", "--password-stdin"],
        "pw-one\n",
    );
    assert!(assert_ok(&created, "wharf user create").contains("created user bob"));
    let again = wharf_as(
        &address,
        None,
        &["user", "create", "bob", "--password-stdin"],
        "pw\n",
    );
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let listed = assert_ok(
        &wharf_as(&address, None, &["user", "list"], ""),
        "wharf user list",
    );
    assert!(listed.contains("bob"), "{listed}");
    assert!(listed.contains("SCRAM-SHA-256,SCRAM-SHA-512"), "{listed}");
    assert_ok(
        &wharf_as(&address, Some(("bob", "pw-one")), &["topic", "list"], ""),
        "login as bob",
    );
    assert_ok(
        &wharf_as(
            &address,
            None,
            &["user", "passwd", "bob", "--password-stdin"],
            "pw-two\n",
        ),
        "wharf user passwd",
    );
    let old = wharf_as(&address, Some(("bob", "pw-one")), &["topic", "list"], "");
    assert!(!old.status.success(), "the old password still works");
    assert_ok(
        &wharf_as(&address, Some(("bob", "pw-two")), &["topic", "list"], ""),
        "login with the new password",
    );

    // Kafka's admin client: AlterUserScramCredentials and DescribeUserScramCredentials.
    let output = run_client_script(
        "sasl_clients.py",
        &[
            "kafka-admin",
            &broker.kafka_address(),
            "SCRAM-SHA-256",
            "bob",
            "pw-two",
            "carol",
            "pw-3",
        ],
    );
    let stdout = assert_ok(&output, "confluent admin user scram credentials");
    assert!(stdout.contains("SCRAM_SHA_512:4096"), "{stdout}");
    assert_ok(
        &wharf_as(
            &address,
            Some(("carol", "pw-3")),
            &["--sasl-mechanism", "SCRAM-SHA-512", "topic", "list"],
            "",
        ),
        "login as the user Kafka's admin client made",
    );

    assert_ok(
        &wharf_as(&address, None, &["user", "delete", "bob"], ""),
        "wharf user delete",
    );
    let listed = assert_ok(
        &wharf_as(&address, None, &["--json", "user", "list"], ""),
        "list",
    );
    assert!(!listed.contains("\"bob\""), "{listed}");
    let gone = wharf_as(&address, Some(("bob", "pw-two")), &["topic", "list"], "");
    assert!(!gone.status.success());
}

#[test]
fn offline_create_refuses_a_running_broker_and_required_needs_a_user() {
    // Goal: `wharfd user create` will not write under a running broker, and a broker that
    // requires authentication with no user refuses to start, saying how to make one.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::start(&data_dir);
    let refused = wharfd_user_create(&data_dir, "alice", PASSWORD, &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("locked by a running wharfd"),
        "{}",
        text(&refused.stderr)
    );
    drop(broker);

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let config = dir.path().join("required.toml");
    std::fs::write(&config, "authentication = \"required\"\n").expect("config");
    let output = Command::new(wharfd_path())
        .arg("--data-dir")
        .arg(&empty)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "off",
            "--amqp-listen",
            "off",
        ])
        .args(["--http-listen", "off", "--config"])
        .arg(&config)
        .output()
        .expect("running wharfd");
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("no user exists"), "{stderr}");
    assert!(stderr.contains("wharfd user create"), "{stderr}");
}

#[test]
fn the_authentication_timeout_closes_an_idle_unauthenticated_socket_on_every_listener() {
    // Goal: a connection that never logs in is closed after `authentication_timeout_ms`, on
    // every listener. Method: connect to the native, Kafka, AMQP and HTTP ports, send
    // nothing, and wait (bounded) for each EOF.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    assert_ok(
        &wharfd_user_create(&data_dir, "alice", PASSWORD, &[]),
        "create",
    );
    let broker = start_required(&data_dir, "authentication_timeout_ms = 300\n");
    let addresses = [
        ("native", broker.address()),
        ("kafka", broker.kafka_address()),
        ("amqp", broker.amqp_address().to_string()),
        ("http", broker.http_address()),
    ];
    for (listener, address) in addresses {
        let mut stream = TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(
            matches!(read, Ok(0)),
            "{listener}: expected a close, got {read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "{listener}: closed after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn failed_logins_are_limited_per_address() {
    // Goal: after `login_failures_per_minute_max` failures from one address, even the right
    // password is refused for a while, with an error that says why.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    assert_ok(
        &wharfd_user_create(&data_dir, "alice", PASSWORD, &[]),
        "create",
    );
    let broker = start_required(&data_dir, "login_failures_per_minute_max = 2\n");
    let address = broker.address();
    for _ in 0..2 {
        let wrong = wharf_as(&address, Some(("alice", "wrong")), &["topic", "list"], "");
        assert!(!wrong.status.success());
    }
    let limited = wharf_as(&address, Some(("alice", PASSWORD)), &["topic", "list"], "");
    assert!(!limited.status.success());
    assert!(
        text(&limited.stderr).contains("too many failed logins"),
        "{}",
        text(&limited.stderr)
    );
}

#[test]
fn native_plain_is_refused_over_plaintext_and_requests_before_login_get_a_clear_code() {
    // Goal: the native protocol offers PLAIN only over TLS (this listener is plaintext), says
    // so with UnsupportedSaslMechanism, and answers requests before a required login with
    // AuthenticationRequired rather than closing. Method: raw frames.
    use wharf_protocol::messages::{
        MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
    };
    use wharf_protocol::{ErrorCode, Request, Response};

    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    assert_ok(
        &wharfd_user_create(&data_dir, "alice", PASSWORD, &[]),
        "create",
    );
    let broker = start_required(&data_dir, "");
    let mut client = integration_tests::RawClient::connect(broker.addr());
    let Response::Metadata(metadata) =
        client.call(&Request::Metadata(MetadataRequest { topics: None }))
    else {
        panic!("a Metadata answer expected");
    };
    assert_eq!(metadata.error, ErrorCode::AuthenticationRequired);
    let Response::SaslHandshake(handshake) =
        client.call(&Request::SaslHandshake(SaslHandshakeRequest {
            mechanism: "PLAIN".to_string(),
        }))
    else {
        panic!("a SaslHandshake answer expected");
    };
    assert_eq!(handshake.error, ErrorCode::UnsupportedSaslMechanism);
    assert_eq!(handshake.mechanisms, vec!["SCRAM-SHA-256", "SCRAM-SHA-512"]);
    assert!(
        handshake.error_message.unwrap_or_default().contains("TLS"),
        "the refusal says why"
    );
    let Response::SaslAuthenticate(out_of_order) =
        client.call(&Request::SaslAuthenticate(SaslAuthenticateRequest {
            auth_bytes: bytes::Bytes::from_static(b"n,,n=alice,r=abc"),
        }))
    else {
        panic!("a SaslAuthenticate answer expected");
    };
    assert_eq!(out_of_order.error, ErrorCode::IllegalSaslState);
}
