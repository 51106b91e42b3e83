//! `faasd user add|ls|rm|token`: manage the users of a server (admins only).

use bytes::Bytes;

use super::table::{Align, Table};
use super::{ClientArgs, exit};
use crate::auth::Role;
use crate::client::segment;

/// Manage users and their tokens.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: UserCommand,
}

/// The `user` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user and print its token (once, alone on a line).
    Add(AddArgs),
    /// List users, their roles and grants.
    Ls(LsArgs),
    /// Remove a user; its token stops working at once.
    Rm(NameArgs),
    /// Issue a new token for a user and print it; the old one stops working at once.
    Token(NameArgs),
}

/// `faasd user add NAME --role ROLE`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The user's name (a-z, 0-9, '_' and '-').
    pub name: String,
    /// What the user may do.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Print the server's JSON answer (`{"name", "role", "token", "created_at"}`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `faasd user ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print the JSON list.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A command on one user.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The user's name.
    pub name: String,
    /// Print JSON: `{"name", "removed"}` for `rm`, `{"name", "token"}` for `token`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd user`.
pub async fn run(args: UserArgs) -> anyhow::Result<u8> {
    match args.command {
        UserCommand::Add(args) => add(args).await,
        UserCommand::Ls(args) => ls(args).await,
        UserCommand::Rm(args) => rm(args).await,
        UserCommand::Token(args) => token(args).await,
    }
}

/// Prints the `token` field of an answer alone on stdout.
fn print_token(answer: &crate::client::Answer) -> anyhow::Result<()> {
    let body: serde_json::Value = answer.json()?;
    let token = body["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no token: {body}"))?;
    println!("{token}");
    Ok(())
}

async fn add(args: AddArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let body = serde_json::json!({ "name": args.name, "role": args.role });
    let answer = client
        .post(
            "/v1/users",
            "application/json",
            Bytes::from(body.to_string()),
        )
        .await?
        .ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    print_token(&answer)?;
    eprintln!(
        "added {} ({}); the token above is shown only once",
        args.name, args.role
    );
    Ok(exit::OK)
}

async fn ls(args: LsArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let answer = client.get("/v1/users").await?.ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let users: Vec<serde_json::Value> = answer.json()?;
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("ROLE", Align::Left),
        ("CREATED", Align::Left),
        ("GRANTS", Align::Left),
    ]);
    for u in users {
        let text = |k: &str| u[k].as_str().unwrap_or_default().to_string();
        let grants: Vec<&str> = u["grants"]
            .as_array()
            .map(|g| g.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        let grants = if grants.is_empty() {
            "-".to_string()
        } else {
            grants.join(",")
        };
        table.row(vec![text("name"), text("role"), text("created_at"), grants]);
    }
    table.print();
    Ok(exit::OK)
}

async fn rm(args: NameArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    client
        .delete(&format!("/v1/users/{}", segment(&args.name)))
        .await?
        .ok()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "name": args.name, "removed": true })
        );
    } else {
        println!("removed user {}", args.name);
    }
    Ok(exit::OK)
}

async fn token(args: NameArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let answer = client
        .post(
            &format!("/v1/users/{}/token", segment(&args.name)),
            "application/json",
            Bytes::new(),
        )
        .await?
        .ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    print_token(&answer)?;
    eprintln!(
        "issued a new token for {}; its old token no longer works",
        args.name
    );
    Ok(exit::OK)
}
