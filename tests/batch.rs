//! End-to-end tests of batch invoke (`POST /v1/functions/{name}/batch`) and of waiting for many
//! tasks at once (`POST /v1/tasks/wait`).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{Server, expect_error, register, status, text, wait_running};
use faasd::client::{Answer, Client};
use serde_json::{Value, json};

/// Posts `body` as JSON to `path`.
async fn post_json(client: &Client, path: &str, body: &Value) -> Answer {
    client
        .post(
            path,
            "application/json",
            serde_json::to_vec(body).expect("json").into(),
        )
        .await
        .expect("request")
}

/// Submits a batch and returns its task ids, checking the 202.
async fn batch(client: &Client, name: &str, elements: &Value) -> Vec<String> {
    let answer = post_json(client, &format!("/v1/functions/{name}/batch"), elements).await;
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let v: Value = answer.json().expect("json");
    v["task_ids"]
        .as_array()
        .expect("task_ids")
        .iter()
        .map(|id| id.as_str().expect("an id").to_string())
        .collect()
}

/// One `/v1/tasks/wait` round.
async fn wait_round(client: &Client, ids: &[String], wait: &str) -> Value {
    let answer = post_json(client, "/v1/tasks/wait", &json!({"ids": ids, "wait": wait})).await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    answer.json().expect("json")
}

/// Waits (bounded) with `/v1/tasks/wait` until every one of `ids` has finished; returns each
/// task's answer object by id.
async fn wait_all(client: &Client, ids: &[String]) -> HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = HashMap::new();
    let mut open: Vec<String> = ids.to_vec();
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {} tasks unfinished after 120s",
            open.len(),
            ids.len()
        );
        let answer = wait_round(client, &open, "10s").await;
        assert_eq!(answer["unknown"], json!([]), "{answer}");
        for task in answer["tasks"].as_array().expect("tasks") {
            let id = task["id"].as_str().expect("id").to_string();
            done.insert(id, task.clone());
        }
        open.retain(|id| !done.contains_key(id));
    }
    done
}

