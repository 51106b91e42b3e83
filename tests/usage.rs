//! Usage records end to end: each task's CPU time and peak memory (cold calls in and out of the
//! sandbox, warm calls as the difference over the call), `GET /v1/usage` and `faasd usage`
//! summing them, and the totals surviving a restart.

mod common;

use common::{Server, expect_error, register, run, text};
use faasd::client::Client;

/// Burns CPU in the shell itself (no child processes) for a fixed amount of work.
const BUSY_SHELL: &str = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done";

/// Holds about 48 MiB in a shell variable.
const BIG_SHELL: &str = "x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo ${#x}";

/// A warm handler: `heavy` burns 0.3 s of its own CPU time, anything else does nothing.
const WARM_PY: &str = r#"
import time

def handle(payload):
    if payload == b"heavy":
        start = time.process_time()
        while time.process_time() - start < 0.3:
            pass
    return "ok"
"#;

fn ms(task: &serde_json::Value, key: &str) -> f64 {
    task[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {task}"))
}

fn bytes(task: &serde_json::Value) -> u64 {
    task["peak_memory_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no peak_memory_bytes in {task}"))
}

async fn register_ok(client: &Client, name: &str, script: &str, extra: serde_json::Value) {
    let answer = register(client, name, script, extra).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

/// A cold call's CPU time and peak memory are its process tree's, with and without the sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_call_records_its_cpu_time_and_peak_memory() {
    for sandbox in ["auto", "none"] {
        let server = Server::start(&["--local-workers", "1", "--sandbox", sandbox]);
        let client = server.client();
        register_ok(&client, "busy", BUSY_SHELL, serde_json::json!({})).await;
        register_ok(&client, "big", BIG_SHELL, serde_json::json!({})).await;

        let busy = run(&client, "busy", b"").await;
        assert_eq!(busy.task["status"], "COMPLETED", "{sandbox}: {}", busy.task);
        let (cpu, wall) = (ms(&busy.task, "cpu_ms"), ms(&busy.task, "run_ms"));
        // One shell counting to 200,000 spends tens of milliseconds at the very least, and a
        // single thread cannot use more CPU than the wall-clock time it ran.
        assert!(cpu >= 20.0, "{sandbox}: cpu {cpu} ms of {}", busy.task);
        assert!(
            cpu <= wall + 5.0,
            "{sandbox}: cpu {cpu} ms over wall {wall} ms"
        );
        let peak = bytes(&busy.task);
        assert!(
            (256 << 10..256 << 20).contains(&peak),
            "{sandbox}: peak {peak}"
        );

        let big = run(&client, "big", b"").await;
        assert_eq!(big.result.trim(), "50000000", "{sandbox}: {}", big.task);
        let peak = bytes(&big.task);
        assert!(
            (45 << 20..512 << 20).contains(&peak),
            "{sandbox}: peak {peak} of {}",
            big.task
        );
    }
}

/// Work moved into a background process is metered too: the sandbox ends what a call leaves
/// running and counts it before it answers. The background shell does the same counted work
/// as `busy` before the function may end, then spins until it is killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_call_counts_the_cpu_of_what_it_left_running() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "auto"]);
    let client = server.client();
    let script = "(i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; touch /tmp/half; \
                  while :; do :; done) & \
                  while [ ! -e /tmp/half ]; do sleep 0.01; done; echo left";
    register_ok(&client, "leaver", script, serde_json::json!({})).await;
    register_ok(&client, "busy", BUSY_SHELL, serde_json::json!({})).await;
    let call = run(&client, "leaver", b"").await;
    assert_eq!(call.task["status"], "COMPLETED", "{}", call.task);
    assert_eq!(call.result.trim(), "left");
    // The same counted work done in the foreground, for scale.
    let busy = run(&client, "busy", b"").await;
    let (left, counted) = (ms(&call.task, "cpu_ms"), ms(&busy.task, "cpu_ms"));
    assert!(
        left >= 0.8 * counted,
        "cpu {left} ms with the work in the background, {counted} ms in the foreground"
    );
}

/// A warm call's CPU time is the executor's increase over that call, not its total; its peak
/// memory is the executor's peak.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_call_records_the_cpu_time_of_that_call_only() {
    for sandbox in ["auto", "none"] {
        let server = Server::start(&["--local-workers", "1", "--sandbox", sandbox]);
        let client = server.client();
        let settings = serde_json::json!({"runtime": "python", "timeout": "10s"});
        register_ok(&client, "warm", WARM_PY, settings).await;

        let heavy = run(&client, "warm", b"heavy").await;
        assert_eq!(
            heavy.task["status"], "COMPLETED",
            "{sandbox}: {}",
            heavy.task
        );
        let light = run(&client, "warm", b"light").await;
        assert_eq!(light.task["cold_start"], false, "{sandbox}: {}", light.task);
        let (heavy_cpu, light_cpu) = (ms(&heavy.task, "cpu_ms"), ms(&light.task, "cpu_ms"));
        // The heavy call burned 300 ms of the executor's CPU (clock ticks are 10 ms at most).
        assert!(heavy_cpu >= 280.0, "{sandbox}: heavy {heavy_cpu} ms");
        // The light one ran on the same executor: its own share, far under the total.
        assert!(light_cpu < 150.0, "{sandbox}: light {light_cpu} ms");
        let peak = bytes(&light.task);
        assert!(
            (1 << 20..512 << 20).contains(&peak),
            "{sandbox}: peak {peak}"
        );
    }
}

