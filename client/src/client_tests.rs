//! Client tests against the fake in-process broker ([`crate::fake_broker`]): pipelining,
//! reconnects, retries, the circuit breaker, produce/consume round trips, groups and admin.
//! Everything runs on loopback; the real end-to-end tests against `wharfd` live in `tests/`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use wharf_protocol::messages::{MetadataRequest, ProducePartition, ProduceRequest, ProduceTopic};
use wharf_protocol::{ErrorCode, Request, Response};

use crate::cluster::BrokerConnection;
use crate::fake_broker::{FakeBroker, AUTO_CREATE_PARTITIONS};
use crate::{
    Acks, Admin, Client, ClientConfig, CommitPolicy, Consumer, ConsumerConfig, ConsumerRecord,
    Error, Idempotence, OffsetReset, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};

fn config(broker: &FakeBroker) -> ClientConfig {
    ClientConfig::new(broker.bootstrap())
        .request_timeout(Duration::from_secs(5))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(50))
}

async fn client(broker: &FakeBroker) -> Client {
    Client::connect(config(broker)).await.unwrap()
}

fn fast_producer() -> ProducerConfig {
    ProducerConfig::default().linger(Duration::from_millis(1))
}

fn manual_consumer() -> ConsumerConfig {
    ConsumerConfig::default()
        .auto_offset_reset(OffsetReset::Earliest)
        .commit(CommitPolicy::Manual)
}

/// Polls until `count` records arrived or 5 s passed.
async fn poll_until(consumer: &mut Consumer, count: usize) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut records = Vec::new();
    while records.len() < count && Instant::now() < deadline {
        records.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    records
}

fn value(record: &ConsumerRecord) -> String {
    String::from_utf8_lossy(record.value.as_ref().unwrap()).into_owned()
}

#[tokio::test]
async fn produce_and_consume_keep_per_partition_order() {
    // Goal: keyed records land on a stable partition, offsets are contiguous per partition,
    // and a consumer of every partition reads them back in order.
    let broker = FakeBroker::start().await;
    broker.create_topic("orders", 3);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    let mut deliveries = Vec::new();
    for index in 0..300 {
        let record =
            ProducerRecord::new("orders", format!("{index}")).key(format!("key-{}", index % 7));
        deliveries.push(producer.enqueue(record).await.unwrap());
    }
    let mut partition_of_key: HashMap<String, u32> = HashMap::new();
    let mut offsets: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let written = delivery.await.unwrap();
        let key = format!("key-{}", index % 7);
        assert_eq!(
            *partition_of_key.entry(key).or_insert(written.partition),
            written.partition
        );
        offsets
            .entry(written.partition)
            .or_default()
            .push(written.offset);
    }
    for partition_offsets in offsets.values() {
        let expected: Vec<i64> = (0..partition_offsets.len() as i64).collect();
        assert_eq!(partition_offsets, &expected);
    }
    producer.close().await.unwrap();

    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer
        .assign(
            (0..3)
                .map(|partition| TopicPartition::new("orders", partition))
                .collect(),
        )
        .unwrap();
    let records = poll_until(&mut consumer, 300).await;
    assert_eq!(records.len(), 300);
    let mut last_value_per_key: HashMap<String, i64> = HashMap::new();
    for record in &records {
        let key = String::from_utf8_lossy(record.key.as_ref().unwrap()).into_owned();
        assert_eq!(partition_of_key[&key], record.partition);
        let index: i64 = value(record).parse().unwrap();
        let previous = last_value_per_key.insert(key, index);
        assert!(
            previous.is_none_or(|previous| previous < index),
            "order within a key"
        );
    }
}

