#!/usr/bin/env bash
# How fast warm async tasks would run here if one part of their path cost nothing: a bound on
# what any change to that part could buy. Builds a measurement copy of this checkout with
# scripts/bounds.patch applied (into target/bounds; never for use), whose two switches are read
# from the environment:
#   FAASD_BOUND_NO_EXECUTOR  a warm call is answered at once with its payload as the result,
#                            without writing to the executor's pipe (no Python, no round trip);
#   FAASD_BOUND_NO_FSYNC     the store writer's commits skip their fsync (nothing is durable).
# Then, ROUNDS times (default 5), it runs the four variants of that build in a rotated order:
# current (no switch), no executor, no fsync, neither. Each run is one `faasd bench` of TASKS
# warm python no-op tasks (default 20,000) over 32 connections after WARMUP warm-up tasks
# (default 2,000), on a fresh server. The rate is the bench's own (the measured tasks only). The
# CPU is read from /proc over the whole bench (its first call and warm-up included), in clock
# ticks: the server's own, its python3 processes' (the executors), and the whole machine's busy
# and idle time. It prints every run, then each variant's median rate, the server's and the
# machine's busy CPU per task of the bench in microseconds, the python3 and idle ticks, and the
# rate's ratio to current, both as the ratio of the medians and as the median of the rounds' own
# ratios. FAASD_BIN picks the bench client only; the server measured is always the patched build.
# Usage: ROUNDS=5 scripts/bench-bounds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-5}"
tasks="${TASKS:-20000}"
warmup="${WARMUP:-2000}"
source scripts/need-number.sh
need_number ROUNDS "$rounds"
need_number TASKS "$tasks"
need_number WARMUP "$warmup" 0
source scripts/bench-env.sh
src="$PWD/target/bounds-src"
rm -rf "$src"
mkdir -p "$src"
cp -r Cargo.toml Cargo.lock src "$src/"
git apply --directory=target/bounds-src scripts/bounds.patch ||
  { echo "scripts/bounds.patch no longer applies to this checkout: update it" >&2; exit 1; }
CARGO_TARGET_DIR="$PWD/target/bounds" cargo build --release --locked --quiet --manifest-path "$src/Cargo.toml"
bounds_bin="$PWD/target/bounds/release/faasd"
source scripts/fresh-server.sh
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
# Busy and idle ticks of the whole machine (/proc/stat: iowait counts as idle).
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
# User and system ticks of the server's python3 processes (its executors) now running.
pythons() {
  local total=0 p t
  for p in $(server_pythons); do
    t="$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || true)"
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
# run ROUND VARIANT: one measured run on a fresh server; appends "ROUND VARIANT RATE SERVER PYTHON
# BUSY IDLE" (tasks/s, then ticks) to $work/runs.
run() {
  local round="$1" variant="$2" switches=()
  case "$variant" in
    current) ;;
    no-executor) switches=(FAASD_BOUND_NO_EXECUTOR=1) ;;
    no-fsync) switches=(FAASD_BOUND_NO_FSYNC=1) ;;
    neither) switches=(FAASD_BOUND_NO_EXECUTOR=1 FAASD_BOUND_NO_FSYNC=1) ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  fresh_server env ${switches[@]+"${switches[@]}"} "$bounds_bin"
  local busy0 idle0 busy1 idle1 py0 py1 srv0 srv1
  read -r busy0 idle0 < <(machine)
  py0="$(pythons)"
  srv0="$(awk '{print $14+$15}' "/proc/$pid/stat")"
  "$bin" bench --url "$url" --runtime python --function py-noop --code-file "$work/noop.py" \
    --tasks "$tasks" --warmup "$warmup" --connections 32 --sync-calls 0 --keep --json >"$work/bench.json"
  read -r busy1 idle1 < <(machine)
  py1="$(pythons)"
  srv1="$(awk '{print $14+$15}' "/proc/$pid/stat")"
  stop_server
  local rate
  rate="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput"]["tasks_per_second"]))' "$work/bench.json")"
  printf '%-12s %6s tasks/s   server %4s ticks   python3 %4s ticks   machine busy %4s idle %4s ticks\n' \
    "$variant" "$rate" $((srv1 - srv0)) $((py1 - py0)) $((busy1 - busy0)) $((idle1 - idle0))
  echo "$round $variant $rate $((srv1 - srv0)) $((py1 - py0)) $((busy1 - busy0)) $((idle1 - idle0))" \
    >>"$work/runs"
}
variants=(current no-executor no-fsync neither)
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); $tasks tasks over 32 connections after $warmup warm-up tasks; CPU over both"
for round in $(seq "$rounds"); do
  echo "round $round"
  for k in 0 1 2 3; do
    run "$round" "${variants[$(((k + round - 1) % 4))]}"
  done
done
python3 - "$work/runs" "$((tasks + warmup + 1))" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys

runs = [line.split() for line in open(sys.argv[1])]
# Every task of a bench: its first call, the warm-up and the measured ones.
all_tasks, ticks_per_second = int(sys.argv[2]), int(sys.argv[3])
by = {}
for rnd, variant, *figures in runs:
    by.setdefault(variant, {})[rnd] = tuple(int(f) for f in figures)
current = by["current"]


def median(rows, i):
    """The median of figure `i` (rate, server, python3, busy, idle) over a variant's rounds."""
    return statistics.median(r[i] for r in rows.values())


base = median(current, 0)
print(f"median of {len(current)} rounds")
for variant in ("current", "no-executor", "no-fsync", "neither"):
    rows = by[variant]
    # Clock ticks over the bench as microseconds a task of it.
    server_us, busy_us = (median(rows, i) * 1e6 / ticks_per_second / all_tasks for i in (1, 3))
    line = (f"  {variant:<12} {median(rows, 0):7.0f} tasks/s   server {server_us:4.0f} us a task   "
            f"machine {busy_us:4.0f} us a task   python3 {median(rows, 2):4.0f} ticks   "
            f"idle {median(rows, 4):4.0f} ticks")
    if variant != "current":
        ratios = sorted(rows[k][0] / current[k][0] for k in rows if k in current)
        line += (f"   {median(rows, 0) / base:.2f}x (ratio of medians), "
                 f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}, median of the rounds' ratios)")
    print(line)
PY
