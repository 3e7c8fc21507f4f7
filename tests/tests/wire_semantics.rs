//! Broker semantics observable on the wire: pipelined produces take effect in request order,
//! long-poll fetches wait for data and wake on append, internal topics refuse produce.

use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{BrokerProcess, RawClient};
use wharf_protocol::batch::{batches, BatchBuilder, NewRecord};
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

fn batch(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder
        .push(&NewRecord {
            timestamp_ms: 1_700_000_000_000,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            ..NewRecord::default()
        })
        .expect("fits");
    builder.build()
}

fn produce(topic: &str, acks: Acks, value: &str) -> Request {
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: batch(value),
            }],
        }],
    })
}

fn fetch(topic: &str, offset: i64, min_bytes: u32, max_wait_ms: u32) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes: 1024 * 1024,
        isolation: Isolation::ReadUncommitted,
        topics: vec![FetchTopic {
            name: topic.to_string(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: offset,
                partition_max_bytes: 1024 * 1024,
            }],
        }],
    })
}

fn create(client: &mut RawClient, topic: &str) {
    let response = client.call(&Request::CreateTopics(CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: topic.to_string(),
            partitions: 1,
            configs: Vec::new(),
        }],
    }));
    let Response::CreateTopics(created) = response else {
        panic!("wrong response")
    };
    assert_eq!(
        created.topics[0].error,
        ErrorCode::None,
        "{:?}",
        created.topics[0].error_message
    );
}

fn fetched_values(response: Response, from_offset: i64) -> Vec<String> {
    let Response::Fetch(fetched) = response else {
        panic!("wrong response")
    };
    let partition = &fetched.topics[0].partitions[0];
    assert_eq!(
        partition.error,
        ErrorCode::None,
        "{:?}",
        partition.error_message
    );
    let mut values = Vec::new();
    for decoded in batches(partition.records.clone()) {
        for record in decoded.expect("valid batch").records() {
            let record = record.expect("valid record");
            if record.offset >= from_offset {
                values
                    .push(String::from_utf8(record.value.expect("value").to_vec()).expect("utf-8"));
            }
        }
    }
    values
}

#[test]
fn pipelined_produces_append_in_request_order() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    create(&mut client, "ordered");
    // 200 produces in flight at once on one connection, mixing acks levels.
    for index in 0..200 {
        let acks = if index % 3 == 0 {
            Acks::Leader
        } else {
            Acks::All
        };
        client.send(&produce("ordered", acks, &format!("v{index}")));
    }
    for index in 0..200i64 {
        let (_, response) = client.receive();
        let Response::Produce(produced) = response else {
            panic!("wrong response")
        };
        let partition = &produced.topics[0].partitions[0];
        assert_eq!(partition.error, ErrorCode::None);
        assert_eq!(
            partition.base_offset, index,
            "request {index} appended out of order"
        );
    }
    let mut values = Vec::new();
    while values.len() < 200 {
        let next = values.len() as i64;
        values.extend(fetched_values(
            client.call(&fetch("ordered", next, 1, 1000)),
            next,
        ));
    }
    let expected: Vec<String> = (0..200).map(|index| format!("v{index}")).collect();
    assert_eq!(values, expected);
}

#[test]
fn long_poll_fetch_waits_for_min_bytes_then_returns_what_there_is() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    create(&mut client, "poll");
    client.call(&produce("poll", Acks::All, "one"));
    // Some data is there, but less than min_bytes: the broker waits the full max_wait.
    let started = Instant::now();
    let values = fetched_values(client.call(&fetch("poll", 0, 1024 * 1024, 400)), 0);
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "returned early"
    );
    assert_eq!(values, vec!["one".to_string()]);
}

#[test]
fn long_poll_fetch_wakes_when_data_is_appended() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut waiter = RawClient::connect(broker.addr());
    create(&mut waiter, "wake");
    let started = Instant::now();
    waiter.send(&fetch("wake", 0, 1, 20_000));
    let mut producer = RawClient::connect(broker.addr());
    producer.call(&produce("wake", Acks::All, "hello"));
    let (_, response) = waiter.receive();
    assert_eq!(fetched_values(response, 0), vec!["hello".to_string()]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the fetch did not wake on append"
    );
}

#[test]
fn produce_to_an_internal_topic_is_refused() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    let Response::Produce(produced) = client.call(&produce("__consumer_offsets", Acks::All, "x"))
    else {
        panic!("wrong response")
    };
    assert_eq!(
        produced.topics[0].partitions[0].error,
        ErrorCode::InvalidTopicName
    );
}

#[test]
fn metadata_answers_carry_the_advertised_address_not_the_bind_address() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start_with_config(
        &data.path().join("data"),
        "advertised_address = \"broker-1.example.internal:9092\"\n",
    );
    let mut client = RawClient::connect(broker.addr());
    let Response::Metadata(metadata) =
        client.call(&Request::Metadata(MetadataRequest { topics: None }))
    else {
        panic!("wrong response")
    };
    assert_eq!(metadata.brokers.len(), 1);
    assert_eq!(metadata.brokers[0].host, "broker-1.example.internal");
    assert_eq!(metadata.brokers[0].port, 9092);
}
