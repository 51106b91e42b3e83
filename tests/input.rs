//! End-to-end tests of absurd input: numbers out of range answer 400 naming their field and
//! leave the server healthy, and a function without a waiting line (`queue_limit` 0) refuses a
//! call at once when its concurrency slot is busy.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, expect_error, invoke, register, submit, text, wait_running};

/// Registration bodies from the issue and around it, each with the field it must name.
const ABSURD_REGISTRATIONS: &[(&str, &str)] = &[
    (r#""timeout": 1e300"#, "timeout"),
    (r#""timeout": 1e20"#, "timeout"),
    (r#""timeout": 18446744073709551616"#, "timeout"),
    (r#""timeout": -1"#, "timeout"),
    (r#""timeout": 1e400"#, "timeout"),
    (r#""timeout": "99999999999999999999999h""#, "timeout"),
    (r#""timeout": "1000000000h""#, "timeout"),
    (r#""timeout": [1]"#, "timeout"),
    (
        r#""runtime": "python", "idle_timeout": 1e300"#,
        "idle_timeout",
    ),
    (
        r#""runtime": "python", "idle_timeout": 18446744073709551616"#,
        "idle_timeout",
    ),
    // A cold function does not use idle_timeout, but a value out of range is still refused.
    (r#""idle_timeout": 1e300"#, "idle_timeout"),
    (r#""memory": 1e30"#, "memory"),
    (r#""memory": 18446744073709551616"#, "memory"),
    (r#""memory": "99999999999999GiB""#, "memory"),
    (r#""memory": -5"#, "memory"),
    (r#""memory": 2.5"#, "memory"),
    (r#""max_attempts": 0"#, "max_attempts"),
    (r#""max_attempts": 4294967296"#, "max_attempts"),
    (r#""max_attempts": 1000000"#, "max_attempts"),
    (r#""concurrency": -1"#, "concurrency"),
    (r#""concurrency": 0"#, "concurrency"),
    (r#""queue_limit": 1e20"#, "queue_limit"),
    (r#""min_warm": 18446744073709551616"#, "min_warm"),
];

#[tokio::test(flavor = "multi_thread")]
async fn absurd_numbers_answer_400_naming_the_field_and_the_server_stays_healthy() {
    let server = Server::start(&[]);
    let client = server.client();
    for (fields, field) in ABSURD_REGISTRATIONS {
        let body = format!(r#"{{"name": "f", "code": "ZWNobw==", {fields}}}"#);
        let answer = client
            .post("/v1/functions", "application/json", Bytes::from(body))
            .await
            .expect("an answer, not a dropped connection");
        let error = expect_error(&answer, 400, "invalid_request");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{fields}: {error}");
    }
    let wait = client
        .post(
            "/v1/tasks/wait",
            "application/json",
            Bytes::from_static(br#"{"ids": [], "wait": 1e300}"#),
        )
        .await
        .expect("an answer");
    assert_eq!(expect_error(&wait, 400, "invalid_request")["field"], "wait");
    let status = client
        .get("/v1/tasks/00000000-0000-0000-0000-000000000000?wait=99999999999999999999999s")
        .await
        .expect("an answer");
    assert_eq!(
        expect_error(&status, 400, "invalid_request")["field"],
        "wait"
    );
    let health = client.get("/healthz").await.expect("healthz");
    assert_eq!(health.status, 200, "{}", text(&health.body));
    let ok = register(&client, "fine", "cat", serde_json::json!({"timeout": 5})).await;
    assert_eq!(ok.status, 201, "{}", text(&ok.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_waiting_line_a_call_finding_its_slot_busy_is_refused_at_once() {
    let server = Server::start(&[]);
    let client = server.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("slow.sh");
    std::fs::write(&script, "sleep 30\n").expect("write script");
    let out = server.cli(&[
        "register",
        "slow",
        script.to_str().expect("utf8"),
        "--concurrency",
        "1",
        "--queue-limit",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown: serde_json::Value = client
        .get("/v1/functions/slow")
        .await
        .expect("show")
        .json()
        .expect("json");
    assert_eq!(shown["queue_limit"], 0, "{shown}");

    let busy = submit(&client, "slow", b"").await;
    wait_running(&client, &busy).await;
    let started = Instant::now();
    let refused = invoke(&client, "slow", b"").await;
    let error = expect_error(&refused, 429, "queue_full");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("queue_limit 0")),
        "{error}"
    );
    let refused_async = client
        .post(
            "/v1/functions/slow/invoke?async=true",
            "application/octet-stream",
            Bytes::new(),
        )
        .await
        .expect("an answer");
    expect_error(&refused_async, 429, "queue_full");
}
