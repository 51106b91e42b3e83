//! Payloads larger than the broker keeps in memory wait in the store and are read back when
//! their task is dispatched: they reach the function intact, in queue order, also after a
//! `kill -9` and restart.

mod common;

use std::time::Duration;

use common::{Server, Worker, eventually, register, submit, wait_finished};
use faasd::client::Client;
use nix::sys::signal::Signal;

/// A payload of `len` bytes that names task `i` in its first bytes.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("task-{i}:").into_bytes();
    bytes.resize(len, b'a' + (i % 26) as u8);
    bytes
}

/// Submits tasks of `echo` with payloads of various sizes around the in-memory limit.
async fn submit_mixed(client: &Client) -> Vec<(String, Vec<u8>)> {
    let mut tasks = Vec::new();
    for (i, len) in [10, 512, 513, 100_000, 2_000_000, 40]
        .into_iter()
        .enumerate()
    {
        let bytes = payload(i, len);
        tasks.push((submit(client, "echo", &bytes).await, bytes));
    }
    tasks
}

/// Waits for each task to complete with its own payload as its result.
async fn assert_echoed(client: &Client, tasks: &[(String, Vec<u8>)]) {
    for (id, bytes) in tasks {
        let task = wait_finished(client, id).await;
        assert_eq!(task["status"], "COMPLETED", "{task}");
        let answer = client
            .get(&format!("/v1/tasks/{id}/result"))
            .await
            .expect("result");
        assert_eq!(answer.body.len(), bytes.len(), "{task}");
        assert!(
            answer.body[..] == bytes[..],
            "task {id} got another payload"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_payloads_of_every_size_reach_a_worker_that_joins_later() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let tasks = submit_mixed(&client).await;
    let _worker = Worker::start(&server.worker_addr, "late", 2, "push");
    assert_echoed(&client, &tasks).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_payloads_survive_kill_9_and_run_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start_on(&data, &["--local-workers", "0"]);
    let client = server.client();
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let tasks = submit_mixed(&client).await;
    server.stop_with(Signal::SIGKILL).await;
    drop(server);
    // Large payloads wait in files beside the database, so the database (which redb verifies
    // page by page after a crash) stays small whatever they weigh.
    let db_bytes = std::fs::metadata(data.join("faasd.redb"))
        .expect("db")
        .len();
    assert!(db_bytes < 2_000_000, "the database holds {db_bytes} bytes");
    assert_eq!(value_files(&data, "payload"), 2);
    // A payload file a crash left for a task that was never stored.
    let orphan = data.join("values").join(format!("{:032x}.payload", 1));
    std::fs::write(&orphan, b"never committed").expect("orphan file");

    let server = Server::start_on(&data, &["--local-workers", "2"]);
    let client = server.client();
    assert_echoed(&client, &tasks).await;
    // Finished tasks keep their payload files (a replay reads them until the task is purged),
    // the orphan is swept, large results have files.
    eventually("the orphan swept", Duration::from_secs(10), || async {
        match (orphan.exists(), value_files(&data, "payload")) {
            (false, 2) => Ok(()),
            (orphan, n) => Err(format!("orphan left: {orphan}, {n} payload files")),
        }
    })
    .await;
    assert_eq!(value_files(&data, "result"), 2);
}

/// How many value files of `kind` (`payload`, `result`, `logs`) the data directory holds.
fn value_files(data: &std::path::Path, kind: &str) -> usize {
    std::fs::read_dir(data.join("values"))
        .expect("values directory")
        .filter(|e| {
            let name = e.as_ref().expect("entry").file_name();
            name.to_string_lossy().ends_with(&format!(".{kind}"))
        })
        .count()
}
