#!/usr/bin/env bash
# Before/after of `wharf perf produce` (or consume, queue, amqp) between two builds, interleaved A B B A
# so that drift and order effects cancel, with the page cache written back between runs
# (`sync` and a pause): on this disk-bound workload a run that follows another pays for the
# other's dirty pages. Prints one line per run: side, size, rep, the broker's CPU ticks
# (utime + stime, 100 per second) and the perf JSON's messages_per_second.
#
#   A=/tmp/before B=target/release benches/scripts/ab-perf.sh
#
# Env: A, B (dirs with release wharfd and wharf), SIZES (default "100 1024"), REPS (6),
# N (1,000,000), WORKLOAD (produce | consume | queue; consume first produces N with the same
# build; queue publishes N with confirms awaited, then consumes them with manual acks;
# amqp does the same through the AMQP listener with `wharf perf amqp`, acks every 100),
# PREFETCH (queue and amqp, 1000: as the peers are measured), ACK_EVERY (queue and amqp: the
# consumer's cumulative ack every K deliveries; unset: amqp 100, queue half the prefetch;
# set it to compare the two paths at one cadence), PORT (7498), AMQP_PORT (5698),
# DATA (/tmp/wharf-ab), SETTLE_SECS (3). For queue and amqp the line adds the consume rate.
set -euo pipefail
A=${A:?dir of build A}
B=${B:?dir of build B}
SIZES=${SIZES:-"100 1024"}
REPS=${REPS:-6}
N=${N:-1000000}
WORKLOAD=${WORKLOAD:-produce}
PORT=${PORT:-7498}
DATA=${DATA:-/tmp/wharf-ab}
SETTLE_SECS=${SETTLE_SECS:-3}
PREFETCH=${PREFETCH:-1000}
AMQP_PORT=${AMQP_PORT:-5698}
ACK_EVERY=${ACK_EVERY:-}

run() { # label bin size rep
  local label=$1 bin=$2 size=$3 rep=$4
  rm -rf "$DATA"; mkdir -p "$DATA"
  "$bin/wharfd" --data-dir "$DATA" --listen "127.0.0.1:$PORT" --amqp-listen "127.0.0.1:$AMQP_PORT" \
    > "$DATA.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  local perf=("$bin/wharf" --broker "127.0.0.1:$PORT" --json perf)
  if [ "$WORKLOAD" = consume ]; then
    "${perf[@]}" produce --topic t --messages "$N" --size "$size" > /dev/null 2>&1
  fi
  local args=(--topic t --messages "$N")
  [ "$WORKLOAD" = produce ] && args+=(--size "$size")
  [ "$WORKLOAD" = queue ] && args=(--queue q --messages "$N" --size "$size" --confirm --prefetch "$PREFETCH"
    ${ACK_EVERY:+--ack-every "$ACK_EVERY"})
  [ "$WORKLOAD" = amqp ] && args=(--url "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f" --queue qa
    --messages "$N" --size "$size" --prefetch "$PREFETCH" --ack-every "${ACK_EVERY:-100}")
  local out
  out=$("${perf[@]}" "$WORKLOAD" "${args[@]}" 2>/dev/null | tail -1)
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$DATA"; sync; sleep "$SETTLE_SECS"
  echo "$label $WORKLOAD size=$size rep=$rep ticks=$ticks $(echo "$out" | grep -o '"\(consume_\)\?messages_per_second":[0-9.]*' | tr '\n' ' ')"
}

for rep in $(seq 1 "$REPS"); do
  for size in $SIZES; do
    if [ $((rep % 2)) = 1 ]; then
      run A "$A" "$size" "$rep"; run B "$B" "$size" "$rep"
    else
      run B "$B" "$size" "$rep"; run A "$A" "$size" "$rep"
    fi
  done
done
