//! `faasd invoke NAME --batch FILE|-`: one task per input line, submitted in chunks through
//! `POST /v1/functions/{name}/batch` and collected with `POST /v1/tasks/wait`.
//!
//! Two loops run side by side. The submitter posts chunks of at most [`CHUNK_LINES`] lines
//! (and at most the server's body limit), but only while fewer than [`WINDOW`] tasks are
//! submitted and not yet written: memory stays bounded however long the input is. The
//! collector long-polls for the tasks in flight, and writes each outcome as soon as every
//! earlier line's is written, so the output comes in input order.

mod input;
mod output;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::exit;
use crate::client::{Client, segment};
use input::{Chunk, Chunks, LineFormat};
use output::{Outcome, Output};

/// The most lines one batch request carries.
const CHUNK_LINES: usize = 500;
/// The most tasks submitted and not yet written (below the wait route's 10,000 ids).
const WINDOW: usize = 1_000;
// A chunk must fit in the window, or its permits would never come.
const _: () = assert!(CHUNK_LINES <= WINDOW);
/// How long one wait request may be held.
const WAIT: &str = "10s";
/// The body limit assumed of a server whose `/healthz` does not give one (the serve default).
const DEFAULT_LIMIT_BYTES: usize = 6 << 20;
/// How many times a chunk refused for a full queue is offered again, a second or so apart.
const QUEUE_FULL_TRIES: u32 = 120;

/// What `faasd invoke --batch` was asked to do.
#[derive(Debug)]
pub struct Batch {
    /// The function's name.
    pub name: String,
    /// The kept version to run (`NAME@N`), else the live one.
    pub version: Option<u32>,
    /// The idempotency key of the whole batch: each chunk is sent with `KEY:LINE` (its first
    /// line's number), so the same command run again submits nothing twice.
    pub idempotency_key: Option<String>,
    /// The input file, or `-` for standard input.
    pub source: String,
    /// Each line is base64.
    pub base64: bool,
    /// One JSON object per task.
    pub json: bool,
    /// Write one file per task here instead of stdout.
    pub output: Option<PathBuf>,
}

/// Counts shared by the loops and the interrupt report.
#[derive(Default)]
struct Counts {
    submitted: AtomicUsize,
    /// Lines of a request sent but not yet answered.
    sending: AtomicUsize,
    written: AtomicUsize,
    failed: AtomicUsize,
}

/// Runs the batch; exits 1 when any task failed, 130 on Ctrl-C.
pub async fn run(client: Client, batch: Batch) -> anyhow::Result<u8> {
    let started = Instant::now();
    let format = LineFormat {
        base64: batch.base64,
        limit_bytes: limit_bytes(&client).await?,
    };
    let source = batch.source.clone();
    let (file, total) = tokio::task::spawn_blocking(move || {
        let mut file = input::open(&source)?;
        let total = input::scan(&mut file, format)?;
        anyhow::Ok((file, total))
    })
    .await
    .context("the input reader stopped")??;
    if total == 0 {
        return Err(exit::coded(
            exit::USAGE,
            "the batch is empty: give at least one line",
        ));
    }
    let output = Output::new(batch.json, batch.output.clone(), total)?;
    let progress = progress_bar(total);
    let counts = Arc::new(Counts::default());
    let lines = chunk_lines(&client, &batch.name).await;
    let chunks = read_chunks(Chunks::new(file, format, lines));
    let target = Target::of(&batch);
    let outcome = tokio::select! {
        done = pipeline(&client, &target, chunks, output, format.limit_bytes, &progress, &counts) => done,
        _ = tokio::signal::ctrl_c() => {
            progress.finish_and_clear();
            return Err(interrupted(&batch.name, total, &counts, started.elapsed()));
        }
    };
    progress.finish_and_clear();
    if let Err(err) = outcome {
        let submitted = counts.submitted.load(Ordering::Relaxed);
        if submitted == 0 {
            return Err(err);
        }
        // Say what was already acknowledged: those tasks run, and running the batch again
        // would run them twice.
        // An error answer means its request was not taken: no lines of it may have been.
        let answered = err.chain().any(|e| {
            matches!(
                e.downcast_ref::<crate::client::Error>(),
                Some(crate::client::Error::Answered { .. })
            )
        });
        if answered {
            counts.sending.store(0, Ordering::Relaxed);
        }
        let report = stopped_report(&batch.name, total, &counts, started.elapsed(), false);
        return Err(err.context(report));
    }
    if !progress.is_hidden() {
        eprintln!("faasd: {}", summary(total, &counts, started.elapsed()));
    }
    match counts.failed.load(Ordering::Relaxed) {
        0 => Ok(exit::OK),
        failed => Err(exit::coded(
            exit::FAILURE,
            format!("{failed} of {total} tasks failed"),
        )),
    }
}

