#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test (scripts/browser-test.py), only
# when no `chromium` is on PATH: `apt-get update` once, then `apt-get install -y chromium`, as
# root (or through sudo when there is one).
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "install-chromium: chromium is missing and this user cannot install packages" >&2
  echo "install-chromium: run 'apt-get install chromium' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
