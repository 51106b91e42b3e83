"""faasd's Python client: run Python functions as faasd tasks.

>>> import faasd
>>> with faasd.Executor("http://127.0.0.1:8000") as pool:
...     list(pool.map(abs, [-1, -2, 3]))
[1, 2, 3]

`Client` registers dill-pickled functions, calls them and follows their tasks; `Executor` is a
`concurrent.futures.Executor` over the same server. Every error is a `faasd.Error`.
"""

from .client import Client
from .errors import (
    ApiError,
    Error,
    Forbidden,
    InvalidUrl,
    PicklingError,
    RemoteTraceback,
    ServerUnreachable,
    TaskFailed,
    Unauthenticated,
    UnpicklingError,
    WaitTimeout,
)
from .executor import Executor

__all__ = [
    "ApiError",
    "Client",
    "Error",
    "Executor",
    "Forbidden",
    "InvalidUrl",
    "PicklingError",
    "RemoteTraceback",
    "ServerUnreachable",
    "TaskFailed",
    "Unauthenticated",
    "UnpicklingError",
    "WaitTimeout",
]
__version__ = "0.1.0"
