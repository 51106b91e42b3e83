//! `faasd cancel ID...` and `faasd cancel --function NAME`: end QUEUED tasks before they run.

use super::{ClientArgs, exit};
use crate::client::{self, Client, segment};

/// Cancel QUEUED tasks, by id or every one of a function: they end FAILED with reason
/// `cancelled` and never run. A RUNNING task cannot be cancelled (exit 5); one that already
/// ended exits 7.
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
    /// Print one JSON document: `{"cancelled": [TASK...], "errors": [{"task_id", "code",
    /// "error"}]}`, or with --function the server's `{"function", "cancelled": N}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd cancel`.
pub async fn run(args: CancelArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    match &args.function {
        Some(name) => cancel_function(&client, name, args.version, args.json).await,
        None => cancel_tasks(&client, &args.ids, args.json).await,
    }
}

/// Cancels every QUEUED task of `name` the caller may cancel.
async fn cancel_function(
    client: &Client,
    name: &str,
    version: Option<u32>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut path = format!("/v1/functions/{}/cancel", segment(name));
    if let Some(version) = version {
        path.push_str(&format!("?version={version}"));
    }
    let answer = client
        .post(&path, "application/json", Default::default())
        .await?;
    let answer = answer.ok()?;
    if json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let body: serde_json::Value = answer.json()?;
    let cancelled = body["cancelled"].as_u64().unwrap_or(0);
    let tasks = if cancelled == 1 { "task" } else { "tasks" };
    println!("cancelled {cancelled} queued {tasks} of {name}");
    Ok(exit::OK)
}

/// Cancels each task of `ids`, going on past refusals; exits with the first refusal's code.
async fn cancel_tasks(client: &Client, ids: &[String], json: bool) -> anyhow::Result<u8> {
    let mut cancelled = Vec::new();
    let mut errors = Vec::new();
    let mut code = exit::OK;
    for id in ids {
        let path = format!("/v1/tasks/{}/cancel", segment(id));
        let answer = client
            .post(&path, "application/json", Default::default())
            .await?;
        match answer.ok() {
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
            serde_json::json!({"cancelled": cancelled, "errors": errors})
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
