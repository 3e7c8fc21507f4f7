//! The queue manager in-process (real files in a temp dir): routing through exchanges,
//! prefetch-bounded push delivery with acks, durability across a restart, requeue with the
//! redelivered flag, dead-lettering on reject, TTL, overflow and the delivery limit with the
//! reason recorded, and delayed delivery on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wharf_broker::queue::exchange::ExchangeKind;
use wharf_broker::queue::{
    args_from_pairs, AckScope, CancelReason, ConsumerEvent, ConsumerId, ConsumerOptions,
    ConsumerPush, DeleteConditions, Delivered, Deliveries, Durability, Message, Precondition,
    Published, QueueArgs, QueueError, QueueManager, Requeue,
};
use wharf_broker::storage::{Flusher, RealFs, StorageEnv, SystemClock};
use wharf_protocol::batch::Header;

fn env() -> StorageEnv {
    StorageEnv {
        fs: Arc::new(RealFs),
        clock: Arc::new(SystemClock),
        flusher: Flusher::spawn(1),
    }
}

fn message(routing_key: &str, body: &str) -> Message {
    Message {
        routing_key: routing_key.to_string(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        headers: Vec::new(),
    }
}

fn with_header(mut message: Message, key: &str, value: &str) -> Message {
    message.headers.push(Header {
        key: key.to_string(),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
    });
    message
}

async fn next(receiver: &mut Deliveries) -> Delivered {
    match next_event(receiver).await {
        ConsumerEvent::Delivery(delivered) => delivered,
        ConsumerEvent::Cancelled(reason) => panic!("consumer cancelled: {reason:?}"),
    }
}

async fn next_event(receiver: &mut Deliveries) -> ConsumerEvent {
    tokio::time::timeout(Duration::from_secs(10), receiver.recv())
        .await
        .expect("an event in time")
        .expect("the queue is alive")
}

/// A manager in a fresh temp dir with one queue declared.
fn manager_with_queue(
    name: &str,
    args: QueueArgs,
    durability: Durability,
) -> (tempfile::TempDir, Arc<QueueManager>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    manager
        .declare_queue(name, args, durability)
        .expect("declare");
    (dir, manager)
}

/// A durable fanout exchange `dlx` feeding a durable queue `dead`, for dead letters.
fn declare_dead_letter_queue(manager: &QueueManager) {
    manager
        .declare_exchange("dlx", ExchangeKind::Fanout, Durability::Durable)
        .expect("declare dlx");
    manager
        .declare_queue("dead", QueueArgs::default(), Durability::Durable)
        .expect("declare dead");
    manager.bind("dead", "dlx", "", &[]).expect("bind dead");
}

fn body(delivered: &Delivered) -> String {
    String::from_utf8(delivered.record.value.clone().expect("body").to_vec()).expect("utf-8")
}

fn header(delivered: &Delivered, key: &str) -> Option<String> {
    delivered
        .record
        .headers
        .iter()
        .find(|header| header.key == key)
        .and_then(|header| header.value.as_ref())
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_through_exchanges_and_pushes_within_prefetch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    manager
        .declare_exchange("logs", ExchangeKind::Topic, Durability::Durable)
        .unwrap();
    manager
        .declare_queue("errors", QueueArgs::default(), Durability::Durable)
        .unwrap();
    manager
        .declare_queue("all", QueueArgs::default(), Durability::Transient)
        .unwrap();
    manager.bind("errors", "logs", "*.error", &[]).unwrap();
    manager.bind("all", "logs", "#", &[]).unwrap();
    // Declaring again with the same arguments is fine; different ones are an error.
    manager
        .declare_queue("errors", QueueArgs::default(), Durability::Durable)
        .unwrap();
    let other = QueueArgs {
        max_length: Some(5),
        ..QueueArgs::default()
    };
    assert!(matches!(
        manager.declare_queue("errors", other, Durability::Durable),
        Err(QueueError::DeclareMismatch(_))
    ));

    let routed = manager
        .publish("logs", message("db.error", "disk gone"))
        .await
        .unwrap();
    assert_eq!(
        routed,
        Published::Routed(vec!["all".to_string(), "errors".to_string()])
    );
    assert_eq!(
        manager
            .publish("logs", message("db.info", "fine"))
            .await
            .unwrap(),
        Published::Routed(vec!["all".to_string()])
    );
    assert_eq!(
        manager
            .publish("amq.direct", message("nobody", "x"))
            .await
            .unwrap(),
        Published::Unroutable
    );
    // The default exchange routes by queue name.
    assert_eq!(
        manager
            .publish("", message("errors", "direct"))
            .await
            .unwrap(),
        Published::Routed(vec!["errors".to_string()])
    );

    let (consumer, mut deliveries) = manager.subscribe("errors", 1).await.unwrap();
    let first = next(&mut deliveries).await;
    assert_eq!(body(&first), "disk gone");
    assert!(!first.redelivered);
    // Prefetch 1: nothing more until the first is acked.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err()
    );
    manager
        .ack("errors", consumer, first.tag, AckScope::Single)
        .await
        .unwrap();
    assert_eq!(body(&next(&mut deliveries).await), "direct");
    assert!(matches!(
        manager
            .ack("errors", consumer, first.tag, AckScope::Single)
            .await,
        Err(QueueError::UnknownDeliveryTag(_))
    ));
}

