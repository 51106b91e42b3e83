#!/usr/bin/env bash
# How one `faasd bench` run splits between taking submits and running tasks: a fresh server,
# WARMUP warm python no-op tasks (default 2,000, not counted), then TASKS (default 20,000) over
# 32 connections, ROUNDS times (default 3), each on a fresh server. After each run it reads every
# task record back (`GET /v1/tasks`) and prints:
#   - the bench's own figure;
#   - the submit rate, from the first `created_at` to the last, and the rate of ends meanwhile;
#   - the tasks not yet ended at the last submit (queued or running), and how fast they drained;
#   - the queue wait (`queued_ms`), p50 and max.
# FAASD_BIN=PATH measures that binary instead of this checkout's release build.
# Usage: ROUNDS=3 TASKS=20000 scripts/bench-phases.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
tasks="${TASKS:-20000}"
warmup="${WARMUP:-2000}"
source scripts/need-number.sh
need_number ROUNDS "$rounds"
need_number TASKS "$tasks"
need_number WARMUP "$warmup" 0
source scripts/bench-env.sh
source scripts/fresh-server.sh
printf 'def handle(payload):\n    return payload\n' >"$work/noop.py"
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d); $tasks tasks over 32 connections after $warmup warm-up tasks"
for round in $(seq "$rounds"); do
  fresh_server "$bin"
  "$bin" bench --url "$url" --runtime python --function py-noop --code-file "$work/noop.py" \
    --tasks "$tasks" --warmup "$warmup" --connections 32 --sync-calls 0 --keep --json >"$work/bench.json"
  printf 'round %s: ' "$round"
  python3 - "$url" "$work/bench.json" "$tasks" "$warmup" <<'PY'
import datetime, json, statistics, sys, urllib.error, urllib.request

url, report = sys.argv[1], json.load(open(sys.argv[2]))
count, warmup = int(sys.argv[3]), int(sys.argv[4])
records, cursor = [], None
while True:
    try:
        page = json.load(urllib.request.urlopen(
            url + "/v1/tasks?limit=1000" + (f"&cursor={cursor}" if cursor else "")))
    except (urllib.error.URLError, ValueError) as e:
        sys.exit(f"cannot read the task records back from {url}/v1/tasks: {e}")
    records += page["tasks"]
    cursor = page.get("next_cursor")
    if not cursor:
        break
# The bench's first call (sync), its warm-up tasks, then the measured ones.
if len(records) != 1 + warmup + count:
    sys.exit(f"expected {1 + warmup + count} task records (the first call, {warmup} warm-up, "
             f"{count} measured), found {len(records)}")


def at(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# The measured tasks are the last `count` made: the warm-up and the first call came before.
records.sort(key=lambda t: t["id"])
measured = records[-count:]
if any(t["status"] != "COMPLETED" for t in measured):
    sys.exit(f"expected {count} completed tasks, found {sum(t['status'] == 'COMPLETED' for t in measured)}")
made = [at(t["created_at"]) for t in measured]
ended = [at(t["finished_at"]) for t in measured]
first, last_submit, last_end = min(made), max(made), max(ended)
submitting = max(last_submit - first, 1e-3)
meanwhile = sum(e <= last_submit for e in ended)
left = count - meanwhile
drain = (f"{left / max(last_end - last_submit, 1e-3):,.0f}/s in {last_end - last_submit:.2f} s"
         if left else "none")
queued = sorted(t["queued_ms"] for t in measured)
print(f"bench {report['throughput']['tasks_per_second']:,.0f} tasks/s | "
      f"submits {count / submitting:,.0f}/s over {submitting:.2f} s, ends meanwhile "
      f"{meanwhile / submitting:,.0f}/s | not ended at the last submit {left:,}, drained {drain} | "
      f"queue wait p50 {statistics.median(queued):.0f} ms, max {queued[-1]:.0f} ms")
PY
  stop_server
done
