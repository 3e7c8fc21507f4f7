#!/usr/bin/env bash
# Replicated queues beside a single node, on one machine (issue #21):
#   BIN=target/release PYTHON=target/test-clients/venv/bin/python \
#     SIZES="100 1024" MESSAGES=100000 REPS=2 benches/scripts/replicated-queue-perf.sh
#
# Per size and repetition: a lone wharfd takes `wharf perf queue --confirm` (publish with
# confirms, then consume with manual acks) on a durable queue; then three wharfd processes
# (a cluster on this machine, sharing its cores) take the same run on a durable queue
# replicated on all three (declared with --replication-factor 3, so a BEFORE= build from
# before the default factor takes it too), through the node that leads it (found in
# /metrics). Prints one line per run: setup, size, publish msgs/s,
# consume msgs/s; then the ratios replicated/single of the medians per size.
#
# BEFORE=DIR (optional) names a directory with an older build's wharfd and wharf: each
# repetition then also runs the replicated setup with it ("before" lines, and the ratio
# after/before per size).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
PYTHON=${PYTHON:-target/test-clients/venv/bin/python}
SIZES=${SIZES:-"100 1024"}
MESSAGES=${MESSAGES:-100000}
REPS=${REPS:-2}
PREFETCH=${PREFETCH:-1000}
ACK_EVERY=${ACK_EVERY:-100}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

perf() { # broker queue size
  "$WHARF_BIN/wharf" --broker "$1" perf queue --queue "$2" --messages "$MESSAGES" --size "$3" \
    --confirm --prefetch "$PREFETCH" --ack-every "$ACK_EVERY" --json | tail -1
}

summary() { # setup size json
  "$PYTHON" -c '
import json, sys
setup, size, doc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(setup, size, round(doc["messages_per_second"]), round(doc["consume_messages_per_second"]))
' "$1" "$2" "$3"
}

single() { # size rep
  local dir="$work/single-$1-$2"
  "$WHARF_BIN/wharfd" --data-dir "$dir" --listen 127.0.0.1:17420 --kafka-listen off \
    --amqp-listen off --http-listen off >"$dir.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port 17420
  "$WHARF_BIN/wharf" --broker 127.0.0.1:17420 queue declare "single-$1" --durable >/dev/null
  summary single "$1" "$(perf 127.0.0.1:17420 "single-$1" "$1")"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

replicated() { # size rep [label]
  local label=${3:-replicated}
  local dir="$work/$label-$1-$2" peers="1@127.0.0.1:27521,2@127.0.0.1:27522,3@127.0.0.1:27523"
  local started=()
  for n in 1 2 3; do
    "$WHARF_BIN/wharfd" --data-dir "$dir/node-$n" --node-id "$n" --cluster-peers "$peers" \
      --listen "127.0.0.1:$((27420 + n))" --kafka-listen off --amqp-listen off \
      --http-listen "127.0.0.1:$((27480 + n))" >"$dir-node-$n.log" 2>&1 &
    started+=($!)
    pids+=($!)
  done
  for n in 1 2 3; do wait_port $((27420 + n)); done
  local queue="$label-$1"
  for _ in $(seq 1 100); do
    # Refused until all three nodes registered (a factor above the node count).
    if "$WHARF_BIN/wharf" --broker 127.0.0.1:27421 queue declare "$queue" --durable \
      --replication-factor 3 >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  # The node whose member leads the queue's log, once all three agree.
  local leader=""
  for _ in $(seq 1 100); do
    leader=$("$PYTHON" - "$queue" <<'EOF'
import sys, urllib.request
queue = sys.argv[1]
seen = set()
for n in (1, 2, 3):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{27480 + n}/metrics", timeout=2).read().decode()
    except Exception:
        sys.exit(0)
    prefix = f'wharf_queue_replica_leader{{queue="{queue}"}} '
    seen.add(next((line[len(prefix):].strip() for line in body.splitlines() if line.startswith(prefix)), "-1"))
if len(seen) == 1 and seen != {"-1"}:
    print(int(float(seen.pop())))
EOF
)
    if [[ -n "$leader" ]]; then break; fi
    sleep 0.2
  done
  [[ -n "$leader" ]] || { echo "no leader of $queue" >&2; return 1; }
  local broker="127.0.0.1:$((27420 + leader))"
  # The leader starts the queue's task once it applied its whole log: warm up first.
  for _ in $(seq 1 50); do
    if "$WHARF_BIN/wharf" --broker "$broker" perf queue --queue "$queue" --messages 100 \
      --size "$1" --confirm --json >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  summary "$label" "$1" "$(perf "$broker" "$queue" "$1")"
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
}

results="$work/results"
for size in $SIZES; do
  for rep in $(seq 1 "$REPS"); do
    mkdir -p "$work/single-$size-$rep" "$work/replicated-$size-$rep" "$work/before-$size-$rep"
    # Not in a pipeline: the started pids must reach this shell's cleanup.
    WHARF_BIN=$BIN single "$size" "$rep" >>"$results"
    WHARF_BIN=$BIN replicated "$size" "$rep" >>"$results"
    if [[ -n "${BEFORE:-}" ]]; then
      WHARF_BIN=$BEFORE replicated "$size" "$rep" before >>"$results"
      tail -3 "$results"
    else
      tail -2 "$results"
    fi
  done
done
"$PYTHON" - "$results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
for size in sorted({row[1] for row in rows}, key=int):
    def med(setup, column):
        return statistics.median(float(r[column]) for r in rows if r[0] == setup and r[1] == size)
    for column, what in ((2, "publish"), (3, "consume")):
        line = f"size {size} {what}: replicated/single = {med('replicated', column) / med('single', column):.2f}"
        if any(r[0] == "before" and r[1] == size for r in rows):
            line += f", replicated/before = {med('replicated', column) / med('before', column):.2f}"
        print(line)
EOF
