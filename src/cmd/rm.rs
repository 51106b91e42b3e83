//! `faasd rm NAME`: remove a function, every version of it.

use super::{ClientArgs, exit};
use crate::client::segment;

/// Remove a function: every version of it leaves `versions`, its name can be registered again
/// (numbering goes on above the removed versions), and tasks already queued still run on the
/// version they pin.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The function's name.
    pub name: String,
    /// Print the server's JSON answer (`{"name", "version", "deleted"}`).
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
    } else {
        println!("removed {}", args.name);
    }
    Ok(exit::OK)
}
