"""Tokens: a server with users answers a client without a token 401 and one lacking a right
403, as `Unauthenticated` and `Forbidden`; a client with its token works."""

import os
import subprocess
from typing import Iterator, Tuple

import pytest

import faasd

from conftest import ROOT

BINARY = os.environ.get("FAASD_BIN", os.path.join(ROOT, "target", "debug", "faasd"))


def cli(url: str, *args: str) -> str:
    out = subprocess.run([BINARY, *args, "--url", url], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def users_server(tmp_path) -> Iterator[Tuple[str, str, str]]:
    """A fresh server with a developer and an invoker: (url, developer token, invoker token)."""
    proc = subprocess.Popen(
        [BINARY, "serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
         "--worker-listen", "127.0.0.1:0", "--local-workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("faasd listening on "), line
    url = line.split()[-1]
    try:
        # While no user exists, loopback clients act as admin (protected mode); the first user
        # ends it, so it is an admin, whose token adds the others.
        admin = cli(url, "user", "add", "root", "--role", "admin")
        developer = cli(url, "user", "add", "dev", "--role", "developer", "--token", admin)
        invoker = cli(url, "user", "add", "inv", "--role", "invoker", "--token", admin)
        yield url, developer, invoker
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_tokens_decide_who_may_do_what(users_server: Tuple[str, str, str]) -> None:
    url, developer, invoker = users_server
    with faasd.Client(url, token=developer) as dev:
        name = dev.register(lambda x: x * 2, name="double")
        assert dev.result(dev.submit(name, 21)) == 42
    with faasd.Client(url, token="") as nobody:
        with pytest.raises(faasd.Unauthenticated) as refused:
            nobody.submit(name, 1)
        assert refused.value.status == 401
        assert isinstance(refused.value, PermissionError)
    with faasd.Client(url, token=invoker) as inv:
        with pytest.raises(faasd.Forbidden) as lacking:
            inv.submit(name, 1)
        assert lacking.value.code == "forbidden"
        cli(url, "grant", "inv", name, "--token", developer)
        assert inv.result(inv.submit(name, 4)) == 8
