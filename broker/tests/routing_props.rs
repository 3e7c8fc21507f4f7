//! Property test: the topic exchange's trie routes exactly like a plain recursive matcher
//! over every binding, across random bind/unbind sequences and random keys. Words come from a
//! tiny alphabet so that `*`, `#` and literal words collide often.

use proptest::prelude::*;
use wharf_broker::queue::exchange::{topic_matches, Bindings, ExchangeKind};

fn word() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("")].prop_map(str::to_string)
}

fn pattern_word() -> impl Strategy<Value = String> {
    prop_oneof![word(), Just("*".to_string()), Just("#".to_string())]
}

fn join(words: Vec<String>) -> String {
    words.join(".")
}

#[derive(Debug, Clone)]
enum Op {
    Bind { queue: u8, pattern: String },
    Unbind { queue: u8, pattern: String },
    Route { key: String },
}

fn op() -> impl Strategy<Value = Op> {
    let pattern = || prop::collection::vec(pattern_word(), 1..5).prop_map(join);
    let key = prop::collection::vec(word(), 1..6).prop_map(join);
    prop_oneof![
        3 => (0u8..4, pattern()).prop_map(|(queue, pattern)| Op::Bind { queue, pattern }),
        1 => (0u8..4, pattern()).prop_map(|(queue, pattern)| Op::Unbind { queue, pattern }),
        4 => key.prop_map(|key| Op::Route { key }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn topic_trie_routes_like_the_reference(ops in prop::collection::vec(op(), 1..80)) {
        let mut exchange = Bindings::new(ExchangeKind::Topic);
        let mut model: std::collections::BTreeSet<(String, String)> = Default::default();
        for op in ops {
            match op {
                Op::Bind { queue, pattern } => {
                    let queue = format!("q{queue}");
                    let added = exchange.bind(&queue, &pattern, None);
                    prop_assert_eq!(added, model.insert((queue, pattern)));
                }
                Op::Unbind { queue, pattern } => {
                    let queue = format!("q{queue}");
                    let removed = exchange.unbind(&queue, &pattern, None);
                    prop_assert_eq!(removed, model.remove(&(queue, pattern)));
                }
                Op::Route { key } => {
                    let expected: std::collections::BTreeSet<String> = model
                        .iter()
                        .filter(|(_, pattern)| topic_matches(pattern, &key))
                        .map(|(queue, _)| queue.clone())
                        .collect();
                    let routed: Vec<String> = exchange.route(&key, &[]);
                    prop_assert_eq!(routed, expected.into_iter().collect::<Vec<_>>(), "key {:?}", key);
                }
            }
        }
    }
}
