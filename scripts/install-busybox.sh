#!/usr/bin/env bash
# Installs Debian's static busybox for the image tests (tests/oci.rs put it alone in an image's
# one layer), only when /bin/busybox is missing: `apt-get update` once, then
# `apt-get install -y busybox-static`, as root (or through sudo when there is one).
set -euo pipefail
if [ -x /bin/busybox ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "install-busybox: /bin/busybox is missing and this user cannot install packages" >&2
  echo "install-busybox: run 'apt-get install busybox-static' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq busybox-static >/dev/null
test -x /bin/busybox
