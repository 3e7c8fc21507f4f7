//! Consumer groups against the real `wharfd`: members split partitions, take over when one
//! leaves or is killed (SIGKILL, found by the session timeout), committed offsets survive a
//! broker restart, and a fenced member cannot commit.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{wharf_ok, wharf_path, BrokerProcess, RawClient};
use tokio::sync::watch;
use wharf_client::{
    Admin, Client, ClientConfig, CommitPolicy, Consumer, ConsumerConfig, OffsetReset, Producer,
    ProducerConfig, ProducerRecord, TopicPartition,
};
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

const SESSION_TIMEOUT: Duration = Duration::from_millis(1500);

fn broker() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start_with_config(
        &data.path().join("data"),
        "group_session_timeout_ms = 1500\n",
    );
    (data, broker)
}

async fn connect(broker: &BrokerProcess) -> Client {
    Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect")
}

async fn produce_to_every_partition(
    client: &Client,
    topic: &str,
    partitions: u32,
    per_partition: u32,
) {
    let producer = Producer::new(client, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for partition in 0..partitions {
        for index in 0..per_partition {
            let mut record =
                ProducerRecord::new(topic, Bytes::from(format!("{partition}:{index}")));
            record.partition = Some(partition);
            deliveries.push(producer.enqueue(record).await.expect("enqueue"));
        }
    }
    for delivery in deliveries {
        delivery.await.expect("acked");
    }
    producer.close().await.expect("close");
}

fn group_config() -> ConsumerConfig {
    ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        commit: CommitPolicy::Manual,
        session_timeout: SESSION_TIMEOUT,
        ..ConsumerConfig::default()
    }
}

/// A group member polling in the background and publishing its assignment.
struct Member {
    assignment: watch::Receiver<BTreeSet<u32>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn start(client: &Client, group: &str, topic: &str) -> Member {
        let mut consumer = Consumer::new(client, group_config());
        consumer.subscribe(group, [topic]).await.expect("subscribe");
        let (publish, assignment) = watch::channel(BTreeSet::new());
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                if stopped.try_recv().is_ok() {
                    break;
                }
                consumer
                    .poll(Duration::from_millis(100))
                    .await
                    .expect("poll");
                let owned: BTreeSet<u32> = consumer
                    .assignment()
                    .iter()
                    .map(|tp| tp.partition)
                    .collect();
                publish.send_replace(owned);
                // Commit as we go, so a survivor resumes after what was processed.
                let _ = consumer.commit().await;
            }
            consumer.close().await.expect("close leaves the group");
        });
        Member {
            assignment,
            stop: Some(stop),
            task,
        }
    }

    fn owned(&self) -> BTreeSet<u32> {
        self.assignment.borrow().clone()
    }

    async fn leave(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("member task")
    }
}

