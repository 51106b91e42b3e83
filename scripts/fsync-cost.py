#!/usr/bin/env python3
"""What one durable write costs on this machine's disk, by its shape.

Usage: scripts/fsync-cost.py [DIR] [ROUNDS]

Writes 4 KiB pages into a pre-written 64 MiB temporary file in DIR (default: the repository's
target/fsync-cost, created if missing and left in place; its files are removed) and makes them
durable, ROUNDS times per shape (default 400), then prints the wall-clock time and
the CPU time (user + system, this process) of one durable write:

- "24 scattered pages + fdatasync": the shape of a faasd group commit (redb writes some
  twenty-five pages of its b-trees, one `pwrite` each, wherever they were allocated);
- "24 contiguous pages + fdatasync": the same bytes in one run;
- "6 scattered pages + fdatasync": fewer pages, still apart;
- "2 contiguous pages + fdatasync": the shape of an append to a log (a write-ahead log);
- "2 contiguous pages, O_DIRECT | O_DSYNC": the same append without the page cache;
- "2 contiguous pages into a hole + fdatasync": the same append into a second temporary file of
  the same size made with `ftruncate`, so each write lands where no block is allocated yet and the file
  system allocates one before the flush (how a redb file grows: it doubles its length with
  `ftruncate` and fills the hole page by page).

The first file is written whole first, so no write to it changes its size or allocates a block.
The CPU figures include this script's own Python work and leave out what the kernel does on other
threads. A file system that refuses O_DIRECT skips the O_DIRECT shape. Only the standard library
is used. Figures move with the neighbours on a shared host: compare shapes within one run.
"""

import mmap
import os
import random
import resource
import sys
import tempfile
import time

PAGE = 4096
FILE_BYTES = 64 << 20
PAGES = FILE_BYTES // PAGE


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(name, one, rounds):
    cpu, wall = cpu_seconds(), time.perf_counter()
    for i in range(rounds):
        one(i)
    wall = (time.perf_counter() - wall) / rounds * 1e6
    cpu = (cpu_seconds() - cpu) / rounds * 1e6
    print(f"{name:<42} wall {wall:7.0f} us   cpu {cpu:6.0f} us")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    directory = (sys.argv[1] if len(sys.argv) > 1 else "") or os.path.join(
        root, "target", "fsync-cost")
    try:
        rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 400
        if rounds < 1:
            raise ValueError
    except ValueError:
        sys.exit(f"fsync-cost: ROUNDS must be a positive whole number, not {sys.argv[2]!r}")
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="fsync-cost.", dir=directory)
    direct = None
    sparse = None
    sparse_path = None
    try:
        zeros = b"\0" * (1 << 20)
        for at in range(0, FILE_BYTES, len(zeros)):
            os.pwrite(fd, zeros, at)
        os.fsync(fd)
        page = b"\x07" * PAGE
        rng = random.Random(16)

        def scattered(count):
            def one(_):
                for number in rng.sample(range(PAGES), count):
                    os.pwrite(fd, page, number * PAGE)
                os.fdatasync(fd)
            return one

        def contiguous(count):
            run = page * count
            def one(i):
                os.pwrite(fd, run, (i * count) % (PAGES - count) * PAGE)
                os.fdatasync(fd)
            return one

        print(f"{rounds} durable writes per shape")
        measure("24 scattered pages + fdatasync", scattered(24), rounds)
        measure("24 contiguous pages + fdatasync", contiguous(24), rounds)
        measure("6 scattered pages + fdatasync", scattered(6), rounds)
        measure("2 contiguous pages + fdatasync", contiguous(2), rounds)
        try:
            direct = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
        except (AttributeError, OSError) as err:
            print(f"2 contiguous pages, O_DIRECT | O_DSYNC: skipped ({err})")
        else:
            # O_DIRECT needs an aligned buffer: an anonymous map is page-aligned.
            with mmap.mmap(-1, 2 * PAGE) as aligned:
                aligned.write(page * 2)

                def direct_append(i):
                    os.pwritev(direct, [aligned], (i * 2) % (PAGES - 2) * PAGE)

                measure("2 contiguous pages, O_DIRECT | O_DSYNC", direct_append, rounds)
        sparse, sparse_path = tempfile.mkstemp(prefix="fsync-cost-hole.", dir=directory)
        os.ftruncate(sparse, FILE_BYTES)
        os.fsync(sparse)
        pair = page * 2

        def into_hole(i):
            # Each round writes two pages no earlier round wrote (past 8,191 rounds the offsets
            # wrap around and write allocated blocks again).
            os.pwrite(sparse, pair, (i * 2) % (PAGES - 2) * PAGE)
            os.fdatasync(sparse)

        measure("2 contiguous pages into a hole + fdatasync", into_hole, rounds)
    finally:
        if sparse is not None:
            os.close(sparse)
            os.unlink(sparse_path)
        if direct is not None:
            os.close(direct)
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
