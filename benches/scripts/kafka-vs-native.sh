#!/usr/bin/env bash
# Issue #14, "Performance": the Kafka listener of `wharfd` measured with librdkafka
# (benches/kafka-perf) against the native listener measured with `wharf perf`, in one run,
# interleaved per rep (native kafka / kafka native ...), and Tansu (a Kafka-compatible broker
# in Rust) with the same librdkafka tool when TANSU names its binary. Every run gets a fresh
# broker on an empty data dir (wharfd: default config, `flush = always`), and the page cache
# is written back after it (`sync` and a pause), as in ab-perf.sh. Prints one line per run:
#   <side> <workload> size=<bytes> rep=<n> ticks=<broker utime+stime, 100/s> <the perf JSON>
# then, per workload and size, the medians and the Kafka/native ratio (throughput: msgs/s;
# e2e: p99).
#
#   cargo build --release --bins                                          # wharfd, wharf
#   cargo build --release --manifest-path benches/kafka-perf/Cargo.toml   # kafka-perf
#   BIN=target/release KAFKA_PERF=benches/kafka-perf/target/release/kafka-perf \
#     benches/scripts/kafka-vs-native.sh
#
# Env: BIN (dir with release wharfd and wharf), KAFKA_PERF (the kafka-perf binary), SIDES
# ("native kafka"; add kafka-noidemp for librdkafka without idempotence), RDKAFKA_PERF
# (librdkafka's own rdkafka_performance, built by build-rdkafka-performance.sh; set = the
# side `rdkafka` too, for produce and consume: the same librdkafka through its C API, with
# kafka-perf's producer settings), TANSU
# (the tansu binary, built with `--features libsql`; unset = no Tansu runs), SIZES
# ("100 1024"), REPS (2), N (1,000,000 per throughput run), MAX_SECS (30: a produce run
# stops sending after this and counts what was acknowledged; consume reads what the
# preceding produce left), RATE (5000), LAT_SECS (10),
# WORKLOADS ("produce consume e2e"), NATIVE_PORT (7496), KAFKA_PORT (9496), TANSU_PORT
# (9596), DATA (/tmp/wharf-kvn), SETTLE_SECS (3).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
KAFKA_PERF=${KAFKA_PERF:-benches/kafka-perf/target/release/kafka-perf}
TANSU=${TANSU:-}
RDKAFKA_PERF=${RDKAFKA_PERF:-}
SIZES=${SIZES:-"100 1024"}
REPS=${REPS:-2}
N=${N:-1000000}
MAX_SECS=${MAX_SECS:-30}
RATE=${RATE:-5000}
LAT_SECS=${LAT_SECS:-10}
WORKLOADS=${WORKLOADS:-"produce consume e2e"}
NATIVE_PORT=${NATIVE_PORT:-7496}
KAFKA_PORT=${KAFKA_PORT:-9496}
TANSU_PORT=${TANSU_PORT:-9596}
DATA=${DATA:-/tmp/wharf-kvn}
SETTLE_SECS=${SETTLE_SECS:-3}
RESULTS=$(mktemp)
BROKER_PID=

wait_port() {
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; cat "$DATA.log" >&2; return 1
}
start() { # side
  rm -rf "$DATA"; mkdir -p "$DATA"
  if [ "$1" = tansu ]; then
    # Tansu's local storage engine: SQLite (libSQL) in a file of the data dir. Tansu 0.6.0
    # reads the path after sqlite:// relative to its working directory (a leading / is
    # dropped), so it runs in the data dir.
    (cd "$DATA" && exec "$TANSU" broker --kafka-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
      --kafka-advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
      --storage-engine "sqlite://tansu.db") > "$DATA.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$TANSU_PORT"
  else
    "$BIN/wharfd" --data-dir "$DATA" --listen "127.0.0.1:$NATIVE_PORT" \
      --kafka-listen "127.0.0.1:$KAFKA_PORT" > "$DATA.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$NATIVE_PORT"; wait_port "$KAFKA_PORT"
  fi
}
stop() {
  [ -n "$BROKER_PID" ] || return 0
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=
}
trap 'stop; rm -f "$RESULTS"' EXIT

perf() { # side args... (wharf perf's and kafka-perf's arguments are the same words)
  local side=$1; shift
  case $side in
    native) "$BIN/wharf" --broker "127.0.0.1:$NATIVE_PORT" --json perf "$@" ;;
    kafka) "$KAFKA_PERF" --broker "127.0.0.1:$KAFKA_PORT" "$@" ;;
    # Diagnostic: the same without idempotence, where librdkafka keeps more than 5 requests
    # in flight (docs/BENCHMARKS.md, issue #14, says why that matters on 2 cores).
    kafka-noidemp) "$KAFKA_PERF" --broker "127.0.0.1:$KAFKA_PORT" -X enable.idempotence=false "$@" ;;
    tansu) "$KAFKA_PERF" --broker "127.0.0.1:$TANSU_PORT" "$@" ;;
    rdkafka) rdkafka_perf "$@" ;;
  esac
}