/// What `GET /v1/usage` should say for these tasks: per function, (calls, failures).
fn expected(tasks: &[serde_json::Value]) -> Vec<(String, u64, u64, f64, f64)> {
    let mut by_function: std::collections::BTreeMap<String, (u64, u64, f64, f64)> =
        Default::default();
    for t in tasks {
        let e = by_function
            .entry(t["function"].as_str().expect("function").to_owned())
            .or_default();
        e.0 += 1;
        e.1 += u64::from(t["status"] == "FAILED");
        e.2 += ms(t, "cpu_ms") / 1000.0;
        e.3 += bytes(t) as f64 / (1u64 << 30) as f64 * ms(t, "run_ms") / 1000.0;
    }
    by_function
        .into_iter()
        .map(|(f, (c, x, cpu, gb))| (f, c, x, cpu, gb))
        .collect()
}

async fn usage(client: &Client, query: &str) -> serde_json::Value {
    let answer = client
        .get(&format!("/v1/usage{query}"))
        .await
        .expect("usage request");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    answer.json().expect("usage json")
}

fn assert_usage_matches(usage: &serde_json::Value, tasks: &[serde_json::Value]) {
    let rows = usage["rows"].as_array().expect("rows");
    let want = expected(tasks);
    assert_eq!(rows.len(), want.len(), "{usage}");
    for (row, (function, calls, failures, cpu, gb)) in rows.iter().zip(&want) {
        assert_eq!(row["function"], function.as_str(), "{usage}");
        assert_eq!(row["calls"], *calls, "{usage}");
        assert_eq!(row["failures"], *failures, "{usage}");
        let got_cpu = row["cpu_seconds"].as_f64().expect("cpu_seconds");
        assert!((got_cpu - cpu).abs() < 1e-3, "{usage}: cpu {cpu}");
        let got_gb = row["gb_seconds"].as_f64().expect("gb_seconds");
        assert!((got_gb - gb).abs() < 1e-6 + gb * 1e-3, "{usage}: gb {gb}");
    }
}

/// `GET /v1/usage` and `faasd usage` sum the tasks, and keep their totals across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn usage_sums_the_tasks_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start_on(&data, &["--local-workers", "2"]);
    let client = server.client();
    register_ok(&client, "ok", "cat", serde_json::json!({})).await;
    register_ok(&client, "bad", "echo no >&2; exit 3", serde_json::json!({})).await;
    let mut tasks = Vec::new();
    for (name, n) in [("ok", 3), ("bad", 2)] {
        for _ in 0..n {
            tasks.push(run(&client, name, b"x").await.task);
        }
    }

    let by_function = usage(&client, "").await;
    assert_eq!(by_function["by"], "function");
    assert_eq!(by_function["since"], "24h");
    assert_usage_matches(&by_function, &tasks);
    let by_user = usage(&client, "?by=user&since=all").await;
    let rows = by_user["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{by_user}");
    assert_eq!(rows[0]["user"], "(none)", "{by_user}");
    assert_eq!(
        (rows[0]["calls"].as_u64(), rows[0]["failures"].as_u64()),
        (Some(5), Some(2))
    );

    for bad in ["?by=team", "?since=yesterday"] {
        let answer = client.get(&format!("/v1/usage{bad}")).await.expect("usage");
        expect_error(&answer, 400, "invalid_request");
    }

    let csv = server.cli(&["usage", "--csv", "--since", "all"]);
    assert!(csv.status.success(), "{}", text(&csv.stderr));
    let lines: Vec<String> = text(&csv.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        lines[0],
        "function,calls,failures,wall_seconds,cpu_seconds,gb_seconds"
    );
    assert!(lines[1].starts_with("bad,2,2,"), "{lines:?}");
    assert!(lines[2].starts_with("ok,3,0,"), "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let json = server.cli(&["usage", "--json", "--by", "function"]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_usage_matches(&printed, &tasks);
    let table = server.cli(&["usage", "--by", "user"]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["USER", "CALLS", "FAILURES", "WALL", "S", "CPU", "S", "GB-S"]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["(none)", "5", "2"], "{table}");
    let refused = server.cli(&["usage", "--by", "team"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));

    server.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    let server = Server::start_on(&data, &["--local-workers", "1"]);
    let after = usage(&server.client(), "?since=all").await;
    assert_usage_matches(&after, &tasks);
}
