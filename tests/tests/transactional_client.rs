//! The client's transactional producer and read-committed consumer against the real `wharfd`:
//! an aborted transaction is invisible to a read-committed consumer and visible to a
//! read-uncommitted one (never its markers); a committed transaction over three partitions
//! together with consumer offsets is visible whole; a second producer with the same
//! transactional id fences the first, which then cannot commit.

use std::time::Duration;

use integration_tests::BrokerProcess;
use wharf_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, ConsumerGroupMetadata, Error, Isolation,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};

const PARTITIONS: u32 = 3;

async fn transactional(client: &Client, id: &str) -> Producer {
    let config = ProducerConfig::default()
        .transactional_id(id)
        .linger(Duration::from_millis(1));
    let producer = Producer::new(client, config);
    producer.init_transactions().await.expect("init");
    producer
}

/// Sends `values` round-robin over the partitions inside the open transaction.
async fn send_all(producer: &Producer, topic: &str, values: &[&str]) {
    let mut deliveries = Vec::new();
    for (index, value) in values.iter().enumerate() {
        let partition = u32::try_from(index).expect("small") % PARTITIONS;
        let record = ProducerRecord::new(topic, value.to_string()).partition(partition);
        deliveries.push(producer.enqueue(record).await.expect("enqueue"));
    }
    for delivery in deliveries {
        delivery.await.expect("delivered");
    }
}

/// Every value a consumer with `isolation` reads from `topic`, sorted.
async fn read_all(client: &Client, topic: &str, isolation: Isolation) -> Vec<String> {
    let config = ConsumerConfig::default()
        .auto_offset_reset(OffsetReset::Earliest)
        .isolation(isolation);
    let mut consumer = Consumer::new(client, config);
    consumer
        .assign(
            (0..PARTITIONS)
                .map(|partition| TopicPartition::new(topic, partition))
                .collect(),
        )
        .expect("assign");
    let mut values = Vec::new();
    // Polls until three polls have returned nothing (the data is all stored already).
    let mut empty_polls = 0;
    while empty_polls < 3 {
        let records = consumer
            .poll(Duration::from_millis(300))
            .await
            .expect("poll");
        if records.is_empty() {
            empty_polls += 1;
        }
        for record in records {
            let value = record.value.expect("value");
            values.push(String::from_utf8(value.to_vec()).expect("utf-8"));
        }
    }
    values.sort();
    values
}

async fn create_topic(client: &Client, topic: &str) {
    wharf_client::Admin::new(client)
        .create_topic(topic, PARTITIONS, &[])
        .await
        .expect("create topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_invisible_to_read_committed_and_committed_visible_whole() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(data_dir.path());
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    create_topic(&client, "out").await;
    create_topic(&client, "in").await;
    let producer = transactional(&client, "txn-a").await;

    producer.begin_transaction().await.expect("begin");
    send_all(&producer, "out", &["aborted-0", "aborted-1", "aborted-2"]).await;
    producer.abort_transaction().await.expect("abort");

    producer.begin_transaction().await.expect("begin");
    send_all(
        &producer,
        "out",
        &["committed-0", "committed-1", "committed-2"],
    )
    .await;
    let group = ConsumerGroupMetadata {
        group_id: "g".to_string(),
        member_id: String::new(),
        generation: -1,
    };
    producer
        .send_offsets_to_transaction(vec![(TopicPartition::new("in", 0), 42)], group)
        .await
        .expect("offsets");
    producer.commit_transaction().await.expect("commit");

    assert_eq!(
        read_all(&client, "out", Isolation::ReadCommitted).await,
        vec!["committed-0", "committed-1", "committed-2"]
    );
    assert_eq!(
        read_all(&client, "out", Isolation::ReadUncommitted).await,
        vec![
            "aborted-0",
            "aborted-1",
            "aborted-2",
            "committed-0",
            "committed-1",
            "committed-2"
        ]
    );
    producer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_producer_cannot_commit() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(data_dir.path());
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    create_topic(&client, "fenced").await;
    let old = transactional(&client, "txn-f").await;
    old.begin_transaction().await.expect("begin");
    send_all(&old, "fenced", &["zombie"]).await;

    let new = transactional(&client, "txn-f").await;
    let refused = old.commit_transaction().await.expect_err("fenced");
    assert!(matches!(refused, Error::ProducerFenced { .. }), "{refused}");
    new.begin_transaction().await.expect("begin");
    send_all(&new, "fenced", &["alive"]).await;
    new.commit_transaction().await.expect("commit");
    assert_eq!(
        read_all(&client, "fenced", Isolation::ReadCommitted).await,
        vec!["alive"]
    );
}

/// `wharf produce --transactional-id`: stdin's end commits, Ctrl-C aborts; one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_produce_commits_at_end_of_input_and_aborts_on_ctrl_c() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(data_dir.path());
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    create_topic(&client, "cli").await;
    let address = broker.address();
    let output = tokio::task::spawn_blocking(move || {
        integration_tests::wharf(
            &address,
            &[
                "produce",
                "cli",
                "--partition",
                "0",
                "--transactional-id",
                "cli-1",
            ],
            "a\nb\nc\n",
        )
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "transaction cli-1 committed: 3 records");
    assert_eq!(
        read_all(&client, "cli", Isolation::ReadCommitted).await,
        vec!["a", "b", "c"]
    );

    // Stdin stays open; once the records are stored (visible read-uncommitted), the command
    // is waiting for more input inside its transaction: Ctrl-C must abort it.
    let mut child = std::process::Command::new(integration_tests::wharf_path())
        .args(["--broker", &broker.address()])
        .args([
            "produce",
            "cli",
            "--partition",
            "1",
            "--transactional-id",
            "cli-2",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wharf");
    let mut stdin = child.stdin.take().expect("piped stdin");
    std::io::Write::write_all(&mut stdin, b"x\ny\n").expect("write stdin");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read_all(&client, "cli", Isolation::ReadUncommitted)
        .await
        .len()
        < 5
    {
        assert!(
            std::time::Instant::now() < deadline,
            "records never arrived"
        );
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for wharf");
    drop(stdin);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim(),
        "error: transaction cli-2 aborted: interrupted"
    );
    assert_eq!(
        read_all(&client, "cli", Isolation::ReadCommitted).await,
        vec!["a", "b", "c"]
    );
}
