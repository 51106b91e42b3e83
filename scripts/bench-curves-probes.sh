#!/usr/bin/env bash
# The probes behind the readings of docs/performance.md, "The curves": on one release server,
#   - fsync and fdatasync calls of the server (strace) over 1,000 async tasks with payloads of
#     10,000, 60,000 and 65,536 bytes (the last one at the value-file threshold);
#   - cold starts (faasd_cold_starts_total) when calls cycle over 8, 9 and 16 python functions;
#   - 200 registrations of shell and of python functions, 32 at a time, and the processes the
#     server starts for them (strace -c);
#   - the server's CPU time and context switches per task (/proc) at 16, 64 and 1,000 connections.
# Usage: scripts/bench-curves-probes.sh (strace must be installed; run as root or with ptrace rights)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-env.sh
source scripts/bench-server.sh
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
py=(--runtime python --function pyp --code-file "$work/noop.py")
echo "== payload: fsyncs for 1,000 async tasks, just under and at the value-file threshold"
for size in 10000 60000 65536; do
  strace -f -qq -e trace=fdatasync,fsync -T -p "$server_pid" -o "$work/strace.$size" &
  sp=$!; sleep 1
  "$bin" bench --url "$url" "${py[@]}" --payload-size "$size" --tasks 1000 --sync-calls 0
  sleep 0.5; kill -INT $sp; wait $sp || true
  awk -v s="$size" '/fdatasync|fsync/ { n[$2]++; t[$2] += substr($NF, 2, length($NF) - 2) }
    END { for (k in n) printf "size %s: %-12s %d calls, mean %.2f ms\n", s, k, n[k], 1000 * t[k] / n[k] }' \
    FS='[ (]+' "$work/strace.$size"
done
echo "== functions: cold starts by how many python functions share the pool"
for n in 8 9 16; do
  before="$(curl -s "$url/metrics" | awk '/^faasd_cold_starts_total/ { s += $2 } END { print s + 0 }')"
  "$bin" bench --url "$url" --runtime python --code-file "$work/noop.py" --function "pyf$n" --functions "$n" --tasks 200 --sync-calls 0 | grep async
  after="$(curl -s "$url/metrics" | awk '/^faasd_cold_starts_total/ { s += $2 } END { print s + 0 }')"
  echo "functions=$n: $((after - before)) cold starts for 201 calls"
done
echo "== registering 200 functions, 32 at a time: shell vs python (and processes the server starts)"
code_py="$(base64 -w0 "$work/noop.py")"; code_sh="$(printf cat | base64 -w0)"
for rt in shell python; do
  code="$code_sh"; [ "$rt" = python ] && code="$code_py"
  strace -f -qq -c -e trace=execve,clone,clone3,fork,vfork -p "$server_pid" -o "$work/reg.$rt" &
  sp=$!; sleep 1
  start=$(date +%s.%N)
  seq 200 | xargs -P 32 -I{} curl -s -o /dev/null -X POST "$url/v1/functions" \
    -H 'content-type: application/json' -d "{\"name\":\"reg-$rt-{}\",\"runtime\":\"$rt\",\"code\":\"$code\"}"
  end=$(date +%s.%N)
  kill -INT $sp; wait $sp || true
  awk -v s="$start" -v e="$end" -v r="$rt" 'BEGIN { printf "%s: 200 registrations in %.2f s = %.0f/s\n", r, e - s, 200 / (e - s) }'
  grep -E 'execve|clone|fork' "$work/reg.$rt" || echo "$rt: no process started"
done
echo "== connections: the server's CPU time and context switches per task, from /proc"
cpu_ms() { awk '{ print ($14 + $15) * 1000 / 100 }' "/proc/$server_pid/stat"; }
switches() { cat /proc/$server_pid/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
for c in 16 64 1000; do
  c0=$(cpu_ms); s0=$(switches)
  "$bin" bench --url "$url" --runtime python --code-file "$work/noop.py" --function "pyc$c" --connections "$c" --tasks 10000 --sync-calls 0 | grep async
  c1=$(cpu_ms); s1=$(switches)
  awk -v c=$c -v a="$c0" -v b="$c1" -v x="$s0" -v y="$s1" 'BEGIN { printf "connections=%d: server CPU %.1f us/task, %.2f context switches/task\n", c, (b - a) * 1000 / 10001, (y - x) / 10001 }'
done
