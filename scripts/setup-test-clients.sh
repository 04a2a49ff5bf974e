#!/usr/bin/env bash
# Installs the external clients and servers the tests use, from PyPI, in a
# virtual environment in tideflow's cache (~/.cache/tideflow/test-clients
# by default): the Python `confluent-kafka` client, which reads tideflow's
# output topics, and `moto`, whose server mode is the S3 API the
# checkpoint tests write to (with boto3 to look at what they wrote). A
# second run finds them and does nothing.
# Prints the environment's python on its last line.
set -euo pipefail

CONFLUENT_KAFKA_VERSION="2.16.1"
MOTO_VERSION="5.2.5"
cache="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
venv="$cache/test-clients"
python="$venv/bin/python"

if ! "$python" -c "import confluent_kafka, moto.server, boto3" 2>/dev/null; then
  echo "tideflow: installing confluent-kafka $CONFLUENT_KAFKA_VERSION and moto $MOTO_VERSION from PyPI" >&2
  [ -x "$python" ] || python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --only-binary=:all: \
    "confluent-kafka==$CONFLUENT_KAFKA_VERSION" "moto[server]==$MOTO_VERSION" >&2
fi
echo "$python"
