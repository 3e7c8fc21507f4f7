//! A queue led by another node (issue #20), in-process: two queue managers, "node 1" and
//! "node 2", each with its own copy of a queue the cluster places on node 2. Node 1's
//! manager is joined to a fake cluster whose wire calls node 2's `serve_remote` directly
//! (as JSON, the way the internal listener carries it). Everything done through node 1 must
//! happen in node 2's queue: publishes (default exchange and a fanout), subscriptions with
//! their deliveries and acks, nacks, gets and the counts; node 1's own copy stays empty. A
//! leader that cannot be reached fails the publish's confirm and cancels the consumer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wharf_broker::queue::exchange::ExchangeKind;
use wharf_broker::queue::remote::{CallFuture, QueueCluster, RuleFuture};
use wharf_broker::queue::{
    AckScope, CancelReason, ConsumerEvent, Delivered, Deliveries, Durability, GetMode, Message,
    Published, QueueArgs, QueueError, QueueManager, Requeue,
};
use wharf_broker::storage::{Flusher, RealFs, StorageEnv, SystemClock};

fn env() -> StorageEnv {
    StorageEnv {
        fs: Arc::new(RealFs),
        clock: Arc::new(SystemClock),
        flusher: Flusher::spawn(1),
    }
}

/// Node 1's view: queue `remote-q` is led by node 2, reached by calling its manager.
#[derive(Debug)]
struct Loopback {
    leader: Arc<QueueManager>,
    down: AtomicBool,
    /// False: the queue counts as this node's own (to look at node 1's copy).
    placed_elsewhere: AtomicBool,
}

impl QueueCluster for Loopback {
    fn node_id(&self) -> u64 {
        1
    }

    fn leader_elsewhere(&self, queue: &str) -> Option<u64> {
        (PLACED_ON_NODE_2.contains(&queue) && self.placed_elsewhere.load(Ordering::SeqCst))
            .then_some(2)
    }

    fn call(&self, node: u64, request: String, _timeout: Duration) -> CallFuture<'_> {
        assert_eq!(node, 2, "only node 2 leads anything");
        let leader = self.leader.clone();
        let down = self.down.load(Ordering::SeqCst);
        Box::pin(async move {
            if down {
                return Err("connection refused".to_string());
            }
            Ok(leader.serve_remote(request).await)
        })
    }

    fn delete_by_rule(&self, queue: &str) -> Option<RuleFuture> {
        panic!("node 1 deleted {queue:?}, which node 2 leads");
    }

    fn exclusive_node(&self, queue: &str) -> Option<u64> {
        (queue == LOCKED_ON_NODE_3).then_some(3)
    }
}

/// A queue the log holds as exclusive to a connection on node 3.
const LOCKED_ON_NODE_3: &str = "locked-q";

/// The queues the cluster places on node 2.
const PLACED_ON_NODE_2: [&str; 3] = ["remote-q", "auto-q", "dst"];

/// Node 2's view: it leads everything; the queues its rules ask the log to delete are
/// noted, and the log keeps them while `keep` is set (declared again since).
#[derive(Debug, Default)]
struct LeaderSide {
    deleted: Mutex<Vec<String>>,
    keep: AtomicBool,
}

impl QueueCluster for LeaderSide {
    fn node_id(&self) -> u64 {
        2
    }

    fn leader_elsewhere(&self, _queue: &str) -> Option<u64> {
        None
    }

    fn call(&self, node: u64, _request: String, _timeout: Duration) -> CallFuture<'_> {
        panic!("node 2 forwards nothing, yet called node {node}");
    }

    fn delete_by_rule(&self, queue: &str) -> Option<RuleFuture> {
        self.deleted.lock().expect("lock").push(queue.to_string());
        let dropped = !self.keep.load(Ordering::SeqCst);
        Some(Box::pin(async move { dropped }))
    }
}