/// The line a batch shown with a progress bar ends with, in place of the bar.
fn summary(total: usize, counts: &Counts, elapsed: Duration) -> String {
    let failed = counts.failed.load(Ordering::Relaxed);
    let rate = total as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "{total} tasks in {:.1}s ({rate:.0}/s): {} completed, {failed} failed",
        elapsed.as_secs_f64(),
        total - failed
    )
}

/// The largest request body the server takes, from `/healthz`.
async fn limit_bytes(client: &Client) -> anyhow::Result<usize> {
    let health: Value = client.get("/healthz").await?.ok()?.json()?;
    Ok(health["max_body_bytes"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_LIMIT_BYTES))
}

/// How many lines a chunk may carry: [`CHUNK_LINES`], or fewer when the function's queue could
/// not take that many at once while it still holds tasks (a batch is admitted whole or not at
/// all): half its `queue_limit`, or without a waiting line (`queue_limit` 0) half its
/// concurrency cap, so a chunk fits once the queue is half drained. The function's current
/// settings decide, so a batch run again with its idempotency key is cut the same way unless
/// they changed. A function that cannot be read is left to the submit to report.
async fn chunk_lines(client: &Client, name: &str) -> usize {
    let path = format!("/v1/functions/{}", segment(name));
    let view: Option<Value> = match client.get(&path).await {
        Ok(answer) if answer.status.is_success() => answer.json().ok(),
        _ => None,
    };
    let cap = view.and_then(|v| match v["queue_limit"].as_u64()? {
        0 => v["concurrency"].as_u64(),
        limit => Some(limit),
    });
    cap.and_then(|c| usize::try_from(c / 2).ok())
        .map_or(CHUNK_LINES, |c| c.clamp(1, CHUNK_LINES))
}

/// A progress bar of finished tasks on stderr when it is a terminal; a hidden one otherwise.
fn progress_bar(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} ({rate}, {elapsed}, eta {eta})")
    {
        let rate = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar.set_message("done 0, failed 0");
    bar
}

/// Reads chunks on a blocking thread, a couple ahead of the submitter.
fn read_chunks(mut chunks: Chunks) -> mpsc::Receiver<anyhow::Result<Chunk>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        loop {
            let next = chunks.next_chunk().transpose();
            let Some(next) = next else { break };
            let stop = next.is_err();
            if tx.blocking_send(next).is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// Where the chunks go: the batch route (with its version pin) and the batch's key.
struct Target {
    path: String,
    key: Option<String>,
}

impl Target {
    fn of(batch: &Batch) -> Target {
        let pin = batch.version.map(|v| format!("?version={v}"));
        Target {
            path: format!(
                "/v1/functions/{}/batch{}",
                segment(&batch.name),
                pin.unwrap_or_default()
            ),
            key: batch.idempotency_key.clone(),
        }
    }
}

/// Submits and collects every task; returns once every outcome is written.
async fn pipeline(
    client: &Client,
    target: &Target,
    chunks: mpsc::Receiver<anyhow::Result<Chunk>>,
    output: Output,
    limit_bytes: usize,
    progress: &ProgressBar,
    counts: &Counts,
) -> anyhow::Result<()> {
    let window = Arc::new(Semaphore::new(WINDOW));
    let (tx, rx) = mpsc::unbounded_channel();
    let submit = submit_all(client, target, chunks, &window, tx, progress, counts);
    let max_ids = wait_ids(limit_bytes);
    let collect = collect_all(client, rx, output, max_ids, &window, progress, counts);
    tokio::try_join!(submit, collect).map(|_| ())
}

/// Tasks just submitted: the index (from 0) of the first one's line, and their ids in order.
struct Submitted {
    first: usize,
    ids: Vec<String>,
}

/// Posts every chunk, each once the window has room for it, and hands its ids to the collector.
async fn submit_all(
    client: &Client,
    target: &Target,
    mut chunks: mpsc::Receiver<anyhow::Result<Chunk>>,
    window: &Semaphore,
    tx: mpsc::UnboundedSender<Submitted>,
    progress: &ProgressBar,
    counts: &Counts,
) -> anyhow::Result<()> {
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        let permits = u32::try_from(chunk.count).context("a chunk is too large")?;
        window
            .acquire_many(permits)
            .await
            .context("the batch window closed")?
            .forget();
        counts.sending.store(chunk.count, Ordering::Relaxed);
        let key = target
            .key
            .as_ref()
            .map(|k| format!("{k}:{}", chunk.first + 1));
        let body = Bytes::from(chunk.body);
        let ids = post_chunk(client, &target.path, key.as_deref(), body, progress).await?;
        counts.sending.store(0, Ordering::Relaxed);
        if ids.len() != chunk.count {
            anyhow::bail!(
                "the server took {} tasks for a chunk of {} lines",
                ids.len(),
                chunk.count
            );
        }
        counts.submitted.fetch_add(chunk.count, Ordering::Relaxed);
        let first = chunk.first;
        if tx.send(Submitted { first, ids }).is_err() {
            break;
        }
    }
    Ok(())
}

