#!/usr/bin/env bash
# The test command README.md gives (and .ci/run calls): installs the real clients the
# end-to-end tests drive, then runs every test of the workspace.
#
#   kcat                     Debian's package (apt-get; needs root or sudo)
#   confluent-kafka,         PyPI, pinned in tests/clients/requirements.txt, in a venv at
#   kafka-python, pika,      target/test-clients/venv (tests find it there, or at
#   aio-pika,                $WHARF_TEST_PYTHON); prometheus-client parses /metrics,
#   prometheus-client,       openapi-spec-validator checks the served OpenAPI document
#   openapi-spec-validator
#   kafkajs, amqplib,        npm, pinned in tests/clients/package-lock.json, installed into
#   playwright-core          tests/clients/node_modules (needs node and npm); playwright-core
#                            drives the browser (it downloads no browser of its own)
#   chromium                 Debian's package: the headless browser the web console's test
#                            drives
#   iproute2                 Debian's package: `ip netns`, veth and bridges for the cluster's
#                            network-partition test (tests/tests/cluster_partition.rs, root)
#
# Extra arguments go to `cargo test` (for example `scripts/test.sh -p integration-tests`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v kcat >/dev/null 2>&1; then
  echo "== installing kcat (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (Debian package) for the web console's browser test"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if ! command -v ip >/dev/null 2>&1; then
  echo "== installing iproute2 (Debian package) for the network-partition test"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

venv=target/test-clients/venv
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/clients/requirements.txt "$stamp"; then
  echo "== installing the Python test clients (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt
  cp tests/clients/requirements.txt "$stamp"
fi
export WHARF_TEST_PYTHON="$PWD/$venv/bin/python"

if ! command -v npm >/dev/null 2>&1; then
  echo "== installing Node.js and npm (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d tests/clients/node_modules/kafkajs ] || [ ! -d tests/clients/node_modules/amqplib ] \
    || [ ! -d tests/clients/node_modules/playwright-core ] \
    || ! cmp -s tests/clients/package-lock.json tests/clients/node_modules/.package-lock.json; then
  echo "== installing the Node.js test clients (npm) into tests/clients/node_modules"
  (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== cargo test"
cargo test --workspace "$@"
