#!/usr/bin/env bash
# Installs the Python packages that build the test models and measure the
# Python ONNX Runtime against the engine (models/requirements.txt: numpy,
# onnx, onnxruntime, scikit-learn, skl2onnx, tokenizers) in a virtual
# environment in tideflow's cache (~/.cache/tideflow/model-tools by
# default). A second run finds them and does nothing.
# Prints the environment's python on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
venv="$cache/model-tools"
python="$venv/bin/python"
stamp="$venv/requirements.txt"
if ! cmp -s models/requirements.txt "$stamp" 2>/dev/null; then
  echo "tideflow: installing the model tools (models/requirements.txt) from PyPI" >&2
  [ -x "$python" ] || python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --only-binary=:all: -r models/requirements.txt >&2
  cp models/requirements.txt "$stamp"
fi
echo "$python"
