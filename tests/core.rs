//! End-to-end tests of `faasd serve` and the CLI on one machine.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Server, eventually, expect_error, invoke, register, status, submit, text, wait_finished,
    wait_running,
};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn register_invoke_status_result_logs_through_the_cli() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("hello.sh");
    std::fs::write(
        &script,
        "printf 'hello %s' \"$(cat)\"\necho \"to stderr $GREETING\" >&2\n",
    )
    .expect("write script");

    let out = server.cli(&[
        "register",
        "hello",
        script.to_str().expect("utf8"),
        "--env",
        "GREETING=hi",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "registered hello version 1\n");

    // Sync: the result bytes come out unchanged.
    let out = server.cli(&["invoke", "hello", "world"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hello world");

    // Payload from stdin.
    let out = server.cli_with_stdin(&["invoke", "hello", "-"], b"piped");
    assert_eq!(out.stdout, b"hello piped");

    // Async: a task id, then status, result and logs.
    let out = server.cli(&["invoke", "hello", "--async", "later"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 36, "{id:?}");

    let out = server.cli(&["status", &id, "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(task["status"], "COMPLETED");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["exit_code"], 0);
    for key in ["created_at", "started_at", "finished_at"] {
        assert!(task[key].is_string(), "{key} missing: {task}");
    }

    let out = server.cli(&["result", &id]);
    assert_eq!(out.stdout, b"hello later");
    let out = server.cli(&["logs", &id]);
    assert_eq!(text(&out.stdout), "to stderr hi\n");

    let out = server.cli(&["status", &id]);
    assert!(
        text(&out.stdout).contains("COMPLETED"),
        "{}",
        text(&out.stdout)
    );

    let out = server.cli(&["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls json");
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["env"]["GREETING"], "hi");

    // The same function over the per-function URL, as curl would call it.
    let client = server.client();
    let answer = client
        .post("/function/hello", "text/plain", Bytes::from_static(b"curl"))
        .await
        .expect("request");
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"hello curl");
    // The answer may go before its end is committed; reads agree with it from the moment it
    // is given.
    let id = answer.headers["x-faasd-task-id"]
        .to_str()
        .expect("task id")
        .to_owned();
    assert_eq!(status(&client, &id).await["status"], "COMPLETED");
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    assert_eq!(&result.body[..], b"hello curl");

    // Re-registering bumps the version; rm removes it.
    let out = server.cli(&["register", "hello", script.to_str().expect("utf8")]);
    assert_eq!(text(&out.stdout), "registered hello version 2\n");
    let out = server.cli(&["rm", "hello"]);
    assert_eq!(out.status.code(), Some(0));
    let out = server.cli(&["invoke", "hello"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_function_is_failed_with_status_and_stderr() {
    let server = Server::start(&[]);
    let client = server.client();
    let answer = register(
        &client,
        "bad",
        "echo 'something broke' >&2; exit 3",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(answer.status, 201);

    let answer = invoke(&client, "bad", b"").await;
    let body = expect_error(&answer, 502, "function_failed");
    assert_eq!(body["exit_code"], 3);
    assert_eq!(body["reason"], "exit_status");
    assert!(
        body["stderr_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("something broke"),
        "{body}"
    );
    let id = body["task_id"].as_str().expect("task id").to_string();

    let task = status(&client, &id).await;
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["exit_code"], 3);
    assert_eq!(task["reason"], "exit_status");
    let logs = client
        .get(&format!("/v1/tasks/{id}/logs"))
        .await
        .expect("logs");
    assert_eq!(text(&logs.body), "something broke\n");

    // The CLI exits 1, saying why, with the stderr tail and the command that shows it all.
    let out = server.cli(&["invoke", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("faasd: task ") && err.contains(" failed: exited with status 3\n"),
        "{err}"
    );
    assert!(err.contains("\n  something broke\n"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[2].starts_with("see all of it: faasd logs "), "{err}");
    let out = server.cli(&["result", &id]);
    assert_eq!(out.status.code(), Some(1));
    let out = server.cli(&["status", &id, "--wait"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_the_function_and_fails_the_task() {
    let server = Server::start(&[]);
    let client = server.client();
    let answer = register(
        &client,
        "slow",
        "sleep 30",
        serde_json::json!({"timeout": "500ms"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let started = Instant::now();
    let answer = invoke(&client, "slow", b"").await;
    let body = expect_error(&answer, 504, "function_timeout");
    assert_eq!(body["reason"], "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let task = status(&client, body["task_id"].as_str().expect("id")).await;
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["reason"], "timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_async_tasks_all_complete() {
    let server = Server::start(&[]);
    let client = server.client();
    assert_eq!(
        register(&client, "echo", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );
    let mut submitters = tokio::task::JoinSet::new();
    for c in 0..16 {
        let client = client.clone();
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..(1000 / 16 + usize::from(c < 1000 % 16)) {
                let payload = format!("{c}-{i}");
                ids.push((submit(&client, "echo", payload.as_bytes()).await, payload));
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(batch) = submitters.join_next().await {
        ids.extend(batch.expect("submitter"));
    }
    assert_eq!(ids.len(), 1000);
    for (id, _) in &ids {
        let task = wait_finished(&client, id).await;
        assert_eq!(task["status"], "COMPLETED", "{task}");
    }
    // Spot-check that each result is its own payload.
    for (id, payload) in ids.iter().step_by(97) {
        let answer = client
            .get(&format!("/v1/tasks/{id}/result"))
            .await
            .expect("result");
        assert_eq!(text(&answer.body), *payload);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_then_restart_runs_every_acknowledged_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start_on(&data, &["--local-workers", "2"]);
    let client = server.client();
    // The first task runs long enough to be seen RUNNING however slowly the others are
    // submitted on a loaded machine; the rest keep the second slot busy behind it.
    let script = r#"p=$(cat); case "$p" in task-0) sleep 3;; *) sleep 0.3;; esac; printf %s "$p""#;
    let answer = register(&client, "work", script, serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push((
            submit(&client, "work", format!("task-{i}").as_bytes()).await,
            format!("task-{i}"),
        ));
    }
    // Wait (bounded) until some tasks run while others still wait.
    let running_and_queued = || async {
        let first = status(&client, &ids[0].0).await;
        let last = status(&client, &ids[11].0).await;
        if first["status"] == "RUNNING" && last["status"] == "QUEUED" {
            Ok(())
        } else {
            Err(format!("{first} {last}"))
        }
    };
    let what = "the first task RUNNING while the last is QUEUED";
    eventually(what, Duration::from_secs(10), running_and_queued).await;
    server.stop_with(Signal::SIGKILL).await;
    drop(server);

    let server = Server::start_on(&data, &["--local-workers", "2"]);
    let client = server.client();
    for (id, payload) in &ids {
        let task = wait_finished(&client, id).await;
        assert_eq!(task["status"], "COMPLETED", "{task}");
        let answer = client
            .get(&format!("/v1/tasks/{id}/result"))
            .await
            .expect("result");
        assert_eq!(text(&answer.body), *payload);
    }
    let first = status(&client, &ids[0].0).await;
    assert_eq!(
        first["attempts"], 2,
        "the interrupted run counts as an attempt: {first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_their_documented_status_and_the_server_stays_healthy() {
    let server = Server::start(&["--max-body", "64KiB"]);
    let client = server.client();
    assert_eq!(
        register(&client, "ok", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );

    let healthy = |client: faasd::client::Client| async move {
        let answer = client.get("/healthz").await.expect("healthz");
        assert_eq!(answer.status, 200);
        let answer = invoke(&client, "ok", b"still here").await;
        assert_eq!(&answer.body[..], b"still here");
    };

    let answer = invoke(&client, "nope", b"").await;
    expect_error(&answer, 404, "function_not_found");
    healthy(client.clone()).await;

    let answer = register(&client, "Bad Name!", "cat", serde_json::json!({})).await;
    expect_error(&answer, 400, "invalid_name");
    let answer = register(&client, &"a".repeat(64), "cat", serde_json::json!({})).await;
    expect_error(&answer, 400, "invalid_name");
    healthy(client.clone()).await;

    let answer = client
        .post(
            "/v1/functions",
            "application/json",
            Bytes::from_static(br#"{"name":"x","code":"not base64!"}"#),
        )
        .await
        .expect("request");
    expect_error(&answer, 400, "invalid_base64");
    let answer = client
        .post(
            "/v1/functions",
            "application/json",
            Bytes::from_static(b"{not json"),
        )
        .await
        .expect("request");
    expect_error(&answer, 400, "invalid_request");
    healthy(client.clone()).await;

    let answer = invoke(&client, "ok", &[b'x'; 65 * 1024]).await;
    expect_error(&answer, 413, "payload_too_large");
    healthy(client.clone()).await;

    let answer = client
        .get("/v1/tasks/00000000-0000-7000-8000-000000000000")
        .await
        .expect("request");
    expect_error(&answer, 404, "task_not_found");
    let answer = client
        .get("/v1/tasks/00000000-0000-7000-8000-000000000000/result")
        .await
        .expect("request");
    expect_error(&answer, 404, "task_not_found");
    let answer = client.get("/v1/tasks/not-a-uuid").await.expect("request");
    expect_error(&answer, 400, "invalid_task_id");
    let answer = client.get("/v1/nothing-here").await.expect("request");
    expect_error(&answer, 404, "route_not_found");
    healthy(client.clone()).await;

    // The CLI's exit codes for the same mistakes.
    assert_eq!(server.cli(&["invoke", "nope"]).status.code(), Some(4));
    assert_eq!(
        server
            .cli(&["status", "00000000-0000-7000-8000-000000000000"])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        server
            .cli(&["register", "x", "/no/such/file"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(server.cli(&["invoke"]).status.code(), Some(2));
    let unreachable = std::process::Command::new(common::BIN)
        .args(["--log-format", "text", "ls"])
        .env("FAASD_URL", "http://127.0.0.1:1")
        .output()
        .expect("run CLI");
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(
        text(&unreachable.stderr).contains("cannot reach"),
        "{}",
        text(&unreachable.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_concurrency_cap_runs_tasks_one_at_a_time_in_arrival_order() {
    let server = Server::start(&["--local-workers", "4"]);
    let client = server.client();
    let answer = register(
        &client,
        "serial",
        "sleep 0.1; cat",
        serde_json::json!({"concurrency": 1}),
    )
    .await;
    assert_eq!(answer.status, 201);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(submit(&client, "serial", format!("{i}").as_bytes()).await);
    }
    let mut previous_finish = 0u128;
    for id in &ids {
        let task = wait_finished(&client, id).await;
        assert_eq!(task["status"], "COMPLETED");
        let ms = |key: &str| {
            let t =
                humantime::parse_rfc3339(task[key].as_str().expect("timestamp")).expect("rfc3339");
            t.duration_since(std::time::UNIX_EPOCH)
                .expect("after epoch")
                .as_millis()
        };
        assert!(
            ms("started_at") >= previous_finish,
            "tasks overlapped: {task}"
        );
        previous_finish = ms("finished_at");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_tasks_finish_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start_on(&data, &[]);
    let client = server.client();
    assert_eq!(
        register(
            &client,
            "nap",
            "sleep 0.5; echo done",
            serde_json::json!({})
        )
        .await
        .status,
        201
    );
    let id = submit(&client, "nap", b"").await;
    wait_running(&client, &id).await;
    assert_eq!(server.stop_with(Signal::SIGTERM).await, Some(0));
    drop(server);

    // The task finished before the stop, so the next start finds it COMPLETED on its first try.
    let server = Server::start_on(&data, &["--local-workers", "0"]);
    let task = status(&server.client(), &id).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(task["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_registration_and_unfinished_results() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nup\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"timeout\"\r\n\r\n5s\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"code\"; filename=\"f.sh\"\r\n\
         Content-Type: application/octet-stream\r\n\r\ncat\r\n--{boundary}--\r\n"
    );
    let answer = client
        .post(
            "/v1/functions",
            &format!("multipart/form-data; boundary={boundary}"),
            Bytes::from(body),
        )
        .await
        .expect("register");
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let f: serde_json::Value = answer.json().expect("json");
    assert_eq!(f["version"], 1);
    assert_eq!(f["timeout_ms"], 5000);

    // With no workers the task stays QUEUED: its result is 409 and the CLI says so with exit 5.
    let id = submit(&client, "up", b"x").await;
    let answer = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    expect_error(&answer, 409, "task_not_finished");
    assert_eq!(server.cli(&["result", &id]).status.code(), Some(5));
    let health: serde_json::Value = client
        .get("/healthz")
        .await
        .expect("healthz")
        .json()
        .expect("json");
    assert_eq!(health["queued"], 1);
}

/// A `Client::connection` (one connection per `faasd bench` caller) that the server closes,
/// here with `Connection: close` on a 413, opens a new one for its next request.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_server_closes_is_opened_again_for_the_next_request() {
    let server = Server::start(&["--max-body", "1KiB"]);
    let registered = register(&server.client(), "echo", "cat", serde_json::json!({})).await;
    assert_eq!(registered.status, 201, "{}", text(&registered.body));
    let mut connection = server.client().connection().await.expect("connect");
    let path = "/v1/functions/echo/invoke";
    let too_large = Bytes::from(vec![b'x'; 4096]);
    let refused = connection
        .post(path, "text/plain", too_large)
        .await
        .expect("an answer");
    assert_eq!(refused.status, 413, "{}", text(&refused.body));
    assert_eq!(
        refused.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    for payload in ["after", "again"] {
        let answer = connection
            .post(path, "text/plain", Bytes::from(payload))
            .await
            .expect("a new connection");
        assert_eq!(answer.status, 200, "{}", text(&answer.body));
        assert_eq!(text(&answer.body), payload);
    }
}
