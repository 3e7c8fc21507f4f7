//! Transactions against the real `wharfd`, over the raw protocol so the broker's part is
//! checked exactly: read-committed fetches stop at the last stable offset and list aborted
//! transactions; a commit across three partitions becomes visible at once; a new producer
//! with the same transactional id fences the old one; offsets committed in a transaction
//! apply only if it commits; a broker crash aborts an open transaction; timeouts abort too.

use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{BrokerProcess, RawClient};
use wharf_protocol::batch::{batches, Attributes, BatchBuilder, NewRecord};
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

struct Txn {
    id: String,
    producer_id: i64,
    epoch: i16,
    sequence: i32,
}

fn init(client: &mut RawClient, id: &str, timeout_ms: u32) -> Txn {
    let Response::InitProducerId(response) =
        client.call(&Request::InitProducerId(InitProducerIdRequest {
            transactional_id: Some(id.to_string()),
            transaction_timeout_ms: timeout_ms,
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
    Txn {
        id: id.to_string(),
        producer_id: response.producer_id,
        epoch: response.producer_epoch,
        sequence: 0,
    }
}

fn add_partitions(client: &mut RawClient, txn: &Txn, topic: &str, partitions: &[u32]) -> ErrorCode {
    let Response::AddPartitionsToTxn(response) =
        client.call(&Request::AddPartitionsToTxn(AddPartitionsToTxnRequest {
            transactional_id: txn.id.clone(),
            producer_id: txn.producer_id,
            producer_epoch: txn.epoch,
            topics: vec![TopicPartitions {
                topic: topic.to_string(),
                partitions: partitions.to_vec(),
            }],
        }))
    else {
        panic!("wrong response")
    };
    response.error
}

fn end(client: &mut RawClient, txn: &Txn, result: TxnResult) -> ErrorCode {
    let Response::EndTxn(response) = client.call(&Request::EndTxn(EndTxnRequest {
        transactional_id: txn.id.clone(),
        producer_id: txn.producer_id,
        producer_epoch: txn.epoch,
        result,
    })) else {
        panic!("wrong response")
    };
    response.error
}

fn produce(
    client: &mut RawClient,
    topic: &str,
    partition: u32,
    records: Bytes,
) -> (ErrorCode, i64) {
    let Response::Produce(produced) = client.call(&Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition { partition, records }],
        }],
    })) else {
        panic!("wrong response")
    };
    let answer = &produced.topics[0].partitions[0];
    (answer.error, answer.base_offset)
}

/// A transactional batch of `values` for `txn` on one partition (sequences are per
/// partition; these tests use one sequence counter per partition they write).
fn txn_batch(txn: &Txn, sequence: i32, values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000)
        .producer(txn.producer_id, txn.epoch, sequence)
        .attributes(Attributes::NONE.transactional());
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

fn plain_batch(values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
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

struct Fetched {
    high_watermark: i64,
    last_stable_offset: i64,
    aborted: Vec<AbortedTransaction>,
    /// (offset, value) of data records; control batches skipped.
    records: Vec<(i64, String)>,
}

fn fetch(client: &mut RawClient, topic: &str, partition: u32, isolation: Isolation) -> Fetched {
    try_fetch(client, topic, partition, isolation)
        .unwrap_or_else(|(error, message)| panic!("{error:?}: {message:?}"))
}

/// [`fetch`], or the partition's error and message.
fn try_fetch(
    client: &mut RawClient,
    topic: &str,
    partition: u32,
    isolation: Isolation,
) -> Result<Fetched, (ErrorCode, Option<String>)> {
    let Response::Fetch(fetched) = client.call(&Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1024 * 1024,
        isolation,
        topics: vec![FetchTopic {
            name: topic.to_string(),
            partitions: vec![FetchPartition {
                partition,
                fetch_offset: 0,
                partition_max_bytes: 1024 * 1024,
            }],
        }],
    })) else {
        panic!("wrong response")
    };
    let answer = &fetched.topics[0].partitions[0];
    if answer.error != ErrorCode::None {
        return Err((answer.error, answer.error_message.clone()));
    }
    let mut records = Vec::new();
    for decoded in batches(answer.records.clone()) {
        let decoded = decoded.expect("valid batch");
        if decoded.header().attributes.is_control() {
            continue;
        }
        for record in decoded.records() {
            let record = record.expect("valid record");
            records.push((
                record.offset,
                String::from_utf8(record.value.expect("value").to_vec()).expect("utf-8"),
            ));
        }
    }
    Ok(Fetched {
        high_watermark: answer.high_watermark,
        last_stable_offset: answer.last_stable_offset,
        aborted: answer.aborted_transactions.clone(),
        records,
    })
}

