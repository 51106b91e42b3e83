"""The backlog case: more queued payload than the server's memory limit, then kill -9 and restarts
under that limit while the backlog drains."""

import collections
import hashlib
import json
import os
import random
import signal
import threading
import time

from .common import Ledger, Server, http, register, verify

LIMIT_BYTES = 1 << 30
PAYLOAD_BYTES = 1 << 20
CGROUP_ROOT = "/sys/fs/cgroup/memory"

# Answers the payload's sha256 (hex) instead of echoing 1 MiB back, and records it as the run key.
DIGEST = """h=$(sha256sum | cut -c1-64)
echo "$h" >> "$FAASD_CHAOS_RUNS"
printf %s "$h"
"""


class MemoryCgroup:
    """A cgroup v1 memory group limited to `limit_bytes`; a process joins it with `join` as its
    preexec function, so it is limited before it reads anything."""

    def __init__(self, limit_bytes):
        self.path = os.path.join(CGROUP_ROOT, f"faasd-chaos-{os.getpid()}")
        os.mkdir(self.path)
        try:
            self.write("memory.limit_in_bytes", str(limit_bytes))
        except OSError:
            os.rmdir(self.path)
            raise

    def write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def join(self):
        self.write("cgroup.procs", str(os.getpid()))

    def oom_kills(self):
        """Processes the kernel killed for this group's limit (`oom_kill` of memory.oom_control)."""
        for line in self.read("memory.oom_control").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def max_usage_bytes(self):
        return int(self.read("memory.max_usage_in_bytes"))

    def remove(self):
        """Removes the group once the processes the case started in it have exited."""
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.path} still holds {self.read('cgroup.procs').split()}")


def hwm_kb(proc):
    """The VmHWM of a live process, 0 once it is gone."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def last_error(log):
    """The last line the server wrote to its log."""
    with open(log, errors="replace") as f:
        lines = f.read().strip().splitlines()
    return lines[-1][-300:] if lines else "(nothing logged)"


def restart(server, log, failures, attempts=5):
    """Starts the server again; a start that fails is a failure of the case, and is retried."""
    for _ in range(attempts):
        try:
            server.start()
            return
        except RuntimeError as err:
            failures.append(f"restart failed: {err}: {last_error(log)}")
            time.sleep(0.2)
    raise RuntimeError(f"the server did not restart in {attempts} attempts: {last_error(log)}")


def queue_backlog(url, ledger, tasks, submitters=2):
    """Submits `tasks` async calls of `digest`, each with its own random 1 MiB payload."""
    counter = iter(range(tasks))
    lock = threading.Lock()

    def submit():
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            payload = os.urandom(PAYLOAD_BYTES)
            digest = hashlib.sha256(payload).hexdigest()
            status, body = http("POST", url + "/v1/functions/digest/invoke?async=true", payload,
                                timeout=60, headers={"Content-Type": "application/octet-stream"})
            if status != 202:
                raise RuntimeError(f"submit answered {status} {body[:200]!r}")
            ledger.add(json.loads(body)["task_id"], digest, digest)

    errors = []

    def run():
        try:
            submit()
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(submitters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def case_backlog(binary, rounds, work):
    """A backlog of 1 MiB payloads over 1 GiB queued with no workers; the server killed with -9 and
    restarted inside a 1 GiB memory cgroup `rounds` times while local workers drain it."""
    # The short run (the test command's debug build) keeps a small backlog.
    tasks = 1500 if rounds >= 20 else 24
    runs, log = os.path.join(work, "runs"), os.path.join(work, "server.log")
    server = Server(binary, os.path.join(work, "data"), ["--local-workers", "0", "--sandbox", "none"],
                    log=log)
    server.start()
    register(server.url, "digest", DIGEST, runs, queue_limit=tasks)
    ledger = Ledger()
    queue_backlog(server.url, ledger, tasks)
    server.kill()
    # The database and the value files beside it (large payloads wait there).
    store_bytes = os.stat(os.path.join(server.data, "faasd.redb")).st_blocks * 512
    values = os.path.join(server.data, "values")
    if os.path.isdir(values):
        store_bytes += sum(os.stat(os.path.join(values, n)).st_blocks * 512
                           for n in os.listdir(values))

    try:
        cgroup = MemoryCgroup(LIMIT_BYTES)
        server.preexec_fn = cgroup.join
    except OSError as err:
        cgroup = None
        limit_note = f"no memory cgroup: limit not applied ({err.strerror})"
    failures, ready_s, restart_hwm_kb = [], [], 0
    server.args = ["--local-workers", "2", "--sandbox", "none"]
    try:
        for r in range(rounds + 1):
            restart(server, log, failures)
            ready_s.append(server.ready_s)
            if r == rounds:
                break
            time.sleep(random.uniform(0.3, 1.0))
            restart_hwm_kb = max(restart_hwm_kb, hwm_kb(server.proc))
            if server.proc.poll() is not None:
                failures.append(f"server exited with {server.proc.returncode} before its kill: "
                                f"{last_error(log)}")
                restart(server, log, failures)
            server.kill()
        lost, dup, wrong = verify(server.url, ledger, runs)
        restart_hwm_kb = max(restart_hwm_kb, hwm_kb(server.proc))
        if server.proc.poll() is not None:
            failures.append(f"server exited with {server.proc.returncode} while draining: "
                            f"{last_error(log)}")
        server.sample_rss()
        server.stop()
        if server.proc.returncode not in (0, -signal.SIGTERM):
            failures.append(f"server stopped with exit status {server.proc.returncode}")
        if cgroup:
            oom = cgroup.oom_kills()
            if oom:
                failures.append(f"{oom} OOM kills in the 1 GiB cgroup")
            limit_note = (f"1 GiB memory cgroup: {oom} OOM kills, "
                          f"cgroup max usage {cgroup.max_usage_bytes() / 2**20:.0f} MiB")
    finally:
        if server.proc.poll() is None:
            server.kill()
        if cgroup:
            cgroup.remove()
    faults = (f"{rounds} kill -9 + restart while draining; {limit_note}; "
              f"store {store_bytes / 2**30:.2f} GiB on disk; "
              f"restart RSS max {restart_hwm_kb / 1024:.0f} MiB; "
              f"ready after kill in max {max(ready_s):.2f} s")
    row = dict(load=f"{tasks} x 1 MiB async ({tasks / 1024:.2f} GiB) queued with no workers, "
                    "drained by 2 local slots",
               faults=faults, acked=len(ledger.acked), lost=lost, duplicated=dup, wrong=wrong,
               rss_kb=server.max_rss_kb)
    if failures:
        counted = collections.Counter(failures)
        row["failed"] = "; ".join(f"{f} (x{n})" if n > 1 else f for f, n in counted.items())
    return row
