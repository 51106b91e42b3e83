//! `GET /metrics`: a server runs tasks (completed, failed, cold-started, running, queued), and
//! its scrape is parsed by the reference parser, the Python `prometheus_client` package's
//! OpenMetrics parser (installed in the project's test virtualenv by
//! `scripts/python-venv.sh`), and the families, labels and values checked.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{Server, register, run, submit, text, wait_running, wait_workers};
use faasd::client::Client;

/// One sample as the parser read it: its name, labels and value.
#[derive(Debug, Clone, serde::Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One metric family as the parser read it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<Sample>,
}

/// Reads OpenMetrics text on stdin with the reference parser and prints its families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

/// The test virtualenv's Python, with `prometheus_client` installed (made if need be).
fn parser_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/test-venv");
    let made = Command::new(root.join("scripts/python-venv.sh"))
        .arg(&venv)
        .arg("prometheus-client")
        .status()
        .expect("run scripts/python-venv.sh");
    assert!(made.success(), "scripts/python-venv.sh failed: {made}");
    venv.join("bin/python")
}

/// Parses a scrape with the reference parser (which refuses text that is not valid
/// OpenMetrics).
fn parse(scrape: &str) -> Vec<Family> {
    let mut child = Command::new(parser_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the parser refused the scrape: {}\n{scrape}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}

/// The families of a scrape by name, checking the answer's status and content type.
async fn scrape(client: &Client) -> BTreeMap<String, Family> {
    let answer = client.get("/metrics").await.expect("scrape");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let content_type = answer.headers.get("content-type").expect("content type");
    assert_eq!(
        content_type.to_str().expect("ascii"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    parse(&text(&answer.body))
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect()
}

/// The value of the sample `name{labels}` (exactly those labels) in `family`.
fn value(
    families: &BTreeMap<String, Family>,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .get(family)?
        .samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_parses_and_counts_what_the_server_did() {
    let server = Server::start(&[]);
    let client = server.client();
    let local = wait_workers(&client, 1).await;
    let worker = local[0]["name"].as_str().expect("worker name").to_string();
    let slots = local[0]["slots"].as_u64().expect("slots");
    for (name, script, extra) in [
        ("f", "cat", serde_json::json!({})),
        ("bad", "echo no >&2; exit 3", serde_json::json!({})),
        (
            "slow",
            "sleep 60",
            serde_json::json!({"concurrency": 1, "timeout": 120}),
        ),
    ] {
        let answer = register(&client, name, script, extra).await;
        assert_eq!(answer.status, 201, "{}", text(&answer.body));
    }
    for payload in [b"1", b"2", b"3"] {
        assert_eq!(run(&client, "f", payload).await.task["status"], "COMPLETED");
    }
    assert_eq!(run(&client, "bad", b"").await.task["status"], "FAILED");
    // One `slow` task runs (and keeps running past the test), the other waits for its
    // concurrency unit.
    let first = submit(&client, "slow", b"").await;
    wait_running(&client, &first).await;
    submit(&client, "slow", b"").await;
    let missing = client.get("/no/such/route").await.expect("request");
    assert_eq!(missing.status, 404);

    let m = scrape(&client).await;
    let tasks = &m["faasd_tasks"];
    assert_eq!(tasks.kind, "counter");
    let total = |f: &str, s: &str| {
        value(
            &m,
            "faasd_tasks",
            "faasd_tasks_total",
            &[("function", f), ("status", s)],
        )
    };
    assert_eq!(total("f", "completed"), Some(3.0), "{tasks:?}");
    assert_eq!(total("f", "failed"), None, "{tasks:?}");
    assert_eq!(total("bad", "failed"), Some(1.0), "{tasks:?}");
    let f = [("function", "f")];
    let cold = value(&m, "faasd_cold_starts", "faasd_cold_starts_total", &f);
    assert_eq!(
        cold,
        Some(3.0),
        "every call of a shell function starts a process"
    );
    for histogram in ["faasd_task_run_seconds", "faasd_task_queue_wait_seconds"] {
        assert_eq!(m[histogram].kind, "histogram");
        let count = value(&m, histogram, &format!("{histogram}_count"), &f);
        assert_eq!(count, Some(3.0), "{histogram}");
        let inf = [("function", "f"), ("le", "+Inf")];
        assert_eq!(
            value(&m, histogram, &format!("{histogram}_bucket"), &inf),
            Some(3.0)
        );
    }
    let bad_runs = value(
        &m,
        "faasd_task_run_seconds",
        "faasd_task_run_seconds_count",
        &[("function", "bad")],
    );
    assert_eq!(bad_runs, Some(1.0));

    let slow = [("function", "slow")];
    assert_eq!(m["faasd_tasks_queued"].kind, "gauge");
    assert_eq!(
        value(&m, "faasd_tasks_queued", "faasd_tasks_queued", &slow),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "faasd_tasks_running", "faasd_tasks_running", &slow),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "faasd_tasks_queued", "faasd_tasks_queued", &f),
        Some(0.0)
    );

    let w = [("worker", worker.as_str())];
    assert_eq!(
        value(&m, "faasd_worker_slots", "faasd_worker_slots", &w),
        Some(slots as f64)
    );
    assert_eq!(
        value(&m, "faasd_worker_slots_used", "faasd_worker_slots_used", &w),
        Some(1.0)
    );
    // The machine figures appear once the worker has sent a health report (a heartbeat that
    // carries them); before that the families have no samples and are left out.
    if let Some(cpu) = value(
        &m,
        "faasd_worker_cpu_percent",
        "faasd_worker_cpu_percent",
        &w,
    ) {
        assert_eq!(m["faasd_worker_cpu_percent"].kind, "gauge");
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        let total = "faasd_worker_memory_total_bytes";
        assert!(value(&m, total, total, &w).is_some_and(|b| b > 0.0));
    }

    let commits = value(
        &m,
        "faasd_store_commit_seconds",
        "faasd_store_commit_seconds_count",
        &[],
    );
    assert!(commits.is_some_and(|c| c >= 1.0), "{commits:?}");
    let writes = value(
        &m,
        "faasd_store_commit_writes",
        "faasd_store_commit_writes_sum",
        &[],
    );
    // At least the registrations and, per task, its QUEUED, RUNNING and end records.
    assert!(writes.is_some_and(|w| w >= 3.0 + 4.0 * 3.0), "{writes:?}");

    let http = |method: &str, route: &str, status: &str| {
        value(
            &m,
            "faasd_http_requests",
            "faasd_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", "/v1/functions", "201"), Some(3.0));
    assert_eq!(
        http("POST", "/v1/functions/{name}/invoke", "202"),
        Some(6.0)
    );
    assert_eq!(http("GET", "unmatched", "404"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_open_serves_a_scraper_without_a_token() {
    let server = Server::start(&["--metrics-open"]);
    let local = server.client();
    let body = serde_json::json!({"name": "root", "role": "admin"}).to_string();
    let added = local
        .post("/v1/users", "application/json", Bytes::from(body))
        .await
        .expect("add user");
    assert_eq!(added.status, 201, "{}", text(&added.body));
    // Users exist: other routes need a token now, the metrics still do not.
    let refused = local.get("/v1/workers").await.expect("workers");
    assert_eq!(refused.status, 401);
    let answer = local.get("/metrics").await.expect("scrape");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let families = parse(&text(&answer.body));
    assert!(families.iter().any(|f| f.name == "faasd_worker_slots"));
}