fn message(routing_key: &str, body: &str) -> Message {
    Message {
        routing_key: routing_key.to_string(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        headers: Vec::new(),
    }
}

fn body(delivered: &Delivered) -> String {
    String::from_utf8(delivered.record.value.clone().expect("body").to_vec()).expect("utf-8")
}

async fn next_event(deliveries: &mut Deliveries) -> ConsumerEvent {
    tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
        .await
        .expect("an event in time")
        .expect("the consumer is alive")
}

async fn next(deliveries: &mut Deliveries) -> Delivered {
    match next_event(deliveries).await {
        ConsumerEvent::Delivery(delivered) => delivered,
        ConsumerEvent::Cancelled(reason) => panic!("consumer cancelled: {reason:?}"),
    }
}

/// Node 1 (joined to the loopback) and node 2, each with the queue and a fanout `fan`
/// bound to it, as the metadata log would define them on both.
fn two_nodes() -> (
    Vec<tempfile::TempDir>,
    Arc<QueueManager>,
    Arc<QueueManager>,
    Arc<Loopback>,
) {
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let managers: Vec<Arc<QueueManager>> = dirs
        .iter()
        .map(|dir| {
            let manager = QueueManager::open(dir.path(), env()).expect("open");
            manager
                .declare_queue("remote-q", QueueArgs::default(), Durability::Durable)
                .expect("declare");
            manager
                .declare_exchange("fan", ExchangeKind::Fanout, Durability::Durable)
                .expect("declare fan");
            manager.bind("remote-q", "fan", "", &[]).expect("bind");
            manager
        })
        .collect();
    let cluster = Arc::new(Loopback {
        leader: managers[1].clone(),
        down: AtomicBool::new(false),
        placed_elsewhere: AtomicBool::new(true),
    });
    managers[0].attach_cluster(cluster.clone());
    (dirs, managers[0].clone(), managers[1].clone(), cluster)
}

async fn ready(manager: &QueueManager) -> u64 {
    let listed = manager.list().await;
    listed
        .iter()
        .find(|stats| stats.name == "remote-q")
        .expect("listed")
        .ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_led_elsewhere_is_served_by_its_leader() {
    let (_dirs, node1, node2, cluster) = two_nodes();

    // Publishes through node 1 are stored and confirmed by node 2.
    for i in 0..4 {
        let exchange = if i % 2 == 0 { "" } else { "fan" };
        let published = node1
            .publish(exchange, message("remote-q", &format!("m{i}")))
            .await
            .expect("published");
        assert_eq!(published, Published::Routed(vec!["remote-q".to_string()]));
    }
    assert_eq!(
        ready(&node1).await,
        4,
        "node 1 counts the leader's messages"
    );
    assert_eq!(ready(&node2).await, 4, "the leader holds them");
    assert_eq!(
        node1
            .get("remote-q", 1, GetMode::Requeue, None)
            .await
            .unwrap()[0]
            .record
            .value
            .as_deref(),
        Some(&b"m0"[..]),
        "a get through node 1 looks at the leader's head"
    );

    // A consumer on node 1 gets the leader's deliveries and acks them there.
    let (consumer, mut deliveries) = node1.subscribe("remote-q", 2).await.expect("subscribe");
    assert!(
        consumer.0 >= 1 << 32,
        "node 1 numbers its consumers from 1 << 32, not {consumer}"
    );
    let first = next(&mut deliveries).await;
    let second = next(&mut deliveries).await;
    assert_eq!((body(&first), body(&second)), ("m0".into(), "m1".into()));
    assert!(first.redelivered, "m0 was looked at by the requeueing get");
    node1
        .ack("remote-q", consumer, second.tag, AckScope::Single)
        .await
        .expect("ack through node 1");
    node1
        .nack(
            "remote-q",
            consumer,
            first.tag,
            AckScope::Single,
            Requeue::Yes,
        )
        .await
        .expect("nack through node 1");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let delivered = next(&mut deliveries).await;
        seen.push((body(&delivered), delivered.redelivered));
        node1
            .ack("remote-q", consumer, delivered.tag, AckScope::Single)
            .await
            .expect("ack");
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("m0".to_string(), true),
            ("m2".to_string(), false),
            ("m3".to_string(), false)
        ]
    );
    let stats = node2.list().await;
    assert_eq!(
        (stats[0].ready, stats[0].unacked, stats[0].consumers),
        (0, 0, 1)
    );
    node1
        .cancel("remote-q", consumer, CancelReason::ClientCancelled)
        .await;
    assert_eq!(
        node2.list().await[0].consumers,
        0,
        "the cancel reached the leader"
    );

    // Node 1's own copy was never used.
    cluster.placed_elsewhere.store(false, Ordering::SeqCst);
    let own = node1.list().await;
    assert_eq!((own[0].published, own[0].delivered), (0, 0), "{own:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_from_a_queue_led_elsewhere_runs_on_its_leader() {
    // `wharf queue move` through a node that does not lead the source: the whole move runs
    // on the source's leader (it was refused there until 2026-12-08). A queue exclusive to
    // another node's connection is refused on this node, which knows that owner only from
    // the log.
    let (_dirs, node1, node2, _cluster) = two_nodes();
    for manager in [&node1, &node2] {
        for queue in ["dst", LOCKED_ON_NODE_3] {
            manager
                .declare_queue(queue, QueueArgs::default(), Durability::Durable)
                .expect("declare");
        }
    }
    for i in 0..3 {
        node1
            .publish("", message("remote-q", &format!("m{i}")))
            .await
            .expect("published");
    }
    let moved = node1.move_messages("remote-q", "dst", None).await;
    assert_eq!((moved.moved, moved.stopped), (3, None));
    assert_eq!(ready(&node1).await, 0, "the source is empty at its leader");
    for (node, view) in [(&node1, "node 1 (forwarded)"), (&node2, "the leader")] {
        let listed = node.list().await;
        let dst = listed
            .iter()
            .find(|stats| stats.name == "dst")
            .expect("listed");
        assert_eq!(dst.ready, 3, "{view} counts node 2's destination");
    }

    node1
        .publish("", message("remote-q", "kept"))
        .await
        .expect("published");
    let refused = node1
        .move_messages("remote-q", LOCKED_ON_NODE_3, None)
        .await;
    assert_eq!(refused.moved, 0);
    assert!(
        matches!(&refused.stopped, Some(QueueError::DeclareMismatch(text)) if text.contains("another node")),
        "{:?}",
        refused.stopped
    );
    assert_eq!(ready(&node1).await, 1, "nothing left the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_leader_fails_confirms_and_cancels_consumers() {
    let (_dirs, node1, _node2, cluster) = two_nodes();
    let (_, mut deliveries) = node1.subscribe("remote-q", 10).await.expect("subscribe");
    cluster.down.store(true, Ordering::SeqCst);
    let refused = node1.publish("", message("remote-q", "lost")).await;
    assert!(
        matches!(&refused, Err(QueueError::Cluster { no_leader: false, message }) if message.contains("node 2")),
        "{refused:?}"
    );
    match next_event(&mut deliveries).await {
        ConsumerEvent::Cancelled(CancelReason::Unreachable) => {}
        other => panic!("not cancelled as unreachable: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_s_old_consumers_are_cancelled_and_their_deliveries_return() {
    let (_dirs, node1, node2, cluster) = two_nodes();
    node1
        .publish("", message("remote-q", "held"))
        .await
        .expect("published");
    let (_, mut deliveries) = node1.subscribe("remote-q", 10).await.expect("subscribe");
    assert_eq!(body(&next(&mut deliveries).await), "held");
    assert_eq!(node2.list().await[0].unacked, 1);

    // Node 1 "restarts": a fresh manager with the same node id, so a new epoch.
    let dir = tempfile::tempdir().expect("temp dir");
    let restarted = QueueManager::open(dir.path(), env()).expect("open");
    restarted
        .declare_queue("remote-q", QueueArgs::default(), Durability::Durable)
        .expect("declare");
    restarted.attach_cluster(cluster.clone());
    let got = restarted
        .get("remote-q", 1, GetMode::Ack, None)
        .await
        .expect("get through the restarted node");
    assert_eq!(
        got.iter()
            .map(|got| got.record.value.clone().expect("body"))
            .collect::<Vec<_>>(),
        vec![Bytes::from_static(b"held")],
        "the delivery held by the old start's consumer came back"
    );
    let stats = node2.list().await;
    assert_eq!(
        (stats[0].ready, stats[0].unacked, stats[0].consumers),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_delete_queue_is_deleted_by_its_leader_and_dropped_from_the_log() {
    let (_dirs, node1, node2, _cluster) = two_nodes();
    let leader_side = Arc::new(LeaderSide::default());
    node2.attach_cluster(leader_side.clone());
    let args = QueueArgs {
        auto_delete: true,
        ..QueueArgs::default()
    };
    for node in [&node1, &node2] {
        node.declare_queue("auto-q", args.clone(), Durability::Durable)
            .expect("declare auto-q");
    }
    // Two consumers through node 1 and one on node 2, all at the leader.
    let (first, _a) = node1.subscribe("auto-q", 1).await.expect("subscribe");
    let (second, _b) = node1.subscribe("auto-q", 1).await.expect("subscribe");
    let (local, _c) = node2.subscribe("auto-q", 1).await.expect("subscribe");
    node1
        .cancel("auto-q", first, CancelReason::ClientCancelled)
        .await;
    node1
        .cancel("auto-q", second, CancelReason::ClientCancelled)
        .await;
    // Node 1's last consumer is gone, but not the leader's: nothing is deleted anywhere.
    assert!(node2.exists("auto-q"), "the leader keeps it");
    assert!(
        node1.exists("auto-q"),
        "node 1 keeps its copy: the leader decides"
    );
    assert!(leader_side.deleted.lock().expect("lock").is_empty());

    // The leader's last consumer goes: it asks the log to drop the queue, and leaves its
    // copy to its follower (which deletes every node's copy once the log dropped it).
    node2
        .cancel("auto-q", local, CancelReason::ClientCancelled)
        .await;
    assert_eq!(
        *leader_side.deleted.lock().expect("lock"),
        vec!["auto-q".to_string()]
    );
    assert!(
        node2.exists("auto-q"),
        "the log decides, and the follower deletes the copy"
    );
    // Meanwhile the queue takes no consumer: it is being deleted.
    assert!(
        matches!(
            node2.subscribe("auto-q", 1).await,
            Err(QueueError::UnknownQueue(_))
        ),
        "a consumer of a queue the log is dropping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_the_log_refuses_keeps_the_queue_and_fires_again_once_unused_again() {
    let (_dirs, _node1, node2, _cluster) = two_nodes();
    let leader_side = Arc::new(LeaderSide::default());
    leader_side.keep.store(true, Ordering::SeqCst);
    node2.attach_cluster(leader_side.clone());
    let args = QueueArgs {
        expires_ms: Some(300),
        ..QueueArgs::default()
    };
    node2
        .declare_queue("exp-q", args, Durability::Durable)
        .expect("declare exp-q");
    let asked = || leader_side.deleted.lock().expect("lock").len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while asked() < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(asked(), 1, "the expiry asked the log once");
    assert!(node2.exists("exp-q"), "the log kept it: it stays");
    // Kept counts as a use: unused for another 300 ms, it asks again (without the touch
    // the expiry had fired for good and the queue would never expire).
    while asked() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(asked(), 2, "the expiry fired again once unused again");
    assert!(node2.exists("exp-q"));
    // Kept, it takes consumers again.
    while asked() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut subscribed = node2.subscribe("exp-q", 1).await;
    for _ in 0..20 {
        if subscribed.is_ok() {
            break;
        }
        // Asked just now: reopened once the log's answer is in.
        tokio::time::sleep(Duration::from_millis(10)).await;
        subscribed = node2.subscribe("exp-q", 1).await;
    }
    assert!(subscribed.is_ok(), "a kept queue takes consumers again");
}
