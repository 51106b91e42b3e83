#!/usr/bin/env bash
# An A/B of two servers in one run: warm python no-op tasks through server A and server B in
# turn (A first in odd rounds, B first in even ones), ROUNDS times (default 3), so the machine's
# noise falls on both. Each round measures async throughput (TASKS, default 10,000, over 32
# connections) and SYNC sequential sync calls (default 1,000) on each server; prints every run,
# the medians with their ratio B/A, and the rounds' own ratios (their median and how many
# rounds B won).
# A and B are a binary and flags each: A_BIN/B_BIN (default: the release build of this checkout)
# and A_FLAGS/B_FLAGS (extra `faasd serve` flags); A_CLIENT/B_CLIENT pick the `faasd bench` that
# drives each side (default: the release build of this checkout), for an A/B of the client.
# Usage: A_BIN=saved/faasd B_FLAGS="--commit-before-answer" scripts/bench-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
tasks="${TASKS:-10000}"
sync_calls="${SYNC:-1000}"
source scripts/need-number.sh
need_number ROUNDS "$rounds"
need_number TASKS "$tasks"
need_number SYNC "$sync_calls"
source scripts/bench-env.sh
a_bin="${A_BIN:-$bin}"
b_bin="${B_BIN:-$bin}"
a_client="${A_CLIENT:-$bin}"
b_client="${B_CLIENT:-$bin}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# start NAME BIN FLAGS...: starts a server; its URL is in $work/NAME.url.
start() {
  local name="$1" server="$2"
  shift 2
  "$server" serve --data "$work/$name-data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do grep -q '^faasd worker port' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's/^faasd listening on //p' "$work/$name.out" >"$work/$name.url"
  [ -s "$work/$name.url" ] || { echo "server $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
}
# shellcheck disable=SC2086
start a "$a_bin" ${A_FLAGS:-}
# shellcheck disable=SC2086
start b "$b_bin" ${B_FLAGS:-}
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
echo "A: $a_bin serve ${A_FLAGS:-}"
echo "B: $b_bin serve ${B_FLAGS:-}"
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
bench() {
  local client="$a_client"
  [ "$1" = b ] && client="$b_client"
  "$client" bench --url "$(cat "$work/$1.url")" --runtime python --function py-noop \
    --code-file "$work/noop.py" --tasks "$2" --connections 32 --sync-calls "$3" --keep --json
}
bench a 1000 50 >/dev/null
bench b 1000 50 >/dev/null
for round in $(seq "$rounds"); do
  # A first in odd rounds, B first in even ones, so neither side always runs after the other.
  order="a b"
  [ $((round % 2)) -eq 0 ] && order="b a"
  for side in $order; do
    bench "$side" "$tasks" "$sync_calls" | python3 -c '
import json, sys
r = json.load(sys.stdin)
rate, p50, p99 = r["throughput"]["tasks_per_second"], r["latency"]["p50_ms"], r["latency"]["p99_ms"]
print("round %s %s: %.0f tasks/s, sync p50 %.3f ms p99 %.3f ms" % (sys.argv[1], sys.argv[2].upper(), rate, p50, p99))
' "$round" "$side" | tee -a "$work/runs"
  done
done
python3 - "$work/runs" <<'PY'
import re, statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (A|B): (\d+) tasks/s, sync p50 ([\d.]+) ms p99 ([\d.]+) ms", line)
    runs[m[1]].append(tuple(float(x) for x in m.groups()[1:]))
med = {k: [statistics.median(col) for col in zip(*v)] for k, v in runs.items()}
(at, ap50, ap99), (bt, bp50, bp99) = med["A"], med["B"]
print(f"median A: {at:.0f} tasks/s, sync p50 {ap50:.3f} ms, p99 {ap99:.3f} ms")
print(f"median B: {bt:.0f} tasks/s, sync p50 {bp50:.3f} ms, p99 {bp99:.3f} ms")
print(f"B/A: throughput {bt / at:.3f}, sync p50 {bp50 / ap50:.3f}, p99 {bp99 / ap99:.3f}")
# Each round runs A and B one after the other, so a round's ratio sees the same neighbours on
# both sides; its median, and how many rounds B won, are steadier than the ratio of medians.
pairs = [b[0] / a[0] for a, b in zip(runs["A"], runs["B"])]
ahead = sum(r > 1 for r in pairs)
print(f"B/A by round: throughput {statistics.median(pairs):.3f} (median of the rounds' ratios, "
      f"{min(pairs):.3f}-{max(pairs):.3f}), B ahead in {ahead} of {len(pairs)} rounds")
PY