#[tokio::test]
async fn pipelined_requests_share_one_connection() {
    let broker = FakeBroker::start().await;
    let client = client(&broker).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        tasks.spawn(async move {
            let request = Request::Metadata(MetadataRequest { topics: None });
            client.request(&request).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert!(matches!(result.unwrap(), Ok(Some(Response::Metadata(_)))));
    }
    assert_eq!(broker.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_reconnects_after_the_broker_drops_connections() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    broker.drop_connections();
    let topic = client.refresh_topic("t").await.unwrap();
    assert_eq!(topic.partition_count(), 1);
    assert_eq!(broker.state.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_bootstrap_is_a_connect_error() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = ClientConfig::new(address.to_string()).bootstrap_timeout(Duration::ZERO);
    let error = Client::connect(config).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("cannot connect to broker {address}: connection refused")
    );
}

#[tokio::test]
async fn circuit_opens_after_repeated_failures_and_fails_fast() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = ClientConfig::new(address.to_string())
        .circuit_breaker(2, Duration::from_secs(60))
        .bootstrap_timeout(Duration::ZERO);
    let broker = BrokerConnection::new(address.to_string(), &config);
    let request = Request::Metadata(MetadataRequest { topics: None });
    for _ in 0..2 {
        let error = broker.send(&request).await.unwrap_err();
        assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    }
    let error = broker.send(&request).await.unwrap_err();
    assert!(matches!(error, Error::CircuitOpen { .. }), "{error:?}");
}

#[tokio::test]
async fn retry_waits_out_a_short_circuit_cooldown_then_succeeds() {
    // Goal: a retrying request rides out an open breaker once the broker is back.
    let broker = FakeBroker::start().await;
    let config = config(&broker).circuit_breaker(1, Duration::from_millis(50));
    let connection = BrokerConnection::new(broker.bootstrap(), &config);
    let request = Request::Metadata(MetadataRequest { topics: None });
    connection.send(&request).await.unwrap();
    broker.drop_connections();
    let answer = connection.send(&request).await.unwrap();
    assert!(matches!(answer, Some(Response::Metadata(_))));
}

#[tokio::test]
async fn producer_retries_retriable_errors() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    broker.fail_produce(2, ErrorCode::RequestTimedOut);
    let producer = Producer::new(&client, fast_producer());
    let written = producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, 0);
    assert_eq!(broker.state.produce_requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn producer_gives_up_at_the_delivery_timeout() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    broker.fail_produce(u32::MAX, ErrorCode::RequestTimedOut);
    let config = fast_producer().delivery_timeout(Duration::from_millis(200));
    let producer = Producer::new(&client, config);
    let started = Instant::now();
    let error = producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::RequestTimedOut));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn non_retriable_errors_fail_at_once() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    broker.fail_produce(1, ErrorCode::CorruptRecordBatch);
    let producer = Producer::new(&client, fast_producer());
    let error = producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::CorruptRecordBatch));
    assert_eq!(broker.state.produce_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_topic_is_auto_created_on_produce() {
    let broker = FakeBroker::start().await;
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    let written = producer
        .send(
            "fresh",
            Some(Bytes::from("k")),
            Some(Bytes::from("v")),
            vec![],
        )
        .await
        .unwrap();
    assert!(written.partition < AUTO_CREATE_PARTITIONS);
    assert_eq!(written.offset, 0);
    let topic = client.refresh_topic("fresh").await.unwrap();
    assert_eq!(topic.partition_count(), AUTO_CREATE_PARTITIONS);
}

#[tokio::test]
async fn disabled_auto_create_surfaces_an_error() {
    let broker = FakeBroker::start().await;
    broker.disable_auto_create();
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    let error = producer
        .send("missing", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(ErrorCode::TopicAutoCreateDisabled),
        "{error}"
    );
}

#[tokio::test]
async fn explicit_partition_out_of_range_is_rejected() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 2);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    let delivery = producer
        .enqueue(ProducerRecord::new("t", "v").partition(5))
        .await
        .unwrap();
    let error = delivery.await.unwrap_err();
    assert!(matches!(
        error,
        Error::UnknownPartition {
            partition: 5,
            partition_count: 2,
            ..
        }
    ));
}

#[tokio::test]
async fn acks_none_gets_no_offsets_but_writes() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let config = fast_producer()
        .acks(Acks::None)
        .idempotence(Idempotence::Disabled);
    let producer = Producer::new(&client, config);
    let written = producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, -1);
    producer.close().await.unwrap();
    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer.assign(vec![TopicPartition::new("t", 0)]).unwrap();
    let records = poll_until(&mut consumer, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(value(&records[0]), "v");
}

