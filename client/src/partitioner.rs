//! Choosing a partition for a record: key hashing, jump consistent hashing and sticky
//! partitioning for records without a key.
//!
//! - [`murmur2`] is MurmurHash2 (32-bit, seed `0x9747b28c`) exactly as Kafka's Java client
//!   computes it, so a key lands on the partition a Kafka client would choose:
//!   `(murmur2(key) & 0x7fffffff) % partitions`.
//! - [`jump_consistent_hash`] is Lamping and Veach's jump consistent hash: growing a topic
//!   from `n` to `n + 1` partitions moves only about `1 / (n + 1)` of the keys.
//! - Records without a key stick to one partition until its batch is sealed, then switch
//!   (Kafka's sticky partitioner): batches fill up instead of one record per partition.
//!
//! Everything here is pure and deterministic for a given key and partition count.

/// How a keyed record's partition is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// `murmur2(key) mod partitions`, as Kafka's default partitioner: stable for a fixed
    /// partition count, but adding partitions moves most keys.
    #[default]
    Murmur2,
    /// Jump consistent hash of `murmur2(key)`: adding partitions moves few keys.
    Consistent,
}

impl Partitioner {
    /// The partition of `key` among `partition_count` (> 0) partitions.
    pub fn partition(self, key: &[u8], partition_count: u32) -> u32 {
        debug_assert!(partition_count > 0);
        let partition_count = partition_count.max(1);
        let hash = murmur2(key);
        match self {
            Partitioner::Murmur2 => (hash & 0x7fff_ffff) % partition_count,
            Partitioner::Consistent => {
                let buckets = i32::try_from(partition_count).unwrap_or(i32::MAX);
                let bucket = jump_consistent_hash(u64::from(hash), buckets);
                u32::try_from(bucket).expect("jump hash returns a bucket in 0..buckets")
            }
        }
    }
}

/// MurmurHash2, 32-bit, with Kafka's seed, over `data`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    // Kafka hashes Java arrays, whose length is an i32; truncation matches it.
    let mut hash = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        hash ^= u32::from(tail[0]);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash
}

/// Lamping and Veach's jump consistent hash: the bucket of `key` in `0..buckets`
/// (`buckets` > 0; a non-positive count yields 0).
pub fn jump_consistent_hash(mut key: u64, buckets: i32) -> i32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    i32::try_from(bucket.max(0)).expect("bucket below an i32 count")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_vectors() {
        // Apache Kafka's UtilsTest.testMurmur2 vectors (Java signed ints).
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn murmur2_partition_matches_kafka_default_partitioner() {
        assert_eq!(Partitioner::Murmur2.partition(b"foobar", 50), 16);
    }

    #[test]
    fn same_key_same_partition() {
        for partitioner in [Partitioner::Murmur2, Partitioner::Consistent] {
            for index in 0..200 {
                let key = format!("user-{index}");
                let first = partitioner.partition(key.as_bytes(), 12);
                assert!(first < 12);
                assert_eq!(partitioner.partition(key.as_bytes(), 12), first);
            }
        }
    }

    #[test]
    fn jump_hash_single_bucket_is_zero() {
        for key in 0..100 {
            assert_eq!(jump_consistent_hash(key, 1), 0);
        }
    }

    #[test]
    fn jump_hash_moves_about_one_in_n_plus_one_keys_when_growing() {
        // Goal: adding one partition moves ~1/(n+1) of the keys, and only onto the new one.
        let key_count = 20_000u32;
        for partitions in [1u32, 4, 9, 16] {
            let mut moved = 0u32;
            for index in 0..key_count {
                let key = format!("key-{index}");
                let before = Partitioner::Consistent.partition(key.as_bytes(), partitions);
                let after = Partitioner::Consistent.partition(key.as_bytes(), partitions + 1);
                if before != after {
                    assert_eq!(after, partitions, "a moved key goes to the new partition");
                    moved += 1;
                }
            }
            let expected = f64::from(key_count) / f64::from(partitions + 1);
            let ratio = f64::from(moved) / expected;
            assert!(
                (0.85..1.15).contains(&ratio),
                "{partitions}->{}: moved {moved}, expected ~{expected}",
                partitions + 1
            );
        }
    }

    #[test]
    fn murmur2_modulo_moves_most_keys_when_growing() {
        // The contrast that justifies the consistent option.
        let moved = (0..10_000)
            .filter(|index| {
                let key = format!("key-{index}");
                Partitioner::Murmur2.partition(key.as_bytes(), 8)
                    != Partitioner::Murmur2.partition(key.as_bytes(), 9)
            })
            .count();
        assert!(moved > 7_000, "moved {moved}");
    }

    #[test]
    fn partitions_spread_evenly() {
        let mut counts = [0u32; 6];
        for index in 0..60_000 {
            let key = format!("k{index}");
            counts[Partitioner::Murmur2.partition(key.as_bytes(), 6) as usize] += 1;
        }
        assert!(
            counts.iter().all(|count| (9_000..11_000).contains(count)),
            "{counts:?}"
        );
    }
}
