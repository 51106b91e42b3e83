//! Replay through the real binary: a replay runs the task's own version on its own payload
//! (even once a newer version is live), `--wait` prints the result as `invoke` does, `--local`
//! runs the call on this machine and prints what the server printed, and an unknown task is a
//! clear error.

mod common;

use common::{Server, expect_error, register, submit, text, wait_finished};

/// Version 1 of `f`: says what it read on stderr, fails on `bad`, else answers `v1:PAYLOAD`.
const V1: &str = "p=$(cat); echo \"saw $p\" >&2; [ \"$p\" = bad ] && exit 3; printf 'v1:%s' \"$p\"";

/// The stdout of a CLI run that exited with `code`.
fn out_of(out: &std::process::Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Registers `f` version 1, runs it on `payload`, then registers version 2; returns the task.
async fn task_then_newer_version(server: &Server, payload: &[u8]) -> String {
    let client = server.client();
    let answer = register(&client, "f", V1, serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let id = submit(&client, "f", payload).await;
    wait_finished(&client, &id).await;
    let answer = register(&client, "f", "printf v2", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    id
}

#[tokio::test]
async fn a_replay_of_a_failed_task_reruns_its_version_and_payload() {
    let server = Server::start(&[]);
    let client = server.client();
    let id = task_then_newer_version(&server, b"bad").await;
    let new_id = out_of(&server.cli(&["replay", &id]), 0);
    let new_id = new_id.trim();
    assert_ne!(new_id, id);
    let task = wait_finished(&client, new_id).await;
    assert_eq!(
        (task["version"].as_u64(), task["status"].as_str()),
        (Some(1), Some("FAILED")),
        "{task}"
    );
    assert_eq!(task["exit_code"], 3, "{task}");
    let logs = client
        .get(&format!("/v1/tasks/{new_id}/logs"))
        .await
        .expect("logs");
    assert_eq!(text(&logs.body), "saw bad\n");
    // The payload route gives the bytes the task read.
    let payload = client
        .get(&format!("/v1/tasks/{id}/payload"))
        .await
        .expect("payload");
    assert_eq!(text(&payload.body), "bad");
    // --wait waits and exits as invoke would: 1 for a failed task, with its stderr.
    let out = server.cli(&["replay", &id, "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("saw bad"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn replay_wait_prints_the_result_and_json_names_the_new_task() {
    let server = Server::start(&[]);
    let id = task_then_newer_version(&server, b"hello").await;
    assert_eq!(
        out_of(&server.cli(&["replay", &id, "--wait"]), 0),
        "v1:hello"
    );
    let answer: serde_json::Value =
        serde_json::from_str(&out_of(&server.cli(&["replay", &id, "--json"]), 0)).expect("JSON");
    assert_eq!(answer["replay_of"], id.as_str(), "{answer}");
    assert_eq!(answer["version"], 1, "{answer}");
    let client = server.client();
    let new_id = answer["task_id"].as_str().expect("task id");
    assert_eq!(wait_finished(&client, new_id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn a_local_replay_prints_what_the_server_run_printed_for_shell() {
    let server = Server::start(&[]);
    let id = task_then_newer_version(&server, b"hello").await;
    let out = server.cli(&["replay", &id, "--local"]);
    assert_eq!(out_of(&out, 0), "v1:hello");
    assert!(
        text(&out.stderr).contains("saw hello"),
        "{}",
        text(&out.stderr)
    );
    let failed = task_then_newer_version_named(&server, "g", b"bad").await;
    let out = server.cli(&["replay", &failed, "--local"]);
    assert_eq!(out_of(&out, 1), "");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("saw bad"), "{stderr}");
    assert!(stderr.contains("local replay"), "{stderr}");
}

/// As [`task_then_newer_version`] for a function named `name`.
async fn task_then_newer_version_named(server: &Server, name: &str, payload: &[u8]) -> String {
    let client = server.client();
    let answer = register(&client, name, V1, serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let id = submit(&client, name, payload).await;
    wait_finished(&client, &id).await;
    id
}

#[tokio::test]
async fn a_local_replay_prints_what_the_server_run_printed_for_python() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = dir.path().join("handler.py");
    let source = "import os, sys\n\n\ndef handle(p):\n    print('log line', file=sys.stderr)\n    return b'py:' + p + os.environ['WHO'].encode()\n";
    std::fs::write(&handler, source).expect("write handler");
    let path = handler.to_str().expect("utf-8");
    let out = server.cli(&[
        "register",
        "py",
        path,
        "--runtime",
        "python",
        "--env",
        "WHO=srv",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let client = server.client();
    let id = submit(&client, "py", b"data").await;
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    assert_eq!(text(&result.body), "py:datasrv");
    let out = server.cli(&["replay", &id, "--local"]);
    assert_eq!(out_of(&out, 0), text(&result.body));
    assert!(
        text(&out.stderr).contains("log line"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_replay_of_an_unknown_task_is_a_clear_error() {
    let server = Server::start(&[]);
    let unknown = "0190a4b2-0000-7000-8000-000000000000";
    for args in [vec!["replay", unknown], vec!["replay", unknown, "--local"]] {
        let out = server.cli(&args);
        assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot replay task {unknown}")),
            "{stderr}"
        );
        assert!(stderr.contains("no task with id"), "{stderr}");
    }
    let out = server.cli(&["replay", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let answer = server
        .client()
        .post(
            &format!("/v1/tasks/{unknown}/replay"),
            "application/json",
            bytes::Bytes::new(),
        )
        .await
        .expect("replay");
    expect_error(&answer, 404, "task_not_found");
}
