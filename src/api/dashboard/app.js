// The faasd dashboard. It reads the same JSON API and event stream as any client: the initial
// state from GET /healthz, /v1/functions, /v1/workers, /v1/tasks and /v1/usage, then every change
// from GET /v1/events?tasks=summary (Server-Sent Events, read with fetch() and a stream reader
// because EventSource cannot send the Authorization header). The summary form opens with a
// `history` event (the last 5 minutes' ends per second and sampled run times, which the chart,
// tasks/s and p50/p99 start from) and then sends one `tasks` event a second (what ended, sampled
// run times, queue levels, the newest tasks) rather than one event per task change, so that a
// busy server is cheap to watch. While the stream is down it polls the JSON API every few
// seconds (the overview then counts only the ends of the tasks it loads); while it is up it sends
// nothing but what the person asks for.
//
// Every server string reaches the page through textContent (the el() helper), never as HTML.

const TOKEN_KEY = "faasd-token";
const POLL_MS = 5000;
const TICK_MS = 2000;
const RENDER_MS = 300;
const BUCKET_MS = 5000;
const CHART_BUCKETS = 60; // 5 minutes
const RATE_BUCKETS = 6; // tasks/s over the last 30 s
const KEEP_RECENT = 500;
const SHOWN_TASKS = 50;
const LATENCIES = 1000;
const STALE_MS = 15000;
const MAX_TEXT = 65536;
const FINISHED = new Set(["COMPLETED", "FAILED"]);
const UNKNOWN = "–"; // a figure the page could not read (no token, no right to it, not loaded)
const SHORT_ID = 8; // the task id's last characters shown: its random part (the start is time)

const $ = (id) => document.getElementById(id);

/** Everything the page knows, rebuilt by loadAll() and kept current by events. */
const state = {
  functions: new Map(), // name -> function view
  usage: new Map(), // name -> {calls, failures} over 24 h
  workers: new Map(), // id -> worker (normalized)
  tasks: new Map(), // id -> task (normalized)
  recent: [], // ids of the latest tasks, newest first once sorted
  recentSorted: true,
  buckets: new Map(), // Math.floor(finished ms / BUCKET_MS) -> {ok, bad}
  counted: new Set(), // ids whose end is in buckets and latencies
  latencies: [], // run_ms of the latest finished tasks, all functions
  fnLatencies: new Map(), // name -> run_ms of its latest finished tasks
  levels: new Map(), // name -> {QUEUED, RUNNING} from the summaries, for functions the server reports
  role: null, // the caller's role (GET /v1/whoami): only an admin sees every function's levels
  known: { tasks: false, workers: false, ends: false }, // which figures were read from the server
  selectedTask: null,
  selectedFunction: null,
  functionTasks: null, // id -> task shown in the open function panel
  functionTable: null, // that panel's table body
};

/** Creates an element; strings among `children` become text nodes, never markup. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---- API access ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

/** fetch() with the token; throws ApiError for an error answer. */
async function request(path, options = {}) {
  const res = await fetch(path, { ...options, headers: headers(options.headers) });
  if (res.ok) return res;
  let body = {};
  try {
    body = await res.json();
  } catch {
    body = {};
  }
  throw new ApiError(res.status, body.code || "", body.error || `HTTP ${res.status}`, body);
}

async function getJSON(path) {
  return (await request(path)).json();
}

const enc = encodeURIComponent;

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function explain(err) {
  if (err.status === 401) return `${err.message} (paste a token in the box above)`;
  return err.message || String(err);
}

// ---- normalizing what the API and the events send ------------------------------------------

const ms = (text) => (text ? Date.parse(text) : null);

/** A task from GET /v1/tasks (RFC 3339 times, queued_ms = wait) or a `task` event. */
function normalizeTask(t, before) {
  const task = {
    id: t.id,
    function: t.function,
    version: t.version,
    status: t.status,
    reason: t.reason ?? null,
    message: t.message ?? null,
    // Events carry whole milliseconds and `run_us`; the task list a fraction already.
    run_ms: t.run_us != null ? t.run_us / 1000 : (t.run_ms ?? null),
    created: ms(t.created_at),
    started: t.started_ms ?? ms(t.started_at),
    finished: t.finished_ms ?? ms(t.finished_at),
  };
  // An event's queued_ms is when the task was queued; accept a wait too, as the list has it.
  if (task.created == null && t.queued_ms != null) {
    task.created = t.queued_ms > 1e12 ? t.queued_ms : task.started - t.queued_ms;
  }
  if (before) task.created = before.created ?? task.created;
  return task;
}

