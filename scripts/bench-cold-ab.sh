#!/usr/bin/env bash
# A/B of cold `shell` calls (`cat`) between faasd builds or serve flags, interleaved, on this
# machine. Each variant is LABEL=BINARY or LABEL=BINARY:SERVE-FLAGS; every round runs each
# variant once, in the order given, on a fresh server and data directory:
#   faasd bench --tasks $TASKS --connections 32 --sync-calls $SYNC   (3000 and 400 by default)
# Prints one line per run (async tasks/s, sync p50/p99, and the CPU time the server and
# everything it started used per call, from `perf stat -e task-clock`, which follows forks),
# then the median of each figure per variant.
# Usage: ROUNDS=3 scripts/bench-cold-ab.sh before=old/faasd after=target/release/faasd \
#          off=target/release/faasd:--sandbox\ none
set -euo pipefail
rounds="${ROUNDS:-3}" tasks="${TASKS:-3000}" sync="${SYNC:-400}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# One run: prints `LABEL tasks/s p50 p99 cpu-ms-per-call`.
run() {
  local label="$1" bin="$2" flags="$3" work pid url
  work="$(mktemp -d)"
  # shellcheck disable=SC2086 # the flags are split on purpose
  perf stat -e task-clock -x, -o "$work/cpu" -- "$bin" serve --data "$work/data" \
    --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 $flags >"$work/out" 2>"$work/log" &
  for _ in $(seq 200); do grep -q '^faasd worker port' "$work/out" 2>/dev/null && break; sleep 0.05; done
  pid="$(pgrep -f "serve --data $work/data" | grep -vx "$!" | head -1)"
  url="$(sed -n 's/^faasd listening on //p' "$work/out")"
  "$bin" bench --url "$url" --tasks "$tasks" --connections 32 --sync-calls "$sync" --json \
    >"$work/bench"
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  while ! grep -q task-clock "$work/cpu" 2>/dev/null; do sleep 0.05; done
  python3 - "$label" "$work/bench" "$work/cpu" "$((tasks + sync + 1))" <<'PY'
import json, sys
label, bench, cpu, calls = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4])
ms = next(float(l.split(",")[0]) for l in open(cpu) if "task-clock" in l)
print(f"{label} {bench['throughput']['tasks_per_second']:.0f} {bench['latency']['p50_ms']:.2f} "
      f"{bench['latency']['p99_ms']:.2f} {ms / calls:.2f}")
PY
  rm -rf "$work"
}

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "variant  tasks/s  p50 ms  p99 ms  cpu ms/call"
for _ in $(seq "$rounds"); do
  for variant in "$@"; do
    label="${variant%%=*}" spec="${variant#*=}"
    bin="${spec%%:*}" flags=""
    [[ "$spec" == *:* ]] && flags="${spec#*:}"
    run "$label" "$bin" "$flags" | tee -a "$log"
  done
done
python3 - "$log" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, *figures = line.split()
    runs[label].append([float(f) for f in figures])
for label, rows in runs.items():
    tps, p50, p99, cpu = (statistics.median(col) for col in zip(*rows))
    print(f"median of {len(rows)}: {label} {tps:.0f} tasks/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"{cpu:.2f} ms CPU per call")
PY
