//! What a person sees when something fails, through the real binary: a failed call says why in
//! its first message (reason, exit code or signal, the last lines of stderr, and the command
//! that shows the rest), a Python traceback names the file the user registered, a second
//! server on a data directory in use says so in one line, and a body over `--max-body` is
//! always answered 413 naming the flag, never with a reset.

mod common;

use std::process::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{BIN, Server, text};

/// Sends one `POST /v1/functions` with a body of `len` bytes (with a `Content-Length`, or
/// chunked), writing and reading at once as a client does, and returns the whole answer.
/// Panics if the connection breaks on either side.
async fn post_body(addr: &str, len: usize, chunked: bool) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {len}")
        };
        let head = format!(
            "POST /v1/functions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 256 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if chunked {
                write.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            write.write_all(&chunk[..n]).await?;
            if chunked {
                write.write_all(b"\r\n").await?;
            }
            left -= n;
        }
        if chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        write.flush().await?;
        // Hold the write side open until the reader is done: the server closes first.
        Ok::<_, std::io::Error>(write)
    });
    let mut answer = Vec::new();
    let read_result = read.read_to_end(&mut answer).await;
    let written = writer.await.expect("writer task");
    let answer = text(&answer);
    assert!(
        read_result.is_ok(),
        "reading the answer to a {len} byte body failed: {read_result:?}; got {answer:?}"
    );
    assert!(
        written.is_ok(),
        "writing a {len} byte body failed: {:?}; got {answer:?}",
        written.err()
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_over_max_body_is_always_answered_413_naming_the_flag() {
    let server = Server::start(&["--local-workers", "0"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    for (len, name) in [(7usize << 20, "7 MiB"), (64 << 20, "64 MiB")] {
        for i in 0..50 {
            let answer = post_body(&addr, len, i % 2 == 1).await;
            assert!(
                answer.starts_with("HTTP/1.1 413 "),
                "{name} body #{i}: {answer:?}"
            );
            assert!(
                answer.contains("exceeds the 6291456 byte limit (--max-body)"),
                "{name} body #{i}: {answer:?}"
            );
            assert!(answer.contains("\"payload_too_large\""), "{answer:?}");
        }
    }
    // The CLI prints the answer's message and exits 2 (a usage error), not 3 (unreachable).
    // (Code that large is uploaded apart by `register`; a payload is bounded by --max-body.)
    let client = server.client();
    let registered = common::register(&client, "big", "cat", serde_json::json!({})).await;
    assert_eq!(registered.status, 201);
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = dir.path().join("big.bin");
    std::fs::write(&payload, vec![b'#'; 7 << 20]).expect("write payload");
    let payload = format!("@{}", payload.to_str().expect("utf-8 path"));
    for _ in 0..5 {
        let out = server.cli(&["invoke", "big", &payload, "--async"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with("faasd: request body exceeds the 6291456 byte limit (--max-body)"),
            "{stderr}"
        );
    }
    // The server is still serving.
    let health = server.client().get("/healthz").await.expect("healthz");
    assert_eq!(health.status, 200);
}

/// The task id in the first line of a failure message, `faasd: task ID failed: ...`.
fn task_id_of(stderr: &str) -> String {
    let rest = stderr
        .strip_prefix("faasd: task ")
        .unwrap_or_else(|| panic!("not a failure message: {stderr}"));
    rest.split(' ').next().expect("an id").to_string()
}

#[tokio::test]
async fn a_failed_call_says_why_with_the_stderr_tail_and_the_logs_command() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("fails.sh");
    std::fs::write(
        &script,
        "for i in $(seq 1 15); do echo \"line $i\" >&2; done\nexit 3\n",
    )
    .expect("write script");
    let out = server.cli(&["register", "fails", script.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "fails"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let id = task_id_of(&stderr);
    let tail: String = (6..=15).map(|i| format!("  line {i}\n")).collect();
    assert_eq!(
        stderr,
        format!(
            "faasd: task {id} failed: exited with status 3\n{tail}see all of it: faasd logs {id}\n"
        )
    );
    // The named command shows all of it.
    let logs = server.cli(&["logs", &id]);
    let all: String = (1..=15).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text(&logs.stdout), all);
    // `faasd result` of the failed task says the same.
    let result = server.cli(&["result", &id]);
    assert_eq!(result.status.code(), Some(1));
    assert_eq!(text(&result.stderr), stderr);
}

#[tokio::test]
async fn a_python_traceback_names_the_registered_file_and_line() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = dir.path().join("my_handler.py");
    std::fs::write(
        &handler,
        "def helper(x):\n    raise ValueError('bad ' + x)\n\n\ndef handle(p):\n    return helper(p.decode())\n",
    )
    .expect("write handler");
    let path = handler.to_str().expect("utf-8");
    let out = server.cli(&["register", "exc", path, "--runtime", "python"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "exc", "hi"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let id = task_id_of(&stderr);
    let expected = format!(
        "faasd: task {id} failed: the handler raised an exception\n\
         \x20 Traceback (most recent call last):\n\
         \x20   File \"my_handler.py\", line 6, in handle\n\
         \x20     return helper(p.decode())\n"
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(
        stderr.contains("  File \"my_handler.py\", line 2, in helper\n"),
        "{stderr}"
    );
    assert!(stderr.contains("  ValueError: bad hi\n"), "{stderr}");
    assert!(stderr.ends_with(&format!("see all of it: faasd logs {id}\n")));
    assert!(!stderr.contains("/faasd/"), "{stderr}");
    // The API's message reads as a sentence.
    let answer = common::invoke(&server.client(), "exc", b"hi").await;
    let body = common::expect_error(&answer, 502, "function_failed");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.starts_with("function exc failed: the handler raised an exception (task "),
        "{error}"
    );

    // In a directory bundle, the path is the registered directory's.
    let app = dir.path().join("app");
    std::fs::create_dir(&app).expect("app dir");
    std::fs::write(
        app.join("main.py"),
        "import lib\n\n\ndef handle(p):\n    return lib.work(p)\n",
    )
    .expect("write main");
    std::fs::write(app.join("lib.py"), "def work(p):\n    return 1 / 0\n").expect("write lib");
    let path = app.to_str().expect("utf-8");
    let out = server.cli(&["register", "app", path, "--runtime", "python"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "app"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("    File \"app/main.py\", line 5, in handle\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("    File \"app/lib.py\", line 2, in work\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  ZeroDivisionError: division by zero\n"),
        "{stderr}"
    );

    // A result that cannot be sent back is named as such, without the json module's insides.
    let returns_set = dir.path().join("returns_set.py");
    std::fs::write(&returns_set, "def handle(p):\n    return {1, 2}\n").expect("write");
    let path = returns_set.to_str().expect("utf-8");
    let out = server.cli(&["register", "set", path, "--runtime", "python"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "set"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "  TypeError: handle() returned a set, which is not bytes, str, None or JSON-serializable"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("json/encoder.py"), "{stderr}");

    // A module that compiles but does not load says so, and names its line. (One that does
    // not compile is refused at registration.)
    let broken = dir.path().join("broken.py");
    let source = "def handle(p):\n    return p\n\nimport no_such_module_here\n";
    std::fs::write(&broken, source).expect("write broken");
    let path = broken.to_str().expect("utf-8");
    let out = server.cli(&["register", "broken", path, "--runtime", "python"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "broken"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let id = task_id_of(&stderr);
    assert!(
        stderr.starts_with(&format!(
            "faasd: task {id} failed: the function could not be loaded"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("  File \"broken.py\", line 4, in <module>\n"),
        "{stderr}"
    );
    assert!(stderr.contains("ModuleNotFoundError"), "{stderr}");
}

#[test]
fn a_second_server_on_a_data_directory_in_use_says_so_in_one_line() {
    let first = Server::start(&["--local-workers", "0"]);
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--data")
        .arg(&first.data)
        .args(["--listen", "127.0.0.1:0", "--worker-listen", "127.0.0.1:0"])
        .args(["--local-workers", "0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run a second faasd serve");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Log lines aside, the error is one line, printed once.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("faasd: "))
        .collect();
    let expected = format!(
        "faasd: the data directory {} is in use: another faasd serve holds its lock",
        first.data.display()
    );
    assert_eq!(errors, [expected.as_str()], "{stderr}");
    assert!(stderr.ends_with(&format!("{expected}\n")), "{stderr}");
    assert!(!stderr.contains("Cannot acquire lock"), "{stderr}");
    // The first server is unharmed.
    let ls = Command::new(BIN)
        .arg("ls")
        .env("FAASD_URL", &first.url)
        .output()
        .expect("faasd ls");
    assert!(ls.status.success(), "{}", text(&ls.stderr));
}