fn create(client: &mut RawClient, topic: &str, partitions: u32) {
    let Response::CreateTopics(created) =
        client.call(&Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: topic.to_string(),
                partitions,
                configs: Vec::new(),
            }],
        }))
    else {
        panic!("wrong response")
    };
    assert_eq!(created.topics[0].error, ErrorCode::None);
}

fn start() -> (tempfile::TempDir, BrokerProcess, RawClient) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let client = RawClient::connect(broker.addr());
    (data, broker, client)
}

#[test]
fn an_aborted_transaction_is_listed_for_read_committed_and_visible_to_read_uncommitted() {
    let (_data, _broker, mut client) = start();
    create(&mut client, "t", 1);
    let txn = init(&mut client, "aborter", 0);
    assert_eq!(
        add_partitions(&mut client, &txn, "t", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "t", 0, txn_batch(&txn, 0, &["a", "b"])),
        (ErrorCode::None, 0)
    );
    // Open: read-committed sees nothing past the transaction's first offset.
    let open = fetch(&mut client, "t", 0, Isolation::ReadCommitted);
    assert_eq!(open.last_stable_offset, 0);
    assert!(open.records.is_empty());
    assert_eq!(end(&mut client, &txn, TxnResult::Abort), ErrorCode::None);
    // A plain record after the abort marker.
    assert_eq!(
        produce(&mut client, "t", 0, plain_batch(&["c"])).0,
        ErrorCode::None
    );
    let committed = fetch(&mut client, "t", 0, Isolation::ReadCommitted);
    assert_eq!(committed.last_stable_offset, committed.high_watermark);
    assert_eq!(
        committed.aborted,
        vec![AbortedTransaction {
            producer_id: txn.producer_id,
            first_offset: 0
        }]
    );
    let uncommitted = fetch(&mut client, "t", 0, Isolation::ReadUncommitted);
    let values: Vec<&str> = uncommitted
        .records
        .iter()
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(values, vec!["a", "b", "c"]);
    assert!(uncommitted.aborted.is_empty());
    // Retrying the same EndTxn is harmless; committing it now is not allowed.
    assert_eq!(end(&mut client, &txn, TxnResult::Abort), ErrorCode::None);
    assert_eq!(
        end(&mut client, &txn, TxnResult::Commit),
        ErrorCode::InvalidTxnState
    );
}

#[test]
fn a_commit_across_three_partitions_becomes_visible_at_once() {
    let (_data, _broker, mut client) = start();
    create(&mut client, "multi", 3);
    let txn = init(&mut client, "spanner", 0);
    assert_eq!(
        add_partitions(&mut client, &txn, "multi", &[0, 1, 2]),
        ErrorCode::None
    );
    for partition in 0..3 {
        let values = [format!("p{partition}-x"), format!("p{partition}-y")];
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(
            produce(&mut client, "multi", partition, txn_batch(&txn, 0, &refs)).0,
            ErrorCode::None
        );
    }
    for partition in 0..3 {
        let before = fetch(&mut client, "multi", partition, Isolation::ReadCommitted);
        assert!(
            before.records.is_empty(),
            "partition {partition} visible before the commit"
        );
        assert_eq!(before.high_watermark, 2);
    }
    assert_eq!(end(&mut client, &txn, TxnResult::Commit), ErrorCode::None);
    for partition in 0..3 {
        let after = fetch(&mut client, "multi", partition, Isolation::ReadCommitted);
        let values: Vec<String> = after.records.into_iter().map(|(_, value)| value).collect();
        assert_eq!(
            values,
            vec![format!("p{partition}-x"), format!("p{partition}-y")]
        );
        assert!(after.aborted.is_empty());
        // The commit marker takes one offset.
        assert_eq!(after.high_watermark, 3);
        assert_eq!(after.last_stable_offset, 3);
    }
}

