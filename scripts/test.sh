#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the integration tests in tests/, which start
# the real faasd binary. Needs only the Rust toolchain and /bin/sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets -- --test-threads 4