function normalizeWorker(w, before = {}) {
  const merged = { ...before, ...w };
  merged.mode = w.mode ?? w.dispatch ?? before.mode;
  if (w.last_heartbeat_ms == null && w.last_heartbeat) {
    merged.last_heartbeat_ms = ms(w.last_heartbeat);
  }
  return merged;
}

// ---- the task map, counts, the chart's buckets and latencies --------------------------------

/** Puts a task in the map; counts its end once unless `counted` (a summary counts ends itself).
 * Returns the status it had before. */
function putTask(raw, fromEvent, counted = false) {
  const before = state.tasks.get(raw.id);
  const task = normalizeTask(raw, before);
  state.tasks.set(task.id, task);
  if (task.function === state.selectedFunction && state.functionTasks) {
    state.functionTasks.set(task.id, task);
  }
  if (!before) {
    state.recent.push(task.id);
    state.recentSorted = false;
  }
  if (counted) state.counted.add(task.id);
  else if (FINISHED.has(task.status) && !state.counted.has(task.id)) countEnd(task, fromEvent);
  return before ? before.status : null;
}

function countEnd(task, fromEvent) {
  state.counted.add(task.id);
  if (state.counted.size > 20000) {
    state.counted.delete(state.counted.values().next().value);
  }
  const failed = task.status === "FAILED" ? 1 : 0;
  countEnds(task.function, task.finished ?? Date.now(), 1 - failed, failed, fromEvent);
  if (task.run_ms != null) countRunTimes(task.function, [task.run_ms]);
}

/** Adds `ok` and `bad` ends of `name` at time `at` to the chart, and to the usage when live. */
function countEnds(name, at, ok, bad, live) {
  const key = Math.floor(at / BUCKET_MS);
  const bucket = state.buckets.get(key) || { ok: 0, bad: 0 };
  bucket.ok += ok;
  bucket.bad += bad;
  state.buckets.set(key, bucket);
  if (live) {
    const usage = state.usage.get(name) || { calls: 0, failures: 0 };
    usage.calls += ok + bad;
    usage.failures += bad;
    state.usage.set(name, usage);
  }
}

function countRunTimes(name, runMs) {
  if (!state.fnLatencies.has(name)) state.fnLatencies.set(name, []);
  for (const value of runMs) {
    pushBounded(state.latencies, value, LATENCIES);
    pushBounded(state.fnLatencies.get(name), value, 200);
  }
}

/** A `tasks` summary: a second's ends and run times, queue levels, the newest tasks. */
function onSummary(data) {
  const now = Date.now();
  const levels = new Map();
  for (const f of data.functions || []) {
    if (f.completed || f.failed) countEnds(f.name, now, f.completed, f.failed, true);
    if (f.run_ms && f.run_ms.length) countRunTimes(f.name, f.run_ms);
    if (f.queued != null) levels.set(f.name, { QUEUED: f.queued, RUNNING: f.running ?? 0 });
    const known = state.functions.get(f.name);
    if (known && f.warm_executors != null) known.warm_executors = f.warm_executors;
  }
  state.levels = levels;
  for (const t of data.latest || []) {
    const before = putTask(t, true, true);
    if (t.id === state.selectedTask && FINISHED.has(t.status) && !FINISHED.has(before)) {
      showTask(t.id);
    }
  }
}

/** A `history`: the last 5 minutes' ends per second, which replace what the page counted. The
 * server's clock places them; `now_ms` lets a page whose clock differs place them on its own. */
function onHistory(data) {
  const skew = data.now_ms == null ? 0 : Date.now() - data.now_ms;
  state.buckets = new Map();
  state.latencies = [];
  state.fnLatencies = new Map();
  for (const second of data.seconds || []) {
    for (const f of second.functions || []) {
      countEnds(f.name, second.at_ms + skew, f.completed, f.failed, false);
      if (f.run_ms && f.run_ms.length) countRunTimes(f.name, f.run_ms);
    }
  }
  state.known.ends = true;
}