#[test]
fn a_new_producer_with_the_same_transactional_id_fences_the_old_one() {
    let (_data, _broker, mut client) = start();
    create(&mut client, "f", 1);
    let zombie = init(&mut client, "shared-id", 0);
    assert_eq!(
        add_partitions(&mut client, &zombie, "f", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "f", 0, txn_batch(&zombie, 0, &["zombie-1"])).0,
        ErrorCode::None
    );
    let fresh = init(&mut client, "shared-id", 0);
    assert_eq!(fresh.producer_id, zombie.producer_id);
    assert!(fresh.epoch > zombie.epoch);
    // The zombie's open transaction was aborted, and the zombie is fenced everywhere.
    assert_eq!(
        end(&mut client, &zombie, TxnResult::Commit),
        ErrorCode::ProducerFenced
    );
    assert_eq!(
        add_partitions(&mut client, &zombie, "f", &[0]),
        ErrorCode::ProducerFenced
    );
    assert_eq!(
        produce(&mut client, "f", 0, txn_batch(&zombie, 1, &["zombie-2"])).0,
        ErrorCode::ProducerFenced
    );
    let view = fetch(&mut client, "f", 0, Isolation::ReadCommitted);
    assert_eq!(
        view.aborted,
        vec![AbortedTransaction {
            producer_id: zombie.producer_id,
            first_offset: 0
        }]
    );
    // The new producer works.
    assert_eq!(
        add_partitions(&mut client, &fresh, "f", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "f", 0, txn_batch(&fresh, 0, &["fresh"])).0,
        ErrorCode::None
    );
    assert_eq!(end(&mut client, &fresh, TxnResult::Commit), ErrorCode::None);
}

fn committed_offset(client: &mut RawClient, group: &str, topic: &str) -> i64 {
    let Response::OffsetFetch(fetched) = client.call(&Request::OffsetFetch(OffsetFetchRequest {
        group_id: group.to_string(),
        topics: Some(vec![TopicPartitions {
            topic: topic.to_string(),
            partitions: vec![0],
        }]),
    })) else {
        panic!("wrong response")
    };
    fetched.topics[0].partitions[0].offset
}

fn txn_offsets(client: &mut RawClient, txn: &Txn, group: &str, topic: &str, offset: i64) {
    let Response::AddOffsetsToTxn(added) =
        client.call(&Request::AddOffsetsToTxn(AddOffsetsToTxnRequest {
            transactional_id: txn.id.clone(),
            producer_id: txn.producer_id,
            producer_epoch: txn.epoch,
            group_id: group.to_string(),
        }))
    else {
        panic!("wrong response")
    };
    assert_eq!(added.error, ErrorCode::None, "{:?}", added.error_message);
    let Response::TxnOffsetCommit(committed) =
        client.call(&Request::TxnOffsetCommit(TxnOffsetCommitRequest {
            transactional_id: txn.id.clone(),
            group_id: group.to_string(),
            producer_id: txn.producer_id,
            producer_epoch: txn.epoch,
            member_id: String::new(),
            generation: -1,
            topics: vec![OffsetCommitTopic {
                name: topic.to_string(),
                partitions: vec![OffsetCommitPartition {
                    partition: 0,
                    offset,
                    metadata: None,
                }],
            }],
        }))
    else {
        panic!("wrong response")
    };
    assert_eq!(
        committed.error,
        ErrorCode::None,
        "{:?}",
        committed.error_message
    );
}