/// Waits until `check` holds, polling every 50 ms, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_split_six_partitions_and_take_over_on_leave_and_on_kill() {
    let (_data, broker) = broker();
    let client = connect(&broker).await;
    Admin::new(&client)
        .create_topic("work", 6, &[])
        .await
        .expect("create");
    produce_to_every_partition(&client, "work", 6, 20).await;

    let first = Member::start(&client, "g", "work").await;
    let second = Member::start(&client, "g", "work").await;
    // The third member is a separate `wharf consume` process, so it can be SIGKILLed: it then
    // never leaves, and only the session timeout removes it.
    let mut third = Command::new(wharf_path())
        .args([
            "--broker",
            &broker.address(),
            "consume",
            "work",
            "--group",
            "g",
            "--from",
            "earliest",
            "--timeout-ms",
            "60000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wharf consume");
    eventually(
        Duration::from_secs(20),
        "three members hold two partitions each",
        || first.owned().len() == 2 && second.owned().len() == 2,
    )
    .await;
    assert!(first.owned().is_disjoint(&second.owned()));

    third.kill().expect("SIGKILL");
    let _ = third.wait();
    eventually(
        Duration::from_secs(20),
        "the killed member's partitions move to the others",
        || first.owned().len() == 3 && second.owned().len() == 3,
    )
    .await;
    let union: BTreeSet<u32> = first.owned().union(&second.owned()).copied().collect();
    assert_eq!(union, (0..6).collect());

    second.leave().await;
    eventually(
        Duration::from_secs(20),
        "the leaving member's partitions move to the last one",
        || first.owned().len() == 6,
    )
    .await;
    first.leave().await;
    // Between them the members (the killed one included) consumed and committed everything.
    let lag = Admin::new(&client).group_lag("g").await.expect("lag");
    assert_eq!(lag.len(), 6, "{lag:?}");
    assert!(
        lag.iter().all(|partition| partition.lag == Some(0)),
        "{lag:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_broker_crash_and_restart() {
    let (_data, mut broker) = broker();
    let client = connect(&broker).await;
    Admin::new(&client)
        .create_topic("ledger", 1, &[])
        .await
        .expect("create");
    produce_to_every_partition(&client, "ledger", 1, 100).await;
    let mut consumer = Consumer::new(
        &client,
        ConsumerConfig {
            group_id: Some("auditors".into()),
            ..group_config()
        },
    );
    consumer
        .assign(vec![TopicPartition::new("ledger", 0)])
        .expect("assign");
    let mut seen = Vec::new();
    while seen.len() < 40 {
        seen.extend(
            consumer
                .poll(Duration::from_millis(200))
                .await
                .expect("poll"),
        );
    }
    consumer.seek("ledger", 0, 40).expect("seek");
    consumer.commit().await.expect("commit");
    drop(consumer);
    drop(client);

    broker.kill();
    broker.restart();

    let client = connect(&broker).await;
    let mut consumer = Consumer::new(
        &client,
        ConsumerConfig {
            group_id: Some("auditors".into()),
            ..group_config()
        },
    );
    consumer
        .assign(vec![TopicPartition::new("ledger", 0)])
        .expect("assign");
    let mut records = Vec::new();
    while records.is_empty() {
        records = consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll");
    }
    assert_eq!(records[0].offset, 40, "resumes at the committed offset");
    let described = wharf_ok(
        &broker.address(),
        &["--json", "group", "describe", "auditors"],
        "",
    );
    assert!(described.contains("40"), "{described}");
}

fn heartbeat(client: &mut RawClient, member_id: &str, generation: i32) -> GroupHeartbeatResponse {
    let Response::GroupHeartbeat(response) =
        client.call(&Request::GroupHeartbeat(GroupHeartbeatRequest {
            group_id: "fence".into(),
            member_id: member_id.into(),
            generation,
            client_id: "test".into(),
            topics: vec!["fenced".into()],
            assignor: String::new(),
            session_timeout_ms: 1000,
        }))
    else {
        panic!("wrong response")
    };
    response
}

fn commit(client: &mut RawClient, member_id: &str, generation: i32) -> ErrorCode {
    let Response::OffsetCommit(response) =
        client.call(&Request::OffsetCommit(OffsetCommitRequest {
            group_id: "fence".into(),
            member_id: member_id.into(),
            generation,
            topics: vec![OffsetCommitTopic {
                name: "fenced".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: 0,
                    offset: 1,
                    metadata: None,
                }],
            }],
        }))
    else {
        panic!("wrong response")
    };
    response.topics[0].partitions[0].error
}

#[test]
fn a_fenced_member_cannot_commit() {
    let (_data, broker) = broker();
    let mut client = RawClient::connect(broker.addr());
    wharf_ok(
        &broker.address(),
        &["topic", "create", "fenced", "--partitions", "2"],
        "",
    );
    let zombie = heartbeat(&mut client, "", 0);
    assert_eq!(zombie.error, ErrorCode::None);
    assert_eq!(
        commit(&mut client, &zombie.member_id, zombie.generation),
        ErrorCode::None
    );
    // A second member joins: the generation moves on and the old one is stale.
    let live = heartbeat(&mut client, "", 0);
    assert!(live.generation > zombie.generation);
    assert_eq!(
        commit(&mut client, &zombie.member_id, zombie.generation),
        ErrorCode::IllegalGeneration
    );
    // A manually assigned (non-member) commit is refused while the group has members.
    assert_eq!(commit(&mut client, "", -1), ErrorCode::UnknownMemberId);
    // The zombie stops heartbeating; after its session it is removed and cannot commit at
    // all, while the live member (which keeps heartbeating) still can.
    let started = Instant::now();
    let mut current = live.clone();
    while started.elapsed() < Duration::from_millis(2500) {
        current = heartbeat(&mut client, &live.member_id, current.generation);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        commit(&mut client, &zombie.member_id, current.generation),
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        heartbeat(&mut client, &zombie.member_id, zombie.generation).error,
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        commit(&mut client, &live.member_id, current.generation),
        ErrorCode::None
    );
}

