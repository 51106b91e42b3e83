//! Remote workers: push and pull dispatch, lost and frozen workers, the protocol handshake,
//! malformed peers, and a server restart under a connected worker.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Server, Worker, eventually, invoke, register, status, submit, text, wait_finished,
    wait_running, wait_workers,
};
use faasd::proto::{self, DispatchMode, Frame};
use nix::sys::signal::{Signal, kill};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn push_and_pull_workers_share_a_thousand_tasks() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let _workers = [
        Worker::start(&server.worker_addr, "push-1", 2, "push"),
        Worker::start(&server.worker_addr, "push-2", 2, "push"),
        Worker::start(&server.worker_addr, "pull-1", 2, "pull"),
        Worker::start(&server.worker_addr, "pull-2", 2, "pull"),
    ];
    wait_workers(&client, 4).await;
    assert_eq!(
        register(&client, "echo", "sleep 0.01; cat", serde_json::json!({}))
            .await
            .status,
        201
    );
    let mut submitters = tokio::task::JoinSet::new();
    for c in 0..8 {
        let client = client.clone();
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..125 {
                ids.push(submit(&client, "echo", format!("{c}-{i}").as_bytes()).await);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(batch) = submitters.join_next().await {
        ids.extend(batch.expect("submitter"));
    }
    for id in &ids {
        assert_eq!(wait_finished(&client, id).await["status"], "COMPLETED");
    }
    let list = wait_workers(&client, 4).await;
    let total: u64 = list.iter().map(|w| w["done"].as_u64().unwrap_or(0)).sum();
    assert_eq!(total, 1000, "{list:?}");
    for w in &list {
        assert!(
            w["done"].as_u64().unwrap_or(0) > 0,
            "worker {} ran nothing: {list:?}",
            w["name"]
        );
    }
    let out = server.cli(&["workers"]);
    assert!(
        text(&out.stdout).contains("pull-2"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_call_with_no_worker_is_refused_at_once_and_an_async_one_waits_for_one() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = invoke(&client, "echo", b"now").await;
    common::expect_no_workers(&answer, "faasd worker");
    let out = server.cli(&["invoke", "echo", "now"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no worker"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        common::queued(&client).await,
        0,
        "the refused calls left no task"
    );
    // An async call is queued and runs once a worker joins; then sync calls run too.
    let queued = submit(&client, "echo", b"later").await;
    let _worker = Worker::start(&server.worker_addr, "w", 1, "push");
    wait_workers(&client, 1).await;
    assert_eq!(wait_finished(&client, &queued).await["status"], "COMPLETED");
    let answer = invoke(&client, "echo", b"now").await;
    assert_eq!(
        (answer.status.as_u16(), text(&answer.body)),
        (200, "now".into())
    );
}

/// A server with two one-slot push workers running `sleep 2; echo $PPID` (the worker's pid is
/// the executor's parent; the workers run `--sandbox none`, since inside the sandbox the parent
/// is the namespace's init): returns them, the task id, and the pid of the worker running it.
async fn long_task_on_two_workers() -> (Server, [Worker; 2], String, nix::unistd::Pid) {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let unsandboxed = ["--sandbox", "none"];
    let workers = [
        Worker::start_with(&server.worker_addr, "w0", 1, "push", &unsandboxed),
        Worker::start_with(&server.worker_addr, "w1", 1, "push", &unsandboxed),
    ];
    wait_workers(&client, 2).await;
    let answer = register(
        &client,
        "who",
        "sleep 2; echo $PPID",
        serde_json::json!({"timeout": "10s"}),
    )
    .await;
    assert_eq!(answer.status, 201);
    let id = submit(&client, "who", b"").await;
    let busy_worker = || async {
        let list = common::workers(&client).await;
        match list.iter().find(|w| w["running"] == 1) {
            Some(busy) => {
                let name = busy["name"].as_str().expect("name");
                let index: usize = name.trim_start_matches('w').parse().expect("worker index");
                Ok(workers[index].pid())
            }
            None => Err(serde_json::Value::from(list)),
        }
    };
    let pid = eventually(
        "a worker to run the task",
        Duration::from_secs(10),
        busy_worker,
    )
    .await;
    (server, workers, id, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_loses_its_task_to_another_worker() {
    let (server, workers, id, victim) = long_task_on_two_workers().await;
    let client = server.client();
    let killed_at = Instant::now();
    kill(victim, Signal::SIGKILL).expect("kill worker");
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(task["attempts"], 2, "{task}");
    // timeout (10 s) + 3 heartbeats + a few seconds.
    assert!(
        killed_at.elapsed() < Duration::from_secs(18),
        "took {:?}",
        killed_at.elapsed()
    );
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    let survivor = workers
        .iter()
        .position(|w| w.pid() != victim)
        .expect("survivor");
    assert_eq!(
        text(&result.body).trim(),
        workers[survivor].pid().to_string()
    );
    // The finished record names the worker its last attempt ran on.
    assert_eq!(task["worker"], format!("w{survivor}"), "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_s_late_result_is_refused() {
    let (server, workers, id, frozen) = long_task_on_two_workers().await;
    let client = server.client();
    kill(frozen, Signal::SIGSTOP).expect("stop worker");
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(task["attempts"], 2, "{task}");
    let survivor = workers
        .iter()
        .find(|w| w.pid() != frozen)
        .expect("survivor")
        .pid();
    let first = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    assert_eq!(text(&first.body).trim(), survivor.to_string());

    // Thaw it: it finds its session gone, stops its copy (whose report no session would take)
    // and reconnects; the task keeps the survivor's end.
    kill(frozen, Signal::SIGCONT).expect("continue worker");
    wait_workers(&client, 2).await;
    let again = status(&client, &id).await;
    assert_eq!(again["attempts"], 2, "{again}");
    assert_eq!(
        again["finished_at"], task["finished_at"],
        "the task ended twice: {again}"
    );
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    assert_eq!(result.body, first.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_the_wrong_protocol_version_is_refused() {
    let server = Server::start(&["--local-workers", "0"]);
    let stream = tokio::net::TcpStream::connect(&server.worker_addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = proto::split(stream);
    writer
        .send(&Frame::Hello {
            protocol: 999,
            name: "time-traveller".into(),
            slots: 1,
            mode: DispatchMode::Push,
            runtimes: vec![proto::Runtime::Shell],
        })
        .await
        .expect("send hello");
    match reader.next().await.expect("read answer") {
        Some(Frame::Refused { reason }) => {
            assert!(reason.contains("protocol version mismatch"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(reader.next().await.expect("eof"), None);

    // A worker of protocol 9, whose `Hello` had no runtimes and so does not decode here, is
    // told the same rather than dropped (it would reconnect for ever).
    let mut stream = tokio::net::TcpStream::connect(&server.worker_addr)
        .await
        .expect("connect");
    // Variant 0 (`Hello`), protocol 9, its name, slots 1, `push`: as a version-9 worker sent it.
    let old_hello = postcard::to_allocvec(&(0_u32, 9_u32, "old", 1_u32, 0_u32)).expect("encode");
    let mut framed = (old_hello.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&old_hello);
    stream.write_all(&framed).await.expect("send the old hello");
    let (mut reader, _writer) = proto::split(stream);
    match reader.next().await.expect("read answer") {
        Some(Frame::Refused { reason }) => {
            assert!(reason.contains("worker speaks 9"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let health = server.client().get("/healthz").await.expect("healthz");
    assert_eq!(health.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_peers_do_not_disturb_a_concurrent_client() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let _worker = Worker::start(&server.worker_addr, "good", 2, "push");
    wait_workers(&client, 1).await;
    assert_eq!(
        register(&client, "echo", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );

    let addr = server.worker_addr.clone();
    let attackers = tokio::spawn(async move {
        let mut garbage = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        garbage
            .write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
            .await
            .expect("write");
        let mut huge = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        huge.write_all(&u32::MAX.to_be_bytes())
            .await
            .expect("write");
        let mut truncated = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        truncated
            .write_all(&[0, 0, 0, 100, 1, 2, 3])
            .await
            .expect("write");
        drop(truncated);
        let silent = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        // Each misbehaving connection is closed by the server (read returns 0 or an error).
        for mut stream in [garbage, huge, silent] {
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(
                closed.is_ok(),
                "the server kept a misbehaving connection open"
            );
        }
    });
    for i in 0..50 {
        let payload = format!("call {i}");
        let answer = invoke(&client, "echo", payload.as_bytes()).await;
        assert_eq!(text(&answer.body), payload);
    }
    attackers.await.expect("attackers");
    assert_eq!(wait_workers(&client, 1).await[0]["name"], "good");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_reconnects_after_the_server_restarts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let worker_listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args = [
        "--local-workers",
        "0",
        "--worker-listen",
        worker_listen.as_str(),
    ];
    let mut server = Server::start_on(&data, &args);
    let client = server.client();
    let _worker = Worker::start(&worker_listen, "steady", 1, "pull");
    wait_workers(&client, 1).await;
    assert_eq!(
        register(&client, "echo", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );
    let answer = invoke(&client, "echo", b"before").await;
    assert_eq!(&answer.body[..], b"before");
    let before = answer.headers["x-faasd-task-id"]
        .to_str()
        .expect("task id")
        .to_owned();

    assert_eq!(server.stop_with(Signal::SIGTERM).await, Some(0));
    drop(server);
    let server = Server::start_on(&data, &args);
    let client = server.client();
    // The stored record still names the worker that ran it.
    let task = status(&client, &before).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(task["worker"], "steady", "{task}");
    wait_workers(&client, 1).await;
    let answer = invoke(&client, "echo", b"after").await;
    assert_eq!(&answer.body[..], b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_worker_it_finishes_its_task_and_takes_no_new_one() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let mut worker = Worker::start(&server.worker_addr, "drainer", 1, "push");
    wait_workers(&client, 1).await;
    let answer = register(&client, "nap", "sleep 1; echo done", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let running = submit(&client, "nap", b"").await;
    wait_running(&client, &running).await;
    kill(worker.pid(), Signal::SIGTERM).expect("signal worker");
    // Wait (bounded) until the server has seen the drain, then queue more work.
    let draining = || async {
        let list = wait_workers(&client, 1).await;
        if list[0]["state"] == "draining" {
            Ok(())
        } else {
            Err(serde_json::Value::from(list))
        }
    };
    eventually(
        "the worker to report draining",
        Duration::from_secs(10),
        draining,
    )
    .await;
    let waiting = submit(&client, "nap", b"").await;

    let exit = tokio::task::spawn_blocking(move || {
        let status = worker.child.wait().expect("wait worker");
        (status.code(), worker)
    })
    .await
    .expect("join");
    assert_eq!(exit.0, Some(0), "a drained worker exits 0");
    // Its report left before it exited; the server commits it on its own time.
    let task = wait_finished(&client, &running).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(status(&client, &waiting).await["status"], "QUEUED");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_and_remote_workers_report_their_machines_health() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let remote = Worker::start(&server.worker_addr, "remote-health", 1, "pull");
    let reported = eventually(
        "both workers' health reports",
        Duration::from_secs(20),
        || async {
            let list = common::workers(&client).await;
            let all = list.len() == 2 && list.iter().all(|w| w["cpu_percent"].is_f64());
            if all {
                Ok(list)
            } else {
                Err(serde_json::Value::from(list))
            }
        },
    )
    .await;
    for w in &reported {
        let cpu = w["cpu_percent"].as_f64().expect("cpu_percent");
        assert!((0.0..=100.0).contains(&cpu), "{w}");
        let total = w["memory_total_bytes"]
            .as_u64()
            .expect("memory_total_bytes");
        let used = w["memory_used_bytes"].as_u64().expect("memory_used_bytes");
        assert!(total > 0 && used <= total, "{w}");
        assert!(w["load1"].as_f64().is_some_and(|l| l >= 0.0), "{w}");
        assert!(w["last_heartbeat_ms"].as_u64() > Some(0), "{w}");
        assert_eq!(w["state"], "ready", "{w}");
    }
    assert!(
        reported.iter().any(|w| w["address"] == "local"),
        "{reported:?}"
    );

    let table = server.cli(&["workers"]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    let header = table.lines().next().expect("a header");
    for column in ["CPU", "MEMORY", "LOAD", "RUNTIMES"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("shell,exec"), "{table}");
    assert!(table.contains('%') && table.contains("MiB"), "{table}");

    // A worker that stops heartbeating shows as stale before the server drops it.
    kill(remote.pid(), Signal::SIGSTOP).expect("stop worker");
    eventually(
        "the frozen worker to show as stale",
        Duration::from_secs(20),
        || async {
            let list = common::workers(&client).await;
            let frozen = list.iter().find(|w| w["name"] == "remote-health");
            match frozen {
                Some(w) if w["state"] == "stale" => Ok(()),
                _ => Err(serde_json::Value::from(list)),
            }
        },
    )
    .await;
    wait_workers(&client, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_on_the_same_cache_exits_1_saying_so() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let cache = tempfile::tempdir().expect("tempdir");
    let worker = |name: &str| {
        std::process::Command::new(common::BIN)
            .args(["worker", "--server", &server.worker_addr, "--name", name])
            .arg("--cache")
            .arg(cache.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start faasd worker")
    };
    let mut first = worker("first");
    wait_workers(&client, 1).await;
    let second = worker("second").wait_with_output().expect("second worker");
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use: another faasd worker holds its lock"),
        "{stderr}"
    );
    // The first keeps working.
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    assert_eq!(
        text(&invoke(&client, "echo", b"still here").await.body),
        "still here"
    );
    assert_eq!(wait_workers(&client, 1).await[0]["name"], "first");
    let _ = first.kill();
    let _ = first.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_go_only_to_workers_that_run_their_runtime() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let no_python = ["--sandbox", "none", "--python", "/nonexistent/python3"];
    let _plain = Worker::start_with(&server.worker_addr, "plain", 2, "push", &no_python);
    let listed = wait_workers(&client, 1).await;
    assert_eq!(
        listed[0]["runtimes"],
        serde_json::json!(["shell", "exec"]),
        "{listed:?}"
    );
    let code = "def handle(event):\n    return event\n";
    let answer = register(
        &client,
        "py",
        code,
        serde_json::json!({"runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));

    // Only a worker without Python: a sync call is refused at once, naming why; an async one
    // waits in its queue rather than failing on that worker.
    let refused = invoke(&client, "py", b"1").await;
    common::expect_no_workers(&refused, "can run python functions");
    let queued = submit(&client, "py", b"2").await;
    let python = Worker::unsandboxed(&server.worker_addr, "python", 2);
    wait_workers(&client, 2).await;
    let done = wait_finished(&client, &queued).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    // With both connected, every python task runs on the one that can, and shell tasks on
    // either.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit(&client, "py", i.to_string().as_bytes()).await);
    }
    for id in &ids {
        let task = wait_finished(&client, id).await;
        assert_eq!(task["status"], "COMPLETED", "{task}");
    }
    let done_by = |list: &[serde_json::Value], name: &str| {
        list.iter()
            .find(|w| w["name"] == name)
            .and_then(|w| w["done"].as_u64())
    };
    let list = wait_workers(&client, 2).await;
    assert_eq!(done_by(&list, "plain"), Some(0), "{list:?}");
    assert_eq!(done_by(&list, "python"), Some(11), "{list:?}");
    drop(python);
}

/// A server with no local workers, one unsandboxed remote worker of one slot, and `nap`, a
/// function that writes its process id to `pid_file`, then sleeps 20 s.
async fn one_worker_and_a_nap(pid_file: &Path) -> (Server, Worker) {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let worker = Worker::unsandboxed(&server.worker_addr, "only", 1);
    wait_workers(&client, 1).await;
    let settings = serde_json::json!({
        "timeout": "30s",
        "env": {"PID_FILE": pid_file.to_str().expect("utf-8 path")},
    });
    let code = "echo $$ > \"$PID_FILE\"\nexec sleep 20\n";
    let answer = register(&client, "nap", code, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    (server, worker)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_call_whose_last_worker_is_lost_is_answered_503_with_its_queued_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut worker) = one_worker_and_a_nap(&dir.path().join("pid")).await;
    let client = server.client();
    let caller = {
        let client = server.client();
        tokio::spawn(async move { invoke(&client, "nap", b"").await })
    };
    let running = || async {
        let tasks: serde_json::Value = client
            .get("/v1/tasks?status=RUNNING")
            .await
            .map_err(|e| e.to_string())?
            .json()
            .map_err(|e| e.to_string())?;
        match tasks["tasks"].as_array().and_then(|t| t.first()) {
            Some(task) => Ok(task["id"].as_str().unwrap_or_default().to_owned()),
            None => Err(format!("nothing running yet: {tasks}")),
        }
    };
    let id = eventually("the call to run", Duration::from_secs(20), running).await;
    // Its status names the worker running it.
    assert_eq!(status(&client, &id).await["worker"], "only");

    // The only worker dies: the caller hears at once, with the task's id, instead of waiting
    // for a worker that may never come; the task is queued again for the next one.
    kill(worker.pid(), Signal::SIGKILL).expect("kill the worker");
    let _ = worker.child.wait();
    let answer = tokio::time::timeout(Duration::from_secs(20), caller)
        .await
        .expect("an answer within 20 s")
        .expect("the caller");
    let error = common::expect_no_workers(&answer, "QUEUED again");
    assert_eq!(error["task_id"], id.as_str(), "{error}");
    let queued = status(&client, &id).await;
    assert_eq!(queued["status"], "QUEUED");
    assert!(queued["worker"].is_null(), "{queued}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_misconfigured_for_its_server_exits_at_once_saying_why() {
    let server = Server::start(&["--local-workers", "0"]);
    let run = |args: &[&str]| {
        let cache = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(common::BIN)
            .arg("worker")
            .args(args)
            .arg("--cache")
            .arg(cache.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run faasd worker");
        (out.status.code(), text(&out.stderr))
    };
    // No port, a URL, an IPv6 address without brackets: it could never connect.
    for server in ["127.0.0.1", "http://127.0.0.1:7000", "::1"] {
        let (code, stderr) = run(&["--server", server]);
        assert_eq!(code, Some(2), "{server}: {stderr}");
        assert!(stderr.contains("is not HOST:PORT"), "{server}: {stderr}");
    }
    // TLS against a plain worker port: the handshake can never succeed.
    let (code, stderr) = run(&["--server", &server.worker_addr, "--tls"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("did not complete a TLS handshake"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_stops_a_draining_worker_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let (server, mut worker) = one_worker_and_a_nap(&pid_file).await;
    let client = server.client();
    let id = submit(&client, "nap", b"").await;
    wait_running(&client, &id).await;
    let read_pid = || {
        std::future::ready(
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .ok_or("no pid yet"),
        )
    };
    let pid = eventually("the task's pid", Duration::from_secs(10), read_pid).await;
    // The first signal drains (the task has 20 s to go); the second does not wait for it.
    kill(worker.pid(), Signal::SIGTERM).expect("first signal");
    let draining = || async {
        let list = common::workers(&client).await;
        match list.first().map(|w| w["state"].clone()) {
            Some(state) if state == "draining" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    eventually("the worker to drain", Duration::from_secs(10), draining).await;
    kill(worker.pid(), Signal::SIGTERM).expect("second signal");
    let child = &mut worker.child;
    let exited = || std::future::ready(child.try_wait().expect("try_wait").ok_or("running"));
    let status = eventually("the worker to exit", Duration::from_secs(5), exited).await;
    assert_eq!(status.code(), Some(143));
    // It killed the task's process before it went (a zombie waiting for its reaper counts).
    let gone = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        std::future::ready(match state {
            None | Some("Z") => Ok(()),
            Some(other) => Err(format!("process {pid} is {other}")),
        })
    };
    eventually(
        "the task's process to be gone",
        Duration::from_secs(5),
        gone,
    )
    .await;
    // The server takes the task back.
    let queued = || async {
        match status_of(&client, &id).await.as_str() {
            "QUEUED" => Ok(()),
            other => Err(other.to_owned()),
        }
    };
    eventually(
        "the task back in its queue",
        Duration::from_secs(10),
        queued,
    )
    .await;
}

async fn status_of(client: &faasd::client::Client, id: &str) -> String {
    status(client, id).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A server paused past three heartbeats (SIGSTOP, a suspended machine) drops its own local
/// worker as it would any silent one; the local worker joins again once it runs, rather than
/// leaving the server without workers.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_worker_joins_again_after_the_server_was_paused() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    assert_eq!(
        register(&client, "echo", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_secs(5));
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let answered = || async {
        let answer = invoke(&client, "echo", b"back").await;
        match answer.status.as_u16() {
            200 => Ok(text(&answer.body)),
            _ => Err(text(&answer.body)),
        }
    };
    let echoed = eventually(
        "a sync call to run again",
        Duration::from_secs(20),
        answered,
    )
    .await;
    assert_eq!(echoed, "back");
    let names: Vec<String> = wait_workers(&client, 1)
        .await
        .iter()
        .map(|w| w["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["local"]);
}
