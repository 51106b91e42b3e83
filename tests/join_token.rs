//! The worker port's join token: generated into the data directory and printed by
//! `faasd join-token`, or read from `--join-token-file`; a worker from another address needs it
//! (`--join-token` or `FAASD_JOIN_TOKEN`) and is refused with the reason and exit 1 without it,
//! while a loopback worker needs none in protected mode.
//!
//! "Another address" is this machine's own non-loopback address: the server listens on all
//! addresses and the worker connects to that one, so the server sees a peer that is not
//! loopback.

mod common;

use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Output, Stdio};

use common::{BIN, Server, Worker, register, run, text, wait_workers};

/// This machine's address on its default route (no packet is sent: a UDP `connect` only picks
/// the route).
fn outside_ip() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a non-loopback IPv4 address (a default route)");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

/// A server with no local workers whose worker port listens on every address; returns it and
/// the worker address on its non-loopback side.
fn serve(args: &[&str]) -> (Server, String) {
    let mut all = vec!["--local-workers", "0", "--worker-listen", "0.0.0.0:0"];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let port = server
        .worker_addr
        .rsplit_once(':')
        .expect("host:port")
        .1
        .to_string();
    let addr = format!("{}:{port}", outside_ip());
    (server, addr)
}

/// Runs a worker to its end (a refused one exits at once).
fn worker_until_exit(server_addr: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cache = tempfile::tempdir().expect("tempdir");
    Command::new(BIN)
        .args(["worker", "--server", server_addr, "--cache"])
        .arg(cache.path())
        .args(args)
        .env_remove("FAASD_JOIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run faasd worker")
}

/// Prints the join token of the data directory `data`.
fn join_token(data: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(["join-token", "--data"])
        .arg(data)
        .output()
        .expect("run faasd join-token")
}

/// Checks that a worker exited 1 with the refusal's reason.
fn assert_refused(out: &Output) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused this worker"), "{stderr}");
    assert!(
        stderr.contains("the join token is missing or wrong: pass the server's token with --join-token or FAASD_JOIN_TOKEN"),
        "{stderr}"
    );
}

/// Registers `cat` as `echo` and checks a call runs (on the only worker there is).
async fn assert_runs_tasks(server: &Server) {
    let client = server.client();
    let answer = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let outcome = run(&client, "echo", b"joined").await;
    assert_eq!(outcome.task["status"], "COMPLETED", "{}", outcome.task);
    assert_eq!(outcome.result, "joined");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_token_is_printed_and_admits_a_remote_worker() {
    let (server, addr) = serve(&[]);
    let out = join_token(&server.data);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let token = printed.trim_end_matches('\n');
    assert_eq!(printed, format!("{token}\n"));
    assert_eq!(token.len(), 43, "{token}");
    let stored = std::fs::read_to_string(server.data.join("join-token")).expect("token file");
    assert_eq!(stored.trim(), token);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data.join("join-token"))
            .expect("metadata")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let _worker = Worker::start_with(&addr, "remote", 1, "push", &["--join-token", token]);
    let workers = wait_workers(&server.client(), 1).await;
    assert_eq!(workers[0]["name"], "remote");
    assert_runs_tasks(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_worker_with_a_wrong_or_no_token_is_refused_and_exits_1() {
    let (server, addr) = serve(&[]);
    assert_refused(&worker_until_exit(&addr, &["--join-token", "wrong"], &[]));
    assert_refused(&worker_until_exit(
        &addr,
        &[],
        &[("FAASD_JOIN_TOKEN", "wrong")],
    ));
    assert_refused(&worker_until_exit(&addr, &[], &[]));
    // The right token by environment variable joins.
    let token = text(&join_token(&server.data).stdout).trim().to_string();
    let cache = tempfile::tempdir().expect("tempdir");
    let mut worker = Command::new(BIN)
        .args(["worker", "--server", &addr, "--name", "by-env", "--cache"])
        .arg(cache.path())
        .env("FAASD_JOIN_TOKEN", &token)
        .stdin(Stdio::null())
        .spawn()
        .expect("start worker");
    let workers = wait_workers(&server.client(), 1).await;
    assert_eq!(workers[0]["name"], "by-env");
    let _ = worker.kill();
    let _ = worker.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_token_file_is_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "a-token-of-our-own\n").expect("write token");
    let (server, addr) = serve(&["--join-token-file", file.to_str().expect("utf8")]);
    assert!(!server.data.join("join-token").exists());
    assert_refused(&worker_until_exit(&addr, &["--join-token", "wrong"], &[]));
    let _worker = Worker::start_with(
        &addr,
        "own-token",
        1,
        "push",
        &["--join-token", "a-token-of-our-own"],
    );
    wait_workers(&server.client(), 1).await;
    assert_runs_tasks(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_worker_needs_no_token_in_protected_mode() {
    let (server, _) = serve(&[]);
    let port = server.worker_addr.rsplit_once(':').expect("host:port").1;
    let _worker = Worker::start(&format!("127.0.0.1:{port}"), "local-one", 1, "push");
    wait_workers(&server.client(), 1).await;
    assert_runs_tasks(&server).await;
}

#[test]
fn join_token_without_a_generated_token_says_how_to_make_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = join_token(dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not exist: start `faasd serve"),
        "{stderr}"
    );
}
