//! The idempotent producer against the fake broker ([`crate::fake_broker`]), which applies
//! the broker's sequence rules (duplicates answered with their original offset, gaps refused)
//! and can hold answers back, lose them, or forget and fence producers. Holding answers makes
//! pipelining observable: the fake counts produce requests it handled but had not yet
//! answered on one connection.
//!
//! The pipelining tests run on two worker threads, where requests could overtake each other if
//! the producer did not put them on the wire in order.
//!
//! Every test sends one record per batch (`batch_bytes` = 1) to a one-partition topic after a
//! warm-up record (which fetches metadata and the producer id), so batch n carries sequence n.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use wharf_protocol::ErrorCode;

use crate::fake_broker::FakeBroker;
use crate::{
    Acks, Client, ClientConfig, DeliveryFuture, Error, Idempotence, Producer, ProducerConfig,
    ProducerRecord, RecordMetadata,
};

const TOPIC: &str = "t";
const WARM_UP: &str = "warm-up";

fn one_batch_per_record() -> ProducerConfig {
    ProducerConfig::default()
        .linger(Duration::from_millis(1))
        .batch_bytes(1)
}

/// A fake broker with a one-partition topic, a client, and a producer with `config` that has
/// sent the warm-up record (at offset 0).
async fn started(config: ProducerConfig) -> (FakeBroker, Client, Producer) {
    let broker = FakeBroker::start().await;
    broker.create_topic(TOPIC, 1);
    let client_config = ClientConfig::new(broker.bootstrap())
        .request_timeout(Duration::from_secs(5))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(50));
    let client = Client::connect(client_config).await.unwrap();
    let producer = Producer::new(&client, config);
    let written = producer
        .send(TOPIC, None, Some(Bytes::from(WARM_UP)), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, 0);
    (broker, client, producer)
}

/// Enqueues records "0".."count-1" to the topic's partition 0.
async fn enqueue(producer: &Producer, count: usize) -> Vec<DeliveryFuture> {
    let mut deliveries = Vec::new();
    for index in 0..count {
        let record = ProducerRecord::new(TOPIC, format!("{index}")).partition(0);
        deliveries.push(producer.enqueue(record).await.unwrap());
    }
    deliveries
}

async fn delivered(deliveries: Vec<DeliveryFuture>) -> Vec<RecordMetadata> {
    let mut written = Vec::new();
    for delivery in deliveries {
        written.push(delivery.await.unwrap());
    }
    written
}

/// The warm-up record followed by "0".."count-1".
fn warm_up_then(count: usize) -> Vec<String> {
    std::iter::once(WARM_UP.to_string())
        .chain((0..count).map(|index| index.to_string()))
        .collect()
}

/// Each delivery reports offset 1, 2, ... (right after the warm-up record).
fn assert_offsets_follow_warm_up(written: &[RecordMetadata]) {
    let offsets: Vec<i64> = written.iter().map(|metadata| metadata.offset).collect();
    let expected: Vec<i64> = (1..=written.len() as i64).collect();
    assert_eq!(offsets, expected);
}

