"""What every chaos case shares: a restartable server, the ledger of acknowledged tasks, load and
verification."""

import base64
import json
import os
import random
import signal
import socket
import subprocess
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
    """One `faasd serve` process on `data`, restartable on the same data directory.

    `preexec_fn` runs in the child before the server starts (to join a cgroup, say); `log`, a
    file its errors are appended to (default: dropped); `ready_s` is how long the last start took
    until the server listened."""

    def __init__(self, binary, data, args, preexec_fn=None, log=None):
        self.binary, self.data, self.args = binary, data, args
        self.proc, self.url, self.worker_addr = None, None, None
        self.max_rss_kb = 0
        self.preexec_fn, self.log, self.ready_s = preexec_fn, log, None

    def start(self):
        started = time.monotonic()
        self.url = self.worker_addr = None  # not the last start's: a failed start must show
        cmd = [self.binary, "serve", "--data", self.data, "--listen", "127.0.0.1:0"] + self.args
        if "--worker-listen" not in self.args:
            cmd += ["--worker-listen", "127.0.0.1:0"]
        stderr = open(self.log, "a") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                env=dict(os.environ, RUST_LOG="error"), preexec_fn=self.preexec_fn,
            )
        finally:
            if self.log:
                stderr.close()
        for line in self.proc.stdout:
            if line.startswith("faasd listening on "):
                self.url = line.split()[-1]
            elif line.startswith("faasd worker port on "):
                self.worker_addr = line.split()[-1]
            if self.url and self.worker_addr:
                break
        if not self.url:
            raise RuntimeError(f"faasd serve did not start (exit status {self.proc.wait()})")
        self.ready_s = time.monotonic() - started
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
    """What the server acknowledged: task id -> (run key, expected result).

    The run key is the line the function writes to the runs file each time it runs (the echo
    function writes its payload), so executions can be counted per task."""

    def __init__(self):
        self.acked = {}
        self.lock = threading.Lock()

    def add(self, task_id, key, result):
        with self.lock:
            self.acked[task_id] = (key, result)

    def add_echo(self, task_id, payload):
        self.add(task_id, payload, expected(payload))


def register(url, name, code, runs_file, runtime="shell", **settings):
    """Registers `code` under `name`; the function finds the runs file in $FAASD_CHAOS_RUNS."""
    body = json.dumps(dict({
        "name": name, "runtime": runtime, "timeout": "20s", "max_attempts": 100,
        "code": base64.b64encode(code.encode()).decode(),
        "env": {"FAASD_CHAOS_RUNS": runs_file},
    }, **settings)).encode()
    status, answer = http("POST", url + "/v1/functions", body, headers={"Content-Type": "application/json"})
    if status != 201:
        raise RuntimeError(f"register {name} failed: {status} {answer[:200]!r}")


def register_echo(url, runs_file):
    register(url, "echo", ECHO, runs_file)


def row(load, faults, ledger, verified, server):
    """A table row from a case's ledger, its (lost, duplicated, wrong) and its server."""
    lost, dup, wrong = verified
    server.sample_rss()
    return dict(load=load, faults=faults, acked=len(ledger.acked), lost=lost, duplicated=dup,
                wrong=wrong, rss_kb=server.max_rss_kb)


def submitter(get_url, ledger, stop, rate_sleep=0.0):
    """Submits async calls of echo with unique payloads until `stop`, recording each 202."""
    n = 0
    while not stop.is_set():
        url = get_url()
        if url is None:  # the server is restarting and has no address yet
            time.sleep(0.02)
            continue
        payload = f"t{threading.get_ident() % 1000}-{n}-{random.getrandbits(32):08x}"
        n += 1
        status, body = http("POST", url + "/v1/functions/echo/invoke?async=true",
                            payload.encode(), timeout=5)
        if status == 202:
            ledger.add_echo(json.loads(body)["task_id"], payload)
        elif status == 0:
            time.sleep(0.02)  # the server is down: try again shortly
        if rate_sleep:
            time.sleep(rate_sleep)


class Load:
    """`threads` threads each running `target(*args, stop)` until `stop()` is called."""

    def __init__(self, threads, target, *args):
        self.event = threading.Event()
        self.threads = [threading.Thread(target=target, args=(*args, self.event))
                        for _ in range(threads)]
        for t in self.threads:
            t.start()

    def stop(self):
        self.event.set()
        for t in self.threads:
            t.join()


def echo_load(threads, server, ledger, rate_sleep=0.0):
    """Async echo calls on `server` (followed across restarts) from `threads` threads."""
    return Load(threads, lambda stop: submitter(lambda: server.url, ledger, stop, rate_sleep))


def verify(url, ledger, runs_file, stall_s=120):
    """(lost, duplicated, wrong) over every acknowledged task.

    A backlog may take long to drain on a busy machine: a task counts as lost only once no
    task has finished for `stall_s` seconds while waiting for it."""
    lost = wrong = 0
    end = time.time() + stall_s
    for task_id, (_, want) in ledger.acked.items():
        status = None
        while time.time() < end:
            code, body = http("GET", f"{url}/v1/tasks/{task_id}?wait=10s", timeout=15)
            if code == 404:
                break
            if code == 200:
                status = json.loads(body)["status"]
                if status in ("COMPLETED", "FAILED"):
                    end = time.time() + stall_s
                    break
        if status is None or status not in ("COMPLETED", "FAILED"):
            lost += 1
            continue
        code, result = http("GET", f"{url}/v1/tasks/{task_id}/result")
        if status != "COMPLETED" or code != 200 or result.decode(errors="replace") != want:
            wrong += 1
    runs = {}
    try:
        with open(runs_file) as f:
            for line in f:
                runs[line.strip()] = runs.get(line.strip(), 0) + 1
    except OSError:
        pass
    duplicated = sum(1 for key, _ in ledger.acked.values() if runs.get(key, 0) > 1)
    return lost, duplicated, wrong


