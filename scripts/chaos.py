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
import importlib
import os
import sys
import tempfile

# Each case is a function (binary, rounds, work directory) -> table row, in scripts/chaos_cases/.
CASES = {
    "server-kill": "kills:case_server_kill",
    "worker-faults": "kills:case_worker_faults",
    "disk-full": "disk:case_disk_full",
    "slow-clients": "clients:case_slow_clients",
    "backlog": "backlog:case_backlog",
    "min-warm": "pools:case_min_warm",
    "absurd-input": "inputs:case_absurd_input",
}


def load(name):
    module, function = CASES[name].split(":")
    return getattr(importlib.import_module(f"chaos_cases.{module}"), function)


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
                row = load(name)(os.path.abspath(args.bin), rounds, work)
            except Exception as err:  # a case that could not run is a failure, said plainly
                row = dict(load="-", faults=f"case failed: {err}", acked=0, lost=0,
                           duplicated=0, wrong=0, rss_kb=0)
                failed = True
        rows.append((name, row))
        # A case may fail on its own terms (a check beyond lost and wrong) with "failed": reason.
        if row.get("failed"):
            row["faults"] += f"; FAILED: {row['failed']}"
            failed = True
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
