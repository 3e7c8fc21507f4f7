//! A bound on how deeply AMQP field tables and arrays nest in some bytes, found without
//! parsing them.
//!
//! amq-protocol's field-table parser calls itself once per nested table or array, with no
//! limit of its own: a frame holding thousands of nested tables would overflow the stack of
//! the worker thread that parses it, and a stack overflow aborts the whole process (it is
//! not a panic that `catch_unwind` could stop). So every byte string the front end hands to
//! that parser (method and content-header frames, AMQPLAIN responses, stored header
//! tables) is checked here first and refused when its nesting could exceed
//! [`NESTING_MAX`].
//!
//! The check does not need to know where the tables are. A nested table or array is always
//! a type byte (`F` or `A`) followed by a four-byte length, and it lies inside its parent.
//! So the function treats every `F` or `A` followed by a length that fits in the input as a
//! possible container. The longest chain of such extents, each one inside the one before,
//! is then an upper bound on the real depth. Bytes that only look like containers can make
//! the bound larger than the real depth, but never smaller.

/// Deepest nesting of field tables and arrays the AMQP front end parses (RabbitMQ's own
/// clients send two or three levels at most: `x-death` is an array of tables).
pub const NESTING_MAX: usize = 32;

/// An upper bound on the nesting depth of field tables and arrays within `bytes`.
pub fn nesting_bound(bytes: &[u8]) -> usize {
    // Ends of the possible containers, in the order of their starts (strictly increasing).
    let mut ends = Vec::new();
    for (start, byte) in bytes.iter().enumerate() {
        if *byte != b'F' && *byte != b'A' {
            continue;
        }
        let Some(length) = bytes.get(start + 1..start + 5) else {
            break;
        };
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        let Some(end) = usize::try_from(length)
            .ok()
            .and_then(|length| (start + 5).checked_add(length))
        else {
            continue;
        };
        if end <= bytes.len() {
            ends.push(end);
        }
    }
    // A chain of nested extents has increasing starts and non-increasing ends: its length is
    // that of the longest non-increasing run of `ends` (patience sorting, O(n log n)).
    // `tails[k]` is the largest possible last end of such a run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    for end in ends {
        // The first run whose last end is smaller than this one cannot be followed by it.
        let index = tails.partition_point(|tail| *tail >= end);
        match tails.get_mut(index) {
            Some(tail) => *tail = end,
            None => tails.push(end),
        }
    }
    tails.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` arrays, each holding the next, the innermost empty.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&u32::try_from(inner.len()).unwrap().to_be_bytes());
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        inner
    }

    #[test]
    fn counts_real_nesting() {
        assert_eq!(nesting_bound(&[]), 0);
        assert_eq!(nesting_bound(&nested_arrays(1)), 1);
        assert_eq!(nesting_bound(&nested_arrays(3)), 3);
        assert!(nesting_bound(&nested_arrays(30_000)) >= 30_000);
    }

    #[test]
    fn siblings_do_not_add_up() {
        // A table of 50 entries, each an empty table: one level, not fifty.
        let mut entries = Vec::new();
        for index in 0..50u8 {
            entries.push(1);
            entries.push(b'a' + index % 26);
            entries.extend_from_slice(&[b'F', 0, 0, 0, 0]);
        }
        assert_eq!(nesting_bound(&entries), 1);
    }

    #[test]
    fn lengths_past_the_end_are_not_containers() {
        // Text full of F and A, as a routing key or a string value may be.
        let text = "FAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFAFA".repeat(100);
        assert_eq!(nesting_bound(text.as_bytes()), 0);
    }

    #[test]
    fn never_below_the_real_depth_whatever_surrounds_it() {
        for depth in [1usize, 2, 5, NESTING_MAX, NESTING_MAX + 1] {
            let mut bytes = b"FFFF\xff\xff\xff\xffAA".to_vec();
            bytes.extend_from_slice(&nested_arrays(depth));
            bytes.extend_from_slice(b"A\0\0\0\x05F");
            assert!(nesting_bound(&bytes) >= depth, "depth {depth}");
        }
    }
}
