//! `faasd bench`: measure a running server: async throughput and sync latency of a no-op
//! function. A progress bar shows on a terminal; the functions it registers are removed at the
//! end (also after a failure or Ctrl-C) unless `--keep` is given. `--csv FILE` appends the
//! figures as one row, for the sweeps of `scripts/bench-curves.sh`.
//!
//! Parts: `functions.rs` registers and removes the `--functions` copies, `load.rs` makes the
//! calls, `csv.rs` writes the row.

mod csv;
mod functions;
mod load;

use std::io::IsTerminal;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{ClientArgs, exit};
use crate::client::Client;
use load::Load;

/// Benchmark a running server.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Tasks submitted asynchronously for the throughput figure.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Concurrent HTTP connections submitting them.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Async tasks run first, the same way, and left out of every figure: the throughput is
    /// then of executors already started and warm, as a long-running worker's are.
    #[arg(long, default_value_t = 0, value_name = "TASKS")]
    pub warmup: usize,
    /// Sequential sync calls for the latency figures.
    #[arg(long, default_value_t = 1_000)]
    pub sync_calls: usize,
    /// Concurrent connections making the sync calls (1: one after the other).
    #[arg(long, default_value_t = 1)]
    pub sync_connections: usize,
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
    /// A payload of this many bytes (such as `64KiB`) instead of --payload.
    #[arg(long, value_parser = crate::units::parse_bytes)]
    pub payload_size: Option<usize>,
    /// The function's name.
    #[arg(long, default_value = "bench-noop")]
    pub function: String,
    /// Register this many copies of the function (NAME-0, NAME-1, ...) and spread the calls
    /// over them round robin; 1 registers NAME itself.
    #[arg(long, default_value_t = 1)]
    pub functions: usize,
    /// A label printed with the figures.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Keep the benchmark functions registered at the end (they are removed by default).
    #[arg(long)]
    pub keep: bool,
    /// Print the figures as one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Append the figures to this CSV file as one row (a header first when it is new or empty).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What a run measured; the JSON of `--json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    label: String,
    function: String,
    /// How many copies of the function the calls were spread over.
    functions: usize,
    payload_bytes: usize,
    /// The first call, when it was a cold start with a load time.
    first_call: Option<FirstCall>,
    /// Async tasks run after the first call and before any figure (`--warmup`).
    warmup_tasks: usize,
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
    /// Of `seconds`, the time until the last submit was answered: what is left after it is the
    /// time the tasks still queued then took to end.
    submit_seconds: f64,
}

/// The sync figures.
#[derive(Debug, Serialize)]
struct Latency {
    calls: usize,
    /// How many connections made them at once.
    connections: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs `faasd bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let load = Load {
        names: functions::names(&args.function, args.functions).into(),
        payload: match args.payload_size {
            Some(size) => Bytes::from(vec![b'x'; size]),
            None => Bytes::from(args.payload.clone()),
        },
    };
    functions::register_all(&client, &args, &load.names).await?;
    let progress = progress_bar(&args);
    let measured = tokio::select! {
        measured = measure(&client, &args, &load, &progress) => measured,
        _ = tokio::signal::ctrl_c() => Err(exit::coded(exit::FAILURE, "interrupted")),
    };
    progress.finish_and_clear();
    let removed = if args.keep {
        Ok(())
    } else {
        functions::remove_all(&client, &load.names).await
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
    if let Some(path) = &args.csv {
        csv::append(path, &csv::row(&client, &args, &report).await)?;
    }
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
    let total = 2 * (args.warmup + args.tasks) + args.sync_calls;
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
    load: &Load,
    progress: &ProgressBar,
) -> anyhow::Result<Report> {
    let mut report = Report {
        label: args.label.clone(),
        function: args.function.clone(),
        functions: load.names.len(),
        payload_bytes: load.payload.len(),
        ..Report::default()
    };
    progress.set_message("first call");
    report.first_call = load::first_call(client, load).await?;
    if args.warmup > 0 {
        load::throughput(client, args.warmup, args, load, progress).await?;
        report.warmup_tasks = args.warmup;
    }
    if args.tasks > 0 {
        let timed = load::throughput(client, args.tasks, args, load, progress).await?;
        let seconds = timed.elapsed.as_secs_f64();
        report.throughput = Some(Throughput {
            tasks: args.tasks,
            connections: args.connections,
            seconds,
            tasks_per_second: args.tasks as f64 / seconds,
            submit_seconds: timed.submitting.as_secs_f64(),
        });
    }
    if args.sync_calls > 0 {
        progress.set_message("sync calls");
        let mut latencies = load::sync_latency(client, args, load, progress).await?;
        latencies.sort();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1000.0
        };
        report.latency = Some(Latency {
            calls: latencies.len(),
            connections: args.sync_connections.max(1),
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
    if report.warmup_tasks > 0 {
        println!(
            "{label}warm-up: {} tasks first, not counted",
            report.warmup_tasks
        );
    }
    if let Some(t) = &report.throughput {
        println!(
            "{label}async throughput: {} tasks over {} connections in {:.2} s = {:.0} tasks/s (submit to last COMPLETED)",
            t.tasks, t.connections, t.seconds, t.tasks_per_second
        );
        println!(
            "{label}  of which submitting: {:.2} s ({:.0} submits/s); the last task ended {:.2} s after the last submit",
            t.submit_seconds,
            t.tasks as f64 / t.submit_seconds.max(f64::EPSILON),
            (t.seconds - t.submit_seconds).max(0.0)
        );
    }
    if let Some(l) = &report.latency {
        let over = if l.connections > 1 {
            format!("{} calls on {} connections", l.calls, l.connections)
        } else {
            format!("{} sequential calls", l.calls)
        };
        println!(
            "{label}sync latency over {over}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}
