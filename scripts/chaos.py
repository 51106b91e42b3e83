#!/usr/bin/env python3
"""Fault injection against a real faasd, with every acknowledged task checked by its result.

Each case starts its own `faasd serve` on a fresh data directory, puts load on it, injects its
faults, then waits for every task the server acknowledged (answered 202 with a task id) and
checks it: COMPLETED with the result its payload implies. It prints one table:

  case | load | faults injected | acknowledged | lost | duplicated | wrong | max RSS

- lost: acknowledged, but gone or never finished;
- duplicated: executed more than once (a run interrupted by a kill is run again: at-least-once);
- wrong: finished with another result than its payload implies, or FAILED;
- max RSS: the largest resident size any server process of the case reached (VmHWM).

Usage: scripts/chaos.py --bin target/release/faasd [--short] [--rounds N] [--case NAME ...]
Only the standard library is used. Exits 1 if any task was lost or wrong, or a case failed.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

# The echo function: records each execution (its payload) in a file on the host, then answers
# its payload marked, so a result can only come from running this very payload.
ECHO = """p=$(cat)
echo "$p" >> "$FAASD_CHAOS_RUNS"
printf '%s!' "$p"
"""


def expected(payload):
    """The result the echo function gives for `payload`."""
    return payload + "!"


def http(method, url, body=None, timeout=10, headers=None):
    """(status, body bytes) of one request; status 0 when the server cannot be reached."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
        return 0, b""


