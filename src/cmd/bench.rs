//! `faasd bench`: measure a running server: async throughput and sync latency of a no-op
//! function. A progress bar shows on a terminal; the function it registers is removed at the
//! end (also after a failure or Ctrl-C) unless `--keep` is given.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{ClientArgs, exit};
use crate::client::{Client, segment};

/// Benchmark a running server.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Tasks submitted asynchronously for the throughput figure.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Concurrent HTTP connections submitting them.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Sequential sync calls for the latency figures.
    #[arg(long, default_value_t = 1_000)]
    pub sync_calls: usize,
    /// The function's code (a shell script); the default is the no-op `cat`.
    #[arg(long, default_value = "cat")]
    pub script: String,
    /// The function's runtime.
    #[arg(long, default_value = "shell")]
    pub runtime: String,
    /// Read the function's code from this file instead of --script.
    #[arg(long)]
    pub code_file: Option<std::path::PathBuf>,
    /// The payload of every call.
    #[arg(long, default_value = "x")]
    pub payload: String,
    /// The function's name.
    #[arg(long, default_value = "bench-noop")]
    pub function: String,
    /// A label printed with the figures.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Keep the benchmark function registered at the end (it is removed by default).
    #[arg(long)]
    pub keep: bool,
    /// Print the figures as one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What a run measured; the JSON of `--json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    label: String,
    function: String,
    /// The first call, when it was a cold start with a load time.
    first_call: Option<FirstCall>,
    throughput: Option<Throughput>,
    latency: Option<Latency>,
    /// Whether the function is still registered (`--keep`).
    kept: bool,
}

/// A cold first call.
#[derive(Debug, Serialize)]
struct FirstCall {
    load_ms: f64,
    run_ms: f64,
}

/// The async figure: submit to last COMPLETED.
#[derive(Debug, Serialize)]
struct Throughput {
    tasks: usize,
    connections: usize,
    seconds: f64,
    tasks_per_second: f64,
}

