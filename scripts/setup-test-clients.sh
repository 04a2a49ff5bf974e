#!/usr/bin/env bash
# Installs the external clients and servers the tests use, from PyPI, in a
# virtual environment in tideflow's cache (~/.cache/tideflow/test-clients
# by default): the Python `confluent-kafka` client, which reads tideflow's
# output topics, and `moto`, whose server mode is the S3 API the
# checkpoint tests write to (with boto3 to look at what they wrote). A
# second run finds them and does nothing.
# Prints the environment's python on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pypi-venv.sh

CONFLUENT_KAFKA_VERSION="2.16.1"
MOTO_VERSION="5.2.5"
pypi_venv test-clients "import confluent_kafka, moto.server, boto3" \
  "confluent-kafka==$CONFLUENT_KAFKA_VERSION" "moto[server]==$MOTO_VERSION"
echo "$python"
