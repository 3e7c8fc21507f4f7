#!/usr/bin/env bash
# Replicated produce beside a single node, on one machine (issue #21):
#   BIN=target/release PYTHON=target/test-clients/venv/bin/python \
#     SIZES="100 1024" MESSAGES=200000 REPS=2 benches/scripts/replicated-perf.sh
#
# Per size and repetition: a lone wharfd takes `wharf perf produce --acks all` on a topic of
# one partition; then three wharfd processes (a cluster on this machine, sharing its cores)
# take the same run on a topic of one partition with replication factor 3 (created through
# Kafka CreateTopics with confluent-kafka, which builds from before `wharf topic create
# --replication-factor` (2026-12-06) take too, so BEFORE= can name one). Prints
# one line per run: setup, size, msgs/s, p50/p99 ack latency (us), and the ratio
# replicated/single of the medians per size.
#
# BEFORE=DIR (optional) names a directory with an older build's wharfd and wharf: each
# repetition then also runs the replicated setup with it ("before" lines, and the ratio
# after/before per size), so a change is measured against its base in one run.
#
# CLUSTER_TLS=1 (optional): each repetition also runs the replicated setup with mutual TLS
# on the internal wire (--cluster-tls-ca; a CA and one node certificate for 127.0.0.1 made
# here with openssl): "tls" lines, and the ratio tls/replicated per size.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
PYTHON=${PYTHON:-target/test-clients/venv/bin/python}
SIZES=${SIZES:-"100 1024"}
MESSAGES=${MESSAGES:-200000}
REPS=${REPS:-2}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT

tls_args=()
if [[ -n "${CLUSTER_TLS:-}" ]]; then
  pki="$work/pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-cluster-ca -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench-node \
    -keyout "$pki/node.key" -out "$pki/node.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$pki/ext"
  openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/ext" -out "$pki/node.pem" 2>/dev/null
  tls_args=(--tls-cert "$pki/node.pem" --tls-key "$pki/node.key" --cluster-tls-ca "$pki/ca.pem")
fi

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

perf() { # broker topic size
  "$WHARF_BIN/wharf" --broker "$1" perf produce --topic "$2" --messages "$MESSAGES" --size "$3" \
    --acks all --json | tail -1
}

summary() { # setup size json
  "$PYTHON" -c '
import json, sys
setup, size, doc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rate = doc["messages_per_second"]
print(setup, size, round(rate), doc.get("p50_us", "-"), doc.get("p99_us", "-"))
' "$1" "$2" "$3"
}

single() { # size rep
  local dir="$work/single-$1-$2"
  "$BIN/wharfd" --data-dir "$dir" --listen 127.0.0.1:17420 --kafka-listen off \
    --amqp-listen off --http-listen off >"$dir.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port 17420
  summary single "$1" "$(perf 127.0.0.1:17420 "single-$1" "$1")"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

replicated() { # size rep [label]
  local label=${3:-replicated}
  local dir="$work/$label-$1-$2" peers="1@127.0.0.1:27521,2@127.0.0.1:27522,3@127.0.0.1:27523"
  local started=() extra=()
  if [[ "$label" == tls ]]; then extra=("${tls_args[@]}"); fi
  for n in 1 2 3; do
    "$WHARF_BIN/wharfd" --data-dir "$dir/node-$n" --node-id "$n" --cluster-peers "$peers" \
      --listen "127.0.0.1:$((27420 + n))" --kafka-listen "127.0.0.1:$((29092 + n))" \
      --amqp-listen off --http-listen off "${extra[@]}" >"$dir-node-$n.log" 2>&1 &
    started+=($!)
    pids+=($!)
  done
  for n in 1 2 3; do wait_port $((27420 + n)); done
  "$PYTHON" - "127.0.0.1:29093" "replicated-$1" <<'EOF'
import sys, time
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap, topic = sys.argv[1:3]
deadline = time.time() + 60
while True:
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])[topic].result(timeout=10)
        break
    except Exception as error:
        if "TOPIC_ALREADY_EXISTS" in str(error):
            break
        if time.time() > deadline:
            raise
        time.sleep(0.5)
while True:
    described = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=10).topics[topic]
    if described.error is None and described.partitions[0].leader >= 0:
        break
    time.sleep(0.2)
EOF
  # Until the group has elected its leader, produce is refused (retriable): warm up first.
  "$WHARF_BIN/wharf" --broker 127.0.0.1:27421 perf produce --topic "replicated-$1" --messages 1000 \
    --size "$1" --acks all --json >/dev/null 2>&1 || sleep 2
  summary "$label" "$1" "$(perf 127.0.0.1:27421 "replicated-$1" "$1")"
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
}

results="$work/results"
for size in $SIZES; do
  for rep in $(seq 1 "$REPS"); do
    mkdir -p "$work/single-$size-$rep" "$work/replicated-$size-$rep" "$work/before-$size-$rep" \
      "$work/tls-$size-$rep"
    # Not in a pipeline: the started pids must reach this shell's cleanup.
    WHARF_BIN=$BIN single "$size" "$rep" >>"$results"
    WHARF_BIN=$BIN replicated "$size" "$rep" >>"$results"
    lines=2
    if [[ -n "${BEFORE:-}" ]]; then
      WHARF_BIN=$BEFORE replicated "$size" "$rep" before >>"$results"
      lines=$((lines + 1))
    fi
    if [[ -n "${CLUSTER_TLS:-}" ]]; then
      WHARF_BIN=$BIN replicated "$size" "$rep" tls >>"$results"
      lines=$((lines + 1))
    fi
    tail -n "$lines" "$results"
  done
done
"$PYTHON" - "$results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
for size in sorted({row[1] for row in rows}, key=int):
    med = lambda setup: statistics.median(float(r[2]) for r in rows if r[0] == setup and r[1] == size)
    print(f"size {size}: replicated/single = {med('replicated') / med('single'):.2f}")
    if any(r[0] == "before" and r[1] == size for r in rows):
        print(f"size {size}: before/single = {med('before') / med('single'):.2f}, "
              f"replicated/before = {med('replicated') / med('before'):.2f}")
    if any(r[0] == "tls" and r[1] == size for r in rows):
        print(f"size {size}: tls/single = {med('tls') / med('single'):.2f}, "
              f"tls/replicated = {med('tls') / med('replicated'):.2f}")
EOF
