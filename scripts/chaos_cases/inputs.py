"""Absurd input on every route under load: no answer may be a 5xx or an empty reply, the numbers
the reliability issue reported must be refused with the field's name, and `queue_limit: 0` must
answer 429 at once when every slot is busy."""

import json
import random
import time

from .common import Ledger, Server, http, register, register_echo, row, echo_load, verify

JSON = {"Content-Type": "application/json"}

# Registration bodies the issue reported, each with the field its refusal must name.
NAMED = [
    ({"timeout": 1e300}, "timeout"),
    ({"timeout": 1e20}, "timeout"),
    ({"timeout": 18446744073709551616}, "timeout"),
    ({"idle_timeout": 1e300}, "idle_timeout"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"memory": -1}, "memory"),
    ({"concurrency": -1}, "concurrency"),
    ({"queue_limit": 1e20}, "queue_limit"),
    ({"min_warm": 18446744073709551616}, "min_warm"),
]

EDGE = [0, -1, 1e300, -1e300, 1e20, 2**32, 2**53, 2**64, 2**64 + 1, 0.5, "", "1e300s",
        "-5s", "99999999999999999999h", "12 parsecs", None, True, [], {}, "\u0000", "x" * 5000]

FIELDS = ["timeout", "idle_timeout", "memory", "concurrency", "queue_limit", "max_attempts",
          "min_warm", "runtime", "name", "code", "env", "handler", "warm"]


def garbage():
    """Bytes that are not what any route expects: cut JSON, wrong types, binary noise."""
    pick = random.randrange(5)
    if pick == 0:
        return bytes(random.getrandbits(8) for _ in range(random.randrange(1, 300)))
    if pick == 1:
        return json.dumps({"name": "x", "runtime": "shell", "code": "eA=="})[: random.randrange(1, 40)].encode()
    if pick == 2:
        return json.dumps(random.choice(EDGE)).encode()
    if pick == 3:
        return json.dumps({random.choice(FIELDS): random.choice(EDGE) for _ in range(3)}).encode()
    return b"[" * random.randrange(1, 5000)


def probes(url):
    """(method, url, body, headers) of one round of absurd requests over every route."""
    base = {"name": "absurd", "runtime": "shell", "code": "ZWNobyBoaQ=="}
    out = [("POST", url + "/v1/functions", json.dumps(dict(base, **body)).encode(), JSON)
           for body, _ in NAMED]
    edge = dict(base, **{random.choice(FIELDS): random.choice(EDGE)})
    out.append(("POST", url + "/v1/functions", json.dumps(edge).encode(), JSON))
    for path in ("/v1/functions", "/v1/functions/echo/batch", "/v1/tasks/wait",
                 "/register_function", "/execute_function"):
        out.append(("POST", url + path, garbage(), JSON))
    query = random.choice(["async=1e300", "async=%ff%fe", "wait=1e300s", "wait=-1", "async=" + "9" * 400])
    out.append(("POST", f"{url}/v1/functions/echo/invoke?{query}", b"x", {}))
    out.append(("GET", f"{url}/v1/tasks/{'f' * random.randrange(1, 300)}?wait=1e300s", None, {}))
    out.append(("GET", f"{url}/v1/tasks/..%2f..%2fetc/result", None, {}))
    out.append(("GET", f"{url}/status/%00", None, {}))
    out.append(("DELETE", f"{url}/v1/functions/{'%ff' * 20}", None, {}))
    return out


def named_refusals(url):
    """How many of the issue's numbers were not a 400 naming their field."""
    bad = 0
    base = {"name": "absurd", "runtime": "shell", "code": "ZWNobyBoaQ=="}
    for body, field in NAMED:
        code, answer = http("POST", url + "/v1/functions", json.dumps(dict(base, **body)).encode(),
                            headers=JSON)
        if code != 400 or field not in answer.decode(errors="replace"):
            bad += 1
    return bad


def queue_limit_zero(url, work):
    """True when a call finding the only slot busy is answered 429 at once under queue_limit 0."""
    register(url, "busy", "sleep 2; echo done", work + "/busy-runs", concurrency=1, queue_limit=0)
    code, body = http("POST", url + "/v1/functions/busy/invoke?async=true", b"")
    if code != 202:
        return False
    task = json.loads(body)["task_id"]
    # The first call holds the slot once it is RUNNING; until then the second may queue behind it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        code, body = http("GET", f"{url}/v1/tasks/{task}")
        if code == 200 and json.loads(body)["status"] == "RUNNING":
            break
    started = time.monotonic()
    code, _ = http("POST", url + "/v1/functions/busy/invoke", b"", timeout=10)
    return code == 429 and time.monotonic() - started < 1.0


def case_absurd_input(binary, rounds, work):
    """Rounds of absurd requests on every route while echo load runs."""
    runs = work + "/runs"
    server = Server(binary, work + "/data", ["--local-workers", "2", "--sandbox", "none"])
    server.start()
    register_echo(server.url, runs)
    ledger = Ledger()
    # Light load: the point is that absurd requests meet a working server, not a backlog.
    load = echo_load(2, server, ledger, 0.02)
    sent = broken = 0
    seen = []
    for _ in range(rounds * 10):
        for method, url, body, headers in probes(server.url):
            code, _ = http(method, url, body, timeout=30, headers=headers)
            sent += 1
            if code == 0 or code >= 500:
                broken += 1
                if len(seen) < 3:
                    seen.append(f"{method} {url.split('/', 3)[-1][:60]} -> {code or 'no answer'}")
    unnamed = named_refusals(server.url)
    zero_ok = queue_limit_zero(server.url, work)
    load.stop()
    alive = server.proc.poll() is None
    result = row("2 async submitters", f"{sent:,} absurd requests on 13 routes: {broken} answered "
                 f"5xx or nothing; {len(NAMED) - unnamed}/{len(NAMED)} reported numbers refused "
                 f"400 naming the field; queue_limit 0 {'answered 429 at once' if zero_ok else 'did NOT answer 429'}",
                 ledger, verify(server.url, ledger, runs), server)
    server.stop()
    problems = [p for p, bad in [(f"a 5xx or empty answer ({'; '.join(seen)})", broken), ("a number not refused by name", unnamed),
                                 ("queue_limit 0 did not answer 429", not zero_ok),
                                 ("the server died", not alive)] if bad]
    if problems:
        result["failed"] = ", ".join(problems)
    return result
