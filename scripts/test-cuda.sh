#!/usr/bin/env bash
# Runs the tests of the CUDA inference path (tests/cuda.rs) on a machine
# with an NVIDIA GPU: installs the CUDA build of ONNX Runtime (from the
# `onnxruntime-gpu` wheel on PyPI) and runs the tests the main suite
# ignores. The CUDA 13 and cuDNN 9 libraries must be on the loader's path
# (a CUDA install, or the nvidia-* wheels PyTorch brings; LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ORT_DYLIB_PATH="$(scripts/setup-onnxruntime.sh --gpu | tail -n 1)"
export ORT_DYLIB_PATH
cargo test --test cuda -- --ignored "$@"