function pushBounded(list, value, max) {
  list.push(value);
  if (list.length > max) list.splice(0, list.length - max);
}

/** Sorts the latest tasks newest first (UUIDv7 ids sort by time) and forgets old ended ones. */
function trimRecent() {
  if (state.recentSorted) return;
  state.recent.sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
  // Forgets the older ones whatever their status: under load a summary carries only the newest
  // tasks, so an old one may never be heard of again (the queue levels count it).
  const dropped = state.recent.splice(KEEP_RECENT);
  for (const id of dropped) {
    if (id !== state.selectedTask) state.tasks.delete(id);
  }
  state.recentSorted = true;
}

/** Queued and running tasks by function: the server's levels where it sent them, otherwise,
 * for an admin, the tasks this page knows of. Anyone else sees only the levels of their own
 * functions (the summaries hold those), so every other function's are unknown (null), and the
 * totals with them: counting the tasks this caller may read would say 0 of a busy queue. */
function activeCounts() {
  const byFunction = new Map(state.levels);
  const admin = state.role === "admin";
  if (!admin) {
    for (const name of state.functions.keys()) {
      if (!state.levels.has(name)) byFunction.set(name, { QUEUED: null, RUNNING: null });
    }
  }
  for (const task of state.tasks.values()) {
    if (task.status !== "QUEUED" && task.status !== "RUNNING") continue;
    if (state.levels.has(task.function) || !admin) continue;
    const counts = byFunction.get(task.function) || { QUEUED: 0, RUNNING: 0 };
    counts[task.status] += 1;
    byFunction.set(task.function, counts);
  }
  const total = { QUEUED: 0, RUNNING: 0 };
  for (const counts of byFunction.values()) {
    total.QUEUED = counts.QUEUED == null || total.QUEUED == null ? null : total.QUEUED + counts.QUEUED;
    total.RUNNING = counts.RUNNING == null || total.RUNNING == null ? null : total.RUNNING + counts.RUNNING;
  }
  return { total, byFunction };
}

