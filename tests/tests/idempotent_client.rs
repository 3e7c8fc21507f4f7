//! The client's idempotent producer (on by default) against the real `wharfd`.
//!
//! 1. A SIGKILL of the broker in the middle of a stream of 20,000 records over three
//!    partitions, then a restart: the producer's retries ride out the crash, and because the
//!    broker recognises retried batches (their answers were lost with the crash, their bytes
//!    survived in the page cache) every record is stored exactly once, in send order per
//!    partition, at the offset its acknowledgement reported.
//! 2. With small batches and up to five in flight per partition, records of each partition
//!    are stored in send order.
//!
//! Each record's value is its index in the stream and its partition is `index % 3`, so send
//! order per partition is increasing index order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::BrokerProcess;
use tokio::sync::{mpsc, oneshot};
use wharf_client::{
    Admin, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};

const PARTITIONS: u32 = 3;

fn record(topic: &str, index: u32) -> ProducerRecord {
    ProducerRecord::new(topic, format!("{index:06}")).partition(index % PARTITIONS)
}

/// Every record of `topic`, values parsed as their stream index.
async fn read_everything(broker: &BrokerProcess, topic: &str) -> BTreeMap<u32, Vec<(i64, u32)>> {
    broker
        .read_everything(topic, |value| {
            std::str::from_utf8(value)
                .expect("utf-8")
                .parse()
                .expect("an index")
        })
        .await
}

/// Checks that `stored` holds records 0..count exactly once each, in increasing index order
/// per partition, and (when given) at the offsets their acknowledgements reported.
fn check_exactly_once_in_order(
    stored: &BTreeMap<u32, Vec<(i64, u32)>>,
    count: u32,
    acknowledged: Option<&HashMap<u32, RecordMetadata>>,
) {
    let mut seen = vec![false; count as usize];
    for (partition, records) in stored {
        for pair in records.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "partition {partition}: index {} at offset {} is followed by index {} at offset {}",
                pair[0].1,
                pair[0].0,
                pair[1].1,
                pair[1].0
            );
        }
        for (offset, index) in records {
            assert_eq!(
                index % PARTITIONS,
                *partition,
                "index {index} in the wrong partition"
            );
            let slot = seen
                .get_mut(*index as usize)
                .unwrap_or_else(|| panic!("unexpected index {index}"));
            assert!(!*slot, "index {index} stored twice");
            *slot = true;
            if let Some(acknowledged) = acknowledged {
                let metadata = &acknowledged[index];
                assert_eq!(
                    (metadata.partition, metadata.offset),
                    (*partition, *offset),
                    "index {index} acknowledged elsewhere"
                );
            }
        }
    }
    let missing: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, seen)| !**seen)
        .map(|(index, _)| index)
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "missing indexes (first ten): {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_stored_exactly_once_in_order_across_a_broker_sigkill() {
    // Method: one task enqueues the first 10,000 records, signals, then (once the broker is
    // dead) the other 10,000; another task awaits every acknowledgement. The test kills the
    // broker right after the signal, while most of the first half is unacknowledged, and
    // restarts it. Then it reads everything back.
    const TOTAL: u32 = 20_000;
    const FIRST_HALF: u32 = TOTAL / 2;
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    Admin::new(&client)
        .create_topic("exactly-once", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = Arc::new(Producer::new(&client, ProducerConfig::default()));

    let (deliveries, mut to_await) = mpsc::channel(TOTAL as usize);
    let (half_enqueued, first_half_enqueued) = oneshot::channel();
    let (killed, broker_killed) = oneshot::channel::<()>();
    let enqueuing = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let enqueue = |index| {
                let (producer, deliveries) = (&producer, &deliveries);
                async move {
                    let delivery = producer
                        .enqueue(record("exactly-once", index))
                        .await
                        .expect("enqueue");
                    deliveries.send((index, delivery)).await.expect("awaited");
                }
            };
            for index in 0..FIRST_HALF {
                enqueue(index).await;
            }
            half_enqueued.send(()).expect("the test waits");
            broker_killed.await.expect("the test kills the broker");
            for index in FIRST_HALF..TOTAL {
                enqueue(index).await;
            }
        })
    };
    let acknowledged_count = Arc::new(AtomicUsize::new(0));
    let awaiting = {
        let acknowledged_count = acknowledged_count.clone();
        tokio::spawn(async move {
            let mut acknowledged = HashMap::new();
            while let Some((index, delivery)) = to_await.recv().await {
                let metadata: RecordMetadata = delivery
                    .await
                    .unwrap_or_else(|error| panic!("record {index} failed: {error}"));
                acknowledged.insert(index, metadata);
                acknowledged_count.fetch_add(1, Ordering::SeqCst);
            }
            acknowledged
        })
    };

    first_half_enqueued.await.expect("enqueued");
    tokio::task::block_in_place(|| broker.kill());
    let acknowledged_at_kill = acknowledged_count.load(Ordering::SeqCst);
    killed.send(()).expect("the enqueuing task waits");
    tokio::task::block_in_place(|| broker.restart());
    enqueuing.await.expect("enqueuing task");
    let acknowledged = awaiting.await.expect("awaiting task");
    producer.flush().await.expect("flush");
    assert!(
        acknowledged_at_kill < FIRST_HALF as usize,
        "the kill came after all {acknowledged_at_kill} records were acknowledged: nothing was in flight"
    );

    let stored = read_everything(&broker, "exactly-once").await;
    check_exactly_once_in_order(&stored, TOTAL, Some(&acknowledged));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pipelined_batches_keep_send_order_per_partition() {
    // Batches of about 20 records, so each partition has many batches and up to five in
    // flight at once.
    const TOTAL: u32 = 6_000;
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    Admin::new(&client)
        .create_topic("ordered", PARTITIONS, &[])
        .await
        .expect("create");
    let producer = Producer::new(
        &client,
        ProducerConfig::default()
            .batch_bytes(600)
            .linger(Duration::from_millis(1)),
    );
    let mut deliveries = Vec::new();
    for index in 0..TOTAL {
        deliveries.push(
            producer
                .enqueue(record("ordered", index))
                .await
                .expect("enqueue"),
        );
    }
    let mut acknowledged = HashMap::new();
    for (index, delivery) in (0..TOTAL).zip(deliveries) {
        acknowledged.insert(index, delivery.await.expect("acknowledged"));
    }
    producer.close().await.expect("close");

    let stored = read_everything(&broker, "ordered").await;
    check_exactly_once_in_order(&stored, TOTAL, Some(&acknowledged));
}
