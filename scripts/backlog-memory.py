#!/usr/bin/env python3
"""Measures what a backlog costs `faasd serve` in memory (the figures of docs/performance.md,
"Backlog memory"). Standard library only.

    scripts/backlog-memory.py queue   --tasks 100000 --payload-bytes 1
    scripts/backlog-memory.py drain   --tasks 200000 --payload-bytes 1
    scripts/backlog-memory.py restart --tasks 300 --payload-bytes 1048576
    scripts/backlog-memory.py crash-restart --tasks 1000 --payload-bytes 1048576 [--quick-repair] [--drop-caches]
    scripts/backlog-memory.py retention --retain 10s --rate 100 --seconds 60 --payload-bytes 16384
    scripts/backlog-memory.py curve --points 0,1000,10000 --code-file noop.py --csv backlog.csv

`queue` starts a server with no workers (`--local-workers 0`, so every task stays queued),
submits the tasks through the batch route and prints the RSS before and after, per queued task.
`drain` does the same with local workers and prints the RSS at the peak and once the queue has
drained. `restart` queues the tasks, kills the server with SIGKILL, starts it again on the same
data directory and prints how long it took to come back and its RSS then. `crash-restart` runs
the tasks of a function that answers its payload to their end (a store as large as the results,
with nothing pending), kills the server with SIGKILL while
idle, and prints how long the restart took: the cost of a crash by the store's size
(`--quick-repair` passes that flag to every server).
`retention` runs a steady load (`--rate` tasks a second, for `--seconds`, of a function that
answers its payload) on a server started with `--retain` and `--purge-interval 1s`, and prints
every 5 s the database file's size, the value files' bytes and the tasks still queued: with
`--retain 0` the file grows with every task, with a retention it levels off.
`curve` does, for each backlog of `--points` (on a fresh data directory each): `queue` for a
`python` function (`--code-file`), then kills the server with SIGKILL, starts it again with
`--workers` local slots and times its start (until it listens), then times the drain of the
backlog (until `/healthz` shows nothing queued or running); one CSV row per point (`--csv`).
"""

import argparse
import base64
import csv
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_BATCH_BYTES = 4 << 20


