//! `faasd status`, `faasd result` and `faasd logs`: read a task.

use std::io::Write;

use super::{ClientArgs, exit, failed};
use crate::client::{Client, segment};

/// Show a task's status.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The task id.
    pub id: String,
    /// Wait until the task finishes; then exit 1 if it FAILED.
    #[arg(long)]
    pub wait: bool,
    /// Print the status JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Print a finished task's result bytes.
#[derive(Debug, clap::Args)]
pub struct ResultArgs {
    /// The task id.
    pub id: String,
    /// Wait until the task finishes.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Print a finished task's captured stderr.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The task id.
    pub id: String,
    /// Wait until the task finishes.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn is_finished(task: &serde_json::Value) -> bool {
    matches!(task["status"].as_str(), Some("COMPLETED" | "FAILED"))
}

/// Reads a task's status; with `wait`, long-polls until it has finished.
async fn fetch_status(client: &Client, id: &str, wait: bool) -> anyhow::Result<serde_json::Value> {
    let base = format!("/v1/tasks/{}", segment(id));
    loop {
        let path = if wait {
            format!("{base}?wait=60s")
        } else {
            base.clone()
        };
        let task: serde_json::Value = client.get(&path).await?.ok()?.json()?;
        if !wait || is_finished(&task) {
            return Ok(task);
        }
    }
}

/// Runs `faasd status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let task = fetch_status(&client, &args.id, args.wait).await?;
    if args.json {
        println!("{task}");
    } else {
        print_task(&task);
    }
    let failed = task["status"].as_str() == Some("FAILED");
    Ok(if args.wait && failed {
        exit::FAILURE
    } else {
        exit::OK
    })
}

fn print_task(t: &serde_json::Value) {
    let text = |key: &str| match &t[key] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("task      {}", text("id"));
    println!(
        "function  {} (version {})",
        text("function"),
        text("version")
    );
    println!("status    {}", text("status"));
    println!("attempts  {}", text("attempts"));
    println!("created   {}", text("created_at"));
    println!("started   {}", text("started_at"));
    println!("finished  {}", text("finished_at"));
    if t["status"].as_str() == Some("FAILED") {
        println!("reason    {}", text("reason"));
        println!("message   {}", text("message"));
    }
    println!("exit code {}", text("exit_code"));
    if let Some(cold) = t["cold_start"].as_bool() {
        let init = t["init_ms"].as_f64().unwrap_or(0.0);
        if cold {
            println!("start     cold (load {init:.3} ms)");
        } else {
            println!("start     warm");
        }
    }
    if let Some(ms) = t["run_ms"].as_f64() {
        println!("run       {ms:.3} ms");
    }
    if let Some(ms) = t["cpu_ms"].as_f64() {
        println!("cpu       {ms:.3} ms");
    }
    if let Some(bytes) = t["peak_memory_bytes"].as_u64() {
        println!(
            "memory    {:.1} MiB peak",
            bytes as f64 / (1u64 << 20) as f64
        );
    }
}

async fn fetch_bytes(
    client: &super::ClientArgs,
    id: &str,
    wait: bool,
    what: &str,
) -> anyhow::Result<u8> {
    let client = client.connect()?;
    if wait {
        fetch_status(&client, id, true).await?;
    }
    let answer = failed::check(
        client
            .get(&format!("/v1/tasks/{}/{what}", segment(id)))
            .await?,
    )?;
    let mut out = std::io::stdout().lock();
    out.write_all(&answer.body)?;
    out.flush()?;
    Ok(exit::OK)
}

/// Runs `faasd result`.
pub async fn result(args: ResultArgs) -> anyhow::Result<u8> {
    fetch_bytes(&args.client, &args.id, args.wait, "result").await
}

/// Runs `faasd logs`.
pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    fetch_bytes(&args.client, &args.id, args.wait, "logs").await
}
