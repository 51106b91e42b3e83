"""Fixtures: a real `faasd serve` for the whole session (or the one `FAASD_URL` names).

The server is `target/debug/faasd` (`FAASD_BIN` overrides it), started on port 0 with a
temporary data directory and 4 local executor slots; its executors use `python3` from PATH,
so run the tests with a venv holding dill first on PATH (python/run-tests.sh does).
"""

import os
import subprocess
from typing import Iterator

import pytest

import faasd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("FAASD_URL")
    if url:
        yield url.rstrip("/")
        return
    binary = os.environ.get("FAASD_BIN", os.path.join(ROOT, "target", "debug", "faasd"))
    data = tmp_path_factory.mktemp("data")
    # The server's executors use `python3` on PATH: the venv running these tests, with its dill.
    proc = subprocess.Popen(
        [binary, "serve", "--data", str(data), "--listen", "127.0.0.1:0",
         "--worker-listen", "127.0.0.1:0", "--local-workers", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("faasd listening on "), line
    try:
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def client(server_url: str) -> Iterator[faasd.Client]:
    with faasd.Client(server_url) as c:
        yield c


@pytest.fixture
def executor(server_url: str) -> Iterator[faasd.Executor]:
    with faasd.Executor(server_url) as pool:
        yield pool
