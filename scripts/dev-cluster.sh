#!/usr/bin/env bash
# A three-node Wharf cluster on this machine, for development (issue #20, docs/CLUSTER.md).
#
#   scripts/dev-cluster.sh up       build, then start nodes 1-3 in the background
#   scripts/dev-cluster.sh status   each node's view (wharf cluster status)
#   scripts/dev-cluster.sh down     stop them (SIGTERM), keep their data
#   scripts/dev-cluster.sh clean    stop them and delete their data
#
# Node N listens on 127.0.0.1: native 7420+N, Kafka 9092+N, AMQP 5672+N, HTTP 7480+N,
# cluster (internal) 7520+N, with its data in $DEV_CLUSTER_DIR/node-N (default
# ./dev-cluster) and its log in node-N.log there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DEV_CLUSTER_DIR:-./dev-cluster}
nodes=(1 2 3)
peers=$(printf '%s@127.0.0.1:%s,' 1 7521 2 7522 3 7523)
peers=${peers%,}

up() {
  cargo build --release --bin wharfd --bin wharf
  mkdir -p "$dir"
  # One secret for the three nodes' internal wire (--cluster-secret-file), made once.
  if [[ ! -f "$dir/cluster-secret" ]]; then
    (umask 077 && head -c 32 /dev/urandom | base64 >"$dir/cluster-secret")
  fi
  for n in "${nodes[@]}"; do
    if [[ -f "$dir/node-$n.pid" ]] && kill -0 "$(cat "$dir/node-$n.pid")" 2>/dev/null; then
      echo "node $n is already running (pid $(cat "$dir/node-$n.pid"))"
      continue
    fi
    ./target/release/wharfd --data-dir "$dir/node-$n" --node-id "$n" --cluster-peers "$peers" \
      --cluster-secret-file "$dir/cluster-secret" \
      --listen "127.0.0.1:$((7420 + n))" --kafka-listen "127.0.0.1:$((9092 + n))" \
      --amqp-listen "127.0.0.1:$((5672 + n))" --http-listen "127.0.0.1:$((7480 + n))" \
      >>"$dir/node-$n.log" 2>&1 &
    echo $! >"$dir/node-$n.pid"
    echo "node $n: pid $!, native 127.0.0.1:$((7420 + n)), kafka 127.0.0.1:$((9092 + n)), log $dir/node-$n.log"
  done
}

status() {
  for n in "${nodes[@]}"; do
    ./target/release/wharf --broker "127.0.0.1:$((7420 + n))" cluster status || echo "node $n: not answering"
  done
}

down() {
  for n in "${nodes[@]}"; do
    if [[ -f "$dir/node-$n.pid" ]]; then
      kill -TERM "$(cat "$dir/node-$n.pid")" 2>/dev/null || true
      rm -f "$dir/node-$n.pid"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  clean) down; sleep 1; rm -rf "$dir" ;;
  *) echo "usage: $0 up|status|down|clean" >&2; exit 2 ;;
esac
