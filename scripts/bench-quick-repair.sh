#!/usr/bin/env bash
# What `serve --quick-repair` costs: the warm python benchmark (async throughput and sync
# latency) against a server without and with the flag, alternated twice, in one run.
# The other side of the trade, the restart after a crash, is measured by
#   scripts/backlog-memory.py crash-restart --tasks 2000 --payload-bytes 1048576 [--quick-repair]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-env.sh
code="$(mktemp)"
trap 'rm -f "$code"' EXIT
printf 'def handle(payload):\n    return payload\n' >"$code"
for round in 1 2; do
  for flags in "" "--quick-repair"; do
    (
      # shellcheck disable=SC2086
      source scripts/bench-server.sh $flags
      "$bin" bench --url "$url" --label "python warm ${flags:-(default)} round $round" \
        --runtime python --function py-noop --code-file "$code" --tasks 10000 \
        --connections 32 --sync-calls 1000 | grep -v '^machine\|^server'
    )
  done
done