#[test]
fn offsets_committed_in_a_transaction_apply_only_if_it_commits() {
    let (_data, _broker, mut client) = start();
    create(&mut client, "in", 1);
    create(&mut client, "out", 1);
    let mut txn = init(&mut client, "pipeline", 0);
    assert_eq!(
        add_partitions(&mut client, &txn, "out", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "out", 0, txn_batch(&txn, 0, &["r1"])).0,
        ErrorCode::None
    );
    txn.sequence = 1;
    txn_offsets(&mut client, &txn, "readers", "in", 10);
    assert_eq!(
        committed_offset(&mut client, "readers", "in"),
        -1,
        "not before the commit"
    );
    assert_eq!(end(&mut client, &txn, TxnResult::Commit), ErrorCode::None);
    assert_eq!(committed_offset(&mut client, "readers", "in"), 10);
    // An aborted transaction leaves the committed offset alone.
    assert_eq!(
        add_partitions(&mut client, &txn, "out", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(
            &mut client,
            "out",
            0,
            txn_batch(&txn, txn.sequence, &["r2"])
        )
        .0,
        ErrorCode::None
    );
    txn_offsets(&mut client, &txn, "readers", "in", 20);
    assert_eq!(end(&mut client, &txn, TxnResult::Abort), ErrorCode::None);
    assert_eq!(committed_offset(&mut client, "readers", "in"), 10);
}

#[test]
fn a_broker_crash_aborts_the_open_transaction_and_fences_its_producer() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    create(&mut client, "crash", 1);
    let txn = init(&mut client, "survivor", 0);
    assert_eq!(
        add_partitions(&mut client, &txn, "crash", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "crash", 0, txn_batch(&txn, 0, &["in-flight"])).0,
        ErrorCode::None
    );
    broker.kill();
    broker.restart();
    let mut client = RawClient::connect(broker.addr());
    // Recovery aborts the open transaction (it cannot know the producer will come back).
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = fetch(&mut client, "crash", 0, Isolation::ReadCommitted);
        if view.last_stable_offset == view.high_watermark || Instant::now() > deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(view.last_stable_offset, view.high_watermark);
    assert_eq!(
        view.aborted,
        vec![AbortedTransaction {
            producer_id: txn.producer_id,
            first_offset: 0
        }]
    );
    assert_eq!(
        end(&mut client, &txn, TxnResult::Commit),
        ErrorCode::ProducerFenced
    );
}

#[test]
fn a_transaction_past_its_timeout_is_aborted() {
    let (_data, _broker, mut client) = start();
    create(&mut client, "slow", 1);
    let txn = init(&mut client, "sleepy", 300);
    assert_eq!(
        add_partitions(&mut client, &txn, "slow", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "slow", 0, txn_batch(&txn, 0, &["late"])).0,
        ErrorCode::None
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = fetch(&mut client, "slow", 0, Isolation::ReadCommitted);
        if !view.aborted.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transaction was never aborted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        end(&mut client, &txn, TxnResult::Commit),
        ErrorCode::ProducerFenced
    );
}

#[test]
fn a_transactional_batch_to_a_partition_not_added_is_refused() {
    let (_data, _broker, mut client) = start();
    create(&mut client, "strays", 2);
    let txn = init(&mut client, "careless", 0);
    assert_eq!(
        add_partitions(&mut client, &txn, "strays", &[0]),
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut client, "strays", 1, txn_batch(&txn, 0, &["stray"])).0,
        ErrorCode::InvalidTxnState
    );
    // Nothing was appended, so nothing holds partition 1's last stable offset back.
    let view = fetch(&mut client, "strays", 1, Isolation::ReadCommitted);
    assert_eq!(view.high_watermark, 0);
    assert_eq!(view.last_stable_offset, 0);
    assert_eq!(
        produce(&mut client, "strays", 0, txn_batch(&txn, 0, &["fine"])).0,
        ErrorCode::None
    );
    assert_eq!(end(&mut client, &txn, TxnResult::Commit), ErrorCode::None);
}

