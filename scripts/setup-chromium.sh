#!/usr/bin/env bash
# Installs Debian's chromium, the headless browser the status page test
# loads the admin API's page in, when it is not there. Needs root (or
# sudo) for apt-get. Prints the browser's path on its last line.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "tideflow: installing chromium from Debian's packages" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >&2
fi
command -v chromium
