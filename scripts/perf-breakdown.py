#!/usr/bin/env python3
"""Splits a whole-machine recording (`perf script -F pid,comm,period,ip,sym,dso` of `-g`).

Prints the share of samples (weighted by period) of the server process, the python executors,
the bench client and the rest (other processes on the machine); then the server's own samples by what they do. A sample in the
kernel counts as the kernel's (sockets, disk, pipes, wakeups); one in user space counts for the
nearest frame up its call chain that names a part of the server (a memcpy called from redb is
redb's), else for what its own frame is (allocation, copies, the runtime).
Usage: perf-breakdown.py SAMPLES.txt SERVER_PID BENCH_PID EXECUTOR_PID,...
"""
import os
import re
import sys

# (label, pattern on the symbol), first match wins.
# A kernel sample with no part of the server up its chain, by its own (leaf) symbol.
KERNEL = [
    ("kernel, no server frame: sockets",
     r"tcp|inet|sock|skb|net_rx|netif|loopback|dev_queue|ip_|__sys_send|__sys_recv|napi"),
    ("kernel, no server frame: disk (ext4, jbd2, block)",
     r"ext4|jbd2|blk|fsync|nvme|bio_|submit_bio|iomap|filemap|folio"),
    ("kernel, no server frame: pipes", r"pipe|splice"),
    ("kernel, no server frame: wakeups, scheduler",
     r"futex|schedul|epoll|switch|pick_next|ttwu|wake|enqueue|dequeue|update_curr|psi_|ep_"),
    ("kernel, no server frame: interrupts, other", r""),
]
# The parts of the server, by the nearest frame up the chain that names one.
PARTS = [
    ("redb", r"redb::"),
    ("store (encode, writer thread)", r"postcard|serde|faasd::store"),
    ("HTTP (hyper, axum, handlers)", r"hyper|axum|http::|httparse|tower|faasd::api"),
    ("frames (proto, codec)", r"faasd::proto|tokio_util::codec|length_delimited"),
    ("broker", r"faasd::broker"),
    ("executor pipes (worker, exec)", r"faasd::exec|faasd::worker"),
    ("async runtime (tokio)", r"tokio::|mio::"),
]
# A user-space sample that names no part, by its own (leaf) symbol.
LEAF = [
    ("allocation and copies (libc)", r"malloc|free|memcpy|memmove|memset|_int_|realloc|cfree|memcmp"),
    ("other", r""),
]


HEADER = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>\d+)\s+(?P<period>\d+)\s*$")
FRAME = re.compile(r"^\s+[0-9a-f]+\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")


def group_of(comm, pid, server_pid, bench_pid, executors):
    if pid == server_pid:
        return "server (faasd serve)"
    if pid == bench_pid:
        return "bench client (faasd bench)"
    if pid in executors:
        return "executors (python harness, sandbox shim and init)"
    if comm == "swapper":
        return "idle"
    return "other processes"


def first_match(rules, sym):
    for label, pattern in rules:
        if re.search(pattern, sym):
            return label
    return None


def server_label(frames):
    """What a server sample was doing, from its call chain (leaf first): the part of the server
    named by the nearest user-space frame, and whether the sample was in the kernel (a system
    call or an interrupt on its behalf) or in user space."""
    if not frames:
        return ("other", "user")
    in_kernel = "kernel" in frames[0][1]
    for sym, dso in frames:
        if "kernel" not in dso:
            label = first_match(PARTS, sym)
            if label:
                return (label, "kernel" if in_kernel else "user")
    if in_kernel:
        return (first_match(KERNEL, frames[0][0]), "kernel")
    return (first_match(LEAF, frames[0][0]), "user")


def samples(path):
    """Yields (comm, pid, period, frames) per sample."""
    head, frames = None, []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = HEADER.match(line)
        if m:
            if head:
                yield (*head, frames)
            head, frames = (m["comm"].strip(), m["pid"], int(m["period"])), []
            continue
        f = FRAME.match(line)
        if f and head:
            frames.append((f["sym"], f["dso"]))
    if head:
        yield (*head, frames)


def main():
    path, server_pid, bench_pid = sys.argv[1], sys.argv[2], sys.argv[3]
    executors = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else set()
    procs, server, hottest = {}, {}, {}
    for comm, pid, period, frames in samples(path):
        group = group_of(comm, pid, server_pid, bench_pid, executors)
        procs[group] = procs.get(group, 0) + period
        if group.startswith("server"):
            label, where = server_label(frames)
            split = server.setdefault(label, {"user": 0, "kernel": 0})
            split[where] += period
            leaf = frames[0][0] if frames else "?"
            by_sym = hottest.setdefault(label, {})
            by_sym[leaf] = by_sym.get(leaf, 0) + period
    total = sum(procs.values()) or 1
    busy = sum(sum(v.values()) for v in server.values()) or 1
    print(f"{'where the machine spent its samples':52} share")
    for group, n in sorted(procs.items(), key=lambda kv: -kv[1]):
        print(f"  {group:50} {100 * n / total:5.1f}%")
    print(f"\n{'the server, by what it does (% of the server)':52} total   user  kernel")
    for label in [l for l, _ in PARTS + LEAF] + [l for l, _ in KERNEL]:
        if label not in server:
            continue
        user, kernel = server[label]["user"], server[label]["kernel"]
        print(f"  {label:50} {100 * (user + kernel) / busy:5.1f}%  {100 * user / busy:5.1f}%  {100 * kernel / busy:5.1f}%")
        top = sorted(hottest[label].items(), key=lambda kv: -kv[1])
        for sym, m in top[: int(os.environ.get("TOP", "0"))]:
            print(f"      {100 * m / busy:5.1f}%  {sym[:100]}")
    print(f"  (the server was {100 * busy / total:.1f}% of the machine's samples)")


if __name__ == "__main__":
    main()
