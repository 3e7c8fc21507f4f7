#!/usr/bin/env bash
# Measures the storage engine beside the same disk's raw speed in one run, as issue #2 asks:
# `dd bs=1M` and `bs=100K` without sync (page-cache bandwidth, for flush = never), `fio`
# sequential 64 KiB writes with an fdatasync every 16 writes and every write (for flush =
# always), then the criterion storage bench, then `dd bs=1M` again (the machine is noisy:
# compare ratios inside one run).
#
#   benches/scripts/storage-suite.sh                   # every storage bench
#   benches/scripts/storage-suite.sh 'append/never'    # a criterion filter
#
# Env: DIR (where the files go; default /work/bench, which must be on the disk under test,
# not a tmpfs), BENCH (a prebuilt storage bench binary to run instead of `cargo bench`, for
# comparing two trees in one run). Needs dd and fio (apt-get install fio).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${DIR:-/work/bench}
mkdir -p "$DIR"
filter=${1:-}

# Three runs of dd; each starts after a sync and a pause so the previous run's writeback
# and discards are not in its way.
dd_runs() {
  local block=$1 count=$2
  for _ in 1 2 3; do
    sync; sleep 1
    rm -f "$DIR/dd.bin"
    dd if=/dev/zero of="$DIR/dd.bin" bs="$block" count="$count" 2>&1 | tail -1 |
      awk -v block="$block" '{print "dd bs=" block ": " $(NF-1) " " $NF}'
  done
  rm -f "$DIR/dd.bin"; sync
}

fio_run() {
  local name=$1 size=$2 every=$3
  sync; sleep 1
  fio --name="$name" --rw=write --bs=64k --size="$size" --fdatasync="$every" \
    --directory="$DIR" --ioengine=psync 2>&1 | grep -E '^ +(WRITE|write):' |
    sed "s/^ */fio fdatasync=$every: /"
  rm -f "$DIR/$name".*; sync
}

date -u +"start %FT%TZ"
dd_runs 1M 256
dd_runs 100K 2600
fio_run seqwrite 2g 16
fio_run seqwrite1 512m 1
sync; sleep 1
if [ -n "${BENCH:-}" ]; then
  WHARF_BENCH_DIR="$DIR" "$BENCH" --bench --noplot $filter
else
  WHARF_BENCH_DIR="$DIR" cargo bench -p benches --bench storage -- --noplot $filter
fi 2>&1 | grep -E '^(append|read|index_lookup)|time:|thrpt:' | grep -v '%'
dd_runs 1M 256
date -u +"end %FT%TZ"
