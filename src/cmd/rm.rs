//! `faasd rm NAME`: remove a function.

use super::{ClientArgs, exit};
use crate::client::segment;

/// Remove a function (queued tasks still run on the version they pin).
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The function's name.
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd rm`.
pub async fn run(args: RmArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    client
        .delete(&format!("/v1/functions/{}", segment(&args.name)))
        .await?
        .ok()?;
    println!("removed {}", args.name);
    Ok(exit::OK)
}
