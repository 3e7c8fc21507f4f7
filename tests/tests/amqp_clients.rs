//! Real AMQP 0-9-1 clients against `wharfd`'s AMQP listener (issue #16): pika and aio-pika
//! from PyPI (pinned in tests/clients/requirements.txt) and amqplib from npm (pinned in
//! tests/clients/package-lock.json), installed by `scripts/test.sh`, driving
//! `tests/clients/pika_scenarios.py`, `aio_pika_scenarios.py` and `amqplib_scenarios.js`,
//! plus raw bytes for what no client sends (a wrong
//! protocol header, malformed frames). Each test starts its own broker on ephemeral ports
//! with a temp data dir; each scenario asserts what RabbitMQ does and prints `ok NAME`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration_tests::{run_client_script, run_node_script, wharf_ok, BrokerProcess};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs one pika scenario against `broker` and checks it reported success.
fn pika(broker: &BrokerProcess, scenario: &str, args: &[&str]) -> String {
    let amqp = broker.amqp_address();
    let port = amqp.port().to_string();
    let host = amqp.ip().to_string();
    let all = [&[host.as_str(), port.as_str(), scenario][..], args].concat();
    let output = run_client_script("pika_scenarios.py", &all);
    assert!(
        output.status.success() && stdout(&output).contains(&format!("ok {scenario}")),
        "pika scenario {scenario} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

/// Runs one aio-pika scenario (`tests/clients/aio_pika_scenarios.py`) against `broker`.
fn aio_pika(broker: &BrokerProcess, scenario: &str) {
    let amqp = broker.amqp_address();
    let (host, port) = (amqp.ip().to_string(), amqp.port().to_string());
    let output = run_client_script("aio_pika_scenarios.py", &[&host, &port, scenario]);
    assert!(
        output.status.success() && stdout(&output).contains(&format!("ok {scenario}")),
        "aio-pika scenario {scenario} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs one amqplib scenario (`tests/clients/amqplib_scenarios.js`, amqplib from npm) against
/// `broker`.
fn amqplib(broker: &BrokerProcess, scenario: &str) {
    let amqp = broker.amqp_address();
    let (host, port) = (amqp.ip().to_string(), amqp.port().to_string());
    let output = run_node_script("amqplib_scenarios.js", &[&host, &port, scenario]);
    assert!(
        output.status.success() && stdout(&output).contains(&format!("ok {scenario}")),
        "amqplib scenario {scenario} failed ({}); is amqplib in tests/clients/node_modules \
         (scripts/test.sh installs it)?\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn broker() -> (tempfile::TempDir, BrokerProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    (dir, broker)
}

#[test]
fn pika_confirmed_publish_keeps_every_property_and_header() {
    let (_dir, broker) = broker();
    pika(&broker, "confirms_and_properties", &[]);
}

#[test]
fn pika_prefetch_window_holds_until_manual_acks() {
    let (_dir, broker) = broker();
    pika(&broker, "prefetch_manual_acks", &[]);
}

#[test]
fn pika_routes_through_direct_fanout_topic_and_headers_exchanges() {
    let (_dir, broker) = broker();
    pika(&broker, "exchange_types", &[]);
}

#[test]
fn pika_no_ack_consumer_cancelled_mid_flight_gets_no_message_twice() {
    let (_dir, broker) = broker();
    pika(&broker, "no_ack_cancel_delivers_once", &[]);
}

#[test]
fn pika_unroutable_mandatory_message_comes_back_with_312_no_route() {
    let (_dir, broker) = broker();
    pika(&broker, "mandatory_return", &[]);
}

#[test]
fn pika_pipelined_publishes_are_stored_in_order_returned_and_refused_each_as_if_alone() {
    // The listener hands a run of default-exchange publishes to the core together.
    let (_dir, broker) = broker();
    pika(&broker, "pipelined_publishes", &[]);
}

#[test]
fn pika_nack_requeues_redelivered_and_reject_drops() {
    let (_dir, broker) = broker();
    pika(&broker, "nack_requeue_reject", &[]);
}

#[test]
fn pika_basic_get_with_and_without_ack() {
    let (_dir, broker) = broker();
    pika(&broker, "basic_get", &[]);
}

#[test]
fn pika_server_named_exclusive_queue_is_locked_to_its_connection_and_dies_with_it() {
    let (_dir, broker) = broker();
    pika(&broker, "server_named_exclusive", &[]);
}

#[test]
fn pika_channel_error_404_leaves_the_connection_usable() {
    let (_dir, broker) = broker();
    pika(&broker, "channel_error_keeps_connection", &[]);
}

#[test]
fn pika_other_vhost_and_wrong_password_are_refused() {
    let (_dir, broker) = broker();
    pika(&broker, "wrong_vhost", &[]);
    pika(&broker, "bad_login", &[]);
}

#[test]
fn pika_dead_letters_for_each_reason_with_an_x_death_table() {
    let (_dir, broker) = broker();
    pika(&broker, "dead_lettering", &[]);
}

#[test]
fn pika_republished_dead_letter_counts_up_its_x_death_entry() {
    let (_dir, broker) = broker();
    pika(&broker, "dead_letter_counts_when_republished", &[]);
}

#[test]
fn pika_queue_arguments_wharf_lacks_are_refused_with_406_and_typed_queues_are_accepted() {
    let (_dir, broker) = broker();
    pika(&broker, "refused_arguments", &[]);
}

#[test]
fn pika_exchange_to_exchange_bindings_route_once_and_survive_a_restart() {
    let (_dir, mut broker) = broker();
    pika(&broker, "exchange_to_exchange", &["keep"]);
    broker.kill();
    broker.restart();
    pika(&broker, "exchange_to_exchange_routes", &[]);
}

#[test]
fn pika_higher_priority_consumers_fill_their_window_first() {
    let (_dir, broker) = broker();
    pika(&broker, "consumer_priorities", &[]);
}

#[test]
fn pika_queue_unused_past_x_expires_is_deleted() {
    let (_dir, broker) = broker();
    pika(&broker, "queue_expires", &[]);
}

#[test]
fn pika_inequivalent_redeclares_and_if_empty_delete_are_406() {
    let (_dir, broker) = broker();
    pika(&broker, "redeclare_and_delete_preconditions", &[]);
}

#[test]
fn pika_delayed_message_exchange_holds_messages_for_their_x_delay() {
    let (_dir, broker) = broker();
    pika(&broker, "delayed_exchange", &[]);
}

#[test]
fn pika_transactions_publish_and_ack_at_commit_and_forget_at_rollback() {
    let (_dir, broker) = broker();
    pika(&broker, "transactions", &[]);
}

#[test]
fn pika_full_reject_publish_queue_nacks_the_publish() {
    let (_dir, broker) = broker();
    pika(&broker, "overflow_reject_publish", &[]);
}

#[test]
fn pika_x_max_length_bytes_drops_the_head_or_nacks_by_body_bytes() {
    let (_dir, broker) = broker();
    pika(&broker, "max_length_bytes", &[]);
}

#[test]
fn pika_priority_queue_orders_by_priority_requeues_in_place_and_drops_the_head() {
    let (_dir, broker) = broker();
    pika(&broker, "priority_queue", &[]);
}

#[test]
fn priority_order_survives_a_restart_and_native_publishers_set_it_with_a_header() {
    // Goal: the priority order is the queue's, whoever publishes and across a restart.
    // Method: pika publishes with priorities, `wharf publish` adds messages with a
    // `priority` header (one above 255, one not a number), the broker is SIGKILLed and
    // restarted, and pika consumes them in priority order.
    let (_dir, mut broker) = broker();
    let queue = "prio-order";
    pika(
        &broker,
        "priority_order",
        &[queue, "declare", "p0:-", "p4:4", "p9:9", "p4b:4"],
    );
    for (body, priority) in [("n7", "7"), ("n300", "300"), ("nbad", "high")] {
        wharf_ok(
            &broker.address(),
            &[
                "publish",
                "",
                queue,
                "--confirm",
                "--header",
                &format!("priority={priority}"),
            ],
            &format!("{body}\n"),
        );
    }
    broker.kill();
    broker.restart();
    // 300 counts as 255, then as the queue's max of 9, after p9 (published earlier).
    pika(
        &broker,
        "priority_order",
        &[
            queue, "check", "p9", "n300", "n7", "p4", "p4b", "p0", "nbad",
        ],
    );
}

#[test]
fn pika_global_qos_is_one_window_for_the_channels_consumers_across_queues() {
    let (_dir, broker) = broker();
    pika(&broker, "global_prefetch", &[]);
}

#[test]
fn pika_exclusive_consumers_and_if_unused_deletes_are_refused_as_rabbitmq() {
    let (_dir, broker) = broker();
    pika(&broker, "exclusive_consumer", &[]);
}

#[test]
fn a_connection_buffering_more_than_its_cap_is_closed_with_506() {
    // Goal: one connection cannot make the broker hold unbounded bodies across channels.
    // Method: a 1 MiB cap; two transactions within it commit, open transactions on two
    // channels that pass it together close the connection with 506 and store nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = 1024 * 1024;
    let broker = BrokerProcess::start_with_config(
        &dir.path().join("data"),
        &format!("amqp_connection_buffer_bytes_max = {cap}\n"),
    );
    pika(&broker, "connection_buffer_cap", &[&cap.to_string()]);
}

#[test]
fn pika_single_active_consumer_and_cancel_notification_on_queue_delete() {
    let (_dir, broker) = broker();
    pika(&broker, "single_active_consumer_and_cancel_notify", &[]);
}

#[test]
fn pika_channel_flow_off_and_immediate_publish_are_540_not_implemented_as_rabbitmq() {
    let (_dir, broker) = broker();
    pika(&broker, "channel_flow", &[]);
}

#[test]
fn aio_pika_confirms_returns_prefetch_window_and_properties() {
    let (_dir, broker) = broker();
    aio_pika(&broker, "confirms_prefetch_and_acks");
}

#[test]
fn aio_pika_dead_letters_with_x_death_and_hears_consumer_cancel() {
    let (_dir, broker) = broker();
    aio_pika(&broker, "dead_letter_and_cancel_notify");
}

#[test]
fn amqplib_confirms_prefetch_nack_requeue_and_dead_letters_with_x_death() {
    let (_dir, broker) = broker();
    amqplib(&broker, "roundtrip");
}

#[test]
fn amqplib_channel_error_404_leaves_the_connection_usable() {
    let (_dir, broker) = broker();
    amqplib(&broker, "channel_error");
}

#[test]
fn published_with_pika_received_by_wharf_subscribe_and_back() {
    let (_dir, broker) = broker();
    pika(&broker, "publish", &["cross-q", "3"]);
    let received = wharf_ok(
        &broker.address(),
        &[
            "subscribe",
            "cross-q",
            "--max-messages",
            "3",
            "--timeout-ms",
            "10000",
            "--json",
        ],
        "",
    );
    let lines: Vec<&str> = received.lines().collect();
    assert_eq!(lines.len(), 3, "{received}");
    for (index, line) in lines.iter().enumerate() {
        let message: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(message["body"], format!("durable-{index}"), "{line}");
        // The AMQP properties and headers are plain headers to the native protocol.
        assert_eq!(message["headers"]["delivery-mode"], "2", "{line}");
        assert_eq!(message["headers"]["n"], index.to_string(), "{line}");
    }
    wharf_ok(
        &broker.address(),
        &[
            "publish",
            "",
            "cross-q",
            "--confirm",
            "--header",
            "n=native",
            "--header",
            "content-type=text/plain",
        ],
        "from-wharf\n",
    );
    let consumed = pika(&broker, "consume", &["cross-q", "1"]);
    assert!(
        consumed.contains("message from-wharf native  cross-q"),
        "{consumed}"
    );
}

#[test]
fn persistent_confirmed_messages_survive_sigkill() {
    // Goal: a confirm means durable. Method: publish with confirms, SIGKILL the broker right
    // after the last confirm, restart it, and read every confirmed message back over AMQP.
    let (_dir, mut broker) = broker();
    let published = pika(&broker, "publish", &["kill-q", "50"]);
    let confirmed = published
        .lines()
        .filter(|line| line.starts_with("confirmed "))
        .count();
    assert_eq!(confirmed, 50, "{published}");
    broker.kill();
    broker.restart();
    let consumed = pika(&broker, "consume", &["kill-q", "50"]);
    for index in 0..50 {
        assert!(
            consumed.contains(&format!("message durable-{index} {index} ")),
            "message {index} lost after SIGKILL:\n{consumed}"
        );
    }
}

/// Sends raw bytes to the AMQP listener and returns everything it answers before closing.
fn raw_exchange(broker: &BrokerProcess, bytes: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(broker.amqp_address()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    socket.write_all(bytes).expect("write");
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    answer
}

#[test]
fn wrong_protocol_header_gets_the_supported_one_and_a_close() {
    let (_dir, broker) = broker();
    let answer = raw_exchange(&broker, b"AMQP\x01\x01\x00\x0a");
    assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
    let answer = raw_exchange(&broker, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
}

#[test]
fn oversized_frame_closes_the_connection_with_501_frame_error() {
    let (_dir, broker) = broker();
    // The header, then a method frame claiming 16 MiB before any negotiation.
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0]);
    let answer = raw_exchange(&broker, &bytes);
    // connection.start first, then connection.close with 501.
    let close = find_method(&answer, 10, 50).expect("a connection.close");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 501, "{answer:?}");
    // The broker is still serving.
    pika(&broker, "channel_error_keeps_connection", &[]);
}

#[test]
fn garbage_method_arguments_close_the_connection_with_502_syntax_error() {
    let (_dir, broker) = broker();
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    // connection.start-ok (10.11) whose arguments are cut short.
    bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 6, 0, 10, 0, 11, 0, 0, 0xCE]);
    let answer = raw_exchange(&broker, &bytes);
    let close = find_method(&answer, 10, 50).expect("a connection.close");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 502, "{answer:?}");
}

#[test]
fn deeply_nested_tables_are_refused_with_502_and_the_broker_keeps_serving() {
    // Goal: a field table nested thousands of levels deep (amq-protocol's parser recurses
    // once per level) is refused before it is parsed: a stack overflow would abort the whole
    // broker, and the frame arrives before any login.
    let (_dir, broker) = broker();
    let depth = 25_000usize;
    let mut nested: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&u32::try_from(nested.len()).expect("small").to_be_bytes());
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    // connection.start-ok: client-properties {"x": the nested arrays}, PLAIN, a response,
    // a locale.
    let mut table = short_string("x");
    table.extend_from_slice(&nested);
    let mut arguments = u32::try_from(table.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    arguments.extend_from_slice(&table);
    arguments.extend_from_slice(&short_string("PLAIN"));
    let response = b"\0guest\0guest";
    arguments.extend_from_slice(&u32::try_from(response.len()).expect("small").to_be_bytes());
    arguments.extend_from_slice(response);
    arguments.extend_from_slice(&short_string("en_US"));
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    bytes.extend_from_slice(&method(10, 11, &arguments));
    let answer = raw_exchange(&broker, &bytes);
    let close = find_method(&answer, 10, 50).expect("a connection.close");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 502, "{answer:?}");
    let text = String::from_utf8_lossy(&close);
    assert!(text.contains("more than 32 deep"), "{text}");
    // The broker is still serving.
    pika(&broker, "channel_error_keeps_connection", &[]);
}

