//! Produce with acks=all, SIGKILL `wharfd`, restart it: every acknowledged record is read back
//! once, in order per partition. A second round kills the broker while a producer is sending:
//! the producer's retries ride out the restart and every acknowledged record is there, in
//! order of first appearance per partition (duplicates of unacknowledged retries are allowed
//! without idempotence: at-least-once).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use integration_tests::BrokerProcess;
use wharf_client::{
    Admin, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};

const PARTITIONS: u32 = 3;

/// Every record of `topic`, values as text.
async fn read_everything(broker: &BrokerProcess, topic: &str) -> BTreeMap<u32, Vec<(i64, String)>> {
    broker
        .read_everything(topic, |value| {
            String::from_utf8(value.to_vec()).expect("utf-8")
        })
        .await
}

async fn send_all(
    producer: &Producer,
    topic: &str,
    range: std::ops::Range<u32>,
) -> Vec<(String, RecordMetadata)> {
    let mut pending = Vec::new();
    for index in range {
        let value = format!("record-{index:06}");
        let record = ProducerRecord::new(topic, Bytes::from(value.clone()))
            .key(Bytes::from(format!("key-{}", index % 17)));
        pending.push((value, producer.enqueue(record).await.expect("enqueue")));
    }
    let mut acked = Vec::new();
    for (value, delivery) in pending {
        acked.push((value, delivery.await.expect("acknowledged")));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_exactly_once_in_order() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    Admin::new(&client)
        .create_topic("durable", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = Producer::new(&client, ProducerConfig::default());
    let acked = send_all(&producer, "durable", 0..5000).await;
    producer.close().await.expect("close");
    drop(client);

    broker.kill();
    broker.restart();

    let stored = read_everything(&broker, "durable").await;
    let mut expected: BTreeMap<u32, Vec<(i64, String)>> = BTreeMap::new();
    for (value, metadata) in &acked {
        expected
            .entry(metadata.partition)
            .or_default()
            .push((metadata.offset, value.clone()));
    }
    for records in expected.values_mut() {
        records.sort();
    }
    assert_eq!(
        stored, expected,
        "every acknowledged record once, at its acknowledged offset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_rides_out_a_broker_crash_and_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    Admin::new(&client)
        .create_topic("bumpy", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = std::sync::Arc::new(Producer::new(&client, ProducerConfig::default()));
    let before = send_all(&producer, "bumpy", 0..2000).await;
    // Kill while the next records are in flight; the producer retries until the broker is
    // back (within its delivery timeout).
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move { send_all(&producer, "bumpy", 2000..6000).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.restart();
    let after = sending.await.expect("sender task");
    producer.flush().await.expect("flush");

    let stored = read_everything(&broker, "bumpy").await;
    let mut index_of: HashMap<u32, HashMap<String, i64>> = HashMap::new();
    for (partition, records) in &stored {
        let mut first_seen = HashMap::new();
        for (offset, value) in records {
            first_seen.entry(value.clone()).or_insert(*offset);
        }
        index_of.insert(*partition, first_seen);
    }
    for (value, metadata) in before.iter().chain(after.iter()) {
        let first = index_of
            .get(&metadata.partition)
            .and_then(|seen| seen.get(value))
            .unwrap_or_else(|| panic!("acknowledged {value} is missing"));
        assert!(
            *first <= metadata.offset,
            "{value} first stored at {first}, acked at {}",
            metadata.offset
        );
    }
    // Order per key holds across the crash: a key's records first appear in send order.
    for records in stored.values() {
        let mut last_index_of_key: HashMap<u32, u32> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (_, value) in records {
            if !seen.insert(value.clone()) {
                continue;
            }
            let index: u32 = value["record-".len()..].parse().expect("index");
            let previous = last_index_of_key.insert(index % 17, index);
            assert!(
                previous.is_none_or(|previous| previous < index),
                "key order broken at {value}"
            );
        }
    }
}

#[test]
fn a_classic_group_goes_on_without_a_rebalance_across_a_broker_restart() {
    // Goal: a settled librdkafka consumer group rides out its broker's SIGKILL and restart
    // without a rebalance, as a Kafka broker's loaded group metadata lets it: the classic
    // group was recorded in `__consumer_offsets` when it became stable, and the restarted
    // broker takes it back at its generation. Before, every member got UNKNOWN_MEMBER_ID
    // after the restart and the group rebalanced. Method: two members share a topic of two
    // partitions while a producer writes every 20 ms; once settled, the broker is
    // SIGKILLed (by the client script) and restarted on the same ports; for 10 s after the
    // kill no revoke or assign callback fires, both members read on to the end and then
    // commit as members.
    let data = tempfile::tempdir().expect("temp dir");
    let kafka_port = integration_tests::cluster::free_port().to_string();
    let args = vec![
        "--kafka-listen".to_string(),
        format!("127.0.0.1:{kafka_port}"),
    ];
    let mut broker =
        BrokerProcess::start_listening(&data.path().join("data"), "127.0.0.1:0", &args, None);
    integration_tests::wharf_ok(
        &broker.address(),
        &["topic", "create", "steady", "--partitions", "2"],
        "",
    );
    let pid = broker.pid();
    let bootstrap = broker.kafka_address();
    let client = std::thread::spawn(move || {
        integration_tests::run_client_json(
            "confluent_coordinator.py",
            &[
                "steady",
                &bootstrap,
                "steady",
                "steady-group",
                &pid.to_string(),
                "10",
            ],
        )
    });
    // The client kills the broker once its group settled; it comes back on the same ports.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !broker.has_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client never killed the broker"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.restart();
    let answer = client.join().expect("the client thread");
    eprintln!("steady group across a restart: {answer}");
    integration_tests::assert_steady_group(&answer, "across the restart");
}
