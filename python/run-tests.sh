#!/usr/bin/env bash
# Runs the Python client's tests (python/tests) against a real `faasd serve`: makes a venv in
# target/venv-client when missing, installs the client (./python) and pytest into it, and runs
# pytest with that venv first on PATH, so the server's executors import its dill.
# Needs target/debug/faasd (run `cargo build` first), or FAASD_BIN / FAASD_URL.
# Usage: python/run-tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/target/venv-client"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python pytest
PATH="$venv/bin:$PATH" exec "$venv/bin/python" -m pytest -q python/tests "$@"
