"""The kill cases: the server killed with -9 under load; remote workers killed and frozen."""

import os
import random
import signal
import subprocess
import tempfile
import time

from .common import Ledger, Server, register_echo, echo_load, verify


def case_server_kill(binary, rounds, work):
    """kill -9 of the server under load, `rounds` times, restarting on the same data."""
    runs = os.path.join(work, "runs")
    server = Server(binary, os.path.join(work, "data"), ["--local-workers", "2", "--sandbox", "none"])
    server.start()
    register_echo(server.url, runs)
    ledger = Ledger()
    load = echo_load(4, server, ledger)
    for _ in range(rounds):
        time.sleep(random.uniform(0.3, 1.0))
        server.kill()
        server.start()
    time.sleep(0.5)
    load.stop()
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
    ledger = Ledger()
    load = echo_load(2, server, ledger, 0.002)
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
    load.stop()
    lost, dup, wrong = verify(server.url, ledger, runs)
    for w in workers:
        w.kill()
        w.wait()
    server.sample_rss()
    server.stop()
    return dict(load="2 async submitters, 2 remote workers", faults=f"{faults} worker kill -9 / SIGSTOP",
                acked=len(ledger.acked), lost=lost, duplicated=dup, wrong=wrong,
                rss_kb=server.max_rss_kb)
