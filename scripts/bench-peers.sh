#!/usr/bin/env bash
# tideflow against DuckDB and Polars on the same backfill: generated card
# transactions as JSONL files, the feature workload's four user features
# (sum and max over 1 h, count over 10 min, mean over 24 h, each window
# (t - W, t]), rows with their features out to Parquet. Installs DuckDB
# and Polars from PyPI into ~/.cache/tideflow/peers, builds tideflow in
# release mode, checks that the three give the same features for every
# row, and prints each one's rows/s at each thread count and tideflow's
# ratios against them, measured in the same run.
#
#   scripts/bench-peers.sh [--events N] [--users N] [--threads 1,2] [--repeats N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DUCKDB_VERSION="1.5.6"
POLARS_VERSION="1.44.2"
source scripts/pypi-venv.sh
pypi_venv peers "import duckdb, polars" "duckdb==$DUCKDB_VERSION" "polars==$POLARS_VERSION"
cargo build --release --quiet --bin tideflow
exec "$python" benches/peers.py --tideflow "$CARGO_TARGET_DIR/release/tideflow" "$@"
