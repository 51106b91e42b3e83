"""The HTTP transport: one `requests.Session` per thread, errors mapped to `faasd` exceptions."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import requests

from .errors import ApiError, Forbidden, InvalidUrl, ServerUnreachable, TaskFailed, Unauthenticated

# Error codes the server gives a task that FAILED (see the README's HTTP API).
TASK_FAILURE_CODES = {"function_failed", "function_timeout", "worker_lost", "output_too_large", "executor_failed"}

# Seconds to wait for a connection; reads wait for the request's own timeout.
CONNECT_TIMEOUT = 10.0


class Transport:
    """Sends requests to one server, from any thread, each thread over its own session."""

    def __init__(self, url: str, token: Optional[str], timeout: float, cacert: Optional[str] = None) -> None:
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest.strip("/"):
            raise InvalidUrl(url)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._cacert = cacert
        self._headers = {"Authorization": "Bearer " + token} if token else {}
        self._local = threading.local()
        self._sessions: List[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        """This thread's session (made on first use)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            if self._cacert:
                session.verify = self._cacert
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def request(
        self, method: str, path: str, *, read_timeout: Optional[float] = None, **kwargs: Any
    ) -> requests.Response:
        """Sends a request; returns a 2xx answer, raises `ApiError`/`TaskFailed` for an error
        answer and `ServerUnreachable` when there is none."""
        timeout = (CONNECT_TIMEOUT, read_timeout if read_timeout is not None else self.timeout)
        try:
            response = self.session().request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise ServerUnreachable(self.url, str(exc)) from exc
        except requests.Timeout as exc:
            raise ServerUnreachable(self.url, "no answer in time: %s" % exc) from exc
        except requests.RequestException as exc:  # any other way the request could not be made
            raise ServerUnreachable(self.url, str(exc)) from exc
        if response.status_code >= 400:
            # The server may close a connection whose request body it did not read (a 404 to
            # a large POST): drop the pooled connections rather than reuse a closed one.
            self.session().close()
            raise error_for(response)
        return response

    def close(self) -> None:
        """Closes every thread's session."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def error_for(response: requests.Response) -> Exception:
    """The exception for an error answer: `TaskFailed` for a failed task, `ApiError` otherwise."""
    try:
        body: Dict[str, Any] = response.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError:
        # Not faasd's error body: most likely not a faasd server (another web server, a proxy's
        # error page). Say so in one line, as the CLI does, rather than pass on its HTML.
        start = " ".join(response.text.split())[:200] or response.reason or ""
        content_type = response.headers.get("Content-Type", "no content type")
        message = (
            "the server answered %d (%s) without a faasd error: is the URL a faasd server's? "
            "It said: %s" % (response.status_code, content_type, start)
        )
        return ApiError(response.status_code, "http_%d" % response.status_code, message)
    code = str(body.get("code", "http_%d" % response.status_code))
    message = str(body.get("error", response.reason or ""))
    if code in TASK_FAILURE_CODES and body.get("task_id"):
        return TaskFailed(str(body["task_id"]), body.get("reason"), message, body.get("stderr_tail") or "")
    if response.status_code == 401:
        return Unauthenticated(response.status_code, code, message, body)
    if response.status_code == 403:
        return Forbidden(response.status_code, code, message, body)
    return ApiError(response.status_code, code, message, body)