#[tokio::test]
async fn null_keys_stick_to_one_partition_per_batch() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 8);
    let client = client(&broker).await;
    let producer = Producer::new(
        &client,
        ProducerConfig::default().linger(Duration::from_secs(10)),
    );
    let mut deliveries = Vec::new();
    for index in 0..20 {
        deliveries.push(
            producer
                .enqueue(ProducerRecord::new("t", format!("{index}")))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    let mut partitions = Vec::new();
    for delivery in deliveries {
        partitions.push(delivery.await.unwrap().partition);
    }
    assert!(
        partitions
            .iter()
            .all(|partition| *partition == partitions[0]),
        "{partitions:?}"
    );
}

#[tokio::test]
async fn flush_waits_for_lingering_records() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let producer = Producer::new(
        &client,
        ProducerConfig::default().linger(Duration::from_secs(60)),
    );
    let mut delivery = producer
        .enqueue(ProducerRecord::new("t", "v"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let written = (&mut delivery).await.unwrap();
    assert_eq!(written.offset, 0);
}

#[tokio::test]
async fn seek_skips_records_below_the_offset_inside_a_batch() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let producer = Producer::new(
        &client,
        ProducerConfig::default().linger(Duration::from_secs(60)),
    );
    // All ten records share one batch (long linger, sealed by close), so offset 7 is inside it.
    let mut deliveries = Vec::new();
    for index in 0..10 {
        let record = ProducerRecord::new("t", format!("{index}"));
        deliveries.push(producer.enqueue(record).await.unwrap());
    }
    producer.close().await.unwrap();
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer.assign(vec![TopicPartition::new("t", 0)]).unwrap();
    consumer.seek("t", 0, 7).unwrap();
    let records = poll_until(&mut consumer, 3).await;
    let offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, vec![7, 8, 9]);
    assert_eq!(consumer.position(&TopicPartition::new("t", 0)), Some(10));
}

#[tokio::test]
async fn latest_reset_sees_only_new_records() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    producer
        .send("t", None, Some(Bytes::from("old")), vec![])
        .await
        .unwrap();
    let mut consumer = Consumer::new(
        &client,
        manual_consumer().auto_offset_reset(OffsetReset::Latest),
    );
    consumer.assign(vec![TopicPartition::new("t", 0)]).unwrap();
    assert!(consumer
        .poll(Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    producer
        .send("t", None, Some(Bytes::from("new")), vec![])
        .await
        .unwrap();
    let records = poll_until(&mut consumer, 1).await;
    assert_eq!(records.iter().map(value).collect::<Vec<_>>(), vec!["new"]);
}

#[tokio::test]
async fn group_consumer_commits_and_a_successor_resumes() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 2);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    for index in 0..10 {
        producer
            .send(
                "t",
                Some(Bytes::from(format!("k{index}"))),
                Some(Bytes::from("v")),
                vec![],
            )
            .await
            .unwrap();
    }
    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer.subscribe("g", ["t"]).await.unwrap();
    assert_eq!(poll_until(&mut consumer, 10).await.len(), 10);
    consumer.commit().await.unwrap();
    consumer.close().await.unwrap();
    assert!(broker.members("g").is_empty(), "close leaves the group");
    let committed: i64 = (0..2)
        .map(|partition| broker.committed("g", "t", partition).unwrap())
        .sum();
    assert_eq!(committed, 10);

    producer
        .send("t", None, Some(Bytes::from("after")), vec![])
        .await
        .unwrap();
    let mut successor = Consumer::new(&client, manual_consumer());
    successor.subscribe("g", ["t"]).await.unwrap();
    let records = poll_until(&mut successor, 1).await;
    assert_eq!(records.iter().map(value).collect::<Vec<_>>(), vec!["after"]);
    // Every join, heartbeat, commit and leave went where one FindCoordinator said: it is
    // asked before the first coordinator call, not on each.
    assert_eq!(
        broker
            .state
            .find_coordinator_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn fenced_member_cannot_commit() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap();
    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer.subscribe("g", ["t"]).await.unwrap();
    assert_eq!(poll_until(&mut consumer, 1).await.len(), 1);
    let member = broker.members("g").pop().unwrap();
    broker.expire_member("g", &member);
    let error = consumer.commit().await.unwrap_err();
    assert!(
        matches!(
            error.code(),
            Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration)
        ),
        "{error}"
    );
    assert_eq!(broker.committed("g", "t", 0), None);
}

#[tokio::test]
async fn member_commits_after_the_generation_moved_on() {
    // Goal: a member still in the group commits even if another member joined or left
    // since its last heartbeat (the broker refuses the stale generation once; the client
    // learns the new one and commits again).
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap();
    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer.subscribe("g", ["t"]).await.unwrap();
    assert_eq!(poll_until(&mut consumer, 1).await.len(), 1);
    broker.bump_generation("g");
    consumer.commit().await.unwrap();
    assert_eq!(broker.committed("g", "t", 0), Some(1));
}

