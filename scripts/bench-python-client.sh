#!/usr/bin/env bash
# Compares the Python client with `faasd bench` on the same server: starts a release server on a
# temporary data directory, measures `faasd bench`'s async throughput for a no-op warm pickle
# function (10,000 tasks over 32 connections), then `faasd.Executor.map` over 10,000 no-op calls
# of the same kind, and prints both rates and their ratio (the client should reach 0.5 or more).
# The client runs from a venv in target/venv-client (made when missing); the server's executors
# use that venv's python3.
# Usage: scripts/bench-python-client.sh [extra `faasd serve` flags]   (FAASD_BIN: a built faasd to use)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FAASD_BIN:-}" ]; then
  bin="$FAASD_BIN"
else
  cargo build --release --locked --quiet
  bin="$PWD/target/release/faasd"
fi
venv="$PWD/target/venv-client"
scripts/python-venv.sh "$venv" ./python
# The venv is first on PATH, so the server's pickle executors use its python3 and dill.
export PATH="$venv/bin:$PATH"
source scripts/bench-server.sh

args="$(python3 - "$work/noop.pkl" <<'PY'
import base64, sys, dill
def noop(x):
    return x
open(sys.argv[1], "wb").write(dill.dumps(noop))
print(base64.b64encode(dill.dumps(((1,), {}))).decode())
PY
)"
bench="$("$bin" bench --url "$url" --label "pickle warm" --runtime pickle --function pickle-noop \
  --code-file "$work/noop.pkl" --payload "$args" --tasks 10000 --connections 32 --sync-calls 100)"
echo "$bench"
ours="$(echo "$bench" | sed -n 's/.*async throughput.*= \([0-9]*\) tasks\/s.*/\1/p' | head -1)"

python3 - "$url" "$ours" <<'PY'
import sys, time
import faasd

url, bench_rate = sys.argv[1], float(sys.argv[2])

def noop(x):
    return x

with faasd.Executor(url) as pool:
    list(pool.map(noop, range(100)))  # register and warm up, as bench does
    start = time.perf_counter()
    results = list(pool.map(noop, range(10_000)))
    elapsed = time.perf_counter() - start
assert results == list(range(10_000))
rate = 10_000 / elapsed
print("python client: Executor.map over 10000 no-op calls in %.2f s = %.0f tasks/s" % (elapsed, rate))
print("ratio: Executor.map / faasd bench = %.2f" % (rate / bench_rate))
PY
