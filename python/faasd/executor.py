"""`Executor`: a `concurrent.futures.Executor` whose calls run as faasd tasks.

Two kinds of background threads serve every future of an executor, however many there are:

- the submitter takes the calls `submit` queued, groups them per function and sends each group
  as one `POST /v1/functions/{name}/batch` (at most `batch_size` payloads and `batch_bytes`
  bytes per request), keeping at most `max_in_flight` tasks on the server at once;
- `waiters` waiter threads long-poll `POST /v1/tasks/wait` over the pending task ids and settle
  the futures of the tasks that finished.

Against a server without those two routes (404/405), the executor falls back to one
`POST .../invoke?async=true` per call and `GET /v1/tasks/{id}?wait=` per task.

>>> with faasd.Executor() as pool:
...     list(pool.map(square, range(5)))
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import itertools
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple, Union

from . import _serial
from .client import Client, settle
from .errors import ApiError, Error

# The server's limits on one `POST /v1/tasks/wait`.
WAIT_SECONDS = 30.0
SHORT_WAIT_SECONDS = 2.0

# Answers that mean "this server has no such route".
NO_ROUTE = ("route_not_found", "method_not_allowed")

# Threads that send calls one by one to a server without the batch route.
SINGLE_SENDERS = 4

# How long the submitter waits before resending calls refused with 429 queue_full (the
# server's Retry-After).
QUEUE_FULL_RETRY_SECONDS = 1.0

# How long a waiter retries a poll the server does not answer before failing its futures.
RETRY_SECONDS = 30.0


class _Call:
    """A call `submit` queued: its future, its function's name and its payload."""

    __slots__ = ("future", "name", "payload")

    def __init__(self, future: "concurrent.futures.Future[Any]", name: str, payload: str) -> None:
        self.future = future
        self.name = name
        self.payload = payload