async fn take(manager: &QueueManager, queue: &str, count: usize) -> (ConsumerId, Vec<Delivered>) {
    let (consumer, mut deliveries) = manager.subscribe(queue, 0).await.expect("subscribe");
    let mut got = Vec::new();
    while got.len() < count {
        got.push(next(&mut deliveries).await);
    }
    (consumer, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_keeps_unacked_messages_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let manager = QueueManager::open(dir.path(), env()).expect("open");
        manager
            .declare_queue("jobs", QueueArgs::default(), Durability::Durable)
            .unwrap();
        for index in 0..100 {
            manager
                .publish("", message("jobs", &format!("job-{index}")))
                .await
                .unwrap();
        }
        let (consumer, got) = take(&manager, "jobs", 100).await;
        for delivered in got
            .iter()
            .filter(|delivered| body(delivered).ends_with(['0', '2', '4', '6', '8']))
        {
            manager
                .ack("jobs", consumer, delivered.tag, AckScope::Single)
                .await
                .unwrap();
        }
        manager.shutdown().await;
    }
    let manager = QueueManager::open(dir.path(), env()).expect("reopen");
    let (_, got) = take(&manager, "jobs", 50).await;
    let mut bodies: Vec<String> = got.iter().map(body).collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..100)
        .filter(|index| index % 2 == 1)
        .map(|index| format!("job-{index}"))
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);
    let stats = manager.list().await;
    assert_eq!(stats[0].unacked, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_requeue_redelivers_and_reject_dead_letters_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    declare_dead_letter_queue(&manager);
    let args = args_from_pairs([("dead-letter-exchange", "dlx")]).unwrap();
    manager
        .declare_queue("work", args, Durability::Durable)
        .unwrap();
    manager.publish("", message("work", "m1")).await.unwrap();
    let (consumer, mut deliveries) = manager.subscribe("work", 1).await.unwrap();
    let first = next(&mut deliveries).await;
    manager
        .nack("work", consumer, first.tag, AckScope::Single, Requeue::Yes)
        .await
        .unwrap();
    let again = next(&mut deliveries).await;
    assert_eq!(body(&again), "m1");
    assert!(again.redelivered);
    manager
        .nack("work", consumer, again.tag, AckScope::Single, Requeue::No)
        .await
        .unwrap();
    let (_, dead) = take(&manager, "dead", 1).await;
    assert_eq!(body(&dead[0]), "m1");
    assert_eq!(
        header(&dead[0], "x-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(header(&dead[0], "x-death-queue").as_deref(), Some("work"));
    assert_eq!(
        header(&dead[0], "x-death-routing-key").as_deref(),
        Some("work")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_overflow_and_delivery_limit_dead_letter_with_their_reasons() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    manager
        .declare_queue("dead", QueueArgs::default(), Durability::Transient)
        .unwrap();
    let dead_letter = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = vec![
            ("dead-letter-exchange", "amq.direct"),
            ("dead-letter-routing-key", "dead"),
        ];
        pairs.extend_from_slice(extra);
        args_from_pairs(pairs).unwrap()
    };
    manager.bind("dead", "amq.direct", "dead", &[]).unwrap();
    manager
        .declare_queue(
            "short",
            dead_letter(&[("message-ttl-ms", "100")]),
            Durability::Transient,
        )
        .unwrap();
    manager
        .declare_queue(
            "small",
            dead_letter(&[("max-length", "2")]),
            Durability::Transient,
        )
        .unwrap();
    manager
        .declare_queue(
            "poison",
            dead_letter(&[("delivery-limit", "1")]),
            Durability::Transient,
        )
        .unwrap();
    let strict = args_from_pairs([("max-length", "1"), ("overflow", "reject-publish")]).unwrap();
    manager
        .declare_queue("strict", strict, Durability::Transient)
        .unwrap();

    manager
        .publish("", message("short", "stale"))
        .await
        .unwrap();
    for index in 0..3 {
        manager
            .publish("", message("small", &format!("s{index}")))
            .await
            .unwrap();
    }
    manager.publish("", message("poison", "bad")).await.unwrap();
    manager
        .publish("", message("strict", "first"))
        .await
        .unwrap();
    assert!(matches!(
        manager.publish("", message("strict", "second")).await,
        Err(QueueError::QueueFull { .. })
    ));

    let (consumer, mut poison) = manager.subscribe("poison", 1).await.unwrap();
    for _ in 0..2 {
        let delivered = next(&mut poison).await;
        manager
            .nack(
                "poison",
                consumer,
                delivered.tag,
                AckScope::Single,
                Requeue::Yes,
            )
            .await
            .unwrap();
    }
    // "short" has no consumer: its message expires at the head after 100 ms.
    let (_, dead) = take(&manager, "dead", 3).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|delivered| {
            (
                body(delivered),
                header(delivered, "x-death-reason").unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("bad".to_string(), "delivery_limit".to_string()),
            ("s0".to_string(), "maxlen".to_string()),
            ("stale".to_string(), "expired".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_on_time_also_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let published = Instant::now();
    {
        let manager = QueueManager::open(dir.path(), env()).expect("open");
        manager
            .declare_queue("later", QueueArgs::default(), Durability::Durable)
            .unwrap();
        manager
            .publish(
                "",
                with_header(message("later", "after-restart"), "x-delay", "1500"),
            )
            .await
            .unwrap();
        manager.shutdown().await;
    }
    let manager = QueueManager::open(dir.path(), env()).expect("reopen");
    manager
        .publish("", with_header(message("later", "soon"), "x-delay", "400"))
        .await
        .unwrap();
    let sent = Instant::now();
    let (_, mut deliveries) = manager.subscribe("later", 0).await.unwrap();
    let first = next(&mut deliveries).await;
    let first_at = sent.elapsed();
    assert_eq!(body(&first), "soon");
    assert!(
        first_at >= Duration::from_millis(390),
        "delivered early: {first_at:?}"
    );
    assert!(
        first_at < Duration::from_millis(400 + 60),
        "delivered late: {first_at:?}"
    );
    let second = next(&mut deliveries).await;
    assert_eq!(body(&second), "after-restart");
    assert!(
        published.elapsed() >= Duration::from_millis(1490),
        "delivered early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_are_listed_and_deleted_with_their_bindings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    manager
        .declare_exchange("news", ExchangeKind::Fanout, Durability::Durable)
        .unwrap();
    manager
        .declare_queue("reader", QueueArgs::default(), Durability::Durable)
        .unwrap();
    manager.bind("reader", "news", "", &[]).unwrap();
    let listed = manager.list_exchanges();
    let news = listed
        .iter()
        .find(|(name, ..)| name == "news")
        .expect("listed");
    assert_eq!(
        (news.1, news.2, news.3),
        (ExchangeKind::Fanout, Durability::Durable, 1)
    );
    assert!(listed.iter().any(|(name, ..)| name == "amq.topic"));
    assert!(matches!(
        manager.delete_exchange("amq.direct"),
        Err(QueueError::Invalid(_))
    ));
    manager.delete_exchange("news").unwrap();
    assert!(matches!(
        manager.delete_exchange("news"),
        Err(QueueError::UnknownExchange(_))
    ));
    assert!(matches!(
        manager.publish("news", message("", "x")).await,
        Err(QueueError::UnknownExchange(_))
    ));
    manager.shutdown().await;
    drop(manager);
    let reopened = QueueManager::open(dir.path(), env()).expect("reopen");
    assert!(
        !reopened
            .list_exchanges()
            .iter()
            .any(|(name, ..)| name == "news"),
        "deletion is durable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_are_delivered_within_ten_ms_of_due() {
    // Goal: measure how late delayed messages arrive after their due time. Method: publish
    // 40 messages with delays from 100 to 490 ms, subscribe, record arrival minus due time.
    // The median must be under 10 ms; the worst case is bounded loosely (shared CI machines
    // pause processes), and the distribution is printed for docs/BENCHMARKS.md.
    let (_dir, manager) = manager_with_queue("timed", QueueArgs::default(), Durability::Transient);
    let (_, mut deliveries) = manager.subscribe("timed", 0).await.unwrap();
    let start = Instant::now();
    // When each publish began: its due time is at least this plus its delay, so lateness
    // is measured from there (not from `start`, which would count the publishing of every
    // earlier message as lateness).
    let mut published_at_ms = std::collections::HashMap::new();
    for index in 0..40u64 {
        let delay = 100 + index * 10;
        published_at_ms.insert(delay, start.elapsed().as_millis() as i64);
        manager
            .publish(
                "",
                with_header(
                    message("timed", &delay.to_string()),
                    "x-delay",
                    &delay.to_string(),
                ),
            )
            .await
            .unwrap();
    }
    let mut lateness_ms = Vec::new();
    for _ in 0..40 {
        let delivered = next(&mut deliveries).await;
        let delay: u64 = body(&delivered).parse().expect("delay");
        let arrived = start.elapsed().as_millis() as i64;
        lateness_ms.push(arrived - published_at_ms[&delay] - delay as i64);
    }
    lateness_ms.sort_unstable();
    let median = lateness_ms[lateness_ms.len() / 2];
    let worst = *lateness_ms.last().expect("measured");
    eprintln!("delayed delivery lateness (ms, upper bound): median {median}, worst {worst}, all {lateness_ms:?}");
    assert!(median < 10, "median lateness {median} ms");
    assert!(worst < 100, "worst lateness {worst} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_cancels_the_consumer_with_the_reason_and_requeues_its_delivery() {
    let args = args_from_pairs([("ack-timeout-ms", "200")]).unwrap();
    let (_dir, manager) = manager_with_queue("slow", args, Durability::Durable);
    manager.publish("", message("slow", "m1")).await.unwrap();
    let (stuck_id, mut stuck) = manager.subscribe("slow", 1).await.unwrap();
    let held = next(&mut stuck).await;
    assert_eq!(body(&held), "m1");
    // No ack: once the timeout passes the consumer is told why, and nothing follows.
    assert!(matches!(
        next_event(&mut stuck).await,
        ConsumerEvent::Cancelled(CancelReason::AckTimeout)
    ));
    assert!(
        stuck.recv().await.is_none(),
        "the channel ends after the cancel"
    );
    // Its delivery went back to the queue: a late ack is refused, the next consumer gets it.
    let late = manager
        .ack("slow", stuck_id, held.tag, AckScope::Single)
        .await;
    assert!(
        matches!(late, Err(QueueError::UnknownDeliveryTag(_))),
        "{late:?}"
    );
    let (_, mut next_consumer) = manager.subscribe("slow", 1).await.unwrap();
    let again = next(&mut next_consumer).await;
    assert_eq!(body(&again), "m1");
    assert!(again.redelivered);
    let stats = manager.list().await;
    assert_eq!(stats[0].consumers, 1, "the cancelled consumer is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_cancelling_the_last_consumer_deletes_an_auto_delete_queue() {
    let args = args_from_pairs([("ack-timeout-ms", "100"), ("auto-delete", "true")]).unwrap();
    let (_dir, manager) = manager_with_queue("temp", args, Durability::Transient);
    manager.publish("", message("temp", "m1")).await.unwrap();
    let (_, mut stuck) = manager.subscribe("temp", 1).await.unwrap();
    next(&mut stuck).await;
    assert!(matches!(
        next_event(&mut stuck).await,
        ConsumerEvent::Cancelled(CancelReason::AckTimeout)
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while manager
        .list()
        .await
        .iter()
        .any(|queue| queue.name == "temp")
    {
        assert!(Instant::now() < deadline, "auto-delete queue still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers_with_the_reason() {
    let (_dir, manager) = manager_with_queue("doomed", QueueArgs::default(), Durability::Durable);
    let (_, mut consumer) = manager.subscribe("doomed", 10).await.unwrap();
    manager.delete_queue("doomed").await.unwrap();
    assert!(matches!(
        next_event(&mut consumer).await,
        ConsumerEvent::Cancelled(CancelReason::QueueDeleted)
    ));
    assert!(consumer.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_counts_deliveries_before_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let declare = |manager: &QueueManager| {
        declare_dead_letter_queue(manager);
        let args =
            args_from_pairs([("dead-letter-exchange", "dlx"), ("delivery-limit", "1")]).unwrap();
        manager
            .declare_queue("poison", args, Durability::Durable)
            .unwrap();
    };
    {
        let manager = QueueManager::open(dir.path(), env()).expect("open");
        declare(&manager);
        manager.publish("", message("poison", "p1")).await.unwrap();
        let (consumer, mut deliveries) = manager.subscribe("poison", 1).await.unwrap();
        let first = next(&mut deliveries).await;
        assert!(!first.redelivered);
        // The first delivery fails: back to the queue (1 delivery, within the limit of 1).
        manager
            .nack(
                "poison",
                consumer,
                first.tag,
                AckScope::Single,
                Requeue::Yes,
            )
            .await
            .unwrap();
        manager.shutdown().await;
    }
    let manager = QueueManager::open(dir.path(), env()).expect("reopen");
    declare(&manager);
    let (consumer, mut deliveries) = manager.subscribe("poison", 1).await.unwrap();
    let second = next(&mut deliveries).await;
    assert_eq!(body(&second), "p1");
    assert!(second.redelivered, "the count survived the restart");
    // The second delivery fails too: past the limit, it is dead-lettered, not redelivered.
    manager
        .nack(
            "poison",
            consumer,
            second.tag,
            AckScope::Single,
            Requeue::Yes,
        )
        .await
        .unwrap();
    let (_, dead) = take(&manager, "dead", 1).await;
    assert_eq!(body(&dead[0]), "p1");
    assert_eq!(
        header(&dead[0], "x-death-reason").as_deref(),
        Some("delivery_limit")
    );
    let stats = manager.list().await;
    let poison = stats.iter().find(|queue| queue.name == "poison").unwrap();
    assert_eq!((poison.ready, poison.unacked), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_reach_the_dead_letter_queue_in_queue_order() {
    // Goal: messages that expire together are dead-lettered in the order they were queued
    // (issue #13: 1..12 arrived as `12 1 2 ... 11`). Method: publish 1..=12 into a queue
    // with a short TTL and a dead-letter exchange, several rounds, and read the dead-letter
    // queue back in order. Before the fix each copy was republished by a task of its own,
    // so the order was up to the scheduler.
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    declare_dead_letter_queue(&manager);
    let args =
        args_from_pairs([("message-ttl-ms", "30"), ("dead-letter-exchange", "dlx")]).expect("args");
    manager
        .declare_queue("expiring", args, Durability::Durable)
        .expect("declare");
    let (_, mut dead) = manager.subscribe("dead", 0).await.expect("subscribe dead");
    for round in 0..5 {
        for number in 1..=12 {
            manager
                .publish("", message("expiring", &format!("{round}-{number}")))
                .await
                .expect("publish");
        }
        let mut arrived = Vec::new();
        for _ in 1..=12 {
            arrived.push(body(&next(&mut dead).await));
        }
        let expected: Vec<String> = (1..=12).map(|number| format!("{round}-{number}")).collect();
        assert_eq!(
            arrived, expected,
            "round {round}: dead letters out of queue order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings_route_once_through_cycles_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let routed = |published: Published| match published {
        Published::Routed(mut queues) => {
            queues.sort();
            queues
        }
        Published::Unroutable => Vec::new(),
    };
    {
        let manager = QueueManager::open(dir.path(), env()).expect("open");
        for (name, kind) in [
            ("src", ExchangeKind::Topic),
            ("mid", ExchangeKind::Fanout),
            ("leaf", ExchangeKind::Direct),
        ] {
            manager
                .declare_exchange(name, kind, Durability::Durable)
                .unwrap();
        }
        for queue in ["near", "far"] {
            manager
                .declare_queue(queue, QueueArgs::default(), Durability::Durable)
                .unwrap();
        }
        // src -a.#-> mid -> near; mid -> leaf -a.b-> far; and the cycle leaf -a.b-> src.
        manager.bind_exchange("mid", "src", "a.#", &[]).unwrap();
        manager.bind("near", "mid", "", &[]).unwrap();
        manager.bind_exchange("leaf", "mid", "", &[]).unwrap();
        manager.bind("far", "leaf", "a.b", &[]).unwrap();
        manager.bind_exchange("src", "leaf", "a.b", &[]).unwrap();
        let published = manager.publish("src", message("a.b", "1")).await.unwrap();
        assert_eq!(routed(published), ["far", "near"]);
        let published = manager.publish("src", message("a.c", "2")).await.unwrap();
        assert_eq!(routed(published), ["near"]);
        let published = manager.publish("src", message("b", "3")).await.unwrap();
        assert!(routed(published).is_empty());
        assert!(matches!(
            manager.bind_exchange("mid", "", "x", &[]),
            Err(QueueError::Invalid(_))
        ));
        assert!(matches!(
            manager.bind_exchange("nowhere", "src", "x", &[]),
            Err(QueueError::UnknownExchange(_))
        ));
        // A queue named as an exchange is another object: deleting it keeps the binding.
        manager
            .declare_queue("mid", QueueArgs::default(), Durability::Durable)
            .unwrap();
        manager.delete_queue("mid").await.unwrap();
        manager.shutdown().await;
    }
    let manager = QueueManager::open(dir.path(), env()).expect("reopen");
    let published = manager.publish("src", message("a.b", "4")).await.unwrap();
    assert_eq!(routed(published), ["far", "near"]);
    assert!(manager.unbind_exchange("mid", "src", "a.#", &[]).unwrap());
    let published = manager.publish("src", message("a.c", "5")).await.unwrap();
    assert!(routed(published).is_empty());
    // Deleting an exchange drops the bindings to and from it.
    manager.delete_exchange("leaf").unwrap();
    manager.bind_exchange("mid", "src", "a.#", &[]).unwrap();
    let published = manager.publish("src", message("a.b", "6")).await.unwrap();
    assert_eq!(routed(published), ["near"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_dead_letters_the_refused_message_once_without_a_cycle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    // Two full queues that dead-letter into each other.
    for (queue, other) in [("full-a", "full-b"), ("full-b", "full-a")] {
        let exchange = format!("to-{other}");
        manager
            .declare_exchange(&exchange, ExchangeKind::Fanout, Durability::Durable)
            .unwrap();
        let args = args_from_pairs([
            ("max-length", "1"),
            ("overflow", "reject-publish-dlx"),
            ("dead-letter-exchange", exchange.as_str()),
        ])
        .unwrap();
        manager
            .declare_queue(queue, args, Durability::Durable)
            .unwrap();
    }
    manager.bind("full-b", "to-full-b", "", &[]).unwrap();
    manager.bind("full-a", "to-full-a", "", &[]).unwrap();
    manager.publish("", message("full-a", "a1")).await.unwrap();
    manager.publish("", message("full-b", "b1")).await.unwrap();
    // Refused by the full queue, its copy is refused by the other full queue and dropped
    // there instead of going round for ever.
    assert!(matches!(
        manager.publish("", message("full-a", "a2")).await,
        Err(QueueError::QueueFull { .. })
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts: Vec<(String, u64)> = manager
        .list()
        .await
        .into_iter()
        .map(|stats| (stats.name, stats.ready))
        .collect();
    assert_eq!(
        counts,
        [("full-a".to_string(), 1), ("full-b".to_string(), 1)]
    );
    // With room in the other queue, the refused message lands there, dead-lettered.
    let (consumer, got) = take(&manager, "full-b", 1).await;
    manager
        .ack("full-b", consumer, got[0].tag, AckScope::Single)
        .await
        .unwrap();
    assert!(manager.publish("", message("full-a", "a3")).await.is_err());
    let (_, got) = take(&manager, "full-b", 1).await;
    assert_eq!(body(&got[0]), "a3");
}

/// A queue task appends the next publishes while earlier ones wait for their fsync, but a
/// message becomes deliverable, and its publish confirmed, only once it is durable: with a
/// flusher that never fsyncs, nothing is confirmed or delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_waiting_for_their_fsync_are_neither_confirmed_nor_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let never_synced = StorageEnv {
        flusher: Flusher::idle(),
        ..env()
    };
    let manager = QueueManager::open(dir.path(), never_synced).expect("open");
    manager
        .declare_queue("q", QueueArgs::default(), Durability::Durable)
        .expect("declare");
    let (_consumer, mut deliveries) = manager.subscribe("q", 0).await.expect("subscribe");
    let publishes: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|text| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.publish("", message("q", text)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for publish in &publishes {
        assert!(!publish.is_finished(), "confirmed before its fsync");
    }
    assert!(deliveries.try_recv().is_err(), "delivered before its fsync");
}

fn exclusive() -> ConsumerOptions {
    ConsumerOptions {
        prefetch: 1,
        exclusive: true,
        ..ConsumerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exclusive_subscribes_let_exactly_one_in() {
    // Goal: the exclusive-consumer rule is decided atomically in the queue's task (a front
    // end reading the consumer count and then subscribing would let several in). Method:
    // race eight exclusive subscribes (and then a plain one) on two worker threads, for
    // many rounds.
    for round in 0..20 {
        let name = format!("solo-{round}");
        let (_dir, manager) =
            manager_with_queue(&name, QueueArgs::default(), Durability::Transient);
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (manager, name) = (Arc::clone(&manager), name.clone());
            racers.spawn(async move { manager.subscribe_for(&name, exclusive(), None).await });
        }
        let mut admitted = 0;
        let mut kept = Vec::new();
        while let Some(outcome) = racers.join_next().await {
            match outcome.expect("no panic") {
                Ok(consumer) => {
                    admitted += 1;
                    kept.push(consumer);
                }
                Err(QueueError::Precondition {
                    failed: Precondition::ExclusiveUse,
                    ..
                }) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(admitted, 1, "round {round}");
        // While it lasts, a plain consumer is refused too (RabbitMQ's "in exclusive use").
        assert!(matches!(
            manager.subscribe(&name, 1).await,
            Err(QueueError::Precondition {
                failed: Precondition::ExclusiveUse,
                ..
            })
        ));
        let (holder, _) = kept.pop().expect("one admitted");
        manager
            .cancel(&name, holder, CancelReason::ClientCancelled)
            .await;
        manager.subscribe(&name, 1).await.expect("free again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_if_unused_and_a_subscribe_never_both_succeed() {
    // Goal: queue.delete if-unused decides in the queue's task, so a consumer cannot
    // subscribe between the check and the delete. Method: race the two, many rounds; a
    // delete that succeeded means the subscribe was refused, and the other way round.
    for round in 0..40 {
        let name = format!("maybe-{round}");
        let (_dir, manager) =
            manager_with_queue(&name, QueueArgs::default(), Durability::Transient);
        let unused = DeleteConditions {
            if_unused: true,
            if_empty: false,
        };
        let deleter = {
            let (manager, name) = (Arc::clone(&manager), name.clone());
            tokio::spawn(async move { manager.delete_queue_if(&name, unused).await })
        };
        let subscriber = {
            let (manager, name) = (Arc::clone(&manager), name.clone());
            tokio::spawn(async move { manager.subscribe(&name, 1).await })
        };
        let deleted = deleter.await.expect("no panic");
        let subscribed = subscriber.await.expect("no panic");
        match (&deleted, &subscribed) {
            (Ok(_), Err(QueueError::UnknownQueue(_) | QueueError::Gone(_))) => {}
            (
                Err(QueueError::Precondition {
                    failed: Precondition::InUse,
                    ..
                }),
                Ok(_),
            ) => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_counts_ready_and_unacknowledged_messages() {
    let (_dir, manager) = manager_with_queue("full", QueueArgs::default(), Durability::Durable);
    let empty = DeleteConditions {
        if_unused: false,
        if_empty: true,
    };
    manager.publish("", message("full", "m")).await.unwrap();
    let (consumer, mut deliveries) = manager.subscribe("full", 1).await.unwrap();
    let delivered = next(&mut deliveries).await;
    // Unacknowledged: still not empty.
    assert!(matches!(
        manager.delete_queue_if("full", empty).await,
        Err(QueueError::Precondition {
            failed: Precondition::NotEmpty,
            ..
        })
    ));
    manager
        .ack("full", consumer, delivered.tag, AckScope::Single)
        .await
        .unwrap();
    assert_eq!(manager.delete_queue_if("full", empty).await.unwrap(), 0);
    assert!(matches!(
        manager
            .delete_queue_if("full", DeleteConditions::default())
            .await,
        Err(QueueError::UnknownQueue(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_carry_each_consumers_share_of_a_stored_batch_as_its_record_bytes() {
    // Goal: issue #15's runs. 100 messages stored as one batch and dealt round-robin to two
    // consumers reach each as runs (far fewer than its 50 deliveries) whose records are
    // every other record of the batch, copied together; decoded, each consumer sees its
    // messages in order with their tags and ids, and together they see every message once.
    let (_dir, manager) = manager_with_queue("dealt", QueueArgs::default(), Durability::Durable);
    let (_, mut first) = manager.subscribe("dealt", 1000).await.expect("subscribe");
    let (_, mut second) = manager.subscribe("dealt", 1000).await.expect("subscribe");
    let messages = (0..100)
        .map(|index| (String::new(), message("dealt", &format!("m{index}"))))
        .collect();
    publish_confirmed(&manager, messages).await;
    let mut seen = Vec::new();
    for deliveries in [&mut first, &mut second] {
        let mut runs = 0;
        let mut taken = Vec::new();
        while taken.len() < 50 {
            let push = tokio::time::timeout(Duration::from_secs(10), deliveries.recv_push())
                .await
                .expect("a run in time")
                .expect("alive");
            let ConsumerPush::Run(run) = push else {
                panic!("cancelled")
            };
            runs += 1;
            for delivered in run.deliveries() {
                let delivered = delivered.expect("records decode");
                taken.push((delivered.tag.0, delivered.record.offset, body(&delivered)));
            }
        }
        assert!(runs < 10, "50 deliveries came in {runs} runs");
        assert!(taken
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1));
        assert!(
            taken.windows(2).all(|pair| pair[1].1 - pair[0].1 == 2),
            "round robin deals every other message: {taken:?}"
        );
        seen.extend(taken.into_iter().map(|(_, id, body)| (id, body)));
    }
    seen.sort();
    let bodies: Vec<String> = seen.into_iter().map(|(_, body)| body).collect();
    let mut wanted: Vec<String> = (0..100).map(|index| format!("m{index}")).collect();
    wanted.sort();
    let mut got = bodies;
    got.sort();
    assert_eq!(got, wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_batch_larger_than_a_run_leaves_in_several_runs_of_at_most_a_mebibyte() {
    // Goal: a DeliverBatch frame never grows with the stored batch. 300 messages of 10 KB
    // published together are stored as one batch of about 3 MB; the consumer gets them as
    // several runs of at most 1 MiB of records each, in order, none lost.
    let (_dir, manager) = manager_with_queue("big", QueueArgs::default(), Durability::Durable);
    let (_, mut deliveries) = manager.subscribe("big", 1000).await.expect("subscribe");
    let body = "x".repeat(10_000);
    let messages = (0..300)
        .map(|index| (String::new(), message("big", &format!("{index:03}{body}"))))
        .collect();
    publish_confirmed(&manager, messages).await;
    let mut runs = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < 300 {
        let push = tokio::time::timeout(Duration::from_secs(10), deliveries.recv_push())
            .await
            .expect("a run in time")
            .expect("alive");
        let ConsumerPush::Run(run) = push else {
            panic!("cancelled")
        };
        runs.push(run.records.len());
        for delivered in run.deliveries() {
            seen.push(body_prefix(&delivered.expect("records decode")));
        }
    }
    assert!(runs.len() >= 3, "3 MB in runs of {runs:?} bytes");
    assert!(runs.iter().all(|bytes| *bytes <= 1024 * 1024), "{runs:?}");
    let wanted: Vec<String> = (0..300).map(|index| format!("{index:03}")).collect();
    assert_eq!(seen, wanted);
}

fn body_prefix(delivered: &Delivered) -> String {
    body(delivered)[..3].to_string()
}

/// Publishes `messages` together (stored as one batch per queue) and waits for every confirm.
async fn publish_confirmed(manager: &QueueManager, messages: Vec<(String, Message)>) {
    let outcomes = manager
        .publish_enqueue_many(messages)
        .await
        .confirmed()
        .await;
    for outcome in outcomes {
        outcome.expect("confirmed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_routes_each_message_as_it_would_be_routed_alone() {
    // Goal: a batch of publishes shares routing between messages that route alike, and
    // only between those. Method: one batch mixing the default exchange, a direct and a
    // headers exchange, runs of equal messages, neighbours that differ only in routing key
    // or in a header, and an unknown exchange; every queue must get exactly its messages in
    // order, and the unknown exchange's message alone an error.
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    for queue in ["a", "b", "c"] {
        manager
            .declare_queue(queue, QueueArgs::default(), Durability::Durable)
            .expect("declare");
    }
    manager
        .declare_exchange("direct", ExchangeKind::Direct, Durability::Durable)
        .expect("direct");
    manager
        .declare_exchange("match", ExchangeKind::Headers, Durability::Durable)
        .expect("headers");
    manager.bind("b", "direct", "k", &[]).expect("bind b");
    manager.bind("c", "direct", "k", &[]).expect("bind c");
    manager
        .bind("c", "match", "", &[("color", "red")])
        .expect("bind c to match");
    let batch = vec![
        (String::new(), message("a", "1")),
        (String::new(), message("a", "2")),
        (String::new(), message("b", "3")),
        ("direct".to_string(), message("k", "4")),
        ("direct".to_string(), message("k", "5")),
        ("direct".to_string(), message("other", "6")),
        (
            "match".to_string(),
            with_header(message("", "7"), "color", "red"),
        ),
        (
            "match".to_string(),
            with_header(message("", "8"), "color", "blue"),
        ),
        (
            "match".to_string(),
            with_header(message("", "9"), "color", "red"),
        ),
        ("nowhere".to_string(), message("a", "10")),
        (String::new(), message("a", "11")),
    ];
    let ticket = manager.publish_enqueue_many(batch).await;
    for index in 0..11 {
        match (index, ticket.refusal(index)) {
            (9, Some(QueueError::UnknownExchange(name))) => assert_eq!(name, "nowhere"),
            (9, other) => panic!("the unknown exchange's message: {other:?}"),
            (_, None) => {}
            (index, Some(error)) => panic!("message {index}: {error}"),
        }
    }
    let outcomes = ticket.confirmed().await;
    assert_eq!(outcomes.len(), 11);
    // Each message's queues, as one publish of it would name them.
    let routed = |names: &[&str]| Published::Routed(names.iter().map(|n| n.to_string()).collect());
    let wanted = [
        routed(&["a"]),
        routed(&["a"]),
        routed(&["b"]),
        routed(&["b", "c"]),
        routed(&["b", "c"]),
        Published::Unroutable,
        routed(&["c"]),
        Published::Unroutable,
        routed(&["c"]),
    ];
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match (index, outcome) {
            (9, Err(QueueError::UnknownExchange(name))) => assert_eq!(name, "nowhere"),
            (10, Ok(published)) => assert_eq!(published, routed(&["a"])),
            (index, Ok(published)) => assert_eq!(published, wanted[index], "message {index}"),
            (index, Err(error)) => panic!("message {index}: {error}"),
        }
    }
    for (queue, wanted) in [
        ("a", vec!["1", "2", "11"]),
        ("b", vec!["3", "4", "5"]),
        ("c", vec!["4", "5", "7", "9"]),
    ] {
        let (_, got) = take(&manager, queue, wanted.len()).await;
        let bodies: Vec<String> = got.iter().map(body).collect();
        assert_eq!(bodies, wanted, "queue {queue}");
        let stats = manager
            .list()
            .await
            .into_iter()
            .find(|stats| stats.name == queue)
            .expect("listed");
        assert_eq!(
            (stats.published, stats.ready),
            (wanted.len() as u64, 0),
            "queue {queue} got nothing more: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_to_a_queue_that_refuses_past_its_length_answers_each_message() {
    // Goal: a batch shares one reply per queue, yet a queue with `reject-publish` still
    // decides each message on its own. Method: max-length 2, a batch of four to it (and
    // one to a plain queue between them); the first two are stored, the last two refused
    // as full, the plain queue's message stored.
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    let strict = args_from_pairs([("max-length", "2"), ("overflow", "reject-publish")]).unwrap();
    manager
        .declare_queue("strict", strict, Durability::Durable)
        .expect("declare strict");
    manager
        .declare_queue("plain", QueueArgs::default(), Durability::Durable)
        .expect("declare plain");
    let batch = vec![
        (String::new(), message("strict", "1")),
        (String::new(), message("strict", "2")),
        (String::new(), message("plain", "p")),
        (String::new(), message("strict", "3")),
        (String::new(), message("strict", "4")),
    ];
    let outcomes = manager.publish_enqueue_many(batch).await.confirmed().await;
    let summary: Vec<String> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(Published::Routed(names)) => names.join(","),
            Ok(Published::Unroutable) => "unroutable".to_string(),
            Err(QueueError::QueueFull { queue, .. }) => format!("full:{queue}"),
            Err(error) => format!("error:{error}"),
        })
        .collect();
    assert_eq!(
        summary,
        ["strict", "strict", "plain", "full:strict", "full:strict"]
    );
    let (_, got) = take(&manager, "strict", 2).await;
    let bodies: Vec<String> = got.iter().map(body).collect();
    assert_eq!(bodies, ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_run_is_stored_in_several_and_confirmed_in_order() {
    // Goal: a batch holding more bytes than one stored run may is cut into runs (one reply
    // each), and every message's outcome still lines up with it. Method: twelve 1 MiB
    // messages (more than one 8 MiB run) with a small one to another queue between each;
    // every outcome names its queue, and both queues hold their messages in order.
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    for queue in ["big", "small"] {
        manager
            .declare_queue(queue, QueueArgs::default(), Durability::Durable)
            .expect("declare");
    }
    let mut batch = Vec::new();
    for index in 0..12 {
        let mut big = message("big", &format!("{index:02}"));
        let mut body = big.body.to_vec();
        body.resize(1024 * 1024, b'.');
        big.body = bytes::Bytes::from(body);
        batch.push((String::new(), big));
        batch.push((String::new(), message("small", &format!("{index:02}"))));
    }
    let outcomes = manager.publish_enqueue_many(batch).await.confirmed().await;
    assert_eq!(outcomes.len(), 24);
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let queue = if index % 2 == 0 { "big" } else { "small" };
        assert_eq!(
            outcome.expect("confirmed"),
            Published::Routed(vec![queue.to_string()]),
            "message {index}"
        );
    }
    let (_, small) = take(&manager, "small", 12).await;
    let bodies: Vec<String> = small.iter().map(body).collect();
    let wanted: Vec<String> = (0..12).map(|index| format!("{index:02}")).collect();
    assert_eq!(bodies, wanted);
    let (_, big) = take(&manager, "big", 12).await;
    let prefixes: Vec<String> = big.iter().map(body_prefix).collect();
    let wanted: Vec<String> = (0..12).map(|index| format!("{index:02}.")).collect();
    assert_eq!(prefixes, wanted);
}
