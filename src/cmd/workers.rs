//! `faasd workers`: list the workers connected to a server.

use super::{ClientArgs, exit};

/// List workers.
#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// Print the JSON list.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd workers`.
pub async fn run(args: WorkersArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let answer = client.get("/v1/workers").await?.ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let workers: Vec<serde_json::Value> = answer.json()?;
    println!(
        "{:>4} {:<20} {:<22} {:<8} {:>5} {:>7} {:>8} {:<24} {:<8}",
        "ID", "NAME", "ADDRESS", "DISPATCH", "SLOTS", "RUNNING", "DONE", "LAST HEARTBEAT", "STATE"
    );
    for w in workers {
        let s = |k: &str| match &w[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!(
            "{:>4} {:<20} {:<22} {:<8} {:>5} {:>7} {:>8} {:<24} {:<8}",
            s("id"),
            s("name"),
            s("address"),
            s("dispatch"),
            s("slots"),
            s("running"),
            s("done"),
            s("last_heartbeat"),
            s("state")
        );
    }
    Ok(exit::OK)
}
