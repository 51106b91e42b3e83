//! `faasd whoami`: who the server takes this client for (the token's user and role, or the
//! caller a tokenless request stands for), and whether it is in protected mode.

use super::{ClientArgs, exit};

/// Show who the server takes this client for.
#[derive(Debug, clap::Args)]
pub struct WhoamiArgs {
    /// Print the server's JSON answer (`{"name", "role", "mode"}`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd whoami`: `NAME (ROLE)`, and the mode when it is not the usual `tokens`.
pub async fn run(args: WhoamiArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let answer = client.get("/v1/whoami").await?.ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let me: serde_json::Value = answer.json()?;
    let text = |k: &str| me[k].as_str().unwrap_or("?").to_owned();
    let mode = text("mode");
    if mode == "tokens" {
        println!("{} ({})", text("name"), text("role"));
    } else {
        println!("{} ({}), {mode} mode", text("name"), text("role"));
    }
    Ok(exit::OK)
}
