#!/usr/bin/env bash
# Benchmarks faasd on this machine: starts a release server on a temporary data directory,
# registers a no-op shell function (`cat`), and prints
#   - async throughput: 10,000 tasks over 32 concurrent HTTP connections, submit to last COMPLETED
#   - sync latency p50/p99 over 1,000 sequential calls
#   - the yardstick: a bash loop per core forking the same `sh` script, and our ratio to it.
# Usage: scripts/bench.sh [extra `faasd serve` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
bin="$PWD/target/release/faasd"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --data "$work/data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 "$@" \
  >"$work/out" 2>"$work/log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^faasd worker port' "$work/out" 2>/dev/null && break; sleep 0.05; done
url="$(sed -n 's/^faasd listening on //p' "$work/out")"
[ -n "$url" ] || { echo "server did not start:"; cat "$work/log"; exit 1; }

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
echo "server:  faasd serve $* (url $url)"
out="$("$bin" bench --url "$url" --tasks 10000 --connections 32 --sync-calls 1000)"
echo "$out"

# The yardstick: one bash loop per core, each forking `sh script` (script = cat) 1,000 times.
echo cat >"$work/noop.sh"
cores="$(nproc)"
start="$(date +%s.%N)"
loops=()
for _ in $(seq "$cores"); do
  ( for _ in $(seq 1000); do sh "$work/noop.sh" </dev/null >/dev/null; done ) &
  loops+=($!)
done
wait "${loops[@]}"
end="$(date +%s.%N)"
ours="$(echo "$out" | sed -n 's/.*= \([0-9]*\) tasks\/s.*/\1/p' | head -1)"
awk -v c="$cores" -v s="$start" -v e="$end" -v o="$ours" 'BEGIN {
  y = c * 1000 / (e - s)
  printf "yardstick: bash loops forking sh on %d cores = %.0f forks/s\n", c, y
  printf "ratio: faasd end-to-end / yardstick = %.2f\n", o / y
}'
