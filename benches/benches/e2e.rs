//! In-process end to end: a real broker (`wharf_broker::server::start`) on a loopback port
//! with a temp data dir, the client library's `Producer` (acks=all, the default
//! `flush = always`) and `Consumer`. One iteration produces a run of records, waits for
//! their acknowledgements and reads the same run back.
//!
//! Data goes under `$WHARF_BENCH_DIR` (default: the current directory).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_broker::config::BrokerConfig;
use wharf_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, TopicPartition,
};

const RUN_RECORDS: u64 = 10_000;

fn end_to_end(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The producer spawns its background task on creation.
    let _context = runtime.enter();
    let base = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| ".".to_string());
    let dir = tempfile::Builder::new()
        .prefix("wharf-bench-e2e-")
        .tempdir_in(base)
        .expect("bench dir");
    let config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".to_string(),
        http_listen: Some("127.0.0.1:0".to_string()),
        ..BrokerConfig::default()
    };
    let server = runtime
        .block_on(wharf_broker::server::start(config))
        .expect("broker starts");
    let address = server.local_addr().to_string();
    let client = runtime
        .block_on(Client::connect(ClientConfig::new(address)))
        .expect("client connects");

    let mut group = criterion.benchmark_group("e2e");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(RUN_RECORDS));
    for size in [100usize, 1024] {
        let topic = format!("bench-{size}");
        let payload = Bytes::from(vec![b'x'; size]);
        let producer = Producer::new(&client, ProducerConfig::default());
        let mut consumer = Consumer::new(
            &client,
            ConsumerConfig::default().auto_offset_reset(OffsetReset::Earliest),
        );
        consumer
            .assign(vec![TopicPartition::new(topic.clone(), 0)])
            .expect("assign");
        group.bench_function(
            BenchmarkId::new("produce-then-consume", format!("{size}B")),
            |bencher| {
                bencher.iter_custom(|iterations| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iterations {
                            let mut acks = Vec::with_capacity(RUN_RECORDS as usize);
                            for _ in 0..RUN_RECORDS {
                                let record = ProducerRecord::new(topic.clone(), payload.clone());
                                acks.push(producer.enqueue(record).await.expect("enqueue"));
                            }
                            for ack in acks {
                                ack.await.expect("acknowledged");
                            }
                            let mut received = 0;
                            while received < RUN_RECORDS {
                                let records =
                                    consumer.poll(Duration::from_secs(5)).await.expect("poll");
                                assert!(!records.is_empty(), "records stopped arriving");
                                received += records.len() as u64;
                            }
                        }
                        start.elapsed()
                    })
                });
            },
        );
        runtime.block_on(producer.close()).expect("close producer");
    }
    group.finish();
    runtime.block_on(server.shutdown()).expect("clean shutdown");
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
