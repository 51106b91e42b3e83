#!/usr/bin/env bash
# What watching costs: warm python throughput (`faasd bench`) with nobody watching, against the
# same run with the dashboard open in headless Chromium (its live event stream) and `/metrics`
# scraped every second, alternated ROUNDS times (default 3) on one server, so the machine's noise
# falls on both. Prints each run's line and the ratio of the medians.
# Usage: [ROUNDS=3] scripts/bench-observed.sh [extra `faasd serve` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
source scripts/bench-env.sh
source scripts/bench-server.sh
scripts/install-chromium.sh
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
bench() {
  "$bin" bench --url "$url" --label "$1" --runtime python --function py-noop \
    --code-file "$work/noop.py" --tasks 10000 --connections 32 --sync-calls 200 --keep
}
watchers=()
start_watching() {
  chromium --headless=new --no-sandbox --disable-gpu --user-data-dir="$work/chrome" \
    --remote-debugging-port=0 "$url/" >/dev/null 2>&1 &
  watchers+=($!)
  ( while :; do curl -sf -o /dev/null "$url/metrics"; sleep 1; done ) &
  watchers+=($!)
  sleep 3 # the page loads and opens its event stream
}
stop_watching() {
  for pid in "${watchers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${watchers[@]}" 2>/dev/null || true
  watchers=()
}
trap 'stop_watching; cleanup' EXIT
bench "warm-up" >/dev/null
plain=()
watched=()
rate() { sed -n 's/.*= \([0-9]*\) tasks\/s.*/\1/p' | head -1; }
for round in $(seq "$rounds"); do
  out="$(bench "round $round, nobody watching")"
  echo "$out" | grep -i "tasks/s" | head -1
  plain+=("$(echo "$out" | rate)")
  start_watching
  out="$(bench "round $round, dashboard open + /metrics every 1 s")"
  stop_watching
  echo "$out" | grep -i "tasks/s" | head -1
  watched+=("$(echo "$out" | rate)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p="$(median "${plain[@]}")"
w="$(median "${watched[@]}")"
echo "median tasks/s: nobody watching $p, watched $w, ratio $(awk -v a="$w" -v b="$p" 'BEGIN {printf "%.3f", a/b}')"
