//! The queue paths of issue #15, at two levels:
//!
//! - `queue_state`: the delivery state alone (no I/O): a run of messages enqueued, dispatched
//!   to one consumer with a prefetch window of 1,000 and acknowledged with `multiple` every
//!   500, as `wharf perf queue` and the peers' consumers do. Per message: the bookkeeping a
//!   queue does around each delivery.
//! - `queue_e2e`: a real broker in process (`wharf_broker::server::start`, loopback port,
//!   temp data dir, `flush = always`) and the client library. `publish` publishes a run with
//!   the batching `Publisher` and waits for every confirm (each after an fsync); `consume`
//!   subscribes with prefetch 1,000 and reads the run back with manual cumulative acks
//!   (its publish is not timed).
//!
//! Data goes under `$WHARF_BENCH_DIR` (default: the current directory).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_broker::queue::delivery::{
    AckScope, Action, ConsumerId, DeliveryState, MessageMeta, QueueLimits,
};
use wharf_client::{Admin, Client, Durability, Publisher, QueueArgs, Routing, Subscriber};

/// Messages per iteration.
const RUN: u64 = 10_000;
/// The consumer's prefetch window (as peerbench's consumers).
const PREFETCH: u32 = 1_000;
/// Deliveries per cumulative ack.
const ACK_EVERY: u64 = 500;

fn delivery_state(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("queue_state");
    group.throughput(Throughput::Elements(RUN));
    group.bench_function("enqueue_dispatch_ack", |bencher| {
        bencher.iter(|| {
            let mut state = DeliveryState::new(QueueLimits::default());
            let consumer = ConsumerId(1);
            state.add_consumer(consumer, PREFETCH);
            let mut next_id = 0i64;
            let mut acked = 0u64;
            let mut since_ack = 0u64;
            while acked < RUN {
                // Publishes arrive in runs, as a batching publisher sends them.
                while next_id < RUN as i64 && state.ready_count() < PREFETCH as usize {
                    let meta = MessageMeta {
                        id: next_id,
                        expires_at_ms: None,
                        delivery_count: 0,
                        bytes: 100,
                        priority: 0,
                    };
                    black_box(state.enqueue(meta).expect("no limit"));
                    next_id += 1;
                }
                let deliveries: Vec<_> = state
                    .dispatch(0)
                    .into_iter()
                    .filter_map(|action| match action {
                        Action::Deliver(delivery) => Some(delivery),
                        _ => None,
                    })
                    .collect();
                let finished = next_id == RUN as i64 && state.ready_count() == 0;
                for (index, delivery) in deliveries.iter().enumerate() {
                    since_ack += 1;
                    if since_ack == ACK_EVERY || (finished && index + 1 == deliveries.len()) {
                        let settled = state
                            .ack(consumer, delivery.tag, AckScope::Multiple)
                            .expect("known tag");
                        acked += settled.len() as u64;
                        since_ack = 0;
                    }
                }
            }
            state
        });
    });
    group.finish();
}

fn end_to_end(criterion: &mut Criterion) {
    let broker = benches::InProcess::start("wharf-bench-queue-");
    let (runtime, client) = (&broker.runtime, &broker.client);

    let mut group = criterion.benchmark_group("queue_e2e");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(RUN));
    for size in [100usize, 1024] {
        let queue = format!("bench-{size}");
        runtime
            .block_on(Admin::new(client).declare_queue(
                &queue,
                Durability::Durable,
                &QueueArgs::default(),
            ))
            .expect("declare");
        let body = Bytes::from(vec![b'q'; size]);
        group.bench_with_input(BenchmarkId::new("publish", size), &size, |bencher, _| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let started = Instant::now();
                        publish_run(client, &queue, &body).await;
                        total += started.elapsed();
                        drain(client, &queue).await;
                    }
                    total
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("consume", size), &size, |bencher, _| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        publish_run(client, &queue, &body).await;
                        let started = Instant::now();
                        drain(client, &queue).await;
                        total += started.elapsed();
                    }
                    total
                })
            });
        });
    }
    group.finish();
    broker.shutdown();
}

/// Publishes `RUN` messages with at most 1,000 unconfirmed, then waits for every confirm.
async fn publish_run(client: &Client, queue: &str, body: &Bytes) {
    let publisher = Publisher::new(client);
    let mut window = VecDeque::new();
    for _ in 0..RUN {
        if window.len() >= 1_000 {
            let confirm: wharf_client::PublishConfirm = window.pop_front().expect("full");
            confirm.await.expect("confirmed");
        }
        let confirm = publisher
            .start("", queue, body.clone(), Vec::new(), Routing::Mandatory)
            .await
            .expect("publish sent");
        window.push_back(confirm);
    }
    for confirm in window {
        confirm.await.expect("confirmed");
    }
}

/// Consumes `RUN` messages with prefetch `PREFETCH`, acking cumulatively every `ACK_EVERY`
/// and at the end, and waits for the acks.
async fn drain(client: &Client, queue: &str) {
    let mut subscriber = Subscriber::subscribe(client, queue, PREFETCH)
        .await
        .expect("subscribe");
    let mut acks = Vec::new();
    for received in 1..=RUN {
        let delivery = subscriber
            .next()
            .await
            .expect("delivery")
            .expect("subscribed");
        if received % ACK_EVERY == 0 || received == RUN {
            acks.push(delivery.ack_multiple_sent().await.expect("ack sent"));
        }
    }
    for ack in acks {
        ack.await.expect("acked");
    }
    subscriber.cancel().await.expect("cancel");
}

criterion_group!(benches, delivery_state, end_to_end);
criterion_main!(benches);
