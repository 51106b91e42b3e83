#!/usr/bin/env bash
# Builds a statically linked faasd (glibc, static-pie) and prints where it is.
# Copy that one file to any x86_64 Linux machine: it needs nothing else installed.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target"
bin="target/$target/release/faasd"
file "$bin" 2>/dev/null || true
echo "$bin"
