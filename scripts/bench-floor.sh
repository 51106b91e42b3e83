#!/usr/bin/env bash
# The floor under faasd's async submit on this machine, in one run: the same load generator
# (scripts/floor, TASKS one-byte POSTs over 32 connections, each one request after another)
# against
#   floor-http   a bare HTTP server answering 202 (no work);
#   floor-fsync  the same, answering after a group-committed append + fdatasync to a log;
#   faasd-submit faasd's `POST /v1/functions/NAME/invoke?async=true` of a warm python no-op,
#                the tasks running meanwhile (the rate counts to the last 202, not to the
#                last task's end);
# and then `faasd bench` of the same function (submit to last COMPLETED). ROUNDS rounds
# (default 3), each server's CPU per request from /proc/PID/stat; prints every run and the
# medians.
# Usage: ROUNDS=3 TASKS=20000 scripts/bench-floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
tasks="${TASKS:-20000}"
source scripts/bench-env.sh
cargo build --release --quiet --manifest-path scripts/floor/Cargo.toml --target-dir target/floor
floor="$PWD/target/floor/release/faasd-floor"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
# report NAME PID BEFORE RATE: one line with the server's CPU per request.
report() {
  local after
  after="$(ticks "$2")"
  printf 'round %s %-13s %7.0f requests/s   server CPU %4.0f us a request\n' \
    "$round" "$1" "$4" "$(echo "($after - $3) * 1000000 / $hz / $tasks" | bc -l)" | tee -a "$work/runs"
}
floor_run() {
  local name="$1" mode="$2" before rate
  mkdir -p "$work/$name"
  "$floor" serve "$mode" "$work/$name" >"$work/$name.out" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do grep -q '^listening on' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  local port
  port="$(sed -n 's/^listening on //p' "$work/$name.out")"
  before="$(ticks "$pid")"
  rate="$("$floor" load "$port" 32 "$tasks" /v1/tasks | sed -n 's/.*: \([0-9]*\) requests\/s$/\1/p')"
  report "$name" "$pid" "$before" "$rate"
  kill "$pid"
}
"$bin" serve --data "$work/faasd-data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 \
  >"$work/faasd.out" 2>"$work/faasd.log" &
faasd_pid=$!
pids+=("$faasd_pid")
for _ in $(seq 200); do grep -q '^faasd worker port' "$work/faasd.out" 2>/dev/null && break; sleep 0.05; done
url="$(sed -n 's/^faasd listening on //p' "$work/faasd.out")"
[ -n "$url" ] || { echo "faasd did not start:"; cat "$work/faasd.log"; exit 1; }
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
bench() {
  "$bin" bench --url "$url" --runtime python --function py-noop --code-file "$work/noop.py" \
    --tasks "$1" --connections 32 --sync-calls 0 --keep --json
}
bench 2000 >/dev/null
# Waits until faasd has run every task submitted so far (its CPU stops moving).
settle() {
  local last now
  last="$(ticks "$faasd_pid")"
  while sleep 0.3; now="$(ticks "$faasd_pid")"; [ "$now" != "$last" ]; do last="$now"; done
}
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); $tasks requests over 32 connections"
for round in $(seq "$rounds"); do
  floor_run floor-http none
  floor_run floor-fsync fsync
  settle
  before="$(ticks "$faasd_pid")"
  rate="$("$floor" load "${url##*:}" 32 "$tasks" "/v1/functions/py-noop/invoke?async=true" |
    sed -n 's/.*: \([0-9]*\) requests\/s$/\1/p')"
  settle
  report faasd-submit "$faasd_pid" "$before" "$rate"
  before="$(ticks "$faasd_pid")"
  rate="$(bench "$tasks" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput"]["tasks_per_second"]))')"
  report faasd-bench "$faasd_pid" "$before" "$rate"
done
python3 - "$work/runs" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+)\s+(\d+) requests/s\s+server CPU\s+(\d+) us", line)
    runs.setdefault(m[1], []).append((float(m[2]), float(m[3])))
print("median of %d rounds" % len(next(iter(runs.values()))))
for name, rows in runs.items():
    rate, cpu = (statistics.median(c) for c in zip(*rows))
    print(f"  {name:<13} {rate:7.0f} requests/s   server CPU {cpu:4.0f} us a request")
PY
