#!/usr/bin/env bash
# Fault injection against a real faasd: every case of docs/reliability.md, one table.
#
#   scripts/chaos.sh                                  # release build, 20 rounds a case
#   scripts/chaos.sh --bin target/debug/faasd --short # the test command's short run
#   scripts/chaos.sh --case disk-full                 # one case (repeatable)
#
# With no --bin it builds and uses target/release/faasd. Only Python's standard library is
# needed (scripts/chaos.py and scripts/chaos_cases/). Exits 1 if a task was lost or wrong, or a
# case failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --bin "* ]]; then
  cargo build --locked --release -q
  set -- --bin target/release/faasd "$@"
fi
exec python3 scripts/chaos.py "$@"
