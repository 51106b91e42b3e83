//! Hostile functions against `serve --sandbox strict`: each case ends the way it must, and a
//! benign function keeps being served alongside.

mod common;

use std::time::Duration;

use common::{Outcome, Server, eventually, invoke, register, run, submit, text, wait_finished};

/// Registers `script` (timeout 2 s) and runs it; then checks a benign function still answers.
async fn run_hostile(server: &Server, name: &str, script: &str) -> Outcome {
    let client = server.client();
    let answer = register(&client, name, script, serde_json::json!({"timeout": "2s"})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let outcome = run(&client, name, b"").await;
    let benign = invoke(&client, "benign", b"alive").await;
    assert_eq!(
        &benign.body[..],
        b"alive",
        "the benign function stopped answering after {name}"
    );
    outcome
}

async fn sandboxed_server() -> Server {
    sandboxed_server_with(&[]).await
}

/// [`sandboxed_server`] with more `serve` flags.
async fn sandboxed_server_with(extra: &[&str]) -> Server {
    let mut args = vec!["--local-workers", "2", "--sandbox", "strict"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let answer = register(&server.client(), "benign", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    server
}

/// Waits (bounded) until no process's command line contains `marker`.
async fn no_process_with(marker: &str) {
    let none_alive = || async {
        let alive: Vec<String> = std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(marker))
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("left running: {alive:?}"))
        }
    };
    let what = format!("no process with {marker:?}");
    eventually(&what, Duration::from_secs(10), none_alive).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_functions_are_stopped_and_nothing_is_left() {
    // The fork bomb fills its uid's process limit (RLIMIT_NPROC counts a uid's processes
    // machine-wide) until its timeout: under a uid of its own, the other tests' functions
    // (as `nobody`) can still fork meanwhile.
    let uid = (3_000_000_000_u32 + std::process::id()).to_string();
    let server = sandboxed_server_with(&["--sandbox-user", &uid]).await;

    let Outcome { task, .. } = run_hostile(&server, "loop", "while :; do :; done").await;
    assert_eq!(task["reason"], "timeout", "{task}");

    let script = "bomb() { bomb | bomb & }; bomb; sleep 7777.8";
    let Outcome { task, .. } = run_hostile(&server, "bomb", script).await;
    assert_eq!(task["reason"], "timeout", "{task}");

    let script = "trap '' TERM; (setsid sleep 7777.5 &); sleep 7777.6 & sleep 7777.7";
    let Outcome { task, .. } = run_hostile(&server, "daemon", script).await;
    assert_eq!(task["reason"], "timeout", "{task}");
    no_process_with("7777.").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_that_serves_another_call_keeps_nothing_of_the_last() {
    // Each call reports what it finds of earlier calls, then leaves a file in /tmp, a changed
    // mode on /tmp, a shared memory segment (the IPC namespace) and a process in the
    // background.
    let server = sandboxed_server().await;
    let client = server.client();
    let script = r#"
        echo "pid $$"
        echo "tmp [$(ls -A /tmp)] mode $(stat -c %a /tmp)"
        echo "shm $(($(wc -l < /proc/sysvipc/shm) - 1))"
        echo "sleepers [$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ' | grep -o 'sleep 8888[.]5')]"
        echo left > /tmp/left-behind
        chmod 0750 /tmp
        ipcmk -M 4096 > /dev/null
        n=8888.5; (sleep $n &)
    "#;
    let answer = register(&client, "probe", script, serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let mut pids = Vec::new();
    for call in 0..6 {
        let answer = invoke(&client, "probe", b"").await;
        assert_eq!(answer.status, 200, "{}", text(&answer.body));
        let out = text(&answer.body);
        assert!(
            out.contains("tmp []"),
            "call {call} saw a file of an earlier call: {out}"
        );
        assert!(
            out.contains("shm 0"),
            "call {call} saw a segment of an earlier call: {out}"
        );
        assert!(
            out.contains("sleepers []"),
            "call {call} saw an earlier process: {out}"
        );
        pids.push(out.lines().next().unwrap_or_default().to_string());
    }
    // Later calls ran in sandboxes that had served one before (their PID namespace has
    // counted past 2), so the checks above saw renewed sandboxes, not only new ones.
    assert!(
        pids.iter().any(|p| p != "pid 2"),
        "no sandbox served twice: {pids:?}"
    );
    no_process_with("8888.5").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_and_full_disks_are_contained() {
    let server = sandboxed_server().await;

    let Outcome { task, .. } =
        run_hostile(&server, "flood-out", "head -c 20000000 /dev/zero").await;
    assert_eq!(task["reason"], "output_too_large", "{task}");

    let Outcome { task, logs, .. } =
        run_hostile(&server, "flood-err", "head -c 3000000 /dev/zero >&2").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert!(logs.contains("stderr truncated"), "no truncation marker");

    let script = "dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; df -k /tmp | tail -1";
    let Outcome { task, result, .. } = run_hostile(&server, "disk", script).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert!(result.contains("No space left on device"), "{result}");

    let Outcome { task, result, .. } =
        run_hostile(&server, "early-close", "exec >&-; echo still here >&2").await;
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
    let Outcome { task, result, .. } = run_hostile(&server, "snoop", &script).await;
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
    let Outcome { task, .. } = run_hostile(
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
    let answer = invoke(&client, "py", b"").await;
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
    let Outcome { task, .. } = run_hostile(&server, "hog", script).await;
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
    // A warm executor killed by its limit says so as a cold call does, not by its signal.
    let warm_hog = "def handle(p):\n    x = bytearray(200 * 1024 * 1024)\n    return str(len(x))\n";
    let answer = register(
        &client,
        "tight-warm",
        warm_hog,
        serde_json::json!({"memory": "64MiB", "runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let task = wait_finished(&client, &submit(&client, "tight-warm", b"").await).await;
    assert_eq!(
        (&task["reason"], &task["message"]),
        (
            &"out_of_memory".into(),
            &"killed by the memory limit".into()
        ),
        "{task}"
    );

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
    let online = run(&client, "online", b"").await;
    assert_eq!(online.task["status"], "COMPLETED");
    assert_eq!(online.result.trim(), "connected");
    let answer = register(&client, "offline", &dial, serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let task = wait_finished(&client, &submit(&client, "offline", b"").await).await;
    assert_eq!(
        task["status"], "FAILED",
        "no network, so the connection is refused: {task}"
    );
}

/// The pids of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
                .then_some(pid)
        })
        .collect()
}

/// Waits (bounded) until `count` processes with `marker` run; returns their pids.
async fn processes_running(marker: &str, count: usize) -> Vec<u32> {
    let started = || async {
        let found = processes_with(marker);
        if found.len() >= count {
            Ok(found)
        } else {
            Err(format!("only {found:?} started"))
        }
    };
    let what = format!("{count} processes with {marker:?}");
    eventually(&what, Duration::from_secs(10), started).await
}

/// The sandbox zygote among `server`'s children.
fn zygote_of(server: u32) -> u32 {
    let parent = format!(" {server} ");
    let zygotes: Vec<u32> = processes_with("__zygote")
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest[1..].starts_with(&parent))
            })
        })
        .collect();
    assert_eq!(
        zygotes.len(),
        1,
        "one zygote for server {server}: {zygotes:?}"
    );
    zygotes[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_zygote_takes_its_executors_along_and_is_replaced() {
    let server = sandboxed_server().await;
    let client = server.client();
    let settings = serde_json::json!({"timeout": "60s", "max_attempts": 1});
    assert_eq!(
        register(&client, "sleeper", "sleep 31.5", settings)
            .await
            .status,
        201
    );
    let id = submit(&client, "sleeper", b"").await;
    processes_running("sleep 31.5", 1).await;
    let zygote = zygote_of(server.child.id());
    let group = |pid: u32| {
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).expect("getpgid")
    };
    assert_ne!(
        group(zygote),
        group(server.child.id()),
        "a Ctrl-C for the server must not reach the zygote"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the zygote");
    // Its executors die with it, and their task fails rather than hanging.
    no_process_with("sleep 31.5").await;
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["status"], "FAILED", "{task}");
    // The next call starts a new zygote.
    let answer = invoke(&client, "benign", b"again").await;
    assert_eq!(&answer.body[..], b"again");
    assert_ne!(zygote_of(server.child.id()), zygote);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_sandboxed_outlives_a_killed_server() {
    let mut server = sandboxed_server().await;
    let client = server.client();
    let script = "sleep 32.5 & setsid sleep 32.5 & sleep 32.5";
    let settings = serde_json::json!({"timeout": "60s"});
    assert_eq!(
        register(&client, "lingerer", script, settings).await.status,
        201
    );
    submit(&client, "lingerer", b"").await;
    processes_running("sleep 32.5", 3).await;
    let zygote = zygote_of(server.child.id());
    server.child.kill().expect("kill -9 the server");
    server.child.wait().expect("reap the server");
    // The zygote dies with the server, the shim with the zygote, the namespace's init with
    // the shim, and every process of the namespace with its init.
    no_process_with("sleep 32.5").await;
    let zygote_state = std::fs::read_to_string(format!("/proc/{zygote}/stat")).map(|stat| {
        stat.rsplit_once(") ")
            .map(|(_, rest)| rest[..1].to_string())
    });
    assert!(
        match &zygote_state {
            Err(_) => true,
            Ok(state) => state.as_deref() == Some("Z"),
        },
        "the zygote outlived the server: {zygote_state:?}"
    );
}

/// `faasd` run as uid and gid 65534.
fn unprivileged(args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run setpriv")
}

#[test]
fn without_root_each_layer_says_whether_it_applies() {
    let out = unprivileged(&["worker", "--check-sandbox"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{table}");
    let state = |layer: &str| {
        table
            .lines()
            .find(|l| l.starts_with(layer))
            .unwrap_or_else(|| panic!("no {layer} row in {table}"))
            .to_string()
    };
    assert!(state("seccomp filter").contains(" active"), "{table}");
    assert!(state("rlimits").contains(" active"), "{table}");
    assert!(
        state("unprivileged uid/gid").contains("active (functions run as the worker's own uid"),
        "{table}"
    );
    let namespaces = state("pid, mount, ipc, uts namespaces");
    assert!(
        namespaces.contains("unavailable") && namespaces.contains("not root"),
        "{table}"
    );
    assert!(
        state("network namespace").contains("unavailable"),
        "{table}"
    );

    // --sandbox strict refuses to start, naming what is missing.
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
    let data = dir.path().join("data");
    let out = unprivileged(&[
        "serve",
        "--data",
        data.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
        "--worker-listen",
        "127.0.0.1:0",
        "--sandbox",
        "strict",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--sandbox strict: these layers cannot be applied here")
            && stderr.contains("namespaces"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_root_auto_applies_the_layers_it_can() {
    let server = Server::start_unprivileged(&["--local-workers", "1"]);
    let client = server.client();
    let script = "id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
                  cat /etc/shadow >/dev/null 2>&1 || echo shadow denied; \
                  ulimit -c";
    assert_eq!(
        register(&client, "who", script, serde_json::json!({}))
            .await
            .status,
        201
    );
    let answer = invoke(&client, "who", b"").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    let out = text(&answer.body);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "65534", "{out}");
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{out}");
    assert!(lines.contains(&"Seccomp:\t2"), "{out}");
    assert!(lines.contains(&"shadow denied"), "{out}");
    assert_eq!(lines.last(), Some(&"0"), "core dumps off: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_cannot_reach_each_other_over_loopback() {
    let server = sandboxed_server().await;
    let client = server.client();
    // One function listens on loopback for a while; another, running at the same time, dials
    // that port: each has a network namespace of its own, so nothing is there.
    let listen = "exec python3 -c 'import socket, time; s = socket.socket(); \
                  s.bind((\"127.0.0.1\", 47321)); s.listen(); time.sleep(33.25)'";
    let dial = "exec python3 -c 'import socket\n\
                try:\n    socket.create_connection((\"127.0.0.1\", 47321), timeout=2); print(\"reached\")\n\
                except OSError as e:\n    print(\"refused\", e.errno)'";
    let settings = serde_json::json!({"timeout": "60s"});
    assert_eq!(
        register(&client, "listener", listen, settings.clone())
            .await
            .status,
        201
    );
    assert_eq!(
        register(&client, "dialer", dial, settings).await.status,
        201
    );
    submit(&client, "listener", b"").await;
    let pid = processes_running("time.sleep(33.25)", 1).await[0];
    // Listening (port 47321 is B8D9, state 0A), seen through the listener's own namespace.
    let listening = || async {
        match std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) {
            Ok(table) if table.lines().any(|l| l.contains(":B8D9 00000000:0000 0A")) => Ok(()),
            Ok(table) => Err(table),
            Err(err) => Err(err.to_string()),
        }
    };
    eventually("the listener to listen", Duration::from_secs(10), listening).await;
    let answer = invoke(&client, "dialer", b"").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert!(
        text(&answer.body).starts_with("refused"),
        "{}",
        text(&answer.body)
    );
}
