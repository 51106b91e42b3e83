//! Slow and idle clients are cut: half-sent HTTP requests are closed by the header timeout while
//! normal requests keep answering, connections past `--max-connections` are closed with a log
//! line, a worker-port connection announcing a huge frame before its handshake is closed
//! without growing the server's memory, a burst of connections waits in the listen backlog
//! rather than being dropped, a request body that trickles in is answered 408 and its
//! connection closed, and the server raises its open-files soft limit.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{BIN, eventually};

/// The start of a request that never ends: the headers' closing blank line is never sent.
const HALF_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n";

/// A `faasd serve` started with an open-files soft limit of 1,024 (below its hard limit), its
/// log written to a file the test reads.
struct LoggedServer {
    child: Child,
    http: String,
    workers: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedServer {
    fn start(args: &[&str]) -> LoggedServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("serve.log");
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--worker-listen", "127.0.0.1:0"])
            .args(["--local-workers", "1"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        // SAFETY: setrlimit is a single system call, safe between fork and exec.
        unsafe {
            command.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard), hard).map_err(Into::into)
            });
        }
        let mut child = command.spawn().expect("start faasd serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut address = |prefix: &str| loop {
            let line = lines.next().expect("serve exited early").expect("stdout");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        };
        let http = address("faasd listening on http://");
        let workers = address("faasd worker port on ");
        std::thread::spawn(move || for _ in lines {});
        LoggedServer {
            child,
            http,
            workers,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read log")
    }

    /// A line of `/proc/PID/status` or `/proc/PID/limits` starting with `key`.
    fn proc_line(&self, file: &str, key: &str) -> String {
        let path = format!("/proc/{}/{file}", self.child.id());
        let text = std::fs::read_to_string(path).expect("read /proc");
        text.lines()
            .find(|line| line.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {file}"))
            .to_string()
    }

    fn rss_kib(&self) -> u64 {
        let line = self.proc_line("status", "VmRSS:");
        line.split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in kB")
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this test process's open-files soft limit so it can hold `needed` sockets.
fn allow_open_files(needed: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard} (raise `ulimit -Hn`)"
    );
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the test's open-files limit");
    }
}

