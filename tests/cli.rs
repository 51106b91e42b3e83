//! The command line's consistency, through the real binary: shell completions, `--json` on
//! every command that prints, durations as `10`, `10s`, `500ms` or `2m` in the CLI and the API,
//! aligned tables, MPCS display names, and `faasd bench` cleaning up after itself.

mod common;

use std::process::{Command, Output, Stdio};

use base64::Engine;
use bytes::Bytes;
use common::{BIN, Server, register, text};

/// Runs the CLI with `vars` in its environment and stdin closed.
fn cli_env(server: &Server, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FAASD_URL", &server.url)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run faasd CLI")
}

/// Runs `faasd ARGS` on a pseudo-terminal (through `script`) `columns` wide; returns what it
/// printed, without carriage returns.
fn on_terminal(server: &Server, args: &str, columns: u32) -> String {
    let command = format!("{BIN} {args}");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("FAASD_URL", &server.url)
        .env("COLUMNS", columns.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout).replace('\r', "")
}

/// The stdout of a successful CLI run, parsed as exactly one JSON document.
fn json_of(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(&out.stdout)))
}

/// The functions `faasd ls --json` lists, by name.
fn function_names(server: &Server) -> Vec<String> {
    let list = json_of(&server.cli(&["ls", "--json"]));
    let list = list.as_array().expect("a list").iter();
    list.map(|f| f["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains("faasd"), "{shell}: {script}");
        for word in ["register", "invoke", "completions", "json"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
        if shell == "bash" {
            let file = dir.path().join("faasd.bash");
            std::fs::write(&file, &out.stdout).expect("write");
            let check = Command::new("bash").arg("-n").arg(&file).output();
            let check = check.expect("run bash -n");
            assert!(check.status.success(), "{}", text(&check.stderr));
        }
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Runs `faasd ARGS` with its stdout a pipe whose reading end is already closed, as `| head`
/// leaves it; returns how it ended and its stderr.
fn with_output_closed(
    server: Option<&Server>,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let mut command = Command::new(BIN);
    command.args(args);
    if let Some(server) = server {
        command.args(["--url", &server.url]);
    }
    let out = command
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    (out.status, text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_output_pipe_ends_a_command_quietly_with_141_not_a_panic_or_a_failure_code() {
    // 141: what a shell reports for `cat` killed by SIGPIPE at `| head`.
    let (status, stderr) = with_output_closed(None, &["completions", "bash"]);
    assert_eq!(status.code(), Some(141), "{status:?}: {stderr}");
    assert_eq!(stderr, "");

    let server = Server::start(&[]);
    let client = server.client();
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let id = common::submit(&client, "echo", b"hello").await;
    common::wait_finished(&client, &id).await;
    for args in [
        vec!["tasks"],
        vec!["result", id.as_str()],
        vec!["invoke", "echo", "hi"],
    ] {
        let (status, stderr) = with_output_closed(Some(&server), &args);
        assert_eq!(status.code(), Some(141), "{args:?}: {status:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn durations_are_seconds_or_units_in_the_cli_and_the_api() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("f.sh");
    std::fs::write(&script, "cat\n").expect("write");
    let script = script.to_str().expect("utf8");
    let timeout_ms = |server: &Server| {
        let f = json_of(&server.cli(&["ls", "--json"]));
        f[0]["timeout_ms"].as_u64().expect("timeout_ms")
    };
    for (given, ms) in [
        ("10", 10_000),
        ("10s", 10_000),
        ("500ms", 500),
        ("2m", 120_000),
    ] {
        let out = server.cli(&["register", "f", script, "--timeout", given]);
        assert_eq!(out.status.code(), Some(0), "{given}: {}", text(&out.stderr));
        assert_eq!(timeout_ms(&server), ms, "--timeout {given}");
    }
    let out = server.cli(&["register", "f", script, "--timeout", "10x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--timeout"),
        "{}",
        text(&out.stderr)
    );
    let out = server.cli(&["register", "f", script, "--idle-timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let client = server.client();
    let api = [
        (serde_json::json!(10), 10_000),
        (serde_json::json!(1.5), 1_500),
        (serde_json::json!("10"), 10_000),
        (serde_json::json!("500ms"), 500),
        (serde_json::json!("2m"), 120_000),
    ];
    for (given, ms) in api {
        let extra = serde_json::json!({ "timeout": given });
        let answer = register(&client, "g", "cat", extra).await;
        assert!(
            answer.status.is_success(),
            "{given}: {}",
            text(&answer.body)
        );
        let f: serde_json::Value = answer.json().expect("json");
        assert_eq!(f["timeout_ms"], ms, "timeout {given}");
        // idle_timeout is a warm executor's setting.
        let extra = serde_json::json!({ "runtime": "python", "idle_timeout": given });
        let answer = register(&client, "py", "def handle(p):\n    return p\n", extra).await;
        assert!(
            answer.status.is_success(),
            "{given}: {}",
            text(&answer.body)
        );
        let f: serde_json::Value = answer.json().expect("json");
        assert_eq!(f["idle_timeout_ms"], ms, "idle_timeout {given}");
    }
    // On a cold function they would do nothing: refused rather than ignored.
    for extra in [
        serde_json::json!({ "idle_timeout": "3h" }),
        serde_json::json!({ "min_warm": 2 }),
    ] {
        let answer = register(&client, "g", "cat", extra.clone()).await;
        assert_eq!(
            answer.status.as_u16(),
            400,
            "{extra}: {}",
            text(&answer.body)
        );
        assert!(
            text(&answer.body).contains("settings of warm executors"),
            "{}",
            text(&answer.body)
        );
    }
    for (field, bad) in [("timeout", "10x"), ("idle_timeout", "soon")] {
        let answer = register(&client, "g", "cat", serde_json::json!({ field: bad })).await;
        assert_eq!(answer.status.as_u16(), 400, "{field} {bad}");
        let error: serde_json::Value = answer.json().expect("json");
        assert_eq!(error["field"], field, "{error}");
        let message = error["error"].as_str().expect("message");
        assert!(message.starts_with(&format!("{field} ")), "{message}");
    }
    // The status route's `?wait=` takes seconds too.
    let id = common::submit(&client, "g", b"x").await;
    let answer = client.get(&format!("/v1/tasks/{id}?wait=5")).await;
    let answer = answer.expect("status");
    assert_eq!(answer.status.as_u16(), 200, "{}", text(&answer.body));
    let answer = client.get(&format!("/v1/tasks/{id}?wait=later")).await;
    assert_eq!(answer.expect("status").status.as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_web_server_at_the_url_is_named_as_such_not_a_missing_function() {
    // A web server that answers everything with an HTML 404 page.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let page = "<html>\n<body><h1>Not Found</h1>\n<p>nothing here</p></body></html>";
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let url = format!("http://{addr}");
    for args in [
        &["ls"][..],
        &["status", "00000000-0000-7000-8000-000000000000"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--url", url.as_str()]);
        let out = Command::new(BIN).args(&all).output().expect("run faasd");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("404 Not Found (text/html) without a faasd error"),
            "{stderr}"
        );
        assert!(stderr.contains("FAASD_URL"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_accepts_and_never_answers_fails_a_command_with_3_and_a_slow_one_does_not() {
    // Accepts connections (the kernel's backlog would too) and holds them without a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let run = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--url", url.as_str(), "--check-after", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run faasd");
        // Bounded here so a regression fails the test rather than hanging it.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let started = std::time::Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    };
    for args in [&["ls"][..], &["invoke", "f", "x"]] {
        let out = run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("has not answered for 1s"), "{stderr}");
        assert!(stderr.contains("did not answer a health check"), "{stderr}");
    }

    // A live server is waited for, however long past the interval its answer takes.
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    let answer = register(&client, "slow", "sleep 3; echo done", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let out = cli_env(&server, &["invoke", "slow", "--check-after", "1s"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_sends_a_content_type_so_a_python_handler_gets_json() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let code = "def handle(p):\n    return p['a'] * 2\n";
    let answer = register(
        &server.client(),
        "j",
        code,
        serde_json::json!({"runtime": "python"}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let json = ["--content-type", "application/json"];
    let out = server.cli(&[&["invoke", "j", r#"{"a": 21}"#][..], &json].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42");
    let out = server.cli(&[&["invoke", "j", "not json"][..], &json].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not JSON"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_that_prints_has_json() {
    let server = Server::start(&[]);
    let client = server.client();
    assert!(
        register(&client, "echo", "cat", serde_json::json!({}))
            .await
            .status
            .is_success()
    );
    let binary = "printf '\\377\\000'; echo oops >&2";
    assert!(
        register(&client, "bin", binary, serde_json::json!({}))
            .await
            .status
            .is_success()
    );

    let v = json_of(&server.cli(&["invoke", "echo", "hi", "--json"]));
    assert_eq!(v["result"], "hi", "{v}");
    assert_eq!(v["task_id"].as_str().map(str::len), Some(36), "{v}");
    let v = json_of(&server.cli(&["invoke", "bin", "--json"]));
    assert_eq!(v["result_base64"], "/wA=", "{v}");
    assert!(v.get("result").is_none(), "{v}");

    let id = json_of(&server.cli(&["invoke", "bin", "--async", "--json"]));
    let id = id["task_id"].as_str().expect("task_id").to_string();
    let v = json_of(&server.cli(&["result", &id, "--wait", "--json"]));
    assert_eq!(
        (&v["task_id"], &v["result_base64"]),
        (&id.clone().into(), &"/wA=".into())
    );
    let v = json_of(&server.cli(&["logs", &id, "--json"]));
    assert_eq!(v["logs"], "oops\n", "{v}");
    let v = json_of(&server.cli(&["status", &id, "--json"]));
    assert_eq!(v["status"], "COMPLETED", "{v}");

    // A failed task still prints JSON on stdout (and exits 1), for scripts that read it.
    assert!(
        register(
            &client,
            "fails",
            "echo why >&2; exit 3",
            serde_json::json!({})
        )
        .await
        .status
        .is_success()
    );
    let out = server.cli(&["invoke", "fails", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(
        (&v["status"], &v["reason"]),
        (&"FAILED".into(), &"exit_status".into()),
        "{v}"
    );
    assert_eq!(
        (&v["exit_code"], &v["stderr_tail"]),
        (&3.into(), &"why\n".into()),
        "{v}"
    );
    let failed_id = v["task_id"].as_str().expect("task_id").to_string();
    let out = server.cli(&["result", &failed_id, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(
        (&v["task_id"], &v["status"]),
        (&failed_id.into(), &"FAILED".into()),
        "{v}"
    );

    let v = json_of(&server.cli(&["rm", "bin", "--json"]));
    assert_eq!(
        (&v["name"], &v["deleted"]),
        (&"bin".into(), &true.into()),
        "{v}"
    );
    assert!(json_of(&server.cli(&["workers", "--json"])).is_array());
    assert!(json_of(&server.cli(&["usage", "--json"]))["rows"].is_array());
    let data = server.data.to_str().expect("utf8");
    let v = json_of(&server.cli(&["join-token", "--data", data, "--json"]));
    assert_eq!(v["join_token"].as_str().map(str::len), Some(43), "{v}");
    users_and_grants_print_json(&server);
}

/// `user add|ls|token|rm`, `grant` and `revoke` with `--json` (the first user ends protected
/// mode, so the rest use its token).
fn users_and_grants_print_json(server: &Server) {
    let out = server.cli(&["whoami"]);
    assert_eq!(
        text(&out.stdout),
        "local (admin), protected mode\n",
        "{}",
        text(&out.stderr)
    );
    let v = json_of(&server.cli(&["user", "add", "root", "--role", "admin", "--json"]));
    assert_eq!(v["role"], "admin", "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    let cli = |args: &[&str]| json_of(&cli_env(server, args, &[("FAASD_TOKEN", &token)]));
    let v = cli(&["user", "add", "bob", "--role", "invoker", "--json"]);
    assert!(v["token"].is_string(), "{v}");
    let v = cli(&["grant", "bob", "echo", "--json"]);
    assert_eq!(
        v,
        serde_json::json!({"user": "bob", "function": "echo", "granted": true})
    );
    let v = cli(&["user", "ls", "--json"]);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let v = cli(&["revoke", "bob", "echo", "--json"]);
    assert_eq!(v["granted"], false, "{v}");
    let v = cli(&["user", "token", "bob", "--json"]);
    assert_eq!(v["name"], "bob", "{v}");
    let v = cli(&["user", "rm", "bob", "--json"]);
    assert_eq!(v, serde_json::json!({"name": "bob", "removed": true}));
    let v = cli(&["whoami", "--json"]);
    assert_eq!(
        v,
        serde_json::json!({"name": "root", "role": "admin", "mode": "tokens"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_aligns_long_names_and_shows_mpcs_display_names() {
    let server = Server::start(&[]);
    let client = server.client();
    let long = format!("long-{}", "x".repeat(58));
    for name in ["a", long.as_str()] {
        assert!(
            register(&client, name, "cat", serde_json::json!({}))
                .await
                .status
                .is_success()
        );
    }
    let pickle = base64::engine::general_purpose::STANDARD.encode(b"\x80\x04N.");
    let body = serde_json::json!({"name": "square", "payload": pickle}).to_string();
    let answer = client.post("/register_function", "application/json", Bytes::from(body));
    let answer = answer.await.expect("register_function");
    assert_eq!(answer.status.as_u16(), 200, "{}", text(&answer.body));
    let id: serde_json::Value = answer.json().expect("json");
    let id = id["function_id"].as_str().expect("function_id").to_string();

    let list = json_of(&server.cli(&["ls", "--json"]));
    let mpcs = list
        .as_array()
        .expect("list")
        .iter()
        .find(|f| f["name"] == id.as_str());
    assert_eq!(
        mpcs.expect("the MPCS function")["display_name"],
        "square",
        "{list}"
    );

    // Not a terminal: nothing is cut, whatever COLUMNS says.
    let out = cli_env(&server, &["ls"], &[("COLUMNS", "20")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let column =
        |line: &str, word: &str| line.find(word).unwrap_or_else(|| panic!("{word}: {table}"));
    let display = column(lines[0], "DISPLAY NAME");
    let runtime = column(lines[0], "RUNTIME");
    assert!(display >= long.len() + 2, "{table}");
    for line in &lines[1..] {
        let name = line.split_whitespace().next().expect("name");
        let (shown, runtime_name) = if name == id {
            ("square", "pickle")
        } else {
            assert!(name == "a" || name == long, "{line:?} cut? {table}");
            ("-", "shell")
        };
        assert_eq!(
            line[display..].split_whitespace().next(),
            Some(shown),
            "{table}"
        );
        assert_eq!(
            line[runtime..].split_whitespace().next(),
            Some(runtime_name),
            "{table}"
        );
    }
    // On a terminal 60 columns wide, the widest text column is cut with `…`.
    let out = on_terminal(&server, "ls", 60);
    let long_line = out.lines().find(|l| l.starts_with("long-")).expect(&out);
    assert!(long_line.contains('…'), "{out}");
    for line in out.lines() {
        assert!(
            line.chars().count() <= 60,
            "{line:?} is wider than 60: {out}"
        );
    }
    let too_long = serde_json::json!({"name": "n".repeat(201), "payload": pickle}).to_string();
    let answer = client.post(
        "/register_function",
        "application/json",
        Bytes::from(too_long),
    );
    assert_eq!(
        answer.await.expect("register_function").status.as_u16(),
        400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_removes_its_function_unless_kept() {
    let server = Server::start(&[]);
    let small = [
        "bench",
        "--tasks",
        "4",
        "--connections",
        "2",
        "--sync-calls",
        "3",
    ];
    let out = server.cli(&small);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("async throughput: 4 tasks"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).is_empty(),
        "no progress bar off a terminal: {}",
        text(&out.stderr)
    );
    assert!(!function_names(&server).contains(&"bench-noop".to_string()));

    let out = server.cli(&[&small[..], &["--keep", "--json"]].concat());
    let report = json_of(&out);
    assert_eq!(report["kept"], true, "{report}");
    assert_eq!(report["throughput"]["tasks"], 4, "{report}");
    assert_eq!(report["latency"]["calls"], 3, "{report}");
    assert!(function_names(&server).contains(&"bench-noop".to_string()));

    // A failed run removes what it registered too.
    let out = server.cli(
        &[
            &small[..],
            &["--script", "exit 3", "--function", "bench-fail"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!function_names(&server).contains(&"bench-fail".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_warmup_runs_tasks_before_the_measured_ones() {
    let server = Server::start(&[]);
    let args = [
        "bench",
        "--warmup",
        "7",
        "--tasks",
        "5",
        "--connections",
        "2",
        "--sync-calls",
        "0",
        "--keep",
        "--json",
    ];
    let report = json_of(&server.cli(&args));
    assert_eq!(report["throughput"]["tasks"], 5, "{report}");
    assert_eq!(report["warmup_tasks"], 7, "{report}");
    // The submits' share of the run: some time, and no more than the whole.
    let submitting = report["throughput"]["submit_seconds"]
        .as_f64()
        .expect("submit_seconds");
    let whole = report["throughput"]["seconds"].as_f64().expect("seconds");
    assert!(submitting > 0.0 && submitting <= whole, "{report}");
    // The first call, the warm-up and the measured tasks all ran.
    let out = server.cli(&[
        "tasks",
        "--function",
        "bench-noop",
        "--status",
        "COMPLETED",
        "--limit",
        "100",
        "--json",
    ]);
    let listed = json_of(&out);
    let tasks = listed["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1 + 7 + 5, "{listed}");

    let out = server.cli(&[
        "bench",
        "--warmup",
        "3",
        "--tasks",
        "2",
        "--sync-calls",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("warm-up: 3 tasks first, not counted\n")
            && printed.contains("async throughput: 2 tasks")
            && printed.contains("  of which submitting: "),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_csv_appends_one_row_per_run_after_one_header() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("figures.csv");
    let csv_arg = csv.to_str().expect("a UTF-8 path");
    let run = |extra: &[&str]| {
        let base = [
            "bench",
            "--tasks",
            "6",
            "--connections",
            "2",
            "--sync-calls",
            "4",
            "--csv",
            csv_arg,
        ];
        let out = server.cli(&[&base[..], extra].concat());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    };
    run(&["--label", "first, quoted"]);
    run(&[
        "--functions",
        "3",
        "--payload-size",
        "1KiB",
        "--sync-connections",
        "2",
    ]);

    let written = std::fs::read_to_string(&csv).expect("the CSV file");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {written}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..3], ["label", "runtime", "functions"], "{written}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("label,")).count(), 1);
    assert!(
        lines[1].starts_with("\"first, quoted\",shell,1,"),
        "{written}"
    );
    let second: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(second.len(), header.len(), "{written}");
    let field = |name: &str| {
        let i = header.iter().position(|h| *h == name).expect(name);
        second[i]
    };
    assert_eq!(field("functions"), "3");
    assert_eq!(field("payload_bytes"), "1024");
    assert_eq!(field("tasks"), "6");
    assert_eq!(field("sync_calls"), "4");
    assert_eq!(field("sync_connections"), "2");
    for name in ["seconds", "tasks_per_second", "p50_ms", "p99_ms", "max_ms"] {
        let value: f64 = field(name)
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(value > 0.0, "{name} = {value}: {written}");
    }
    assert!(
        field("slots").parse::<u64>().expect("slots") > 0,
        "{written}"
    );
    assert!(
        function_names(&server).is_empty(),
        "every copy removed: {:?}",
        function_names(&server)
    );
}

#[test]
fn bench_shows_a_progress_bar_on_a_terminal() {
    let server = Server::start(&[]);
    let args = "bench --tasks 50 --connections 2 --sync-calls 50";
    let out = on_terminal(&server, args, 100);
    assert!(out.contains("] "), "no bar drawn: {out:?}");
    assert!(out.contains("/150"), "no count of the 150 calls: {out:?}");
    assert!(out.contains("async throughput: 50 tasks"), "{out:?}");
}

/// `faasd bench` holds a connection per caller, so it raises its open-files soft limit to the
/// hard one as the server does: 300 connections under a soft limit of 64 still run.
#[tokio::test(flavor = "multi_thread")]
async fn bench_opens_more_connections_than_the_open_files_soft_limit() {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if hard < 1024 {
        eprintln!("skipped: the open-files hard limit here is {hard}, under what the test needs");
        return;
    }
    let server = Server::start(&[]);
    let out = Command::new("sh")
        .args(["-c", "ulimit -Sn 64 && exec \"$0\" \"$@\""])
        .arg(BIN)
        .args([
            "bench",
            "--tasks",
            "300",
            "--connections",
            "300",
            "--sync-calls",
            "0",
        ])
        .args(["--json"])
        .env("FAASD_URL", &server.url)
        .stdin(Stdio::null())
        .output()
        .expect("run faasd bench");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["throughput"]["tasks"], 300, "{report}");
    assert_eq!(report["throughput"]["connections"], 300, "{report}");
}
