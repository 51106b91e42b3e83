"""The disk-full case: the data directory's filesystem filled under load, then freed, round after
round. A full disk must be an answer (507 `insufficient_storage`), never a 500, a hang or a
dropped connection; reads and /healthz keep answering; writes come back once space returns."""

import json
import os
import random
import subprocess
import threading
import time

from .common import Ledger, Load, Server, expected, http, register_echo, row, verify

TMPFS_SIZE = "64m"
# How long the load keeps hitting the full disk once the first write was refused.
FULL_FOR_S = 1.0
# How long the store's free pages may keep absorbing writes before the first 507.
FIRST_REFUSAL_S = 20.0
RECOVERY_LIMIT_S = 30.0
# Each submitter's pause after an acknowledged call, so the queue stays short enough for the sync
# calls (which queue behind it) to answer promptly on two shared cores.
ACKED_PAUSE_S = 0.05


class Tally:
    """Counts of the write answers the load got, by kind, while the server is up."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"202": 0, "507": 0, "other": 0}
        self.others = []  # (status, body) of the first unexpected answers, for the report

    def count(self, status, body):
        kind = "202" if status == 202 else "507" if status == 507 else "other"
        with self.lock:
            self.counts[kind] += 1
            if kind == "other" and len(self.others) < 5:
                self.others.append((status, body[:200]))

    def get(self, kind):
        with self.lock:
            return self.counts[kind]


def insufficient_storage(status, body):
    """Whether an answer is the full disk's 507 with its error code."""
    if status != 507:
        return False
    try:
        return json.loads(body).get("code") == "insufficient_storage"
    except ValueError:
        return False


def load(url, ledger, tally, stop):
    """Async echo calls until `stop`, each answer counted; 202s go to the ledger."""
    n = 0
    while not stop.is_set():
        payload = f"d{threading.get_ident() % 1000}-{n}-{random.getrandbits(32):08x}"
        n += 1
        status, body = http("POST", url + "/v1/functions/echo/invoke?async=true",
                            payload.encode(), timeout=10)
        if status == 202:
            ledger.add_echo(json.loads(body)["task_id"], payload)
            time.sleep(ACKED_PAUSE_S)
        elif status == 507 and not insufficient_storage(status, body):
            status = 0  # a 507 without its error code is not the answer promised
        tally.count(status, body)
        if status == 507:
            time.sleep(0.005)  # a refused write is cheap: do not spin the shared cores on it


def fill(path):
    """Writes `path` until the filesystem is full; returns the bytes written."""
    chunk = b"\x5a" * (64 << 10)
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError:
                return written


def timed(method, url, body=None, timeout=10):
    """(status, body, seconds) of one request."""
    started = time.monotonic()
    status, answer = http(method, url, body, timeout=timeout)
    return status, answer, time.monotonic() - started


def checks_while_full(url, task_id, problems):
    """A sync call, a task's status and /healthz answer in time; notes what did not."""
    payload = f"sync-full-{random.getrandbits(32):08x}"
    status, body, took = timed("POST", url + "/v1/functions/echo/invoke", payload.encode(), 25)
    if not (insufficient_storage(status, body) or (status == 200 and body.decode() == expected(payload))):
        problems.append(f"sync invoke while full answered {status} {body[:120]!r} in {took:.1f} s")
    status, body, took = timed("GET", f"{url}/v1/tasks/{task_id}")
    if status != 200:
        problems.append(f"GET task while full answered {status} {body[:120]!r} in {took:.1f} s")
    status, body, took = timed("GET", url + "/healthz")
    if status != 200:
        problems.append(f"/healthz while full answered {status} {body[:120]!r} in {took:.1f} s")
    elif json.loads(body).get("status") != "degraded":
        problems.append(f"/healthz while full says {body[:200]!r}, not degraded")


