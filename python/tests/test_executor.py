"""`faasd.Executor` against a real server: futures, ordered map, remote exceptions, failures,
shutdown, and a bounded number of threads and connections however many futures wait."""

import concurrent.futures
import os
import threading
import time

import pytest

import faasd


def make_square():
    def square(x):
        return x * x

    return square


def make_nap():
    def nap(seconds, value=None):
        import time

        time.sleep(seconds)
        return value

    return nap


def test_is_a_concurrent_futures_executor(executor):
    assert isinstance(executor, concurrent.futures.Executor)
    future = executor.submit(make_square(), 12)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 144


def test_map_keeps_order_over_a_thousand_items(executor):
    items = list(range(1000))
    assert list(executor.map(make_square(), items, timeout=120)) == [i * i for i in items]


def test_map_with_several_iterables_and_chunks(executor):
    add = lambda a, b: a + b  # noqa: E731
    assert list(executor.map(add, range(25), range(100, 125), chunksize=7)) == [
        a + b for a, b in zip(range(25), range(100, 125))
    ]


def test_the_remote_exception_is_re_raised_with_its_traceback(executor):
    def parse(text):
        return int(text)

    future = executor.submit(parse, "not a number")
    with pytest.raises(ValueError) as info:
        future.result(timeout=60)
    assert "not a number" in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, faasd.RemoteTraceback)
    assert "in parse" in cause.text
    assert "ValueError: invalid literal" in cause.text


def test_a_timeout_is_task_failed_with_its_reason(executor, client):
    name = client.register(make_nap(), "nap-short-timeout", timeout=0.5)
    future = executor.submit(name, 10)
    with pytest.raises(faasd.TaskFailed) as info:
        future.result(timeout=60)
    assert info.value.reason == "timeout"
    assert isinstance(info.value, faasd.Error)


def test_an_unpicklable_callable_fails_at_submit(executor):
    generator = (i for i in range(3))
    lock = threading.Lock()

    def next_item():
        with lock:
            return next(x for x in generator)

    with pytest.raises(faasd.PicklingError, match="next_item"):
        executor.submit(next_item)


def test_shutdown_cancels_the_calls_not_sent(server_url):
    pool = faasd.Executor(server_url, max_in_flight=2)
    nap = make_nap()
    futures = [pool.submit(nap, 0.2, i) for i in range(30)]
    pool.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    ran = [f for f in futures if not f.cancelled()]
    assert all(f.done() for f in futures)
    assert len(cancelled) >= 20, "only %d of 30 were cancelled" % len(cancelled)
    assert [f.result() for f in ran] == [futures.index(f) for f in ran]
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(nap, 0)


def socket_count():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink("/proc/self/fd/" + fd).startswith("socket:")
        except OSError:
            pass
    return count


def test_two_thousand_pending_futures_use_a_few_threads_and_connections(executor):
    nap, square = make_nap(), make_square()
    threads_before, sockets_before = threading.active_count(), socket_count()
    # Four naps hold the server's four slots, so the 2,000 calls behind them stay pending.
    blockers = [executor.submit(nap, 3) for _ in range(4)]
    futures = [executor.submit(square, i) for i in range(2000)]
    deadline = time.monotonic() + 2
    peak_threads = peak_sockets = 0
    while time.monotonic() < deadline:
        assert sum(not f.done() for f in futures) > 1000
        peak_threads = max(peak_threads, threading.active_count() - threads_before)
        peak_sockets = max(peak_sockets, socket_count() - sockets_before)
        time.sleep(0.05)
    # The submitter, two waiters (and, against a server without the batch route, four
    # senders), each with one connection: never a thread or a connection per future.
    assert peak_threads <= 7, peak_threads
    assert peak_sockets <= 8, peak_sockets
    assert [f.result(timeout=120) for f in futures] == [i * i for i in range(2000)]
    concurrent.futures.wait(blockers, timeout=60)


def test_without_the_batch_routes_it_falls_back_to_single_task_routes(server_url):
    with faasd.Executor(server_url) as pool:
        pool._batch_route = pool._wait_route = False
        assert list(pool.map(make_square(), range(50), timeout=60)) == [i * i for i in range(50)]
        with pytest.raises(ZeroDivisionError) as info:
            pool.submit(lambda: 1 / 0).result(timeout=60)
        assert isinstance(info.value.__cause__, faasd.RemoteTraceback)


def test_more_calls_than_the_queue_holds_are_sent_in_parts_and_all_run(server_url, client):
    # The server admits a batch whole or not at all: ten calls at once could never fit a
    # queue of three, so the executor sends them in smaller requests as the queue drains.
    name = client.register(make_nap(), "nap_small_queue", concurrency=1, queue_limit=3)
    pool = faasd.Executor(server_url)
    try:
        futures = [pool.submit(name, 0.05, i) for i in range(10)]
        assert [f.result(timeout=120) for f in futures] == list(range(10))
    finally:
        # Not `with`: a stalled submitter would hold its exit for ever.
        pool.shutdown(wait=False, cancel_futures=True)
