#!/usr/bin/env bash
# Makes (or brings up to date) a Python virtualenv for the project's tests and benchmarks, so
# nothing is ever installed into the system interpreter.
# Usage: scripts/python-venv.sh DIR PACKAGE...   (then use DIR/bin/python, or put DIR/bin first
# on PATH so that `faasd serve` runs its python and pickle executors with that venv)
set -euo pipefail
dir="$1"
shift
if [ ! -x "$dir/bin/python" ]; then
  python3 -m venv "$dir"
fi
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
