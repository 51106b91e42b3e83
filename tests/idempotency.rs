//! End-to-end tests of the `Idempotency-Key` header: a repeat answers the first request's tasks
//! (and a sync call's result) without running anything again, across a `kill -9` too; a key
//! reused for another request is 409 `idempotency_key_reused`; keys are per user.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, eventually, expect_error, register, text, wait_running};
use faasd::client::{Answer, Client};
use hyper::Method;
use serde_json::{Value, json};

/// POSTs `body` to `path` with `Idempotency-Key: key` (none when `key` is `None`).
async fn post(
    client: &Client,
    path: &str,
    content_type: &str,
    key: Option<&str>,
    body: &[u8],
) -> Answer {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    client
        .request_with(
            Method::POST,
            path,
            Some(content_type),
            &headers,
            Bytes::copy_from_slice(body),
        )
        .await
        .expect("request")
}

/// An async invoke of `name` with `key`; returns the task id, checking the 202.
async fn submit_keyed(client: &Client, name: &str, key: &str, payload: &[u8]) -> String {
    let path = format!("/v1/functions/{name}/invoke?async=true");
    let answer = post(client, &path, "text/plain", Some(key), payload).await;
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let v: Value = answer.json().expect("json");
    v["task_id"].as_str().expect("task_id").to_string()
}