/// A member that records every value it polls (with the commit policy `commit`), until
/// told to stop; then it commits and leaves.
fn recording_member(
    client: &Client,
    group: &'static str,
    topic: &'static str,
    commit: CommitPolicy,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let client = client.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(
            &client,
            ConsumerConfig {
                commit,
                ..group_config()
            },
        );
        consumer.subscribe(group, [topic]).await.expect("subscribe");
        while stopped.try_recv().is_err() {
            let records = consumer
                .poll(Duration::from_millis(50))
                .await
                .expect("poll");
            let mut seen = seen.lock().unwrap_or_else(|poison| poison.into_inner());
            for record in records {
                let value = record.value.expect("a value");
                seen.push(String::from_utf8_lossy(&value).into_owned());
            }
        }
        // What was processed is committed before leaving (under auto-commit `close` does it
        // too), as `wharf consume --group` does on exit.
        consumer.commit().await.expect("final commit");
        consumer.close().await.expect("close leaves");
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_while_records_flow_process_each_record_once() {
    // Goal: with no crash, a group rebalancing while records flow processes every record
    // exactly once (issue #13: a member joining took partitions whose old owner had not
    // committed, and they were read twice). Method: records flow into 4 partitions while
    // members A, B and C join one after the other and A and B leave; with the two-step
    // handover the next owner starts where the previous one committed. Run once with
    // manual commits (committed only on revocation and close) and once with auto-commit.
    for (round, commit) in [
        CommitPolicy::Manual,
        CommitPolicy::Auto {
            interval: Duration::from_secs(5),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let (_data, broker) = broker();
        let address = broker.address();
        let topic: &'static str = "flowing";
        wharf_ok(
            &address,
            &["topic", "create", topic, "--partitions", "4"],
            "",
        );
        let client = connect(&broker).await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let producer = Producer::new(&client, ProducerConfig::default());
        let total = 1_200u32;
        let mut produced = 0u32;
        let mut produce = |count: u32| {
            let start = produced;
            produced += count;
            (start..start + count).map(|index| {
                let mut record = ProducerRecord::new(topic, Bytes::from(format!("r{index}")));
                record.partition = Some(index % 4);
                record
            })
        };
        let mut members = Vec::new();
        for step in 0..6u32 {
            match step {
                0..=2 => members.push(recording_member(
                    &client,
                    "flow",
                    topic,
                    commit,
                    seen.clone(),
                )),
                3 | 4 => {
                    // The oldest member still in leaves (A, then B).
                    let (stop, task) = members.remove(0);
                    let _ = stop.send(());
                    task.await.expect("member");
                }
                _ => {}
            }
            let mut deliveries = Vec::new();
            for record in produce(total / 6) {
                deliveries.push(producer.enqueue(record).await.expect("enqueued"));
            }
            for delivery in deliveries {
                delivery.await.expect("produced");
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let expected: BTreeSet<String> = (0..total).map(|index| format!("r{index}")).collect();
        eventually(Duration::from_secs(20), "every record is consumed", || {
            let seen = seen.lock().unwrap_or_else(|poison| poison.into_inner());
            seen.iter().cloned().collect::<BTreeSet<_>>() == expected
        })
        .await;
        for (stop, task) in members {
            let _ = stop.send(());
            task.await.expect("member");
        }
        producer.close().await.expect("close");
        let seen = seen.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut counts = std::collections::BTreeMap::new();
        for value in seen.iter() {
            *counts.entry(value.clone()).or_insert(0u32) += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: {} records processed more than once, e.g. {:?}",
            twice.len(),
            twice.iter().take(5).collect::<Vec<_>>()
        );
    }
}
