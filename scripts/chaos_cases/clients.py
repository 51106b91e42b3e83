"""The slow-clients case: waves of half-sent HTTP requests and worker-port connections that
announce a huge frame before their handshake, under async load. Normal requests must keep
answering quickly, the header timeout must cut every half-request, the worker port must close
the frame claims, and the server's memory must stay small."""

import os
import random
import resource
import selectors
import socket
import struct
import time

from .common import Ledger, Server, expected, http, register_echo, row, echo_load, verify

HALF_REQUESTS = 2_000
FRAME_CLAIMS = 20
# The start of a request whose headers never end.
HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
# A worker-port frame is a 4-byte big-endian length, then the frame: this one claims 64 MiB.
FRAME_CLAIM = struct.pack(">I", (64 << 20) - 1)
HEADER_TIMEOUT_S = 3
CUT_MARGIN_S = 3
NORMAL_LIMIT_S = 1.0
# RSS the frame claims may add to the server's: one 64 MiB frame buffered would not fit.
CLAIMS_GROWTH_LIMIT_KB = 16 << 10
# RSS 2,000 open half-requests may add: a connection's buffers and task are some tens of KiB.
HALF_REQUESTS_GROWTH_LIMIT_KB = 128 << 10


def raise_open_files(needed):
    """Raises this process's open-files soft limit to the hard limit; False if that is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return True


def host_port(address):
    """(host, port) of `host:port` or `http://host:port`."""
    host, port = address.split("://")[-1].rstrip("/").rsplit(":", 1)
    return host, int(port)


def open_half_requests(addr, count):
    """`count` connections that each sent the start of a request; [(socket, connect started)].
    Connects without blocking, so that 2,000 open in a fraction of the header timeout. The
    server cannot have accepted a connection before its connect started, so a close earlier
    than the header timeout after that is a close before the timeout."""
    pending = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(addr)
        pending.append((s, time.monotonic()))
    sel = selectors.DefaultSelector()
    for s, started in pending:
        sel.register(s, selectors.EVENT_WRITE, started)
    conns, deadline = [], time.monotonic() + 10
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            sel.unregister(key.fileobj)
            error = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect to {addr[0]}:{addr[1]}: {os.strerror(error)}")
            key.fileobj.send(HALF_REQUEST)  # a few bytes into an empty send buffer: all go
            conns.append((key.fileobj, key.data))
    if sel.get_map():
        raise RuntimeError(f"{len(sel.get_map())} of {count} connections did not open in 10 s")
    sel.close()
    return conns


def open_frame_claims(addr, count):
    """`count` worker-port connections that each announce a 64 MiB frame and send 1 MiB of it."""
    conns, chunk = [], bytes(1 << 20)
    for _ in range(count):
        s = socket.create_connection(addr, timeout=5)
        opened = time.monotonic()
        try:
            s.sendall(FRAME_CLAIM + chunk)
        except OSError:
            pass  # the server may close it while the body is still on its way: that is the point
        s.setblocking(False)
        conns.append((s, opened))
    return conns


def still_open(conns):
    """How many of `conns` are open with nothing to read."""
    n = 0
    for s, _ in conns:
        try:
            if s.recv(1, socket.MSG_PEEK):
                continue  # the server answered something: not an idle open connection
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def wait_closed(conns, deadline):
    """Waits until the server closes each of `conns` (EOF or reset) or `deadline` (monotonic);
    returns the seconds from each closed one's opening to its close."""
    sel = selectors.DefaultSelector()
    for s, opened in conns:
        sel.register(s, selectors.EVENT_READ, opened)
    lived = []
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                lived.append(time.monotonic() - key.data)
                sel.unregister(key.fileobj)
    sel.close()
    for s, _ in conns:
        s.close()
    return lived


def time_normal_requests(url, until):
    """GET /healthz and sync echo calls, alternately, until `until` (monotonic):
    (max latency in seconds, how many, problems)."""
    worst, n, problems = 0.0, 0, []
    while time.monotonic() < until or n < 2:
        if n % 2 == 0:
            started = time.monotonic()
            status, body = http("GET", url + "/healthz", timeout=10)
            ok = status == 200
        else:
            payload = f"sync-{random.getrandbits(32):08x}"
            started = time.monotonic()
            status, body = http("POST", url + "/v1/functions/echo/invoke", payload.encode(), timeout=10)
            ok = status == 200 and body.decode(errors="replace") == expected(payload)
        took = time.monotonic() - started
        worst, n = max(worst, took), n + 1
        if not ok:
            problems.append(f"a normal request answered {status} {body[:120]!r} in {took:.2f} s")
    return worst, n, problems


