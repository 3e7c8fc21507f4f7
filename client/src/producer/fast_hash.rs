//! A fast, non-cryptographic hasher for the producer's per-record map lookups (topic name,
//! and topic plus partition). The std default, SipHash-1-3, resists hash flooding by
//! untrusted keys; these keys are the application's own topic names, and SipHash showed up
//! at a few percent of `wharf perf produce`'s CPU (docs/BENCHMARKS.md).
//!
//! Method: FxHash's multiply-rotate over 8-byte words, as rustc uses for its own maps.

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FxHasher`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The hasher; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    fn hash_of(value: &(String, u32)) -> u64 {
        BuildHasherDefault::<FxHasher>::default().hash_one(value)
    }

    #[test]
    fn equal_keys_hash_equal_and_neighbours_differ() {
        let key = ("orders".to_string(), 3);
        assert_eq!(hash_of(&key), hash_of(&("orders".to_string(), 3)));
        assert_ne!(hash_of(&key), hash_of(&("orders".to_string(), 4)));
        assert_ne!(hash_of(&key), hash_of(&("orderz".to_string(), 3)));
        // The last, partial word still counts.
        assert_ne!(
            hash_of(&("a-long-topic-name".to_string(), 0)),
            hash_of(&("a-long-topic-nam".to_string(), 0))
        );
    }

    #[test]
    fn a_map_with_it_behaves_like_a_map() {
        let mut map: FastMap<(String, u32), u32> = FastMap::default();
        for partition in 0..1000 {
            map.insert(("t".to_string(), partition), partition * 2);
        }
        for partition in 0..1000 {
            assert_eq!(
                map.get(&("t".to_string(), partition)),
                Some(&(partition * 2))
            );
        }
        assert_eq!(map.len(), 1000);
    }
}