def sync_calls(url, count, problems):
    """`count` sync echo calls, which must answer their result while the disk has room."""
    for _ in range(count):
        payload = f"sync-{random.getrandbits(32):08x}"
        status, body = http("POST", url + "/v1/functions/echo/invoke", payload.encode(), timeout=25)
        if status != 200 or body.decode(errors="replace") != expected(payload):
            problems.append(f"sync invoke with room answered {status} {body[:120]!r}")


def until_writes_stored(url, ledger):
    """Seconds until an async call is acknowledged again, or None past the limit."""
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_LIMIT_S:
        payload = f"after-{random.getrandbits(32):08x}"
        status, body = http("POST", url + "/v1/functions/echo/invoke?async=true", payload.encode())
        if status == 202:
            ledger.add_echo(json.loads(body)["task_id"], payload)
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def round_trip(server, ledger, tally, mount, problems):
    """One round: fill, keep the load on the full disk, check, free, wait for writes.
    Returns the recovery time in seconds (None if writes did not come back)."""
    sync_calls(server.url, 3, problems)
    refused_before = tally.get("507")
    filler = os.path.join(mount, "filler")
    fill(filler)
    started = time.monotonic()
    while tally.get("507") == refused_before:
        if time.monotonic() - started > FIRST_REFUSAL_S:
            problems.append(f"no write refused {FIRST_REFUSAL_S:.0f} s after the disk filled")
            break
        time.sleep(0.01)
    time.sleep(FULL_FOR_S)
    server.sample_rss()
    with ledger.lock:
        task_id = next(iter(ledger.acked))
    checks_while_full(server.url, task_id, problems)
    os.remove(filler)
    return until_writes_stored(server.url, ledger)


def mount_tmpfs(path):
    """Mounts a tmpfs on `path`; the reason as a string if refused, else None."""
    os.makedirs(path)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", path],
                             capture_output=True, text=True)
    except OSError as err:
        return str(err)
    if out.returncode == 0:
        return None
    return (out.stderr.strip().splitlines() or [f"mount exited {out.returncode}"])[0]


def case_disk_full(binary, rounds, work):
    """The data directory on a small tmpfs, filled `rounds` times under async load."""
    mount = os.path.join(work, "mnt")
    refused = mount_tmpfs(mount)
    if refused:
        return dict(load="-", faults=f"skipped: cannot mount a tmpfs (needs root): {refused}",
                    acked=0, lost=0, duplicated=0, wrong=0, rss_kb=0)
    server = None
    try:
        # The runs file stays off the tmpfs: the function must be able to record its runs.
        runs = os.path.join(work, "runs")
        server = Server(binary, os.path.join(mount, "data"),
                        ["--local-workers", "2", "--sandbox", "none", "--min-free-space", "4MiB"])
        server.start()
        register_echo(server.url, runs)
        return run_rounds(server, rounds, runs, mount)
    finally:
        if server:
            server.stop()
        subprocess.run(["umount", "-l", mount], capture_output=True)


def run_rounds(server, rounds, runs, mount):
    ledger, tally = Ledger(), Tally()
    writers = Load(3, load, server.url, ledger, tally)
    problems, healed = [], []
    try:
        while not ledger.acked:
            time.sleep(0.01)
        for _ in range(rounds):
            took = round_trip(server, ledger, tally, mount, problems)
            if took is None:
                problems.append(f"writes not stored again {RECOVERY_LIMIT_S:.0f} s after space returned")
                break
            healed.append(took)
            time.sleep(random.uniform(0.2, 0.5))
    finally:
        writers.stop()
    verified = verify(server.url, ledger, runs)
    if tally.get("other"):
        problems.insert(0, f"{tally.get('other')} writes answered neither 202 nor 507: {tally.others}")
    faults = (f"{len(healed)} disk-full rounds ({tally.get('507'):,} writes answered 507; "
              f"healed in max {max(healed, default=0):.1f} s)")
    result = row(f"3 async submitters + 3 sync calls a round, {TMPFS_SIZE} tmpfs", faults,
                 ledger, verified, server)
    if problems:
        result["failed"] = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    return result
