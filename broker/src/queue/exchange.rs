//! Exchanges and bindings: which queues a message goes to.
//!
//! - `direct`: queues bound with exactly the message's routing key.
//! - `fanout`: every bound queue.
//! - `topic`: routing keys are `.`-separated words; in a binding `*` matches exactly one word
//!   and `#` matches zero or more words (`a.#` matches `a`, `a.b`, `a.b.c`). Bindings are kept
//!   in a trie over words, so routing a message costs the words of its key (plus the `#`
//!   branches), not a scan of every binding.
//! - `headers`: bindings list header values with `x-match` `all` (every one must be present
//!   and equal, the default) or `any` (at least one); arguments starting with `x-` are not
//!   matched.
//!
//! A key always splits into at least one word: the empty key is one empty word. Routing
//! returns each queue once, however many of its bindings match.
//!
//! Everything here is pure: [`Bindings::route`] is unit- and property-tested without a
//! runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Exact routing key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Word patterns with `*` and `#`.
    Topic,
    /// Header values.
    Headers,
}

impl ExchangeKind {
    /// Parses `direct`, `fanout`, `topic` or `headers`.
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// How a headers binding combines its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HeadersMatch {
    /// Every bound header must be present with the bound value.
    All,
    /// At least one bound header must be present with the bound value.
    Any,
}

/// A headers binding's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadersArgs {
    /// `all` or `any`.
    pub mode: HeadersMatch,
    /// Header name → required value (UTF-8 text compared as bytes).
    pub values: BTreeMap<String, String>,
}

impl HeadersArgs {
    /// Builds arguments from binding pairs: `x-match` picks the mode (default `all`), other
    /// `x-` keys are ignored.
    ///
    /// # Errors
    /// A message if `x-match` is neither `all` nor `any`.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<HeadersArgs, String> {
        let mut mode = HeadersMatch::All;
        let mut values = BTreeMap::new();
        for (key, value) in pairs {
            if key == "x-match" {
                mode = match value {
                    "all" => HeadersMatch::All,
                    "any" => HeadersMatch::Any,
                    other => return Err(format!("x-match {other:?} is not all or any")),
                };
            } else if !key.starts_with("x-") {
                values.insert(key.to_string(), value.to_string());
            }
        }
        Ok(HeadersArgs { mode, values })
    }

    /// The arguments as binding pairs, `x-match` first: what `from_pairs` reads back.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mode = match self.mode {
            HeadersMatch::All => "all",
            HeadersMatch::Any => "any",
        };
        let mut pairs = vec![("x-match".to_string(), mode.to_string())];
        pairs.extend(
            self.values
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        );
        pairs
    }

    /// Whether a message with `headers` matches.
    pub fn matches(&self, headers: &[(&str, Option<&[u8]>)]) -> bool {
        let has = |key: &str, value: &str| {
            headers
                .iter()
                .any(|(name, bytes)| *name == key && *bytes == Some(value.as_bytes()))
        };
        match self.mode {
            HeadersMatch::All => self.values.iter().all(|(key, value)| has(key, value)),
            HeadersMatch::Any => self.values.iter().any(|(key, value)| has(key, value)),
        }
    }
}

/// A trie over the words of topic binding patterns.
#[derive(Debug, Default, Clone)]
struct TopicNode {
    words: HashMap<String, TopicNode>,
    star: Option<Box<TopicNode>>,
    hash: Option<Box<TopicNode>>,
    /// Queues whose pattern ends here, with how many of their bindings end here (patterns
    /// that differ only in repeated `#` share a node but stay separate bindings).
    queues: BTreeMap<String, u32>,
}

impl TopicNode {
    fn child_mut(&mut self, word: &str) -> &mut TopicNode {
        match word {
            "*" => self.star.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            other => self.words.entry(other.to_string()).or_default(),
        }
    }

    fn insert(&mut self, pattern: &[&str], queue: &str) -> bool {
        match pattern.split_first() {
            None => {
                *self.queues.entry(queue.to_string()).or_insert(0) += 1;
                true
            }
            Some((word, rest)) => self.child_mut(word).insert(rest, queue),
        }
    }

