//! `faasd register` end to end: code that can never run is refused before it is stored, a new
//! version keeps the previous version's settings (`--reset` drops them) and says what changed,
//! and a file too large for the body limit is explained.

mod common;

use std::path::{Path, PathBuf};

use common::{Server, Worker, expect_error, text, wait_workers};

/// Writes `text` at `path` (making its directory) and returns the path as a string.
fn write(path: &Path, text: &str) -> String {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    path.to_str().expect("utf8").to_string()
}

/// `faasd register ARGS`: its exit code, stdout and stderr.
fn register(server: &Server, args: &[&str]) -> (Option<i32>, String, String) {
    let argv: Vec<&str> = ["register"].iter().chain(args).copied().collect();
    let out = server.cli(&argv);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The live version of `name` as the API shows it, or `None` when there is none.
async fn live(server: &Server, name: &str) -> Option<serde_json::Value> {
    let answer = server
        .client()
        .get(&format!("/v1/functions/{name}"))
        .await
        .expect("answer");
    if answer.status.as_u16() == 404 {
        return None;
    }
    Some(answer.json().expect("json"))
}

/// Asserts that registering refused the code (exit 2, a message with `expect`) and stored
/// nothing: `name` is still at `version` (or absent for `None`).
async fn assert_refused(
    server: &Server,
    args: &[&str],
    expect: &str,
    name: &str,
    version: Option<u64>,
) {
    let (code, stdout, stderr) = register(server, args);
    assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
    assert!(stderr.contains(expect), "{args:?}: {stderr}");
    let now = live(server, name).await;
    assert_eq!(
        now.map(|f| f["version"].as_u64().expect("version")),
        version
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_that_does_not_compile_or_lacks_handle_is_refused_with_its_line() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = write(
        &dir.path().join("broken.py"),
        "import os\n\ndef handle(payload)\n    return payload\n",
    );
    let (code, _, stderr) = register(&server, &["bad", &broken, "--runtime", "python"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the module does not compile: line 3, column "),
        "{stderr}"
    );
    assert_eq!(live(&server, "bad").await, None);

    // A good first version stays live when a broken second one is refused.
    let good = write(
        &dir.path().join("good.py"),
        "def handle(payload):\n    return payload\n",
    );
    let (code, stdout, stderr) = register(&server, &["pyf", &good, "--runtime", "python"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "registered pyf version 1\n"),
        "{stderr}"
    );
    let args = ["pyf", broken.as_str(), "--runtime", "python"];
    assert_refused(&server, &args, "line 3", "pyf", Some(1)).await;
    let nohandle = write(
        &dir.path().join("nohandle.py"),
        "def main(p):\n    return p\n",
    );
    let args = ["pyf", nohandle.as_str(), "--runtime", "python"];
    assert_refused(
        &server,
        &args,
        "defines no top-level handle",
        "pyf",
        Some(1),
    )
    .await;

    // Through the API: 400 invalid_code with the line.
    let body = serde_json::json!({"name": "api", "runtime": "python", "code": "ZGVmICg="});
    let answer = server
        .client()
        .post("/v1/functions", "application/json", body.to_string().into())
        .await
        .expect("answer");
    let error = expect_error(&answer, 400, "invalid_code");
    assert_eq!(error["line"], 1, "{error}");
    assert_eq!(live(&server, "api").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_python_has_the_first_worker_compile() {
    // The server (and so its local workers) has no interpreter; a remote worker does.
    let server = Server::start(&["--local-workers", "0", "--python", "/no/such/python3"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = write(
        &dir.path().join("broken.py"),
        "def handle(payload)\n    return payload\n",
    );
    let args = ["bad", broken.as_str(), "--runtime", "python"];
    // With no worker connected the check is skipped: the code is stored unchecked.
    let (code, _, stderr) = register(&server, &args);
    assert_eq!(code, Some(0), "{stderr}");

    let _worker = Worker::start(&server.worker_addr, "checker", 1, "push");
    wait_workers(&server.client(), 1).await;
    let args = ["bad2", broken.as_str(), "--runtime", "python"];
    assert_refused(
        &server,
        &args,
        "does not compile: line 1, column ",
        "bad2",
        None,
    )
    .await;
    let nohandle = write(
        &dir.path().join("nohandle.py"),
        "def main(p):\n    return p\n",
    );
    let args = ["bad3", nohandle.as_str(), "--runtime", "python"];
    assert_refused(&server, &args, "defines no top-level handle", "bad3", None).await;
    let good = write(
        &dir.path().join("good.py"),
        "def handle(payload):\n    return payload\n",
    );
    let (code, stdout, stderr) = register(&server, &["good", &good, "--runtime", "python"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "registered good version 1\n"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_needs_its_entry_module() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app");
    write(&app.join("lib.py"), "def handle(p):\n    return p\n");
    let app = app.to_str().expect("utf8");
    let args = ["app", app, "--runtime", "python"];
    assert_refused(
        &server,
        &args,
        "no entry module \"main\" (looked for main.py and main/__init__.py)",
        "app",
        None,
    )
    .await;
    let args = ["app", app, "--runtime", "python", "--entry", "lib"];
    let (code, stdout, stderr) = register(&server, &args);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "registered app version 1\n"),
        "{stderr}"
    );
    // A broken entry module in a bundle names its file and line.
    write(&PathBuf::from(app).join("lib.py"), "x = 1\ny = (\n");
    let args = ["app", app, "--runtime", "python", "--entry", "lib"];
    assert_refused(
        &server,
        &args,
        "lib.py does not compile: line 2",
        "app",
        Some(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_as_shell_and_a_script_as_pickle_are_refused() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = write(&dir.path().join("tool/hello.sh"), "echo hello\n");
    let tool = dir.path().join("tool");
    let tool = tool.to_str().expect("utf8");
    for runtime in ["shell", "exec"] {
        let args = ["tool", tool, "--runtime", runtime];
        let expect = format!("a {runtime} function takes a single file, not a directory");
        assert_refused(&server, &args, &expect, "tool", None).await;
    }
    let args = ["pick", script.as_str(), "--runtime", "pickle"];
    assert_refused(&server, &args, "code must be a pickle", "pick", None).await;
    // The same script as shell is fine.
    let (code, _, stderr) = register(&server, &["tool", &script]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_py_file_without_runtime_is_not_taken_for_a_shell_script() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let greet = write(
        &dir.path().join("greet.py"),
        "def handle(p):\n    return b'hi ' + p\n",
    );
    let (code, _, stderr) = register(&server, &["greet", &greet]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("add --runtime python"), "{stderr}");
    assert_eq!(server.cli(&["versions", "greet"]).status.code(), Some(4));
    // Said outright, either runtime is taken; a python function's next version needs no flag.
    let (code, _, stderr) = register(&server, &["greet", &greet, "--runtime", "python"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = register(&server, &["greet", &greet]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = server.cli(&["invoke", "greet", "you"]);
    assert_eq!(text(&out.stdout), "hi you", "{}", text(&out.stderr));
    let script = write(&dir.path().join("odd.py"), "echo shell\n");
    let (code, _, stderr) = register(&server, &["odd", &script, "--runtime", "shell"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_keeps_the_settings_not_given_and_reset_drops_them() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = write(&dir.path().join("hello.sh"), "echo hello\n");
    let first = [
        "tmo",
        &hello,
        "--timeout",
        "5s",
        "--env",
        "A=1",
        "--concurrency",
        "2",
    ];
    let (code, stdout, stderr) = register(&server, &first);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "registered tmo version 1\n"),
        "{stderr}"
    );

    let (code, stdout, stderr) = register(&server, &["tmo", &hello]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "registered tmo version 2\n"),
        "{stderr}"
    );
    let f = live(&server, "tmo").await.expect("tmo");
    assert_eq!(
        (&f["timeout_ms"], &f["env"], &f["concurrency"]),
        (
            &serde_json::json!(5000),
            &serde_json::json!({"A": "1"}),
            &serde_json::json!(2)
        ),
        "{f}"
    );

    let (code, stdout, stderr) = register(&server, &["tmo", &hello, "--timeout", "10s"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "registered tmo version 3\ntimeout: 5s -> 10s\n");

    let (code, stdout, stderr) = register(&server, &["tmo", &hello, "--reset", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(answer["version"], 4, "{answer}");
    assert_eq!(
        answer["changed"],
        serde_json::json!([
            {"setting": "timeout", "from": "10s", "to": "30s"},
            {"setting": "concurrency", "from": "2", "to": "unlimited"},
            {"setting": "env A", "from": "1", "to": "unset"},
        ])
    );
    let f = live(&server, "tmo").await.expect("tmo");
    assert_eq!(
        (&f["timeout_ms"], &f["env"], &f["concurrency"]),
        (
            &serde_json::json!(30000),
            &serde_json::json!({}),
            &serde_json::Value::Null
        ),
        "{f}"
    );

    // New code with new settings: each change on a line of its own.
    let other = write(&dir.path().join("other.sh"), "echo other\n");
    let (code, stdout, stderr) = register(&server, &["tmo", &other, "--env", "B=2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "registered tmo version 5");
    assert!(
        lines[1].starts_with("code: ") && lines[1].contains(" -> "),
        "{stdout}"
    );
    assert_eq!(lines[2..], ["env B: unset -> 2"], "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn code_too_large_for_the_body_limit_is_explained_and_the_size_it_names_fits() {
    use base64::Engine;
    let server = Server::start(&[]);
    let client = server.client();
    let post = |code: Vec<u8>| {
        let code = base64::engine::general_purpose::STANDARD.encode(code);
        let body = serde_json::json!({"name": "big", "code": code});
        let body = serde_json::to_vec(&body).expect("json");
        client.post("/v1/functions", "application/json", body.into())
    };
    // Sent inline, code whose base64 is over `--max-body` is refused with why.
    let answer = post(vec![b'#'; 5 << 20]).await.expect("register");
    let error = expect_error(&answer, 413, "payload_too_large");
    let message = error["error"].as_str().expect("message");
    for part in ["6291456 byte limit", "base64", "--max-body"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert_eq!(live(&server, "big").await, None);
    // The size the message says fits does fit.
    let fits: usize = message
        .split("up to about ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {message}"));
    let answer = post(vec![b'#'; fits]).await.expect("register");
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    // The CLI uploads such a file apart from the registration, so it registers whatever the
    // body limit.
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.sh");
    std::fs::write(&big, vec![b'#'; 5 << 20]).expect("write");
    let (code, stdout, stderr) = register(&server, &["big", big.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("uploaded 5242880 bytes of code"),
        "{stderr}"
    );
    assert!(stdout.starts_with("registered big version 2"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requirements_without_runtime_follow_the_kept_runtime() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = write(&dir.path().join("h.py"), "def handle(p):\n    return p\n");
    let requirements = write(&dir.path().join("reqs.txt"), "six\n");
    let args = [
        "py",
        handler.as_str(),
        "--requirements",
        requirements.as_str(),
    ];
    let (code, _, stderr) = register(&server, &args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--requirements is for the python runtime, not shell"),
        "{stderr}"
    );
    let (code, _, stderr) = register(&server, &["py", &handler, "--runtime", "python"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = register(&server, &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("registered py version 2\n"), "{stdout}");
    let f = live(&server, "py").await.expect("py");
    assert_eq!(f["runtime"], "python", "{f}");
    assert_eq!(f["env"]["FAASD_ENTRY"], "handler", "{f}");
}
