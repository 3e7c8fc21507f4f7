//! The queue manager's admin entry points in-process (real files in a temp dir, issue #13):
//! a move that a full destination stops part-way, a move racing a consumer of its source,
//! and exclusive queues refused to other connections' gets and moves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wharf_broker::queue::{
    args_from_pairs, AckScope, ConsumerEvent, Durability, GetMode, Message, QueueArgs, QueueError,
    QueueManager,
};
use wharf_broker::storage::{Flusher, RealFs, StorageEnv, SystemClock};

fn env() -> StorageEnv {
    StorageEnv {
        fs: Arc::new(RealFs),
        clock: Arc::new(SystemClock),
        flusher: Flusher::spawn(1),
    }
}

fn manager() -> (tempfile::TempDir, Arc<QueueManager>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = QueueManager::open(dir.path(), env()).expect("open");
    (dir, manager)
}

async fn publish_bodies(manager: &QueueManager, queue: &str, bodies: impl Iterator<Item = String>) {
    for body in bodies {
        let message = Message {
            routing_key: queue.to_string(),
            body: Bytes::from(body),
            headers: Vec::new(),
        };
        manager.publish("", message).await.expect("publish");
    }
}

/// Takes every ready message of `queue` out with gets (ack mode): their bodies in order.
async fn take_all(manager: &QueueManager, queue: &str) -> Vec<String> {
    manager
        .get(queue, 10_000, GetMode::Ack, None)
        .await
        .expect("get")
        .into_iter()
        .map(|got| String::from_utf8(got.record.value.expect("body").to_vec()).expect("utf-8"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_stops_at_a_full_destination_and_keeps_the_rest_in_order() {
    let (_dir, manager) = manager();
    manager
        .declare_queue("src", QueueArgs::default(), Durability::Durable)
        .expect("declare src");
    let full =
        args_from_pairs([("max-length", "2"), ("overflow", "reject-publish")]).expect("args");
    manager
        .declare_queue("dst", full, Durability::Durable)
        .expect("declare dst");
    publish_bodies(&manager, "src", (1..=5).map(|index| format!("m{index}"))).await;

    let moved = manager.move_messages("src", "dst", None).await;
    assert_eq!(moved.moved, 2, "{moved:?}");
    assert!(
        matches!(moved.stopped, Some(QueueError::QueueFull { .. })),
        "{moved:?}"
    );
    // The refused messages went back to their places in the source, not redelivered.
    let rest = manager
        .get("src", 10, GetMode::Requeue, None)
        .await
        .expect("get");
    let bodies: Vec<&[u8]> = rest
        .iter()
        .map(|got| got.record.value.as_deref().expect("body"))
        .collect();
    assert_eq!(bodies, [&b"m3"[..], b"m4", b"m5"]);
    assert!(rest.iter().all(|got| !got.redelivered));
    assert_eq!(take_all(&manager, "dst").await, ["m1", "m2"]);

    let same = manager.move_messages("src", "src", None).await;
    assert!(
        matches!(same.stopped, Some(QueueError::Invalid(_))),
        "{same:?}"
    );
    let unknown = manager.move_messages("src", "nosuch", None).await;
    assert_eq!(
        unknown.stopped,
        Some(QueueError::UnknownQueue("nosuch".into()))
    );
    assert_eq!(take_all(&manager, "src").await, ["m3", "m4", "m5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_racing_a_consumer_hands_each_message_to_exactly_one() {
    // Goal: messages a move holds are never delivered to a consumer of the source, and none
    // is lost between the two. Method: a consumer acks everything it gets from the source
    // while a move empties the source; then each message must be in exactly one of (acked by
    // the consumer, in the destination).
    const MESSAGES: usize = 3000;
    let (_dir, manager) = manager();
    for queue in ["src", "dst"] {
        manager
            .declare_queue(queue, QueueArgs::default(), Durability::Durable)
            .expect("declare");
    }
    publish_bodies(
        &manager,
        "src",
        (0..MESSAGES).map(|index| format!("{index:05}")),
    )
    .await;
    let (consumer, mut deliveries) = manager.subscribe("src", 10).await.expect("subscribe");
    let reader = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let event = tokio::time::timeout(Duration::from_millis(500), deliveries.recv());
                let Ok(Some(ConsumerEvent::Delivery(delivered))) = event.await else {
                    return seen;
                };
                manager
                    .ack("src", consumer, delivered.tag, AckScope::Single)
                    .await
                    .expect("ack");
                let body = delivered.record.value.expect("body");
                seen.push(String::from_utf8(body.to_vec()).expect("utf-8"));
            }
        })
    };
    let moved = manager.move_messages("src", "dst", None).await;
    assert_eq!(moved.stopped, None);
    let consumed = reader.await.expect("reader");
    let in_destination = take_all(&manager, "dst").await;
    eprintln!(
        "consumed {}, moved {}",
        consumed.len(),
        in_destination.len()
    );
    assert_eq!(in_destination.len() as u64, moved.moved);
    assert!(
        in_destination.windows(2).all(|pair| pair[0] < pair[1]),
        "in order"
    );
    let consumed_set: BTreeSet<&String> = consumed.iter().collect();
    assert_eq!(
        consumed_set.len(),
        consumed.len(),
        "no message delivered twice"
    );
    assert!(
        in_destination
            .iter()
            .all(|body| !consumed_set.contains(body)),
        "no message both delivered and moved"
    );
    assert_eq!(consumed.len() + in_destination.len(), MESSAGES, "none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_and_moves_refuse_another_connections_exclusive_queue() {
    let (_dir, manager) = manager();
    let exclusive = QueueArgs {
        exclusive: true,
        ..QueueArgs::default()
    };
    manager
        .declare_queue_for("mine", exclusive, Durability::Transient, Some(1))
        .expect("declare exclusive");
    manager
        .declare_queue("open", QueueArgs::default(), Durability::Transient)
        .expect("declare open");
    publish_bodies(&manager, "mine", ["x".to_string()].into_iter()).await;

    let refused = manager.get("mine", 1, GetMode::Requeue, Some(2)).await;
    assert!(
        matches!(refused, Err(QueueError::DeclareMismatch(_))),
        "{refused:?}"
    );
    let moved = manager.move_messages("mine", "open", Some(2)).await;
    assert!(
        matches!(moved.stopped, Some(QueueError::DeclareMismatch(_))),
        "{moved:?}"
    );
    assert_eq!(moved.moved, 0);
    let zero = manager.get("mine", 0, GetMode::Requeue, Some(1)).await;
    assert!(matches!(zero, Err(QueueError::Invalid(_))), "{zero:?}");
    let own = manager
        .get("mine", 1, GetMode::Requeue, Some(1))
        .await
        .expect("the owner may get");
    assert_eq!(own.len(), 1);
    let moved = manager.move_messages("mine", "open", Some(1)).await;
    assert_eq!((moved.moved, moved.stopped), (1, None));
}
