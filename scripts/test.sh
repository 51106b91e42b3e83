#!/usr/bin/env bash
# Runs every test: the layout check (scripts/check-layout.py), unit tests beside the code, the integration tests in tests/ (which start the
# real faasd binary), and the Python tests of the MPCS FaaS contract (tests/python). Installs
# what the Python tests need (dill, pytest, requests) with the machine's python3.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  dill pytest requests
# The shape of src/ (imports one way, no import cycles, short functions, typed errors).
python3 scripts/check-layout.py
cargo test --locked --all-targets -- --test-threads 4
# The Python tests start target/debug/faasd, which cargo test has just built: once with the
# default sandbox (auto: every layer this machine allows), once with none (trusted code).
python3 -m pytest -q tests/python
FAASD_SANDBOX=none python3 -m pytest -q tests/python
