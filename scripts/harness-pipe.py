#!/usr/bin/env python3
"""What the warm Python harness costs a call over its pipes, with nothing else in the way.

Starts `src/exec/harness.py` on a no-op function and sends it CALLS calls (default 20,000)
three ways, ROUNDS times (default 2):

- one at a time, each answer read before the next call is written, the two processes free to
  run on any core;
- the same with both processes on one core (this process and the harness pinned to the lowest
  CPU this process may use; on a one-CPU machine the first two ways are the same);
- BATCH calls (default 16, at most 1,000) written at once, then their BATCH answers read, on
  any core. CALLS is rounded down to a multiple of BATCH.

Prints the calls a second and the harness's own CPU time a call (from `/proc/PID/stat`, in
clock ticks, so read it over thousands of calls). Standard library only; the interpreter that
runs this script runs the harness.

Usage: python3 scripts/harness-pipe.py [CALLS] [ROUNDS] [BATCH]
"""

import os
import struct
import subprocess
import sys
import tempfile
import time

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "exec", "harness.py")


MAX_BATCH = 1000
"""Calls written before any answer is read: past some thousands both pipes fill and the two
processes wait on each other."""


def whole_number(text, name):
    if not text.isdigit() or int(text) < 1:
        sys.exit(f"{name} must be a positive whole number, got {text!r}")
    return int(text)


def harness_cpu_us(pid):
    """utime + stime of process `pid`, in microseconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000 // os.sysconf("SC_CLK_TCK")


class Harness:
    def __init__(self, module):
        self.proc = subprocess.Popen(
            [sys.executable, HARNESS, "python", module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        first = self.frame()
        if first != b"R":
            self.stop()
            detail = first[1:].decode("utf-8", "replace") if first[:1] == b"E" else repr(first[:80])
            sys.exit(f"the harness did not start:\n{detail}")

    def read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.proc.stdout.read(n - len(data))
            if not chunk:
                self.stop()
                sys.exit("the harness closed its stdout")
            data += chunk
        return data

    def frame(self):
        return self.read(struct.unpack(">I", self.read(4))[0])

    def pin(self, cpus):
        os.sched_setaffinity(0, cpus)
        os.sched_setaffinity(self.proc.pid, cpus)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def measure(harness, calls, batch):
    """Sends `calls` calls (a multiple of `batch`), `batch` written at a time; returns calls/s
    and the harness's CPU a call."""
    body = b"C\x00x"
    message = struct.pack(">I", len(body)) + body
    cpu_before, started = harness_cpu_us(harness.proc.pid), time.perf_counter()
    for _ in range(calls // batch):
        harness.proc.stdin.write(message * batch)
        for _ in range(batch):
            if harness.frame()[:1] != b"O":
                sys.exit("a call failed")
    elapsed = time.perf_counter() - started
    return calls / elapsed, (harness_cpu_us(harness.proc.pid) - cpu_before) / calls


def main():
    args = sys.argv[1:]
    calls = whole_number(args[0], "CALLS") if len(args) > 0 else 20_000
    rounds = whole_number(args[1], "ROUNDS") if len(args) > 1 else 2
    batch = whole_number(args[2], "BATCH") if len(args) > 2 else 16
    if batch > MAX_BATCH:
        sys.exit(f"BATCH may be at most {MAX_BATCH}, got {batch}")
    if calls < batch:
        sys.exit(f"CALLS must be at least BATCH ({batch}), got {calls}")
    calls -= calls % batch
    every_cpu = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory() as work:
        module = os.path.join(work, "noop.py")
        with open(module, "w") as f:
            f.write("def handle(payload):\n    return payload\n")
        harness = Harness(module)
        try:
            measure(harness, min(calls, 2_000), 1)  # warm-up
            print(f"{calls:,} calls per way, {rounds} rounds"
                  + ("" if len(every_cpu) > 1 else " (one CPU: 'any core' is that one)"))
            ways = [
                ("one at a time, any core", 1, every_cpu),
                ("one at a time, one core", 1, {min(every_cpu)}),
                (f"{batch} at a time, any core", batch, every_cpu),
            ]
            for r in range(rounds):
                for name, size, cpus in ways:
                    harness.pin(cpus)
                    rate, cpu = measure(harness, calls, size)
                    print(f"round {r + 1}: {name:<26} {rate:>9,.0f} calls/s   harness CPU {cpu:5.1f} us a call")
        finally:
            harness.stop()


if __name__ == "__main__":
    main()