class Server:
    """One `faasd serve` process on `data`, restartable on the same data directory."""

    def __init__(self, binary, data, args):
        self.binary, self.data, self.args = binary, data, args
        self.proc, self.url, self.worker_addr = None, None, None
        self.max_rss_kb = 0

    def start(self):
        cmd = [self.binary, "serve", "--data", self.data, "--listen", "127.0.0.1:0"] + self.args
        if "--worker-listen" not in self.args:
            cmd += ["--worker-listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=dict(os.environ, RUST_LOG="error"),
        )
        for line in self.proc.stdout:
            if line.startswith("faasd listening on "):
                self.url = line.split()[-1]
            elif line.startswith("faasd worker port on "):
                self.worker_addr = line.split()[-1]
            if self.url and self.worker_addr:
                break
        if not self.url:
            raise RuntimeError("faasd serve did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def sample_rss(self):
        """Keeps the largest VmHWM seen of this process."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def kill(self, sig=signal.SIGKILL):
        self.sample_rss()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


class Ledger:
    """What the server acknowledged: task id -> payload."""

    def __init__(self):
        self.acked = {}
        self.lock = threading.Lock()

    def add(self, task_id, payload):
        with self.lock:
            self.acked[task_id] = payload


def register_echo(url, runs_file):
    body = json.dumps({
        "name": "echo", "runtime": "shell", "timeout": "20s", "max_attempts": 100,
        "code": __import__("base64").b64encode(ECHO.encode()).decode(),
        "env": {"FAASD_CHAOS_RUNS": runs_file},
    }).encode()
    status, answer = http("POST", url + "/v1/functions", body, headers={"Content-Type": "application/json"})
    if status != 201:
        raise RuntimeError(f"register failed: {status} {answer[:200]!r}")


def submitter(get_url, ledger, stop, rate_sleep=0.0):
    """Submits async calls with unique payloads until `stop`, recording each 202."""
    n = 0
    while not stop.is_set():
        payload = f"t{threading.get_ident() % 1000}-{n}-{random.getrandbits(32):08x}"
        n += 1
        status, body = http("POST", get_url() + "/v1/functions/echo/invoke?async=true",
                            payload.encode(), timeout=5)
        if status == 202:
            ledger.add(json.loads(body)["task_id"], payload)
        elif status == 0:
            time.sleep(0.02)  # the server is down: try again shortly
        if rate_sleep:
            time.sleep(rate_sleep)


def verify(url, ledger, runs_file, deadline_s=300):
    """(lost, duplicated, wrong) over every acknowledged task."""
    lost = wrong = 0
    end = time.time() + deadline_s
    for task_id, payload in ledger.acked.items():
        status = None
        while time.time() < end:
            code, body = http("GET", f"{url}/v1/tasks/{task_id}?wait=10s", timeout=15)
            if code == 404:
                break
            if code == 200:
                status = json.loads(body)["status"]
                if status in ("COMPLETED", "FAILED"):
                    break
        if status is None or status not in ("COMPLETED", "FAILED"):
            lost += 1
            continue
        code, result = http("GET", f"{url}/v1/tasks/{task_id}/result")
        if status != "COMPLETED" or code != 200 or result.decode() != expected(payload):
            wrong += 1
    runs = {}
    try:
        with open(runs_file) as f:
            for line in f:
                runs[line.strip()] = runs.get(line.strip(), 0) + 1
    except OSError:
        pass
    duplicated = sum(1 for p in ledger.acked.values() if runs.get(p, 0) > 1)
    return lost, duplicated, wrong


def case_server_kill(binary, rounds, work):
    """kill -9 of the server under load, `rounds` times, restarting on the same data."""
    runs = os.path.join(work, "runs")
    server = Server(binary, os.path.join(work, "data"), ["--local-workers", "2", "--sandbox", "none"])
    server.start()
    register_echo(server.url, runs)
    ledger, stop = Ledger(), threading.Event()
    threads = [threading.Thread(target=submitter, args=(lambda: server.url, ledger, stop))
               for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(rounds):
        time.sleep(random.uniform(0.3, 1.0))
        server.kill()
        server.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    lost, dup, wrong = verify(server.url, ledger, runs)
    server.sample_rss()
    server.stop()
    return dict(load="4 async submitters", faults=f"{rounds} server kill -9",
                acked=len(ledger.acked), lost=lost, duplicated=dup, wrong=wrong,
                rss_kb=server.max_rss_kb)


def case_worker_faults(binary, rounds, work):
    """Remote workers killed with -9 and frozen with SIGSTOP under load."""
    runs = os.path.join(work, "runs")
    server = Server(binary, os.path.join(work, "data"), ["--local-workers", "0", "--sandbox", "none"])
    server.start()
    register_echo(server.url, runs)

    def worker():
        return subprocess.Popen(
            [binary, "worker", "--server", server.worker_addr, "--slots", "2", "--sandbox", "none",
             "--cache", tempfile.mkdtemp(dir=work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="error"))

    workers = [worker(), worker()]
    ledger, stop = Ledger(), threading.Event()
    threads = [threading.Thread(target=submitter, args=(lambda: server.url, ledger, stop, 0.002))
               for _ in range(2)]
    for t in threads:
        t.start()
    faults = 0
    for r in range(rounds):
        time.sleep(random.uniform(0.3, 0.8))
        victim = r % 2
        if r % 3 == 2:
            workers[victim].send_signal(signal.SIGSTOP)
            time.sleep(4)  # past the heartbeat limit: its tasks go to the other worker
            workers[victim].send_signal(signal.SIGCONT)
        else:
            workers[victim].kill()
            workers[victim].wait()
            workers[victim] = worker()
        faults += 1
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    lost, dup, wrong = verify(server.url, ledger, runs)
    for w in workers:
        w.kill()
        w.wait()
    server.sample_rss()
    server.stop()
    return dict(load="2 async submitters, 2 remote workers", faults=f"{faults} worker kill -9 / SIGSTOP",
                acked=len(ledger.acked), lost=lost, duplicated=dup, wrong=wrong,
                rss_kb=server.max_rss_kb)


CASES = {
    "server-kill": case_server_kill,
    "worker-faults": case_worker_faults,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default="target/release/faasd")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--short", action="store_true", help="3 rounds per case (the test command's run)")
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args()
    rounds = 3 if args.short else args.rounds
    rows, failed = [], False
    for name in args.case or list(CASES):
        with tempfile.TemporaryDirectory(prefix="faasd-chaos-") as work:
            try:
                row = CASES[name](os.path.abspath(args.bin), rounds, work)
            except Exception as err:  # a case that could not run is a failure, said plainly
                row = dict(load="-", faults=f"case failed: {err}", acked=0, lost=0,
                           duplicated=0, wrong=0, rss_kb=0)
                failed = True
        rows.append((name, row))
        failed |= row["lost"] > 0 or row["wrong"] > 0
    header = ("case", "load", "faults injected", "acknowledged", "lost", "duplicated", "wrong", "max RSS")
    table = [header] + [
        (name, r["load"], r["faults"], str(r["acked"]), str(r["lost"]), str(r["duplicated"]),
         str(r["wrong"]), f"{r['rss_kb'] / 1024:.0f} MiB") for name, r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
