//! Record batch codec benchmarks: build, validate (the broker's hot-path check: header and
//! CRC-32C only) and full record decoding (what a consumer does).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wharf_protocol::batch::{self, Batch, BatchBuilder, NewRecord};

fn build(record_count: usize, value_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    let value = Bytes::from(vec![b'v'; value_bytes]);
    for record_index in 0..record_count {
        let record = NewRecord {
            timestamp_ms: 1_700_000_000_000 + record_index as i64,
            key: Some(Bytes::from(format!("key-{record_index}"))),
            value: Some(value.clone()),
            headers: Vec::new(),
        };
        builder.push(&record).expect("fits");
    }
    builder.build()
}

fn codec(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("codec");
    group.measurement_time(Duration::from_secs(3));
    for (value_bytes, label) in [(100usize, "100x100B"), (1024, "100x1KiB")] {
        let encoded = build(100, value_bytes);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(format!("build/{label}"), |bencher| {
            bencher.iter(|| black_box(build(100, black_box(value_bytes))));
        });
        group.bench_function(format!("validate/{label}"), |bencher| {
            bencher.iter(|| black_box(batch::validate(black_box(&encoded)).expect("valid")));
        });
        group.bench_function(format!("decode_records/{label}"), |bencher| {
            bencher.iter(|| {
                let decoded = Batch::decode(encoded.clone()).expect("valid");
                let mut total = 0usize;
                for record in decoded.records() {
                    total += record.expect("valid").value.map_or(0, |value| value.len());
                }
                black_box(total)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
