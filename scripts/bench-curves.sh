#!/usr/bin/env bash
# The curves of how cost grows (docs/performance.md, "The curves"): sweeps that run `faasd bench
# --csv` against a release server on a temporary data directory and write their raw figures to
# target/curves/SWEEP.csv (each sweep starts its file afresh). scripts/plot-curves.py draws them.
#
#   payload      warm python no-op, payloads of 10 B to 6 MiB (fewer tasks for big payloads)
#   functions    1 to 10,000 registered copies, calls round robin over them: the cold shell `cat`
#                (the registry's own cost) and the warm python no-op (the warm pools' cost)
#   connections  warm python no-op, 1 to 1,000 concurrent connections, async and sync
#   backlog      0 to 1,000,000 queued tasks: RSS per task, restart after kill -9, drain rate
#                (scripts/backlog-memory.py curve)
#   remote       1, 2, 4, 8 remote workers sharing 8 slots (scripts/bench-remote.sh)
#
# Usage: scripts/bench-curves.sh [payload|functions|connections|backlog|remote|all]
set -euo pipefail
cd "$(dirname "$0")/.."
sweep="${1:-all}"
source scripts/bench-env.sh
out="$PWD/target/curves"
mkdir -p "$out"
noop="$(mktemp)"
trap 'rm -f "$noop"' EXIT
printf 'def handle(payload):\n    return payload\n' >"$noop"
python=(--runtime python --function py-noop --code-file "$noop")

payload() {
  rm -f "$out/payload.csv"
  source scripts/bench-server.sh
  for size in 10 100 1000 10000 65536 100000 1000000 6291456; do
    # At most ~200 MB of payloads per point for the async figure, ~50 MB for the sync one.
    local tasks=$(( 200000000 / size )) calls=$(( 50000000 / size ))
    tasks=$(( tasks > 5000 ? 5000 : (tasks < 40 ? 40 : tasks) ))
    calls=$(( calls > 500 ? 500 : (calls < 20 ? 20 : calls) ))
    "$bin" bench --url "$url" "${python[@]}" --label "python warm" --payload-size "$size" \
      --tasks "$tasks" --sync-calls "$calls" --csv "$out/payload.csv" || echo "payload $size: failed"
  done
}

functions() {
  rm -f "$out/functions.csv"
  source scripts/bench-server.sh
  for n in 1 10 100 1000 10000; do
    "$bin" bench --url "$url" --label "shell cat" --functions "$n" --tasks 1000 --sync-calls 100 \
      --csv "$out/functions.csv" || echo "functions=$n: failed"
  done
  # Past the worker's idle cap (4 per slot, at least 8) every python call is a cold start.
  # Not 10,000: a python registration compiles the code in a fresh interpreter (30 a second).
  for n in 1 4 8 16 100 1000; do
    "$bin" bench --url "$url" "${python[@]}" --label "python warm" --functions "$n" --tasks 400 \
      --sync-calls 50 --csv "$out/functions.csv" || echo "functions=$n: failed"
  done
}

connections() {
  rm -f "$out/connections.csv"
  source scripts/bench-server.sh
  for c in 1 4 16 64 256 1000; do
    local calls=$(( 2 * c > 500 ? 2 * c : 500 ))
    "$bin" bench --url "$url" "${python[@]}" --label "python warm" --tasks 10000 \
      --connections "$c" --sync-calls "$calls" --sync-connections "$c" \
      --csv "$out/connections.csv" || echo "connections=$c: failed"
  done
}

backlog() {
  python3 scripts/backlog-memory.py curve --code-file "$noop" \
    --points 0,1000,10000,100000,1000000 --csv "$out/backlog.csv"
}

remote() {
  rm -f "$out/remote.csv"
  CSV="$out/remote.csv" KS="1 2 4 8" MODES=push scripts/bench-remote.sh 8 4000 160
}

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
case "$sweep" in
  payload|functions|connections|backlog|remote) ( "$sweep" ) ;;
  all) for s in payload functions connections backlog remote; do ( "$s" ) || echo "$s: failed"; done ;;
  *) echo "usage: $0 [payload|functions|connections|backlog|remote|all]" >&2; exit 2 ;;
esac
echo "figures in $out"