/// Posts one chunk; a chunk refused for a full queue is offered again after the answer's
/// Retry-After. Returns its task ids in order.
async fn post_chunk(
    client: &Client,
    path: &str,
    key: Option<&str>,
    body: Bytes,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let mut tries = 0;
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    loop {
        let ndjson = Some("application/x-ndjson");
        let answer = client
            .request_with(hyper::Method::POST, path, ndjson, &headers, body.clone())
            .await?;
        tries += 1;
        if answer.status == hyper::StatusCode::TOO_MANY_REQUESTS && tries < QUEUE_FULL_TRIES {
            let seconds = answer
                .headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 30);
            progress.set_message("the queue is full: waiting");
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            continue;
        }
        let v: Value = answer.ok()?.json()?;
        let ids = v["task_ids"]
            .as_array()
            .context("no task_ids in the answer")?;
        return Ok(ids
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect());
    }
}

/// The collector's state: tasks in flight by id, finished ones not yet written, and the next
/// line to write.
struct Collector {
    open: HashMap<String, usize>,
    /// The same tasks by line index: a wait asks for the earliest ones.
    by_index: BTreeMap<usize, String>,
    finished: BTreeMap<usize, Outcome>,
    next: usize,
    output: Output,
}

impl Collector {
    /// Adds tasks just submitted.
    fn add(&mut self, submitted: Submitted) {
        for (i, id) in submitted.ids.into_iter().enumerate() {
            self.open.insert(id.clone(), submitted.first + i);
            self.by_index.insert(submitted.first + i, id);
        }
    }

    /// The body of a wait for the earliest `max_ids` tasks in flight.
    fn wait_body(&self, max_ids: usize) -> anyhow::Result<Bytes> {
        let ids: Vec<&String> = self.by_index.values().take(max_ids).collect();
        Ok(serde_json::to_vec(&json!({ "ids": ids, "wait": WAIT }))?.into())
    }
}

/// How many ids one wait request may name: the route's limit, and what fits in the server's
/// body limit (an id takes 39 bytes of JSON).
fn wait_ids(limit_bytes: usize) -> usize {
    (limit_bytes.saturating_sub(64) / 40).clamp(1, WINDOW)
}

/// Waits for every submitted task (at most `max_ids` per wait request, the earliest lines
/// first) and writes the outcomes in order.
async fn collect_all(
    client: &Client,
    mut rx: mpsc::UnboundedReceiver<Submitted>,
    output: Output,
    max_ids: usize,
    window: &Semaphore,
    progress: &ProgressBar,
    counts: &Counts,
) -> anyhow::Result<()> {
    let mut state = Collector {
        open: HashMap::new(),
        by_index: BTreeMap::new(),
        finished: BTreeMap::new(),
        next: 0,
        output,
    };
    loop {
        if state.open.is_empty() {
            match rx.recv().await {
                Some(s) => state.add(s),
                None => break,
            }
        }
        while let Ok(s) = rx.try_recv() {
            state.add(s);
        }
        let body = state.wait_body(max_ids)?;
        let answer = tokio::select! {
            answer = client.post("/v1/tasks/wait", "application/json", body) => answer,
            Some(s) = rx.recv() => {
                state.add(s);
                continue;
            }
        };
        let answer: Value = answer?.ok()?.json()?;
        take_answer(client, &mut state, &answer, progress, counts).await?;
        write_ready(&mut state, window, progress, counts)?;
    }
    state.output.flush()
}