function percentile(values, p) {
  if (!values || values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// ---- formatting -----------------------------------------------------------------------------

function fmtMs(value) {
  if (value == null) return "–";
  if (value < 1) return `${value.toFixed(2)} ms`;
  if (value < 1000) return `${value.toFixed(value < 10 ? 1 : 0)} ms`;
  return `${(value / 1000).toFixed(2)} s`;
}

function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtAgo(at) {
  if (at == null) return "–";
  const s = Math.max(0, Math.round((Date.now() - at) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

function fmtTime(at) {
  return at == null ? "–" : new Date(at).toLocaleTimeString();
}

/** The answer's text, or `N bytes (binary)` when it is not UTF-8 text. */
function describeBytes(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.includes(0)) return `${bytes.length} bytes (binary)`;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT)}\n… (${bytes.length} bytes)` : text;
  } catch {
    return `${bytes.length} bytes (binary)`;
  }
}

// ---- rendering ------------------------------------------------------------------------------

let renderTimer = null;

/** Renders at most every RENDER_MS, however many events arrive. */
function scheduleRender() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = null;
    render();
  }, RENDER_MS);
}

function render() {
  trimRecent();
  const counts = activeCounts();
  renderOverview(counts.total);
  renderFunctions(counts.byFunction);
  renderWorkers();
  renderTasks();
  renderFunctionTasks();
  renderChart();
}

/** What moves with time alone (rates, the chart, heartbeat ages, staleness): no traffic. */
function tick() {
  renderOverview(activeCounts().total);
  renderWorkers();
  renderChart();
}

function renderOverview(total) {
  const { known } = state;
  $("stat-queued").textContent = known.tasks ? (total.QUEUED ?? UNKNOWN) : UNKNOWN;
  $("stat-running").textContent = known.tasks ? (total.RUNNING ?? UNKNOWN) : UNKNOWN;
  let used = 0;
  let slots = 0;
  for (const w of state.workers.values()) {
    used += w.running || 0;
    slots += w.slots || 0;
  }
  $("stat-slots").textContent = known.workers ? `${used} / ${slots}` : UNKNOWN;
  const now = Math.floor(Date.now() / BUCKET_MS);
  let ended = 0;
  for (let k = now - RATE_BUCKETS; k < now; k += 1) {
    const b = state.buckets.get(k);
    if (b) ended += b.ok + b.bad;
  }
  const rate = ended / ((RATE_BUCKETS * BUCKET_MS) / 1000);
  $("stat-rate").textContent = known.ends ? rate.toFixed(1) : UNKNOWN;
  $("stat-p50").textContent = fmtMs(percentile(state.latencies, 50));
  $("stat-p99").textContent = fmtMs(percentile(state.latencies, 99));
}

/** Sets a table's body to `rows`, keeping every existing row that would not change (so that a
 * row being clicked is not swapped out from under the pointer by an unrelated event). */
function fillTable(id, rows) {
  fillBody($(id).tBodies[0], rows);
}

function fillBody(body, rows) {
  const old = [...body.rows];
  const same = (a, b) => a.className === b.className && rowText(a) === rowText(b);
  if (old.length === rows.length && rows.every((row, i) => same(row, old[i]))) return;
  const kept = new Map(old.map((row) => [JSON.stringify(row.dataset), row]));
  body.replaceChildren(
    ...rows.map((row) => {
      const before = kept.get(JSON.stringify(row.dataset));
      return before && same(row, before) ? before : row;
    }),
  );
}

function rowText(row) {
  return [...row.cells].map((cell) => cell.textContent).join("\u0000");
}

function renderFunctions(byFunction) {
  const names = [...state.functions.keys()].sort();
  fillTable(
    "functions",
    names.map((name) => {
      const f = state.functions.get(name);
      const counts = byFunction.get(name) || { QUEUED: 0, RUNNING: 0 };
      const usage = state.usage.get(name) || { calls: 0, failures: 0 };
      const row = el(
        "tr",
        { dataset: { function: name }, onclick: () => showFunction(name) },
        el("td", {}, f.display_name ? `${name} (${f.display_name})` : name),
        el("td", {}, f.version),
        el("td", {}, isService(f) ? `${f.runtime} · HTTP :${f.http_port}` : f.runtime),
        el("td", { class: "queued" }, counts.QUEUED ?? "–"),
        el("td", { class: "running" }, counts.RUNNING ?? "–"),
        el("td", { class: "warm" }, f.warm_executors ?? "–"),
        el("td", { class: "calls" }, usage.calls),
        el("td", { class: "failures" }, usage.failures),
        el("td", { class: "p50" }, fmtMs(percentile(state.fnLatencies.get(name), 50))),
      );
      if (name === state.selectedFunction) row.classList.add("selected");
      return row;
    }),
  );
  // An HTTP-service function takes no tasks (its invoke answers 400): the form leaves it out.
  const services = names.filter((name) => isService(state.functions.get(name)));
  fillSelect($("invoke-function"), names.filter((name) => !services.includes(name)), null);
  const note = $("invoke-note");
  const noteText = services.length
    ? `Not listed (HTTP services, which take requests rather than tasks): ${services
        .map((name) => `${name} at /function/${name}/`)
        .join(", ")}.`
    : "";
  if (note.textContent !== noteText) note.textContent = noteText;
  note.hidden = !noteText;
  fillSelect($("task-filter-function"), names, "all");
}

/** Whether `f` is an HTTP-service function (registered with an HTTP port). */
function isService(f) {
  return f != null && f.http_port != null;
}

/** Sets a select's options to `names` (after an `all` option when given), keeping its choice. */
function fillSelect(select, names, all) {
  const wanted = (all ? [""] : []).concat(names);
  const have = [...select.options].map((o) => o.value);
  if (have.length === wanted.length && have.every((v, i) => v === wanted[i])) return;
  const chosen = select.value;
  select.replaceChildren(
    ...(all ? [el("option", { value: "" }, all)] : []),
    ...names.map((n) => el("option", { value: n }, n)),
  );
  if (wanted.includes(chosen)) select.value = chosen;
}

function workerState(w) {
  if (w.last_heartbeat_ms != null && Date.now() - w.last_heartbeat_ms > STALE_MS) return "stale";
  return w.state || "ready";
}

function renderWorkers() {
  const workers = [...state.workers.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  fillTable(
    "workers",
    workers.map((w) => {
      const st = workerState(w);
      const cpu = w.cpu_percent == null ? "–" : `${Number(w.cpu_percent).toFixed(1)}%`;
      const mem =
        w.memory_total_bytes == null
          ? "–"
          : `${fmtBytes(w.memory_used_bytes)} / ${fmtBytes(w.memory_total_bytes)}`;
      const load = w.load1 == null ? "–" : Number(w.load1).toFixed(2);
      return el(
        "tr",
        { dataset: { worker: w.name }, class: st === "stale" ? "stale" : "" },
        el("td", {}, w.name),
        el("td", {}, w.address ?? "–"),
        el("td", {}, w.mode ?? "–"),
        el("td", { class: "slots" }, `${w.running ?? 0}/${w.slots ?? 0}`),
        el("td", { class: "cpu" }, cpu),
        el("td", { class: "mem" }, mem),
        el("td", { class: "load" }, load),
        el("td", { class: "heartbeat" }, fmtAgo(w.last_heartbeat_ms)),
        el("td", { class: `state ${st}` }, st),
      );
    }),
  );
}

function taskRow(task, onclick) {
  const wait = task.started != null && task.created != null ? task.started - task.created : null;
  const row = el(
    "tr",
    { dataset: { task: task.id }, onclick },
    el("td", { class: "id", title: task.id }, shortId(task.id)),
    el("td", {}, task.function),
    el("td", { class: `status ${task.status}` }, task.status),
    el("td", {}, fmtTime(task.created)),
    el("td", {}, fmtMs(wait)),
    el("td", {}, fmtMs(task.run_ms)),
  );
  if (task.id === state.selectedTask) row.classList.add("selected");
  return row;
}

/** The end of a task id: UUIDv7s made in the same millisecond share their first 13 characters
 * (the time), and differ in their random last ones. */
function shortId(id) {
  return id.length > SHORT_ID ? `…${id.slice(-SHORT_ID)}` : id;
}

function renderTasks() {
  const fn = $("task-filter-function").value;
  const status = $("task-filter-status").value;
  const rows = [];
  for (const id of state.recent) {
    const task = state.tasks.get(id);
    if (!task || (fn && task.function !== fn) || (status && task.status !== status)) continue;
    rows.push(taskRow(task, () => showTask(id)));
    if (rows.length >= SHOWN_TASKS) break;
  }
  fillTable("tasks", rows);
}

function renderChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const now = Math.floor(Date.now() / BUCKET_MS);
  const series = { ok: [], bad: [] };
  for (let k = now - CHART_BUCKETS; k < now; k += 1) {
    const b = state.buckets.get(k) || { ok: 0, bad: 0 };
    series.ok.push(b.ok / (BUCKET_MS / 1000));
    series.bad.push(b.bad / (BUCKET_MS / 1000));
  }
  for (const key of state.buckets.keys()) if (key < now - CHART_BUCKETS) state.buckets.delete(key);
  renderChartTotals(now);
  const top = Math.max(1, ...series.ok, ...series.bad);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const pad = { left: 36, bottom: 14, top: 6 };
  ctx.strokeStyle = color("--line");
  ctx.fillStyle = color("--muted");
  ctx.font = "11px system-ui, sans-serif";
  ctx.beginPath();
  ctx.moveTo(pad.left, pad.top);
  ctx.lineTo(pad.left, height - pad.bottom);
  ctx.lineTo(width, height - pad.bottom);
  ctx.stroke();
  ctx.fillText(top.toFixed(top < 10 ? 1 : 0), 2, pad.top + 8);
  ctx.fillText("0", 2, height - pad.bottom);
  ctx.fillText("-5m", pad.left, height - 2);
  ctx.fillText("now", width - 24, height - 2);
  const plot = (values, stroke) => {
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = pad.left + (i / (values.length - 1)) * (width - pad.left - 2);
      const y = height - pad.bottom - (v / top) * (height - pad.bottom - pad.top);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  if (!state.known.ends) return;
  plot(series.ok, color("--ok"));
  plot(series.bad, color("--bad"));
}

/** The chart's figures in words, under it: the ends of its 5 minutes (the current bucket too)
 * and its peak. */
function renderChartTotals(now) {
  let ok = 0;
  let bad = 0;
  let peak = 0;
  for (let k = now - CHART_BUCKETS; k <= now; k += 1) {
    const b = state.buckets.get(k);
    if (!b) continue;
    ok += b.ok;
    bad += b.bad;
    if (k < now) peak = Math.max(peak, (b.ok + b.bad) / (BUCKET_MS / 1000));
  }
  const text = state.known.ends
    ? `${ok} completed, ${bad} failed; peak ${peak.toFixed(peak < 10 ? 1 : 0)}/s`
    : UNKNOWN;
  const totals = $("chart-totals");
  if (totals.textContent !== text) totals.textContent = text;
}

// ---- details: a function's settings and tasks, a task's timings, result and logs ------------

function closeButton(onclick) {
  return el("button", { type: "button", class: "close", onclick }, "close");
}

function definitionList(pairs) {
  return el(
    "dl",
    {},
    pairs.flatMap(([key, value]) => [
      el("dt", {}, key),
      el("dd", {}, value == null ? "–" : typeof value === "object" ? JSON.stringify(value) : value),
    ]),
  );
}

async function showFunction(name) {
  state.selectedFunction = name;
  const box = $("function-detail");
  box.hidden = false;
  box.replaceChildren(el("p", {}, `loading ${name}…`));
  try {
    const [f, list] = await Promise.all([
      getJSON(`/v1/functions/${enc(name)}`),
      getJSON(`/v1/tasks?function=${enc(name)}&limit=20`),
    ]);
    // Kept up to date by the task events while the panel is open (putTask).
    state.functionTasks = new Map(list.tasks.map((t) => [t.id, normalizeTask(t)]));
    state.functionTable = el("tbody", {});
    box.replaceChildren(
      el("h3", {}, `${f.name} version ${f.version}`),
      definitionList(Object.entries(f)),
      el("h3", {}, "recent tasks"),
      el("div", { class: "scroll" }, el("table", {}, state.functionTable)),
      closeButton(() => {
        state.selectedFunction = null;
        state.functionTasks = null;
        box.hidden = true;
        scheduleRender();
      }),
    );
    renderFunctionTasks();
  } catch (err) {
    box.replaceChildren(el("p", {}, explain(err)), closeButton(() => (box.hidden = true)));
  }
  scheduleRender();
}

/** The open function panel's recent tasks: the 20 newest it loaded or heard of since. */
function renderFunctionTasks() {
  if (!state.functionTasks || !state.functionTable) return;
  const newest = [...state.functionTasks.values()]
    .sort((a, b) => (b.created ?? 0) - (a.created ?? 0))
    .slice(0, 20);
  fillBody(state.functionTable, newest.map((t) => taskRow(t, () => showTask(t.id))));
}

async function showTask(id) {
  state.selectedTask = id;
  const box = $("task-detail");
  box.hidden = false;
  box.replaceChildren(el("p", {}, `loading task ${id}…`));
  try {
    const t = await getJSON(`/v1/tasks/${enc(id)}`);
    const parts = [
      el("h3", {}, `task ${t.id}`),
      definitionList(
        [
          ["function", `${t.function} version ${t.version}`],
          ["status", t.status],
          ["attempts", t.attempts],
          ["created", t.created_at],
          ["started", t.started_at],
          ["finished", t.finished_at],
          ["queue wait", fmtMs(t.queued_ms)],
          ["run", fmtMs(t.run_ms)],
          ["cold start", t.cold_start == null ? null : `${t.cold_start} (init ${fmtMs(t.init_ms)})`],
          ["CPU", fmtMs(t.cpu_ms)],
          ["peak memory", t.peak_memory_bytes == null ? null : fmtBytes(t.peak_memory_bytes)],
          ["exit code", t.exit_code],
          ["reason", t.reason],
          ["message", t.message],
        ].filter(([, v]) => v != null),
      ),
    ];
    if (FINISHED.has(t.status)) parts.push(...(await taskOutputs(id)));
    else parts.push(el("p", {}, "not finished yet: this updates when it ends"));
    parts.push(closeButton(() => closeTask()));
    if (state.selectedTask === id) box.replaceChildren(...parts);
  } catch (err) {
    box.replaceChildren(el("p", {}, explain(err)), closeButton(() => closeTask()));
  }
  scheduleRender();
}

function closeTask() {
  state.selectedTask = null;
  $("task-detail").hidden = true;
  scheduleRender();
}

/** The result and logs of a finished task, as headed <pre> blocks. */
async function taskOutputs(id) {
  const read = async (path, describe) => {
    try {
      const res = await request(path);
      return describe(await res.arrayBuffer());
    } catch (err) {
      return explain(err);
    }
  };
  const [result, logs] = await Promise.all([
    read(`/v1/tasks/${enc(id)}/result`, describeBytes),
    read(`/v1/tasks/${enc(id)}/logs`, describeBytes),
  ]);
  return [
    el("h3", {}, "result"),
    el("pre", { class: "result" }, result),
    el("h3", {}, "logs"),
    el("pre", { class: "logs" }, logs || "(none)"),
  ];
}

// ---- the invoke form ------------------------------------------------------------------------

async function invoke(event) {
  event.preventDefault();
  const name = $("invoke-function").value;
  if (!name) return;
  const button = $("invoke-submit");
  const status = $("invoke-status");
  const out = $("invoke-result");
  button.disabled = true;
  status.textContent = `calling ${name}…`;
  out.textContent = "";
  try {
    const res = await request(`/v1/functions/${enc(name)}/invoke`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: $("invoke-payload").value,
    });
    const id = res.headers.get("x-faasd-task-id") || "?";
    const body = await res.arrayBuffer();
    status.textContent = `task ${id} · COMPLETED · ${body.byteLength} bytes`;
    out.textContent = describeBytes(body);
  } catch (err) {
    const id = err.body && err.body.task_id;
    status.textContent = id ? `task ${id} · FAILED (${err.code})` : `error ${err.status ?? ""} ${err.code ?? ""}`;
    out.textContent = explain(err);
  } finally {
    button.disabled = false;
  }
}

// ---- loading the state, the event stream, polling -------------------------------------------

/** Reads the whole state from the JSON API and replaces what the page holds. */
async function loadAll() {
  const wanted = {
    functions: getJSON("/v1/functions"),
    workers: getJSON("/v1/workers"),
    latest: getJSON(`/v1/tasks?limit=${SHOWN_TASKS}`),
    queued: getJSON("/v1/tasks?status=QUEUED&limit=1000"),
    running: getJSON("/v1/tasks?status=RUNNING&limit=1000"),
    usage: getJSON("/v1/usage?by=function&since=24h"),
    health: getJSON("/healthz"),
    whoami: getJSON("/v1/whoami"),
  };
  const keys = Object.keys(wanted);
  const settled = await Promise.allSettled(Object.values(wanted));
  const got = Object.fromEntries(keys.map((k, i) => [k, settled[i]]));
  const errors = settled.filter((s) => s.status === "rejected").map((s) => s.reason);
  const value = (k) => (got[k].status === "fulfilled" ? got[k].value : null);
  if (errors.some((e) => e.status === 401)) forget();
  if (value("functions")) {
    state.functions = new Map(value("functions").map((f) => [f.name, f]));
  }
  if (value("whoami")) state.role = value("whoami").role;
  if (value("workers")) {
    state.workers = new Map(value("workers").map((w) => [w.id, normalizeWorker(w)]));
    state.known.workers = true;
  }
  if (value("usage")) {
    state.usage = new Map(value("usage").rows.map((r) => [r.function, r]));
  }
  if (value("latest") && value("queued") && value("running")) replaceTasks(value);
  const workersHidden = got.workers.status === "rejected" && got.workers.reason.status === 403;
  const shown = errors.filter((e) => !(workersHidden && e === got.workers.reason));
  notice(shown.length ? explain(shown[0]) : workersHidden ? "your role may not list the workers" : "");
  scheduleRender();
}

/** Forgets every figure read with a token that no longer works (a 401): they show as unknown. */
function forget() {
  Object.assign(state, {
    functions: new Map(),
    usage: new Map(),
    workers: new Map(),
    tasks: new Map(),
    recent: [],
    buckets: new Map(),
    latencies: [],
    fnLatencies: new Map(),
    levels: new Map(),
    role: null,
    known: { tasks: false, workers: false, ends: false },
  });
}

/** Replaces the tasks with the loaded lists. While the stream is live their ends are already in
 * its history and summaries; otherwise the overview counts the ends of the tasks loaded. */
function replaceTasks(value) {
  const selected = state.selectedTask && state.tasks.get(state.selectedTask);
  state.tasks = new Map();
  state.recent = [];
  for (const list of ["running", "queued", "latest"]) {
    for (const t of value(list).tasks) putTask(t, false, stream.live);
  }
  if (selected && !state.tasks.has(selected.id)) state.tasks.set(selected.id, selected);
  state.known.tasks = true;
  if (!stream.live) state.known.ends = true;
}

function onEvent(type, data) {
  if (type === "task") {
    const before = putTask(data, true);
    if (data.id === state.selectedTask && FINISHED.has(data.status) && !FINISHED.has(before)) {
      showTask(data.id);
    }
  } else if (type === "tasks") {
    onSummary(data);
  } else if (type === "history") {
    onHistory(data);
  } else if (type === "worker") {
    if (data.kind === "left") state.workers.delete(data.id);
    else state.workers.set(data.id, normalizeWorker(data, state.workers.get(data.id)));
  } else if (type === "function") {
    if (data.kind === "removed") state.functions.delete(data.name);
    else refreshFunctions();
  } else if (type === "dropped") {
    notice(`the server dropped this page's event stream (${data.message}); reconnecting`);
  }
  scheduleRender();
}

async function refreshFunctions() {
  try {
    state.functions = new Map((await getJSON("/v1/functions")).map((f) => [f.name, f]));
    scheduleRender();
  } catch (err) {
    notice(explain(err));
  }
}

/** Hands each complete `event:`/`data:` block of `text` to onEvent; returns the unfinished rest. */
function parseEvents(text) {
  const blocks = text.replace(/\r\n/g, "\n").split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) continue;
    try {
      onEvent(type, JSON.parse(data.join("\n")));
    } catch (err) {
      console.warn("faasd: unreadable event", type, err);
    }
  }
  return rest;
}

