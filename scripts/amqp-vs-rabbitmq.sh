#!/usr/bin/env bash
# Measures "as RabbitMQ does" (issue #16): runs the pika, aio-pika and amqplib scenarios that
# tests/tests/amqp_clients.rs runs against wharfd, unchanged, against RabbitMQ itself
# (Debian's rabbitmq-server, 3.10 on bookworm), and reports each scenario's outcome.
#
#   scripts/amqp-vs-rabbitmq.sh [SCENARIO...]
#
# Needs rabbitmq-server (apt-get install rabbitmq-server; installed when missing, with
# root or sudo) and the venv and node_modules scripts/test.sh fills. RabbitMQ runs as a throwaway node
# (its own name, ports RABBITMQ_PORT (default 5682) and RABBITMQ_PORT + 20000, data in a
# temp dir) and is stopped at the end. Slow (RabbitMQ takes ~10 s to start), so not part
# of scripts/test.sh.
#
# The scenarios listed in EXPECTED_DIFFERENCES assert something wharf does differently on
# purpose (docs/AMQP.md says what and why); they are run and reported, but only an
# unexpected failure makes the script fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# refused_arguments: wharf refuses x-queue-type stream (its streams speak Kafka), and
# x-dead-letter-strategy, which RabbitMQ accepts.
# delayed_exchange: the delayed-message plugin is not in Debian's package.
EXPECTED_DIFFERENCES="refused_arguments delayed_exchange"
SCENARIOS="confirms_and_properties prefetch_manual_acks exchange_types mandatory_return pipelined_publishes
nack_requeue_reject basic_get server_named_exclusive channel_error_keeps_connection
wrong_vhost bad_login dead_lettering refused_arguments redeclare_and_delete_preconditions
queue_expires exchange_to_exchange consumer_priorities dead_letter_counts_when_republished
delayed_exchange transactions
overflow_reject_publish max_length_bytes single_active_consumer_and_cancel_notify channel_flow
priority_queue global_prefetch exclusive_consumer
aio_pika:confirms_prefetch_and_acks aio_pika:dead_letter_and_cancel_notify
amqplib:roundtrip amqplib:channel_error"
if [ "$#" -gt 0 ]; then SCENARIOS="$*"; fi

python="${WHARF_TEST_PYTHON:-target/test-clients/venv/bin/python}"
[ -x "$python" ] || { echo "no $python: run scripts/test.sh once to create the venv" >&2; exit 2; }

port="${RABBITMQ_PORT:-5682}"
. scripts/rabbitmq-node.sh
trap rabbitmq_stop EXIT
rabbitmq_start "$port"

unexpected=0
for scenario in $SCENARIOS; do
  # aio_pika:NAME and amqplib:NAME are scenarios of aio_pika_scenarios.py and
  # amqplib_scenarios.js, NAME one of pika_scenarios.py.
  run=("$python" tests/clients/pika_scenarios.py)
  case "$scenario" in
    aio_pika:*) run=("$python" tests/clients/aio_pika_scenarios.py); scenario="${scenario#aio_pika:}" ;;
    amqplib:*) run=(node tests/clients/amqplib_scenarios.js); scenario="${scenario#amqplib:}" ;;
  esac
  if out="$("${run[@]}" 127.0.0.1 "$port" "$scenario" 2>&1)" \
      && grep -q "^ok $scenario" <<<"$out"; then
    echo "ok        $scenario"
  elif [[ " $EXPECTED_DIFFERENCES " == *" $scenario "* ]]; then
    echo "differs   $scenario (expected: docs/AMQP.md)"
    tail -n 1 <<<"$out" | sed 's/^/            /'
  else
    echo "FAILED    $scenario"
    tail -n 3 <<<"$out" | sed 's/^/            /'
    unexpected=1
  fi
done
exit "$unexpected"
