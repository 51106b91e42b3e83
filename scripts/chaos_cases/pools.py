"""The min-warm case: warm-pool storms under load. Each round registers a `python` function with
the largest `min_warm` allowed on a worker of 2 slots and one over the maximum, checks the worker
still answers and heartbeats, then deletes the function and times its executors' exit.

Executors are counted on the host, as in tests/pools.rs: a `python` executor is a process whose
command line runs the harness and whose environment holds the function's own marker."""

import base64
import datetime
import json
import os
import random
import time

from .common import Ledger, Server, http, register, register_echo, echo_load, verify

SLOTS = 2
MAX_MIN_WARM = 64  # the server's default --max-min-warm
HANDLER = "def handle(payload):\n    return payload\n"
GONE_WITHIN_S = 2.0
SYNC_WITHIN_S = 2.0
HEARTBEAT_WITHIN_S = 3.0  # the broker drops a worker after 3 missed beats of 1 s


def executors(marker):
    """The pids of live executors whose environment holds `POOLS_MARKER=<marker>`."""
    wanted = f"POOLS_MARKER={marker}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if b"harness" not in f.read():
                    continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if wanted not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        found.add(int(name))
    return found


def register_warm(url, name, marker, min_warm, runs):
    """(status, body) of registering a `python` function whose executors carry the marker."""
    body = json.dumps({
        "name": name, "runtime": "python", "min_warm": min_warm,
        "code": base64.b64encode(f"{HANDLER}# {marker}\n".encode()).decode(),
        "env": {"POOLS_MARKER": marker, "FAASD_CHAOS_RUNS": runs},
    }).encode()
    return http("POST", url + "/v1/functions", body, headers={"Content-Type": "application/json"})


def heartbeat_age_s(url, worker_id):
    """Seconds since the worker's last heartbeat; None if the worker is not listed."""
    status, body = http("GET", url + "/v1/workers")
    if status != 200:
        return None
    for worker in json.loads(body):
        if worker["id"] == worker_id:
            beat = datetime.datetime.fromisoformat(worker["last_heartbeat"].replace("Z", "+00:00"))
            return time.time() - beat.timestamp()
    return None


class Round:
    """The checks of one storm, and what they measured."""

    def __init__(self):
        self.failures = []
        self.most_executors = 0
        self.sync_s = 0.0
        self.gone_s = 0.0
        self.refused = False
        self.at_delete = 0


def storm(url, r, worker_id, runs):
    """One round: a `min_warm` storm, a refused registration, a sync call, a delete."""
    out = Round()
    name, marker = f"warm{r}", f"chaos-{os.getpid()}-{r}-{random.getrandbits(32):08x}"
    status, body = register_warm(url, name, marker, MAX_MIN_WARM, runs)
    if status != 201:
        out.failures.append(f"min_warm {MAX_MIN_WARM} refused: {status} {body[:200]!r}")
        return out
    status, body = register_warm(url, f"greedy{r}", marker + "-greedy", MAX_MIN_WARM + 1, runs)
    out.refused = status == 400 and b"min_warm" in body
    if not out.refused:
        out.failures.append(f"min_warm {MAX_MIN_WARM + 1} answered {status} {body[:200]!r}")
    # The pool fills up to the slots and stays there for a while.
    until = time.monotonic() + 10
    while not executors(marker) and time.monotonic() < until:
        time.sleep(0.02)
    watch_until = time.monotonic() + 0.5
    while time.monotonic() < watch_until:
        out.most_executors = max(out.most_executors, len(executors(marker)))
        time.sleep(0.05)
    if out.most_executors == 0:
        out.failures.append(f"round {r}: no warm executor started in 10 s")
    if out.most_executors > SLOTS:
        out.failures.append(f"round {r}: {out.most_executors} warm executors on {SLOTS} slots")
    # An unrelated sync call answers promptly; the worker stays and beats.
    payload = f"ping-{r}".encode()
    started = time.monotonic()
    status, answer = http("POST", url + "/v1/functions/ping/invoke", payload)
    out.sync_s = time.monotonic() - started
    if status != 200 or answer != payload:
        out.failures.append(f"round {r}: sync call answered {status} {answer[:100]!r}")
    elif out.sync_s > SYNC_WITHIN_S:
        out.failures.append(f"round {r}: sync call took {out.sync_s:.2f} s")
    age = heartbeat_age_s(url, worker_id)
    if age is None or age > HEARTBEAT_WITHIN_S:
        out.failures.append(f"round {r}: worker heartbeat {'gone' if age is None else f'{age:.1f} s old'}")
    # Deleted: its executors stop within 2 s.
    out.at_delete = len(executors(marker))
    status, body = http("DELETE", f"{url}/v1/functions/{name}")
    deleted = time.monotonic()
    if status != 200:
        out.failures.append(f"round {r}: delete answered {status} {body[:200]!r}")
        return out
    while executors(marker) and time.monotonic() - deleted < GONE_WITHIN_S:
        time.sleep(0.02)
    out.gone_s = time.monotonic() - deleted
    left = executors(marker)
    if left:
        out.failures.append(f"round {r}: {len(left)} executors alive {GONE_WITHIN_S:.0f} s after the delete")
    return out


def case_min_warm(binary, rounds, work):
    """`rounds` min_warm storms on a worker of 2 slots under async echo load."""
    runs = os.path.join(work, "runs")
    server = Server(binary, os.path.join(work, "data"), ["--local-workers", str(SLOTS)])
    server.start()
    register_echo(server.url, runs)
    register(server.url, "ping", "cat", runs)
    status, body = http("GET", server.url + "/v1/workers")
    workers = json.loads(body) if status == 200 else []
    if len(workers) != 1:
        raise RuntimeError(f"expected the local worker, listed: {workers}")
    worker_id = workers[0]["id"]
    ledger = Ledger()
    load = echo_load(2, server, ledger, 0.01)
    results = []
    try:
        for r in range(rounds):
            results.append(storm(server.url, r, worker_id, runs))
            server.sample_rss()
    finally:
        load.stop()
    lost, dup, wrong = verify(server.url, ledger, runs)
    server.sample_rss()
    server.stop()
    failures = [f for res in results for f in res.failures]
    refused = sum(res.refused for res in results)
    faults = (f"{rounds} min_warm storms (min_warm {MAX_MIN_WARM} on {SLOTS} slots, "
              f"max {max(res.most_executors for res in results)} executors), "
              f"{refused} refused over max; executors gone in max "
              f"{max(res.gone_s for res in results):.2f} s (of "
              f"{sum(res.at_delete for res in results)} alive at the deletes); sync call max "
              f"{max(res.sync_s for res in results):.2f} s")
    row = dict(load="2 async echo submitters, 2 local slots", faults=faults,
               acked=len(ledger.acked), lost=lost, duplicated=dup, wrong=wrong,
               rss_kb=server.max_rss_kb)
    if failures:
        row["failed"] = "; ".join(failures[:5]) + (f" (+{len(failures) - 5})" if len(failures) > 5 else "")
    return row