def rss_kib(pid):
    """The process's resident set size in KiB, from /proc."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class Server:
    """A `faasd serve` process on free ports over `data`."""

    def __init__(self, binary, data, local_workers, extra=()):
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--data", data, "--listen", "127.0.0.1:0",
             "--worker-listen", "127.0.0.1:0", "--local-workers", str(local_workers), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if line.startswith("faasd listening on "):
                self.url = line.split()[-1]
                break
        else:
            raise RuntimeError("the server exited before it was ready")
        self.ready_after = time.monotonic() - started

    def call(self, method, path, body=None, content_type="application/json"):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=600) as answer:
            return json.loads(answer.read() or b"null")

    def rss(self):
        return rss_kib(self.proc.pid)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def register(server, tasks, code="cat >/dev/null\n", runtime="shell"):
    server.call("POST", "/v1/functions", json.dumps({
        "name": "sink", "runtime": runtime, "code": base64.b64encode(code.encode()).decode(),
        "queue_limit": max(tasks, 1), "timeout": 60,
    }).encode())


def submit(server, tasks, payload_bytes, single=False):
    """Submits `tasks` calls of `sink` with payloads of `payload_bytes` through the batch route
    (with `single`, one async invoke each)."""
    payload = "x" * payload_bytes
    if single:
        for _ in range(tasks):
            server.call("POST", "/v1/functions/sink/invoke?async=true", payload.encode(),
                        "application/octet-stream")
        return
    per_batch = max(1, min(10_000, MAX_BATCH_BYTES // (payload_bytes + 3)))
    body_cache = {}
    sent = 0
    while sent < tasks:
        n = min(per_batch, tasks - sent)
        if n not in body_cache:
            body_cache[n] = json.dumps([payload] * n).encode()
        server.call("POST", "/v1/functions/sink/batch", body_cache[n])
        sent += n


def value_files_bytes(data):
    """Bytes in the value files beside the database (large payloads, results and stderr)."""
    values = os.path.join(data, "values")
    if not os.path.isdir(values):
        return 0
    return sum(os.path.getsize(os.path.join(values, name)) for name in os.listdir(values))


def settle(server, seconds=2.0):
    time.sleep(seconds)
    return server.rss()


def queue(args, data):
    server = Server(args.binary, data, 0)
    register(server, args.tasks)
    before = settle(server)
    started = time.monotonic()
    submit(server, args.tasks, args.payload_bytes, args.single)
    took = time.monotonic() - started
    after = settle(server)
    print(f"tasks={args.tasks} payload_bytes={args.payload_bytes} submit_s={took:.1f} "
          f"rss_before_kib={before} rss_after_kib={after} "
          f"kib_per_task={(after - before) / args.tasks:.3f}")
    return server


def drain(args, data):
    server = Server(args.binary, data, args.workers)
    register(server, args.tasks)
    before = settle(server)
    submit(server, args.tasks, args.payload_bytes)
    peak = server.rss()
    while True:
        counts = server.call("GET", "/healthz")
        if counts.get("queued", 1) == 0 and counts.get("running", 1) == 0:
            break
        peak = max(peak, server.rss())
        time.sleep(0.5)
    after = settle(server, 3.0)
    print(f"tasks={args.tasks} payload_bytes={args.payload_bytes} rss_before_kib={before} "
          f"rss_peak_kib={peak} rss_drained_kib={after}")
    server.kill()


def restart(args, data):
    server = queue(args, data)
    server.kill()
    size = os.path.getsize(os.path.join(data, "faasd.redb"))
    values = value_files_bytes(data)
    again = Server(args.binary, data, 0)
    counts = again.call("GET", "/healthz")
    print(f"store_bytes={size} value_files_bytes={values} restart_ready_s={again.ready_after:.2f} "
          f"rss_after_restart_kib={again.rss()} queued={counts.get('queued')}")
    again.kill()


def crash_restart(args, data):
    extra = ["--sandbox", "none"] + (["--quick-repair"] if args.quick_repair else [])
    server = Server(args.binary, data, args.workers, extra)
    register(server, args.tasks, "cat\n")  # results as large as the payloads stay in the store
    started = time.monotonic()
    submit(server, args.tasks, args.payload_bytes)
    submitted = time.monotonic() - started
    while True:
        counts = server.call("GET", "/healthz")
        if counts.get("queued", 1) == 0 and counts.get("running", 1) == 0:
            break
        time.sleep(0.5)
    server.kill()
    size = os.path.getsize(os.path.join(data, "faasd.redb"))
    drained = time.monotonic() - started
    values = value_files_bytes(data)
    if args.drop_caches:
        # A restart after a machine crash finds none of the store in the page cache.
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    again = Server(args.binary, data, 0, extra)
    print(f"quick_repair={args.quick_repair} tasks={args.tasks} store_bytes={size} "
          f"value_files_bytes={values} submit_s={submitted:.2f} drained_s={drained:.2f} "
          f"restart_after_kill_s={again.ready_after:.2f} rss_kib={again.rss()}")
    again.proc.send_signal(signal.SIGTERM)
    again.proc.wait()
    clean = Server(args.binary, data, 0, extra)
    print(f"restart_after_clean_stop_s={clean.ready_after:.2f}")
    clean.kill()


def store_bytes(data):
    """The database file's size."""
    return os.path.getsize(os.path.join(data, "faasd.redb"))


def retention(args, data):
    server = Server(args.binary, data, args.workers,
                    ["--retain", args.retain, "--purge-interval", "1s"])
    register(server, args.rate * args.seconds, code="cat\n")
    body = json.dumps(["x" * args.payload_bytes] * args.rate).encode()
    started = time.monotonic()
    for second in range(1, args.seconds + 1):
        server.call("POST", "/v1/functions/sink/batch", body)
        if second % 5 == 0:
            queued = server.call("GET", "/healthz")["queued"]
            print(f"t={second}s submitted={second * args.rate} store_bytes={store_bytes(data)} "
                  f"value_files_bytes={value_files_bytes(data)} queued={queued}", flush=True)
        time.sleep(max(0.0, started + second - time.monotonic()))
    server.kill()


