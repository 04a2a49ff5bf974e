#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the ONNX Runtime library
# (from the onnxruntime wheel on PyPI) into ~/.cache/tideflow, then runs
# every unit, integration and doc test against it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ORT_DYLIB_PATH="$(scripts/setup-onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH
cargo test --workspace "$@"
