"""The client's exceptions: every one is a `faasd.Error`.

Some also subclass the builtin a caller would catch anyway: `ServerUnreachable` is a
`ConnectionError`, `PicklingError` a `TypeError`, `WaitTimeout` a `TimeoutError`, `InvalidUrl`
a `ValueError`.
"""

from typing import Any, Dict, Optional


class Error(Exception):
    """The base of every error this package raises."""


class ServerUnreachable(Error, ConnectionError):
    """The server cannot be reached (not running, wrong URL, connection dropped).

    >>> faasd.Client("http://127.0.0.1:9").status(task_id)   # doctest: +SKIP
    faasd.errors.ServerUnreachable: cannot reach the faasd server at http://127.0.0.1:9: ...
    """

    def __init__(self, url: str, detail: str) -> None:
        super().__init__("cannot reach the faasd server at %s: %s" % (url, detail))
        self.url = url


class InvalidUrl(Error, ValueError):
    """The server URL is not `http://HOST:PORT` or `https://HOST:PORT` (raised by `Client(...)`
    and `Executor(...)`, before any request)."""

    def __init__(self, url: str) -> None:
        super().__init__(
            "invalid server URL %r: expected http://HOST:PORT or https://HOST:PORT" % url
        )
        self.url = url


class ApiError(Error):
    """The server refused a request: `status` is the HTTP status, `code` the machine code
    (`function_not_found`, `queue_full`, `invalid_name`...), `body` the whole JSON answer."""

    def __init__(self, status: int, code: str, message: str, body: Optional[Dict[str, Any]] = None) -> None:
        super().__init__("%s (HTTP %d, %s)" % (message, status, code))
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class Unauthenticated(ApiError, PermissionError):
    """The server needs a token and got none, or one no user holds (HTTP 401): pass `token=` or
    set `$FAASD_TOKEN`."""


class Forbidden(ApiError, PermissionError):
    """The caller's role or grants do not allow the request (HTTP 403)."""


class TaskFailed(Error):
    """A task ended FAILED for a reason other than an exception the function raised (or with an
    exception this process cannot unpickle).

    `reason` is the server's reason (`timeout`, `worker_lost`, `init_failed`, `executor_died`,
    `out_of_memory`, `exception`...), `message` its text, `logs` the tail of the task's logs.

    >>> try:
    ...     executor.submit(slow).result()          # doctest: +SKIP
    ... except faasd.TaskFailed as failure:
    ...     print(failure.reason)                   # timeout
    """

    def __init__(self, task_id: str, reason: Optional[str], message: Optional[str], logs: str = "") -> None:
        text = "task %s failed (%s)" % (task_id, reason or "unknown reason")
        if message:
            text += ": " + message
        last_line = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
        if last_line and reason not in ("exception", "timeout"):
            text += " [last log line: %s]" % last_line.strip()
        super().__init__(text)
        self.task_id = task_id
        self.reason = reason
        self.message = message
        self.logs = logs


class PicklingError(Error, TypeError):
    """A function or its arguments cannot be pickled with dill, so they cannot be sent."""


class UnpicklingError(Error):
    """A task's result cannot be unpickled in this process (a class it needs is missing here)."""


class WaitTimeout(Error, TimeoutError):
    """`Client.result(task_id, timeout=...)` gave up before the task finished."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised on the server.

    Attached as `__cause__` of the exception `Future.result()` and `Client.result()` re-raise,
    so it prints under "The above exception was the direct cause of the following exception".
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.text.rstrip("\n") + "\n"