#[test]
fn internal_topics_cannot_join_a_transaction_and_the_broker_still_restarts() {
    // Goal: a marker written into __consumer_offsets or __transaction_state would not decode
    // as their records, and the broker would refuse to start. Method: try to add them, end
    // the transaction, restart, and check the broker serves.
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    let txn = init(&mut client, "sneaky", 0);
    assert_eq!(
        add_partitions(&mut client, &txn, "__consumer_offsets", &[0]),
        ErrorCode::InvalidTopicName
    );
    assert_eq!(
        add_partitions(&mut client, &txn, "__transaction_state", &[0]),
        ErrorCode::InvalidTopicName
    );
    let _ = end(&mut client, &txn, TxnResult::Abort);
    broker.stop();
    broker.restart();
    let mut client = RawClient::connect(broker.addr());
    let again = init(&mut client, "sneaky", 0);
    assert!(again.epoch > txn.epoch);
}

/// The leaders of `topic`'s partitions as node `via` sees them, once each names a node in
/// `alive` (a failover done).
fn leaders_among(via: &str, topic: &str, alive: &[u64]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders: Vec<u64> = integration_tests::cluster::native_leaders(via, topic)
            .into_iter()
            .map(|leader| u64::try_from(leader).unwrap_or(0))
            .collect();
        if leaders.iter().all(|leader| alive.contains(leader)) {
            return leaders;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}'s leaders {leaders:?} are not all among {alive:?} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces `records` to `topic`'s `partition` at its leader as node 1 names it, asking
/// again while the answer is NOT_LEADER (a group still electing); returns the error.
fn produce_at_leader(
    nodes: &[BrokerProcess],
    topic: &str,
    partition: u32,
    records: &Bytes,
) -> ErrorCode {
    let alive: Vec<u64> = (1..=3)
        .filter(|node| std::net::TcpStream::connect(nodes[*node as usize - 1].addr()).is_ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = leaders_among(&nodes[0].address(), topic, &alive);
        let leader = usize::try_from(leaders[partition as usize] - 1).expect("node index");
        let mut client = RawClient::connect(nodes[leader].addr());
        match produce(&mut client, topic, partition, records.clone()).0 {
            ErrorCode::NotLeaderOrFollower if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            error => return error,
        }
    }
}

/// A transaction across three nodes (issue #21): one node (node 1 as a rule) coordinates
/// it, its three
/// replicated partitions are led by the three nodes. Each leader verifies the
/// transactional batch with the coordinator (a partition not added is refused there); the
/// leader of one partition is SIGKILLed while the transaction is open, and the commit's
/// marker reaches the new leader (EndTxn answers CONCURRENT_TRANSACTIONS until every marker
/// is written); read_committed then sees the whole transaction on every partition. After
/// the commit, a batch of the ended transaction is refused at the gate; an aborted one is
/// listed for read_committed on the new leader's replicated log.
#[test]
fn a_transaction_spans_replicated_partitions_of_three_nodes_and_a_leader_kill() {
    let root = tempfile::tempdir().expect("temp dir");
    let (_, mut nodes) = integration_tests::cluster::three_nodes(root.path());
    let brokers: Vec<String> = nodes.iter().map(BrokerProcess::address).collect();
    integration_tests::cluster::converged(&brokers, 3, "three nodes");
    // Node 1 as a rule; another node when node 1 lost the coordinators' first election.
    let coordinating = integration_tests::cluster::registered(&brokers);
    let coordinator_id = u64::try_from(coordinating + 1).expect("a node id");
    let mut coordinator = RawClient::connect(nodes[coordinating].addr());
    create(&mut coordinator, "spread", 3);
    create(&mut coordinator, "aside", 3);
    // The groups elect the leaders placement spread (node 1's view names node 1 until
    // they have).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = leaders_among(&brokers[0], "spread", &[1, 2, 3]);
        if leaders.iter().any(|leader| *leader != 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no partition of spread is led away from node 1: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let leader_of = |leaders: &[u64], partition: u32| -> usize {
        usize::try_from(leaders[partition as usize] - 1).expect("node index")
    };

    let txn = init(&mut coordinator, "spanning", 60_000);
    assert_eq!(
        add_partitions(&mut coordinator, &txn, "spread", &[0, 1, 2]),
        ErrorCode::None
    );
    for partition in 0..3 {
        let batch = txn_batch(&txn, 0, &[&format!("committed-{partition}")]);
        let error = produce_at_leader(&nodes, "spread", partition, &batch);
        assert_eq!(error, ErrorCode::None, "spread-{partition}");
    }
    // A partition the transaction did not add is refused by its leader, wherever it is.
    let deadline = Instant::now() + Duration::from_secs(30);
    let elsewhere = loop {
        let aside = leaders_among(&brokers[0], "aside", &[1, 2, 3]);
        if let Some(partition) =
            (0..3).find(|partition| aside[*partition as usize] != coordinator_id)
        {
            break partition;
        }
        assert!(
            Instant::now() < deadline,
            "no partition of aside led away from the coordinator"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        produce_at_leader(&nodes, "aside", elsewhere, &txn_batch(&txn, 0, &["stray"])),
        ErrorCode::InvalidTxnState
    );

    // The open transaction holds every partition's last stable offset back.
    let leaders = leaders_among(&brokers[0], "spread", &[1, 2, 3]);
    for partition in 0..3 {
        let mut client = RawClient::connect(nodes[leader_of(&leaders, partition)].addr());
        let view = fetch(&mut client, "spread", partition, Isolation::ReadCommitted);
        assert!(
            view.records.is_empty(),
            "spread-{partition}: {:?}",
            view.records
        );
        assert_eq!(view.last_stable_offset, 0, "spread-{partition}");
        assert_eq!(view.high_watermark, 1, "spread-{partition}");
    }

    // Kill the leader of a partition led away from the coordinator, then commit.
    let victim_partition = (0..3)
        .find(|partition| leaders[*partition as usize] != coordinator_id)
        .expect("a partition led away from the coordinator");
    let victim = leaders[victim_partition as usize];
    nodes[usize::try_from(victim - 1).expect("index")].kill();
    let alive: Vec<u64> = (1..=3).filter(|node| *node != victim).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut concurrent = 0;
    loop {
        match end(&mut coordinator, &txn, TxnResult::Commit) {
            ErrorCode::None => break,
            ErrorCode::ConcurrentTransactions => concurrent += 1,
            other => panic!("EndTxn answered {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the commit did not complete within 60 s of the leader's kill"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("commit completed after {concurrent} CONCURRENT_TRANSACTIONS answers");
    let leaders = leaders_among(&brokers[0], "spread", &alive);
    for partition in 0..3 {
        let mut client = RawClient::connect(nodes[leader_of(&leaders, partition)].addr());
        let view = fetch(&mut client, "spread", partition, Isolation::ReadCommitted);
        assert_eq!(
            view.records,
            vec![(0, format!("committed-{partition}"))],
            "spread-{partition} after the commit"
        );
        assert_eq!(view.last_stable_offset, view.high_watermark);
        assert_eq!(view.high_watermark, 2, "the record and its marker");
    }

    // A batch of the ended transaction is refused: its partition must be added again.
    assert_eq!(
        produce_at_leader(
            &nodes,
            "spread",
            victim_partition,
            &txn_batch(&txn, 1, &["late"])
        ),
        ErrorCode::InvalidTxnState
    );
    // An aborted transaction on the new leader is hidden from read_committed.
    assert_eq!(
        add_partitions(&mut coordinator, &txn, "spread", &[victim_partition]),
        ErrorCode::None
    );
    assert_eq!(
        produce_at_leader(
            &nodes,
            "spread",
            victim_partition,
            &txn_batch(&txn, 1, &["aborted"])
        ),
        ErrorCode::None
    );
    assert_eq!(
        end(&mut coordinator, &txn, TxnResult::Abort),
        ErrorCode::None
    );
    let leaders = leaders_among(&brokers[0], "spread", &alive);
    let mut client = RawClient::connect(nodes[leader_of(&leaders, victim_partition)].addr());
    let view = fetch(
        &mut client,
        "spread",
        victim_partition,
        Isolation::ReadCommitted,
    );
    // The committed record, the commit marker, the aborted record and its marker; the
    // aborted record is listed so read_committed clients skip it.
    assert_eq!(
        view.records,
        vec![
            (0, format!("committed-{victim_partition}")),
            (2, "aborted".to_string())
        ]
    );
    assert_eq!(
        view.aborted,
        vec![AbortedTransaction {
            producer_id: txn.producer_id,
            first_offset: 2
        }]
    );
    assert_eq!(view.last_stable_offset, 4);
    assert_eq!(view.high_watermark, 4);
    let everything = fetch(
        &mut client,
        "spread",
        victim_partition,
        Isolation::ReadUncommitted,
    );
    assert_eq!(everything.records.len(), 2, "{:?}", everything.records);

    // The coordinator is SIGKILLed with a transaction open on the three partitions.
    // Another node takes over from the replicated coordinators' log with the
    // transaction still open (its producer is not fenced), the producer aborts it there,
    // and each abort marker goes through its partition's group (the old one, restarted, writes
    // none into its own copies while it starts), so every partition's last stable offset
    // catches up again.
    nodes[usize::try_from(victim - 1).expect("index")].restart();
    assert_eq!(
        add_partitions(&mut coordinator, &txn, "spread", &[0, 1, 2]),
        ErrorCode::None
    );
    for partition in 0..3 {
        let sequence = if partition == victim_partition { 2 } else { 1 };
        let batch = txn_batch(&txn, sequence, &[&format!("open-{partition}")]);
        let error = produce_at_leader(&nodes, "spread", partition, &batch);
        assert_eq!(error, ErrorCode::None, "spread-{partition}, open");
    }
    nodes[coordinating].kill();
    nodes[coordinating].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    'aborted: loop {
        // Whichever node coordinates now; the others refuse with NOT_COORDINATOR.
        for node in &nodes {
            let mut client = RawClient::connect(node.addr());
            match end(&mut client, &txn, TxnResult::Abort) {
                ErrorCode::None => break 'aborted,
                ErrorCode::NotCoordinator
                | ErrorCode::ConcurrentTransactions
                | ErrorCode::RequestTimedOut
                | ErrorCode::ShuttingDown => {}
                other => panic!("EndTxn after the coordinator's kill answered {other:?}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node ended the transaction open when the coordinator was killed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for partition in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leaders = leaders_among(&brokers[(coordinating + 1) % 3], "spread", &[1, 2, 3]);
            let mut client = RawClient::connect(nodes[leader_of(&leaders, partition)].addr());
            let Ok(view) = try_fetch(&mut client, "spread", partition, Isolation::ReadCommitted)
            else {
                // A group still electing after the restart.
                assert!(
                    Instant::now() < deadline,
                    "spread-{partition} has no leader"
                );
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let closed = view.last_stable_offset == view.high_watermark
                && view
                    .aborted
                    .iter()
                    .any(|aborted| aborted.producer_id == txn.producer_id);
            if closed && view.aborted.len() == if partition == victim_partition { 2 } else { 1 } {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "spread-{partition}: the open transaction was not aborted through the new \
                 coordinator: last stable {} of {}, aborted {:?}",
                view.last_stable_offset,
                view.high_watermark,
                view.aborted
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
