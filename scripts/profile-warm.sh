#!/usr/bin/env bash
# Where a warm task's CPU goes: records the whole machine with `perf record -g` while a release
# server starts and `faasd bench` drives warm python no-op tasks through it (async, over
# CONNECTIONS connections, default 32; the one cold start is a few percent of the samples),
# then prints the share of the server, the python executors and the bench client, and the
# server's own samples split by what they do (see scripts/perf-breakdown.py).
# The samples stay in target/profile/samples.txt (TOP=N also lists the N hottest symbols of each
# part).
# CALLGRAPH="--call-graph dwarf" unwinds through libraries built without frame pointers.
# Usage: [TASKS=20000] [CONNECTIONS=32] [TOP=N] [CALLGRAPH=...] scripts/profile-warm.sh [extra `faasd serve` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
tasks="${TASKS:-20000}"
connections="${CONNECTIONS:-32}"
source scripts/bench-env.sh
# perf must see the server start: symbols of a process it attaches to later stay unresolved.
perf_data="$(mktemp)"
# shellcheck disable=SC2086
perf record -a ${CALLGRAPH:--g} -o "$perf_data" 2>/dev/null &
perf_pid=$!
# perf takes a moment to set up its events; a server started before then is recorded without
# its binary's mapping, and its samples stay unresolved.
sleep 1
source scripts/bench-server.sh
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
"$bin" bench --url "$url" --runtime python --function py-noop --code-file "$work/noop.py" \
  --tasks "$tasks" --connections "$connections" --sync-calls 0 &
bench_pid=$!
wait "$bench_pid"
# The executors are the server's descendants (through the sandbox's shim and init).
descendants() { for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
executors="$(descendants "$server_pid" | paste -sd, -)"
kill -INT "$perf_pid"
wait "$perf_pid" || true
mkdir -p target/profile
perf script -i "$perf_data" -F pid,comm,period,ip,sym,dso 2>/dev/null >target/profile/samples.txt
rm -f "$perf_data"
python3 scripts/perf-breakdown.py target/profile/samples.txt "$server_pid" "$bench_pid" "$executors"
