//! `faasd bench --csv FILE`: one row of raw figures per run, appended; the header is written
//! when the file is new or empty. A figure that was not measured is an empty field.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{BenchArgs, Report};
use crate::client::Client;

/// The columns, in order.
pub(super) const HEADER: [&str; 17] = [
    "label",
    "runtime",
    "functions",
    "connections",
    "sync_connections",
    "payload_bytes",
    "tasks",
    "seconds",
    "tasks_per_second",
    "sync_calls",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "cold_start_ms",
    "workers",
    "slots",
    "unix_time",
];

/// The row of a run: its settings and figures, and the server's workers and slots as
/// `GET /healthz` gives them at the end (empty when it does not answer).
pub(super) async fn row(client: &Client, args: &BenchArgs, report: &Report) -> Vec<String> {
    let health: Option<serde_json::Value> =
        async { client.get("/healthz").await.ok()?.json().ok() }.await;
    let health_field = |key: &str| {
        health
            .as_ref()
            .and_then(|h| h[key].as_u64())
            .map_or_else(String::new, |n| n.to_string())
    };
    let opt = |value: Option<f64>, decimals: usize| {
        value.map_or_else(String::new, |v| format!("{v:.decimals$}"))
    };
    let throughput = report.throughput.as_ref();
    let latency = report.latency.as_ref();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    vec![
        report.label.clone(),
        args.runtime.clone(),
        report.functions.to_string(),
        args.connections.to_string(),
        args.sync_connections.max(1).to_string(),
        report.payload_bytes.to_string(),
        throughput.map_or(0, |t| t.tasks).to_string(),
        opt(throughput.map(|t| t.seconds), 3),
        opt(throughput.map(|t| t.tasks_per_second), 1),
        latency.map_or(0, |l| l.calls).to_string(),
        opt(latency.map(|l| l.p50_ms), 3),
        opt(latency.map(|l| l.p99_ms), 3),
        opt(latency.map(|l| l.max_ms), 3),
        opt(report.first_call.as_ref().map(|f| f.load_ms), 1),
        health_field("workers"),
        health_field("slots"),
        unix_time.to_string(),
    ]
}

/// Appends `row` to the CSV file at `path`, after the header when the file is new or empty.
pub(super) fn append(path: &Path, row: &[String]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} to append the figures", path.display()))?;
    let empty = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len()
        == 0;
    let mut text = String::new();
    if empty {
        text.push_str(&line(HEADER.iter().map(|h| h.to_string())));
    }
    text.push_str(&line(row.iter().cloned()));
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot append the figures to {}", path.display()))
}

/// One CSV line: fields with a comma, a quote or a line break are quoted (RFC 4180).
fn line(fields: impl Iterator<Item = String>) -> String {
    let quoted: Vec<String> = fields
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect();
    quoted.join(",") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        let fields = ["plain", "a,b", "say \"hi\"", ""].map(String::from);
        assert_eq!(
            line(fields.into_iter()),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\n"
        );
    }
}
