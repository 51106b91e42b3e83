//! Warm executors and the `python` runtime, end to end.
//!
//! The tests that follow one executor by its host pid, or that look at a file it writes on the
//! host, run with `--sandbox none`: inside the sandbox a function's pid is 2 and its files are
//! its own. Warm executors in the sandbox are covered by `tests/sandbox.rs` and `tests/soak.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    Server, eventually, expect_error, invoke, register, status, submit, text, wait_finished,
};

const HANDLER: &str = r#"
import os, time
inits = 0
# Which process this is: its pid (host pid when unsandboxed; 2 in the sandbox) and a random
# token, so two executors never look the same even when the sandbox gives both pid 2.
EXECUTOR = "%d:%s" % (os.getpid(), os.urandom(8).hex())

print("importing")

def init():
    global inits
    inits += 1
    print("init", inits)

def handle(payload):
    if payload == b"boom":
        raise ValueError("boom from the handler")
    if payload == b"exit":
        os._exit(3)
    if payload == b"hang":
        time.sleep(30)
    if isinstance(payload, dict):
        return {"doubled": payload["n"] * 2}
    print("handling", payload)
    return "%s %d" % (EXECUTOR, inits)
"#;

/// Registers [`HANDLER`] as a `python` function (timeout 2 s) with the settings in `extra`.
async fn register_python(client: &faasd::client::Client, name: &str, extra: serde_json::Value) {
    let mut settings = serde_json::json!({"runtime": "python", "timeout": "2s"});
    if let serde_json::Value::Object(map) = extra {
        for (k, v) in map {
            settings[k] = v;
        }
    }
    let answer = register(client, name, HANDLER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

/// One executor process, as the handler names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Executor {
    /// Its pid (on the host with `--sandbox none`).
    pid: i32,
    /// A random token drawn when its module was imported.
    token: String,
}

/// The executor that answered and how many times its `init` ran, from the handler's answer.
fn executor_and_inits(answer: &faasd::client::Answer) -> (Executor, u32) {
    let body = text(&answer.body);
    let parse = || -> Option<(Executor, u32)> {
        let (executor, inits) = body.split_once(' ')?;
        let (pid, token) = executor.split_once(':')?;
        let executor = Executor {
            pid: pid.parse().ok()?,
            token: token.to_string(),
        };
        Some((executor, inits.trim().parse().ok()?))
    };
    parse().unwrap_or_else(|| panic!("bad answer {body:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_warm_executor_serves_many_calls_and_init_runs_once() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    register_python(&client, "warm", serde_json::json!({})).await;
    let first = invoke(&client, "warm", b"x").await;
    assert_eq!(first.status, 200, "{}", text(&first.body));
    let (executor, inits) = executor_and_inits(&first);
    assert_eq!(inits, 1);
    for _ in 0..20 {
        let answer = invoke(&client, "warm", b"x").await;
        assert_eq!(
            executor_and_inits(&answer),
            (executor.clone(), 1),
            "a different executor or a second init"
        );
    }
    // The first call was a cold start with a load phase; later ones are warm.
    let id = submit(&client, "warm", b"x").await;
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["cold_start"], false, "{task}");
    let first_id = first.headers["x-faasd-task-id"]
        .to_str()
        .expect("id")
        .to_string();
    let first_task = status(&client, &first_id).await;
    assert_eq!(first_task["cold_start"], true, "{first_task}");
    assert!(
        first_task["init_ms"].as_f64().unwrap_or(0.0) > 0.0,
        "{first_task}"
    );
    // What the handler printed is the task's log; the first call's starts with what the
    // module printed while it loaded (its import and init()).
    let logs = client
        .get(&format!("/v1/tasks/{id}/logs"))
        .await
        .expect("logs");
    assert_eq!(text(&logs.body), "handling b'x'\n");
    let first_logs = client
        .get(&format!("/v1/tasks/{first_id}/logs"))
        .await
        .expect("logs");
    assert_eq!(text(&first_logs.body), "importing\ninit 1\nhandling b'x'\n");
    // JSON in, JSON out; the media type is matched in any case, with parameters.
    for (content_type, n) in [
        ("application/json", 21),
        ("Application/JSON; charset=utf-8", 2),
    ] {
        let body = Bytes::from(format!(r#"{{"n": {n}}}"#));
        let answer = client
            .post("/function/warm", content_type, body)
            .await
            .expect("invoke");
        assert_eq!(text(&answer.body), format!(r#"{{"doubled": {}}}"#, n * 2));
    }
    // A body sent as JSON that is not is the caller's error, not the handler's: no task is
    // made (an invoke's answer names its task when there is one).
    for body in [&b"{bad json"[..], b""] {
        let answer = client
            .post("/function/warm", "application/json", Bytes::from(body))
            .await
            .expect("invoke");
        assert_eq!(answer.status, 400, "{}", text(&answer.body));
        assert_eq!(
            answer.error_code().map(|c| format!("{c:?}")).as_deref(),
            Some("InvalidRequest")
        );
        assert!(
            text(&answer.body).contains("not JSON"),
            "{}",
            text(&answer.body)
        );
        assert!(
            !answer.headers.contains_key("x-faasd-task-id"),
            "{:?}",
            answer.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_executor_is_stopped_and_reaped() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    register_python(
        &client,
        "brief",
        serde_json::json!({"idle_timeout": "500ms"}),
    )
    .await;
    let (executor, _) = executor_and_inits(&invoke(&client, "brief", b"x").await);
    let pid = executor.pid;
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    // Bounded wait: gone (not even a zombie) shortly after the idle timeout.
    let gone = || async {
        if proc_dir.exists() {
            Err("it still exists")
        } else {
            Ok(())
        }
    };
    let what = format!("executor {pid} to be gone after its idle timeout");
    eventually(&what, Duration::from_secs(10), gone).await;
    let (next, inits) = executor_and_inits(&invoke(&client, "brief", b"x").await);
    assert_ne!(next, executor);
    assert_eq!(inits, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_kill_only_that_executor() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    register_python(&client, "frail", serde_json::json!({})).await;
    let (first, _) = executor_and_inits(&invoke(&client, "frail", b"x").await);

    // An exception fails the task with the traceback in its logs; the executor stays.
    let body = expect_error(
        &invoke(&client, "frail", b"boom").await,
        502,
        "function_failed",
    );
    assert_eq!(body["reason"], "exception");
    assert!(
        body["stderr_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("ValueError: boom from the handler"),
        "{body}"
    );
    assert_eq!(
        executor_and_inits(&invoke(&client, "frail", b"x").await).0,
        first
    );

    // Exiting mid-call fails that call; a fresh executor serves the next.
    let body = expect_error(
        &invoke(&client, "frail", b"exit").await,
        502,
        "function_failed",
    );
    assert_eq!(body["reason"], "executor_died");
    let (second, inits) = executor_and_inits(&invoke(&client, "frail", b"x").await);
    assert_ne!(second, first);
    assert_eq!(inits, 1);

    // A hang past the timeout: killed, failed with `timeout`, replaced.
    let body = expect_error(
        &invoke(&client, "frail", b"hang").await,
        504,
        "function_timeout",
    );
    assert_eq!(body["reason"], "timeout");
    // The timeout kills it; it is reaped around the answer, so it is gone (not even a zombie) soon.
    let proc_dir = format!("/proc/{}", second.pid);
    let gone = || async {
        match std::fs::read_to_string(format!("{proc_dir}/stat")) {
            Ok(stat) => Err(format!("the hung executor lives on: {stat}")),
            Err(_) => Ok(()),
        }
    };
    eventually("the hung executor to be gone", Duration::from_secs(5), gone).await;
    let (third, _) = executor_and_inits(&invoke(&client, "frail", b"x").await);
    assert_ne!(third, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executor_writing_garbage_fails_its_call_with_a_protocol_error() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    // A warm `exec` program that says ready, then answers a call with garbage.
    let script = "#!/bin/sh\nprintf '\\000\\000\\000\\001R'\nhead -c 4 >/dev/null\nprintf 'GARBAGE, NOT A FRAME'\nsleep 30\n";
    let answer = register(
        &client,
        "liar",
        script,
        serde_json::json!({"runtime": "exec", "warm": true, "timeout": "5s"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let body = expect_error(&invoke(&client, "liar", b"x").await, 502, "executor_failed");
    assert_eq!(body["reason"], "protocol_error", "{body}");
    // The platform keeps serving.
    assert_eq!(
        register(&client, "plain", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );
    assert_eq!(&invoke(&client, "plain", b"fine").await.body[..], b"fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_interpreter_is_one_clear_error() {
    let server = Server::start(&["--local-workers", "1", "--python", "/no/such/python3"]);
    let client = server.client();
    register_python(&client, "nopy", serde_json::json!({})).await;
    // The only worker has no Python, so it takes no python task: a sync call is refused at
    // once (a worker's log says why it has none), an async one waits for a worker that has.
    let refused = invoke(&client, "nopy", b"x").await;
    common::expect_no_workers(&refused, "can run python functions");
    let workers = common::workers(&client).await;
    let runtimes = workers[0]["runtimes"].as_array().expect("runtimes");
    assert!(runtimes.contains(&"shell".into()), "{workers:?}");
    assert!(!runtimes.contains(&"python".into()) && !runtimes.contains(&"pickle".into()));
}

/// A call that never answers (it hangs past its timeout, or kills its executor) still has
/// what it printed in its logs, and only what it printed, not an earlier call's.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_never_answers_keeps_what_it_printed() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    let code = "import os, sys, time\n\ndef handle(p):\n    print('printed by', p.decode(), flush=True)\n    if p == b'hang':\n        time.sleep(30)\n    if p == b'die':\n        os._exit(9)\n    return p\n";
    let settings = serde_json::json!({"runtime": "python", "timeout": "2s"});
    let answer = register(&client, "talk", code, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let (task, logs) = run_logged(&client, "talk", b"ok").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(logs, "printed by ok\n");
    for (payload, reason) in [("hang", "timeout"), ("die", "executor_died")] {
        let (task, logs) = run_logged(&client, "talk", payload.as_bytes()).await;
        assert_eq!(task["reason"], reason, "{task}");
        assert!(
            logs.contains(&format!("printed by {payload}")),
            "{payload}: {logs:?}"
        );
        assert!(!logs.contains("printed by ok"), "{payload}: {logs:?}");
    }
}

/// `async def handle` and `async def init` run on one event loop kept by the executor.
#[tokio::test(flavor = "multi_thread")]
async fn an_async_handler_runs_on_the_executor_s_event_loop() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    let code = "import asyncio\n\nasync def init():\n    global LOOP\n    LOOP = asyncio.get_running_loop()\n\nasync def handle(p):\n    await asyncio.sleep(0)\n    if p == b'boom':\n        raise ValueError('boom')\n    same = asyncio.get_running_loop() is LOOP\n    return p.decode() + (' same loop' if same else ' another loop')\n";
    let answer = register(
        &client,
        "aio",
        code,
        serde_json::json!({"runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    for word in ["one", "two"] {
        let answer = invoke(&client, "aio", word.as_bytes()).await;
        assert_eq!(answer.status, 200, "{}", text(&answer.body));
        assert_eq!(text(&answer.body), format!("{word} same loop"));
    }
    // Its traceback starts at the function, not in the event loop.
    let (task, logs) = run_logged(&client, "aio", b"boom").await;
    assert_eq!(task["reason"], "exception", "{task}");
    let first = logs
        .lines()
        .find(|l| l.trim_start().starts_with("File "))
        .unwrap_or_default();
    assert!(first.contains("in handle"), "{logs}");
}

/// `python3` found through a relative `PATH` entry (`PATH=.venv/bin:...`, as a shell in a
/// project directory may have it) still runs in the sandbox, which starts executors elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_found_through_a_relative_path_entry_runs_in_the_sandbox() {
    std::fs::create_dir_all("target").expect("target dir");
    let dir = tempfile::tempdir_in("target").expect("tempdir under the crate");
    let venv = dir.path().join("venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(made.success());
    let bin = venv.join("bin");
    let relative = bin
        .strip_prefix(std::env::current_dir().expect("cwd"))
        .unwrap_or(&bin);
    assert!(relative.is_relative(), "{}", relative.display());
    let path = format!(
        "{}:{}",
        relative.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let server = Server::start_with_env(&[("PATH", path.as_ref())], &["--local-workers", "1"]);
    let client = server.client();
    let answer = register(
        &client,
        "up",
        "def handle(p):\n    return p.upper()\n",
        serde_json::json!({"runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = invoke(&client, "up", b"relative").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body), "RELATIVE");
}

#[tokio::test(flavor = "multi_thread")]
async fn min_warm_keeps_an_executor_ready() {
    let server = Server::start(&["--local-workers", "2"]);
    let client = server.client();
    register_python(
        &client,
        "ready",
        serde_json::json!({"min_warm": 1, "idle_timeout": "200ms"}),
    )
    .await;
    let (executor, _) = executor_and_inits(&invoke(&client, "ready", b"x").await);
    // Well past the idle timeout, the one executor min_warm keeps is still the same executor.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        executor_and_inits(&invoke(&client, "ready", b"x").await).0,
        executor
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_directory_bundle_runs_its_entry_module() {
    let server = Server::start(&["--local-workers", "1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("lib")).expect("mkdir");
    std::fs::write(app.join("lib/__init__.py"), "").expect("write");
    std::fs::write(
        app.join("lib/words.py"),
        "def shout(s):\n    return s.upper() + '!'\n",
    )
    .expect("write");
    std::fs::write(
        app.join("main.py"),
        "from lib.words import shout\n\ndef handle(payload):\n    suffix = open('suffix.txt').read()\n    return shout(payload.decode()) + suffix\n",
    )
    .expect("write");
    // Read from the executor's working directory: the unpacked bundle.
    std::fs::write(app.join("suffix.txt"), "?").expect("write");
    // A virtualenv made beside the code, as Python people do: left out of the bundle, with
    // its links to the machine's interpreter.
    std::fs::create_dir_all(app.join(".venv/bin")).expect("mkdir");
    std::fs::write(app.join(".venv/pyvenv.cfg"), "home = /usr/bin\n").expect("write");
    std::os::unix::fs::symlink("/usr/bin/python3", app.join(".venv/bin/python3")).expect("link");
    std::fs::write(
        app.join("other.py"),
        "def handle(payload):\n    return b'other'\n",
    )
    .expect("write");
    let app_path = app.to_str().expect("utf8");

    let out = server.cli(&["register", "app", app_path, "--runtime", "python"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(".venv/ (a virtualenv"),
        "{}",
        text(&out.stderr)
    );
    let out = server.cli(&["invoke", "app", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "HELLO!?");

    let out = server.cli(&[
        "register",
        "app2",
        app_path,
        "--runtime",
        "python",
        "--entry",
        "other",
        "--min-warm",
        "1",
        "--idle-timeout",
        "5s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(f["min_warm"], 1, "{f}");
    assert_eq!(f["idle_timeout_ms"], 5000, "{f}");
    assert_eq!(f["env"]["FAASD_ENTRY"], "other", "{f}");
    assert_eq!(server.cli(&["invoke", "app2"]).stdout, b"other");

    let out = server.cli(&[
        "register",
        "app3",
        app_path,
        "--runtime",
        "python",
        "--entry",
        "no such",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A link out of the directory could never unpack on a worker: refused before any upload.
    std::os::unix::fs::symlink("/etc/hostname", app.join("host")).expect("link");
    let out = server.cli(&["register", "app4", app_path, "--runtime", "python"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a link to /etc/hostname, outside the directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(server.cli(&["versions", "app4"]).status.code(), Some(4));
}

/// Runs one task of `name` with `payload`; returns its status and its logs.
async fn run_logged(
    client: &faasd::client::Client,
    name: &str,
    payload: &[u8],
) -> (serde_json::Value, String) {
    let id = submit(client, name, payload).await;
    let task = wait_finished(client, &id).await;
    let logs = client.get(&format!("/v1/tasks/{id}/logs")).await;
    (task, text(&logs.expect("logs").body))
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_set_up_at_import_writes_into_each_call_s_log_and_a_loud_load_still_loads() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    let python = || serde_json::json!({"runtime": "python"});
    // A handler made at import keeps the sys.stderr it saw; faulthandler wants a real file.
    let logs_at_import = "import faulthandler, logging, sys\nfaulthandler.enable()\nlogging.basicConfig(level=logging.INFO, format='%(message)s')\nlog = logging.getLogger('f')\n\ndef handle(p):\n    log.info('handled %s', p.decode())\n    return p\n";
    let answer = register(&client, "logs", logs_at_import, python()).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    // The same executor's first call and its second.
    for word in ["one", "two"] {
        let (task, logs) = run_logged(&client, "logs", word.as_bytes()).await;
        assert_eq!(task["status"], "COMPLETED", "{task}");
        assert_eq!(logs, format!("handled {word}\n"));
    }
    // Two MiB printed while loading is cut, not mistaken for garbage.
    let loud =
        "import sys\nsys.stdout.write('x' * (2 << 20))\n\ndef handle(p):\n    return b'ok'\n";
    let answer = register(&client, "loud", loud, python()).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let (task, logs) = run_logged(&client, "loud", b"").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert!(
        logs.contains("[faasd: stderr truncated,"),
        "{} bytes",
        logs.len()
    );
}

/// A call that prints far more than the log keeps holds no more than the log in memory, says
/// exactly how much it dropped, and keeps the traceback of a failure after what it printed.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_prints_hundreds_of_megabytes_keeps_one_and_counts_the_rest() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    let chatty = "import sys\n\ndef handle(p):\n    for _ in range(300):\n        sys.stdout.write('y' * (1 << 20))\n    if p == b'tiny':\n        for _ in range(3_000_000):\n            sys.stdout.write('z')\n    if p == b'fail':\n        raise ValueError('boom')\n    return b'done'\n";
    let answer = register(
        &client,
        "chatty",
        chatty,
        serde_json::json!({"runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let limit = 1 << 20;
    let (task, logs) = run_logged(&client, "chatty", b"").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    let peak = task["peak_memory_bytes"].as_u64().expect("peak");
    assert!(peak < 150 << 20, "the executor held {peak} bytes");
    assert!(logs.len() <= limit, "{} bytes of logs", logs.len());
    let kept = logs.bytes().take_while(|&b| b == b'y').count();
    let marker = format!(
        "\n[faasd: stderr truncated, {} more bytes dropped]\n",
        (300 << 20) - kept
    );
    assert_eq!(&logs[kept..], marker);

    // Millions of small writes past the limit hold nothing either.
    let (task, logs) = run_logged(&client, "chatty", b"tiny").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    let peak = task["peak_memory_bytes"].as_u64().expect("peak");
    assert!(peak < 150 << 20, "the executor held {peak} bytes");
    let marker = format!(
        "\n[faasd: stderr truncated, {} more bytes dropped]\n",
        (300 << 20) + 3_000_000 - kept
    );
    assert!(logs.ends_with(&marker), "{}", &logs[logs.len() - 200..]);

    let (task, logs) = run_logged(&client, "chatty", b"fail").await;
    assert_eq!(task["status"], "FAILED", "{task}");
    assert_eq!(task["reason"], "exception", "{task}");
    assert!(logs.len() <= limit, "{} bytes of logs", logs.len());
    assert!(
        logs.contains("more bytes dropped]"),
        "{}",
        &logs[logs.len() - 400..]
    );
    assert!(
        logs.trim_end().ends_with("ValueError: boom"),
        "{}",
        &logs[logs.len() - 400..]
    );
}

/// Whether the harness with process id `pid` waits for a call: its one thread is blocked
/// reading a pipe, which it does only once it has sent its ready frame.
fn waiting_for_a_call(pid: &str) -> Result<(), String> {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .map_err(|err| format!("executor {pid:?}: {err}"))?;
    let mut fields = syscall.split_whitespace();
    let read = 0; // x86_64's read(2)
    let blocked_in_read = fields.next() == Some(&read.to_string());
    let fd = fields
        .next()
        .and_then(|fd| u32::from_str_radix(fd.trim_start_matches("0x"), 16).ok());
    let target = fd.and_then(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok());
    match target {
        Some(target) if blocked_in_read && target.to_string_lossy().starts_with("pipe:") => Ok(()),
        _ => Err(format!("executor {pid} in {syscall:?}, fd {target:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn min_warm_executors_start_at_registration() {
    let server = Server::start(&["--local-workers", "2", "--sandbox", "none"]);
    let client = server.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("started");
    // A handler module whose import leaves a mark (its pid): it runs before any call.
    let code = "import os\nwith open(os.environ['MARKER'], 'w') as f:\n    f.write(str(os.getpid()))\n\
                def handle(p):\n    return b'ok'\n";
    let settings = serde_json::json!({
        "runtime": "python",
        "min_warm": 1,
        "env": {"MARKER": marker.to_str().expect("utf8")},
    });
    let answer = register(&client, "eager", code, settings).await;
    assert_eq!(answer.status, 201);
    // Imported is not yet ready: wait until it has said so and waits for its first call.
    let ready = || async {
        let pid = std::fs::read_to_string(&marker).map_err(|_| "no marker yet".to_string())?;
        waiting_for_a_call(pid.trim())
    };
    let what = "an executor to start before the first call";
    eventually(what, Duration::from_secs(10), ready).await;
    let id = submit(&client, "eager", b"").await;
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(
        task["cold_start"], false,
        "the first call found a ready executor: {task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_executor_killed_from_outside_is_replaced_not_used() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    register_python(&client, "victim", serde_json::json!({})).await;
    let (executor, _) = executor_and_inits(&invoke(&client, "victim", b"x").await);
    let pid = executor.pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill executor");
    // The pidfd reports the death (bounded wait), then the next call must not be handed the corpse.
    let dead = || async {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if !stat.contains(") Z ") => Err(stat),
            _ => Ok(()),
        }
    };
    eventually("the executor to die", Duration::from_secs(5), dead).await;
    let answer = invoke(&client, "victim", b"x").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_ne!(executor_and_inits(&answer).0, executor);
}
