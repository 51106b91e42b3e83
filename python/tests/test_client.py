"""`faasd.Client` against a real server: registration, calls, task status and results, and
the errors of bad input."""

import socket
import threading

import pytest

import faasd


def make_adder(offset):
    # Nested: dill pickles it by value, so the server needs nothing of this module.
    def add(a, b=0):
        return a + b + offset

    return add


def test_register_once_per_content_hash(client, server_url):
    add = make_adder(1)
    name = client.register(add)
    assert name.startswith("add-") and len(name) == len("add-") + 12
    assert client.register(add) == name
    # The same code from another client (another process, say) is no new version.
    with faasd.Client(server_url) as other:
        assert other.register(make_adder(1)) == name
    version = client._http.request("GET", "/v1/functions/" + name).json()["version"]
    assert version == 1
    # Different content (another closure value) is another function.
    assert client.register(make_adder(2)) != name


def test_register_with_an_explicit_name_and_settings(client):
    name = client.register(make_adder(0), "adder-explicit", timeout=5)
    assert name == "adder-explicit"
    live = client._http.request("GET", "/v1/functions/adder-explicit").json()
    assert live["runtime"] == "pickle"
    assert live["timeout_ms"] == 5000


def test_invalid_names_are_made_valid(client):
    name = client.register(lambda x: x)
    assert name.startswith("lambda-")
    assert client.result(client.submit(name, 3), timeout=60) == 3


def test_submit_status_result(client):
    task_id = client.submit(make_adder(10), 1, b=2)
    assert client.result(task_id, timeout=60) == 13
    status = client.status(task_id)
    assert status["id"] == task_id
    assert status["status"] == "COMPLETED"


def test_invoke_returns_the_result_bytes(client):
    import base64

    import dill

    name = client.register(make_adder(0))
    payload = base64.b64encode(dill.dumps(((20, 22), {})))
    result = client.invoke(name, payload)
    assert dill.loads(base64.b64decode(result)) == 42


def test_invoke_with_an_idempotency_key_runs_once(client):
    import base64

    import dill

    name = client.register(make_adder(1000))
    payload = base64.b64encode(dill.dumps(((1, 2), {})))
    first = client.invoke(name, payload, idempotency_key="py-once")
    assert client.invoke(name, payload, idempotency_key="py-once") == first
    tasks = client._http.request("GET", "/v1/tasks", params={"function": name}).json()["tasks"]
    assert len(tasks) == 1
    other = base64.b64encode(dill.dumps(((3, 4), {})))
    with pytest.raises(faasd.ApiError) as info:
        client.invoke(name, other, idempotency_key="py-once")
    assert info.value.status == 409
    assert info.value.code == "idempotency_key_reused"


def test_invoke_of_an_unknown_function_is_an_api_error(client):
    with pytest.raises(faasd.ApiError) as info:
        client.invoke("no-such-function", b"")
    assert info.value.status == 404
    assert info.value.code == "function_not_found"


def test_result_re_raises_the_remote_exception_with_its_traceback(client):
    def explode(message):
        raise KeyError(message)

    task_id = client.submit(explode, "bad key")
    with pytest.raises(KeyError) as info:
        client.result(task_id, timeout=60)
    assert "bad key" in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, faasd.RemoteTraceback)
    assert "in explode" in cause.text and "KeyError" in cause.text


def test_result_times_out_with_wait_timeout(client):
    def nap(seconds):
        import time

        time.sleep(seconds)

    task_id = client.submit(nap, 3)
    with pytest.raises(faasd.WaitTimeout):
        client.result(task_id, timeout=0.3)
    assert client.result(task_id, timeout=60) is None


def test_cancel_stops_a_running_task(client):
    def spin(tag):
        import time

        while True:
            time.sleep(0.05)

    task_id = client.submit(spin, "cancel-me")
    while client.status(task_id, wait=0.2)["status"] == "QUEUED":
        pass
    status = client.cancel(task_id)
    assert status["status"] == "FAILED" and status["reason"] == "cancelled", status
    assert "while it ran" in status["message"], status
    with pytest.raises(faasd.TaskFailed) as info:
        client.result(task_id, timeout=10)
    assert info.value.reason == "cancelled"
    with pytest.raises(faasd.ApiError) as again:
        client.cancel(task_id)
    assert (again.value.status, again.value.code) == (409, "task_finished")


