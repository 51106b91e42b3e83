//! The calls of a benchmark: the first call, the async tasks and their ends, the sync calls;
//! each spread round robin over the function's copies.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use indicatif::ProgressBar;

use super::{BenchArgs, FirstCall, exit};
use crate::client::{Answer, Client, Connection};

/// What every call sends: which function (the i-th call goes to `names[i % len]`) and the
/// payload.
pub(super) struct Load {
    /// The function's copies.
    pub names: Arc<[String]>,
    /// The payload of every call.
    pub payload: Bytes,
}

impl Load {
    /// The invoke path of the `i`-th call, with `suffix` (such as `?async=true`).
    fn path(&self, i: usize, suffix: &str) -> String {
        let name = &self.names[i % self.names.len()];
        format!("/v1/functions/{name}/invoke{suffix}")
    }
}

/// Makes the first call of the fresh function; for warm runtimes it is a cold start, whose
/// load and run times are returned.
pub(super) async fn first_call(client: &Client, load: &Load) -> anyhow::Result<Option<FirstCall>> {
    let first = client
        .post(
            &load.path(0, ""),
            "application/octet-stream",
            load.payload.clone(),
        )
        .await?
        .ok()?;
    if let Some(id) = first
        .headers
        .get("x-faasd-task-id")
        .and_then(|v| v.to_str().ok())
    {
        let task: serde_json::Value = client.get(&format!("/v1/tasks/{id}")).await?.ok()?.json()?;
        if task["cold_start"] == true && task["init_ms"].as_f64().unwrap_or(0.0) > 0.0 {
            return Ok(Some(FirstCall {
                load_ms: task["init_ms"].as_f64().unwrap_or(0.0),
                run_ms: task["run_ms"].as_f64().unwrap_or(0.0),
            }));
        }
    }
    Ok(None)
}

/// How long an async run took: to the last `finished_at`, and to the last submit's answer.
pub(super) struct Timed {
    /// From the first submit to the last `finished_at` (never less than `submitting`).
    pub elapsed: Duration,
    /// From the first submit to the last 202.
    pub submitting: Duration,
}

/// Submits `tasks` async calls over `--connections`, then reads every task's end: the rate
/// runs from the first submit to the last `finished_at`.
pub(super) async fn throughput(
    client: &Client,
    tasks: usize,
    args: &BenchArgs,
    load: &Load,
    progress: &ProgressBar,
) -> anyhow::Result<Timed> {
    // Connected before the clock starts: the figure is of the calls, not of the handshakes.
    let connections = connect(client, args.connections, tasks).await?;
    let started_wall = SystemTime::now();
    let started = Instant::now();
    progress.set_message("submitting");
    let ids = submit(connections, tasks, load, progress).await?;
    let submitting = started.elapsed();
    progress.set_message("waiting");
    let (last_finished, failed) = wait_finished(client, ids, progress).await?;
    if failed > 0 {
        return Err(exit::coded(
            exit::FAILURE,
            format!("{failed} benchmark tasks did not complete"),
        ));
    }
    let elapsed = last_finished
        .max(started_wall)
        .duration_since(started_wall)
        .unwrap_or(submitting)
        .max(submitting);
    Ok(Timed {
        elapsed,
        submitting,
    })
}

/// Submits `tasks` async calls, one caller on each of `connections`; returns the task ids.
async fn submit(
    connections: Vec<Connection>,
    tasks: usize,
    load: &Load,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let calls = Calls {
        count: tasks,
        suffix: "?async=true",
    };
    post_all(connections, load, calls, progress, |answer, _| {
        Ok(answer.json::<Queued>()?.task_id)
    })
    .await
}

/// What the bench reads of a 202 (typed, not a `serde_json::Value`: a map per answer cost the
/// client as much CPU as the request).
#[derive(serde::Deserialize)]
struct Queued {
    task_id: String,
}

/// What the bench reads of a `POST /v1/tasks/wait` answer.
#[derive(serde::Deserialize)]
struct WaitAnswer {
    #[serde(default)]
    tasks: Vec<Ended>,
    #[serde(default)]
    unknown: Vec<String>,
}

/// One task of a wait answer.
#[derive(serde::Deserialize)]
struct Ended {
    id: String,
    status: String,
    finished_at: Option<String>,
}

