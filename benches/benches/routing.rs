//! Topic-exchange routing with many bindings: the trie must keep a route's cost tied to the
//! key's words, not to the number of bindings (issue #6: 10,000 bindings).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_broker::queue::exchange::{Bindings, ExchangeKind};

/// 10,000 bindings of the shapes seen in practice: exact keys, `*` in one word, and `#`
/// prefixes and suffixes, over 100 regions × 100 services.
fn topic_bindings(count: usize) -> Bindings {
    let mut bindings = Bindings::new(ExchangeKind::Topic);
    for index in 0..count {
        let region = index % 100;
        let service = (index / 100) % 100;
        let pattern = match index % 4 {
            0 => format!("region{region}.service{service}.created"),
            1 => format!("region{region}.*.service{service}"),
            2 => format!("region{region}.service{service}.#"),
            _ => format!("#.service{service}.error{region}"),
        };
        bindings.bind(&format!("queue-{index}"), &pattern, None);
    }
    bindings
}

fn route(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("topic_route");
    group.throughput(Throughput::Elements(1));
    for count in [100usize, 10_000] {
        let bindings = topic_bindings(count);
        // Keys that match a few bindings each, and one that matches none.
        let keys = [
            "region7.service3.created",
            "region42.service9.deleted.twice",
            "eu.region1.service5.error1",
            "nobody.listens.here",
        ];
        group.bench_with_input(
            BenchmarkId::new("bindings", count),
            &bindings,
            |bencher, bindings| {
                let mut next = 0;
                bencher.iter(|| {
                    let key = keys[next % keys.len()];
                    next += 1;
                    black_box(bindings.route(black_box(key), &[]))
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
