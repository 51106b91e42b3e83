#!/usr/bin/env bash
# What checking a token costs: the warm python benchmark against a server in protected mode (no
# user: loopback callers act as admin, no token checked) and against one where a user exists and
# every request carries its token, alternated twice, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-env.sh
code="$(mktemp)"
trap 'rm -f "$code"' EXIT
printf 'def handle(payload):\n    return payload\n' >"$code"
for round in 1 2; do
  for mode in protected token; do
    (
      source scripts/bench-server.sh
      token=()
      if [ "$mode" = token ]; then
        token=(--token "$("$bin" user add bench --role admin --url "$url")")
      fi
      "$bin" bench --url "$url" "${token[@]}" --label "python warm, $mode, round $round" \
        --runtime python --function py-noop --code-file "$code" --tasks 10000 \
        --connections 32 --sync-calls 1000 | grep -v '^machine\|^server'
    )
  done
done