/// The arguments of the first method frame `class.method` in `frames`.
fn find_method(frames: &[u8], class: u16, method: u16) -> Option<Vec<u8>> {
    let mut at = 0;
    while at + 7 <= frames.len() {
        let size = u32::from_be_bytes([
            frames[at + 3],
            frames[at + 4],
            frames[at + 5],
            frames[at + 6],
        ]) as usize;
        let payload = frames.get(at + 7..at + 7 + size)?;
        if frames[at] == 1
            && payload.len() >= 4
            && u16::from_be_bytes([payload[0], payload[1]]) == class
            && u16::from_be_bytes([payload[2], payload[3]]) == method
        {
            return Some(payload[4..].to_vec());
        }
        at += 8 + size;
    }
    None
}

#[test]
fn busy_amqp_port_is_a_startup_error_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let output = std::process::Command::new(integration_tests::wharfd_path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "off",
            "--amqp-listen",
            &address,
        ])
        .output()
        .expect("run wharfd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address} for the AMQP listener"))
            && stderr.contains("--amqp-listen HOST:PORT")
            && stderr.contains("--amqp-listen off"),
        "{stderr}"
    );
}

/// A method frame on channel 0 with `arguments`.
fn method(class: u16, method: u16, arguments: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(arguments);
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

fn short_string(text: &str) -> Vec<u8> {
    let mut bytes = vec![u8::try_from(text.len()).expect("short")];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

#[test]
fn client_that_stops_sending_heartbeats_is_disconnected() {
    // Goal: heartbeats both ways. Method: negotiate by hand with a 1 s heartbeat, then send
    // nothing: the broker must send heartbeat frames, and close the socket once the client
    // has been silent for two intervals (well before 10 s).
    let (_dir, broker) = broker();
    let mut socket = TcpStream::connect(broker.amqp_address()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut start_ok = vec![0, 0, 0, 0];
    start_ok.extend(short_string("PLAIN"));
    let response = b"\0guest\0guest";
    start_ok.extend_from_slice(&u32::try_from(response.len()).expect("small").to_be_bytes());
    start_ok.extend_from_slice(response);
    start_ok.extend(short_string("en_US"));
    let mut tune_ok = 0u16.to_be_bytes().to_vec();
    tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
    tune_ok.extend_from_slice(&1u16.to_be_bytes());
    let mut open = short_string("/");
    open.extend([0, 0]);
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    bytes.extend(method(10, 11, &start_ok));
    bytes.extend(method(10, 31, &tune_ok));
    bytes.extend(method(10, 40, &open));
    socket.write_all(&bytes).expect("write");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = socket.read_to_end(&mut answer);
    let elapsed = started.elapsed();
    assert!(
        read.is_ok(),
        "the broker never closed the silent connection: {read:?}"
    );
    assert!(
        find_method(&answer, 10, 41).is_some(),
        "no open-ok: {answer:?}"
    );
    assert!(
        answer
            .windows(8)
            .any(|frame| frame == [8, 0, 0, 0, 0, 0, 0, 0xCE]),
        "no heartbeat frame from the broker: {answer:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
        "closed after {elapsed:?}"
    );
}

#[test]
fn pika_publisher_is_blocked_by_the_memory_alarm_and_unblocked_when_the_watermark_is_raised() {
    // The scenario lowers the watermark below what wharfd uses (rewrites the config file,
    // then SIGHUP), checks that the publisher is held with "low on memory" while a consumer
    // still reads, then raises it again once /metrics shows the alarm on and publishes
    // stalled (a stall alone, under CI load, was sometimes a slow confirm).
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start_with_config(
        &dir.path().join("data"),
        "memory_high_watermark_bytes = 0\n",
    );
    let amqp = broker.amqp_address();
    let config = broker.config_path();
    let pid = broker.pid().to_string();
    let http = broker.http_address();
    let output = run_client_script(
        "pika_scenarios.py",
        &[
            &amqp.ip().to_string(),
            &amqp.port().to_string(),
            "memory_alarm",
            &config.display().to_string(),
            &pid,
            &http,
        ],
    );
    assert!(
        output.status.success() && stdout(&output).contains("ok memory_alarm"),
        "pika memory_alarm failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn pika_publisher_is_blocked_by_the_disk_alarm_and_unblocked_when_space_is_freed() {
    // wharfd on a 128 MiB tmpfs of its own mount namespace (unshare, util-linux), holding
    // publishers below 96 MB free (the alarm samples every 250 ms: a wide margin, so a
    // loaded machine cannot fill the disk between two samples): the scenario publishes until it is blocked, then frees
    // the space from another connection.
    let broker = integration_tests::TmpfsBroker::start(
        "128m",
        "disk_free_limit_bytes = 96000000\n",
        "--listen 127.0.0.1:0 --kafka-listen off --amqp-listen 127.0.0.1:0 --http-listen off",
        2,
        None,
        "warn",
    );
    let amqp = broker.address_of("amqp listening on");
    let (host, port) = amqp.rsplit_once(':').expect("HOST:PORT");
    let output = run_client_script("pika_scenarios.py", &[host, port, "disk_alarm"]);
    assert!(
        output.status.success() && stdout(&output).contains("ok disk_alarm"),
        "pika disk_alarm failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
}
