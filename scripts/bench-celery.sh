#!/usr/bin/env bash
# faasd against Celery + Redis on this machine, in one run: the same no-op (a function that
# returns its argument) as a warm `python` function in faasd and as a Celery 5 task, and for each
#   - async throughput: 20,000 tasks from 32 concurrent clients, first submit to last completion
#   - sync latency p50/p99 over 1,000 sequential calls (Celery: `apply_async(...).get()`)
# then the ratios (throughput faasd/Celery, sync p50 Celery/faasd).
#
# Celery: a venv at target/celery-venv with celery[redis]; redis-server (installed with apt-get
# when missing) on a free port, `--save "" --appendonly no` (nothing written to disk), as broker
# and result backend; a prefork worker with one process per core. Its settings, and why, are in
# scripts/bench_celery.py. faasd: a release server with its defaults (every task durable).
#
# Before each async figure, both sides run WARMUP tasks (default 2,000) the same way, not
# counted: the goal is of warm executors, and Celery's prefork pool is started and warm before
# it measures, while `faasd bench` registers its function afresh each round (WARMUP=0 measures
# faasd from its first executor's start, as before).
#
# Usage: [ROUNDS=N] [WARMUP=N] [CELERY_CLIENTS=thread|process] scripts/bench-celery.sh [`faasd serve` flags]
#   ROUNDS (default 1) repeats both measures and prints each round; odd rounds measure Celery
#   first, even rounds faasd first. CELERY_CLIENTS picks how Celery's 32 clients run: threads of
#   one process (the default; its best figure here) or 32 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-1}"
tasks=20000
clients=32
sync_calls=1000
warmup="${WARMUP:-2000}"

if ! command -v redis-server >/dev/null; then
  apt-get install -y -qq redis-server >/dev/null || {
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  }
fi
celery_venv="$PWD/target/celery-venv"
scripts/python-venv.sh "$celery_venv" 'celery[redis]>=5,<6'
py="$celery_venv/bin/python"

source scripts/bench-env.sh
source scripts/bench-server.sh
celery_dir="$work/celery"
mkdir -p "$celery_dir"
redis_pid=""
worker_pid=""
stop_celery() {
  # A TERM is Celery's warm shutdown; the worker stops its pool before redis goes.
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  return 0
}
trap 'stop_celery; cleanup' EXIT

# Redis on a free port (asked of the kernel, then taken; tried again if someone took it first).
for _ in 1 2 3 4 5; do
  port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$celery_dir" \
    --logfile "$celery_dir/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null || true; redis_pid=""
done
[ -n "$redis_pid" ] || { echo "redis-server did not start:"; cat "$celery_dir/redis.log"; exit 1; }
export BENCH_CELERY_REDIS="redis://127.0.0.1:$port/0"
export PYTHONPATH="$PWD/scripts"

(cd "$celery_dir" && exec "$celery_venv/bin/celery" -A bench_celery worker --pool prefork \
  --concurrency "$(nproc)" --loglevel WARNING --without-gossip --without-mingle \
  --without-heartbeat) >"$celery_dir/worker.log" 2>&1 &
worker_pid=$!
"$py" scripts/bench_celery.py ready --timeout 60 || {
  echo "the Celery worker did not answer:"; cat "$celery_dir/worker.log"; exit 1
}
echo "celery:  $("$py" scripts/bench_celery.py versions), $(redis-server --version | cut -d' ' -f1-3)," \
  "prefork --concurrency $(nproc), $clients ${CELERY_CLIENTS:-thread} clients"

printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
measure_celery() {
  # Two processes: the async clients, then the sync calls from a fresh client.
  "$py" scripts/bench_celery.py measure --tasks "$tasks" --clients "$clients" \
    --mode "${CELERY_CLIENTS:-thread}" --warmup "$warmup" --sync-calls 0 >"$work/celery-async.json"
  "$py" scripts/bench_celery.py measure --tasks 0 --sync-calls "$sync_calls" \
    >"$work/celery-sync.json"
  "$py" -c 'import json, sys
a, s = (json.load(open(p)) for p in sys.argv[1:3])
a["latency"] = s["latency"]
json.dump(a, open(sys.argv[3], "w"))' \
    "$work/celery-async.json" "$work/celery-sync.json" "$work/celery.json"
}
measure_faasd() {
  "$bin" bench --url "$url" --label "python warm" --runtime python --function py-noop \
    --code-file "$work/noop.py" --warmup "$warmup" --tasks "$tasks" --connections "$clients" \
    --sync-calls "$sync_calls" --json >"$work/faasd.json"
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    measure_celery; measure_faasd
  else
    measure_faasd; measure_celery
  fi
  cp "$work/celery.json" "$work/celery-$round.json"
  cp "$work/faasd.json" "$work/faasd-$round.json"
  "$py" scripts/bench_celery.py table --round "$round" "$work/celery.json" "$work/faasd.json"
  echo "load average after the round: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared)"
done
if [ "$rounds" -gt 1 ]; then
  "$py" scripts/bench_celery.py summary --rounds "$rounds" "$work"
fi
