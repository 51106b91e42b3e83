//! `faasd invoke NAME --batch FILE|-` through the real binary: every line's result in input
//! order, `--json`, `--output DIR`, `--base64`, exit 1 when a task fails, 130 on Ctrl-C, and
//! the input it refuses before submitting anything.

mod common;

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{BIN, Server, eventually, register, text};
use serde_json::{Value, json};

/// Starts `faasd ARGS` against `server`, feeding `input` on stdin from a thread (so a large
/// input cannot block on a full stdout pipe).
fn spawn_cli(server: &Server, args: &[&str], input: Vec<u8>) -> Child {
    let mut child = Command::new(BIN)
        .args(args)
        .env("FAASD_URL", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faasd CLI");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    child
}

/// Runs `faasd ARGS` with `input` on stdin to its end.
fn cli(server: &Server, args: &[&str], input: &[u8]) -> Output {
    spawn_cli(server, args, input.to_vec())
        .wait_with_output()
        .expect("CLI output")
}

/// A shell function that echoes its payload, and fails (exit 3, a line on stderr) for a payload
/// that starts with `bad`.
const PICKY: &str =
    r#"p=$(cat); case "$p" in bad*) echo "refused $p" >&2; exit 3;; esac; printf '%s' "$p""#;

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_lines_come_back_one_result_per_line_in_input_order() {
    let server = Server::start(&[]);
    let client = server.client();
    let code = "def handle(payload):\n    return payload\n";
    let answer = register(&client, "echo", code, json!({"runtime": "python"})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let lines: Vec<String> = (0..10_000).map(|i| format!("payload {i}")).collect();
    let input = lines.join("\n") + "\n";

    let out = cli(
        &server,
        &["invoke", "echo", "--batch", "-"],
        input.as_bytes(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // stderr is not a terminal: no progress bar, nothing else either.
    assert_eq!(stderr, "");
    let stdout = text(&out.stdout);
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), 10_000);
    for (i, (got, want)) in got.iter().zip(&lines).enumerate() {
        assert_eq!(got, want, "line {}", i + 1);
    }
    assert_eq!(common::queued(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_tasks_exit_1_and_json_and_output_dir_say_which() {
    let server = Server::start(&[]);
    let client = server.client();
    register(&client, "picky", PICKY, json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::write(&input, b"a\nbad one\n\n\xff\xfe\n").expect("write input");
    let input = input.to_str().expect("utf-8");

    let out = cli(&server, &["invoke", "picky", "--batch", input], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // One stdout line per input line; the failed one is empty, its error is on stderr.
    assert_eq!(out.stdout, b"a\n\n\n\xff\xfe\n");
    assert!(stderr.contains("faasd: line 2: task "), "{stderr}");
    assert!(stderr.contains(" failed: "), "{stderr}");
    assert!(stderr.ends_with("faasd: 1 of 4 tasks failed\n"), "{stderr}");

    let out = cli(
        &server,
        &["invoke", "picky", "--batch", input, "--json"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let objects: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(objects.len(), 4);
    let indexes: Vec<&Value> = objects.iter().map(|o| &o["index"]).collect();
    assert_eq!(indexes, [&json!(1), &json!(2), &json!(3), &json!(4)]);
    assert_eq!(objects[0]["status"], "COMPLETED");
    assert_eq!(objects[0]["result"], "a");
    assert_eq!(objects[1]["status"], "FAILED");
    assert_eq!(objects[1]["reason"], "exit_status", "{}", objects[1]);
    assert!(objects[1]["error"].is_string(), "{}", objects[1]);
    assert!(objects[1].get("result").is_none(), "{}", objects[1]);
    assert_eq!(objects[2]["result"], "");
    assert_eq!(objects[3]["result_base64"], "//4=");
    for o in &objects {
        let id = o["task_id"].as_str().expect("task_id");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{o}");
    }

    let files = dir.path().join("out");
    let files_arg = files.to_str().expect("utf-8");
    let out = cli(
        &server,
        &["invoke", "picky", "--batch", input, "--output", files_arg],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "--output writes files, not stdout");
    let mut names: Vec<String> = std::fs::read_dir(&files)
        .expect("output dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["000001.out", "000002.err", "000003.out", "000004.out"]
    );
    let read = |name: &str| std::fs::read(files.join(name)).expect("read output file");
    assert_eq!(read("000001.out"), b"a");
    assert_eq!(read("000003.out"), b"");
    assert_eq!(read("000004.out"), b"\xff\xfe");
    let err = text(&read("000002.err"));
    assert!(err.starts_with("task "), "{err}");
    assert!(err.contains("refused bad one"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn base64_lines_carry_payloads_with_newlines() {
    let server = Server::start(&[]);
    register(&server.client(), "echo", "cat", json!({})).await;
    // "x\ny" and the bytes 0, 10, 255.
    let out = cli(
        &server,
        &["invoke", "echo", "--batch", "-", "--base64", "--json"],
        b"eAp5\nAAr/\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let objects: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(objects[0]["result"], "x\ny");
    assert_eq!(objects[1]["result_base64"], "AAr/");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_before_anything_is_submitted() {
    // No workers: anything submitted would stay queued.
    let server = Server::start(&["--local-workers", "0", "--max-body", "1KiB"]);
    let client = server.client();
    register(&client, "echo", "cat", json!({})).await;

    let out = cli(&server, &["invoke", "echo", "--batch", "-"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "faasd: the batch is empty: give at least one line\n"
    );

    let mut input = b"ok\nok\n".to_vec();
    input.extend(vec![b'x'; 2000]);
    input.extend(b"\nok\n");
    let out = cli(&server, &["invoke", "echo", "--batch", "-"], &input);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("faasd: line 3 of the batch is over the size limit: 2000 bytes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1024 bytes per request (serve --max-body)"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was submitted"), "{stderr}");

    let out = cli(
        &server,
        &["invoke", "echo", "--batch", "-", "--base64"],
        b"eA==\nnot base64\n",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("faasd: line 2 of the batch is not base64"),
        "{stderr}"
    );

    let out = cli(
        &server,
        &["invoke", "echo", "--batch", "/no/such/file"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = cli(&server, &["invoke", "nope", "--batch", "-"], b"a\n");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    // The batch's own flags without --batch are refused, not ignored.
    for flags in [&["--base64"][..], &["--output", "out"]] {
        let mut args = vec!["invoke", "echo", "eA=="];
        args.extend(flags);
        let out = cli(&server, &args, b"");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("goes with --batch"), "{stderr}");
    }
    assert_eq!(
        common::queued(&client).await,
        0,
        "no refused batch queued anything"
    );

    // Lines that fit are cut into requests under the limit: 40 lines of 100 bytes.
    let line = "y".repeat(100);
    let input = vec![line.as_str(); 40].join("\n");
    let mut child = spawn_cli(&server, &["invoke", "echo", "--batch", "-"], input.into());
    eventually("the 40 tasks to be queued", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            match common::queued(&client).await {
                40 => Ok(()),
                n => Err(format!("{n} queued")),
            }
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (bounded) until the server holds exactly `n` queued tasks.
async fn queued_reaches(client: &faasd::client::Client, n: u64, what: &str) {
    eventually(what, Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            match common::queued(&client).await {
                q if q == n => Ok(()),
                q => Err(format!("{q} queued")),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_submitting_and_says_where_the_tasks_are() {
    // No workers: nothing finishes, so the window (1,000 tasks) fills and the rest waits.
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    register(&client, "held", "cat", json!({})).await;
    let input: Vec<u8> = (0..1_500)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let child = spawn_cli(&server, &["invoke", "held", "--batch", "-"], input);
    queued_reaches(&client, 1_000, "the window to fill").await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("CLI output");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // The server had taken 1,000 tasks; the CLI may have been interrupted before the answer
    // to the last request came, and then says that request may have been taken.
    let answered = "faasd: interrupted: submitted 1000 of 1500 tasks (lines 1-1000), 0 written;";
    let cut_short = "faasd: interrupted: submitted 500 of 1500 tasks (lines 1-500) (and perhaps \
                     lines 501-1000, whose request was cut short), 0 written;";
    assert!(
        stderr.starts_with(answered) || stderr.starts_with(cut_short),
        "{stderr}"
    );
    assert!(
        stderr.contains("`faasd tasks --function held --since "),
        "{stderr}"
    );
    assert_eq!(
        common::queued(&client).await,
        1_000,
        "nothing more was submitted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_stopped_by_an_error_says_which_tasks_were_submitted() {
    // No workers, a queue of 10: the first 10 lines are taken, then the batch waits for room.
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    register(&client, "held", "cat", json!({"queue_limit": 10})).await;
    let input: Vec<u8> = (0..30)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let child = spawn_cli(&server, &["invoke", "held", "--batch", "-"], input);
    queued_reaches(&client, 10, "the queue to fill").await;
    // The function goes away: the next request is refused, and the batch stops.
    let removed = client.delete("/v1/functions/held").await.expect("remove");
    assert_eq!(removed.status, 200, "{}", text(&removed.body));
    let out = child.wait_with_output().expect("CLI output");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    // (The submitted tasks, cancelled with their function, may have had their failures
    // printed first, line by line.)
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("faasd: submitted 10 of 30 tasks (lines 1-10)"),
        "{stderr}"
    );
    assert!(
        last.contains("faasd tasks --function held --since"),
        "{last}"
    );
    assert!(last.ends_with("no function named \"held\""), "{last}");
    // The refused request took no lines, and the tasks are not said to run (they were
    // cancelled with their function).
    assert!(!last.contains("perhaps"), "{last}");
    assert!(!last.contains("still run"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_progress_bar_shows_on_a_terminal_and_stdout_keeps_the_results() {
    let server = Server::start(&[]);
    register(&server.client(), "echo", "cat", json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::write(&input, "a\nb\nc\n").expect("write input");
    let results = dir.path().join("results");
    // stderr is the pseudo-terminal `script` makes; stdout goes to a file.
    let command = format!(
        "{BIN} invoke echo --batch {} > {}",
        input.display(),
        results.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("FAASD_URL", &server.url)
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let terminal = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{terminal}");
    assert!(terminal.contains("/3 done "), "{terminal:?}");
    assert!(terminal.contains(", failed 0"), "{terminal:?}");
    assert!(
        terminal.contains("faasd: 3 tasks in ") && terminal.contains("3 completed, 0 failed"),
        "the bar ends with a summary line: {terminal:?}"
    );
    let results = std::fs::read(&results).expect("results");
    assert_eq!(text(&results), "a\nb\nc\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_larger_than_the_queue_is_sent_in_requests_that_fit_it() {
    let server = Server::start(&[]);
    let client = server.client();
    let settings = json!({"concurrency": 1, "queue_limit": 3});
    let answer = register(&client, "small", "cat", settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let lines: Vec<String> = (1..=10).map(|i| format!("line {i}")).collect();
    let input = lines.join("\n") + "\n";

    // Ten lines could never be admitted at once by a queue of three.
    let out = cli(
        &server,
        &["invoke", "small", "--batch", "-"],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), lines);

    // Over the API, the refusal says why such a batch can never fit.
    let body = Bytes::from(serde_json::to_vec(&lines).expect("json"));
    let answer = client
        .request_with(
            hyper::Method::POST,
            "/v1/functions/small/batch",
            Some("application/json"),
            &[],
            body,
        )
        .await
        .expect("batch");
    let error = common::expect_error(&answer, 429, "queue_full");
    let message = error["error"].as_str().expect("message");
    assert!(message.contains("can never fit"), "{message}");
    assert_eq!(error["queue_limit"], 3, "{error}");
}
