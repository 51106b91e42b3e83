//! `faasd ls`: list the registered functions.

use super::table::{Align, Table};
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
    table(&functions).print();
    Ok(exit::OK)
}

/// The functions as a table; a `DISPLAY NAME` column beside the name when any function has
/// one (MPCS functions are named by their id).
fn table(functions: &[serde_json::Value]) -> Table {
    let named = functions.iter().any(|f| f["display_name"].is_string());
    let mut columns = vec![("NAME", Align::Left)];
    if named {
        columns.push(("DISPLAY NAME", Align::Left));
    }
    columns.extend([
        ("VERSION", Align::Right),
        ("RUNTIME", Align::Left),
        ("TIMEOUT", Align::Right),
        ("CONCURRENCY", Align::Right),
    ]);
    let mut table = Table::new(&columns);
    for f in functions {
        let text = |key: &str| f[key].as_str().unwrap_or_default().to_string();
        let timeout = f["timeout_ms"].as_u64().map_or_else(String::new, |ms| {
            crate::units::format_duration(std::time::Duration::from_millis(ms))
        });
        let concurrency = f["concurrency"]
            .as_u64()
            .map_or_else(|| "unlimited".to_string(), |c| c.to_string());
        let mut row = vec![text("name")];
        if named {
            row.push(f["display_name"].as_str().unwrap_or("-").to_string());
        }
        row.extend([
            f["version"].to_string(),
            text("runtime"),
            timeout,
            concurrency,
        ]);
        table.row(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_name_column_shows_only_when_a_function_has_one() {
        let plain = serde_json::json!({"name": "f", "version": 1, "runtime": "shell",
            "timeout_ms": 30000, "concurrency": null, "display_name": null});
        let text = table(std::slice::from_ref(&plain)).render(None);
        assert!(!text.contains("DISPLAY NAME"), "{text}");
        let mpcs = serde_json::json!({"name": "0190b7c2-1234-7abc-8def-0123456789ab",
            "version": 1, "runtime": "pickle", "timeout_ms": 30000, "concurrency": 2,
            "display_name": "square"});
        let text = table(&[plain, mpcs]).render(None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME  "), "{text}");
        assert!(lines[0].contains("DISPLAY NAME"), "{text}");
        assert!(lines[1].starts_with("f  "), "{text}");
        assert!(
            lines[2].starts_with("0190b7c2-1234-7abc-8def-0123456789ab  square"),
            "{text}"
        );
        let column = lines[0].find("DISPLAY NAME");
        assert_eq!(lines[1].find('-'), column, "{text}");
    }
}
