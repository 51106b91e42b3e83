//! Per-function requirements, end to end: `faasd register --requirements` (and a directory
//! bundle's `requirements.txt`) runs a `python` function in a virtualenv the worker builds
//! once per requirements, with the default sandbox. Needs PyPI.

mod common;

use std::path::{Path, PathBuf};

use common::{Server, run, text};

/// A handler that needs `six`, which the worker's interpreter does not have.
const USES_SIX: &str = "import six\n\ndef handle(payload):\n    return 'six ' + six.__version__ + ' ' + payload.decode()\n";

/// The env directories under the in-process worker's code cache.
fn envs(server: &Server) -> Vec<PathBuf> {
    let dir = server.data.join("code-cache").join("envs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|list| list.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write");
    path.to_str().expect("utf8").to_string()
}

/// Registers with the CLI and checks it succeeded.
fn register(server: &Server, args: &[&str]) {
    let out = server.cli(&[&["register"], args, &["--timeout", "120s"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_with_the_same_requirements_share_one_env() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = write(&dir.path().join("uses_six.py"), USES_SIX);
    let requirements = write(&dir.path().join("reqs.txt"), "six==1.16.0\n");

    register(
        &server,
        &[
            "a",
            &handler,
            "--runtime",
            "python",
            "--requirements",
            &requirements,
        ],
    );
    let first = run(&client, "a", b"a").await;
    assert_eq!(
        first.task["status"], "COMPLETED",
        "{} {}",
        first.task, first.logs
    );
    assert_eq!(first.result, "six 1.16.0 a");
    assert_eq!(first.task["cold_start"], true, "{}", first.task);
    // The build (a virtualenv and an install) is part of the first call's cold start.
    let init_ms = first.task["init_ms"].as_f64().expect("init_ms");
    assert!(init_ms > 500.0, "{}", first.task);
    let built = envs(&server);
    assert_eq!(built.len(), 1, "{built:?}");
    let ready = built[0].join("ready");
    let stamp = std::fs::metadata(&ready)
        .expect("ready marker")
        .modified()
        .expect("mtime");

    // Another function and a new version, the same requirements written differently.
    let same = write(
        &dir.path().join("same.txt"),
        "# pinned\n  six==1.16.0  \n\n",
    );
    register(
        &server,
        &[
            "b",
            &handler,
            "--runtime",
            "python",
            "--requirements",
            &same,
        ],
    );
    register(
        &server,
        &[
            "a",
            &handler,
            "--runtime",
            "python",
            "--requirements",
            &same,
        ],
    );
    // A directory bundle's requirements.txt needs no flag.
    let app = dir.path().join("app");
    std::fs::create_dir(&app).expect("mkdir");
    write(&app.join("main.py"), USES_SIX);
    write(&app.join("requirements.txt"), "six==1.16.0\n");
    register(
        &server,
        &["c", app.to_str().expect("utf8"), "--runtime", "python"],
    );
    for name in ["b", "a", "c"] {
        let out = run(&client, name, name.as_bytes()).await;
        assert_eq!(
            out.task["status"], "COMPLETED",
            "{name}: {} {}",
            out.task, out.logs
        );
        assert_eq!(out.result, format!("six 1.16.0 {name}"));
    }
    assert_eq!(envs(&server), built, "the env was not shared");
    let after = std::fs::metadata(&ready)
        .expect("ready marker")
        .modified()
        .expect("mtime");
    assert_eq!(after, stamp, "the env was rebuilt");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_install_fails_calls_with_pips_error() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = write(&dir.path().join("h.py"), "def handle(p):\n    return p\n");
    let package = "faasd-test-no-such-package-4b1d";
    let requirements = write(&dir.path().join("reqs.txt"), &format!("{package}==9.9.9\n"));
    register(
        &server,
        &[
            "bad",
            &handler,
            "--runtime",
            "python",
            "--requirements",
            &requirements,
        ],
    );
    let first = run(&client, "bad", b"x").await;
    assert_eq!(first.task["status"], "FAILED", "{}", first.task);
    assert_eq!(first.task["reason"], "init_failed", "{}", first.task);
    assert!(first.logs.contains(package), "{}", first.logs);
    assert!(first.logs.contains("ERROR"), "{}", first.logs);
    // The failure is remembered: the next call fails the same way without a rebuild.
    let second = run(&client, "bad", b"x").await;
    assert_eq!(second.task["reason"], "init_failed", "{}", second.task);
    assert_eq!(second.task["cold_start"], false, "{}", second.task);
    let built = envs(&server);
    assert_eq!(built.len(), 1, "{built:?}");
    assert!(
        !built[0].join("ready").exists(),
        "a failed env is marked ready"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requirements_are_for_python_functions_only() {
    let server = Server::start(&["--local-workers", "1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = write(&dir.path().join("s.sh"), "echo hi\n");
    let requirements = write(&dir.path().join("reqs.txt"), "six\n");
    let out = server.cli(&["register", "s", &script, "--requirements", &requirements]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--requirements is for the python runtime, not shell"),
        "{}",
        text(&out.stderr)
    );
    let sneaky = write(&dir.path().join("sneaky.txt"), "six\n-e /srv/project\n");
    let out = server.cli(&[
        "register",
        "p",
        &script,
        "--runtime",
        "python",
        "--requirements",
        &sneaky,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not allowed"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_requirement_is_refused_at_registration_not_at_the_first_call() {
    let server = Server::start(&["--local-workers", "1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = write(&dir.path().join("h.py"), "def handle(p):\n    return p\n");
    let typo = write(&dir.path().join("reqs.txt"), "six\nnumpy=1.26\n");
    let args = ["register", "p", &handler, "--runtime", "python"];
    let out = server.cli(&[&args[..], &["--requirements", &typo]].concat());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"numpy=1.26\" is not a valid requirement"),
        "{stderr}"
    );
    assert!(stderr.contains("use `==`"), "{stderr}");

    // A bundle sent to the API without the CLI is refused by the server, naming the line.
    let mut bundle = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("handler.py", "def handle(p):\n    return p\n"),
        ("requirements.txt", "pandas 2.0\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        bundle
            .append_data(&mut header, name, body.as_bytes())
            .expect("append");
    }
    let bundle = bundle.into_inner().expect("tar");
    let settings = serde_json::json!({"runtime": "python"});
    let answer = common::register(&server.client(), "q", bundle, settings).await;
    let error = common::expect_error(&answer, 400, "invalid_code");
    let message = error["error"].as_str().expect("message");
    assert!(
        message.contains("requirements.txt: \"pandas 2.0\" is not a valid requirement"),
        "{message}"
    );
    assert_eq!(
        server
            .client()
            .get("/v1/functions/q")
            .await
            .expect("get")
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn min_warm_builds_the_env_at_registration() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let handler = write(&dir.path().join("uses_six.py"), USES_SIX);
    let requirements = write(&dir.path().join("reqs.txt"), "six==1.16.0\n");
    register(
        &server,
        &[
            "w",
            &handler,
            "--runtime",
            "python",
            "--requirements",
            &requirements,
            "--min-warm",
            "1",
        ],
    );
    let ready = || async {
        match envs(&server).first() {
            Some(env) if env.join("ready").exists() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    common::eventually(
        "the env built before any call",
        std::time::Duration::from_secs(120),
        ready,
    )
    .await;
    // The pre-started executor answers: no cold start.
    let warm_executor = || async {
        let out = run(&client, "w", b"w").await;
        match out.task["cold_start"].as_bool() {
            Some(false) => Ok(out),
            _ => Err(out.task.to_string()),
        }
    };
    let out = common::eventually(
        "a call served by the pre-started executor",
        std::time::Duration::from_secs(30),
        warm_executor,
    )
    .await;
    assert_eq!(out.result, "six 1.16.0 w");
}
