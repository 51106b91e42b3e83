#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium against a running faasd.

It starts `faasd serve` (one local worker) and one remote `faasd worker`, registers a shell and a
python function, runs a few tasks, then opens `GET /` in Debian's Chromium and checks what a
person would see, through the ids of the dashboard's DOM contract:

- every function (`tr[data-function=NAME]`) and both workers with a CPU figure
  (`tr[data-worker=NAME] td.cpu` reading like `12.5%`), `#connection` reading `live`, and a
  request of the page to the event stream (`GET /v1/events`);
- the overview counts the tasks that ended before the page was opened: `#chart-totals` reads
  the server's completed and failed tasks, `#stat-rate` is above zero and `#stat-p50` a time;
- a task invoked over the HTTP API after the page loaded shows up (`tr[data-task=ID]`, its id
  cell showing the id's last characters and the whole id as its title) and reaches COMPLETED,
  without the page reloading (the live update over `GET /v1/events`);
- the invoke form (`#invoke-function`, `#invoke-payload`, `#invoke-submit`) shows the function's
  answer in `#invoke-result`; it offers every function but the HTTP service, which
  `#invoke-note` names;
- a function's panel (`#function-detail`), left open, lists a task of that function made since
  and shows it reach COMPLETED;
- the page left open and the same page loaded afresh show the same `#chart-totals`;
- at a phone's width (390x844) the page does not scroll sideways;
- once a user exists, the page without a token shows `–` for every figure of the overview, and
  `#notice` asks for a token;
- an invoker's page shows the queue levels it may not read as `–`, not 0.

It saves a screenshot at 1280x800 (`target/dashboard.png` by default). Every check polls until a
deadline, so nothing waits a fixed time; a failed one exits 1 naming what the page showed.

The browser is driven over the Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`:
NUL-terminated JSON on file descriptors 3 and 4), so only Python's standard library is needed.

Usage: scripts/browser-test.py [BINARY] [--chromium PATH] [--screenshot FILE]
                               [--skip-without-dashboard]
"""

import argparse
import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

# How long one check may take before it fails (a cold python executor, a slow CI machine).
DEADLINE_S = 30.0
# The functions the page must list: name -> (runtime, code, payload, expected answer).
FUNCTIONS = {
    "echo": ("shell", 'printf "echo:%s" "$(cat)"\n', "hello", "echo:hello"),
    "shout": ("python", "def handle(payload):\n    return payload.upper()\n", "quiet", "QUIET"),
}
# A function that always fails: (name, shell code), run FAILING_RUNS times before the page opens.
FAILING = ("broken", "echo broken >&2\nexit 3\n")
FAILING_RUNS = 2
# Tasks of `echo` submitted in one batch after the failures and before the page opens: more than
# the 50 newest tasks the page lists, so the overview must count ends it never lists.
BURST = 60
# An HTTP-service function, registered but never called: listed, but not in the invoke form.
SERVICE = ("web", "exec", "#!/bin/sh\nexec python3 -m http.server \"$PORT\"\n", 8080)
PHONE_WIDTH, PHONE_HEIGHT = 390, 844
DESKTOP_WIDTH, DESKTOP_HEIGHT = 1280, 800
CPU_FIGURE = re.compile(r"^\d+(\.\d+)?%$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DURATION = re.compile(r"^\d+(\.\d+)? (ms|s)$")
CHART_TOTALS = re.compile(r"^(\d+) completed, (\d+) failed; peak ")
# The overview's figures, which read `–` when the page could not read them.
OVERVIEW = ["#stat-queued", "#stat-running", "#stat-slots", "#stat-rate", "#stat-p50",
            "#stat-p99", "#chart-totals"]


class Failed(Exception):
    """A check the dashboard did not pass, or a step that could not run."""


def http(method, url, body=None, headers=None, timeout=30):
    """(status, body bytes) of one request; raises Failed when the server cannot be reached."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        raise Failed(f"{method} {url}: {err}") from err


def poll(what, check, deadline_s=DEADLINE_S):
    """Calls `check()` until it returns (True, value) or the deadline passes; returns the value.

    `check` returns (done, value); on timeout the last value is part of the failure message."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        done, value = check()
        if done:
            return value
        if time.monotonic() > end:
            raise Failed(f"{what}: not seen within {deadline_s:.0f} s (last seen: {value!r})")
        time.sleep(delay)  # a pause between checks of a condition, not a wait for an outcome
        delay = min(delay * 2, 0.5)


class Processes:
    """The servers, worker and browser this run started; `stop_all` ends every one of them."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kwargs):
        """Starts `cmd` in its own process group and remembers it."""
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        """SIGTERM to each process group, then SIGKILL to any that is still there after 5 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_server(procs, binary, work):
    """Starts `faasd serve` with one local worker slot; returns (API url, worker address)."""
    cmd = [binary, "serve", "--data", os.path.join(work, "data"), "--listen", "127.0.0.1:0",
           "--worker-listen", "127.0.0.1:0", "--local-workers", "1"]
    log = open(os.path.join(work, "serve.log"), "w")
    proc = procs.start(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                       env=dict(os.environ, RUST_LOG="warn"))
    log.close()
    url = worker_addr = None
    for line in proc.stdout:
        if line.startswith("faasd listening on "):
            url = line.split()[-1]
        elif line.startswith("faasd worker port on "):
            worker_addr = line.split()[-1]
        if url and worker_addr:
            break
    if not (url and worker_addr):
        raise Failed(f"faasd serve did not start (exit status {proc.wait()}); see {log.name}")
    # Keep reading its stdout so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return url, worker_addr


def start_worker(procs, binary, work, worker_addr, name):
    """Starts one remote `faasd worker` named `name` against the server's worker port."""
    cmd = [binary, "worker", "--server", worker_addr, "--name", name, "--slots", "1",
           "--cache", os.path.join(work, f"cache-{name}")]
    log = open(os.path.join(work, f"worker-{name}.log"), "w")
    procs.start(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=dict(os.environ, RUST_LOG="warn"))
    log.close()


def api_json(method, url, body=None, expect=(200,), token=None):
    """The decoded JSON answer of one API call; raises Failed on another status."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = json.dumps(body).encode() if body is not None else None
    status, answer = http(method, url, data, headers)
    if status not in expect:
        raise Failed(f"{method} {url}: {status} {answer[:300]!r}")
    return json.loads(answer) if answer else None


def prepare(url):
    """Waits for both workers, registers the functions, runs each a few times and a batch of
    `echo`, registers the HTTP service; returns the workers' names."""
    def two_workers():
        workers = api_json("GET", url + "/v1/workers")
        return len(workers) == 2, [w["name"] for w in workers]
    names = poll("two connected workers in GET /v1/workers", two_workers)
    for name, (runtime, code, payload, answer) in FUNCTIONS.items():
        register(url, name, runtime, code)
        for _ in range(3):
            status, got = http("POST", f"{url}/v1/functions/{name}/invoke", payload.encode())
            if status != 200 or got.decode() != answer:
                raise Failed(f"invoke {name}: {status} {got[:300]!r}, expected {answer!r}")
    name, code = FAILING
    register(url, name, "shell", code)
    for _ in range(FAILING_RUNS):
        status, got = http("POST", f"{url}/v1/functions/{name}/invoke", b"")
        if status == 200:
            raise Failed(f"invoke {name}: 200 {got[:300]!r}, expected a failure")
    completed_before = server_ends(url)[0]
    payloads = json.dumps([f"burst {i}" for i in range(BURST)]).encode()
    status, got = http("POST", f"{url}/v1/functions/echo/batch", payloads,
                       {"Content-Type": "application/json"})
    if status != 202:
        raise Failed(f"batch of {BURST} echo tasks: {status} {got[:300]!r}")
    def burst_done():
        ends = server_ends(url)
        return ends[0] == completed_before + BURST, ends
    poll(f"the {BURST} tasks of the batch completed", burst_done)
    name, runtime, code, port = SERVICE
    register(url, name, runtime, code, http_port=port)
    return names


def register(url, name, runtime, code, **settings):
    """Registers function `name` through the JSON API."""
    api_json("POST", url + "/v1/functions", {
        "name": name, "runtime": runtime, "code": base64.b64encode(code.encode()).decode(),
        **settings,
    }, expect=(200, 201))


def server_ends(url):
    """(completed, failed): how many tasks the server holds in each end state."""
    def count(status):
        listed = api_json("GET", f"{url}/v1/tasks?status={status}&limit=1000")
        if listed.get("next_cursor"):
            raise Failed(f"more than 1000 {status} tasks: this test runs only a few")
        return len(listed["tasks"])
    return count("COMPLETED"), count("FAILED")


def dashboard_served(url):
    """Whether `GET /` answers the dashboard's HTML (with its invoke form)."""
    status, body = http("GET", url + "/")
    return status == 200 and b'id="invoke-form"' in body


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe, with one page attached."""

    def __init__(self, procs, chromium, work):
        cmd_r, self.cmd_w = _high_pipe()
        self.resp_r, resp_w = _high_pipe()

        def fds_3_and_4():  # Chromium reads commands on fd 3 and writes answers on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)
        log = open(os.path.join(work, "chromium.log"), "w")
        try:
            self.proc = procs.start(
                [chromium, "--headless=new", "--no-sandbox", "--remote-debugging-pipe",
                 f"--user-data-dir={os.path.join(work, 'profile')}", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                 "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
                 f"--window-size={DESKTOP_WIDTH},{DESKTOP_HEIGHT}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=fds_3_and_4, close_fds=False)
        except OSError as err:
            raise Failed(f"cannot start {chromium} ({err}): scripts/install-chromium.sh "
                         "installs Debian's chromium") from err
        finally:
            log.close()
        os.close(cmd_r)
        os.close(resp_w)
        self.next_id, self.buffer, self.exceptions = 0, b"", []
        self.loads, self.requests = 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")
        self.page("Network.enable")

    def call(self, method, params=None, session=None, timeout_s=DEADLINE_S):
        """Sends one command and returns its result; events that arrive meanwhile are noted."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.cmd_w, json.dumps(message).encode() + b"\0")
        end = time.monotonic() + timeout_s
        while True:
            reply = self._read(end, method)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise Failed(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note(reply)

    def _note(self, event):
        """Keeps what the checks need from an event: page errors, loads, requested URLs."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.exceptions.append(details.get("exception", {}).get("description")
                                   or details.get("text"))
        elif method == "Page.loadEventFired":
            self.loads += 1
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    def _read(self, end, method):
        """The next message from the browser, waiting at most until `end`."""
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.resp_r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise Failed(f"{method}: Chromium did not answer")
            chunk = os.read(self.resp_r, 1 << 16)
            if not chunk:
                raise Failed(f"{method}: Chromium closed its pipe (exit status {self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def page(self, method, params=None):
        """A command to the attached page."""
        return self.call(method, params, session=self.session)

    def eval(self, expression):
        """The JSON value of a JavaScript expression evaluated in the page."""
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise Failed(f"evaluating {expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url, width, height, mobile=False):
        """Sets the viewport, loads `url` and waits until the document has loaded."""
        self.page("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        self.page("Page.navigate", {"url": url})
        poll(f"{url} loaded", lambda: _is(self.eval("document.readyState"), "complete"))

    def close(self):
        """Asks the browser to quit (the caller's Processes kills it if it does not)."""
        try:
            self.call("Browser.close", timeout_s=5)
        except (Failed, OSError):
            pass


def _high_pipe():
    """A pipe whose two ends are above fd 4, so that dup2 onto 3 and 4 never hits them."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def _is(value, expected):
    """(value == expected, value): a poll check."""
    return value == expected, value


def text_of(selector):
    """A JavaScript expression: the trimmed text of the first element matching `selector`."""
    return f"(document.querySelector({json.dumps(selector)})?.textContent ?? null)?.trim() ?? null"


def check_lists(browser, workers):
    """Both functions, both workers with a CPU figure, `#connection` live, the stream asked for."""
    for name in [*FUNCTIONS, FAILING[0], SERVICE[0]]:
        selector = f'tr[data-function="{name}"]'
        poll(f"function row {selector}",
             lambda: _is(browser.eval(f"!!document.querySelector({json.dumps(selector)})"), True))
    for name in workers:
        selector = f'tr[data-worker="{name}"] td.cpu'

        def cpu(selector=selector):
            text = browser.eval(text_of(selector))
            return bool(text and CPU_FIGURE.match(text)), text
        poll(f"worker CPU figure {selector} like 12.5%", cpu)
    poll("#connection reading live", lambda: _is(browser.eval(text_of("#connection")), "live"))
    streams = [u for u in browser.requests if urllib.parse.urlsplit(u).path == "/v1/events"]
    if not streams:
        asked = sorted({urllib.parse.urlsplit(u).path for u in browser.requests})
        raise Failed(f"the page never requested GET /v1/events (it asked for {asked})")


def chart_totals(browser):
    """(completed, failed) as `#chart-totals` reads them, or its text when it reads otherwise."""
    text = browser.eval(text_of("#chart-totals"))
    match = CHART_TOTALS.match(text or "")
    return (int(match[1]), int(match[2])) if match else text


def check_ends_before_load(browser, url):
    """The overview of a page opened after tasks ended counts them: the chart's totals are the
    server's, tasks/s is above zero (they ended within its 30 s) and p50/p99 are times."""
    ends = server_ends(url)
    if ends[0] == 0 or ends[1] == 0:
        raise Failed(f"the server holds {ends} (completed, failed) tasks; the test ran both")
    poll(f"#chart-totals reading {ends[0]} completed, {ends[1]} failed (the tasks that ended "
         "before the page loaded)", lambda: _is(chart_totals(browser), ends))

    def rate():
        text = browser.eval(text_of("#stat-rate"))
        try:
            return float(text) > 0, text
        except (TypeError, ValueError):
            return False, text
    poll("#stat-rate above 0 for the tasks that ended before the page loaded", rate)
    for selector in ["#stat-p50", "#stat-p99"]:
        def duration(selector=selector):
            text = browser.eval(text_of(selector))
            return bool(text and DURATION.match(text)), text
        poll(f"{selector} showing a run time like 3.2 ms", duration)


def check_fresh_equals_left_open(browser, url):
    """The page left open (live since it loaded) and the page loaded afresh show the same
    chart totals, which are the server's."""
    ends = server_ends(url)
    poll(f"#chart-totals of the page left open reading {ends}",
         lambda: _is(chart_totals(browser), ends))
    browser.open(url + "/", DESKTOP_WIDTH, DESKTOP_HEIGHT)
    poll(f"#chart-totals of the page loaded afresh reading {ends}",
         lambda: _is(chart_totals(browser), ends))


def submit_echo(url, payload):
    """The id of an async call of `echo` with `payload`."""
    status, body = http("POST", f"{url}/v1/functions/echo/invoke?async=true", payload)
    if status != 202:
        raise Failed(f"async invoke: {status} {body[:300]!r}")
    return json.loads(body)["task_id"]


def check_live_task(browser, url):
    """A task invoked after the page loaded appears and completes, with no reload of the page."""
    browser.eval("window.__faasdBrowserTest = 'same page'")
    loads = browser.loads
    task = submit_echo(url, b"live")
    row = f'tr[data-task="{task}"]'
    poll(f"live task row {row}",
         lambda: _is(browser.eval(f"!!document.querySelector({json.dumps(row)})"), True))
    first = "document.querySelector('#tasks tr[data-task]')?.dataset.task ?? null"
    poll(f"task {task} first in #tasks (newest first)", lambda: _is(browser.eval(first), task))
    cell = browser.eval(f"""(() => {{
        const td = document.querySelector({json.dumps(row + " td.id")});
        return td && [td.textContent, td.title];
    }})()""")
    if cell != ["…" + task[-8:], task]:
        raise Failed(f"{row} td.id shows {cell!r}: expected the id's end, the whole id as title")
    poll(f"{row} td.status reading COMPLETED",
         lambda: _is((browser.eval(text_of(row + " td.status")) or "").upper(), "COMPLETED"))
    if browser.eval("window.__faasdBrowserTest") != "same page" or browser.loads != loads:
        raise Failed("the page reloaded to show the new task; it must update live")


def check_function_panel_live(browser, url):
    """A function's panel, left open, lists a task of that function made after it opened, and
    shows it reach COMPLETED."""
    browser.eval("document.querySelector('tr[data-function=echo]').click()")
    poll("the panel of echo open",
         lambda: (("echo version" in (browser.eval(text_of("#function-detail h3")) or "")),
                  browser.eval(text_of("#function-detail h3"))))
    task = submit_echo(url, b"panel")
    row = f'#function-detail tr[data-task="{task}"]'
    poll(f"{row} reading COMPLETED in the open panel",
         lambda: _is((browser.eval(text_of(row + " td.status")) or "").upper(), "COMPLETED"))


def check_invoke_form(browser):
    """The invoke form runs `echo` with a payload typed in and shows its answer and task id."""
    options = ("[...document.querySelectorAll('#invoke-function option')]"
               ".map(o => o.value).filter(v => v).sort()")
    invocable = sorted([*FUNCTIONS, FAILING[0]])
    poll(f"#invoke-function offering {invocable} (not the HTTP service {SERVICE[0]})",
         lambda: _is(browser.eval(options), invocable))
    note = browser.eval(text_of("#invoke-note")) or ""
    if f"/function/{SERVICE[0]}/" not in note:
        raise Failed(f"#invoke-note does not say where {SERVICE[0]} is served: {note!r}")
    browser.eval("""(() => {
        const select = document.querySelector('#invoke-function');
        const payload = document.querySelector('#invoke-payload');
        select.value = 'echo';
        select.dispatchEvent(new Event('change', {bubbles: true}));
        payload.value = 'from the form';
        payload.dispatchEvent(new Event('input', {bubbles: true}));
        document.querySelector('#invoke-submit').click();
    })()""")
    poll("#invoke-result showing the answer of echo",
         lambda: _is(browser.eval(text_of("#invoke-result")), "echo:from the form"))

    def names_task():
        text = browser.eval(text_of("#invoke-status"))
        return bool(text and UUID.search(text)), text
    poll("#invoke-status naming the task id", names_task)
    if browser.eval("document.querySelector('#invoke-function').value") != "echo":
        raise Failed("#invoke-function lost the chosen function")


def check_phone(browser, url):
    """At 390x844 the loaded page (lists filled) is no wider than the screen."""
    browser.open(url + "/", PHONE_WIDTH, PHONE_HEIGHT, mobile=True)
    for name in FUNCTIONS:
        selector = json.dumps(f'tr[data-function="{name}"]')
        poll(f"function row {name} at phone width",
             lambda: _is(browser.eval(f"!!document.querySelector({selector})"), True))
    width = browser.eval("document.scrollingElement.scrollWidth")
    if width > PHONE_WIDTH + 1:
        raise Failed(f"at {PHONE_WIDTH} px wide the page is {width} px wide (scrolls sideways)")


def check_without_token(browser, url):
    """Once a user exists, the page without a token shows every overview figure as unknown
    (`–`, not `0`) and asks for a token."""
    root = api_json("POST", url + "/v1/users", {"name": "root", "role": "admin"}, expect=(201,))
    browser.open(url + "/", DESKTOP_WIDTH, DESKTOP_HEIGHT)
    poll("#notice asking for a token",
         lambda: (("token" in (browser.eval(text_of("#notice")) or "")),
                  browser.eval(text_of("#notice"))))
    # The page's HTML holds `–` until the script first draws the overview; it draws the chart
    # right after, sizing the canvas (640 px wide in the HTML) to its box. So once the canvas
    # has been sized, the figures are what the script wrote.
    figures = "[" + ", ".join(text_of(s) for s in OVERVIEW) + "]"
    drawn = """(() => {
        const c = document.querySelector('#chart');
        return c.clientWidth !== 640 && c.width === Math.round(c.clientWidth * devicePixelRatio);
    })()"""
    poll("the overview drawn by the script", lambda: _is(browser.eval(drawn), True))
    shown = browser.eval(figures)
    if shown != ["–"] * len(OVERVIEW):
        raise Failed(f"without a token the overview reads {shown}, not – for each figure")
    return root["token"]


def check_invoker(browser, url, admin_token):
    """An invoker may not read the queue levels (other callers' tasks): the page shows them as
    unknown (`–`), not as the 0 tasks of its own it knows of."""
    carol = api_json("POST", url + "/v1/users", {"name": "carol", "role": "invoker"},
                     expect=(201,), token=admin_token)
    api_json("PUT", url + "/v1/users/carol/grants/shout", expect=(200, 201, 204),
             token=admin_token)
    browser.eval(f"localStorage.setItem('faasd-token', {json.dumps(carol['token'])})")
    browser.open(url + "/", DESKTOP_WIDTH, DESKTOP_HEIGHT)
    row = "tr[data-function=shout]"
    poll("the granted function listed for the invoker",
         lambda: _is(browser.eval(f"!!document.querySelector({json.dumps(row)})"), True))
    cells = [f"{row} td.queued", f"{row} td.running"]
    levels = "[" + ", ".join(text_of(s) for s in ["#stat-queued", "#stat-running", *cells]) + "]"
    poll("queue levels unknown to an invoker", lambda: _is(browser.eval(levels), ["–"] * 4))


def screenshot(browser, path):
    """Saves the page as it is now, at 1280x800, as a PNG."""
    browser.page("Emulation.setDeviceMetricsOverride", {
        "width": DESKTOP_WIDTH, "height": DESKTOP_HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    data = browser.page("Page.captureScreenshot", {"format": "png"})["data"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))


def run(args, procs, work):
    """Every step; returns the exit status."""
    url, worker_addr = start_server(procs, args.binary, work)
    if not dashboard_served(url):
        if args.skip_without_dashboard:
            print("browser test skipped: no dashboard in this build")
            return 0
        raise Failed('GET / serves no dashboard (no HTML with id="invoke-form")')
    start_worker(procs, args.binary, work, worker_addr, "remote-1")
    workers = prepare(url)
    browser = Browser(procs, args.chromium, work)
    try:
        browser.open(url + "/", DESKTOP_WIDTH, DESKTOP_HEIGHT)
        check_lists(browser, workers)
        check_ends_before_load(browser, url)
        check_live_task(browser, url)
        check_invoke_form(browser)
        check_function_panel_live(browser, url)
        check_fresh_equals_left_open(browser, url)
        screenshot(browser, args.screenshot)
        check_phone(browser, url)
        admin_token = check_without_token(browser, url)
        check_invoker(browser, url, admin_token)
    except Failed:
        if browser.exceptions:
            print("errors thrown in the page:", *browser.exceptions, sep="\n  ", file=sys.stderr)
        raise
    finally:
        browser.close()
    print(f"browser test passed: {len(FUNCTIONS) + 2} functions, workers {', '.join(workers)}, "
          "the ends before the page loaded, a live task, the invoke form, the page left open "
          f"and afresh, phone width, no token, an invoker; screenshot {args.screenshot}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary", nargs="?", default="target/debug/faasd")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--screenshot", default="target/dashboard.png")
    parser.add_argument("--skip-without-dashboard", action="store_true",
                        help="exit 0 with a notice when GET / serves no dashboard")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    procs = Processes()

    def stopped(signum, _frame):  # `timeout` in the test command: still clean up below
        raise Failed(f"stopped by signal {signum} (the test command's time bound)")
    signal.signal(signal.SIGTERM, stopped)
    work = tempfile.mkdtemp(prefix="faasd-browser-")
    status = 1
    try:
        status = run(args, procs, work)
    except Failed as err:
        print(f"browser test FAILED: {err} (logs kept in {work})", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut this short
        procs.stop_all()
        if status == 0:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
