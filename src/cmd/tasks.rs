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
    /// Print `{"task_id", ...}` with the bytes as text, or as base64 when not UTF-8; a failed
    /// task prints its error object with `"status": "FAILED"` (and still exits 1).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Print a finished task's captured stderr.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The task id.
    pub id: String,
    /// Wait until a queued or running task ends, then print its logs.
    #[arg(long, visible_alias = "follow")]
    pub wait: bool,
    /// Print `{"task_id", ...}` with the bytes as text, or as base64 when not UTF-8.
    #[arg(long)]
    pub json: bool,
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
    if let Some(worker) = t["worker"].as_str() {
        println!("worker    {worker}");
    }
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

/// Fetches a task's `what` (`result` or `logs`) and prints its bytes, or with `json` a JSON
/// object `{"task_id", what}` (see [`bytes_field`]).
pub(super) async fn fetch_bytes(
    client: &super::ClientArgs,
    (id, wait, json): (&str, bool, bool),
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
        json,
    )?;
    let mut out = std::io::stdout().lock();
    if json {
        let mut object = serde_json::Map::new();
        object.insert("task_id".into(), id.into());
        let (key, value) = bytes_field(what, &answer.body);
        object.insert(key, value);
        writeln!(out, "{}", serde_json::Value::Object(object))?;
    } else {
        out.write_all(&answer.body)?;
    }
    out.flush()?;
    Ok(exit::OK)
}

/// Bytes as a JSON field: `key` with the text when they are UTF-8, else `{key}_base64` with
/// their base64 (standard alphabet).
pub(super) fn bytes_field(key: &str, bytes: &[u8]) -> (String, serde_json::Value) {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(text) => (key.to_string(), text.into()),
        Err(_) => (
            format!("{key}_base64"),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
        ),
    }
}

/// Runs `faasd result`.
pub async fn result(args: ResultArgs) -> anyhow::Result<u8> {
    let task = (args.id.as_str(), args.wait, args.json);
    fetch_bytes(&args.client, task, "result").await
}

/// Runs `faasd logs`.
pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let task = (args.id.as_str(), args.wait, args.json);
    fetch_bytes(&args.client, task, "logs").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_when_utf8_and_base64_otherwise() {
        assert_eq!(bytes_field("result", b"hi"), ("result".into(), "hi".into()));
        assert_eq!(
            bytes_field("result", &[0xff, 0x00]),
            ("result_base64".into(), "/wA=".into())
        );
    }
}
