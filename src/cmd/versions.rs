//! `faasd versions NAME` and `faasd rollback NAME --to N`: a function's kept versions, and going
//! back to one. Also how a function name to call may pin a version: `NAME@N`.

use super::table::{Align, Table};
use super::{ClientArgs, exit};
use crate::client::segment;

/// List a function's kept versions.
#[derive(Debug, clap::Args)]
pub struct VersionsArgs {
    /// The function's name.
    pub name: String,
    /// Print the JSON list (each version as `GET /v1/functions/{name}` shows it, plus `live`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Make a kept version of a function the live one again.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The function's name.
    pub name: String,
    /// The version to make live (`faasd versions NAME` lists them).
    #[arg(long = "to", value_name = "N")]
    pub version: u32,
    /// Print the now-live version as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Splits `NAME@N` into the name and the pinned version (`NAME` alone pins none). A version
/// that is not a number is a usage error.
pub fn split_pin(target: &str) -> anyhow::Result<(&str, Option<u32>)> {
    let Some((name, version)) = target.rsplit_once('@') else {
        return Ok((target, None));
    };
    let version = version.parse().map_err(|_| {
        exit::coded(
            exit::USAGE,
            format!("{target:?}: the version after @ must be a number, as in {name}@2"),
        )
    })?;
    Ok((name, Some(version)))
}

/// Runs `faasd versions`.
pub async fn versions(args: VersionsArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let path = format!("/v1/functions/{}/versions", segment(&args.name));
    let answer = client.get(&path).await?.ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let versions: Vec<serde_json::Value> = answer.json()?;
    table(&versions).print();
    Ok(exit::OK)
}

/// Runs `faasd rollback`.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let path = format!("/v1/functions/{}/rollback", segment(&args.name));
    let body = serde_json::json!({ "version": args.version }).to_string();
    let answer = client
        .post(&path, "application/json", body.into())
        .await?
        .ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
    } else {
        println!("{} is at version {} again", args.name, args.version);
    }
    Ok(exit::OK)
}

/// The versions as a table, the live one marked.
fn table(versions: &[serde_json::Value]) -> Table {
    let mut table = Table::new(&[
        ("VERSION", Align::Right),
        ("LIVE", Align::Left),
        ("REGISTERED", Align::Left),
        ("RUNTIME", Align::Left),
        ("CODE", Align::Left),
        ("SIZE", Align::Right),
        ("TIMEOUT", Align::Right),
        ("CONCURRENCY", Align::Right),
        ("ENV", Align::Left),
    ]);
    for v in versions {
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let timeout = v["timeout_ms"].as_u64().map_or_else(String::new, |ms| {
            crate::units::format_duration(std::time::Duration::from_millis(ms))
        });
        let concurrency = v["concurrency"]
            .as_u64()
            .map_or_else(|| "unlimited".to_string(), |c| c.to_string());
        let env: Vec<&str> = v["env"]
            .as_object()
            .map(|env| env.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let code: String = text("code_sha256").chars().take(12).collect();
        table.row(vec![
            v["version"].to_string(),
            if v["live"] == true { "*" } else { "" }.to_string(),
            text("created_at"),
            text("runtime"),
            code,
            v["code_bytes"].to_string(),
            timeout,
            concurrency,
            env.join(","),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_may_pin_a_version_after_an_at_sign() {
        assert_eq!(split_pin("f").expect("plain"), ("f", None));
        assert_eq!(split_pin("f@3").expect("pinned"), ("f", Some(3)));
        let err = split_pin("f@x").expect_err("not a number");
        assert_eq!(exit::code_of(&err), exit::USAGE);
        assert!(err.to_string().contains("f@2"), "{err}");
    }

    #[test]
    fn the_live_version_is_marked() {
        let v = |version: u32, live: bool| {
            serde_json::json!({"version": version, "live": live, "runtime": "shell",
                "created_at": "2026-01-01T00:00:00Z", "code_sha256": "ab".repeat(32),
                "code_bytes": 10, "timeout_ms": 30000, "concurrency": null,
                "env": {"A": "1", "B": "2"}})
        };
        let text = table(&[v(1, false), v(2, true)]).render(None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains(" *"), "{text}");
        assert!(!lines[1].contains(" *"), "{text}");
        assert!(lines[1].contains("A,B"), "{text}");
    }
}
