//! `faasd rm NAME`: remove a function, every version of it.

use super::{ClientArgs, exit};
use crate::client::segment;

/// Remove a function: every version of it leaves `versions`, its name can be registered again
/// (numbering goes on above the removed versions), and its QUEUED tasks end FAILED with reason
/// `cancelled` instead of running the removed code (RUNNING ones run to their end).
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The function's name.
    pub name: String,
    /// Print the server's JSON answer (`{"name", "version", "deleted", "cancelled"}`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd rm`.
pub async fn run(args: RmArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let answer = client
        .delete(&format!("/v1/functions/{}", segment(&args.name)))
        .await?
        .ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let body: serde_json::Value = answer.json()?;
    match body["cancelled"].as_u64().unwrap_or(0) {
        0 => println!("removed {}", args.name),
        1 => println!("removed {} (cancelled its 1 queued task)", args.name),
        n => println!("removed {} (cancelled its {n} queued tasks)", args.name),
    }
    Ok(exit::OK)
}
