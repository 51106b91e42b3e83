#!/usr/bin/env bash
# Runs every test: the layout check (scripts/check-layout.py), unit tests beside the code, the
# integration tests in tests/ (which start the real faasd binary), and the Python tests of the
# MPCS FaaS contract (tests/python) and of the Python client (python/tests), then the dashboard
# in headless Chromium (scripts/browser-test.py). What they need (dill, pytest, requests, the
# client itself, and prometheus-client, whose parser tests/metrics.rs uses) goes into a
# virtualenv this script makes under target/, never into the system interpreter; Chromium comes
# from Debian (scripts/install-chromium.sh, only when missing), and so does the static busybox the
# image tests put in their images (scripts/install-busybox.sh, only when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# The shape of src/ (imports one way, no import cycles, short functions, typed errors).
python3 scripts/check-layout.py
venv="$PWD/target/test-venv"
scripts/python-venv.sh "$venv" dill pytest requests prometheus-client ./python
scripts/install-busybox.sh
cargo test --locked --all-targets -- --test-threads 4
# A short fault-injection run (3 rounds a case); scripts/chaos.sh without --short is the full one.
scripts/chaos.sh --bin target/debug/faasd --short
# The Python tests start target/debug/faasd, which cargo test has just built, with the venv first
# on PATH (so its executors use the venv's python3 and dill): once with the default sandbox
# (auto: every layer this machine allows), once with none (trusted code).
PATH="$venv/bin:$PATH" python -m pytest -q -p no:cacheprovider tests/python
PATH="$venv/bin:$PATH" FAASD_SANDBOX=none python -m pytest -q -p no:cacheprovider tests/python
PATH="$venv/bin:$PATH" python -m pytest -q -p no:cacheprovider python/tests
# The dashboard in a real browser: two workers, two functions, a live task, the invoke form, a
# phone's width, and a screenshot at target/dashboard.png; bounded at 5 minutes.
scripts/install-chromium.sh
PATH="$venv/bin:$PATH" timeout 300 python scripts/browser-test.py target/debug/faasd