    /// Removes `queue` at `pattern`; returns (removed, this node is now empty).
    fn remove(&mut self, pattern: &[&str], queue: &str) -> (bool, bool) {
        let removed = match pattern.split_first() {
            None => match self.queues.get_mut(queue) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    true
                }
                Some(_) => self.queues.remove(queue).is_some(),
                None => false,
            },
            Some((word, rest)) => {
                let (removed, empty) = match *word {
                    "*" => self
                        .star
                        .as_mut()
                        .map_or((false, false), |child| child.remove(rest, queue)),
                    "#" => self
                        .hash
                        .as_mut()
                        .map_or((false, false), |child| child.remove(rest, queue)),
                    other => self
                        .words
                        .get_mut(other)
                        .map_or((false, false), |child| child.remove(rest, queue)),
                };
                if empty {
                    match *word {
                        "*" => self.star = None,
                        "#" => self.hash = None,
                        other => {
                            self.words.remove(other);
                        }
                    }
                }
                removed
            }
        };
        (removed, self.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    /// Collects the queues of patterns matching `words`. `visited` holds (node, words left)
    /// pairs already explored: with `#` branches the same pair is reached many ways, and
    /// exploring it once keeps routing polynomial in the key length.
    fn collect(
        &self,
        words: &[&str],
        out: &mut BTreeSet<String>,
        visited: &mut std::collections::HashSet<(*const TopicNode, usize)>,
    ) {
        if !visited.insert((std::ptr::from_ref(self), words.len())) {
            return;
        }
        if let Some(hash) = &self.hash {
            // `#` takes zero or more of the remaining words.
            for skip in 0..=words.len() {
                hash.collect(&words[skip..], out, visited);
            }
        }
        match words.split_first() {
            None => out.extend(self.queues.keys().cloned()),
            Some((word, rest)) => {
                if let Some(child) = self.words.get(*word) {
                    child.collect(rest, out, visited);
                }
                if let Some(star) = &self.star {
                    star.collect(rest, out, visited);
                }
            }
        }
    }
}

