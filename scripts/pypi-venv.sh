# Sourced by the set-up scripts: `pypi_venv NAME CHECK PACKAGE...` makes
# sure the virtual environment NAME in tideflow's cache (~/.cache/tideflow
# by default) has PACKAGE... from PyPI (wheels only, pinned by the caller),
# installing them unless the Python statement CHECK already runs there, and
# sets `python` to the environment's interpreter. A second run finds them
# and does nothing.
pypi_venv() {
  local name="$1" check="$2"
  shift 2
  local venv="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}/$name"
  python="$venv/bin/python"
  if ! "$python" -c "$check" 2>/dev/null; then
    echo "tideflow: installing $* from PyPI into $venv" >&2
    [ -x "$python" ] || python3 -m venv "$venv" >&2
    "$python" -m pip install --quiet --only-binary=:all: "$@" >&2
  fi
}
