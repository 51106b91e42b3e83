//! `faasd tasks`: list the tasks the caller may read, newest first, as an aligned table or as
//! the JSON page of `GET /v1/tasks`.

use super::{ClientArgs, exit};
use crate::client::{Client, segment};

/// List tasks, newest first.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// Only tasks of this function.
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// Only tasks in this status: QUEUED, RUNNING, COMPLETED or FAILED.
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// Only tasks created within this long: `10` (seconds), `500ms`, `10s`, `2m`, `1h`.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// The most tasks to list (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Go on from where an earlier listing stopped (its `next_cursor`).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print `{"tasks": [...], "next_cursor": ...}` as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd tasks`: reads pages until `--limit` tasks are listed or none are left.
pub async fn run(args: TasksArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let limit = args.limit as usize;
    let mut tasks = Vec::new();
    let mut cursor = args.cursor.clone();
    loop {
        let path = page_path(&args, limit.saturating_sub(tasks.len()), cursor.as_deref());
        let page = fetch_page(&client, &path).await?;
        tasks.extend(page.0);
        cursor = page.1;
        if cursor.is_none() || tasks.len() >= limit {
            break;
        }
    }
    if args.json {
        let page = serde_json::json!({"tasks": tasks, "next_cursor": cursor});
        println!("{page}");
        return Ok(exit::OK);
    }
    print!("{}", table(&tasks));
    if let Some(cursor) = cursor {
        eprintln!("more tasks: add --cursor {cursor}");
    }
    Ok(exit::OK)
}

/// The request for one page of at most `limit` tasks after `cursor`.
fn page_path(args: &TasksArgs, limit: usize, cursor: Option<&str>) -> String {
    let mut path = format!("/v1/tasks?limit={}", limit.max(1));
    let params = [
        ("function", args.function.as_deref()),
        ("status", args.status.as_deref()),
        ("since", args.since.as_deref()),
        ("cursor", cursor),
    ];
    for (key, value) in params {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={}", segment(value)));
        }
    }
    path
}

/// One page: its tasks and its `next_cursor`.
async fn fetch_page(
    client: &Client,
    path: &str,
) -> anyhow::Result<(Vec<serde_json::Value>, Option<String>)> {
    let mut page: serde_json::Value = client.get(path).await?.ok()?.json()?;
    let tasks = match page["tasks"].take() {
        serde_json::Value::Array(tasks) => tasks,
        _ => Vec::new(),
    };
    let next = page["next_cursor"].as_str().map(str::to_owned);
    Ok((tasks, next))
}

/// The tasks as an aligned table: id, function, status, created, duration.
fn table(tasks: &[serde_json::Value]) -> String {
    let header = ["ID", "FUNCTION", "STATUS", "CREATED", "DURATION"].map(str::to_owned);
    let rows: Vec<[String; 5]> = tasks
        .iter()
        .map(|t| {
            let text = |key: &str| t[key].as_str().unwrap_or("-").to_owned();
            let duration = t["run_ms"].as_f64().map_or_else(|| "-".into(), format_ms);
            [
                text("id"),
                text("function"),
                text("status"),
                text("created_at"),
                duration,
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A run time for people: `12.3ms` under a second, `4.56s` from there.
fn format_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let tasks = [
            serde_json::json!({"id": "a", "function": "long-name", "status": "COMPLETED",
                "created_at": "t1", "run_ms": 12.34}),
            serde_json::json!({"id": "b", "function": "f", "status": "RUNNING",
                "created_at": "t2", "run_ms": null}),
        ];
        let text = table(&tasks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  FUNCTION   STATUS     CREATED  DURATION");
        assert_eq!(lines[1], "a   long-name  COMPLETED  t1       12.3ms");
        assert_eq!(lines[2], "b   f          RUNNING    t2       -");
        assert_eq!(format_ms(4560.0), "4.56s");
    }
}
