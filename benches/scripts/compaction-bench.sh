#!/usr/bin/env bash
# The log cleaner's throughput and what it costs other topics (issue #19).
#
# Fills topic `kv` (one partition, 64 MiB segments) with RECORDS keyed records of SIZE bytes
# over KEYS keys (10 % live by default: 1 GiB of 1 KiB records over 100,000 keys) with
# confluent-kafka, then measures `wharf perf produce` on another topic alone, switches `kv`
# to cleanup.policy=compact, and measures the same produce again while the cleaner runs.
# Prints the cleaner's log line (bytes before/after, bytes read, time) and both produce rates.
#
#   PYTHON=target/test-clients/venv/bin/python BIN=target/release benches/scripts/compaction-bench.sh
#
# Env: BIN (wharfd and wharf), PYTHON (with confluent-kafka), RECORDS (1048576), KEYS (104858),
# SIZE (1024), PERF_N (4000000 records of 100 B), IO_RATE (cleaner_io_bytes_per_second, 0: none;
# a limit that stretches the pass over the whole produce run measures the overlap fully),
# DATA (/tmp/wharf-compaction-bench),
# PORT (7497), KAFKA_PORT (9497).
set -euo pipefail
BIN=${BIN:-target/release}
PYTHON=${PYTHON:-target/test-clients/venv/bin/python}
RECORDS=${RECORDS:-1048576}
KEYS=${KEYS:-104858}
SIZE=${SIZE:-1024}
PERF_N=${PERF_N:-4000000}
IO_RATE=${IO_RATE:-0}
DATA=${DATA:-/tmp/wharf-compaction-bench}
PORT=${PORT:-7497}
KAFKA_PORT=${KAFKA_PORT:-9497}

rm -rf "$DATA"; mkdir -p "$DATA"
printf 'cleaner_backoff_ms = 500\ncleaner_io_bytes_per_second = %s\n' "$IO_RATE" > "$DATA.toml"
RUST_LOG=info "$BIN/wharfd" --config "$DATA.toml" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
  --kafka-listen "127.0.0.1:$KAFKA_PORT" --amqp-listen off --http-listen off > "$DATA.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
wharf() { "$BIN/wharf" --broker "127.0.0.1:$PORT" "$@"; }
wharf topic create kv --partitions 1 --config segment.bytes=67108864 > /dev/null

fill_started=$(date +%s.%N)
"$PYTHON" - "127.0.0.1:$KAFKA_PORT" "$RECORDS" "$KEYS" "$SIZE" <<'PY'
import os, sys
from confluent_kafka import Producer
bootstrap, records, keys, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                     "batch.size": 1048576, "queue.buffering.max.kbytes": 1048576})
payload = os.urandom(size // 2).hex().encode()
for i in range(records):
    while True:
        try:
            producer.produce("kv", key=b"k%07d" % (i % keys), value=payload)
            break
        except BufferError:
            producer.poll(0.01)
    if i % 10000 == 0:
        producer.poll(0)
assert producer.flush(120) == 0
PY
fill_done=$(date +%s.%N)
echo "fill: $RECORDS records of $SIZE B over $KEYS keys in $(echo "$fill_done - $fill_started" | bc) s"
du -sb "$DATA/kv-0" | awk '{print "kv before cleaning: " $1 " bytes"}'

perf() { wharf --json perf produce --topic "$1" --messages "$PERF_N" --size 100 | tail -1 | grep -o '"messages_per_second":[0-9.]*'; }
echo "produce alone:          $(perf other-alone)"
wharf topic alter kv --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.5 > /dev/null
# Started at once: the cleaner picks the topic up within cleaner_backoff_ms (500 ms).
beside_started=$(date +%s.%N)
echo "produce beside cleaner: $(perf other-beside)"
echo "the produce run took $(echo "$(date +%s.%N) - $beside_started" | bc) s from the alter"

for _ in $(seq 1 600); do grep -aq 'log cleaner pass' "$DATA.log" && break; sleep 0.5; done
grep -a 'log cleaner pass' "$DATA.log" | sed 's/.*log cleaner pass/log cleaner pass/'
grep -a 'log cleaner pass' "$DATA.log" | head -1 | awk '{
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  printf "cleaner: %.1f MB/s of segments cleaned (%d bytes in %d ms), %.1f MB/s read\n",
    v["bytes_before"] / 1e6 / (v["took_ms"] / 1e3), v["bytes_before"], v["took_ms"], v["bytes_read"] / 1e6 / (v["took_ms"] / 1e3)
}'
du -sb "$DATA/kv-0" | awk '{print "kv after cleaning: " $1 " bytes"}'
