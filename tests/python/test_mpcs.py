"""The MPCS FaaS client contract, against a real `faasd serve`.

Run by scripts/test.sh; FAASD_URL names the server (the harness starts one when it is unset,
with FAASD_SANDBOX as its --sandbox mode, or the default, auto, when that is unset).
"""

import base64
import concurrent.futures
import os
import subprocess
import sys
import time
import uuid

import dill
import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpcs_funcs  # noqa: E402  (module-level functions pickled by reference)


def serialize(obj) -> str:
    return base64.b64encode(dill.dumps(obj)).decode("utf-8")


def deserialize(text: str):
    return dill.loads(base64.b64decode(text))


@pytest.fixture(scope="session")
def base_url(tmp_path_factory):
    url = os.environ.get("FAASD_URL")
    if url:
        yield url.rstrip("/") + "/"
        return
    binary = os.environ.get("FAASD_BIN", os.path.join(HERE, "..", "..", "target", "debug", "faasd"))
    data = tmp_path_factory.mktemp("data")
    # Unset: the platform's default (--sandbox auto).
    sandbox = os.environ.get("FAASD_SANDBOX")
    proc = subprocess.Popen(
        [binary, "serve", "--data", str(data), "--listen", "127.0.0.1:0",
         "--worker-listen", "127.0.0.1:0", "--local-workers", "4", "--python-path", HERE]
        + (["--sandbox", sandbox] if sandbox else []),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("faasd listening on "), line
    url = line.split()[-1]
    try:
        yield url + "/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def register(base_url, fn, name="fn"):
    resp = requests.post(base_url + "register_function", json={"name": name, "payload": serialize(fn)})
    assert resp.status_code == 200, resp.text
    fid = resp.json()["function_id"]
    uuid.UUID(fid)
    return fid


def execute(base_url, fid, *args, **kwargs):
    resp = requests.post(base_url + "execute_function",
                         json={"function_id": fid, "payload": serialize((args, kwargs))})
    assert resp.status_code == 200, resp.text
    tid = resp.json()["task_id"]
    uuid.UUID(tid)
    return tid


def wait_result(base_url, tid, timeout=60):
    seen = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = requests.get(base_url + "status/" + tid)
        assert status.status_code == 200
        body = status.json()
        assert body["task_id"] == tid
        assert body["status"] in {"QUEUED", "RUNNING", "COMPLETED", "FAILED"}
        seen.add(body["status"])
        if body["status"] in {"COMPLETED", "FAILED"}:
            resp = requests.get(base_url + "result/" + tid)
            assert resp.status_code == 200
            return resp.json(), seen
        time.sleep(0.01)
    raise AssertionError("task %s did not finish" % tid)


def test_module_level_function_round_trip(base_url):
    fid = register(base_url, mpcs_funcs.double)
    result, _ = wait_result(base_url, execute(base_url, fid, 21))
    assert result["status"] == "COMPLETED"
    assert deserialize(result["result"]) == 42


def test_nested_function_with_args_and_kwargs(base_url):
    offset = 100

    def combine(a, b, scale=1, **extra):
        return (a + b) * scale + offset + len(extra)

    fid = register(base_url, combine)
    result, _ = wait_result(base_url, execute(base_url, fid, 1, 2, scale=3, flag=True))
    assert result["status"] == "COMPLETED"
    assert deserialize(result["result"]) == 110


def test_statuses_run_through_queued_running_completed(base_url):
    fid = register(base_url, mpcs_funcs.nap)
    result, seen = wait_result(base_url, execute(base_url, fid, 0.5))
    assert result["status"] == "COMPLETED"
    assert "RUNNING" in seen
    assert deserialize(result["result"]) == "rested 0.5"


def test_exception_is_failed_with_the_serialized_exception(base_url):
    fid = register(base_url, mpcs_funcs.explode)
    result, _ = wait_result(base_url, execute(base_url, fid, "bad input"))
    assert result["status"] == "FAILED"
    error = deserialize(result["result"])
    assert isinstance(error, ValueError)
    assert "bad input" in str(error)


def test_unpicklable_result_fails(base_url):
    fid = register(base_url, mpcs_funcs.make_generator)
    result, _ = wait_result(base_url, execute(base_url, fid))
    assert result["status"] == "FAILED"
    assert isinstance(deserialize(result["result"]), Exception)


def test_mime_base64_with_line_breaks_is_accepted(base_url):
    payload = base64.encodebytes(dill.dumps(mpcs_funcs.double)).decode()
    assert "\n" in payload
    resp = requests.post(base_url + "register_function", json={"name": "mime", "payload": payload})
    assert resp.status_code == 200, resp.text
    result, _ = wait_result(base_url, execute(base_url, resp.json()["function_id"], 4))
    assert deserialize(result["result"]) == 8


def test_error_codes(base_url):
    not_base64 = requests.post(base_url + "register_function", json={"name": "x", "payload": "!!!"})
    assert not_base64.status_code == 400
    not_pickle = requests.post(base_url + "register_function",
                               json={"name": "x", "payload": base64.b64encode(b"hello").decode()})
    assert not_pickle.status_code == 400
    assert "pickle" in not_pickle.json()["error"]
    missing = requests.post(base_url + "register_function", json={"name": "x"})
    assert missing.status_code == 422
    unknown = requests.post(base_url + "execute_function",
                            json={"function_id": str(uuid.uuid4()), "payload": serialize(((), {}))})
    assert unknown.status_code in (400, 404)
    assert requests.get(base_url + "status/" + str(uuid.uuid4())).status_code == 404
    assert requests.get(base_url + "result/" + str(uuid.uuid4())).status_code == 404


def test_hundred_concurrent_tasks(base_url):
    fid = register(base_url, mpcs_funcs.double)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        tids = list(pool.map(lambda i: execute(base_url, fid, i), range(100)))
        results = list(pool.map(lambda t: wait_result(base_url, t)[0], tids))
    assert [deserialize(r["result"]) for r in results] == [2 * i for i in range(100)]
