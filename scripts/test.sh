#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the ONNX Runtime library
# (from the onnxruntime wheel on PyPI), the test broker (tansu, built from
# crates.io, about 15 minutes the first time) and the external test client
# (Python confluent-kafka from PyPI) into ~/.cache/tideflow, Debian's
# chromium for the status page test, then
# runs every unit, integration and doc test against them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ORT_DYLIB_PATH="$(scripts/setup-onnxruntime.sh | tail -n 1)"
TIDEFLOW_TANSU="$(scripts/setup-tansu.sh | tail -n 1)"
TIDEFLOW_TEST_PYTHON="$(scripts/setup-test-clients.sh | tail -n 1)"
TIDEFLOW_CHROMIUM="$(scripts/setup-chromium.sh | tail -n 1)"
export ORT_DYLIB_PATH TIDEFLOW_TANSU TIDEFLOW_TEST_PYTHON TIDEFLOW_CHROMIUM
# The shared target directory keeps the test executables of every build it
# has made (about 15 GB a build, with debug info), and filled this machine's
# disk within a day: those not built in the last hour go (cargo builds a
# missing one again when it needs it).
find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f ! -name '*.*' -mmin +60 -delete \
  2>/dev/null || true
cargo test --workspace "$@"