/// Records the finished tasks of a wait answer, fetching any result it left out.
async fn take_answer(
    client: &Client,
    state: &mut Collector,
    answer: &Value,
    progress: &ProgressBar,
    counts: &Counts,
) -> anyhow::Result<()> {
    if let Some(id) = answer["unknown"].as_array().and_then(|u| u.first()) {
        anyhow::bail!("the server no longer knows task {id}");
    }
    if let Some(id) = answer["expired"].as_array().and_then(|u| u.first()) {
        anyhow::bail!(
            "task {id} has expired: the server purged it (serve --retain) before its result was read"
        );
    }
    let tasks = answer["tasks"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut ended = 0;
    for task in tasks {
        let Some(index) = task["id"].as_str().and_then(|id| state.open.remove(id)) else {
            continue;
        };
        state.by_index.remove(&index);
        let result = if task["result_omitted"] == json!(true) {
            let id = task["id"].as_str().unwrap_or_default();
            let path = format!("/v1/tasks/{}/result", segment(id));
            Some(client.get(&path).await?.ok()?.body)
        } else {
            None
        };
        let outcome = output::outcome(task, result)?;
        if outcome.failed() {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        state.finished.insert(index, outcome);
        ended += 1;
    }
    // The message first: the bar may redraw at the increment, and must show both new.
    let failed = counts.failed.load(Ordering::Relaxed);
    let done = (progress.position() as usize + ended).saturating_sub(failed);
    progress.set_message(format!("done {done}, failed {failed}"));
    progress.inc(ended as u64);
    Ok(())
}

/// Writes every finished outcome whose earlier lines are all written, freeing its window slot.
fn write_ready(
    state: &mut Collector,
    window: &Semaphore,
    progress: &ProgressBar,
    counts: &Counts,
) -> anyhow::Result<()> {
    while let Some(outcome) = state.finished.remove(&state.next) {
        state.next += 1;
        state.output.write(state.next, &outcome, |line| {
            progress.suspend(|| eprintln!("faasd: {line}"))
        })?;
        window.add_permits(1);
        counts.written.fetch_add(1, Ordering::Relaxed);
    }
    state.output.flush()
}

/// The error of an interrupted batch: how far it got, and where the submitted tasks are.
fn interrupted(name: &str, total: usize, counts: &Counts, elapsed: Duration) -> anyhow::Error {
    let report = stopped_report(name, total, counts, elapsed, true);
    exit::coded(exit::INTERRUPTED, format!("interrupted: {report}"))
}

/// How far a batch that stopped early got (by Ctrl-C, `interrupted`, or an error), and where
/// its submitted tasks are.
fn stopped_report(
    name: &str,
    total: usize,
    counts: &Counts,
    elapsed: Duration,
    interrupted: bool,
) -> String {
    let submitted = counts.submitted.load(Ordering::Relaxed);
    let written = counts.written.load(Ordering::Relaxed);
    let sending = counts.sending.load(Ordering::Relaxed);
    let maybe = if sending > 0 {
        format!(
            " (and perhaps lines {}-{}, whose request was cut short)",
            submitted + 1,
            submitted + sending
        )
    } else {
        String::new()
    };
    let lines = match submitted {
        0 => String::new(),
        n => format!(" (lines 1-{n})"),
    };
    let since = elapsed.as_secs() + 1;
    // After an error the submitted tasks may have ended too (removed with their function).
    let fate = if interrupted {
        "and the submitted tasks still run: list them with"
    } else {
        "see what became of the submitted tasks with"
    };
    format!(
        "submitted {submitted} of {total} tasks{lines}{maybe}, {written} written; \
         nothing more is submitted, {fate} `faasd tasks --function {name} --since {since}s`"
    )
}
