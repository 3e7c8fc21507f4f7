#!/usr/bin/env bash
# The AMQP performance table of issue #16, in one run on one machine: the same load
# generators against wharfd's AMQP listener and against RabbitMQ 3.10 quorum and classic
# queues, plus wharfd's native queue path, and one RESULT line per run:
#
#   RESULT peer=<label> client=<tool> case=produce|consume size=<bytes> n=<msgs> msgs_per_s=<rate>
#
#   benches/scripts/amqp-vs-rabbitmq-perf.sh               # sizes 100 1024, 2 reps
#   SIZES=100 REPS=1 N=100000 benches/scripts/amqp-vs-rabbitmq-perf.sh
#
# Clients:
# - `wharf perf amqp` (RabbitMQ PerfTest's method): one publisher publishes N persistent
#   messages (delivery mode 2) with confirms, at most 1,000 unconfirmed, to a durable queue
#   declared afresh with `x-queue-type`; then one consumer on a new connection reads them
#   back with prefetch 1,000, acking cumulatively every ACK_EVERY (100).
# - ../shared/peerbench's lapin loadgen (when built or buildable), the same method on lapin.
# - `wharf perf queue --prefetch 1000 --ack-every ACK_EVERY` for the native path, at the
#   same ack cadence (runs before 2026-12-05 had it ack every 500, half its prefetch); its
#   publisher batches messages into PublishBatch requests.
# Wharf's queues are one kind (durable, fsynced before the confirm) whatever x-queue-type
# says; RabbitMQ's quorum queues fsync their Raft log, its classic queues do not fsync per
# confirm batch the same way.
#
# Env: BIN (release wharfd and wharf; default $CARGO_TARGET_DIR/release or target/release),
# SIZES, REPS (2), N (200,000 per run), ACK_EVERY (100), PEERBENCH (../shared/peerbench; LAPIN=0 skips the
# lapin loadgen), RABBIT=0 skips RabbitMQ (scripts/rabbitmq-node.sh starts a throwaway node).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
SIZES=${SIZES:-"100 1024"}
REPS=${REPS:-2}
N=${N:-200000}
ACK_EVERY=${ACK_EVERY:-100}
PEERBENCH=${PEERBENCH:-../shared/peerbench}
LAPIN=${LAPIN:-1}
RABBIT=${RABBIT:-1}
WORK=$(mktemp -d /tmp/amqp-perf.XXXXXX)
NATIVE_PORT=7498
AMQP_PORT=5698
RABBIT_PORT=5699
BROKER_PID=

[ -x "$BIN/wharfd" ] && [ -x "$BIN/wharf" ] || {
  echo "no release wharfd/wharf in $BIN: cargo build --release first" >&2
  exit 2
}
LG=$PEERBENCH/loadgen/target/release/loadgen
if [ "$LAPIN" = 1 ] && [ ! -x "$LG" ]; then
  (cd "$PEERBENCH/loadgen" && cargo build --release -q) || LAPIN=0
fi

wait_port() { # port
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
start_wharf() {
  rm -rf "$WORK/data"
  "$BIN/wharfd" --data-dir "$WORK/data" --listen "127.0.0.1:$NATIVE_PORT" \
    --amqp-listen "127.0.0.1:$AMQP_PORT" --kafka-listen off --http-listen off \
    > "$WORK/wharfd.log" 2>&1 &
  BROKER_PID=$!
  wait_port "$AMQP_PORT" || { echo "wharfd did not start" >&2; cat "$WORK/wharfd.log" >&2; exit 1; }
}
stop_wharf() {
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=
}
. scripts/rabbitmq-node.sh
trap 'stop_wharf; rabbitmq_stop; rm -rf "$WORK"' EXIT

# A perf JSON summary (publish fields, then consume_*) as two RESULT lines.
results() { # peer client size json
  python3 - "$@" <<'EOF'
import json, sys
peer, client, size, summary = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print("RESULT peer=%s client=%s case=produce size=%s n=%d msgs_per_s=%.0f"
      % (peer, client, size, summary["messages"], summary["messages_per_second"]))
print("RESULT peer=%s client=%s case=consume size=%s n=%d msgs_per_s=%.0f"
      % (peer, client, size, summary["consume_messages"], summary["consume_messages_per_second"]))
EOF
}
# The lapin loadgen's RESULT lines in the same shape.
lapin() { # peer url kind size
  PEER_LABEL="$1" AMQP_URL="$2" timeout 300 "$LG" throughput --peer "rabbit-$3" --size "$4" \
      --n "$N" --max-secs 60 \
    | awk -v size="$4" '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        printf "RESULT peer=%s client=lapin case=%s size=%s n=%s msgs_per_s=%s\n", f["peer"], f["case"], size, f["n"], f["msgs_per_s"] }'
}
perf_amqp() { # peer url kind size
  results "$1" wharf-perf-amqp "$4" "$("$BIN/wharf" --json perf amqp --url "$2" --queue perf \
    --queue-type "$3" --messages "$N" --size "$4" --ack-every "$ACK_EVERY")"
}

for size in $SIZES; do
  for rep in $(seq 1 "$REPS"); do
    for kind in quorum classic; do
      start_wharf
      perf_amqp "wharf-amqp-$kind" "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f" "$kind" "$size"
      stop_wharf
      if [ "$LAPIN" = 1 ]; then
        start_wharf
        lapin "wharf-amqp-$kind" "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f" "$kind" "$size"
        stop_wharf
      fi
    done
    start_wharf
    results wharf-native wharf-perf-queue "$size" "$("$BIN/wharf" --broker "127.0.0.1:$NATIVE_PORT" \
      --json perf queue --queue q --messages "$N" --size "$size" --prefetch 1000 \
      --ack-every "$ACK_EVERY")"
    stop_wharf
  done
done

if [ "$RABBIT" = 1 ]; then
  rabbitmq_start "$RABBIT_PORT" >&2
  for size in $SIZES; do
    for rep in $(seq 1 "$REPS"); do
      for kind in quorum classic; do
        perf_amqp "rabbit-$kind" "amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f" "$kind" "$size"
        if [ "$LAPIN" = 1 ]; then
          lapin "rabbit-$kind" "amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f" "$kind" "$size"
        fi
      done
    done
  done
fi