/// Splits a routing key or pattern into words (always at least one).
pub fn words(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

/// A binding pattern's words with runs of `#` collapsed to one (`#.#` matches what `#`
/// does), which keeps routing from branching once per repeated `#`.
fn pattern_words(pattern: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for word in pattern.split('.') {
        if word == "#" && out.last() == Some(&"#") {
            continue;
        }
        out.push(word);
    }
    out
}

/// One binding as `Bindings::describe` lists it: (queue, routing key, arguments).
pub type DescribedBinding = (String, String, Vec<(String, String)>);

/// The bindings of one exchange.
#[derive(Debug, Clone)]
pub struct Bindings {
    kind: ExchangeKind,
    direct: HashMap<String, BTreeSet<String>>,
    fanout: BTreeSet<String>,
    topic: TopicNode,
    headers: BTreeSet<(HeadersArgs, String)>,
    /// Every (queue, routing key) bound, for listing and unbinding queues.
    listed: BTreeSet<(String, String)>,
}

impl Bindings {
    /// No bindings yet.
    pub fn new(kind: ExchangeKind) -> Bindings {
        Bindings {
            kind,
            direct: HashMap::new(),
            fanout: BTreeSet::new(),
            topic: TopicNode::default(),
            headers: BTreeSet::new(),
            listed: BTreeSet::new(),
        }
    }

    /// The exchange's kind.
    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    /// Binds `queue` with `routing_key` (ignored by fanout and headers) and `headers` (headers
    /// exchanges only). Returns false if that binding already existed.
    pub fn bind(&mut self, queue: &str, routing_key: &str, headers: Option<&HeadersArgs>) -> bool {
        let added = match self.kind {
            ExchangeKind::Direct => self
                .direct
                .entry(routing_key.to_string())
                .or_default()
                .insert(queue.to_string()),
            ExchangeKind::Fanout => self.fanout.insert(queue.to_string()),
            ExchangeKind::Topic => {
                let binding = (queue.to_string(), routing_key.to_string());
                !self.listed.contains(&binding)
                    && self.topic.insert(&pattern_words(routing_key), queue)
            }
            ExchangeKind::Headers => {
                let args = headers.cloned().unwrap_or(HeadersArgs {
                    mode: HeadersMatch::All,
                    values: BTreeMap::new(),
                });
                self.headers.insert((args, queue.to_string()))
            }
        };
        self.listed
            .insert((queue.to_string(), routing_key.to_string()));
        added
    }

    /// Whether [`Bindings::bind`] with these arguments would change nothing (the binding
    /// exists), so a caller sharing these bindings need not copy them first.
    pub fn is_bound(&self, queue: &str, routing_key: &str, headers: Option<&HeadersArgs>) -> bool {
        let listed = self
            .listed
            .contains(&(queue.to_string(), routing_key.to_string()));
        listed
            && match self.kind {
                ExchangeKind::Direct => self
                    .direct
                    .get(routing_key)
                    .is_some_and(|queues| queues.contains(queue)),
                ExchangeKind::Fanout => self.fanout.contains(queue),
                ExchangeKind::Topic => true,
                ExchangeKind::Headers => {
                    let args = headers.cloned().unwrap_or(HeadersArgs {
                        mode: HeadersMatch::All,
                        values: BTreeMap::new(),
                    });
                    self.headers.contains(&(args, queue.to_string()))
                }
            }
    }

    /// Whether [`Bindings::unbind`] with these arguments would remove a binding (it looks
    /// at what routing holds, as `unbind` does: a fanout or headers binding whatever key it
    /// is listed under).
    pub fn would_unbind(
        &self,
        queue: &str,
        routing_key: &str,
        headers: Option<&HeadersArgs>,
    ) -> bool {
        match self.kind {
            ExchangeKind::Direct => self
                .direct
                .get(routing_key)
                .is_some_and(|queues| queues.contains(queue)),
            ExchangeKind::Fanout => self.fanout.contains(queue),
            ExchangeKind::Topic => self
                .listed
                .contains(&(queue.to_string(), routing_key.to_string())),
            ExchangeKind::Headers => {
                let args = headers.cloned().unwrap_or(HeadersArgs {
                    mode: HeadersMatch::All,
                    values: BTreeMap::new(),
                });
                self.headers.contains(&(args, queue.to_string()))
            }
        }
    }

    /// Whether `queue` has any binding here.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.listed
            .range((queue.to_string(), String::new())..)
            .next()
            .is_some_and(|(bound, _)| bound == queue)
            || self.headers.iter().any(|(_, bound)| bound == queue)
    }

    /// Removes one binding. Returns false if it did not exist.
    pub fn unbind(
        &mut self,
        queue: &str,
        routing_key: &str,
        headers: Option<&HeadersArgs>,
    ) -> bool {
        let removed = match self.kind {
            ExchangeKind::Direct => {
                let removed = self
                    .direct
                    .get_mut(routing_key)
                    .is_some_and(|queues| queues.remove(queue));
                if self.direct.get(routing_key).is_some_and(BTreeSet::is_empty) {
                    self.direct.remove(routing_key);
                }
                removed
            }
            ExchangeKind::Fanout => self.fanout.remove(queue),
            ExchangeKind::Topic => {
                let binding = (queue.to_string(), routing_key.to_string());
                self.listed.contains(&binding)
                    && self.topic.remove(&pattern_words(routing_key), queue).0
            }
            ExchangeKind::Headers => {
                let args = headers.cloned().unwrap_or(HeadersArgs {
                    mode: HeadersMatch::All,
                    values: BTreeMap::new(),
                });
                self.headers.remove(&(args, queue.to_string()))
            }
        };
        if removed {
            self.listed
                .remove(&(queue.to_string(), routing_key.to_string()));
        }
        removed
    }

    /// Removes every binding of `queue` (when the queue is deleted).
    pub fn remove_queue(&mut self, queue: &str) {
        let keys: Vec<String> = self
            .listed
            .iter()
            .filter(|(bound, _)| bound == queue)
            .map(|(_, key)| key.clone())
            .collect();
        for key in keys {
            match self.kind {
                ExchangeKind::Headers => {}
                _ => {
                    self.unbind(queue, &key, None);
                }
            }
            self.listed.remove(&(queue.to_string(), key));
        }
        self.headers.retain(|(_, bound)| bound != queue);
    }

    /// The queues a message with `routing_key` and `headers` goes to, each once, sorted.
    pub fn route(&self, routing_key: &str, headers: &[(&str, Option<&[u8]>)]) -> Vec<String> {
        let mut out = BTreeSet::new();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(queues) = self.direct.get(routing_key) {
                    out.extend(queues.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(self.fanout.iter().cloned()),
            ExchangeKind::Topic => {
                let mut visited = std::collections::HashSet::new();
                self.topic
                    .collect(&words(routing_key), &mut out, &mut visited)
            }
            ExchangeKind::Headers => {
                for (args, queue) in &self.headers {
                    if args.matches(headers) {
                        out.insert(queue.clone());
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// Every (queue, routing key) binding, sorted.
    pub fn list(&self) -> Vec<(String, String)> {
        self.listed.iter().cloned().collect()
    }

    /// Every binding as (queue, routing key, arguments), sorted by queue, then routing key,
    /// then arguments. A headers binding has no routing key (headers exchanges ignore it)
    /// and its headers arguments as pairs, `x-match` first; other bindings have none.
    pub fn describe(&self) -> Vec<DescribedBinding> {
        let mut described: Vec<DescribedBinding> = match self.kind {
            ExchangeKind::Headers => self
                .headers
                .iter()
                .map(|(args, queue)| (queue.clone(), String::new(), args.to_pairs()))
                .collect(),
            ExchangeKind::Fanout => self
                .fanout
                .iter()
                .map(|queue| (queue.clone(), String::new(), Vec::new()))
                .collect(),
            ExchangeKind::Direct | ExchangeKind::Topic => self
                .listed
                .iter()
                .map(|(queue, routing_key)| (queue.clone(), routing_key.clone(), Vec::new()))
                .collect(),
        };
        described.sort();
        described
    }
}

/// The reference topic matcher the trie is tested against: plain recursion over words.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && matches(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && matches(rest, &key[1..]),
        }
    }
    matches(&words(pattern), &words(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn would_unbind_and_is_bound_agree_with_unbind_and_bind() {
        // Goal: the manager calls unbind (bind) only when would_unbind (not is_bound) says
        // it changes something, so the predicates must say exactly what the calls do.
        let headers_a = HeadersArgs::from_pairs([("x-match", "all"), ("a", "1")]).unwrap();
        let headers_b = HeadersArgs::from_pairs([("x-match", "all"), ("b", "1")]).unwrap();
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
        ] {
            let steps: [(bool, &str, &HeadersArgs); 8] = [
                (true, "k", &headers_a),
                (true, "k", &headers_a),
                (true, "k", &headers_b),
                (true, "other", &headers_a),
                (false, "", &headers_a),
                (false, "k", &headers_b),
                (false, "k", &headers_a),
                (false, "other", &headers_b),
            ];
            let mut bindings = Bindings::new(kind);
            for (bind, key, args) in steps {
                if bind {
                    let no_op = bindings.is_bound("q", key, Some(args));
                    let before = (bindings.list(), bindings.describe().len());
                    let added = bindings.bind("q", key, Some(args));
                    if no_op {
                        assert!(!added, "{kind:?} bind {key}");
                        assert_eq!((bindings.list(), bindings.describe().len()), before);
                    }
                    assert!(
                        bindings.is_bound("q", key, Some(args)),
                        "{kind:?} bound {key}"
                    );
                } else {
                    let predicted = bindings.would_unbind("q", key, Some(args));
                    assert_eq!(
                        bindings.unbind("q", key, Some(args)),
                        predicted,
                        "{kind:?} unbind {key}"
                    );
                }
            }
        }
    }

    fn topic(bindings: &[(&str, &str)]) -> Bindings {
        let mut exchange = Bindings::new(ExchangeKind::Topic);
        for (queue, pattern) in bindings {
            exchange.bind(queue, pattern, None);
        }
        exchange
    }

    #[test]
    fn direct_routes_exact_keys_only() {
        let mut exchange = Bindings::new(ExchangeKind::Direct);
        exchange.bind("q1", "red", None);
        exchange.bind("q2", "red", None);
        exchange.bind("q3", "blue", None);
        assert_eq!(exchange.route("red", &[]), vec!["q1", "q2"]);
        assert_eq!(exchange.route("blue", &[]), vec!["q3"]);
        assert!(exchange.route("green", &[]).is_empty());
        assert!(exchange.unbind("q1", "red", None));
        assert!(!exchange.unbind("q1", "red", None));
        assert_eq!(exchange.route("red", &[]), vec!["q2"]);
    }

    #[test]
    fn fanout_routes_to_every_queue_whatever_the_key() {
        let mut exchange = Bindings::new(ExchangeKind::Fanout);
        exchange.bind("a", "", None);
        exchange.bind("b", "ignored", None);
        assert_eq!(exchange.route("anything", &[]), vec!["a", "b"]);
    }

    #[test]
    fn topic_star_matches_exactly_one_word_and_hash_zero_or_more() {
        let exchange = topic(&[
            ("star", "a.*"),
            ("hash", "a.#"),
            ("mid", "*.b.#"),
            ("all", "#"),
        ]);
        assert_eq!(exchange.route("a", &[]), vec!["all", "hash"]);
        assert_eq!(
            exchange.route("a.b", &[]),
            vec!["all", "hash", "mid", "star"]
        );
        assert_eq!(exchange.route("a.b.c", &[]), vec!["all", "hash", "mid"]);
        assert_eq!(exchange.route("x.b", &[]), vec!["all", "mid"]);
        assert_eq!(exchange.route("", &[]), vec!["all"]);
    }

    #[test]
    fn topic_route_lists_each_queue_once() {
        let exchange = topic(&[("q", "a.*"), ("q", "a.#"), ("q", "#.b")]);
        assert_eq!(exchange.route("a.b", &[]), vec!["q"]);
    }

    #[test]
    fn topic_unbind_prunes_the_trie() {
        let mut exchange = topic(&[("q", "a.*.c"), ("r", "a.#")]);
        assert!(exchange.unbind("q", "a.*.c", None));
        assert_eq!(exchange.route("a.b.c", &[]), vec!["r"]);
        assert!(exchange.unbind("r", "a.#", None));
        assert!(exchange.topic.is_empty());
    }

    #[test]
    fn headers_all_and_any() {
        let mut exchange = Bindings::new(ExchangeKind::Headers);
        let all =
            HeadersArgs::from_pairs([("x-match", "all"), ("format", "pdf"), ("type", "report")])
                .unwrap();
        let any = HeadersArgs::from_pairs([("x-match", "any"), ("format", "pdf"), ("type", "log")])
            .unwrap();
        exchange.bind("all", "", Some(&all));
        exchange.bind("any", "", Some(&any));
        let pdf_report: [(&str, Option<&[u8]>); 2] =
            [("format", Some(b"pdf")), ("type", Some(b"report"))];
        assert_eq!(exchange.route("", &pdf_report), vec!["all", "any"]);
        let pdf_only: [(&str, Option<&[u8]>); 1] = [("format", Some(b"pdf"))];
        assert_eq!(exchange.route("", &pdf_only), vec!["any"]);
        let nothing: [(&str, Option<&[u8]>); 1] = [("format", Some(b"zip"))];
        assert!(exchange.route("", &nothing).is_empty());
        assert!(HeadersArgs::from_pairs([("x-match", "most")]).is_err());
    }

    #[test]
    fn removing_a_queue_drops_all_its_bindings() {
        let mut exchange = topic(&[("q", "a.#"), ("q", "b.*"), ("r", "b.*")]);
        exchange.remove_queue("q");
        assert!(exchange.route("a.x", &[]).is_empty());
        assert_eq!(exchange.route("b.x", &[]), vec!["r"]);
        assert_eq!(exchange.list(), vec![("r".to_string(), "b.*".to_string())]);
    }

    #[test]
    fn many_hashes_and_a_long_key_route_quickly() {
        let exchange = topic(&[("q", "#.#.#.#.#.#.#.#.#.#.x.#.#.#.#.#.#.#.#.y")]);
        let key = vec!["a"; 200].join(".");
        let started = std::time::Instant::now();
        assert!(exchange.route(&key, &[]).is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(exchange.route("a.x.b.y", &[]), vec!["q"]);
    }

    #[test]
    fn reference_matcher_agrees_with_the_documented_examples() {
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(!topic_matches("a.*", "a"));
        assert!(topic_matches("#.c", "c"));
        assert!(!topic_matches("a.*.c", "a.c"));
    }

    #[test]
    fn describe_lists_keys_patterns_and_headers_arguments() {
        let mut direct = Bindings::new(ExchangeKind::Direct);
        direct.bind("b", "key2", None);
        direct.bind("a", "key1", None);
        direct.bind("a", "key1", None);
        assert_eq!(
            direct.describe(),
            vec![
                ("a".to_string(), "key1".to_string(), vec![]),
                ("b".to_string(), "key2".to_string(), vec![]),
            ]
        );
        let patterns = topic(&[("q", "orders.#"), ("q", "*.eu")]);
        let described: Vec<String> = patterns
            .describe()
            .into_iter()
            .map(|(_, key, _)| key)
            .collect();
        assert_eq!(described, ["*.eu", "orders.#"]);
        let mut fanout = Bindings::new(ExchangeKind::Fanout);
        fanout.bind("all", "ignored", None);
        assert_eq!(
            fanout.describe(),
            vec![("all".to_string(), String::new(), vec![])]
        );
        let mut headers = Bindings::new(ExchangeKind::Headers);
        let args = HeadersArgs::from_pairs([("x-match", "any"), ("format", "pdf")]).unwrap();
        headers.bind("docs", "", Some(&args));
        let pairs = vec![
            ("x-match".to_string(), "any".to_string()),
            ("format".to_string(), "pdf".to_string()),
        ];
        assert_eq!(
            headers.describe(),
            vec![("docs".to_string(), String::new(), pairs.clone())]
        );
        let round_trip: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(HeadersArgs::from_pairs(round_trip).unwrap(), args);
    }

    #[test]
    fn describe_forgets_unbound_and_removed_queues() {
        let mut direct = Bindings::new(ExchangeKind::Direct);
        direct.bind("a", "k", None);
        direct.bind("b", "k", None);
        direct.unbind("a", "k", None);
        direct.remove_queue("b");
        assert!(direct.describe().is_empty());
    }
}
