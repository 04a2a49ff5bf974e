#!/usr/bin/env bash
# The many-core figures of the backfill and live benchmarks, on a machine
# lent for a short while (16 cores, nothing to build with, no network):
#
#   scripts/device-bench.sh pack   # here: builds the workers and kafka
#                                  # benchmarks (release), strips them and
#                                  # puts them, compressed, with the ONNX
#                                  # Runtime library in .device/ (ignored)
#   scripts/device-bench.sh run    # there, from the repository root (with
#                                  # .device/ carried): runs them, writing
#                                  # their output and plot to $OUT (or out/)
#
# `run` prints events/s against workers for the five workloads (and the
# end-to-end / features-only ratio at each count) and the live latency
# over a bare consumer at 1k, 10k and 50k events/s on 8 partitions (2
# workers, then 8 at 50k).
# EVENTS (default 4000000) and ROUNDS (default 1) size the workers bench.
set -euo pipefail
cd "$(dirname "$0")/.."
pack_dir=.device

pack() {
    source scripts/env.sh
    local library
    library="$(scripts/setup-onnxruntime.sh | tail -n 1)"
    rm -rf "$pack_dir" && mkdir -p "$pack_dir"
    local bench executable
    for bench in workers kafka; do
        executable="$(cargo bench --bench "$bench" --no-run --message-format=json 2>/dev/null |
            sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
        [[ -x "$executable" ]] || { echo "no $bench bench binary built" >&2; exit 1; }
        strip -o "$pack_dir/$bench" "$executable"
    done
    cp "$library" "$pack_dir/libonnxruntime.so"
    gzip -9 "$pack_dir"/*
    du -ch "$pack_dir"/* | tail -n 1
}

run() {
    local out="${OUT:-out}"
    mkdir -p "$out"
    gunzip -kf "$pack_dir"/*.gz
    chmod +x "$pack_dir/workers" "$pack_dir/kafka"
    export ORT_DYLIB_PATH="$PWD/$pack_dir/libonnxruntime.so" CARGO_MANIFEST_DIR="$PWD"
    nproc | sed 's/^/cores: /'
    "$pack_dir/workers" --events "${EVENTS:-4000000}" --rounds "${ROUNDS:-1}" \
        --plot "$out/workers.svg" 2>&1 | grep -v '^tideflow: worker' | tee "$out/workers.txt"
    "$pack_dir/kafka" latency --rates 1000,10000,50000 --seconds 10 2>&1 |
        grep -v '^tideflow: worker' | tee "$out/latency.txt"
    # One worker per partition, as a many-core deployment would run it.
    "$pack_dir/kafka" latency --rates 50000 --seconds 10 --workers 8 2>&1 |
        grep -v '^tideflow: worker' | tee -a "$out/latency.txt"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) echo "usage: $0 pack | run" >&2; exit 2 ;;
esac