/// The sync figures.
#[derive(Debug, Serialize)]
struct Latency {
    calls: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs `faasd bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    register_function(&client, &args).await?;
    let progress = progress_bar(&args);
    let measured = tokio::select! {
        measured = measure(&client, &args, &progress) => measured,
        _ = tokio::signal::ctrl_c() => Err(exit::coded(exit::FAILURE, "interrupted")),
    };
    progress.finish_and_clear();
    let removed = if args.keep {
        Ok(())
    } else {
        remove_function(&client, &args.function).await
    };
    let mut report = match (measured, removed) {
        (Ok(report), Ok(())) => report,
        (Ok(_), Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(removal)) => {
            eprintln!("faasd: {removal:#}");
            return Err(e);
        }
    };
    report.kept = args.keep;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(exit::OK)
}

/// A progress bar over every call of the run on stderr when it is a terminal (and not
/// `--json`); a hidden one otherwise.
fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = 2 * args.tasks + args.sync_calls;
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:<12} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The measurements: the first call, then the async throughput, then the sync latency.
async fn measure(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
) -> anyhow::Result<Report> {
    let mut report = Report {
        label: args.label.clone(),
        function: args.function.clone(),
        ..Report::default()
    };
    progress.set_message("first call");
    report.first_call = first_call(client, args).await?;
    if args.tasks > 0 {
        let (rate, elapsed) = throughput(client, args, progress).await?;
        report.throughput = Some(Throughput {
            tasks: args.tasks,
            connections: args.connections,
            seconds: elapsed.as_secs_f64(),
            tasks_per_second: rate,
        });
    }
    if args.sync_calls > 0 {
        progress.set_message("sync calls");
        let mut latencies = sync_latency(client, args, progress).await?;
        latencies.sort();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1000.0
        };
        report.latency = Some(Latency {
            calls: latencies.len(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        });
    }
    Ok(report)
}

/// Prints the figures for people.
fn print_report(report: &Report) {
    let label = if report.label.is_empty() {
        String::new()
    } else {
        format!("[{}] ", report.label)
    };
    if let Some(f) = &report.first_call {
        println!(
            "{label}first call: cold start, load {:.1} ms, run {:.2} ms",
            f.load_ms, f.run_ms
        );
    }
    if let Some(t) = &report.throughput {
        println!(
            "{label}async throughput: {} tasks over {} connections in {:.2} s = {:.0} tasks/s (submit to last COMPLETED)",
            t.tasks, t.connections, t.seconds, t.tasks_per_second
        );
    }
    if let Some(l) = &report.latency {
        println!(
            "{label}sync latency over {} sequential calls: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.calls, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}

/// Removes the benchmark function.
async fn remove_function(client: &Client, name: &str) -> anyhow::Result<()> {
    let path = format!("/v1/functions/{}", segment(name));
    let removed = async { client.delete(&path).await?.ok() }.await;
    removed.map(drop).with_context(|| {
        format!("cannot remove the benchmark function {name} (remove it with `faasd rm {name}`)")
    })
}

/// Registers the benchmark function (`--code-file` or `--script`).
async fn register_function(client: &Client, args: &BenchArgs) -> anyhow::Result<()> {
    let code = match &args.code_file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => args.script.clone().into_bytes(),
    };
    let body = serde_json::json!({
        "name": args.function,
        "runtime": args.runtime,
        "code": base64::engine::general_purpose::STANDARD.encode(code),
    });
    client
        .post(
            "/v1/functions",
            "application/json",
            serde_json::to_vec(&body)?.into(),
        )
        .await?
        .ok()
        .context("cannot register the benchmark function")?;
    Ok(())
}

/// Makes the first call of the fresh function; for warm runtimes it is a cold start, whose
/// load and run times are returned.
async fn first_call(client: &Client, args: &BenchArgs) -> anyhow::Result<Option<FirstCall>> {
    let first = client
        .post(
            &format!("/v1/functions/{}/invoke", args.function),
            "application/octet-stream",
            Bytes::from(args.payload.clone()),
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

/// Submits `--tasks` async calls over `--connections`, then reads every task's end: the rate
/// runs from the first submit to the last `finished_at`.
async fn throughput(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
) -> anyhow::Result<(f64, Duration)> {
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let connections = args.connections.max(1);
    progress.set_message("submitting");
    let ids = submit(client, args, connections, progress).await?;
    let submitted = started.elapsed();
    progress.set_message("waiting");
    let (last_finished, failed) = wait_finished(client, ids, connections, progress).await?;
    if failed > 0 {
        return Err(exit::coded(
            exit::FAILURE,
            format!("{failed} benchmark tasks did not complete"),
        ));
    }
    let elapsed = last_finished
        .max(started_wall)
        .duration_since(started_wall)
        .unwrap_or(submitted)
        .max(submitted);
    Ok((args.tasks as f64 / elapsed.as_secs_f64(), elapsed))
}

/// Submits `--tasks` async calls, shared out over `connections` concurrent submitters;
/// returns the task ids.
async fn submit(
    client: &Client,
    args: &BenchArgs,
    connections: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let path = Arc::new(format!("/v1/functions/{}/invoke?async=true", args.function));
    let mut submitters = tokio::task::JoinSet::new();
    for c in 0..connections {
        let share = args.tasks / connections + usize::from(c < args.tasks % connections);
        let client = client.clone();
        let path = path.clone();
        let payload = Bytes::from(args.payload.clone());
        let progress = progress.clone();
        submitters.spawn(async move {
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                let answer = client
                    .post(&path, "application/octet-stream", payload.clone())
                    .await?
                    .ok()?;
                let v: serde_json::Value = answer.json()?;
                ids.push(v["task_id"].as_str().unwrap_or_default().to_string());
                progress.inc(1);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(args.tasks);
    while let Some(joined) = submitters.join_next().await {
        ids.extend(joined.context("a submitter panicked")??);
    }
    Ok(ids)
}

/// Waits for every task over `connections` concurrent readers; returns the latest
/// `finished_at` and how many tasks did not complete.
async fn wait_finished(
    client: &Client,
    ids: Vec<String>,
    connections: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(SystemTime, usize)> {
    let mut waiters = tokio::task::JoinSet::new();
    let ids = Arc::new(ids);
    for c in 0..connections {
        let client = client.clone();
        let ids = ids.clone();
        let progress = progress.clone();
        waiters.spawn(async move {
            let mut latest = SystemTime::UNIX_EPOCH;
            let mut failed = 0usize;
            for id in ids.iter().skip(c).step_by(connections) {
                let t: serde_json::Value = client
                    .get(&format!("/v1/tasks/{id}?wait=120s"))
                    .await?
                    .ok()?
                    .json()?;
                progress.inc(1);
                if t["status"] != "COMPLETED" {
                    failed += 1;
                }
                if let Some(ts) = t["finished_at"].as_str() {
                    latest = latest.max(humantime::parse_rfc3339(ts)?);
                }
            }
            anyhow::Ok((latest, failed))
        });
    }
    let (mut last_finished, mut failed) = (SystemTime::UNIX_EPOCH, 0);
    while let Some(joined) = waiters.join_next().await {
        let (latest, f) = joined.context("a waiter panicked")??;
        last_finished = last_finished.max(latest);
        failed += f;
    }
    Ok((last_finished, failed))
}

/// Makes `--sync-calls` sequential sync calls; returns the time each took.
async fn sync_latency(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Duration>> {
    let path = format!("/v1/functions/{}/invoke", args.function);
    let mut latencies = Vec::with_capacity(args.sync_calls);
    for _ in 0..args.sync_calls {
        let t = Instant::now();
        client
            .post(
                &path,
                "application/octet-stream",
                Bytes::from(args.payload.clone()),
            )
            .await?
            .ok()?;
        latencies.push(t.elapsed());
        progress.inc(1);
    }
    Ok(latencies)
}
