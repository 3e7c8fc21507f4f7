#!/usr/bin/env bash
# Builds `rdkafka_performance`, librdkafka's own load generator (examples/rdkafka_performance.c
# in librdkafka's sources), from the librdkafka that benches/kafka-perf builds: the same
# librdkafka version and build, linked statically. kafka-vs-native.sh runs it as the side
# `rdkafka` (issue #14: "measure with librdkafka ... or the confluent-kafka perf scripts").
# It reads through librdkafka's C API (a batch of messages per queue lock in consumer mode),
# where kafka-perf goes through the Rust `rdkafka` crate one message per `poll`.
#
#   CARGO_TARGET_DIR=/work/target-kafka-perf cargo build --release --manifest-path benches/kafka-perf/Cargo.toml
#   KAFKA_PERF_TARGET=/work/target-kafka-perf OUT=/work/rdkafka_performance benches/scripts/build-rdkafka-performance.sh
#
# Env: KAFKA_PERF_TARGET (kafka-perf's cargo target dir; default benches/kafka-perf/target),
# OUT (the binary to write; default $KAFKA_PERF_TARGET/release/rdkafka_performance), CC (cc).
set -euo pipefail
cd "$(dirname "$0")/../.."
KAFKA_PERF_TARGET=${KAFKA_PERF_TARGET:-benches/kafka-perf/target}
OUT=${OUT:-$KAFKA_PERF_TARGET/release/rdkafka_performance}
CC=${CC:-cc}
# rdkafka-sys copies librdkafka's source tree into its build's out dir and builds it there.
LIB=$(ls -t "$KAFKA_PERF_TARGET"/release/build/rdkafka-sys-*/out/src/librdkafka-static.a 2>/dev/null | head -1 || true)
if [ -z "$LIB" ]; then
  echo "no librdkafka-static.a under $KAFKA_PERF_TARGET/release/build: build kafka-perf first" >&2
  exit 1
fi
SRC=$(dirname "$(dirname "$LIB")")
"$CC" -O2 -o "$OUT" "$SRC/examples/rdkafka_performance.c" -I"$SRC/src" "$LIB" \
  -lpthread -lz -lm -ldl -lrt
echo "$OUT"
