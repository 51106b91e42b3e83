//! `faasd watch`: print the server's live events (`GET /v1/events`) as they happen, one line
//! each, for people or (with `--json`) for scripts.
//!
//! A watcher the server dropped for falling behind says so on stderr and reconnects (the
//! events it missed are gone). It exits 0 when the server ends the stream (it is stopping),
//! and 3 when the server cannot be reached, at the start or at a reconnect.

use anyhow::Context;

use super::{ClientArgs, exit};
use crate::client::{Client, ServerEvent, segment};
use crate::units::{now_ms, rfc3339};

/// Print live task, worker and function events.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only the events of this function (and no worker events).
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// Also print each worker's health report (one per worker and heartbeat).
    #[arg(long)]
    pub health: bool,
    /// Print each event as one line of JSON: `{"event": TYPE, "data": {...}}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd watch` until the server ends the stream.
pub async fn run(args: WatchArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    let path = match &args.function {
        Some(name) => format!("/v1/events?function={}", segment(name)),
        None => "/v1/events".to_string(),
    };
    loop {
        match watch_once(&client, &path, &args).await? {
            Ended::Closed => return Ok(exit::OK),
            Ended::Dropped(message) => {
                eprintln!("faasd: {message}; reconnecting");
            }
        }
    }
}

/// How one connection's stream ended.
enum Ended {
    /// The server closed it.
    Closed,
    /// The server dropped this watcher for falling behind, with its notice.
    Dropped(String),
}

/// Opens the stream and prints its events until it ends.
async fn watch_once(client: &Client, path: &str, args: &WatchArgs) -> anyhow::Result<Ended> {
    let mut stream = client.events(path).await?;
    while let Some(event) = stream.next().await.context("reading the event stream")? {
        let data: serde_json::Value = serde_json::from_str(&event.data)
            .with_context(|| format!("the server sent an event that is not JSON: {event:?}"))?;
        if event.event == "dropped" {
            let message = data["message"].as_str().unwrap_or("dropped by the server");
            return Ok(Ended::Dropped(message.to_string()));
        }
        if data["kind"] == "health" && !args.health {
            continue;
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "event": event.event, "data": data })
            );
        } else {
            println!("{} {}", clock(now_ms()), line(&event, &data));
        }
    }
    Ok(Ended::Closed)
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
fn clock(ms: u64) -> String {
    let stamp = rfc3339(ms);
    stamp.get(11..19).unwrap_or(&stamp).to_string()
}

/// The human line of an event (without its time).
fn line(event: &ServerEvent, data: &serde_json::Value) -> String {
    let s = |key: &str| match &data[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    match event.event.as_str() {
        "task" => {
            let mut out = format!("task {} {} {}", s("id"), s("function"), s("status"));
            // Whole milliseconds, as before; a run under one (`run_us`, from servers that send
            // it) with two decimals rather than as 0.
            match (data["run_us"].as_u64(), data["run_ms"].as_u64()) {
                (Some(us), _) if us < 1000 => {
                    out.push_str(&format!(" {:.2} ms", us as f64 / 1000.0))
                }
                (_, Some(ms)) => out.push_str(&format!(" {ms} ms")),
                _ => {}
            }
            if !data["reason"].is_null() {
                out.push_str(&format!(" {}: {}", s("reason"), s("message")));
            }
            if let Some(worker) = data["worker"].as_str() {
                out.push_str(&format!(" (worker {worker})"));
            }
            out
        }
        "worker" if data["kind"] == "health" => format!(
            "worker health {} cpu {}% mem {}/{} MiB load {}",
            s("name"),
            s("cpu_percent"),
            data["memory_used_bytes"].as_u64().unwrap_or(0) >> 20,
            data["memory_total_bytes"].as_u64().unwrap_or(0) >> 20,
            s("load1"),
        ),
        "worker" => format!(
            "worker {} {} {} {} slots {}",
            s("kind"),
            s("name"),
            s("address"),
            s("slots"),
            s("mode")
        ),
        "function" => format!("function {} {} v{}", s("kind"), s("name"), s("version")),
        other => format!("{other} {}", event.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: serde_json::Value) -> String {
        let event = ServerEvent {
            event: kind.into(),
            data: data.to_string(),
        };
        line(&event, &data)
    }

    #[test]
    fn events_print_as_one_readable_line() {
        let task = serde_json::json!({"id": "abc", "function": "f", "status": "COMPLETED",
            "reason": null, "message": null, "run_ms": 3});
        assert_eq!(event("task", task), "task abc f COMPLETED 3 ms");
        let quick = serde_json::json!({"id": "abc", "function": "f", "status": "COMPLETED",
            "reason": null, "message": null, "run_ms": 0, "run_us": 52});
        assert_eq!(event("task", quick), "task abc f COMPLETED 0.05 ms");
        let failed = serde_json::json!({"id": "abc", "function": "f", "status": "FAILED",
            "reason": "timeout", "message": "too slow", "run_ms": null});
        assert_eq!(event("task", failed), "task abc f FAILED timeout: too slow");
        let ran = serde_json::json!({"id": "abc", "function": "f", "status": "RUNNING",
            "reason": null, "message": null, "run_ms": null, "worker": "w1"});
        assert_eq!(event("task", ran), "task abc f RUNNING (worker w1)");
        let registered = serde_json::json!({"kind": "registered", "name": "f", "version": 2});
        assert_eq!(event("function", registered), "function registered f v2");
        let joined = serde_json::json!({"kind": "joined", "name": "w", "address": "local",
            "slots": 4, "mode": "push"});
        assert_eq!(
            event("worker", joined),
            "worker joined w local 4 slots push"
        );
        assert_eq!(clock(0), "00:00:00");
    }
}