fn decode(task: &Value) -> Vec<u8> {
    let encoded = task["result_base64"].as_str().expect("result_base64");
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_a_thousand_payloads_gets_ids_in_order_and_each_result_is_its_payload() {
    let server = Server::start(&[]);
    let client = server.client();
    let answer = register(&client, "echo", "cat", json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    // Strings and base64 objects mixed; every payload is different.
    let payloads: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("payload {i}").into_bytes())
        .collect();
    let elements: Vec<Value> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| match i % 2 {
            0 => json!(text(p)),
            _ => json!({"payload_base64": base64::engine::general_purpose::STANDARD.encode(p)}),
        })
        .collect();
    let ids = batch(&client, "echo", &json!(elements)).await;
    assert_eq!(ids.len(), 1000);
    // The ids come in input order: the i-th id's result is the i-th payload.
    let done = wait_all(&client, &ids).await;
    for (id, payload) in ids.iter().zip(&payloads) {
        let task = &done[id];
        assert_eq!(task["status"], "COMPLETED", "{task}");
        assert_eq!(text(&decode(task)), text(payload), "{task}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ndjson_batch_is_one_payload_per_line() {
    let server = Server::start(&[]);
    let client = server.client();
    register(&client, "echo", "cat", json!({})).await;
    let body = "\"first\"\n\n{\"payload_base64\": \"c2Vjb25k\"}\n";
    let answer = client
        .post(
            "/v1/functions/echo/batch",
            "application/x-ndjson",
            Bytes::from(body),
        )
        .await
        .expect("batch");
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let v: Value = answer.json().expect("json");
    let ids: Vec<String> = serde_json::from_value(v["task_ids"].clone()).expect("ids");
    let done = wait_all(&client, &ids).await;
    assert_eq!(decode(&done[&ids[0]]), b"first");
    assert_eq!(decode(&done[&ids[1]]), b"second");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_the_queue_limit_takes_none() {
    // No local workers: every task stays QUEUED.
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    register(&client, "held", "cat", json!({"queue_limit": 5})).await;
    let first = batch(&client, "held", &json!(["a", "b", "c"])).await;
    assert_eq!(first.len(), 3);

    let over = post_json(&client, "/v1/functions/held/batch", &json!(["d", "e", "f"])).await;
    let body = expect_error(&over, 429, "queue_full");
    assert_eq!(
        over.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{body}"
    );
    let health: Value = client
        .get("/healthz")
        .await
        .expect("healthz")
        .json()
        .expect("json");
    assert_eq!(health["queued"], 3, "the refused batch left nothing behind");

    // Exactly filling the queue is allowed.
    assert_eq!(batch(&client, "held", &json!(["d", "e"])).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batches_are_refused_with_a_clear_error() {
    let server = Server::start(&["--local-workers", "0", "--max-body", "1KiB"]);
    let client = server.client();
    register(&client, "echo", "cat", json!({})).await;

    let missing = post_json(&client, "/v1/functions/nope/batch", &json!(["a"])).await;
    expect_error(&missing, 404, "function_not_found");
    let empty = post_json(&client, "/v1/functions/echo/batch", &json!([])).await;
    let body = expect_error(&empty, 400, "invalid_request");
    assert!(
        body["error"].as_str().expect("error").contains("empty"),
        "{body}"
    );
    let bad = json!(["ok", {"payload_base64": "%%%"}]);
    let bad = post_json(&client, "/v1/functions/echo/batch", &bad).await;
    let body = expect_error(&bad, 400, "invalid_request");
    assert_eq!(body["index"], 1, "{body}");
    assert!(
        body["error"].as_str().expect("error").contains("element 1"),
        "{body}"
    );
    let big = json!(["x".repeat(2048)]);
    let big = post_json(&client, "/v1/functions/echo/batch", &big).await;
    expect_error(&big, 413, "payload_too_large");

    let health: Value = client
        .get("/healthz")
        .await
        .expect("healthz")
        .json()
        .expect("json");
    assert_eq!(health["queued"], 0, "no refused batch queued anything");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_on_a_running_task_answers_empty_once_the_wait_passes() {
    let server = Server::start(&[]);
    let client = server.client();
    register(&client, "slow", "sleep 30", json!({})).await;
    let ids = batch(&client, "slow", &json!([""])).await;
    wait_running(&client, &ids[0]).await;

    let started = Instant::now();
    let answer = wait_round(&client, &ids, "300ms").await;
    let waited = started.elapsed();
    assert_eq!(answer, json!({"tasks": [], "unknown": [], "expired": []}));
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Without a wait, the answer comes at once.
    let answer = wait_round(&client, &ids, "0s").await;
    assert_eq!(answer["tasks"], json!([]));
    assert_eq!(status(&client, &ids[0]).await["status"], "RUNNING");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_lists_unknown_ids_and_a_failed_task_carries_its_logs_tail() {
    let server = Server::start(&[]);
    let client = server.client();
    register(&client, "fails", "echo 'went wrong' >&2; exit 3", json!({})).await;
    let ids = batch(&client, "fails", &json!(["x"])).await;
    let stranger = uuid::Uuid::now_v7().to_string();
    let mut asked = ids.clone();
    asked.extend([stranger.clone(), "not-a-task".to_string()]);

    let answer = wait_round(&client, &asked, "30s").await;
    let mut unknown: Vec<String> =
        serde_json::from_value(answer["unknown"].clone()).expect("unknown");
    unknown.sort();
    let mut expected = vec![stranger, "not-a-task".to_string()];
    expected.sort();
    assert_eq!(unknown, expected);
    let tasks = answer["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{answer}");
    let task = &tasks[0];
    assert_eq!(task["id"], ids[0].as_str());
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["exit_code"], 3);
    assert!(
        task["logs_tail"]
            .as_str()
            .expect("logs_tail")
            .contains("went wrong"),
        "{task}"
    );

    // Once stored, the same answer comes from the store, at once.
    let again = wait_round(&client, &ids, "0s").await;
    assert_eq!(again["tasks"][0]["logs_tail"], task["logs_tail"]);
    assert_eq!(again["tasks"][0]["status"], "FAILED");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_wait_requests_are_refused() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let id = uuid::Uuid::now_v7().to_string();
    for body in [
        json!({"ids": [id], "wait": "61s"}),
        json!({"ids": [id], "wait": -1}),
        json!({"ids": [id], "wait": "soon"}),
        json!({"wait": "1s"}),
        json!({"ids": vec![id.clone(); 10_001]}),
    ] {
        let answer = post_json(&client, "/v1/tasks/wait", &body).await;
        expect_error(&answer, 400, "invalid_request");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ndjson_batches_are_refused_naming_the_line() {
    let server = Server::start(&["--local-workers", "0", "--max-body", "1KiB"]);
    let client = server.client();
    register(&client, "echo", "cat", json!({})).await;
    let ndjson = |body: String| {
        let client = client.clone();
        async move {
            client
                .post(
                    "/v1/functions/echo/batch",
                    "application/x-ndjson",
                    Bytes::from(body),
                )
                .await
                .expect("batch")
        }
    };

    for empty in ["", "\n\n  \n"] {
        let body = expect_error(&ndjson(empty.into()).await, 400, "invalid_request");
        let error = body["error"].as_str().expect("error");
        assert_eq!(error, "the batch is empty: give at least one payload");
    }
    // Lines count from 1, blank ones included; elements from 0, blank lines skipped.
    let bad = "\"a\"\n\n{\"x\": 1}\n".to_string();
    let body = expect_error(&ndjson(bad).await, 400, "invalid_request");
    let error = body["error"].as_str().expect("error");
    assert!(error.starts_with("batch element 1 (line 3) "), "{error}");
    assert_eq!(body["index"], 1, "{body}");
    // A payload over --max-body makes the body too large: 413 naming the limit, none taken.
    let big = format!("\"{}\"\n", "x".repeat(2048));
    let body = expect_error(&ndjson(big).await, 413, "payload_too_large");
    assert_eq!(body["limit_bytes"], 1024, "{body}");

    let health: Value = client
        .get("/healthz")
        .await
        .expect("healthz")
        .json()
        .expect("json");
    assert_eq!(health["queued"], 0, "no refused batch queued anything");
    assert_eq!(health["max_body_bytes"], 1024, "{health}");
}