#[tokio::test]
async fn rebalance_splits_partitions_between_members() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 4);
    let client = client(&broker).await;
    let mut first = Consumer::new(&client, manual_consumer());
    first.subscribe("g", ["t"]).await.unwrap();
    first.poll(Duration::from_millis(10)).await.unwrap();
    assert_eq!(first.assignment().len(), 4);
    let mut second = Consumer::new(&client, manual_consumer());
    second.subscribe("g", ["t"]).await.unwrap();
    second.poll(Duration::from_millis(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.assignment().len() != 2 && Instant::now() < deadline {
        first.poll(Duration::from_millis(20)).await.unwrap();
    }
    assert_eq!(first.assignment().len(), 2);
    assert_eq!(second.assignment().len(), 2);
}

#[tokio::test]
async fn manual_consumer_commits_without_membership() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let producer = Producer::new(&client, fast_producer());
    producer
        .send("t", None, Some(Bytes::from("v")), vec![])
        .await
        .unwrap();
    let mut consumer = Consumer::new(&client, manual_consumer().group_id("solo"));
    consumer.assign(vec![TopicPartition::new("t", 0)]).unwrap();
    assert_eq!(poll_until(&mut consumer, 1).await.len(), 1);
    consumer.commit().await.unwrap();
    assert_eq!(broker.committed("solo", "t", 0), Some(1));
}

#[tokio::test]
async fn admin_manages_topics_and_reports_lag() {
    let broker = FakeBroker::start().await;
    let client = client(&broker).await;
    let admin = Admin::new(&client);
    admin.create_topic("a", 2, &[]).await.unwrap();
    let duplicate = admin.create_topic("a", 2, &[]).await.unwrap_err();
    assert_eq!(duplicate.code(), Some(ErrorCode::TopicAlreadyExists));
    let names: Vec<String> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["a"]);
    let unknown = admin.describe_topic("nope").await.unwrap_err();
    assert_eq!(unknown.to_string(), "unknown topic \"nope\"");

    let producer = Producer::new(&client, fast_producer());
    for _ in 0..5 {
        producer
            .send(
                "a",
                Some(Bytes::from("same-key")),
                Some(Bytes::from("v")),
                vec![],
            )
            .await
            .unwrap();
    }
    let mut consumer = Consumer::new(&client, manual_consumer());
    consumer.subscribe("g", ["a"]).await.unwrap();
    let records = poll_until(&mut consumer, 5).await;
    let partition = records[0].partition;
    consumer.seek("a", partition, 3).unwrap();
    consumer.commit().await.unwrap();
    let lags = admin.group_lag("g").await.unwrap();
    let lag = lags.iter().find(|lag| lag.partition == partition).unwrap();
    assert_eq!(
        (lag.committed_offset, lag.end_offset, lag.lag),
        (Some(3), 5, Some(2))
    );
    // `wharf group describe` asks once (each ask may wait out a coordinator election).
    let asked = broker.state.describe_groups_requests.load(Ordering::SeqCst);
    let (description, both) = admin.describe_group_with_lag("g").await.unwrap();
    assert_eq!(both, lags);
    assert_eq!(description.group_id, "g");
    assert_eq!(
        broker.state.describe_groups_requests.load(Ordering::SeqCst),
        asked + 1
    );
    let groups = admin.list_groups().await.unwrap();
    assert_eq!(groups[0].group_id, "g");
    let missing = admin.describe_group("nope").await.unwrap_err();
    assert_eq!(missing.to_string(), "unknown group \"nope\"");

    admin.delete_topic("a").await.unwrap();
    let gone = admin.delete_topic("a").await.unwrap_err();
    assert!(matches!(gone, Error::UnknownTopic { .. }));
}

#[tokio::test]
async fn raw_produce_with_acks_none_completes_once_written() {
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 1);
    let client = client(&broker).await;
    let request = Request::Produce(ProduceRequest {
        acks: Acks::None,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "t".to_string(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: wharf_protocol::BatchBuilder::new(0).build(),
            }],
        }],
    });
    assert!(client.request(&request).await.unwrap().is_none());
}

#[tokio::test]
async fn metadata_is_asked_of_another_known_broker_when_the_bootstrap_one_is_gone() {
    // The client bootstraps through a forwarding port (a node that later dies); the
    // metadata lists the broker at its own address, which is asked once the port is gone.
    let broker = FakeBroker::start().await;
    broker.create_topic("t", 2);
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_address = front.local_addr().unwrap().to_string();
    let target = broker.address;
    let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = std::sync::Arc::clone(&links);
    let forwarding = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            accepted.lock().unwrap().push(tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            }));
        }
    });
    let config = ClientConfig::new(front_address)
        .request_timeout(Duration::from_secs(2))
        .reconnect_timeout(Duration::from_millis(500))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20));
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.refresh_topic("t").await.unwrap().partitions.len(), 2);
    // The node dies: its port closes and so does every connection through it.
    forwarding.abort();
    let _ = forwarding.await;
    for link in links.lock().unwrap().drain(..) {
        link.abort();
    }
    broker.create_topic("u", 3);
    let described = client.refresh_topic("u").await.unwrap();
    assert_eq!(described.partitions.len(), 3);
}
