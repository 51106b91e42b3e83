//! Test harness shared by the integration tests: starts the real `faasd` binary on port 0 with
//! a temporary data directory, reads the addresses it prints when ready, and kills it on drop;
//! registers and calls functions through the HTTP API; and waits, bounded, for conditions with
//! [`eventually`]; `image.rs` builds container images for the `oci` runtime's tests.

#![allow(dead_code)]

pub mod image;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faasd::client::{Answer, Client};

/// The faasd binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_faasd");

/// A running `faasd serve`.
pub struct Server {
    /// The `faasd serve` process.
    pub child: Child,
    /// The HTTP API's base URL.
    pub url: String,
    /// The address workers connect to.
    pub worker_addr: String,
    /// The data directory.
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a new temporary data directory.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut server = Server::start_on(&data, args);
        server._dir = Some(dir);
        server
    }

    /// Starts a server on an existing data directory (the caller keeps it alive).
    pub fn start_on(data: &Path, args: &[&str]) -> Server {
        Server::start_with(Command::new(BIN), data, args)
    }

    /// Starts a server on a new temporary data directory with `vars` set in its environment.
    pub fn start_with_env(vars: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut command = Command::new(BIN);
        command.envs(vars.iter().map(|(k, v)| (*k, *v)));
        let mut server = Server::start_with(command, &data, args);
        server._dir = Some(dir);
        server
    }

    /// Starts a server as uid and gid 65534 (through `setpriv`) on a new temporary data
    /// directory it owns.
    pub fn start_unprivileged(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        for path in [dir.path(), &data] {
            std::os::unix::fs::chown(path, Some(65534), Some(65534)).expect("chown");
        }
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        let mut server = Server::start_with(command, &data, args);
        server._dir = Some(dir);
        server
    }

    /// Starts `command` (which runs faasd) as `serve` on `data`.
    fn start_with(mut command: Command, data: &Path, args: &[&str]) -> Server {
        command.arg("serve").arg("--data").arg(data);
        command.args(["--listen", "127.0.0.1:0"]);
        if !args.contains(&"--worker-listen") {
            command.args(["--worker-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start faasd serve");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut worker_addr = None;
        while url.is_none() || worker_addr.is_none() {
            let line = lines
                .next()
                .expect("faasd serve exited before it was ready")
                .expect("read stdout");
            if let Some(rest) = line.strip_prefix("faasd listening on ") {
                url = Some(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("faasd worker port on ") {
                worker_addr = Some(rest.to_string());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url: url.expect("url"),
            worker_addr: worker_addr.expect("worker addr"),
            data: data.to_owned(),
            _dir: None,
        }
    }

    /// An HTTP client for this server.
    pub fn client(&self) -> Client {
        Client::new(&self.url).expect("client")
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, b"")
    }

    /// Runs the CLI against this server with `input` on stdin.
    pub fn cli_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args(args)
            .env("FAASD_URL", &self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run faasd CLI");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("CLI output")
    }

    /// Sends `signal` and waits (bounded) for the process to exit; returns its exit code.
    pub async fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal server");
        let child = &mut self.child;
        let exited =
            || std::future::ready(child.try_wait().expect("try_wait").ok_or("still running"));
        let what = format!("the server to exit after {signal}");
        eventually(&what, Duration::from_secs(30), exited)
            .await
            .code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often [`eventually`] checks its condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Checks `check` until it returns `Ok`, and returns that value. `check` runs at least once,
/// then again every few milliseconds; if `within` passes first, the test fails with a message
/// naming `what` was awaited and the state the last check reported.
pub async fn eventually<T, E, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("waited {within:?} for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Bytes as text, for messages and for comparing outputs (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Registers a function through the JSON API: a `shell` one unless `extra` names another
/// `runtime`; the other keys of `extra` are its settings. `code` is the script, or any bytes
/// (an image archive).
pub async fn register(
    client: &Client,
    name: &str,
    code: impl AsRef<[u8]>,
    extra: serde_json::Value,
) -> Answer {
    use base64::Engine;
    let mut body = serde_json::json!({
        "name": name,
        "runtime": "shell",
        "code": base64::engine::general_purpose::STANDARD.encode(code),
    });
    if let serde_json::Value::Object(map) = extra {
        for (k, v) in map {
            body[k] = v;
        }
    }
    client
        .post(
            "/v1/functions",
            "application/json",
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("register request")
}

/// A sync call of `name` with `payload`.
pub async fn invoke(client: &Client, name: &str, payload: &[u8]) -> Answer {
    client
        .post(
            &format!("/v1/functions/{name}/invoke"),
            "application/octet-stream",
            Bytes::copy_from_slice(payload),
        )
        .await
        .expect("invoke request")
}

/// Submits an async call and returns the task id.
pub async fn submit(client: &Client, name: &str, payload: &[u8]) -> String {
    let answer = client
        .post(
            &format!("/v1/functions/{name}/invoke?async=true"),
            "application/octet-stream",
            Bytes::copy_from_slice(payload),
        )
        .await
        .expect("invoke request");
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let v: serde_json::Value = answer.json().expect("json");
    v["task_id"].as_str().expect("task_id").to_string()
}

/// Reads a task's status JSON.
pub async fn status(client: &Client, id: &str) -> serde_json::Value {
    let answer = client
        .get(&format!("/v1/tasks/{id}"))
        .await
        .expect("status");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    answer.json().expect("json")
}

/// Waits (long-polling, bounded) until a task has finished; returns its status JSON.
pub async fn wait_finished(client: &Client, id: &str) -> serde_json::Value {
    let finished = || async {
        let answer = client
            .get(&format!("/v1/tasks/{id}?wait=10s"))
            .await
            .expect("status");
        let v: serde_json::Value = answer.json().expect("json");
        match v["status"].as_str() {
            Some("COMPLETED" | "FAILED") => Ok(v),
            _ => Err(v),
        }
    };
    let what = format!("task {id} to finish");
    eventually(&what, Duration::from_secs(120), finished).await
}

/// Waits (bounded) until a task is running; returns its status JSON.
pub async fn wait_running(client: &Client, id: &str) -> serde_json::Value {
    let running = || async {
        let v = status(client, id).await;
        if v["status"] == "RUNNING" {
            Ok(v)
        } else {
            Err(v)
        }
    };
    let what = format!("task {id} to start");
    eventually(&what, Duration::from_secs(10), running).await
}

/// What an async call left behind.
pub struct Outcome {
    /// Its status JSON.
    pub task: serde_json::Value,
    /// Its result, as text.
    pub result: String,
    /// Its logs (what it wrote to stderr).
    pub logs: String,
}

/// Submits an async call of `name` with `payload`, waits for it to finish, and reads its
/// result and logs.
pub async fn run(client: &Client, name: &str, payload: &[u8]) -> Outcome {
    let id = submit(client, name, payload).await;
    let task = wait_finished(client, &id).await;
    let result = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    let logs = client
        .get(&format!("/v1/tasks/{id}/logs"))
        .await
        .expect("logs");
    Outcome {
        task,
        result: text(&result.body),
        logs: text(&logs.body),
    }
}

/// The JSON body of an error answer, checking its status and code.
pub fn expect_error(answer: &Answer, status: u16, code: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|_| panic!("error body is not JSON: {:?}", answer.body));
    assert_eq!(answer.status.as_u16(), status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    v
}

/// The body of a 503 `no_workers` answer whose message contains `says`.
pub fn expect_no_workers(answer: &Answer, says: &str) -> serde_json::Value {
    let body = expect_error(answer, 503, "no_workers");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
    body
}

/// A running `faasd worker`.
pub struct Worker {
    /// The `faasd worker` process.
    pub child: Child,
    _cache: tempfile::TempDir,
}

impl Worker {
    /// Starts a worker against `server_addr` with the given name, slots and dispatch mode.
    pub fn start(server_addr: &str, name: &str, slots: u32, dispatch: &str) -> Worker {
        Worker::start_with(server_addr, name, slots, dispatch, &[])
    }

    /// [`Worker::start`] with more flags.
    pub fn start_with(
        server_addr: &str,
        name: &str,
        slots: u32,
        dispatch: &str,
        extra: &[&str],
    ) -> Worker {
        let cache = tempfile::tempdir().expect("tempdir");
        let child = Command::new(BIN)
            .args([
                "worker",
                "--server",
                server_addr,
                "--name",
                name,
                "--dispatch",
                dispatch,
            ])
            .args(["--slots", &slots.to_string()])
            .args(extra)
            .arg("--cache")
            .arg(cache.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start faasd worker");
        Worker {
            child,
            _cache: cache,
        }
    }

    /// [`Worker::start`] in push mode with `--sandbox none` (its tasks' processes and files are
    /// the host's, for a test to see).
    pub fn unsandboxed(server_addr: &str, name: &str, slots: u32) -> Worker {
        Worker::start_with(server_addr, name, slots, "push", &["--sandbox", "none"])
    }

    /// The worker's process id.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's list of workers.
pub async fn workers(client: &Client) -> Vec<serde_json::Value> {
    client
        .get("/v1/workers")
        .await
        .expect("workers")
        .json()
        .expect("json")
}

/// Waits (bounded) until the server lists `n` connected workers; returns the list.
pub async fn wait_workers(client: &Client, n: usize) -> Vec<serde_json::Value> {
    let listed = || async {
        let list = workers(client).await;
        if list.len() == n {
            Ok(list)
        } else {
            Err(serde_json::Value::from(list))
        }
    };
    let what = format!("{n} connected workers");
    eventually(&what, Duration::from_secs(20), listed).await
}

/// How many tasks the server holds queued (`GET /healthz`).
pub async fn queued(client: &Client) -> u64 {
    let health: serde_json::Value = client
        .get("/healthz")
        .await
        .expect("healthz")
        .json()
        .expect("json");
    health["queued"].as_u64().expect("queued")
}
