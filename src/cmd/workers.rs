//! `faasd workers`: list the workers connected to a server, with their machines' CPU, memory
//! and load as their heartbeats last reported them.

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
        ("CPU", right),
        ("MEMORY", right),
        ("LOAD", right),
        ("LAST HEARTBEAT", left),
        ("STATE", left),
        ("RUNTIMES", left),
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
        row.extend(health_cells(&w));
        let runtimes: Vec<&str> = w["runtimes"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        row.extend([s("last_heartbeat"), s("state"), runtimes.join(",")]);
        table.row(row);
    }
    table.print();
    Ok(exit::OK)
}

/// The CPU, memory and load cells of a worker (`-` before its first health report).
fn health_cells(w: &serde_json::Value) -> [String; 3] {
    let cpu = w["cpu_percent"]
        .as_f64()
        .map_or("-".into(), |c| format!("{c:.1}%"));
    let memory = match (
        w["memory_used_bytes"].as_u64(),
        w["memory_total_bytes"].as_u64(),
    ) {
        (Some(used), Some(total)) => format!("{}/{} MiB", used >> 20, total >> 20),
        _ => "-".into(),
    };
    let load = w["load1"]
        .as_f64()
        .map_or("-".into(), |l| format!("{l:.2}"));
    [cpu, memory, load]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_cells_show_the_figures_or_a_dash() {
        let reported = serde_json::json!({"cpu_percent": 12.5, "memory_used_bytes": 3u64 << 20,
            "memory_total_bytes": 8u64 << 20, "load1": 0.5});
        assert_eq!(health_cells(&reported), ["12.5%", "3/8 MiB", "0.50"]);
        let silent = serde_json::json!({"cpu_percent": null});
        assert_eq!(health_cells(&silent), ["-", "-", "-"]);
    }
}
