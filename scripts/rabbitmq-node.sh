# Sourced by scripts/amqp-vs-rabbitmq.sh and benches/scripts/amqp-vs-rabbitmq-perf.sh: a
# throwaway RabbitMQ node (Debian's rabbitmq-server, 3.10 on bookworm; installed when
# missing, with root or sudo) with its own name, AMQP port, distribution port (port +
# 20000) and data in a temp dir, default settings otherwise.
#
#   rabbitmq_start PORT   # returns once the node is up; sets RABBITMQ_BASE, RABBITMQ_SERVER
#   rabbitmq_stop         # stops it and removes its data (safe to call twice, or in a trap)

rabbitmq_as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

rabbitmq_start() { # port
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    echo "== installing rabbitmq-server (Debian package)"
    rabbitmq_as_root apt-get update -qq
    rabbitmq_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  # Debian starts a system node on install; this one is our own.
  PATH="/usr/sbin:/usr/lib/rabbitmq/bin:$PATH"
  RABBITMQ_BASE="$(mktemp -d)"
  export RABBITMQ_NODENAME="wharf-compare-$$@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$1"
  export RABBITMQ_DIST_PORT="$(($1 + 20000))"
  export RABBITMQ_MNESIA_BASE="$RABBITMQ_BASE/mnesia"
  export RABBITMQ_LOG_BASE="$RABBITMQ_BASE/log"
  export RABBITMQ_CONFIG_FILE="$RABBITMQ_BASE/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBITMQ_BASE/enabled_plugins"
  export RABBITMQ_PID_FILE="$RABBITMQ_BASE/node.pid"
  mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
  echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  : >"$RABBITMQ_BASE/rabbitmq.conf"
  # Run as root, Debian's wrapper starts the node as the rabbitmq user.
  if [ "$(id -u)" -eq 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq: "$RABBITMQ_BASE"
  fi
  (cd "$RABBITMQ_BASE" && exec rabbitmq-server) >"$RABBITMQ_BASE/server.out" 2>&1 &
  RABBITMQ_SERVER=$!
  local started="" _
  for _ in $(seq 60); do
    if rabbitmqctl -n "$RABBITMQ_NODENAME" -q await_startup --timeout 5 >/dev/null 2>&1; then
      started=yes
      break
    fi
    kill -0 "$RABBITMQ_SERVER" 2>/dev/null || break
    sleep 1
  done
  if [ -z "$started" ]; then
    echo "RabbitMQ did not start:" >&2
    tail -n 20 "$RABBITMQ_BASE/server.out" >&2
    return 2
  fi
  rabbitmqctl -n "$RABBITMQ_NODENAME" -q version | sed 's/^/== RabbitMQ /'
}

rabbitmq_stop() {
  [ -n "${RABBITMQ_SERVER:-}" ] || return 0
  if ! rabbitmqctl -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1; then
    # Not up (yet): end the Erlang VM by the pid it wrote, then the wrapper.
    [ -s "$RABBITMQ_PID_FILE" ] && kill "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null
    kill "$RABBITMQ_SERVER" 2>/dev/null
  fi
  wait "$RABBITMQ_SERVER" 2>/dev/null || true
  rm -rf "$RABBITMQ_BASE"
  RABBITMQ_SERVER=
}
