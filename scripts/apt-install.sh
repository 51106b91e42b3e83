#!/usr/bin/env bash
# Installs a Debian package the tests or benchmarks need, only when CHECK (a shell test) fails:
# `apt-get update` once, then `apt-get install -y PACKAGE`, as root (or through sudo when there
# is one).
# Usage: scripts/apt-install.sh PACKAGE 'CHECK' WHAT-FOR
set -euo pipefail
package="$1" check="$2" purpose="$3"
if eval "$check"; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "apt-install: $purpose needs $package, which is missing, and this user cannot install packages" >&2
  echo "apt-install: run 'apt-get install $package' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq "$package" >/dev/null
eval "$check"
