#!/usr/bin/env bash
# Installs the test broker: tansu 0.6.0, a Kafka-protocol broker, built from
# crates.io into tideflow's cache (~/.cache/tideflow/tools by default). The
# build takes about 15 minutes on a 2-core machine, so it happens once per
# machine; a second run finds the binary and does nothing.
# Prints the binary's path on its last line.
set -euo pipefail

TANSU_VERSION="0.6.0"
cache="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
root="$cache/tools/tansu-$TANSU_VERSION"
bin="$root/bin/tansu"

if [ ! -x "$bin" ]; then
  echo "tideflow: building tansu $TANSU_VERSION from crates.io (about 15 minutes, once per machine)" >&2
  # Its own target directory: the broker's dependencies must not churn
  # tideflow's build cache.
  CARGO_TARGET_DIR="$cache/tools/tansu-build" \
    cargo install --locked tansu --version "$TANSU_VERSION" \
    --features dynostore,libsql --root "$root" >&2
  rm -rf "$cache/tools/tansu-build"
fi
echo "$bin"
