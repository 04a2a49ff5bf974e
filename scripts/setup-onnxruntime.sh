#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that tideflow loads at run time,
# from the `onnxruntime` wheel on PyPI (the version the `ort` crate targets),
# into tideflow's cache (~/.cache/tideflow by default, or $TIDEFLOW_CACHE).
# Idempotent: a second run finds the library and does nothing.
# Prints the library's path on its last line.
set -euo pipefail

ORT_VERSION="1.31.1"
cache="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
dest="$cache/onnxruntime-$ORT_VERSION"
lib="$dest/libonnxruntime.so"

if [ ! -f "$lib" ]; then
  mkdir -p "$dest"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "tideflow: downloading the onnxruntime $ORT_VERSION wheel from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$work" "onnxruntime==$ORT_VERSION" >&2
  python3 - "$work" "$dest" <<'PY'
import pathlib, shutil, sys, zipfile
work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if "/capi/libonnxruntime.so" in n]
    if not names:
        sys.exit(f"no libonnxruntime.so inside {wheel.name}")
    for name in names:
        target = dest / pathlib.Path(name).name
        with archive.open(name) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
    real = dest / pathlib.Path(sorted(names)[-1]).name
    link = dest / "libonnxruntime.so"
    if real != link:
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(real.name)
PY
fi
echo "$lib"