def vm_rss_kb(pid):
    """The current resident size of `pid` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def frame_claims(server, problems):
    """20 frame claims, each to be closed promptly without the server buffering the frame:
    (seconds the slowest lived, RSS growth in KiB)."""
    before_kb = vm_rss_kb(server.proc.pid)
    claims = open_frame_claims(host_port(server.worker_addr), FRAME_CLAIMS)
    lived = wait_closed(claims, time.monotonic() + CUT_MARGIN_S)
    grown_kb = vm_rss_kb(server.proc.pid) - before_kb
    server.sample_rss()
    if len(lived) < FRAME_CLAIMS:
        problems.append(f"{FRAME_CLAIMS - len(lived)} of {FRAME_CLAIMS} 64 MiB frame claims not closed")
    if grown_kb > CLAIMS_GROWTH_LIMIT_KB:
        problems.append(f"RSS grew by {grown_kb / 1024:.0f} MiB over {FRAME_CLAIMS} frame claims")
    return max(lived, default=0.0), grown_kb


def half_request_wave(server, problems):
    """2,000 half-requests, normal requests timed while they are open, then their cut:
    (normal max latency s, normal requests, slowest cut s, RSS growth KiB)."""
    before_kb = vm_rss_kb(server.proc.pid)
    conns = open_half_requests(host_port(server.url), HALF_REQUESTS)
    first_cut = min(started for _, started in conns) + HEADER_TIMEOUT_S
    open_at_start = still_open(conns)
    worst, asked, failures = time_normal_requests(server.url, first_cut - 0.5)
    open_at_end = still_open(conns)
    grown_kb = vm_rss_kb(server.proc.pid) - before_kb
    server.sample_rss()
    problems += failures
    if worst >= NORMAL_LIMIT_S:
        problems.append(f"a normal request took {worst:.2f} s with {open_at_end} half-requests open")
    if open_at_start < HALF_REQUESTS:
        problems.append(f"only {open_at_start} of {HALF_REQUESTS} half-requests were open while timed")
    last_started = max(started for _, started in conns)
    lived = wait_closed(conns, last_started + HEADER_TIMEOUT_S + CUT_MARGIN_S)
    if len(lived) < HALF_REQUESTS:
        problems.append(f"{HALF_REQUESTS - len(lived)} of {HALF_REQUESTS} half-requests not cut "
                        f"within {HEADER_TIMEOUT_S + CUT_MARGIN_S} s")
    early = sum(1 for s in lived if s < HEADER_TIMEOUT_S - 0.1)
    if early:
        problems.append(f"{early} half-requests closed before the header timeout")
    if grown_kb > HALF_REQUESTS_GROWTH_LIMIT_KB:
        problems.append(f"RSS grew by {grown_kb / 1024:.0f} MiB with {HALF_REQUESTS} half-requests open")
    return worst, asked, max(lived, default=0.0), grown_kb


def case_slow_clients(binary, rounds, work):
    """Waves of 2,000 half-requests and 20 frame claims under async load: one wave per four
    rounds (5 in the full run, 1 in the short one)."""
    waves = max(1, rounds // 4)
    if not raise_open_files(HALF_REQUESTS + FRAME_CLAIMS + 500):
        return dict(load="-", faults=f"skipped: the open-files hard limit is under {HALF_REQUESTS + 520}",
                    acked=0, lost=0, duplicated=0, wrong=0, rss_kb=0)
    runs = os.path.join(work, "runs")
    server = Server(binary, os.path.join(work, "data"),
                    ["--local-workers", "2", "--sandbox", "none",
                     "--header-timeout", f"{HEADER_TIMEOUT_S}s"])
    server.start()
    try:
        register_echo(server.url, runs)
        return run_waves(server, waves, runs)
    finally:
        server.stop()


def run_waves(server, waves, runs):
    ledger = Ledger()
    load = echo_load(2, server, ledger, 0.005)
    problems, figures = [], dict(worst=0.0, asked=0, cut=0.0, grown=0, claim=0.0, claim_grown=0)
    try:
        time.sleep(0.5)
        for _ in range(waves):
            claim, claim_grown = frame_claims(server, problems)
            worst, asked, cut, grown = half_request_wave(server, problems)
            f = figures
            f.update(worst=max(f["worst"], worst), asked=f["asked"] + asked, cut=max(f["cut"], cut),
                     grown=max(f["grown"], grown), claim=max(f["claim"], claim),
                     claim_grown=max(f["claim_grown"], claim_grown))
    finally:
        load.stop()
    verified = verify(server.url, ledger, runs)
    f = figures
    faults = (f"{waves} wave{'s' if waves > 1 else ''} of {HALF_REQUESTS:,} half-requests "
              f"(RSS +{f['grown'] / 1024:.0f} MiB) + {FRAME_CLAIMS} 64 MiB frame claims "
              f"(closed in {f['claim'] * 1000:.0f} ms, RSS +{f['claim_grown'] / 1024:.0f} MiB); "
              f"{f['asked']} normal requests, max {f['worst'] * 1000:.0f} ms; "
              f"all half-requests cut within {f['cut']:.1f} s (header timeout {HEADER_TIMEOUT_S} s)")
    result = row("2 async submitters", faults, ledger, verified, server)
    if problems:
        result["failed"] = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    return result
