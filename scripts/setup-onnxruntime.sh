#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that tideflow loads at run time,
# from the `onnxruntime` wheel on PyPI (the version the `ort` crate targets),
# into tideflow's cache (~/.cache/tideflow by default, or $TIDEFLOW_CACHE).
#
#   scripts/setup-onnxruntime.sh          the CPU build (what the tests use)
#   scripts/setup-onnxruntime.sh --gpu    the CUDA build, from `onnxruntime-gpu`
#                                         (needs CUDA 13 and cuDNN 9 at run time)
#
# Idempotent: a second run finds the library and does nothing.
# Prints the library's path on its last line.
set -euo pipefail

ORT_VERSION="1.31.1"
cache="${TIDEFLOW_CACHE:-$HOME/.cache/tideflow}"
case "${1:-}" in
  "") package="onnxruntime" ;;
  --gpu) package="onnxruntime-gpu" ;;
  *) echo "usage: $0 [--gpu]" >&2; exit 2 ;;
esac
dest="$cache/$package-$ORT_VERSION"
lib="$dest/libonnxruntime.so"

if [ ! -f "$lib" ]; then
  mkdir -p "$dest"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "tideflow: downloading the $package $ORT_VERSION wheel from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$work" "$package==$ORT_VERSION" >&2
  # The runtime and, in the GPU build, the execution-provider libraries it
  # loads from its own directory; the Python bindings are left behind.
  python3 - "$work" "$dest" <<'PY'
import pathlib, shutil, sys, zipfile
work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("onnxruntime*.whl"))
wanted = ("libonnxruntime.so", "libonnxruntime_providers_shared.so",
          "libonnxruntime_providers_cuda.so")
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist()
             if "/capi/" in n and pathlib.Path(n).name.startswith(wanted)]
    runtimes = sorted(n for n in names if "/capi/libonnxruntime.so" in n)
    if not runtimes:
        sys.exit(f"no libonnxruntime.so inside {wheel.name}")
    for name in names:
        target = dest / pathlib.Path(name).name
        with archive.open(name) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
    real = dest / pathlib.Path(runtimes[-1]).name
    link = dest / "libonnxruntime.so"
    if real != link:
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(real.name)
PY
fi
echo "$lib"
