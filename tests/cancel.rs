//! Cancelling tasks: queued ones by id, by function, by `rm`; running ones by id, on local and
//! remote workers, cold and warm, and with a worker that does not answer or is lost; what
//! waiters, the CLI and a restart after a crash see; and who may cancel whose tasks.
//!
//! The functions here append their payload to a file (`--sandbox none`, so the host file is
//! theirs to write), so a task that ran cannot hide it.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{
    Server, Worker, eventually, expect_error, register, status, submit, text, wait_finished,
    wait_workers,
};
use faasd::client::{Answer, Client};

/// Appends its payload, one line, to `$LOG`.
const APPEND: &str = "printf '%s\\n' \"$(cat)\" >> \"$LOG\"\n";

/// Holds its slot until the file `$GATE` exists (for two minutes at most, so that a failed test
/// leaves nothing running for long).
const GATE: &str = "end=$(($(date +%s) + 120))\nwhile [ ! -e \"$GATE\" ] && [ \"$(date +%s)\" -lt $end ]; do sleep 0.01; done\n";

/// Registers `name` as [`APPEND`] writing to `log`.
async fn register_append(client: &Client, name: &str, log: &Path) {
    let env = serde_json::json!({"env": {"LOG": log.to_str().expect("utf-8 path")}});
    let answer = register(client, name, APPEND, env).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

/// Registers `gate` as [`GATE`] waiting for `file`, and starts one call of it, which holds the
/// server's only slot until `file` exists; returns its task id once it runs.
async fn hold_the_slot(client: &Client, file: &Path) -> String {
    let settings = serde_json::json!({
        "env": {"GATE": file.to_str().expect("utf-8 path")},
        "timeout": "60s",
    });
    let answer = register(client, "gate", GATE, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let id = submit(client, "gate", b"").await;
    common::wait_running(client, &id).await;
    id
}

/// Reads `events` until the event of task `id` ending FAILED.
async fn failed_event(events: &mut faasd::client::EventStream, id: &str) -> serde_json::Value {
    loop {
        let event = events.next().await.expect("read").expect("an event");
        if event.event != "task" {
            continue;
        }
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("json");
        if data["id"] == id && data["status"] == "FAILED" {
            return data;
        }
    }
}

/// Adds a user (as `admin`) and returns a client with its token.
async fn add_user(server: &Server, admin: &Client, name: &str, role: &str) -> Client {
    let body = serde_json::json!({"name": name, "role": role}).to_string();
    let answer = admin
        .post("/v1/users", "application/json", Bytes::from(body))
        .await
        .expect("add user");
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let v: serde_json::Value = answer.json().expect("json");
    let token = v["token"].as_str().expect("token");
    server.client().with_token(token).expect("client")
}

async fn post(client: &Client, path: &str) -> Answer {
    client
        .post(path, "application/json", Bytes::new())
        .await
        .expect("request")
}

/// The lines the functions appended to `log` (none when it does not exist).
fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts that `task` was stopped while RUNNING, by `who`.
fn assert_stopped(task: &serde_json::Value, who: &str) {
    assert_eq!(task["status"], "FAILED", "{task}");
    assert_eq!(task["reason"], "cancelled", "{task}");
    assert_eq!(
        task["message"],
        format!("cancelled by {who} while it ran"),
        "{task}"
    );
    assert!(!task["started_at"].is_null(), "it ran: {task}");
}

fn assert_cancelled(task: &serde_json::Value) {
    assert_eq!(task["status"], "FAILED", "{task}");
    assert_eq!(task["reason"], "cancelled", "{task}");
    assert!(task["started_at"].is_null(), "it never started: {task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_task_is_cancelled_never_runs_and_its_waiters_see_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, open) = (dir.path().join("log"), dir.path().join("open"));
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    register_append(&client, "side", &log).await;
    let gate = hold_the_slot(&client, &open).await;
    let first = submit(&client, "side", b"first").await;
    let second = submit(&client, "side", b"second").await;

    // Waiters on the first task: a long poll and an event stream.
    let mut events = client
        .events("/v1/events?function=side")
        .await
        .expect("stream");
    let waiting = {
        let client = server.client();
        let body = serde_json::json!({"ids": [first], "wait": "30s"}).to_string();
        tokio::spawn(async move {
            let answer = client
                .post("/v1/tasks/wait", "application/json", Bytes::from(body))
                .await
                .expect("wait");
            answer.json::<serde_json::Value>().expect("json")
        })
    };
    let cancelled = post(&client, &format!("/v1/tasks/{first}/cancel")).await;
    assert_eq!(cancelled.status, 200, "{}", text(&cancelled.body));
    let view: serde_json::Value = cancelled.json().expect("json");
    assert_cancelled(&view);
    assert!(
        view["message"]
            .as_str()
            .expect("message")
            .contains("cancelled by")
    );
    assert_cancelled(&status(&client, &first).await);
    let waited = waiting.await.expect("waiter");
    assert_cancelled(&waited["tasks"][0]);
    let event = tokio::time::timeout(Duration::from_secs(10), failed_event(&mut events, &first))
        .await
        .expect("the cancelled end on the event stream within 10 s");
    assert_eq!(event["reason"], "cancelled", "{event}");

    // The running gate is stopped; then the second task runs, the first never.
    let running = post(&client, &format!("/v1/tasks/{gate}/cancel")).await;
    assert_eq!(running.status, 200, "{}", text(&running.body));
    assert_stopped(&running.json().expect("json"), "local");
    let done = wait_finished(&client, &second).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(lines(&log), ["second"]);
    // Its result answers the failure: 409 task_cancelled, reason cancelled.
    let result = client
        .get(&format!("/v1/tasks/{first}/result"))
        .await
        .expect("result");
    let body = expect_error(&result, 409, "task_cancelled");
    assert_eq!(body["reason"], "cancelled", "{body}");
    // A finished task: 409 task_finished with its status.
    for id in [&first, &second] {
        let again = post(&client, &format!("/v1/tasks/{id}/cancel")).await;
        let body = expect_error(&again, 409, "task_finished");
        assert!(
            body["status"] == "FAILED" || body["status"] == "COMPLETED",
            "{body}"
        );
    }
    let unknown = post(
        &client,
        "/v1/tasks/0190c1e2-0000-7000-8000-000000000001/cancel",
    )
    .await;
    expect_error(&unknown, 404, "task_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_cancels_tasks_and_exits_by_what_it_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("never");
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    register_append(&client, "side", &dir.path().join("log")).await;
    let gate = hold_the_slot(&client, &open).await;
    let (a, b) = (
        submit(&client, "side", b"a").await,
        submit(&client, "side", b"b").await,
    );

    let out = server.cli(&["cancel", &a, &b]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("cancelled {a}\ncancelled {b}\n"));
    // Already ended: exit 7, the reason on stderr; with --json one document.
    let out = server.cli(&["cancel", &a, "--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already ended FAILED (cancelled)"),
        "{}",
        text(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["errors"][0]["code"], "task_finished", "{doc}");
    // Unknown: exit 4. The first refusal's code wins; every id is tried.
    let unknown = "0190c1e2-0000-7000-8000-000000000001";
    let c = submit(&client, "side", b"c").await;
    let out = server.cli(&["cancel", unknown, &c]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_cancelled(&status(&client, &c).await);
    // By function: how many, as text or JSON.
    let d = submit(&client, "side", b"d").await;
    let out = server.cli(&["cancel", "--function", "side"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "cancelled 1 queued task of side\n");
    assert_cancelled(&status(&client, &d).await);
    let out = server.cli(&["cancel", "--function", "side", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc, serde_json::json!({"function": "side", "cancelled": 0}));
    let out = server.cli(&["cancel", "--function", "nope"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    // RUNNING: stopped.
    let out = server.cli(&["cancel", &gate]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("cancelled {gate}\n"));
    assert_stopped(&status(&client, &gate).await, "local");
}

/// Submits `n` tasks of `name` as batches; returns their ids.
async fn submit_many(client: &Client, name: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let count = (n - ids.len()).min(5000);
        let payloads: Vec<String> = (0..count).map(|i| format!("p{}", ids.len() + i)).collect();
        let body = serde_json::to_vec(&payloads).expect("json");
        let answer = client
            .post(
                &format!("/v1/functions/{name}/batch"),
                "application/json",
                body.into(),
            )
            .await
            .expect("batch");
        assert_eq!(answer.status, 202, "{}", text(&answer.body));
        let v: serde_json::Value = answer.json().expect("json");
        let new = v["task_ids"].as_array().expect("task_ids");
        ids.extend(new.iter().map(|id| id.as_str().expect("id").to_owned()));
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_functions_queued_tasks_are_cancelled_at_once_by_version_or_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    // No worker: everything stays queued until cancelled. An event buffer far smaller than
    // the burst of ends, which a stream must still receive whole.
    let args = [
        "--local-workers",
        "0",
        "--sandbox",
        "none",
        "--event-buffer",
        "1024",
    ];
    let server = Server::start(&args);
    let client = server.client();
    register_append(&client, "many", &log).await;
    let v1 = submit_many(&client, "many", 20_000).await;
    register_append(&client, "many", &log).await;
    let v2 = submit_many(&client, "many", 30).await;
    assert_eq!(common::queued(&client).await, 20_030);
    let mut events = client
        .events("/v1/events?function=many")
        .await
        .expect("stream");
    let watcher = tokio::spawn(async move {
        let mut ends = 0;
        while ends < 20_030 {
            let event = events.next().await.expect("read").expect("an event");
            assert_ne!(event.event, "dropped", "{}", event.data);
            ends += usize::from(event.event == "task" && event.data.contains("\"FAILED\""));
        }
        ends
    });

    let answer = post(&client, "/v1/functions/many/cancel?version=2").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let body: serde_json::Value = answer.json().expect("json");
    assert_eq!(
        body,
        serde_json::json!({"function": "many", "cancelled": 30})
    );
    assert_cancelled(&status(&client, &v2[29]).await);
    assert_eq!(status(&client, &v1[0]).await["status"], "QUEUED");

    let answer = post(&client, "/v1/functions/many/cancel").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let body: serde_json::Value = answer.json().expect("json");
    assert_eq!(body["cancelled"], 20_000, "{body}");
    assert_eq!(common::queued(&client).await, 0);
    for id in [&v1[0], &v1[9_999], &v1[19_999]] {
        assert_cancelled(&status(&client, id).await);
    }
    let listed = client
        .get("/v1/tasks?function=many&status=QUEUED")
        .await
        .expect("list");
    let listed: serde_json::Value = listed.json().expect("json");
    assert_eq!(listed["tasks"], serde_json::json!([]), "{listed}");
    let missing = post(&client, "/v1/functions/nope/cancel").await;
    expect_error(&missing, 404, "function_not_found");
    assert!(lines(&log).is_empty());
    let ends = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("every end on the event stream within 60 s")
        .expect("watcher");
    assert_eq!(ends, 20_030);
}

#[tokio::test(flavor = "multi_thread")]
async fn rm_cancels_the_queued_tasks_and_nothing_comes_back_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, log) = (dir.path().join("data"), dir.path().join("log"));
    let mut server = Server::start_on(&data, &["--local-workers", "0", "--sandbox", "none"]);
    let client = server.client();
    register_append(&client, "kept", &log).await;
    register_append(&client, "gone", &log).await;
    let cancelled = submit(&client, "kept", b"cancelled").await;
    let kept = submit(&client, "kept", b"kept").await;
    let removed: Vec<String> = [b"r1", b"r2", b"r3"]
        .iter()
        .map(|p| submit(&client, "gone", *p))
        .collect::<futures_util::future::JoinAll<_>>()
        .await;
    let answer = post(&client, &format!("/v1/tasks/{cancelled}/cancel")).await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));

    let out = server.cli(&["rm", "gone"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "removed gone (cancelled its 3 queued tasks)\n"
    );
    for id in &removed {
        let task = status(&client, id).await;
        assert_cancelled(&task);
        assert!(
            task["message"]
                .as_str()
                .expect("message")
                .contains("was removed"),
            "{task}"
        );
    }

    // kill -9, then a start with a worker: the kept task runs, nothing cancelled does.
    server.stop_with(nix::sys::signal::Signal::SIGKILL).await;
    let server = Server::start_on(&data, &["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    let done = wait_finished(&client, &kept).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    for id in removed.iter().chain([&cancelled]) {
        assert_cancelled(&status(&client, id).await);
    }
    let healthy = || async {
        let health: serde_json::Value = client
            .get("/healthz")
            .await
            .map_err(|e| e.to_string())?
            .json()
            .map_err(|e| e.to_string())?;
        match (health["queued"].as_u64(), health["running"].as_u64()) {
            (Some(0), Some(0)) => Ok(()),
            _ => Err(health.to_string()),
        }
    };
    eventually("an idle server", Duration::from_secs(10), healthy).await;
    assert_eq!(lines(&log), ["kept"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_function_s_running_task_is_not_started_again_when_its_worker_is_lost() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let dir = tempfile::tempdir().expect("tempdir");
    // Unsandboxed, so the function may write the host file.
    let unsandboxed = ["--sandbox", "none"];
    let mut worker = Worker::start_with(&server.worker_addr, "w1", 1, "push", &unsandboxed);
    wait_workers(&client, 1).await;
    // Never lets go of its slot: appends, then waits for a gate that never opens.
    let log = dir.path().join("log");
    let settings = serde_json::json!({
        "env": {"LOG": log.to_str().expect("utf-8 path"), "GATE": "/nonexistent"},
        "timeout": "60s",
    });
    let code = format!("{APPEND}{GATE}");
    let answer = register(&client, "stuck", code, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let id = submit(&client, "stuck", b"ran").await;
    let appended = || async {
        if lines(&log) == ["ran"] {
            Ok(())
        } else {
            Err("not yet")
        }
    };
    eventually("the task to run", Duration::from_secs(10), appended).await;
    let answer = client.delete("/v1/functions/stuck").await.expect("rm");
    assert!(answer.status.is_success(), "{}", text(&answer.body));

    // Its worker dies: the task is not queued again for the removed code.
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    let task = wait_finished(&client, &id).await;
    assert_eq!(
        (&task["status"], &task["reason"]),
        (&"FAILED".into(), &"cancelled".into()),
        "{task}"
    );
    let _next = Worker::start_with(&server.worker_addr, "w2", 1, "push", &unsandboxed);
    wait_workers(&client, 1).await;
    assert_eq!(lines(&log), ["ran"], "it ran once, before the removal");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invoker_cancels_only_its_own_tasks_while_it_may_invoke() {
    let server = Server::start(&["--local-workers", "0"]);
    let local = server.client();
    let admin = add_user(&server, &local, "root", "admin").await;
    let owner = add_user(&server, &admin, "dev", "developer").await;
    let alice = add_user(&server, &admin, "alice", "invoker").await;
    let bob = add_user(&server, &admin, "bob", "invoker").await;
    let answer = register(&owner, "f", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    for who in ["alice", "bob"] {
        let path = format!("/v1/users/{who}/grants/f");
        let answer = owner
            .request(hyper::Method::PUT, &path, None, Bytes::new())
            .await
            .expect("grant");
        assert_eq!(answer.status, 204, "{}", text(&answer.body));
    }
    let alices = submit(&alice, "f", b"a").await;
    let bobs = submit(&bob, "f", b"b").await;

    // Bob may not even read Alice's task; his cancel of the function takes only his own.
    let refused = post(&bob, &format!("/v1/tasks/{alices}/cancel")).await;
    expect_error(&refused, 404, "task_not_found");
    let mine = post(&bob, "/v1/functions/f/cancel").await;
    assert_eq!(
        mine.json::<serde_json::Value>().expect("json")["cancelled"],
        1
    );
    assert_cancelled(&status(&bob, &bobs).await);
    assert_eq!(status(&alice, &alices).await["status"], "QUEUED");
    // Without her grant Alice reads her task but may no longer cancel it; the owner may.
    let path = "/v1/users/alice/grants/f";
    let answer = owner
        .request(hyper::Method::DELETE, path, None, Bytes::new())
        .await
        .expect("revoke");
    assert_eq!(answer.status, 204, "{}", text(&answer.body));
    let refused = post(&alice, &format!("/v1/tasks/{alices}/cancel")).await;
    expect_error(&refused, 403, "forbidden");
    let refused = post(&alice, "/v1/functions/f/cancel").await;
    expect_error(&refused, 403, "forbidden");
    let answer = post(&owner, &format!("/v1/tasks/{alices}/cancel")).await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let view: serde_json::Value = answer.json().expect("json");
    assert_cancelled(&view);
    assert_eq!(view["message"], "cancelled by dev before it ran", "{view}");
}

/// Writes its process id to `$PIDS`, then loops until killed (for two minutes at most, so that
/// a failed test leaves nothing running for long).
const FOREVER: &str = "echo $$ >> \"$PIDS\"\nend=$(($(date +%s) + 120))\nwhile [ \"$(date +%s)\" -lt $end ]; do sleep 0.05; done\n";

/// Registers `name` as [`FOREVER`] writing to `pids`.
async fn register_forever(client: &Client, name: &str, pids: &Path) {
    let settings = serde_json::json!({
        "env": {"PIDS": pids.to_str().expect("utf-8 path")},
        "timeout": "120s",
    });
    let answer = register(client, name, FOREVER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

/// The process ids the [`FOREVER`] tasks wrote to `pids`, once there are `n`.
async fn pids(pids: &Path, n: usize) -> Vec<nix::unistd::Pid> {
    let read = || async {
        let found: Vec<nix::unistd::Pid> = std::fs::read_to_string(pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(nix::unistd::Pid::from_raw)
            .collect();
        if found.len() >= n {
            Ok(found)
        } else {
            Err(format!("{} of {n} tasks running", found.len()))
        }
    };
    eventually("the tasks to run", Duration::from_secs(20), read).await
}

/// Kills the process groups of these process ids when dropped.
struct KillGroups(Vec<nix::unistd::Pid>);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::killpg(*pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether process `pid` is gone (killed and reaped).
fn gone(pid: nix::unistd::Pid) -> bool {
    nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH)
}

/// Waits until process `pid` is gone (the kill is immediate; its reaping may follow the report
/// by a moment).
async fn wait_gone(pid: nix::unistd::Pid) {
    let reaped = || async {
        if gone(pid) {
            Ok(())
        } else {
            Err(format!("process {pid} still exists"))
        }
    };
    eventually(
        "the task's process to be gone",
        Duration::from_secs(10),
        reaped,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_is_stopped_its_process_killed_and_its_slot_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pid_file, log) = (dir.path().join("pids"), dir.path().join("log"));
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    register_forever(&client, "forever", &pid_file).await;
    register_append(&client, "next", &log).await;
    let running = submit(&client, "forever", b"").await;
    let pid = pids(&pid_file, 1).await[0];
    let next = submit(&client, "next", b"next").await;
    assert_eq!(status(&client, &next).await["status"], "QUEUED");
    let mut events = client
        .events("/v1/events?function=forever")
        .await
        .expect("stream");

    let answer = post(&client, &format!("/v1/tasks/{running}/cancel")).await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let view: serde_json::Value = answer.json().expect("json");
    assert_stopped(&view, "local");
    assert!(view["run_ms"].as_f64().expect("run_ms") > 0.0, "{view}");
    assert_eq!(
        view["cold_start"], true,
        "a shell task runs in a fresh process: {view}"
    );
    // Its end is durable and seen by readers and the event stream; its process is gone.
    assert_stopped(&status(&client, &running).await, "local");
    let event = tokio::time::timeout(Duration::from_secs(10), failed_event(&mut events, &running))
        .await
        .expect("the cancelled end on the event stream within 10 s");
    assert_eq!(event["reason"], "cancelled", "{event}");
    wait_gone(pid).await;
    // The freed slot runs the next task.
    let done = wait_finished(&client, &next).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(lines(&log), ["next"]);
    let again = post(&client, &format!("/v1/tasks/{running}/cancel")).await;
    expect_error(&again, 409, "task_finished");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_warm_call_is_stopped_and_its_executor_replaced() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    // Loops for two minutes at most, so that a failed test leaves nothing running for long.
    let code = "import time\n\ndef handle(event):\n    end = time.time() + 120\n    while 'forever' in str(event) and time.time() < end:\n        time.sleep(0.05)\n    return event\n";
    let settings = serde_json::json!({"runtime": "python", "timeout": "120s"});
    let answer = register(&client, "py", code, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let first = common::invoke(&client, "py", b"\"warm\"").await;
    assert_eq!(first.status, 200, "{}", text(&first.body));

    let id = submit(&client, "py", b"\"forever\"").await;
    common::wait_running(&client, &id).await;
    let answer = post(&client, &format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_stopped(&answer.json().expect("json"), "local");
    // The next call gets a fresh executor, and the pool counts one executor, not the killed
    // one's call as still busy.
    let after = common::invoke(&client, "py", b"\"after\"").await;
    assert_eq!(after.status, 200, "{}", text(&after.body));
    assert_eq!(text(&after.body), "\"after\"");
    let one = || async {
        let view: serde_json::Value = client
            .get("/v1/functions/py")
            .await
            .map_err(|e| e.to_string())?
            .json()
            .map_err(|e| e.to_string())?;
        match view["warm_executors"].as_u64() {
            Some(1) => Ok(()),
            other => Err(format!("warm_executors {other:?}")),
        }
    };
    eventually("one warm executor", Duration::from_secs(10), one).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_does_not_answer_gets_202_then_stops_the_task_or_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pids");
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let unsandboxed = ["--sandbox", "none"];
    let mut worker = Worker::start_with(&server.worker_addr, "w1", 2, "push", &unsandboxed);
    wait_workers(&client, 1).await;
    register_forever(&client, "forever", &pid_file).await;
    let (a, b) = (
        submit(&client, "forever", b"").await,
        submit(&client, "forever", b"").await,
    );
    let running = pids(&pid_file, 2).await;
    // A worker killed outright leaves its tasks' processes behind: kill them at the end.
    let _reap = KillGroups(running.clone());
    let (stop, resume) = (
        nix::sys::signal::Signal::SIGSTOP,
        nix::sys::signal::Signal::SIGCONT,
    );

    // A stopped worker cannot answer: 202, the task still RUNNING; the CLI exits 5.
    nix::sys::signal::kill(worker.pid(), stop).expect("stop the worker");
    let answer = post(&client, &format!("/v1/tasks/{a}/cancel?wait=100ms")).await;
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let view: serde_json::Value = answer.json().expect("json");
    assert_eq!(view["status"], "RUNNING", "{view}");
    let out = server.cli(&["cancel", &a, "--wait", "100ms"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("still RUNNING"),
        "{}",
        text(&out.stderr)
    );
    // Resumed, it reads the cancel, kills the process and reports.
    nix::sys::signal::kill(worker.pid(), resume).expect("resume the worker");
    let task = wait_finished(&client, &a).await;
    assert_eq!(task["reason"], "cancelled", "{task}");
    // Stopped by the worker, or (on a host slow enough that the stopped worker missed three
    // heartbeats) ended as lost: either way cancelled, never queued again.
    let message = task["message"].as_str().expect("message");
    assert!(
        message.starts_with("cancelled by local while it ran"),
        "{task}"
    );
    if message == "cancelled by local while it ran" {
        let one_gone = || async {
            match running.iter().filter(|pid| gone(**pid)).count() {
                0 => Err("neither process is gone"),
                _ => Ok(()),
            }
        };
        eventually("one process to be gone", Duration::from_secs(10), one_gone).await;
        assert!(!running.iter().all(|pid| gone(*pid)), "only one stopped");
    }

    // Lost before it answers: the task ends cancelled, not back in its queue.
    nix::sys::signal::kill(worker.pid(), stop).expect("stop the worker");
    let answer = post(&client, &format!("/v1/tasks/{b}/cancel?wait=0s")).await;
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    nix::sys::signal::kill(worker.pid(), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let _ = worker.child.wait();
    let task = wait_finished(&client, &b).await;
    assert_eq!(task["reason"], "cancelled", "{task}");
    let message = task["message"].as_str().expect("message");
    assert!(
        message.starts_with("cancelled by local while it ran; ")
            && message.ends_with("before it stopped"),
        "{task}"
    );
    assert!(task["run_ms"].as_f64().expect("run_ms") > 0.0, "{task}");
    let _next = Worker::start_with(&server.worker_addr, "w2", 2, "push", &unsandboxed);
    wait_workers(&client, 1).await;
    assert_eq!(common::queued(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_functions_running_tasks_are_stopped_with_its_queued_ones_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pids");
    let server = Server::start(&["--local-workers", "2", "--sandbox", "none"]);
    let client = server.client();
    register_forever(&client, "forever", &pid_file).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&client, "forever", b"").await);
    }
    let running = pids(&pid_file, 2).await;
    let _reap = KillGroups(running.clone());

    let out = server.cli(&["cancel", "--function", "forever", "--wait", "5s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--running"),
        "{}",
        text(&out.stderr)
    );
    // Without --running the two running tasks go on; with it they stop.
    let out = server.cli(&["cancel", "--function", "forever"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "cancelled 1 queued task of forever\n");
    assert!(running.iter().all(|pid| !gone(*pid)));
    let out = server.cli(&["cancel", "--function", "forever", "--running", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        doc,
        serde_json::json!({"function": "forever", "cancelled": 0, "stopped": 2, "stopping": 0})
    );
    for pid in &running {
        wait_gone(*pid).await;
    }
    let mut stopped = 0;
    for id in &ids {
        let task = status(&client, id).await;
        assert_eq!(task["reason"], "cancelled", "{task}");
        if !task["started_at"].is_null() {
            assert_stopped(&task, "local");
            stopped += 1;
        }
    }
    assert_eq!(stopped, 2);
    let answer = post(&client, "/v1/functions/forever/cancel?wait=1s").await;
    expect_error(&answer, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_loses_its_session_stops_its_tasks_and_runs_them_again_when_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pids");
    let mut server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let unsandboxed = ["--sandbox", "none"];
    let worker = Worker::start_with(&server.worker_addr, "w1", 2, "push", &unsandboxed);
    wait_workers(&client, 1).await;
    register_forever(&client, "forever", &pid_file).await;
    let ids = [
        submit(&client, "forever", b"").await,
        submit(&client, "forever", b"").await,
    ];
    let first = pids(&pid_file, 2).await;
    let _reap = KillGroups(first.clone());

    // Stopped past three heartbeats, the worker is lost: the server takes both tasks back.
    nix::sys::signal::kill(worker.pid(), nix::sys::signal::Signal::SIGSTOP).expect("stop");
    wait_workers(&client, 0).await;
    for id in &ids {
        assert_eq!(status(&client, id).await["status"], "QUEUED");
    }
    // Resumed, it finds its session gone and stops what that session ran; on its next session
    // it gets both tasks again and runs them anew.
    nix::sys::signal::kill(worker.pid(), nix::sys::signal::Signal::SIGCONT).expect("resume");
    for pid in &first {
        wait_gone(*pid).await;
    }
    let again = pids(&pid_file, 4).await;
    let _reap_again = KillGroups(again[2..].to_vec());
    for id in &ids {
        common::wait_running(&client, id).await;
    }

    // A server that dies outright takes every lease with it: the worker stops both tasks.
    server.stop_with(nix::sys::signal::Signal::SIGKILL).await;
    for pid in &again[2..] {
        wait_gone(*pid).await;
    }
}