# rdkafka_performance given kafka-perf's words (produce|consume --topic T --messages N
# [--size S]; the rest ignored), its summary line printed as kafka-perf's JSON fields.
# Produce: kafka-perf's producer settings (acks=all, idempotence, linger 5 ms, 1 MiB
# batches, its queue sizes) on partition 0; the rate is delivered messages over the time to
# the last delivery report. Consume: partition 0 from the beginning (the topics here have
# one partition), with kafka-perf's consumer queue settings.
rdkafka_perf() {
  local workload=$1 topic= messages= size=100
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --topic) topic=$2; shift 2 ;;
      --messages) messages=$2; shift 2 ;;
      --size) size=$2; shift 2 ;;
      *) shift ;;
    esac
  done
  local broker="127.0.0.1:$KAFKA_PORT"
  case $workload in
    produce)
      "$RDKAFKA_PERF" -P -t "$topic" -p 0 -s "$size" -c "$messages" -b "$broker" -q \
        -X acks=all -X enable.idempotence=true -X linger.ms=5 -X batch.size=1048576 \
        -X batch.num.messages=1000000 -X message.max.bytes=2097152 \
        -X queue.buffering.max.messages=2000000 -X queue.buffering.max.kbytes=2097151 \
        2> >(grep -v CONFWARN >&2) | sed -n 's/^% [0-9]* messages produced ([0-9]* bytes), \([0-9]*\) delivered .* in \([0-9]*\)ms: \([0-9]*\) msgs\/s.*/{"workload":"produce","messages":\1,"ms":\2,"messages_per_second":\3,"client":"rdkafka_performance"}/p' ;;
    consume)
      "$RDKAFKA_PERF" -C -t "$topic" -p 0 -o beginning -c "$messages" -b "$broker" -q \
        -X queued.min.messages=1000000 -X fetch.queue.backoff.ms=10 \
        2> >(grep -v CONFWARN >&2) | sed -n 's/^% \([0-9]*\) messages ([0-9]* bytes) consumed in \([0-9]*\)ms: \([0-9]*\) msgs\/s.*/{"workload":"consume","messages":\1,"ms":\2,"messages_per_second":\3,"client":"rdkafka_performance"}/p' ;;
    *) echo "rdkafka_performance: no $workload here" >&2; return 1 ;;
  esac
}

run() { # side workload size rep
  local side=$1 workload=$2 size=$3 rep=$4 out
  start "$side"
  case $workload in
    produce)
      out=$(perf "$side" produce --topic t --messages "$N" --size "$size" --max-seconds "$MAX_SECS" | tail -1) ;;
    consume)
      # Produce with the same side's client first (not measured), then read it all back.
      local produced
      produced=$(perf "$side" produce --topic t --messages "$N" --size "$size" --max-seconds "$MAX_SECS" \
        | tail -1 | grep -o '"messages":[0-9]*' | cut -d: -f2)
      out=$(perf "$side" consume --topic t --messages "$produced" | tail -1) ;;
    e2e) out=$(perf "$side" e2e --topic e --rate "$RATE" --seconds "$LAT_SECS" --size "$size" | tail -1) ;;
  esac
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$BROKER_PID/stat")
  stop
  rm -rf "$DATA"; sync; sleep "$SETTLE_SECS"
  echo "$side $workload size=$size rep=$rep ticks=$ticks $out" | tee -a "$RESULTS"
}

SIDES=${SIDES:-"native kafka"}
[ -n "$RDKAFKA_PERF" ] && SIDES="$SIDES rdkafka"
[ -n "$TANSU" ] && SIDES="$SIDES tansu"
for workload in $WORKLOADS; do
  for size in $SIZES; do
    for rep in $(seq 1 "$REPS"); do
      # Odd reps run the sides in order, even reps in reverse (A B / B A).
      order=$SIDES
      [ $((rep % 2)) = 0 ] && order=$(echo "$SIDES" | tr ' ' '\n' | tac | tr '\n' ' ')
      for side in $order; do
        # rdkafka_performance's latency mode is another method than the e2e of the others.
        [ "$side" = rdkafka ] && [ "$workload" = e2e ] && continue
        run "$side" "$workload" "$size" "$rep"
      done
    done
  done
done

# Medians per side, workload and size; ratios to native.
echo "--- medians (throughput: messages_per_second; e2e: p50_us p99_us p999_us)"
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, workload, size, _rep, _ticks, payload = line.split(" ", 5)
    rows.setdefault((workload, size, side), []).append(json.loads(payload))
for (workload, size, side), runs in sorted(rows.items()):
    native = rows.get((workload, size, "native"))
    if workload == "e2e":
        p = {k: statistics.median(r[k] for r in runs) for k in ("p50_us", "p99_us", "p999_us")}
        ratio = ""
        if native and side != "native":
            ratio = " p99 ratio to native %.2f" % (p["p99_us"] / statistics.median(r["p99_us"] for r in native))
        print(f"{workload} {size} {side}: p50 {p['p50_us']:.0f} p99 {p['p99_us']:.0f} p99.9 {p['p999_us']:.0f} µs{ratio}")
    else:
        rate = statistics.median(r["messages_per_second"] for r in runs)
        ratio = ""
        if native and side != "native":
            ratio = " ratio to native %.2f" % (rate / statistics.median(r["messages_per_second"] for r in native))
        each = ", ".join("%.0f" % r["messages_per_second"] for r in runs)
        print(f"{workload} {size} {side}: {rate:,.0f} msgs/s (runs {each}){ratio}")
EOF
