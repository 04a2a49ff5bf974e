# Sourced by tideflow's scripts: where heavy, reusable things live (outside
# the clone, so CI runs and later sessions on the same machine reuse them).
export TIDEFLOW_CACHE="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TIDEFLOW_CACHE/target}"