class Executor(concurrent.futures.Executor):
    """Runs calls on a faasd server; `submit` returns a `concurrent.futures.Future`.

    `url` and `token` are those of `Client` (or pass `client=`). Functions are pickled with dill
    and registered once per content hash; a function defined in `__main__` or nested in another
    travels by value, one defined in an importable module by reference (the server must be able
    to import it: `faasd serve --python-path`).

    `Future.result()` re-raises the function's exception (its remote traceback as `__cause__`),
    or raises `faasd.TaskFailed` (reason `timeout`, `worker_lost`, ...).

    >>> with faasd.Executor("http://127.0.0.1:8000") as pool:
    ...     future = pool.submit(pow, 2, 10)
    ...     future.result()
    1024
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        client: Optional[Client] = None,
        max_in_flight: int = 10_000,
        batch_size: int = 1000,
        batch_bytes: int = 4 << 20,
        waiters: int = 2,
        poll_ids: int = 1000,
    ) -> None:
        if min(max_in_flight, batch_size, batch_bytes, waiters, poll_ids) < 1:
            raise ValueError("max_in_flight, batch_size, batch_bytes, waiters and poll_ids must be at least 1")
        self._client = client or Client(url, token)
        self._own_client = client is None
        self._http = self._client._http
        self._max_in_flight = max_in_flight
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._waiters = waiters
        self._poll_ids = min(poll_ids, 10_000)
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # the submitter waits on it
        self._ids_ready = threading.Condition(self._lock)  # the waiters wait on it
        self._queue: Deque[_Call] = collections.deque()
        self._in_flight: Dict[str, "concurrent.futures.Future[Any]"] = {}  # task id -> future
        self._held: Set[str] = set()  # ids a waiter is polling now
        self._outstanding = 0  # calls taken by the submitter and not settled yet
        self._busy_waiters = 0
        self._submitting = True
        self._shutdown = False
        self._threads: List[threading.Thread] = []
        self._batch_route = True
        self._single_senders: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._wait_route = True

    # The public interface.

    def submit(self, fn: Union[str, Callable[..., Any]], /, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """Schedules `fn(*args, **kwargs)` on the server and returns its future. `fn` is a
        callable (pickled and registered on first use; one that cannot be pickled raises
        `faasd.PicklingError`, a `TypeError`, here) or a registered pickle function's name.

        >>> pool.submit(square, 7).result()
        49
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        name = self._client.function_name(fn)
        if isinstance(fn, str):
            self._client.require_pickle(name)
        call = _Call(concurrent.futures.Future(), name, _serial.dumps_call(fn, args, kwargs))
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(call)
            if not self._threads:
                self._start_threads()
            self._work_ready.notify()
        return call.future

    def map(
        self, fn: Union[str, Callable[..., Any]], *iterables: Iterable[Any], timeout: Optional[float] = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like the builtin `map`, each call a task; results come back in order. With
        `chunksize` > 1, each task runs that many consecutive calls.

        >>> list(pool.map(pow, [2, 3], [5, 2]))
        [32, 9]
        """
        if chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        if isinstance(fn, str):
            raise TypeError("map with chunksize > 1 needs the function itself, not its name")
        runner = self._client.function_name(_chunk_runner(fn))
        chunks = _chunks(zip(*iterables), chunksize)
        return itertools.chain.from_iterable(super().map(runner, chunks, timeout=timeout))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accepts no more calls; with `cancel_futures`, cancels the calls not sent to the
        server yet (tasks already queued there still run); with `wait`, returns once every
        future that is not cancelled is settled.

        >>> pool.shutdown(cancel_futures=True)
        """
        with self._lock:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            self._work_ready.notify_all()
            self._ids_ready.notify_all()
        for call in dropped:
            call.future.cancel()
        if wait:
            for thread in self._threads:
                thread.join()
            if self._own_client:
                self._client.close()

    # The threads.

    def _start_threads(self) -> None:
        threads = [threading.Thread(target=self._submit_loop, name="faasd-submitter", daemon=True)]
        for i in range(self._waiters):
            threads.append(threading.Thread(target=self._wait_loop, name="faasd-waiter-%d" % i, daemon=True))
        self._threads = threads
        for thread in threads:
            thread.start()

    def _submit_loop(self) -> None:
        try:
            while True:
                calls = self._take_calls()
                if calls is None:
                    return
                live = [call for call in calls if call.future.set_running_or_notify_cancel()]
                self._settled(len(calls) - len(live))
                for name, group in _by_function(live).items():
                    for chunk in _chunks_of(group, self._batch_size, self._batch_bytes):
                        self._send(name, chunk)
        finally:
            if self._single_senders is not None:
                self._single_senders.shutdown()
            with self._lock:
                self._submitting = False
                self._ids_ready.notify_all()

    def _take_calls(self) -> Optional[List[_Call]]:
        """The next calls to send (as many as the window allows), or None at shutdown."""
        with self._lock:
            while not self._queue or self._outstanding >= self._max_in_flight:
                if self._shutdown and not self._queue:
                    return None
                self._work_ready.wait()
            count = min(len(self._queue), self._max_in_flight - self._outstanding)
            calls = [self._queue.popleft() for _ in range(count)]
            self._outstanding += count
            return calls

    def _send(self, name: str, calls: List[_Call]) -> None:
        """Queues `calls` of function `name` on the server and hands their ids to the waiters."""
        accepted: List[_Call] = []
        if self._batch_route:
            try:
                self._post_batch(name, calls, accepted)
                return
            except ApiError as err:
                # The calls already queued (a first part of a batch sent in parts) are the
                # waiters' now; only the others fail.
                if err.code not in NO_ROUTE or accepted:
                    return self._give_up(calls[len(accepted):], err)
                self._batch_route = False
            except Exception as err:  # never leave a future unsettled
                return self._give_up(calls[len(accepted):], err)
        # One request per call: a few threads send them, as the server commits each alone.
        if self._single_senders is None:
            self._single_senders = concurrent.futures.ThreadPoolExecutor(SINGLE_SENDERS, "faasd-sender")
        ids = list(self._single_senders.map(lambda call: self._post_one(name, call), calls))
        self._register(ids, calls)

    def _register(self, ids: List[Optional[str]], calls: List[_Call]) -> None:
        """Hands the ids of calls the server queued to the waiters."""
        with self._lock:
            for task_id, call in zip(ids, calls):
                if task_id is not None:
                    self._in_flight[task_id] = call.future
            self._ids_ready.notify_all()

    def _post_batch(self, name: str, calls: List[_Call], accepted: List[_Call]) -> None:
        """Submits `calls` in one request, or in smaller ones while the queue has no room for
        all: the server admits a batch whole or not at all, so one larger than the function's
        `queue_limit` would never fit. Halves are sent in order, and each part the server takes
        is registered and added to `accepted` at once (so a later part's failure fails only the
        calls not sent); a single call refused for a full queue is offered again a second
        later, as the queue drains."""
        payloads = [call.payload for call in calls]
        while True:
            try:
                answer = self._http.request("POST", "/v1/functions/%s/batch" % name, json=payloads)
            except ApiError as err:
                if err.code != "queue_full":
                    raise
                if len(calls) > 1:
                    half = len(calls) // 2
                    self._post_batch(name, calls[:half], accepted)
                    self._post_batch(name, calls[half:], accepted)
                    return
                time.sleep(QUEUE_FULL_RETRY_SECONDS)
                continue
            ids: List[Optional[str]] = [str(task_id) for task_id in answer.json()["task_ids"]]
            self._register(ids, calls)
            accepted.extend(calls)
            return

    def _post_one(self, name: str, call: _Call) -> Optional[str]:
        while True:
            try:
                answer = self._http.request(
                    "POST", "/v1/functions/%s/invoke" % name, params={"async": "true"}, data=call.payload.encode("ascii")
                )
                return str(answer.json()["task_id"])
            except ApiError as err:
                if err.code == "queue_full":
                    time.sleep(QUEUE_FULL_RETRY_SECONDS)
                    continue
                self._give_up([call], err)
            except Exception as err:  # never leave a future unsettled
                self._give_up([call], err)
            return None

    def _wait_loop(self) -> None:
        while True:
            with self._lock:
                while len(self._in_flight) <= len(self._held):
                    if not self._submitting and not self._in_flight:
                        return
                    self._ids_ready.wait()
                ids, wait = self._take_ids()
            finished: List[str] = []
            try:
                finished = self._poll_until_answered(ids, wait)
            finally:
                with self._lock:
                    self._busy_waiters -= 1
                    self._held.difference_update(ids)
                    for task_id in finished:
                        self._in_flight.pop(task_id, None)
                    self._ids_ready.notify_all()
                self._settled(len(finished))

    def _take_ids(self) -> Tuple[List[str], float]:
        """Ids for one poll (called with the lock held): all unpolled ids when they fit,
        else the oldest and the newest halves. The last free waiter polls briefly, so ids
        that arrive while every waiter is busy wait seconds at most."""
        limit = self._poll_ids if self._wait_route else 1
        free = (task_id for task_id in self._in_flight if task_id not in self._held)
        if len(self._in_flight) - len(self._held) <= limit:
            ids = list(free)
        else:
            ids = list(itertools.islice(free, limit // 2 or 1))
            taken = set(ids)
            newest = (i for i in reversed(self._in_flight) if i not in self._held and i not in taken)
            ids += itertools.islice(newest, limit - len(ids))
        self._held.update(ids)
        self._busy_waiters += 1
        wait = SHORT_WAIT_SECONDS if self._busy_waiters >= self._waiters else WAIT_SECONDS
        return ids, wait

    def _poll_until_answered(self, ids: List[str], wait: float) -> List[str]:
        """Polls `ids` once (retrying a server that does not answer, for a while), settles the
        futures of the finished ones and returns their ids."""
        started = time.monotonic()
        delay = 0.1
        while True:
            try:
                if self._wait_route:
                    return self._poll_many(ids, wait)
                return self._poll_one(ids[0], wait)
            except ApiError as err:
                if err.code in NO_ROUTE and self._wait_route:
                    self._wait_route = False
                    return []
                error: Error = err
                if err.status < 500:
                    break
            except Error as err:
                error = err
            if time.monotonic() - started > RETRY_SECONDS or self._shutdown:
                break
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        self._fail([self._in_flight[i] for i in ids], error)
        return list(ids)

    def _poll_many(self, ids: List[str], wait: float) -> List[str]:
        answer = self._http.request(
            "POST", "/v1/tasks/wait", json={"ids": ids, "wait": "%dms" % int(wait * 1000)}, read_timeout=wait + 30
        ).json()
        done = []
        for status in answer.get("tasks", []):
            task_id = str(status["id"])
            if "result_base64" in status:
                result: Optional[bytes] = base64.b64decode(status["result_base64"])
            elif status.get("result_omitted"):
                result = self._fetch_result(status)
            else:
                result = None
            self._settle(task_id, status, result, str(status.get("logs_tail") or ""))
            done.append(task_id)
        unknown = [str(task_id) for task_id in answer.get("unknown", []) + answer.get("expired", [])]
        if unknown:
            self._fail([self._in_flight[i] for i in unknown if i in self._in_flight],
                       Error("the server does not know these tasks (any more): %s" % ", ".join(unknown[:5])))
        return done + unknown

    def _poll_one(self, task_id: str, wait: float) -> List[str]:
        status = self._client.status(task_id, wait=wait)
        if status["status"] not in ("COMPLETED", "FAILED"):
            return []
        logs = "" if status["status"] == "COMPLETED" else self._client.logs(task_id)
        self._settle(task_id, status, self._fetch_result(status), logs)
        return [task_id]

    def _fetch_result(self, status: Dict[str, Any]) -> Optional[bytes]:
        if status["status"] == "COMPLETED":
            return self._client.fetch_result(str(status["id"]))
        if status.get("reason") == "exception":
            return self._client._pickled_failure(str(status["id"]))
        return None

    def _settle(self, task_id: str, status: Dict[str, Any], result: Optional[bytes], logs: str) -> None:
        future = self._in_flight.get(task_id)
        if future is None or future.done():
            return
        try:
            future.set_result(settle(status, result, logs))
        except BaseException as exc:  # the function's own exception, or why the task failed
            future.set_exception(exc)

    def _give_up(self, calls: List[_Call], error: BaseException) -> None:
        """Fails calls that never reached the server, freeing their places in the window."""
        self._fail([call.future for call in calls], error)
        self._settled(len(calls))

    def _fail(self, futures: List["concurrent.futures.Future[Any]"], error: BaseException) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _settled(self, count: int) -> None:
        """Frees `count` places of the in-flight window."""
        if count:
            with self._lock:
                self._outstanding -= count
                self._work_ready.notify()

    def __repr__(self) -> str:
        return "faasd.Executor(%r)" % self._client.url


def _by_function(calls: List[_Call]) -> Dict[str, List[_Call]]:
    groups: Dict[str, List[_Call]] = {}
    for call in calls:
        groups.setdefault(call.name, []).append(call)
    return groups


def _chunks_of(calls: List[_Call], size: int, max_bytes: int) -> Iterator[List[_Call]]:
    """`calls` in runs of at most `size` calls and about `max_bytes` bytes of payload."""
    chunk: List[_Call] = []
    total = 0
    for call in calls:
        cost = len(call.payload) + 4
        if chunk and (len(chunk) >= size or total + cost > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(call)
        total += cost
    if chunk:
        yield chunk


def _chunks(items: Iterator[Tuple[Any, ...]], size: int) -> Iterator[Tuple[Tuple[Any, ...], ...]]:
    while True:
        chunk = tuple(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _chunk_runner(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A function that runs `fn` over a chunk of argument tuples (pickled by value with `fn`)."""

    def run_chunk(chunk: Tuple[Tuple[Any, ...], ...]) -> List[Any]:
        return [fn(*args) for args in chunk]

    run_chunk.__name__ = "%s_chunk" % getattr(fn, "__name__", "fn")
    return run_chunk
