#!/usr/bin/env bash
# The floor under faasd's async submit on this machine, in one run. One load generator
# (scripts/floor: TASKS one-byte POSTs over 32 connections, each one request after another)
# drives
#   floor-http    a bare HTTP server that answers 202 and does nothing else;
#   floor-fsync   the same, answering after a group-committed append + fdatasync to a log;
#   faasd-404     faasd, a route that does not exist (its HTTP stack and layers alone);
#   faasd-queue   faasd with no workers (`--local-workers 0`): async submits of a function
#                 that stay queued (HTTP, broker, the QUEUED record's durable commit);
#   faasd-submit  faasd, async submits of a warm python no-op that run meanwhile (the rate
#                 counts to the last 202; the CPU until the server is idle again);
# and then `faasd bench` of the same function (faasd-bench: submit to last COMPLETED).
# Each line gives the server's CPU per request from /proc (for faasd, split into its HTTP
# runtime threads and its store writer thread) and the load generator's own. ROUNDS rounds
# (default 3); prints every run and the medians. The data directories are under target/, on
# the disk the repository is on (a tmpfs would make every fdatasync free).
# Usage: ROUNDS=3 TASKS=20000 scripts/bench-floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
tasks="${TASKS:-20000}"
source scripts/bench-env.sh
cargo build --release --locked --quiet --manifest-path scripts/floor/Cargo.toml --target-dir target/floor
floor="$PWD/target/floor/release/faasd-floor"
mkdir -p target
work="$(mktemp -d "$PWD/target/bench-floor.XXXXXX")"
pids=()
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
hz="$(getconf CLK_TCK)"
# threads PID: the CPU ticks of its runtime threads, its store writer thread and the rest.
threads() {
  local t comm rt=0 wr=0 other=0 ticks
  for t in /proc/"$1"/task/*; do
    comm="$(cat "$t/comm" 2>/dev/null)" || continue
    ticks="$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null)" || continue
    case "$comm" in
      tokio-rt-worker) rt=$((rt + ticks)) ;;
      faasd-store-wri*) wr=$((wr + ticks)) ;;
      *) other=$((other + ticks)) ;;
    esac
  done
  echo "$rt $wr $other"
}
# settle PID: waits until the server has finished what it was given (its CPU stops moving for
# 0.3 s), at most a minute.
settle() {
  local last now
  last="$(threads "$1")"
  for _ in $(seq 200); do
    sleep 0.3
    kill -0 "$1" 2>/dev/null || { echo "the server $1 died; see $work" >&2; exit 1; }
    now="$(threads "$1")"
    [ "$now" = "$last" ] && return 0
    last="$now"
  done
  echo "the server $1 did not settle within a minute" >&2
  exit 1
}
# load PORT PATH [STATUS]: runs the load generator; sets $rate and $load_us (its CPU a request).
load() {
  local TIMEFORMAT='%U %S'
  { time "$floor" load "$1" 32 "$tasks" "$2" "${3:-202}" >"$work/load.out"; } 2>"$work/load.time"
  rate="$(sed -n 's/.*: \([0-9]*\) requests\/s$/\1/p' "$work/load.out")"
  load_us="$(awk -v n="$tasks" '{printf "%.0f", ($1 + $2) * 1e6 / n}' "$work/load.time")"
}
# report NAME RATE BEFORE AFTER [LOAD_US]: one line; BEFORE and AFTER are `threads` outputs.
report() {
  local name="$1" rate="$2" load_us="${5:--}"
  echo "$3 $4" | awk -v name="$name" -v rate="$rate" -v n="$tasks" -v hz="$hz" -v round="$round" \
    -v load="$load_us" '{
      us = 1e6 / hz / n; rt = ($4 - $1) * us; wr = ($5 - $2) * us; all = rt + wr + ($6 - $3) * us
      split_ = (wr > 0) ? sprintf(" (runtime threads %.0f, store writer %.0f)", rt, wr) : ""
      printf "round %s %-13s %7.0f requests/s   server CPU %4.0f us a request%s   load generator %s us\n",
        round, name, rate, all, split_, load }' | tee -a "$work/runs"
}
floor_run() {
  local name="$1" mode="$2" pid port before
  mkdir -p "$work/$name"
  "$floor" serve "$mode" "$work/$name" >"$work/$name.out" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do grep -q '^listening on' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  port="$(sed -n 's/^listening on //p' "$work/$name.out")"
  [ -n "$port" ] || { echo "faasd-floor serve $mode did not start" >&2; exit 1; }
  before="$(threads "$pid")"
  load "$port" /v1/tasks
  report "$name" "$rate" "$before" "$(threads "$pid")" "$load_us"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  unset 'pids[-1]'
}
# start NAME FLAGS...: a faasd server; its pid in $server_pid, its URL in $server_url.
start() {
  local name="$1"
  shift
  "$bin" serve --data "$work/$name-data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 200); do grep -q '^faasd listening on' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  server_url="$(sed -n 's/^faasd listening on //p' "$work/$name.out")"
  [ -n "$server_url" ] || { echo "faasd did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
}
start warm
warm_pid="$server_pid" warm_url="$server_url"
start queue --local-workers 0
queue_pid="$server_pid" queue_url="$server_url"
printf 'cat >/dev/null\n' >"$work/queued.sh"
FAASD_URL="$queue_url" "$bin" register queued "$work/queued.sh" >/dev/null
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
bench() {
  "$bin" bench --url "$warm_url" --runtime python --function py-noop --code-file "$work/noop.py" \
    --tasks "$1" --connections 32 --sync-calls 0 --keep --json
}
bench 2000 >/dev/null
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); $tasks requests over 32 connections"
echo "data under $work ($(df --output=fstype "$work" | tail -1))"
for round in $(seq "$rounds"); do
  floor_run floor-http none
  floor_run floor-fsync fsync
  settle "$warm_pid"
  before="$(threads "$warm_pid")"
  load "${warm_url##*:}" /v1/no-such-route 404
  report faasd-404 "$rate" "$before" "$(threads "$warm_pid")" "$load_us"
  before="$(threads "$queue_pid")"
  load "${queue_url##*:}" "/v1/functions/queued/invoke?async=true"
  settle "$queue_pid"
  report faasd-queue "$rate" "$before" "$(threads "$queue_pid")" "$load_us"
  before="$(threads "$warm_pid")"
  load "${warm_url##*:}" "/v1/functions/py-noop/invoke?async=true"
  settle "$warm_pid"
  report faasd-submit "$rate" "$before" "$(threads "$warm_pid")" "$load_us"
  before="$(threads "$warm_pid")"
  rate="$(bench "$tasks" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput"]["tasks_per_second"]))')"
  settle "$warm_pid"
  report faasd-bench "$rate" "$before" "$(threads "$warm_pid")"
done
python3 - "$work/runs" <<'PY'
import re, statistics, sys
runs = {}
pattern = (r"round \d+ (\S+)\s+(\d+) requests/s\s+server CPU\s+(\d+) us a request"
           r"(?: \(runtime threads (\d+), store writer (\d+)\))?\s+load generator (\S+) us")
for line in open(sys.argv[1]):
    m = re.match(pattern, line)
    runs.setdefault(m[1], []).append(m.groups()[1:])
print("median of %d rounds" % len(next(iter(runs.values()))))
for name, rows in runs.items():
    med = lambda i: statistics.median(float(r[i]) for r in rows) if rows[0][i] not in (None, "-") else None
    rate, cpu, rt, wr, gen = (med(i) for i in range(5))
    split_ = f" (runtime threads {rt:.0f}, store writer {wr:.0f})" if wr else ""
    gen_ = f"   load generator {gen:.0f} us" if gen is not None else ""
    print(f"  {name:<13} {rate:7.0f} requests/s   server CPU {cpu:4.0f} us a request{split_}{gen_}")
PY
