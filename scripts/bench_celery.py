"""The Celery side of scripts/bench-celery.sh: a Celery app with one no-op task, and the client
that measures it the way `faasd bench` measures faasd.

The worker imports this module (`celery -A bench_celery worker`, with scripts/ on PYTHONPATH;
hence the underscore in its name), so it holds the app and the task. Run as a script, it is
the client:

    python scripts/bench_celery.py ready --timeout 60
    python scripts/bench_celery.py measure --tasks 20000 --clients 32 --sync-calls 1000
    python scripts/bench_celery.py table --round 1 CELERY.json FAASD.json

The broker and result backend are the Redis at $BENCH_CELERY_REDIS (redis://host:port/0).

Settings (everything else is Celery's default):
- worker_prefetch_multiplier: Celery's default of 4, settable with $BENCH_CELERY_PREFETCH. Celery's
  docs suggest a higher one for many short tasks; here 64 and 128 gave the same throughput as 4
  (the worker's main process, which hands each message to the pool, is the limit), so the
  default stays. Acknowledgement stays early (the default).
- broker_pool_limit = 64: a producer connection per client thread, instead of 32 threads
  waiting on the default pool of 10.
- worker_disable_rate_limits: no task here has a rate limit, so the check is skipped.
- The worker runs with --without-gossip --without-mingle --without-heartbeat (cluster chatter
  that a single worker does not use) and logs at WARNING.
- The 32 clients are threads of one process (`--mode thread`): 32 client processes
  (`--mode process`) gave about half the throughput here, sharing two cores with the worker.
  The threads submit (about 1,500 tasks/s); the worker is the limit. Results are read with
  `get_many` after the last submit, in batches (see `collect`); the throughput figure runs to
  the latest `date_done` the worker recorded, as faasd's runs to the latest `finished_at`.
"""

import argparse
import datetime
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/0")
PAYLOAD = "x"

app = Celery("bench_celery", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
    broker_pool_limit=64,
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
)


@app.task
def noop(payload):
    """The no-op task: returns its argument, like the faasd function `handle(payload)`."""
    return payload


def parse_date(value):
    """A result's `date_done` (an ISO string, or a datetime) as seconds since the epoch."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def collect(results, timeout_s):
    """Waits for every result, in submission order 1,000 at a time, each batch with Celery's
    `get_many` (one MGET of the batch's pending keys every 0.1 s); returns the latest
    `date_done`, the time the last result was read here, and how many did not succeed.

    Batches keep each poll small: an MGET of all 20,000 keys every 0.1 s took CPU from the
    worker. (`ResultSet.join_native`, which reads the Redis channels instead, lost results when
    the submitters were threads of one process.)"""
    last_done, last_received, failed = 0.0, 0.0, 0
    ids = [r.id for r in results]
    for i in range(0, len(ids), 1000):
        for _, meta in app.backend.get_many(ids[i:i + 1000], timeout=timeout_s, interval=0.1):
            last_received = time.time()
            if meta["status"] != "SUCCESS":
                failed += 1
            if meta.get("date_done"):
                last_done = max(last_done, parse_date(meta["date_done"]))
    return last_done, last_received, failed


def submit(count, start):
    """Waits for the start, then submits `count` no-op tasks; returns their results."""
    start.wait()
    return [noop.apply_async((PAYLOAD,)) for _ in range(count)]


def shares(tasks, clients):
    """`tasks` shared out over `clients` as evenly as can be."""
    return [tasks // clients + (1 if c < tasks % clients else 0) for c in range(clients)]


def throughput_threads(tasks, clients, timeout_s):
    """Submits from `clients` threads of this process, then collects every result here."""
    start = threading.Barrier(clients + 1)
    results = [[] for _ in range(clients)]

    def run(c, count):
        results[c] = submit(count, start)

    threads = [
        threading.Thread(target=run, args=(c, n)) for c, n in enumerate(shares(tasks, clients))
    ]
    for t in threads:
        t.start()
    started = time.time()
    start.wait()
    for t in threads:
        t.join()
    submitted = time.time()
    flat = [r for part in results for r in part]
    last_done, last_received, failed = collect(flat, timeout_s)
    return started, submitted, last_done, last_received, failed


def process_client(count, start, timeout_s, out):
    """One client process: submits its share, collects its own results, reports the times."""
    results = submit(count, start)
    submitted = time.time()
    out.put((submitted, *collect(results, timeout_s)))


def throughput_processes(tasks, clients, timeout_s):
    """Submits from `clients` processes, each collecting its own results."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=process_client, args=(n, start, timeout_s, out))
        for n in shares(tasks, clients)
    ]
    for p in procs:
        p.start()
    started = time.time()
    start.wait()
    reports = [out.get() for _ in procs]
    for p in procs:
        p.join()
    submitted = max(r[0] for r in reports)
    last_done = max(r[1] for r in reports)
    last_received = max(r[2] for r in reports)
    failed = sum(r[3] for r in reports)
    return started, submitted, last_done, last_received, failed


