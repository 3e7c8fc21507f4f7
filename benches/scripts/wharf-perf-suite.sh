#!/usr/bin/env bash
# Runs the `wharf perf` workloads that docs/BENCHMARKS.md compares with
# ../shared/peerbench (same sizes, message counts, caps, rate and duration), each against a
# fresh release `wharfd` with an empty data dir, and prints one line per run:
#   WHARF <workload> size=<bytes> rep=<n> rss_kb=<broker VmHWM> <the perf JSON>
#
#   benches/scripts/wharf-perf-suite.sh                 # sizes 100 1024, 3 reps
#   SIZES=100 REPS=1 benches/scripts/wharf-perf-suite.sh
#
# Env: BIN (dir with release wharfd and wharf; default $CARGO_TARGET_DIR/release or
# target/release), DATA (default /tmp/wharf-perf-data), PORT (7499), SIZES, REPS, N
# (1,000,000 per throughput run), MAX_SECS (15), RATE (5000), LAT_SECS (10), QUEUE_N
# (200,000), PREFETCH (queue consumer's window, 1,000: as the peers are measured),
# WORKLOADS (default "produce consume e2e e2e-leader queue queue-e2e"; queue-e2e is
# peerbench's latency case for a durable queue: publish with confirms at RATE, push
# delivery, cumulative acks every 100, prefetch PREFETCH), SETTLE_SECS (1: after a
# `sync` before each broker start, so one run's dirty pages do not land on the next's fsyncs).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
DATA=${DATA:-/tmp/wharf-perf-data}
PORT=${PORT:-7499}
SIZES=${SIZES:-"100 1024"}
REPS=${REPS:-3}
N=${N:-1000000}
MAX_SECS=${MAX_SECS:-15}
RATE=${RATE:-5000}
LAT_SECS=${LAT_SECS:-10}
QUEUE_N=${QUEUE_N:-200000}
WORKLOADS=${WORKLOADS:-"produce consume e2e e2e-leader queue queue-e2e"}
PREFETCH=${PREFETCH:-1000}
SETTLE_SECS=${SETTLE_SECS:-1}
ADDR=127.0.0.1:$PORT
BROKER_PID=

start() { # keep-data?
  [ "${1:-}" = keep ] || { rm -rf "$DATA"; mkdir -p "$DATA"; }
  # The previous run's dirty pages are written back first, so they do not land on this
  # run's fsyncs (a 1 KiB e2e run right after a 1 GB produce had a 65 ms p99 without it).
  sync; sleep "$SETTLE_SECS"

  "$BIN/wharfd" --data-dir "$DATA" --listen "$ADDR" > "$DATA.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "wharfd did not start" >&2; cat "$DATA.log" >&2; return 1
}
stop() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
}
rss() { awk '/VmHWM/ {print $2}' "/proc/$BROKER_PID/status"; }
trap stop EXIT

LAST_JSON=
run() { # workload size rep -- perf args...
  local workload=$1 size=$2 rep=$3; shift 3
  LAST_JSON=$("$BIN/wharf" --broker "$ADDR" --json perf "$@" 2>/dev/null | tail -1)
  echo "WHARF $workload size=$size rep=$rep rss_kb=$(rss) $LAST_JSON"
}
PRODUCED=$N

for size in $SIZES; do
  for rep in $(seq 1 "$REPS"); do
    for workload in $WORKLOADS; do
      case $workload in
        produce)
          start
          run produce "$size" "$rep" produce --topic t --messages "$N" --size "$size" --max-seconds "$MAX_SECS"
          PRODUCED=$(echo "$LAST_JSON" | grep -o '"messages":[0-9]*' | cut -d: -f2)
          stop
          ;;
        consume)
          # Reads back what the produce run left, on a restarted broker (its own RSS).
          start keep
          run consume "$size" "$rep" consume --topic t --messages "${PRODUCED:-$N}"
          stop
          ;;
        e2e)
          start
          run e2e-acks-all "$size" "$rep" e2e --topic e --rate "$RATE" --seconds "$LAT_SECS" --size "$size"
          stop
          ;;
        e2e-leader)
          # acks=leader on a topic that fsyncs every second (`flush=interval`), like the
          # peer it is compared with (Redis appendfsync everysec): under `flush=always` a
          # consumer only sees fsynced records, whatever the producer's acks.
          start
          "$BIN/wharf" --broker "$ADDR" topic create e --partitions 1 --config flush=interval > /dev/null
          run e2e-acks-leader-interval "$size" "$rep" e2e --topic e --rate "$RATE" --seconds "$LAT_SECS" --size "$size" --acks leader
          stop
          ;;
        queue)
          start
          run queue "$size" "$rep" queue --queue q --messages "$QUEUE_N" --size "$size" --confirm \
            --prefetch "$PREFETCH"
          stop
          ;;
        queue-e2e)
          start
          run queue-e2e "$size" "$rep" queue-e2e --queue q --rate "$RATE" --seconds "$LAT_SECS" \
            --size "$size" --prefetch "$PREFETCH" --ack-every 100
          stop
          ;;
      esac
    done
  done
done
