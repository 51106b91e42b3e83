"""`Client`: register dill-pickled functions, call them, and follow their tasks.

>>> client = faasd.Client("http://127.0.0.1:8000")
>>> task_id = client.submit(pow, 2, 10)
>>> client.result(task_id)
1024
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Optional, Union

from . import _serial
from ._http import Transport
from .errors import ApiError, RemoteTraceback, TaskFailed, UnpicklingError, WaitTimeout

DEFAULT_URL = "http://127.0.0.1:8000"

# The longest single long-poll `result` asks for (the server holds one up to 5 minutes).
POLL_SECONDS = 60.0

FINISHED = ("COMPLETED", "FAILED")


class Client:
    """A connection to one faasd server.

    `url` defaults to `$FAASD_URL`, then `http://127.0.0.1:8000`; `token`, to `$FAASD_TOKEN`,
    is sent as `Authorization: Bearer TOKEN` (a 401 raises `Unauthenticated`, a 403 `Forbidden`).
    For an `https://` server, `cacert` (default `$FAASD_CACERT`) is a PEM file of the
    certificate authority to trust instead of the system's. `timeout` is how long a request waits
    for its answer (a synchronous `invoke` waits as long as the call takes). Thread-safe.

    >>> with faasd.Client() as client:
    ...     name = client.register(lambda x: x + 1)
    ...     client.result(client.submit(name, 41))
    42
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 60.0,
        cacert: Optional[str] = None,
    ) -> None:
        url = url or os.environ.get("FAASD_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("FAASD_TOKEN") or None
        cacert = cacert or os.environ.get("FAASD_CACERT") or None
        self._http = Transport(url, token, timeout, cacert)
        self._lock = threading.Lock()
        self._live: Dict[str, str] = {}  # function name -> registration key this client made live
        self._by_object: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
        self._runtimes: Dict[str, str] = {}  # function name -> runtime

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._http.url

    def register(
        self,
        fn: Callable[..., Any],
        name: Optional[str] = None,
        *,
        timeout: Union[float, str, None] = None,
        memory: Union[int, str, None] = None,
        concurrency: Optional[int] = None,
        queue_limit: Optional[int] = None,
        min_warm: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> str:
        """Registers `fn` as a `pickle` function and returns its name.

        A callable is registered once per content hash (its pickle and the settings): asking
        again, from this client or another, costs no new version. The default name is the
        function's name made valid plus 12 hex digits of that hash. The settings are those of
        `POST /v1/functions` (`timeout` in seconds or as "30s", `memory` as bytes or "256MiB").

        >>> client.register(square)
        'square-3f1c0a9e4b7d'
        >>> client.register(square, "square", timeout=5)
        'square'
        """
        options = {
            key: value
            for key, value in (
                ("timeout", timeout), ("memory", memory), ("concurrency", concurrency),
                ("queue_limit", queue_limit), ("min_warm", min_warm), ("env", env),
            )
            if value is not None
        }
        code = _serial.dumps_function(fn)
        key = _serial.sha256_hex(code, json.dumps(options, sort_keys=True).encode())
        name = name or _serial.function_name(fn, key)
        with self._lock:
            # Registered live by this client, and not replaced by it since under that name.
            if self._live.get(name) == key:
                return name
            if not self._registered_with(name, code, derived=name.endswith(key[:12]) or not options):
                body = {"name": name, "runtime": "pickle", "code": _encode(code)}
                body.update(options)
                self._http.request("POST", "/v1/functions", json=body)
            self._live[name] = key
            self._runtimes[name] = "pickle"
        return name

    def _forget(self, name: str) -> None:
        """Forgets that `name` was registered (the server no longer has it): the next use of a
        callable registered under it registers it again."""
        with self._lock:
            self._live.pop(name, None)
            self._runtimes.pop(name, None)
            for fn, known in list(self._by_object.items()):
                if known == name:
                    del self._by_object[fn]

    def _registered_with(self, name: str, code: bytes, derived: bool) -> bool:
        """Whether the server's live `name` already holds `code` (and, for a derived name, the
        same settings, which the name encodes)."""
        if not derived:
            return False
        try:
            live = self._http.request("GET", "/v1/functions/" + name).json()
        except ApiError as err:
            if err.code == "function_not_found":
                return False
            raise
        return live.get("runtime") == "pickle" and live.get("code_sha256") == _serial.sha256_hex(code)

    def function_name(self, fn: Union[str, Callable[..., Any]]) -> str:
        """The registered name of `fn` (registering it with the default settings on first use);
        a string is taken as a name already.

        >>> client.function_name(square)
        'square-3f1c0a9e4b7d'
        """
        if isinstance(fn, str):
            return fn
        try:
            name = self._by_object.get(fn)
        except TypeError:  # neither hashable nor weakly referable: register by content
            return self.register(fn)
        if name is None:
            name = self.register(fn)
            try:
                self._by_object[fn] = name
            except TypeError:
                pass
        return name

    def invoke(
        self,
        name: str,
        payload: Union[bytes, str] = b"",
        *,
        json: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> bytes:
        """Calls function `name` synchronously with raw `payload` bytes and returns its result
        bytes; a failed call raises `TaskFailed`. `json=` sends a value as JSON instead (with
        `Content-Type: application/json`, so a `python` handler gets the decoded value). With
        `idempotency_key`, a repeat of the same call (after a timeout, say) answers the first
        call's result instead of running it again; the same key with another payload raises
        `ApiError` 409 `idempotency_key_reused`.

        >>> client.invoke("hello", b"world")
        b'hello, world\\n'
        >>> client.invoke("total", json={"items": [1, 2]})
        b'3'
        >>> client.invoke("charge", b"order-17", idempotency_key="order-17")
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        if json is not None:
            import json as json_module

            payload = json_module.dumps(json)
            headers["Content-Type"] = "application/json"
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        response = self._http.request(
            "POST",
            "/v1/functions/%s/invoke" % name,
            data=payload,
            headers=headers,
            read_timeout=24 * 3600.0,
        )
        return response.content

    def submit(self, name_or_fn: Union[str, Callable[..., Any]], /, *args: Any, **kwargs: Any) -> str:
        """Queues the call `fn(*args, **kwargs)` and returns its task id. `name_or_fn` is a
        callable (registered on first use) or the name of a registered pickle function.

        >>> task_id = client.submit(square, 7)
        """
        name = self.function_name(name_or_fn)
        if isinstance(name_or_fn, str):
            self.require_pickle(name)
        payload = _serial.dumps_call(name_or_fn, args, kwargs).encode("ascii")
        path = "/v1/functions/%s/invoke" % name
        try:
            response = self._http.request("POST", path, params={"async": "true"}, data=payload)
        except ApiError as err:
            if err.code != "function_not_found" or isinstance(name_or_fn, str):
                raise
            # Removed on the server since this client registered it: register it again.
            self._forget(name)
            name = self.function_name(name_or_fn)
            path = "/v1/functions/%s/invoke" % name
            response = self._http.request("POST", path, params={"async": "true"}, data=payload)
        return str(response.json()["task_id"])

    def require_pickle(self, name: str) -> None:
        """Raises `TypeError` unless the function `name` is a `pickle` one: a call made of
        Python arguments means nothing to another runtime (its handler would get the pickle's
        text), so it is refused before anything is sent."""
        runtime = self._runtime(name)
        if runtime not in ("pickle", "unknown"):
            raise TypeError(
                "%s is a %s function: submit() and Executor call pickle functions with Python "
                "arguments; call it with invoke() and a bytes payload" % (name, runtime)
            )

    def status(self, task_id: str, wait: Optional[float] = None) -> Dict[str, Any]:
        """The task's status object (`status`, `reason`, `message`, `run_ms`...); with `wait`
        (seconds), the server holds the answer until the task finishes or `wait` passes.

        >>> client.status(task_id)["status"]
        'COMPLETED'
        """
        params = {"wait": "%dms" % max(0, int(wait * 1000))} if wait else None
        read_timeout = (wait or 0) + self._http.timeout
        return self._http.request("GET", "/v1/tasks/" + task_id, params=params, read_timeout=read_timeout).json()

    def cancel(self, task_id: str, wait: Optional[float] = None) -> Dict[str, Any]:
        """Cancels the task and returns its status object. A QUEUED task ends FAILED with
        reason `cancelled` and never runs; a RUNNING one is stopped on its worker, which kills
        it. If that worker has not reported within `wait` seconds (the server's default is 10),
        the status is still RUNNING and the task ends `cancelled` once the worker reports. A task
        that already ended raises `ApiError` with code `task_finished`.

        >>> client.cancel(task_id)["reason"]
        'cancelled'
        """
        params = {"wait": "%dms" % max(0, int(wait * 1000))} if wait is not None else None
        read_timeout = (10.0 if wait is None else wait) + self._http.timeout
        path = "/v1/tasks/%s/cancel" % task_id
        return self._http.request("POST", path, params=params, read_timeout=read_timeout).json()

    def result(self, task_id: str, timeout: Optional[float] = None) -> Any:
        """Waits for the task (long-polling, up to `timeout` seconds; `None` waits as long as it
        takes) and returns its result: for a pickle function, the unpickled return value (an
        exception it raised is raised here, with the remote traceback as `__cause__`); for
        other runtimes, the result bytes. A task that failed otherwise raises `TaskFailed`;
        running out of `timeout` raises `WaitTimeout`.

        >>> client.result(client.submit(square, 7), timeout=30)
        49
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = POLL_SECONDS if deadline is None else deadline - time.monotonic()
            status = self.status(task_id, wait=max(0.0, min(remaining, POLL_SECONDS)))
            if status["status"] in FINISHED:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout("task %s is still %s after %ss" % (task_id, status["status"], timeout))
        return self._finished(status)

    def _finished(self, status: Dict[str, Any]) -> Any:
        task_id = status["id"]
        is_pickle = self._runtime(status["function"]) == "pickle"
        if status["status"] == "COMPLETED":
            data = self.fetch_result(task_id)
            return _serial.loads_result(data, task_id) if is_pickle else data
        logs = self.logs(task_id)
        result = self._pickled_failure(task_id) if is_pickle and status.get("reason") == "exception" else None
        return settle(status, result, logs)

    def fetch_result(self, task_id: str) -> bytes:
        """The result bytes of a COMPLETED task (`GET /v1/tasks/{id}/result`)."""
        return self._http.request("GET", "/v1/tasks/%s/result" % task_id).content

    def logs(self, task_id: str) -> str:
        """The captured logs (stderr, or the traceback of an exception) of a finished task.

        >>> print(client.logs(task_id))
        """
        return self._http.request("GET", "/v1/tasks/%s/logs" % task_id).text

    def _pickled_failure(self, task_id: str) -> Optional[bytes]:
        # The pickled exception of a FAILED pickle task is served by the MPCS result route.
        result = self._http.request("GET", "/result/" + task_id).json().get("result")
        return result.encode("ascii") if result else None

    def _runtime(self, name: str) -> str:
        """The runtime of function `name`, or "unknown" when the server does not say (the
        function is gone, or this caller may not read it yet): only a known one is kept."""
        runtime = self._runtimes.get(name)
        if runtime is None:
            try:
                runtime = str(self._http.request("GET", "/v1/functions/" + name).json()["runtime"])
            except ApiError:
                return "unknown"
            self._runtimes[name] = runtime
        return runtime

    def close(self) -> None:
        """Closes the client's connections."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "faasd.Client(%r)" % self.url


def settle(status: Dict[str, Any], result: Optional[bytes], logs: str) -> Any:
    """The value of a finished pickle task, or raises its failure: the function's own exception
    (with `RemoteTraceback(logs)` as its cause) when `result` holds it and it unpickles here,
    `TaskFailed` otherwise."""
    task_id = str(status["id"])
    if status["status"] == "COMPLETED":
        return _serial.loads_result(result or b"", task_id)
    if status.get("reason") == "exception" and result:
        try:
            exc = _serial.loads_result(result, task_id)
        except UnpicklingError:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = RemoteTraceback(logs)
            raise exc
    raise TaskFailed(task_id, status.get("reason"), status.get("message"), logs)


def _encode(code: bytes) -> str:
    return base64.b64encode(code).decode("ascii")