CURVE_COLUMNS = ["tasks", "payload_bytes", "submit_s", "rss_before_kib", "rss_queued_kib",
                 "kib_per_task", "store_bytes", "restart_s", "rss_restarted_kib", "workers",
                 "drain_s", "drain_tasks_per_second"]


def wait_drained(server, poll_s=0.01):
    """Seconds until `/healthz` shows nothing queued or running."""
    started = time.monotonic()
    while True:
        counts = server.call("GET", "/healthz")
        if counts.get("queued", 1) == 0 and counts.get("running", 1) == 0:
            return time.monotonic() - started
        time.sleep(poll_s)


def curve_point(args, tasks, data):
    """One backlog of `tasks`: queued, killed, restarted with workers, drained."""
    server = Server(args.binary, data, 0)
    register(server, tasks, pathlib.Path(args.code_file).read_text(), "python")
    before = settle(server)
    started = time.monotonic()
    if tasks:
        submit(server, tasks, args.payload_bytes)
    submitted = time.monotonic() - started
    queued = settle(server)
    server.kill()
    again = Server(args.binary, data, args.workers)
    restarted_rss = again.rss()
    drain_s = wait_drained(again)
    again.kill()
    return {
        "tasks": tasks, "payload_bytes": args.payload_bytes, "submit_s": f"{submitted:.2f}",
        "rss_before_kib": before, "rss_queued_kib": queued,
        "kib_per_task": f"{(queued - before) / tasks:.3f}" if tasks else "",
        "store_bytes": store_bytes(data), "restart_s": f"{again.ready_after:.3f}",
        "rss_restarted_kib": restarted_rss, "workers": args.workers,
        "drain_s": f"{drain_s:.3f}" if tasks else "",
        "drain_tasks_per_second": f"{tasks / drain_s:.1f}" if tasks else "",
    }


def curve(args):
    """`curve`: one row per point of `--points`, printed and written to `--csv` (afresh)."""
    rows = []
    for tasks in (int(p) for p in args.points.split(",")):
        with tempfile.TemporaryDirectory(prefix="faasd-backlog-") as data:
            row = curve_point(args, tasks, data)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case",
                        choices=["queue", "drain", "restart", "crash-restart", "retention", "curve"])
    parser.add_argument("--binary", default=str(ROOT / "target/release/faasd"))
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=1)
    parser.add_argument("--single", action="store_true",
                        help="one async invoke per task instead of batches (queue)")
    parser.add_argument("--workers", type=int, default=2,
                        help="local worker slots (drain, crash-restart)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="empty the page cache before the restart (crash-restart; root)")
    parser.add_argument("--quick-repair", action="store_true",
                        help="serve --quick-repair (crash-restart)")
    parser.add_argument("--retain", default="10s", help="serve --retain (retention)")
    parser.add_argument("--rate", type=int, default=100, help="tasks a second (retention)")
    parser.add_argument("--seconds", type=int, default=60, help="how long to run (retention)")
    parser.add_argument("--points", default="0,1000,10000,100000",
                        help="backlog sizes, comma-separated (curve)")
    parser.add_argument("--code-file", help="the python function's code (curve)")
    parser.add_argument("--csv", help="write the rows to this CSV file (curve)")
    args = parser.parse_args()
    if args.case == "curve":
        curve(args)
        return
    with tempfile.TemporaryDirectory(prefix="faasd-backlog-") as data:
        if args.case == "queue":
            queue(args, data).kill()
        elif args.case == "drain":
            drain(args, data)
        elif args.case == "crash-restart":
            crash_restart(args, data)
        elif args.case == "retention":
            retention(args, data)
        else:
            restart(args, data)


if __name__ == "__main__":
    main()
