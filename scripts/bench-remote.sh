#!/usr/bin/env bash
# The weak-scaling study: a server with 0 local workers plus K remote workers (K = 1, 2, 4) with
# the same total slots, in push and in pull mode, against local mode, for no-op (`cat`) and
# `sleep 0.1` tasks. Prints one line per run. Environment: KS, the worker counts (default
# "1 2 4"); MODES, the dispatch modes (default "push pull"); CSV, a file every `faasd bench` run
# appends its row to (`--csv`, with the server's worker count in it).
# Usage: [KS="1 2 4 8"] [MODES=push] [CSV=FILE] scripts/bench-remote.sh [TOTAL_SLOTS] [NOOP_TASKS] [SLEEP_TASKS]
set -euo pipefail
cd "$(dirname "$0")/.."
slots="${1:-4}"; noop_tasks="${2:-5000}"; sleep_tasks="${3:-400}"
ks="${KS:-1 2 4}"; modes="${MODES:-push pull}"
csv=(); [ -n "${CSV:-}" ] && csv=(--csv "$CSV")
cargo build --release --locked --quiet
bin="$PWD/target/release/faasd"
work="$(mktemp -d)"
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

run() { # label local_slots workers mode
  local label="$1" local_slots="$2" k="$3" mode="$4"
  rm -rf "$work/data" "$work/out"
  "$bin" serve --data "$work/data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 \
    --local-workers "$local_slots" >"$work/out" 2>"$work/log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^faasd worker port' "$work/out" 2>/dev/null && break; sleep 0.05; done
  local url waddr
  url="$(sed -n 's/^faasd listening on //p' "$work/out")"
  waddr="$(sed -n 's/^faasd worker port on //p' "$work/out")"
  for i in $(seq "$k"); do
    "$bin" worker --server "$waddr" --slots $((slots / k)) --dispatch "$mode" --name "w$i" \
      --cache "$work/cache-$i" 2>>"$work/log" &
    pids+=($!)
  done
  until [ "$(curl -s "$url/healthz" | sed -n 's/.*"workers":\([0-9]*\).*/\1/p')" = "$(( k > 0 ? k : 1 ))" ]; do sleep 0.05; done
  "$bin" bench --url "$url" --label "$label noop" --tasks "$noop_tasks" --sync-calls 300 "${csv[@]}"
  "$bin" bench --url "$url" --label "$label sleep0.1" --function bench-sleep --script 'sleep 0.1; cat' \
    --tasks "$sleep_tasks" --sync-calls 20 "${csv[@]}"
  stop_all
}

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); total slots $slots"
run "local slots=$slots" "$slots" 0 push
for mode in $modes; do
  for k in $ks; do
    run "$mode K=$k x$((slots / k))" 0 "$k" "$mode"
  done
done