#[tokio::test]
async fn batches_carry_the_producer_id_and_consecutive_sequences() {
    let (broker, _client, producer) = started(ProducerConfig::default()).await;
    for value in ["a", "b"] {
        producer
            .send(TOPIC, None, Some(Bytes::from(value)), vec![])
            .await
            .unwrap();
    }
    let stamps: Vec<(i64, i16, i32)> = broker
        .batch_headers(TOPIC, 0)
        .iter()
        .map(|header| {
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
            )
        })
        .collect();
    assert_eq!(stamps, vec![(1, 0, 0), (1, 0, 1), (1, 0, 2)]);
    assert_eq!(
        broker
            .state
            .init_producer_id_requests
            .load(Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_batches_of_a_partition_are_in_flight_at_once_and_land_in_order() {
    // Goal: with idempotence the producer pipelines up to five batches per partition, no
    // more. Method: hold the broker's answers until five requests arrived, then release; the
    // fake records the most produce requests it had handled but not answered.
    let (broker, _client, producer) = started(one_batch_per_record()).await;
    broker.hold_answers();
    let deliveries = enqueue(&producer, 20).await;
    broker.wait_for_produce_requests(1 + 5).await;
    broker.release_answers();
    let written = delivered(deliveries).await;
    assert_offsets_follow_warm_up(&written);
    assert_eq!(broker.values(TOPIC, 0), warm_up_then(20));
    assert_eq!(broker.state.produce_in_flight_max.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn without_idempotence_one_batch_of_a_partition_is_in_flight() {
    let config = one_batch_per_record().idempotence(Idempotence::Disabled);
    let (broker, _client, producer) = started(config).await;
    broker.hold_answers();
    let deliveries = enqueue(&producer, 5).await;
    broker.wait_for_produce_requests(1 + 1).await;
    broker.release_answers();
    let written = delivered(deliveries).await;
    assert_offsets_follow_warm_up(&written);
    assert_eq!(broker.state.produce_in_flight_max.load(Ordering::SeqCst), 1);
    assert_eq!(
        broker
            .state
            .init_producer_id_requests
            .load(Ordering::SeqCst),
        0
    );
    assert!(broker
        .batch_headers(TOPIC, 0)
        .iter()
        .all(|header| header.producer_id == -1));
}

#[tokio::test]
async fn a_lost_answer_is_deduplicated_and_reports_the_original_offset() {
    let (broker, _client, producer) = started(ProducerConfig::default()).await;
    broker.lose_produce_answers(1);
    let written = producer
        .send(TOPIC, None, Some(Bytes::from("0")), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, 1);
    assert_eq!(broker.state.produce_requests.load(Ordering::SeqCst), 3);
    assert_eq!(broker.values(TOPIC, 0), warm_up_then(1));
}

#[tokio::test]
async fn without_idempotence_a_lost_answer_writes_the_batch_twice() {
    // At-least-once, for contrast with the test above.
    let config = ProducerConfig::default().idempotence(Idempotence::Disabled);
    let (broker, _client, producer) = started(config).await;
    broker.lose_produce_answers(1);
    let written = producer
        .send(TOPIC, None, Some(Bytes::from("0")), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, 2);
    assert_eq!(broker.values(TOPIC, 0), vec![WARM_UP, "0", "0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_for_five_batches_in_flight_append_each_once_in_order() {
    // Goal: the broker appended five pipelined batches, then the connection broke before any
    // answer. Method: hold answers until the five were handled, drop the connections, then
    // release. Every retry must be recognised as a duplicate and report the original offset.
    let (broker, _client, producer) = started(one_batch_per_record()).await;
    broker.hold_answers();
    let deliveries = enqueue(&producer, 12).await;
    broker.wait_for_produce_requests(1 + 5).await;
    assert_eq!(
        broker.values(TOPIC, 0),
        warm_up_then(5),
        "all five appended"
    );
    broker.drop_connections();
    broker.release_answers();
    let written = delivered(deliveries).await;
    assert_offsets_follow_warm_up(&written);
    assert_eq!(broker.values(TOPIC, 0), warm_up_then(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_error_on_the_first_of_five_in_flight_resends_them_in_order() {
    // Goal: the first of five pipelined batches fails (nothing appended); the broker refuses
    // the four behind it as out of order; all five are resent one at a time, in order, then
    // pipelining resumes. Method: hold answers until the five arrived, fail the first.
    let (broker, _client, producer) = started(one_batch_per_record()).await;
    broker.fail_produce(1, ErrorCode::RequestTimedOut);
    broker.hold_answers();
    let deliveries = enqueue(&producer, 10).await;
    broker.wait_for_produce_requests(1 + 5).await;
    assert_eq!(
        broker.values(TOPIC, 0),
        warm_up_then(0),
        "a gap appends nothing"
    );
    broker.release_answers();
    let written = delivered(deliveries).await;
    assert_offsets_follow_warm_up(&written);
    assert_eq!(broker.values(TOPIC, 0), warm_up_then(10));
    // Warm-up, the five first attempts, five resends one by one, then the last five.
    assert_eq!(broker.state.produce_requests.load(Ordering::SeqCst), 16);
}

#[tokio::test]
async fn a_forgotten_producer_restarts_its_sequence_under_a_new_id() {
    let (broker, _client, producer) = started(ProducerConfig::default()).await;
    broker.forget_producers();
    let written = producer
        .send(TOPIC, None, Some(Bytes::from("0")), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, 1);
    assert_eq!(broker.values(TOPIC, 0), warm_up_then(1));
    let last = *broker.batch_headers(TOPIC, 0).last().unwrap();
    assert_eq!((last.producer_id, last.base_sequence), (2, 0));
    assert_eq!(
        broker
            .state
            .init_producer_id_requests
            .load(Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn unexplained_out_of_order_fails_the_batch_and_the_producer_goes_on() {
    // The broker lost the producer's last batch: the next one looks like it follows a gap,
    // with nothing in flight to explain it.
    let (broker, _client, producer) = started(ProducerConfig::default()).await;
    broker.forget_last_batches();
    let error = producer
        .send(TOPIC, None, Some(Bytes::from("0")), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::OutOfOrderSequence {
                producer_id: 1,
                base_sequence: 1,
                partition: 0,
                ..
            }
        ),
        "{error:?}"
    );
    let written = producer
        .send(TOPIC, None, Some(Bytes::from("1")), vec![])
        .await
        .unwrap();
    assert_eq!(written.offset, 1);
    assert_eq!(broker.values(TOPIC, 0), vec![WARM_UP, "1"]);
    assert_eq!(
        broker
            .state
            .init_producer_id_requests
            .load(Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn a_fenced_producer_fails_every_record_and_stops() {
    let (broker, _client, producer) = started(one_batch_per_record()).await;
    broker.fence_producers();
    let deliveries = enqueue(&producer, 10).await;
    for delivery in deliveries {
        let error = delivery.await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::ProducerFenced {
                    producer_id: 1,
                    producer_epoch: 0
                }
            ),
            "{error:?}"
        );
    }
    let later = producer
        .send(TOPIC, None, Some(Bytes::from("late")), vec![])
        .await
        .unwrap_err();
    assert_eq!(later.code(), Some(ErrorCode::ProducerFenced));
    assert_eq!(broker.values(TOPIC, 0), warm_up_then(0));
    producer.close().await.unwrap();
}

#[tokio::test]
async fn idempotence_needs_acks_all() {
    let broker = FakeBroker::start().await;
    let client = Client::connect(ClientConfig::new(broker.bootstrap()))
        .await
        .unwrap();
    for acks in [Acks::Leader, Acks::None] {
        let refused = Producer::try_new(&client, ProducerConfig::default().acks(acks));
        assert!(
            matches!(refused, Err(Error::InvalidState { .. })),
            "{acks:?}"
        );
        let plain = ProducerConfig::default()
            .acks(acks)
            .idempotence(Idempotence::Disabled);
        assert!(Producer::try_new(&client, plain).is_ok());
    }
}