def test_unpicklable_function_fails_at_submit(client):
    generator = (i for i in range(3))

    def uses_generator():
        return next(generator)

    with pytest.raises(faasd.PicklingError) as info:
        client.submit(uses_generator)
    assert isinstance(info.value, TypeError)
    assert "uses_generator" in str(info.value)
    assert "generator" in str(info.value)


def test_unpicklable_arguments_fail_at_submit(client):
    with socket.socket() as sock, pytest.raises(faasd.PicklingError) as info:
        client.submit(make_adder(0), sock)
    assert "add" in str(info.value)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_is_a_connection_error_with_the_url():
    url = "http://127.0.0.1:%d" % free_port()
    client = faasd.Client(url)
    with pytest.raises(ConnectionError) as info:
        client.submit(make_adder(0), 1)
    assert isinstance(info.value, faasd.Error)
    assert url in str(info.value)
    with pytest.raises(ConnectionError, match=url):
        faasd.Executor(url).submit(make_adder(0), 1)


def test_url_and_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("FAASD_URL", "http://127.0.0.1:1234/")
    monkeypatch.setenv("FAASD_TOKEN", "secret")
    client = faasd.Client()
    assert client.url == "http://127.0.0.1:1234"
    assert client._http.session().headers["Authorization"] == "Bearer secret"
    monkeypatch.delenv("FAASD_URL")
    assert faasd.Client().url == "http://127.0.0.1:8000"
    # A thread-safety smoke check: each thread gets its own session.
    sessions = []
    thread = threading.Thread(target=lambda: sessions.append(client._http.session()))
    thread.start()
    thread.join()
    assert sessions[0] is not client._http.session()


def test_a_url_without_a_scheme_is_refused_at_once():
    for url in ["127.0.0.1:8000", "localhost", "ftp://127.0.0.1:8000", "http://"]:
        with pytest.raises(faasd.InvalidUrl, match="expected http://HOST:PORT"):
            faasd.Client(url)
        with pytest.raises(ValueError):
            faasd.Executor(url)


def test_the_last_function_registered_under_a_name_is_the_live_one(client):
    first, second = make_adder(100), make_adder(200)
    for fn, expected in [(first, 101), (second, 201), (first, 101)]:
        assert client.register(fn, "adder-shared") == "adder-shared"
        assert client.result(client.submit("adder-shared", 1), timeout=60) == expected


def test_a_function_removed_on_the_server_is_registered_again(client):
    add = make_adder(7)
    name = client.register(add)
    assert client.result(client.submit(add, 1), timeout=60) == 8
    client._http.request("DELETE", "/v1/functions/" + name)
    assert client.result(client.submit(add, 2), timeout=60) == 9


def test_python_arguments_are_refused_for_a_function_of_another_runtime(client, executor):
    import base64

    code = base64.b64encode(b"def handle(payload):\n    return payload\n").decode()
    body = {"name": "plain-python-echo", "runtime": "python", "code": code}
    client._http.request("POST", "/v1/functions", json=body)
    with pytest.raises(TypeError, match="plain-python-echo is a python function"):
        client.submit("plain-python-echo", 1)
    with pytest.raises(TypeError, match="call it with invoke"):
        executor.submit("plain-python-echo", 1)
    assert client.invoke("plain-python-echo", b"bytes") == b"bytes"


def test_invoke_sends_json_to_a_python_handler(client):
    import base64

    code = base64.b64encode(b"def handle(payload):\n    return sum(payload['items'])\n").decode()
    client._http.request("POST", "/v1/functions", json={"name": "json-total", "runtime": "python", "code": code})
    assert client.invoke("json-total", json={"items": [1, 2, 3]}) == b"6"


def test_another_web_server_at_the_url_is_named_as_such():
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = b"<html>\n<body><h1>Not Found</h1></body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = faasd.Client("http://127.0.0.1:%d" % server.server_address[1])
        with pytest.raises(faasd.ApiError, match="without a faasd error") as info:
            client.status("00000000-0000-7000-8000-000000000000")
        assert info.value.code == "http_404"
        assert "<h1>Not Found</h1>" in str(info.value) and "\n" not in str(info.value)
    finally:
        server.shutdown()
