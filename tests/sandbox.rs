//! Hostile functions against `serve --sandbox strict`: each case ends the way it must, and a
//! benign function keeps being served alongside.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, invoke, register, submit, wait_finished};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Registers `script` (timeout 2 s), runs it, returns its status JSON, result and logs; then
/// checks a benign function still answers.
async fn run(server: &Server, name: &str, script: &str) -> (serde_json::Value, String, String) {
    let client = server.client();
    let answer = register(&client, name, script, serde_json::json!({"timeout": "2s"})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let id = submit(&client, name, b"").await;
    let task = wait_finished(&client, &id).await;
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    let logs = client
        .get(&format!("/v1/tasks/{id}/logs"))
        .await
        .expect("logs");
    let benign = invoke(&client, "benign", b"alive").await;
    assert_eq!(
        &benign.body[..],
        b"alive",
        "the benign function stopped answering after {name}"
    );
    (task, text(&result.body), text(&logs.body))
}

async fn sandboxed_server() -> Server {
    let server = Server::start(&["--local-workers", "2", "--sandbox", "strict"]);
    let answer = register(&server.client(), "benign", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    server
}

/// Waits (bounded) until no process's command line contains `marker`.
async fn no_process_with(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<String> = std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(marker))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left running: {alive:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_functions_are_stopped_and_nothing_is_left() {
    let server = sandboxed_server().await;

    let (task, _, _) = run(&server, "loop", "while :; do :; done").await;
    assert_eq!(task["reason"], "timeout", "{task}");

    let script = "bomb() { bomb | bomb & }; bomb; sleep 7777.8";
    let (task, _, _) = run(&server, "bomb", script).await;
    assert_eq!(task["reason"], "timeout", "{task}");

    let script = "trap '' TERM; (setsid sleep 7777.5 &); sleep 7777.6 & sleep 7777.7";
    let (task, _, _) = run(&server, "daemon", script).await;
    assert_eq!(task["reason"], "timeout", "{task}");
    no_process_with("7777.").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_and_full_disks_are_contained() {
    let server = sandboxed_server().await;

    let (task, _, _) = run(&server, "flood-out", "head -c 20000000 /dev/zero").await;
    assert_eq!(task["reason"], "output_too_large", "{task}");

    let (task, _, logs) = run(&server, "flood-err", "head -c 3000000 /dev/zero >&2").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert!(logs.contains("stderr truncated"), "no truncation marker");

    let script = "dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; df -k /tmp | tail -1";
    let (task, result, _) = run(&server, "disk", script).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert!(result.contains("No space left on device"), "{result}");

    let (task, result, _) = run(&server, "early-close", "exec >&-; echo still here >&2").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(result, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_is_out_of_reach() {
    let server = sandboxed_server().await;
    let data = server.data.to_str().expect("utf8").to_string();
    let port = server.url.rsplit(':').next().expect("port").to_string();
    let server_pid = server.child.id();
    let script = format!(
        r#"
id -u
cat /etc/shadow 2>&1 | head -1
ls {data} 2>&1 | head -1
ls /root /home 2>&1 | head -2
test -e /proc/{server_pid} && echo worker-visible || echo worker-invisible
touch /usr/evil 2>&1
kill -9 {server_pid} 2>&1
python3 - <<'PY'
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
for name, call in [("ptrace", lambda: libc.ptrace(16, 1, 0, 0)),
                   ("unshare", lambda: libc.unshare(0x20000)),
                   ("mount", lambda: libc.mount(b"x", b"/tmp", b"tmpfs", 0, None))]:
    print(name, call(), ctypes.get_errno())
s = socket.socket()
try:
    s.connect(("127.0.0.1", {port}))
    print("connected")
except OSError as e:
    print("connect", e.errno)
PY
"#
    );
    let (task, result, _) = run(&server, "snoop", &script).await;
    assert_eq!(task["status"], "COMPLETED", "{task}: {result}");
    let lines: Vec<&str> = result.lines().collect();
    assert_eq!(lines[0], "65534", "{result}");
    assert!(lines[1].contains("No such file"), "{result}");
    assert!(lines[2].contains("No such file"), "{result}");
    assert!(result.contains("cannot access '/root'"), "{result}");
    assert!(result.contains("worker-invisible"), "{result}");
    assert!(result.contains("Read-only file system"), "{result}");
    assert!(result.contains("No such process"), "{result}");
    for call in ["ptrace -1 1", "unshare -1 1", "mount -1 1", "connect 111"] {
        assert!(result.contains(call), "{call} not refused: {result}");
    }
    // The server is of course still here.
    assert!(
        server
            .client()
            .get("/healthz")
            .await
            .expect("healthz")
            .status
            .is_success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_is_reported_as_the_signal_it_was() {
    let server = sandboxed_server().await;
    let (task, _, _) = run(
        &server,
        "segv",
        "exec python3 -c 'import ctypes; ctypes.string_at(0)'",
    )
    .await;
    assert_eq!(task["reason"], "signal", "{task}");
    assert_eq!(task["signal"], 11, "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_runs_in_the_sandbox_too() {
    let server = sandboxed_server().await;
    let code = "import os\ndef handle(p):\n    return '%d %d %s' % (os.getuid(), os.getpid(), os.getcwd())\n";
    let client = server.client();
    let answer = register(
        &client,
        "py",
        code,
        serde_json::json!({"runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201);
    let answer = client
        .post("/v1/functions/py/invoke", "text/plain", Bytes::new())
        .await
        .expect("invoke");
    assert_eq!(text(&answer.body), "65534 2 /tmp");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_fails_with_out_of_memory() {
    let server = Server::start(&[
        "--local-workers",
        "2",
        "--sandbox",
        "strict",
        "--sandbox-memory",
        "64MiB",
    ]);
    let answer = register(&server.client(), "benign", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let script = "exec python3 -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'";
    let (task, _, _) = run(&server, "hog", script).await;
    assert_eq!(task["reason"], "out_of_memory", "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_s_own_memory_limit_and_network_access_apply() {
    let server = sandboxed_server().await;
    let client = server.client();
    let hog = "exec python3 -c 'x = bytearray(200 * 1024 * 1024); print(len(x))'";
    // The worker's default (512 MiB) lets it through; the function's own 64 MiB does not.
    let answer = register(&client, "roomy", hog, serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let task = wait_finished(&client, &submit(&client, "roomy", b"").await).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    let answer = register(
        &client,
        "tight",
        hog,
        serde_json::json!({"memory": "64MiB"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let task = wait_finished(&client, &submit(&client, "tight", b"").await).await;
    assert_eq!(task["reason"], "out_of_memory", "{task}");

    let port = server.url.rsplit(':').next().expect("port").to_string();
    let dial = format!(
        "exec python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port})); print(\"connected\")'"
    );
    let answer = register(
        &client,
        "online",
        &dial,
        serde_json::json!({"allow_net": true}),
    )
    .await;
    assert_eq!(answer.status, 201);
    let id = submit(&client, "online", b"").await;
    assert_eq!(wait_finished(&client, &id).await["status"], "COMPLETED");
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    assert_eq!(text(&result.body).trim(), "connected");
    let answer = register(&client, "offline", &dial, serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let task = wait_finished(&client, &submit(&client, "offline", b"").await).await;
    assert_eq!(
        task["status"], "FAILED",
        "no network, so the connection is refused: {task}"
    );
}