/// Sends a complete `GET /healthz` on a new connection and returns the answer's status line.
async fn healthz(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Waits, up to `within`, for the peer to close `stream` (EOF or reset); returns whether it did.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether `stream` is still open with nothing to read, without waiting.
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_requests_are_cut_by_the_header_timeout_while_requests_still_answer() {
    const HALF_REQUESTS: usize = 2_000;
    allow_open_files(HALF_REQUESTS as u64 + 500);
    let server = LoggedServer::start(&["--header-timeout", "5s"]);

    let opening = Instant::now();
    let mut half_requests = futures_util::future::join_all((0..HALF_REQUESTS).map(|_| async {
        let mut stream = TcpStream::connect(&server.http).await.expect("connect");
        stream.write_all(HALF_REQUEST).await.expect("send half");
        stream
    }))
    .await;
    let opened_in = opening.elapsed();

    let asked = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), healthz(&server.http))
        .await
        .expect("a normal request answers within 5 s while the half-requests are open")
        .expect("the request completes");
    let latency = asked.elapsed();
    let open = half_requests.iter().filter(|s| still_open(s)).count();
    println!(
        "{HALF_REQUESTS} half-requests opened in {opened_in:?}; GET /healthz answered in {latency:?} with {open} of them open"
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        open, HALF_REQUESTS,
        "every half-request was still open while the request ran"
    );

    let waiting = Instant::now();
    for (i, stream) in half_requests.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(15)).await,
            "half-request {i} was not closed by the header timeout"
        );
    }
    println!("all half-requests closed {:?} later", waiting.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_request_body_is_answered_408_and_its_connection_closed() {
    let server = LoggedServer::start(&["--body-timeout", "2s"]);
    let mut stream = TcpStream::connect(&server.http).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/functions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .expect("send the head");
    // A byte every 200 ms, until the server answers or 20 s pass.
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("too slowly"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "the connection stays open after a body too slow"
    );
    // The grace period is 2 s; the few bytes sent earn milliseconds.
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    assert_eq!(
        healthz(&server.http).await.expect("healthz"),
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_logged() {
    let server = LoggedServer::start(&["--max-connections", "4", "--header-timeout", "60s"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&server.http).await.expect("connect");
        stream.write_all(HALF_REQUEST).await.expect("send half");
        held.push(stream);
    }
    // The server counts a connection once it accepts it: wait until the cap is reached.
    let mut refused = eventually(
        "a connection past the cap to be closed",
        Duration::from_secs(10),
        || async {
            let mut stream = TcpStream::connect(&server.http)
                .await
                .map_err(|e| e.to_string())?;
            if closed_within(&mut stream, Duration::from_millis(500)).await {
                Ok(stream)
            } else {
                Err("a fifth connection stayed open".to_string())
            }
        },
    )
    .await;
    assert!(closed_within(&mut refused, Duration::from_secs(1)).await);
    let log = eventually("the limit's log line", Duration::from_secs(5), || async {
        let log = server.log();
        if log.contains("HTTP connection limit reached") {
            Ok(log)
        } else {
            Err("not logged yet".to_string())
        }
    })
    .await;
    assert!(log.contains("max_connections=4"), "{log}");
    // Closing a held connection frees its place, once the server has seen it close: until
    // then a new connection is still past the cap, closed without an answer.
    drop(held.pop());
    let status = eventually(
        "a request to answer again",
        Duration::from_secs(10),
        || async {
            match healthz(&server.http).await {
                Ok(status) if !status.is_empty() => Ok(status),
                Ok(_) => Err("closed without an answer".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_huge_frame_before_the_handshake_is_refused_without_growing_memory() {
    const CONNECTIONS: usize = 20;
    let server = LoggedServer::start(&[]);
    // Let the server settle (the local worker joins) before the baseline.
    eventually("the server to answer", Duration::from_secs(10), || {
        healthz(&server.http)
    })
    .await;
    let before_kib = server.rss_kib();
    let chunk = vec![0u8; 1 << 20];
    let started = Instant::now();
    for i in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&server.workers).await.expect("connect");
        let announced = (64u32 << 20) - 1;
        stream
            .write_all(&announced.to_be_bytes())
            .await
            .expect("send length");
        // The server may close the connection while the body is still being written.
        let _ = stream.write_all(&chunk).await;
        assert!(
            closed_within(&mut stream, Duration::from_secs(2)).await,
            "connection {i} announcing a 64 MiB frame was not closed promptly"
        );
    }
    let grown_kib = server.rss_kib().saturating_sub(before_kib);
    println!(
        "{CONNECTIONS} connections announcing 64 MiB frames closed in {:?}; RSS grew by {grown_kib} KiB",
        started.elapsed()
    );
    assert!(
        grown_kib < 8 << 10,
        "RSS grew by {grown_kib} KiB from {before_kib} KiB"
    );
    assert!(
        server.log().contains("bad handshake from worker"),
        "{}",
        server.log()
    );
}

/// A large stored result is sent as it is read: readers that never read hold a chunk each in
/// the server, not a copy of the whole result.
#[tokio::test(flavor = "multi_thread")]
async fn readers_that_never_read_a_large_result_do_not_each_hold_a_copy() {
    const READERS: usize = 100;
    const RESULT_BYTES: usize = 4 << 20;
    allow_open_files(READERS as u64 + 64);
    let server = LoggedServer::start(&["--sandbox", "none"]);
    let client = faasd::client::Client::new(&format!("http://{}", server.http)).expect("client");
    let code = format!("head -c {RESULT_BYTES} /dev/zero");
    let answer = common::register(&client, "big", code, serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", common::text(&answer.body));
    let id = common::submit(&client, "big", b"").await;
    assert_eq!(
        common::wait_finished(&client, &id).await["status"],
        "COMPLETED"
    );
    let before_kib = server.rss_kib();

    let request = format!("GET /v1/tasks/{id}/result HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let addr = server.http.parse().expect("address");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("request");
        readers.push(stream);
    }
    // Each answer has started: its first bytes wait in the reader's socket.
    for stream in &mut readers {
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.expect("status line");
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_kib = server.rss_kib().saturating_sub(before_kib);
    println!(
        "{READERS} stalled readers of a {RESULT_BYTES}-byte result: RSS grew by {grown_kib} KiB"
    );
    // A copy each would be 400 MiB.
    assert!(
        grown_kib < 64 << 10,
        "RSS grew by {grown_kib} KiB from {before_kib} KiB"
    );

    // A reader that does read gets the whole result.
    let whole = client
        .get(&format!("/v1/tasks/{id}/result"))
        .await
        .expect("result");
    assert_eq!(whole.body.len(), RESULT_BYTES);
    assert_eq!(
        whole.headers["content-length"],
        RESULT_BYTES.to_string().as_str()
    );
}

#[tokio::test]
async fn a_burst_of_connections_waits_in_the_backlog_while_the_server_is_not_accepting() {
    const BURST: usize = 600;
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number");
    if somaxconn < BURST {
        eprintln!("SKIPPED: net.core.somaxconn is {somaxconn}, under the burst of {BURST}");
        return;
    }
    allow_open_files(BURST as u64 + 100);
    let server = LoggedServer::start(&["--header-timeout", "60s"]);
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    // Frozen, the server accepts nothing: only the kernel's backlog holds the burst.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let burst =
        futures_util::future::join_all((0..BURST).map(|_| TcpStream::connect(&server.http)));
    let connected = tokio::time::timeout(Duration::from_secs(10), burst).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    let connected = connected.expect("every connection of the burst was taken into the backlog");
    assert!(connected.iter().all(Result::is_ok));
    let status = tokio::time::timeout(Duration::from_secs(10), healthz(&server.http))
        .await
        .expect("a request answers once the server runs again")
        .expect("the request completes");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let server = LoggedServer::start(&[]);
    let line = server.proc_line("limits", "Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  <soft>  <hard>  files"
    assert_eq!(fields[3], fields[4], "{line}");
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert_eq!(fields[4], hard.to_string(), "{line}");
    if hard > 1024 {
        assert!(
            server.log().contains("raised the open-files limit"),
            "{}",
            server.log()
        );
    }
}
