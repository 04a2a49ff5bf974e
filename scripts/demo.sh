#!/usr/bin/env bash
# The demo on a fresh machine: installs the ONNX Runtime library, builds
# tideflow in release mode, and runs `tideflow demo` (synthetic card
# transactions -> window features -> fraud model -> files, with a summary).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ORT_DYLIB_PATH="$(scripts/setup-onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH
cargo run --release --bin tideflow -- demo "$@"
