//! Criterion benchmarks of Wharf; see benches/benches/ and docs/BENCHMARKS.md.
