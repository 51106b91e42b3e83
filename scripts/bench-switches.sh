#!/usr/bin/env bash
# How often each part of the server and its executors gives up its core during warm async tasks,
# and whether the executors' scheduling changes the rate. ROUNDS times (default 4), in an
# alternated order, it runs `faasd bench` (TASKS warm python no-op tasks, default 20,000, over 32
# connections after WARMUP warm-up tasks, default 2,000) on a fresh server two ways:
#   default  the executors as the server starts them;
#   policy   every python3 process of the server is passed, every 50 ms during the bench, to POLICY (default
#            `chrt -b -p 0`, SCHED_BATCH; `renice -n 5 -p` lowers their priority instead), which
#            gets the process id as its last argument.
# For each run it prints the rate and the context switches a task of the bench (warm-up
# included), voluntary (the thread waited) and involuntary (it was preempted), from
# /proc/PID/task/TID/status: the server's runtime threads, its store writer, and its python3
# processes (the executors). Then each way's median rate and the median of the rounds' ratios (policy/default).
# Usage: ROUNDS=4 scripts/bench-switches.sh;  POLICY='renice -n 5 -p' scripts/bench-switches.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-4}"
tasks="${TASKS:-20000}"
warmup="${WARMUP:-2000}"
policy="${POLICY:-chrt -b -p 0}"
source scripts/need-number.sh
need_number ROUNDS "$rounds"
need_number TASKS "$tasks"
need_number WARMUP "$warmup" 0
source scripts/bench-env.sh
source scripts/fresh-server.sh
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
# One line per thread or process: "GROUP ID VOLUNTARY INVOLUNTARY".
switches() {
  local t p name
  for t in /proc/"$pid"/task/*; do
    name="$(cat "$t/comm" 2>/dev/null || true)"
    case "$name" in
      tokio-rt-worker) name=runtime ;;
      faasd-store-wri*) name=writer ;;
      *) continue ;;
    esac
    awk -v g="$name" -v id="${t##*/}" \
      '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print g, id, v, n}' "$t/status" 2>/dev/null || true
  done
  for p in $(server_pythons); do
    awk -v id="$p" '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print "python3", id, v, n}' \
      "/proc/$p/status" 2>/dev/null || true
  done
}
# run ROUND WAY: one measured run on a fresh server; appends "ROUND WAY RATE" to $work/runs and
# prints the run's line.
run() {
  local round="$1" way="$2" loop=""
  fresh_server "$bin"
  switches >"$work/before"
  if [ "$way" = policy ]; then
    (
      while true; do
        for p in $(server_pythons); do $policy "$p" >/dev/null 2>&1 || true; done
        sleep 0.05
      done
    ) &
    loop=$!
  fi
  "$bin" bench --url "$url" --runtime python --function py-noop --code-file "$work/noop.py" \
    --tasks "$tasks" --warmup "$warmup" --connections 32 --sync-calls 0 --keep --json >"$work/bench.json"
  switches >"$work/after"
  if [ -n "$loop" ]; then
    kill "$loop" 2>/dev/null || true
    wait "$loop" 2>/dev/null || true
  fi
  stop_server
  python3 - "$work/before" "$work/after" "$work/bench.json" "$((tasks + warmup + 1))" "$round" "$way" \
    "$work/runs" <<'PY'
import json, sys

before_file, after_file, bench_file, all_tasks, rnd, way, runs = sys.argv[1:]
def read(path):
    return {(g, i): (int(v), int(n)) for g, i, v, n in (line.split() for line in open(path))}
before, after = read(before_file), read(after_file)
totals = {}
for key, (v, n) in after.items():
    # A thread or process that started during the bench counts from zero.
    v0, n0 = before.get(key, (0, 0))
    t = totals.setdefault(key[0], [0, 0])
    t[0] += v - v0
    t[1] += n - n0
rate = json.load(open(bench_file))["throughput"]["tasks_per_second"]
parts = "   ".join(f"{g} {v / int(all_tasks):.2f} + {n / int(all_tasks):.2f}"
                   for g, (v, n) in sorted(totals.items()))
print(f"{way:<8} {rate:7.0f} tasks/s   switches a task, voluntary + involuntary: {parts}")
with open(runs, "a") as f:
    f.write(f"{rnd} {way} {rate}\n")
PY
}
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); $tasks tasks over 32 connections after $warmup warm-up tasks; policy: $policy"
for round in $(seq "$rounds"); do
  echo "round $round"
  if [ $((round % 2)) = 1 ]; then run "$round" default; run "$round" policy
  else run "$round" policy; run "$round" default; fi
done
python3 - "$work/runs" <<'PY'
import statistics, sys

rates = {}
for rnd, way, rate in (line.split() for line in open(sys.argv[1])):
    rates.setdefault(way, {})[rnd] = float(rate)
ratios = sorted(rates["policy"][r] / rates["default"][r] for r in rates["default"])
print(f"median of {len(ratios)} rounds: default {statistics.median(rates['default'].values()):.0f} tasks/s, "
      f"policy {statistics.median(rates['policy'].values()):.0f} tasks/s, "
      f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}, median of the rounds' ratios)")
PY