/// A batch of `name` with `key`; returns the task ids, checking the 202.
async fn batch_keyed(client: &Client, name: &str, key: &str, payloads: &Value) -> Vec<String> {
    let path = format!("/v1/functions/{name}/batch");
    let body = serde_json::to_vec(payloads).expect("json");
    let answer = post(client, &path, "application/json", Some(key), &body).await;
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let v: Value = answer.json().expect("json");
    v["task_ids"]
        .as_array()
        .expect("task_ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_string())
        .collect()
}

/// The ids of every task of `function` the client may read.
async fn task_ids(client: &Client, function: &str) -> Vec<String> {
    let answer = client
        .get(&format!("/v1/tasks?function={function}&limit=1000"))
        .await
        .expect("list");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let page: Value = answer.json().expect("json");
    page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

async fn register_ok(client: &Client, name: &str, script: &str) {
    let answer = register(client, name, script, json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_repeat_answers_the_same_task_and_runs_it_once_even_when_sent_at_once() {
    let server = Server::start(&[]);
    let client = server.client();
    register_ok(&client, "f", "cat").await;
    let first = submit_keyed(&client, "f", "order-1", b"x").await;
    common::wait_finished(&client, &first).await;
    let again = submit_keyed(&client, "f", "order-1", b"x").await;
    assert_eq!(again, first);

    // Eight requests with a new key at once: one task between them.
    let mut racing = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        racing.push(tokio::spawn(async move {
            submit_keyed(&client, "f", "order-2", b"y").await
        }));
    }
    let mut ids = Vec::new();
    for request in racing {
        ids.push(request.await.expect("request task"));
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_ne!(ids[0], first);
    let mut stored = task_ids(&client, "f").await;
    stored.sort();
    let mut expected = vec![first, ids[0].clone()];
    expected.sort();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_repeat_answers_the_same_result_and_waits_for_a_running_first_call() {
    let server = Server::start(&[]);
    let client = server.client();
    // A different result on every run, so a second run would show.
    register_ok(
        &client,
        "rand",
        "sleep 1; head -c 12 /dev/urandom | od -An -tx1",
    )
    .await;
    let path = "/v1/functions/rand/invoke";
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, path, "text/plain", Some("k"), b"p").await })
    };
    let running = eventually("the first call's task", Duration::from_secs(10), || async {
        task_ids(&client, "rand").await.pop().ok_or("no task yet")
    })
    .await;
    wait_running(&client, &running).await;
    let second = post(&client, path, "text/plain", Some("k"), b"p").await;
    let first = first.await.expect("first call");
    assert_eq!(first.status, 200, "{}", text(&first.body));
    assert_eq!(second.status, 200, "{}", text(&second.body));
    assert_eq!(first.body, second.body);
    assert_eq!(first.headers["x-faasd-task-id"], running.as_str());
    assert_eq!(second.headers["x-faasd-task-id"], running.as_str());
    // And once it has finished, from the store.
    let third = post(&client, path, "text/plain", Some("k"), b"p").await;
    assert_eq!(third.body, first.body);
    assert_eq!(task_ids(&client, "rand").await, [running]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_repeat_answers_the_same_ids_in_order() {
    let server = Server::start(&[]);
    let client = server.client();
    register_ok(&client, "f", "cat").await;
    let payloads = json!(["a", "b", {"payload_base64": "Yw=="}]);
    let first = batch_keyed(&client, "f", "b-1", &payloads).await;
    let again = batch_keyed(&client, "f", "b-1", &payloads).await;
    assert_eq!(first.len(), 3);
    assert_eq!(again, first);
    let mut stored = task_ids(&client, "f").await;
    stored.sort();
    let mut expected = first.clone();
    expected.sort();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_reused_for_another_request_is_409_saying_what_differs() {
    let server = Server::start(&[]);
    let client = server.client();
    register_ok(&client, "f", "cat").await;
    register_ok(&client, "g", "cat").await;
    submit_keyed(&client, "f", "k", b"one").await;

    let other_payload = post(
        &client,
        "/v1/functions/f/invoke",
        "text/plain",
        Some("k"),
        b"two",
    );
    let v = expect_error(&other_payload.await, 409, "idempotency_key_reused");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("different payload"),
        "{v}"
    );

    let other_function = post(
        &client,
        "/v1/functions/g/invoke",
        "text/plain",
        Some("k"),
        b"one",
    );
    let v = expect_error(&other_function.await, 409, "idempotency_key_reused");
    let message = v["error"].as_str().expect("error");
    assert!(
        message.contains("\"f\"") && message.contains("\"g\""),
        "{v}"
    );

    let as_batch = post(
        &client,
        "/v1/functions/f/batch",
        "application/json",
        Some("k"),
        b"[\"one\"]",
    );
    let v = expect_error(&as_batch.await, 409, "idempotency_key_reused");
    assert!(v["error"].as_str().expect("error").contains("batch"), "{v}");

    // Neither of the refused requests made a task.
    assert_eq!(task_ids(&client, "f").await.len(), 1);
    assert!(task_ids(&client, "g").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_is_400_naming_the_header() {
    let server = Server::start(&[]);
    let client = server.client();
    register_ok(&client, "f", "cat").await;
    let long = "k".repeat(256);
    for key in ["", long.as_str()] {
        let answer = post(
            &client,
            "/v1/functions/f/invoke",
            "text/plain",
            Some(key),
            b"x",
        )
        .await;
        let v = expect_error(&answer, 400, "invalid_request");
        assert_eq!(v["header"], "Idempotency-Key", "{v}");
    }
    assert!(task_ids(&client, "f").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_users_keys_never_collide() {
    let server = Server::start(&[]);
    let local = server.client();
    let add = |name: &'static str, client: Client| async move {
        let body = json!({"name": name, "role": "admin"}).to_string();
        let answer = post(
            &client,
            "/v1/users",
            "application/json",
            None,
            body.as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 201, "{}", text(&answer.body));
        let user: Value = answer.json().expect("json");
        user["token"].as_str().expect("token").to_string()
    };
    let ann = server
        .client()
        .with_token(&add("ann", local).await)
        .expect("token");
    let bob = server
        .client()
        .with_token(&add("bob", ann.clone()).await)
        .expect("token");
    register_ok(&ann, "f", "cat").await;
    let ann_task = submit_keyed(&ann, "f", "shared", b"x").await;
    let bob_task = submit_keyed(&bob, "f", "shared", b"x").await;
    assert_ne!(ann_task, bob_task);
    // Bob's use of the key does not bind Ann's: another payload under it is Bob's own key.
    let bob_other = post(
        &bob,
        "/v1/functions/f/invoke?async=true",
        "text/plain",
        Some("k2"),
        b"z",
    );
    assert_eq!(bob_other.await.status, 202);
    assert_eq!(submit_keyed(&ann, "f", "shared", b"x").await, ann_task);
    assert_eq!(submit_keyed(&bob, "f", "shared", b"x").await, bob_task);
}

#[tokio::test(flavor = "multi_thread")]
async fn mpcs_execute_function_honours_the_key() {
    let server = Server::start(&[]);
    let client = server.client();
    let pickle = "gAROLg=="; // base64 of a protocol-4 pickle of None
    let body = json!({"name": "m", "payload": pickle}).to_string();
    let answer = post(
        &client,
        "/register_function",
        "application/json",
        None,
        body.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let function: Value = answer.json().expect("json");
    let function_id = function["function_id"].as_str().expect("function_id");
    let execute = |payload: &str| {
        let body = json!({"function_id": function_id, "payload": payload}).to_string();
        let client = client.clone();
        async move {
            post(
                &client,
                "/execute_function",
                "application/json",
                Some("m-1"),
                body.as_bytes(),
            )
            .await
        }
    };
    let first = execute(pickle).await;
    assert_eq!(first.status, 200, "{}", text(&first.body));
    let again = execute(pickle).await;
    assert_eq!(again.status, 200, "{}", text(&again.body));
    let (first, again): (Value, Value) = (first.json().expect("json"), again.json().expect("json"));
    assert_eq!(first["task_id"], again["task_id"]);
    let other = execute("gAROLgo=").await;
    expect_error(&other, 409, "idempotency_key_reused");
    assert_eq!(task_ids(&client, function_id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_after_a_kill_9_right_after_the_202_finds_the_one_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start_on(&data, &[]);
    let client = server.client();
    register_ok(&client, "f", "sleep 30").await;
    let first = submit_keyed(&client, "f", "crash-1", b"x").await;
    server.stop_with(nix::sys::signal::Signal::SIGKILL).await;

    let server = Server::start_on(&data, &[]);
    let client = server.client();
    let again = submit_keyed(&client, "f", "crash-1", b"x").await;
    assert_eq!(again, first);
    assert_eq!(task_ids(&client, "f").await, [first]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_key_makes_a_new_task() {
    let server = Server::start(&["--idempotency-ttl", "1s"]);
    let client = server.client();
    register_ok(&client, "f", "cat").await;
    let first = submit_keyed(&client, "f", "short", b"x").await;
    let next = eventually("the key to expire", Duration::from_secs(20), || async {
        let id = submit_keyed(&client, "f", "short", b"x").await;
        if id == first {
            Err("the same task")
        } else {
            Ok(id)
        }
    })
    .await;
    assert_eq!(task_ids(&client, "f").await.len(), 2, "{next}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_sends_the_key_and_a_repeat_prints_the_same_id() {
    let server = Server::start(&[]);
    register_ok(&server.client(), "f", "cat").await;
    let run =
        |data: &str| server.cli(&["invoke", "f", data, "--async", "--idempotency-key", "cli-1"]);
    let first = run("x");
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let again = run("x");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(text(&first.stdout), text(&again.stdout));
    let reused = run("y");
    assert_eq!(reused.status.code(), Some(2), "{}", text(&reused.stderr));
    assert!(
        text(&reused.stderr).contains("was reused for another request"),
        "{}",
        text(&reused.stderr)
    );
    let bad = server.cli(&["invoke", "f", "x", "--idempotency-key", ""]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}