const stream = {
  controller: null,
  retryMs: 1000,
  timer: null,
  poller: null,
  everLive: false,
  live: false, // the stream is open: ends are counted from its history and summaries
};

function setConnection(text) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = `badge ${text}`;
}

function startPolling() {
  if (!stream.poller) stream.poller = setInterval(loadAll, POLL_MS);
}

function stopPolling() {
  clearInterval(stream.poller);
  stream.poller = null;
}

/** Opens the event stream; on its end, polls and tries again after a growing pause. */
async function connect() {
  clearTimeout(stream.timer);
  const controller = new AbortController();
  stream.controller = controller;
  try {
    const res = await fetch("/v1/events?tasks=summary", { headers: headers(), signal: controller.signal, cache: "no-store" });
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    setConnection("live");
    stream.everLive = true;
    stream.live = true;
    stream.retryMs = 1000;
    stopPolling();
    loadAll();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + value);
    }
  } catch (err) {
    if (controller.signal.aborted) return;
  }
  if (stream.controller !== controller) return;
  stream.live = false;
  setConnection(stream.everLive ? "reconnecting" : "offline");
  state.levels = new Map(); // the levels come with the stream; the polled task lists count now
  if (!stream.poller) {
    loadAll();
    startPolling();
  }
  stream.timer = setTimeout(connect, stream.retryMs);
  stream.retryMs = Math.min(stream.retryMs * 2, 30000);
}

function reconnect() {
  if (stream.controller) stream.controller.abort();
  stream.live = false;
  stream.retryMs = 1000;
  stopPolling();
  connect();
}

function start() {
  const box = $("token");
  box.value = token();
  box.addEventListener("change", () => {
    localStorage.setItem(TOKEN_KEY, box.value.trim());
    reconnect();
  });
  $("invoke-form").addEventListener("submit", invoke);
  for (const id of ["task-filter-function", "task-filter-status"]) {
    $(id).addEventListener("change", filterChanged);
  }
  setInterval(tick, TICK_MS);
  window.addEventListener("resize", scheduleRender);
  connect();
}

/** A new filter also asks the server for the latest tasks that match it. */
async function filterChanged() {
  scheduleRender();
  const fn = $("task-filter-function").value;
  const status = $("task-filter-status").value;
  if (!fn && !status) return;
  try {
    const list = await getJSON(`/v1/tasks?function=${enc(fn)}&status=${enc(status)}&limit=${SHOWN_TASKS}`);
    for (const t of list.tasks) putTask(t, false, stream.live);
    scheduleRender();
  } catch (err) {
    notice(explain(err));
  }
}

start();
