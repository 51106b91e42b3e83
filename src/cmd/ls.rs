//! `faasd ls`: list the registered functions.

use super::{ClientArgs, exit};

/// List functions.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print the JSON list.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd ls`.
pub async fn run(args: LsArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let answer = client.get("/v1/functions").await?.ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let functions: Vec<serde_json::Value> = answer.json()?;
    println!(
        "{:<24} {:>7} {:<7} {:>9} {:>11}",
        "NAME", "VERSION", "RUNTIME", "TIMEOUT", "CONCURRENCY"
    );
    for f in functions {
        let timeout = f["timeout_ms"].as_u64().map_or_else(String::new, |ms| {
            humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
        });
        let concurrency = f["concurrency"]
            .as_u64()
            .map_or_else(|| "unlimited".to_string(), |c| c.to_string());
        println!(
            "{:<24} {:>7} {:<7} {:>9} {:>11}",
            f["name"].as_str().unwrap_or_default(),
            f["version"],
            f["runtime"].as_str().unwrap_or_default(),
            timeout,
            concurrency
        );
    }
    Ok(exit::OK)
}
