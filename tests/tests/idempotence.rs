//! Idempotent produce against the real `wharfd`, over the raw protocol so each case is exact:
//! a retried batch (its first response "lost") appends once, also after a SIGKILL and after a
//! clean restart of the broker; a sequence gap is refused; an older epoch is fenced.

use bytes::Bytes;
use integration_tests::{BrokerProcess, RawClient};
use wharf_protocol::batch::{BatchBuilder, NewRecord};
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

fn batch(producer_id: i64, epoch: i16, first_sequence: i32, values: &[&str]) -> Bytes {
    let mut builder =
        BatchBuilder::new(1_700_000_000_000).producer(producer_id, epoch, first_sequence);
    for value in values {
        builder
            .push(&NewRecord {
                timestamp_ms: 1_700_000_000_000,
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
                ..NewRecord::default()
            })
            .expect("fits");
    }
    builder.build()
}

/// Produces `records` to partition 0 of `topic`; returns (error, base offset).
fn produce(client: &mut RawClient, topic: &str, records: Bytes) -> (ErrorCode, i64) {
    let Response::Produce(produced) = client.call(&Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition {
                partition: 0,
                records,
            }],
        }],
    })) else {
        panic!("wrong response")
    };
    let partition = &produced.topics[0].partitions[0];
    (partition.error, partition.base_offset)
}

fn init_producer_id(client: &mut RawClient) -> (i64, i16) {
    let Response::InitProducerId(response) =
        client.call(&Request::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 0,
        }))
    else {
        panic!("wrong response")
    };
    assert_eq!(
        response.error,
        ErrorCode::None,
        "{:?}",
        response.error_message
    );
    (response.producer_id, response.producer_epoch)
}

fn log_end(client: &mut RawClient, topic: &str) -> i64 {
    let Response::ListOffsets(listed) = client.call(&Request::ListOffsets(ListOffsetsRequest {
        topics: vec![ListOffsetsTopic {
            name: topic.to_string(),
            partitions: vec![ListOffsetsPartition {
                partition: 0,
                timestamp: LIST_OFFSETS_LATEST,
            }],
        }],
    })) else {
        panic!("wrong response")
    };
    listed.topics[0].partitions[0].offset
}

#[test]
fn a_retried_batch_appends_once_also_across_broker_restarts() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    let (producer_id, epoch) = init_producer_id(&mut client);
    let (other_id, _) = init_producer_id(&mut client);
    assert_ne!(producer_id, other_id, "ids are unique");

    let first = batch(producer_id, epoch, 0, &["a", "b", "c"]);
    assert_eq!(
        produce(&mut client, "orders", first.clone()),
        (ErrorCode::None, 0)
    );
    // The response was "lost": the client sends the same batch again.
    assert_eq!(
        produce(&mut client, "orders", first.clone()),
        (ErrorCode::None, 0)
    );
    let second = batch(producer_id, epoch, 3, &["d"]);
    assert_eq!(
        produce(&mut client, "orders", second.clone()),
        (ErrorCode::None, 3)
    );
    assert_eq!(log_end(&mut client, "orders"), 4);

    // A crash with no snapshot written: the state is rebuilt from the log.
    broker.kill();
    broker.restart();
    let mut client = RawClient::connect(broker.addr());
    assert_eq!(
        produce(&mut client, "orders", second.clone()),
        (ErrorCode::None, 3)
    );
    assert_eq!(
        produce(&mut client, "orders", first.clone()),
        (ErrorCode::None, 0)
    );
    assert_eq!(log_end(&mut client, "orders"), 4);

    // A clean restart: the state comes from the snapshot written at shutdown.
    let third = batch(producer_id, epoch, 4, &["e", "f"]);
    assert_eq!(
        produce(&mut client, "orders", third.clone()),
        (ErrorCode::None, 4)
    );
    broker.stop();
    assert!(
        data.path().join("data/orders-0/producer-state").exists(),
        "a clean shutdown writes the producer snapshot"
    );
    broker.restart();
    let mut client = RawClient::connect(broker.addr());
    assert_eq!(produce(&mut client, "orders", third), (ErrorCode::None, 4));
    assert_eq!(produce(&mut client, "orders", second), (ErrorCode::None, 3));
    assert_eq!(log_end(&mut client, "orders"), 6);
    // New ids after restarts never repeat old ones.
    let (after_restart, _) = init_producer_id(&mut client);
    assert!(after_restart > other_id);
}

#[test]
fn a_sequence_gap_is_refused_and_nothing_is_appended() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    let (producer_id, epoch) = init_producer_id(&mut client);
    assert_eq!(
        produce(&mut client, "gaps", batch(producer_id, epoch, 0, &["a"])).0,
        ErrorCode::None
    );
    assert_eq!(
        produce(
            &mut client,
            "gaps",
            batch(producer_id, epoch, 5, &["lost-some"])
        )
        .0,
        ErrorCode::OutOfOrderSequence
    );
    // A producer the broker has never seen must start at sequence 0.
    let (fresh, _) = init_producer_id(&mut client);
    assert_eq!(
        produce(&mut client, "gaps", batch(fresh, 0, 9, &["x"])).0,
        ErrorCode::UnknownProducerId
    );
    assert_eq!(log_end(&mut client, "gaps"), 1);
    assert_eq!(
        produce(&mut client, "gaps", batch(producer_id, epoch, 1, &["b"])),
        (ErrorCode::None, 1)
    );
}

#[test]
fn an_older_epoch_is_fenced() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    let (producer_id, _) = init_producer_id(&mut client);
    assert_eq!(
        produce(&mut client, "fence", batch(producer_id, 1, 0, &["new"])).0,
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "fence", batch(producer_id, 0, 1, &["zombie"])).0,
        ErrorCode::ProducerFenced
    );
    assert_eq!(log_end(&mut client, "fence"), 1);
}

#[test]
fn a_producer_id_never_handed_out_and_a_far_future_timestamp_are_refused() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    assert_eq!(
        produce(&mut client, "guarded", batch(1_000_000, 0, 0, &["forged"])).0,
        ErrorCode::InvalidProducerIdMapping
    );
    let mut builder = BatchBuilder::new(i64::MAX / 2);
    builder
        .push(&NewRecord {
            timestamp_ms: i64::MAX / 2,
            value: Some(Bytes::from_static(b"from the future")),
            ..NewRecord::default()
        })
        .expect("fits");
    assert_eq!(
        produce(&mut client, "guarded", builder.build()).0,
        ErrorCode::InvalidRequest
    );
    assert_eq!(log_end(&mut client, "guarded"), 0);
}
