//! `faasd usage`: what tasks used, per user or per function, as a table, JSON or CSV.

use super::table::{Align, Table};
use super::{ClientArgs, exit};
use crate::client::segment;

/// What the rows are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageBy {
    /// One row per user (admins see every user, others themselves).
    User,
    /// One row per function.
    Function,
}

impl UsageBy {
    fn as_str(self) -> &'static str {
        match self {
            UsageBy::User => "user",
            UsageBy::Function => "function",
        }
    }
}

/// Show usage: calls, failures, wall and CPU seconds, and GB-seconds of memory.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Sum per user or per function.
    #[arg(long, value_enum, default_value = "function")]
    pub by: UsageBy,
    /// How far back to look: a duration such as `24h` or `7d`, or `all`. Usage is kept per
    /// hour, so the hour this falls in counts whole.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Print the JSON answer of `GET /v1/usage`.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV with a header line.
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The columns of a row, after its key, as the API names them.
const FIELDS: [&str; 5] = [
    "calls",
    "failures",
    "wall_seconds",
    "cpu_seconds",
    "gb_seconds",
];

/// Runs `faasd usage`.
pub async fn run(args: UsageArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let by = args.by.as_str();
    let path = format!("/v1/usage?by={by}&since={}", segment(&args.since));
    let answer = client.get(&path).await?.ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(exit::OK);
    }
    let usage: serde_json::Value = answer.json()?;
    let rows = usage["rows"].as_array().cloned().unwrap_or_default();
    if args.csv {
        print!("{}", csv(by, &rows));
    } else {
        table(by, &rows).print();
    }
    Ok(exit::OK)
}

/// A row's field as text (a string as is, anything else as JSON).
fn field(row: &serde_json::Value, key: &str) -> String {
    match &row[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The rows as CSV: a header line (the key, then the API's field names), one line per row.
fn csv(by: &str, rows: &[serde_json::Value]) -> String {
    let mut out = format!("{by},{}\n", FIELDS.join(","));
    for row in rows {
        let mut cells = vec![csv_cell(&field(row, by))];
        cells.extend(FIELDS.iter().map(|f| field(row, f)));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// A CSV cell, quoted when it holds a comma, a quote or a line break.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The rows as a table for people.
fn table(by: &str, rows: &[serde_json::Value]) -> Table {
    let number = |row: &serde_json::Value, key: &str| row[key].as_f64().unwrap_or(0.0);
    let key = by.to_uppercase();
    let right = Align::Right;
    let mut table = Table::new(&[
        (key.as_str(), Align::Left),
        ("CALLS", right),
        ("FAILURES", right),
        ("WALL S", right),
        ("CPU S", right),
        ("GB-S", right),
    ]);
    for row in rows {
        table.row(vec![
            field(row, by),
            field(row, "calls"),
            field(row, "failures"),
            format!("{:.3}", number(row, "wall_seconds")),
            format!("{:.3}", number(row, "cpu_seconds")),
            format!("{:.6}", number(row, "gb_seconds")),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<serde_json::Value> {
        vec![serde_json::json!({
            "function": "a,b", "calls": 3, "failures": 1,
            "wall_seconds": 1.5, "cpu_seconds": 0.25, "gb_seconds": 0.001
        })]
    }

    #[test]
    fn csv_has_a_header_and_quotes_what_needs_it() {
        assert_eq!(
            csv("function", &rows()),
            "function,calls,failures,wall_seconds,cpu_seconds,gb_seconds\n\"a,b\",3,1,1.5,0.25,0.001\n"
        );
    }

    #[test]
    fn the_table_names_its_columns() {
        let text = table("function", &rows()).render(None);
        let header: Vec<&str> = text
            .lines()
            .next()
            .expect("header")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "FUNCTION", "CALLS", "FAILURES", "WALL", "S", "CPU", "S", "GB-S"
            ]
        );
        assert!(
            text.lines().nth(1).expect("row").starts_with("a,b "),
            "{text}"
        );
    }
}
