#!/usr/bin/env bash
# Benchmarks faasd on this machine: starts a release server on a temporary data directory,
# registers no-op functions (`cat` in the cold shell runtime, then warm python and pickle
# handlers), and prints for each
#   - async throughput: 10,000 tasks over 32 concurrent HTTP connections, submit to last COMPLETED
#   - sync latency p50/p99 over 1,000 sequential calls
#   - for the warm runtimes, the first call's cold start (the load phase)
#   - the yardstick: a bash loop per core forking the same `sh` script, and our ratio to it.
# Usage: scripts/bench.sh [extra `faasd serve` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-env.sh
source scripts/bench-server.sh
out="$("$bin" bench --url "$url" --tasks 10000 --connections 32 --sync-calls 1000)"
echo "$out"

# Warm runtimes: a no-op python handler and a no-op dill-pickled callable.
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
args="$(python3 - "$work/noop.pkl" <<'PY'
import base64, sys, dill
def noop(x):
    return x
open(sys.argv[1], "wb").write(dill.dumps(noop))
print(base64.b64encode(dill.dumps(((1,), {}))).decode())
PY
)"
"$bin" bench --url "$url" --label "python warm" --runtime python --function py-noop \
  --code-file "$work/noop.py" --tasks 10000 --connections 32 --sync-calls 1000
"$bin" bench --url "$url" --label "pickle warm" --runtime pickle --function pickle-noop \
  --code-file "$work/noop.pkl" --payload "$args" --tasks 10000 --connections 32 --sync-calls 1000

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
