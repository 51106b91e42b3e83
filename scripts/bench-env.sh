# Sourced by the benchmark scripts (from the repository's root): builds the release binary,
# sets `bin` to it, and puts a venv with dill first on PATH, so the warm runtimes' executors use
# it and never the system python. FAASD_BIN=PATH runs that binary instead (an A/B against a
# saved build of the code before).
if [ -n "${FAASD_BIN:-}" ]; then
  bin="$FAASD_BIN"
else
  cargo build --release --locked --quiet
  bin="$PWD/target/release/faasd"
fi
venv="$PWD/target/bench-venv"
scripts/python-venv.sh "$venv" dill
export PATH="$venv/bin:$PATH"
