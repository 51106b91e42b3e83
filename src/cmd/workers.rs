//! `faasd workers`: list the workers connected to a server.

use super::table::{Align, Table};
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
    let (left, right) = (Align::Left, Align::Right);
    let mut table = Table::new(&[
        ("ID", right),
        ("NAME", left),
        ("ADDRESS", left),
        ("DISPATCH", left),
        ("SLOTS", right),
        ("RUNNING", right),
        ("DONE", right),
        ("LAST HEARTBEAT", left),
        ("STATE", left),
    ]);
    for w in workers {
        let s = |k: &str| match &w[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let keys = [
            "id", "name", "address", "dispatch", "slots", "running", "done",
        ];
        let mut row: Vec<String> = keys.iter().map(|k| s(k)).collect();
        row.extend([s("last_heartbeat"), s("state")]);
        table.row(row);
    }
    table.print();
    Ok(exit::OK)
}
