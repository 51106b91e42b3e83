//! `faasd grant USER FUNCTION` and `faasd revoke USER FUNCTION`: give or take a user's right
//! to invoke a function (admins, and the function's owner).

use bytes::Bytes;
use hyper::Method;

use super::{ClientArgs, exit};
use crate::client::segment;

/// A user and a function.
#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    /// The user's name.
    pub user: String,
    /// The function's name.
    pub function: String,
    /// Print `{"user", "function", "granted"}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd grant`.
pub async fn grant(args: GrantArgs) -> anyhow::Result<u8> {
    set(args, Method::PUT).await?;
    Ok(exit::OK)
}

/// Runs `faasd revoke`.
pub async fn revoke(args: GrantArgs) -> anyhow::Result<u8> {
    set(args, Method::DELETE).await?;
    Ok(exit::OK)
}

async fn set(args: GrantArgs, method: Method) -> anyhow::Result<()> {
    let client = args.client.connect()?;
    let path = format!(
        "/v1/users/{}/grants/{}",
        segment(&args.user),
        segment(&args.function)
    );
    let granting = method == Method::PUT;
    client
        .request(method, &path, None, Bytes::new())
        .await?
        .ok()?;
    if args.json {
        let v =
            serde_json::json!({"user": args.user, "function": args.function, "granted": granting});
        println!("{v}");
    } else if granting {
        println!("{} may now invoke {}", args.user, args.function);
    } else {
        println!("{} may no longer invoke {}", args.user, args.function);
    }
    Ok(())
}
