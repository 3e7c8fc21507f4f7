//! The resource alarms over the native protocol (issue #16).
//!
//! The disk alarm: `wharfd` on a 128 MiB tmpfs of its
//! own mount namespace (unshare, util-linux) holds a publisher once the free space is below
//! `disk_free_limit_bytes` (96 MB: the alarm samples every 250 ms, and the margin keeps a
//! loaded machine from filling the disk between two samples), tells it with a ConnectionBlocked push (the client's
//! `publishes_held`), and lets it go, with nothing refused or lost, once space is freed.
//!
//! The memory alarm: a watermark below what the broker uses holds publishers the same way;
//! raising it (config file rewritten, SIGHUP) lets them go.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{http_get, BrokerProcess};
use wharf_client::{Admin, Client, ClientConfig, Durability, Publisher, QueueArgs, Routing};

/// Polls `condition` every 50 ms for up to `limit`.
async fn eventually(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_publisher_is_held_told_so_and_let_go_when_space_is_freed() {
    let broker = integration_tests::TmpfsBroker::start(
        "128m",
        "disk_free_limit_bytes = 96000000\n",
        "--listen 127.0.0.1:0 --kafka-listen off --amqp-listen off --http-listen off",
        1,
        None,
        "warn",
    );
    let address = broker.address(0);

    let client = Client::connect(ClientConfig::new(address.clone()))
        .await
        .expect("connect");
    Admin::new(&client)
        .declare_queue("filler", Durability::Durable, &QueueArgs::default())
        .await
        .expect("declare");
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (client, stop, confirmed) = (client.clone(), stop.clone(), confirmed.clone());
        tokio::spawn(async move {
            let publisher = Publisher::new(&client);
            let body = Bytes::from(vec![b'x'; 512 * 1024]);
            while !stop.load(Ordering::Relaxed) && confirmed.load(Ordering::Relaxed) < 400 {
                let pending = publisher
                    .start("", "filler", body.clone(), Vec::new(), Routing::Optional)
                    .await?;
                pending.await?;
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, wharf_client::Error>(())
        })
    };
    let held = eventually(Duration::from_secs(60), || client.publishes_held()).await;
    assert!(
        held,
        "never told its publishes are held ({} confirmed)",
        confirmed.load(Ordering::Relaxed)
    );
    let at_hold = confirmed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        confirmed.load(Ordering::Relaxed),
        at_hold,
        "a publish was confirmed while held"
    );

    // Another connection frees the space; the held publish goes on.
    let freer = Client::connect(ClientConfig::new(address))
        .await
        .expect("connect");
    Admin::new(&freer)
        .delete_queue("filler")
        .await
        .expect("delete");
    let released = eventually(Duration::from_secs(30), || !client.publishes_held()).await;
    assert!(released, "never told its publishes go on");
    assert!(
        eventually(Duration::from_secs(30), || confirmed
            .load(Ordering::Relaxed)
            > at_hold)
        .await,
        "the held publish was not confirmed"
    );
    stop.store(true, Ordering::Relaxed);
    let outcome = tokio::time::timeout(Duration::from_secs(30), publishing)
        .await
        .expect("the publisher stops");
    drop(broker);
    outcome.expect("task").expect("no publish failed");
}

/// The value of an unlabelled gauge in a `/metrics` text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_publisher_is_held_by_the_memory_alarm_until_the_watermark_is_raised() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 1 byte: below any process's memory, so the alarm is on from the start.
    let broker = BrokerProcess::start_with_config(
        &dir.path().join("data"),
        "memory_high_watermark_bytes = 1\n",
    );
    let http = broker.http_address();
    let (status, metrics) = http_get(&http, "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(
        gauge(&metrics, "wharf_memory_alarm"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "wharf_memory_high_watermark_bytes"),
        Some(1.0)
    );
    assert!(gauge(&metrics, "wharf_memory_used_bytes").is_some_and(|used| used > 1.0));

    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    Admin::new(&client)
        .declare_queue("held", Durability::Durable, &QueueArgs::default())
        .await
        .expect("declaring is not publishing: not held");
    let publisher = Publisher::new(&client);
    let pending = publisher
        .start(
            "",
            "held",
            Bytes::from_static(b"m"),
            Vec::new(),
            Routing::Optional,
        )
        .await
        .expect("sent");
    let confirm = tokio::spawn(pending);
    assert!(
        eventually(Duration::from_secs(10), || client.publishes_held()).await,
        "never told its publishes are held"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!confirm.is_finished(), "confirmed while the alarm is on");

    // Raise the watermark as an operator would: the config file, then SIGHUP.
    std::fs::write(broker.config_path(), "memory_high_watermark_bytes = 0\n").expect("config");
    broker.hangup();
    tokio::time::timeout(Duration::from_secs(10), confirm)
        .await
        .expect("confirmed once the alarm cleared")
        .expect("task")
        .expect("the held publish was stored");
    assert!(eventually(Duration::from_secs(10), || !client.publishes_held()).await);
    let (_, metrics) = http_get(&http, "/metrics", None);
    assert_eq!(
        gauge(&metrics, "wharf_memory_alarm"),
        Some(0.0),
        "{metrics}"
    );
    let queues = Admin::new(&client).list_queues().await.expect("list");
    let held = queues
        .iter()
        .find(|queue| queue.name == "held")
        .expect("held");
    assert_eq!(held.ready, 1, "{held:?}");
}