def sync_latency(calls, timeout_s):
    """`calls` sequential `apply_async(...).get()`; the time of each in seconds."""
    latencies = []
    for _ in range(calls):
        t = time.perf_counter()
        noop.apply_async((PAYLOAD,)).get(timeout=timeout_s)
        latencies.append(time.perf_counter() - t)
    return latencies


def percentile(sorted_values, p):
    """The nearest-rank percentile, as `faasd bench` takes it."""
    i = min(max(int(-(-len(sorted_values) * p // 1)), 1), len(sorted_values)) - 1
    return sorted_values[i]


def measure(args):
    """The async figure, then the sync figures, as one JSON object on stdout."""
    report = {"clients": args.clients, "mode": args.mode, "tasks": args.tasks,
              "warmup_tasks": args.warmup}
    run = throughput_threads if args.mode == "thread" else throughput_processes
    if args.warmup > 0:
        # The same load first, not counted: the clients' connections and the worker's pool
        # warm, as faasd's `--warmup` warms its executors.
        if run(args.warmup, args.clients, 300)[-1]:
            sys.exit("bench_celery: warm-up tasks did not succeed")
    if args.tasks > 0:
        started, submitted, last_done, last_received, failed = run(args.tasks, args.clients, 300)
        if failed:
            sys.exit(f"bench_celery: {failed} tasks did not succeed")
        done_s = max(last_done, submitted) - started
        received_s = max(last_received, submitted) - started
        report["throughput"] = {
            "submit_seconds": submitted - started,
            "seconds": done_s,
            "tasks_per_second": args.tasks / done_s,
            "received_seconds": received_s,
            "received_tasks_per_second": args.tasks / received_s,
        }
    if args.sync_calls > 0:
        latencies = sorted(sync_latency(args.sync_calls, 30))
        report["latency"] = {
            "calls": len(latencies),
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": latencies[-1] * 1000,
        }
    print(json.dumps(report))


def ready(args):
    """Waits until the worker answers a no-op task."""
    noop.apply_async((PAYLOAD,)).get(timeout=args.timeout)


def versions(_args):
    """The Celery and redis-py versions, for the header."""
    import redis
    import celery

    print(f"Celery {celery.__version__}, redis-py {redis.__version__}")


def ratio_line(name, ours, theirs, ratio, goal):
    return f"{name:<34} {ours:>16} {theirs:>16} {ratio:>8.1f}x   {goal}"


def table(args):
    """Prints one round: both figures and the ratios."""
    with open(args.celery) as f:
        celery = json.load(f)
    with open(args.faasd) as f:
        faasd = json.load(f)
    ft, ct = faasd["throughput"], celery["throughput"]
    fl, cl = faasd["latency"], celery["latency"]
    print(f"round {args.round}")
    print(f"{'':<34} {'faasd':>16} {'Celery + Redis':>16} {'ratio':>9}   goal")
    print(ratio_line(
        f"async, {ft['tasks']:,} tasks / {ft['connections']} clients",
        f"{ft['tasks_per_second']:,.0f} tasks/s", f"{ct['tasks_per_second']:,.0f} tasks/s",
        ft["tasks_per_second"] / ct["tasks_per_second"], "faasd/Celery >= 30x",
    ))
    print(ratio_line(
        f"sync p50, {fl['calls']:,} sequential calls",
        f"{fl['p50_ms']:.2f} ms", f"{cl['p50_ms']:.2f} ms",
        cl["p50_ms"] / fl["p50_ms"], "Celery/faasd >= 5x",
    ))
    print(ratio_line(
        "sync p99", f"{fl['p99_ms']:.2f} ms", f"{cl['p99_ms']:.2f} ms",
        cl["p99_ms"] / fl["p99_ms"], "",
    ))
    print(
        f"(Celery async is submit to the last date_done; to the last result in the client: "
        f"{ct['received_tasks_per_second']:,.0f} tasks/s. faasd async is submit to the last "
        f"finished_at.)"
    )
    warmups = {celery.get("warmup_tasks", 0), faasd.get("warmup_tasks", 0)}
    if warmups != {0}:
        print(f"(warm-up before the async figure, not counted: faasd"
              f" {faasd.get('warmup_tasks', 0):,} tasks, Celery {celery.get('warmup_tasks', 0):,})")


def summary(args):
    """Prints the median over the rounds of each figure and of each ratio."""
    rounds = []
    for r in range(1, args.rounds + 1):
        with open(f"{args.dir}/celery-{r}.json") as f:
            celery = json.load(f)
        with open(f"{args.dir}/faasd-{r}.json") as f:
            faasd = json.load(f)
        rounds.append((faasd, celery))
    med = statistics.median
    f_rate = med(f["throughput"]["tasks_per_second"] for f, _ in rounds)
    c_rate = med(c["throughput"]["tasks_per_second"] for _, c in rounds)
    f_p50 = med(f["latency"]["p50_ms"] for f, _ in rounds)
    c_p50 = med(c["latency"]["p50_ms"] for _, c in rounds)
    rate_ratio = med(
        f["throughput"]["tasks_per_second"] / c["throughput"]["tasks_per_second"] for f, c in rounds
    )
    p50_ratio = med(c["latency"]["p50_ms"] / f["latency"]["p50_ms"] for f, c in rounds)
    print(f"median of {args.rounds} rounds")
    print(ratio_line(
        "async", f"{f_rate:,.0f} tasks/s", f"{c_rate:,.0f} tasks/s", rate_ratio,
        "faasd/Celery >= 30x",
    ))
    print(ratio_line(
        "sync p50", f"{f_p50:.2f} ms", f"{c_p50:.2f} ms", p50_ratio, "Celery/faasd >= 5x",
    ))
    print("(each ratio is the median of the rounds' ratios)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ready", help="wait until the worker answers")
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(run=ready)
    p = sub.add_parser("versions", help="print the versions measured")
    p.set_defaults(run=versions)
    p = sub.add_parser("measure", help="async throughput and sync latency, as JSON")
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--warmup", type=int, default=0, help="tasks run first and not counted")
    p.add_argument("--mode", choices=["thread", "process"], default="thread")
    p.add_argument("--sync-calls", type=int, default=1000)
    p.set_defaults(run=measure)
    p = sub.add_parser("table", help="print one round from the two JSON reports")
    p.add_argument("--round", default="1")
    p.add_argument("celery")
    p.add_argument("faasd")
    p.set_defaults(run=table)
    p = sub.add_parser("summary", help="print the medians over the rounds")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("dir", help="holds celery-N.json and faasd-N.json for N = 1..rounds")
    p.set_defaults(run=summary)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