/// How many calls [`post_all`] makes, and the query of their path.
struct Calls {
    count: usize,
    suffix: &'static str,
}

/// Opens `wanted` connections to the server, one for each caller of [`post_all`]: at least one,
/// and no more than the `calls` they will make.
async fn connect(client: &Client, wanted: usize, calls: usize) -> anyhow::Result<Vec<Connection>> {
    let count = wanted.clamp(1, calls.max(1));
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let connection = client.connection().await;
        connections.push(connection.context("cannot open a benchmark connection")?);
    }
    Ok(connections)
}

/// Makes `calls.count` calls shared out over one caller on each of `connections` (the c-th
/// makes calls c, c + callers, ...), each caller one call after the other, so `--connections
/// N` is N connections, each used by one caller; returns what `keep` takes from each answer
/// and the time the call took.
async fn post_all<T: Send + 'static>(
    connections: Vec<Connection>,
    load: &Load,
    calls: Calls,
    progress: &ProgressBar,
    keep: fn(Answer, Duration) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let Calls { count, suffix } = calls;
    let callers = connections.len().max(1);
    let paths: Arc<[String]> = (0..load.names.len().min(count.max(1)))
        .map(|i| load.path(i, suffix))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut connection) in connections.into_iter().enumerate() {
        let paths = paths.clone();
        let (payload, progress) = (load.payload.clone(), progress.clone());
        tasks.spawn(async move {
            let mut kept = Vec::new();
            for i in (c..count).step_by(callers) {
                let t = Instant::now();
                let answer = connection
                    .post(
                        &paths[i % paths.len()],
                        "application/octet-stream",
                        payload.clone(),
                    )
                    .await?
                    .ok()?;
                kept.push(keep(answer, t.elapsed())?);
                progress.inc(1);
            }
            anyhow::Ok(kept)
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a caller panicked")??);
    }
    Ok(all)
}

/// How many task ids one wait request names: a window over the submitted tasks, in submission
/// order, topped up as its tasks end (as a Celery client's `get_many` reads its results in
/// batches).
const WAIT_WINDOW: usize = 1000;

/// Waits for every task with `POST /v1/tasks/wait`, a window of [`WAIT_WINDOW`] ids at a time, so
/// waiting costs the server a request per few hundred ends, not one per task (which took a
/// fifth of the server's CPU from the tasks being measured); returns the latest `finished_at`
/// and how many tasks did not complete.
async fn wait_finished(
    client: &Client,
    ids: Vec<String>,
    progress: &ProgressBar,
) -> anyhow::Result<(SystemTime, usize)> {
    let (mut latest, mut failed) = (SystemTime::UNIX_EPOCH, 0usize);
    let mut rest = ids.into_iter();
    let mut window: Vec<String> = rest.by_ref().take(WAIT_WINDOW).collect();
    while !window.is_empty() {
        let request = serde_json::json!({ "ids": window, "wait": "60s" });
        let answer: WaitAnswer = client
            .post(
                "/v1/tasks/wait",
                "application/json",
                Bytes::from(request.to_string()),
            )
            .await?
            .ok()?
            .json()?;
        if !answer.unknown.is_empty() {
            anyhow::bail!(
                "the server does not know {} benchmark tasks",
                answer.unknown.len()
            );
        }
        let mut ended = std::collections::HashSet::with_capacity(answer.tasks.len());
        for t in answer.tasks {
            if t.status != "COMPLETED" {
                failed += 1;
            }
            if let Some(ts) = &t.finished_at {
                latest = latest.max(humantime::parse_rfc3339(ts)?);
            }
            ended.insert(t.id);
        }
        progress.inc(ended.len() as u64);
        window.retain(|id| !ended.contains(id));
        let room = WAIT_WINDOW - window.len();
        window.extend(rest.by_ref().take(room));
    }
    Ok((latest, failed))
}

/// Makes `--sync-calls` sync calls, over `--sync-connections` concurrent callers each calling
/// one after the other; returns the time each call took.
pub(super) async fn sync_latency(
    client: &Client,
    args: &BenchArgs,
    load: &Load,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Duration>> {
    let connections = connect(client, args.sync_connections, args.sync_calls).await?;
    let calls = Calls {
        count: args.sync_calls,
        suffix: "",
    };
    post_all(connections, load, calls, progress, |_, took| Ok(took)).await
}
