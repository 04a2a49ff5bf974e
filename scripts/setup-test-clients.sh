#!/usr/bin/env bash
# Installs the external Kafka client the tests read tideflow's output topics
# with: the Python `confluent-kafka` client from PyPI, in a virtual
# environment in tideflow's cache (~/.cache/tideflow/test-clients by
# default). A second run finds it and does nothing.
# Prints the environment's python on its last line.
set -euo pipefail

CONFLUENT_KAFKA_VERSION="2.16.1"
cache="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
venv="$cache/test-clients"
python="$venv/bin/python"

if ! "$python" -c "import confluent_kafka" 2>/dev/null; then
  echo "tideflow: installing confluent-kafka $CONFLUENT_KAFKA_VERSION from PyPI" >&2
  python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --only-binary=:all: \
    "confluent-kafka==$CONFLUENT_KAFKA_VERSION" >&2
fi
echo "$python"
