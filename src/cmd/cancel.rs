//! `faasd cancel ID...` and `faasd cancel --function NAME`: end tasks before they run, or stop
//! them while they run.

use super::{ClientArgs, exit};
use crate::client::{self, Client, segment};

/// Cancel tasks by id, or every QUEUED task of a function: they end FAILED with reason
/// `cancelled`. A QUEUED task never runs; a RUNNING one is stopped on its worker (its process is
/// killed). One whose worker has not stopped it within --wait exits 5; one that already ended
/// exits 7.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The ids of the tasks to cancel.
    #[arg(required_unless_present = "function", conflicts_with = "function")]
    pub ids: Vec<String>,
    /// Cancel every QUEUED task of this function instead: everyone's if you own it (or are an
    /// admin), else your own.
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// With --function: only the tasks of this version.
    #[arg(long, value_name = "N", requires = "function")]
    pub version: Option<u32>,
    /// With --function: stop its RUNNING tasks too (everyone's or your own, as for the queued
    /// ones).
    #[arg(long, requires = "function")]
    pub running: bool,
    /// How long to wait for the workers of RUNNING tasks to stop them (then exit 5; such a task
    /// still ends `cancelled` once its worker reports). [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = crate::units::duration_text)]
    pub wait: Option<String>,
    /// Print one JSON document: `{"cancelled": [TASK...], "stopping": [TASK...], "errors":
    /// [{"task_id", "code", "error"}]}` (`stopping`: RUNNING tasks not yet stopped), or with
    /// --function the server's `{"function", "cancelled": N}` (with --running also `"stopped":
    /// N, "stopping": N`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd cancel`.
pub async fn run(args: CancelArgs) -> anyhow::Result<u8> {
    if args.wait.is_some() && args.function.is_some() && !args.running {
        return Err(exit::coded(
            exit::USAGE,
            "--wait with --function needs --running (queued tasks are cancelled at once)",
        ));
    }
    let client = args.client.connect()?;
    let wait = args.wait.as_deref().unwrap_or(DEFAULT_WAIT);
    match &args.function {
        Some(name) => {
            let running = args.running.then_some(wait);
            cancel_function(&client, name, args.version, running, args.json).await
        }
        None => cancel_tasks(&client, &args.ids, wait, args.json).await,
    }
}

/// How long a cancel waits for the workers of RUNNING tasks unless `--wait` says.
const DEFAULT_WAIT: &str = "10s";

/// Cancels every QUEUED task of `name` the caller may cancel, and with `running` (the wait)
/// stops its RUNNING ones too.
async fn cancel_function(
    client: &Client,
    name: &str,
    version: Option<u32>,
    running: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut query = Vec::new();
    if let Some(version) = version {
        query.push(format!("version={version}"));
    }
    if let Some(wait) = running {
        query.push(format!("running=true&wait={}", segment(wait)));
    }
    let mut path = format!("/v1/functions/{}/cancel", segment(name));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let answer = client
        .post(&path, "application/json", Default::default())
        .await?;
    let answer = answer.ok()?;
    let body: serde_json::Value = answer.json()?;
    let count = |key: &str| body[key].as_u64().unwrap_or(0);
    let tasks = |n: u64| if n == 1 { "task" } else { "tasks" };
    let stopping = count("stopping");
    if json {
        println!("{}", String::from_utf8_lossy(&answer.body));
    } else {
        let cancelled = count("cancelled");
        println!(
            "cancelled {cancelled} queued {} of {name}",
            tasks(cancelled)
        );
        if running.is_some() {
            let stopped = count("stopped");
            println!("stopped {stopped} running {} of {name}", tasks(stopped));
        }
    }
    if stopping > 0 {
        let wait = running.unwrap_or(DEFAULT_WAIT);
        eprintln!(
            "faasd: {stopping} {} of {name} still RUNNING: their workers were told to stop them and have not reported within {wait}; each ends cancelled once its worker does",
            tasks(stopping)
        );
        return Ok(exit::NOT_FINISHED);
    }
    Ok(exit::OK)
}

/// Cancels each task of `ids` (waiting up to `wait` for each RUNNING one to stop), going on
/// past refusals; exits with the first refusal's code, or 5 when a task is still stopping.
async fn cancel_tasks(
    client: &Client,
    ids: &[String],
    wait: &str,
    json: bool,
) -> anyhow::Result<u8> {
    let mut cancelled = Vec::new();
    let mut stopping = Vec::new();
    let mut errors = Vec::new();
    let mut code = exit::OK;
    for id in ids {
        let path = format!("/v1/tasks/{}/cancel?wait={}", segment(id), segment(wait));
        let answer = client
            .post(&path, "application/json", Default::default())
            .await?;
        match answer.ok() {
            Ok(answer) if answer.status == hyper::StatusCode::ACCEPTED => {
                let task: serde_json::Value = answer.json()?;
                eprintln!(
                    "faasd: task {id} is still RUNNING: its worker was told to stop it and has not reported within {wait}; it ends cancelled once it does"
                );
                if code == exit::OK {
                    code = exit::NOT_FINISHED;
                }
                stopping.push(task);
            }
            Ok(answer) => {
                let task: serde_json::Value = answer.json()?;
                if !json {
                    println!("cancelled {id}");
                }
                cancelled.push(task);
            }
            Err(err @ client::Error::Answered { .. }) => {
                if code == exit::OK {
                    code = exit::of_client(&err);
                }
                eprintln!("faasd: cannot cancel task {id}: {err}");
                errors.push(error_json(id, &err));
            }
            Err(err) => return Err(err.into()),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"cancelled": cancelled, "stopping": stopping, "errors": errors})
        );
    }
    Ok(code)
}

/// A refusal as `--json` prints it.
fn error_json(id: &str, err: &client::Error) -> serde_json::Value {
    let code = match err {
        client::Error::Answered { code, .. } => code.clone(),
        _ => None,
    };
    serde_json::json!({"task_id": id, "code": code, "error": err.to_string()})
}
