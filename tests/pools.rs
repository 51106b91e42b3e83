//! Warm pools cannot sink a worker: `min_warm` is capped by the worker's slots and refused
//! over `--max-min-warm`, pre-starts leave the worker answering and heartbeating, and a removed
//! function's executors stop within 2 s. Runs in the default sandbox.
//!
//! Executors are counted on the host: a `python` executor is the process whose command line
//! runs the harness and whose environment holds the function's own marker variable.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Server, eventually, expect_error, invoke, register, text, wait_workers};
use faasd::client::Client;

const HANDLER: &str = "def handle(payload):\n    return payload\n";

/// Registers a `python` function whose executors carry `POOLS_MARKER=<marker>`.
async fn register_marked(client: &Client, name: &str, marker: &str, min_warm: u32) {
    let settings = serde_json::json!({
        "runtime": "python",
        "min_warm": min_warm,
        "env": {"POOLS_MARKER": marker},
    });
    // A distinct body per function: each has its own bundle.
    let code = format!("{HANDLER}# {marker}\n");
    let answer = register(client, name, &code, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

/// The pids of the live executors whose environment holds `POOLS_MARKER=<marker>`.
fn executors(marker: &str) -> HashSet<u32> {
    let wanted = format!("POOLS_MARKER={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).ok();
            let runs_harness = read("cmdline").is_some_and(|c| text(&c).contains("harness"));
            let marked = read("environ")
                .is_some_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()));
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            runs_harness && marked && !zombie
        })
        .collect()
}

/// A marker no other test run uses.
fn marker(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[tokio::test]
async fn min_warm_1000_on_two_slots_starts_two_and_others_still_answer() {
    let server = Server::start(&["--local-workers", "2", "--max-min-warm", "1000"]);
    let client = server.client();
    let big = marker("big");
    register_marked(&client, "big", &big, 1000).await;
    let two = || async {
        let n = executors(&big).len();
        if n == 2 { Ok(n) } else { Err(n) }
    };
    eventually("2 warm executors of `big`", Duration::from_secs(20), two).await;
    // It stays at the worker's two slots while the pool keeps topping up.
    let watch_until = Instant::now() + Duration::from_millis(1500);
    let mut most = 0;
    while Instant::now() < watch_until {
        most = most.max(executors(&big).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 2, "min_warm 1000 on 2 slots kept {most} executors");
    // The workers report them with their heartbeats, and the API shows the count.
    let reported = || async {
        let answer = client
            .get("/v1/functions/big")
            .await
            .map_err(|e| e.to_string())?;
        let view: serde_json::Value = answer.json().map_err(|e| e.to_string())?;
        let listed = client
            .get("/v1/functions")
            .await
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = listed.json().map_err(|e| e.to_string())?;
        let in_list = list
            .as_array()
            .and_then(|l| l.iter().find(|f| f["name"] == "big"))
            .map(|f| f["warm_executors"].clone());
        match (
            view["warm_executors"].as_u64(),
            in_list.and_then(|v| v.as_u64()),
        ) {
            (Some(2), Some(2)) => Ok(()),
            other => Err(format!("warm_executors {other:?}")),
        }
    };
    eventually(
        "warm_executors 2 in the API",
        Duration::from_secs(10),
        reported,
    )
    .await;
    // An unrelated function answers promptly.
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let started = Instant::now();
    let answer = invoke(&client, "echo", b"still here").await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body), "still here");
    assert!(
        took < Duration::from_secs(2),
        "the unrelated call took {took:?}"
    );
}

#[tokio::test]
async fn min_warm_over_the_maximum_is_refused() {
    let server = Server::start(&["--local-workers", "1", "--max-min-warm", "3"]);
    let client = server.client();
    let settings = serde_json::json!({"runtime": "python", "min_warm": 4});
    let answer = register(&client, "greedy", HANDLER, settings).await;
    let body = expect_error(&answer, 400, "invalid_request");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("min_warm"), "{message}");
    assert!(message.contains("--max-min-warm"), "{message}");
    let settings = serde_json::json!({"runtime": "python", "min_warm": 3});
    let answer = register(&client, "modest", HANDLER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

#[tokio::test]
async fn the_default_maximum_is_64() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let settings = serde_json::json!({"runtime": "python", "min_warm": 1000});
    let answer = register(&client, "greedy", HANDLER, settings).await;
    let body = expect_error(&answer, 400, "invalid_request");
    assert!(text(&answer.body).contains("64"), "{body}");
}

#[tokio::test]
async fn deleting_a_function_stops_its_executors_within_2s() {
    let server = Server::start(&["--local-workers", "2"]);
    let client = server.client();
    let gone = marker("gone");
    register_marked(&client, "gone", &gone, 2).await;
    let two = || async {
        let n = executors(&gone).len();
        if n == 2 { Ok(()) } else { Err(n) }
    };
    eventually("2 warm executors of `gone`", Duration::from_secs(20), two).await;
    let answer = client.delete("/v1/functions/gone").await.expect("delete");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let deleted = Instant::now();
    let deadline = deleted + Duration::from_secs(2);
    let mut left = executors(&gone);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = executors(&gone);
    }
    assert!(
        left.is_empty(),
        "{} executors still alive 2 s after the delete: {left:?}",
        left.len()
    );
    // Nothing starts them again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(executors(&gone).is_empty(), "executors came back");
}

#[tokio::test]
async fn the_heartbeat_keeps_advancing_while_executors_start() {
    let server = Server::start(&["--local-workers", "2"]);
    let client = server.client();
    let first = wait_workers(&client, 1).await;
    let worker_id = first[0]["id"].clone();
    // More ready executors wanted than the idle cap keeps: the pool starts executors all along.
    let busy = marker("busy");
    for i in 0..8 {
        register_marked(&client, &format!("busy{i}"), &busy, 2).await;
    }
    let mut beats = HashSet::new();
    let mut started = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let listed = common::workers(&client).await;
        assert_eq!(listed.len(), 1, "the worker left: {listed:?}");
        assert_eq!(listed[0]["id"], worker_id, "the worker was replaced");
        beats.insert(listed[0]["last_heartbeat"].to_string());
        started = started.max(executors(&busy).len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started >= 2, "no executor started ({started})");
    // One beat a second: at least three distinct beats in four seconds.
    assert!(beats.len() >= 3, "the heartbeat stalled: {beats:?}");
}
