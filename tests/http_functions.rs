//! HTTP-service functions (`--http-port`): an `exec` function running `python3 -m http.server`
//! serves a file through `/function/NAME/file` and through `serve --domain`'s `Host:` route; a
//! small Python server shows what passes through (method, path, query, headers with
//! `X-Forwarded-*`, a large body streamed, a chunked event stream arriving as it is written);
//! an unknown host name is a 404; a remote worker serves the same; and the service has no
//! host network.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, Worker, eventually, register, text, wait_workers};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// The port the services listen on inside their sandboxes.
const PORT: u16 = 8080;

/// An `exec` bundle that writes `file.txt` in its working directory and serves that directory
/// with `python3 -m http.server`.
const FILE_SERVER: &str = "#!/bin/sh
echo 'hello from the service' > file.txt
exec python3 -m http.server 8080 --bind 127.0.0.1
";

/// An `exec` bundle running a small threaded Python server: POST echoes what it got (method,
/// path, headers, the body's length and SHA-256), `/peer` says the port the request came from
/// (its connection), `/hang` answers only after a minute, `/events` sends one event, waits for
/// `/release`, then sends the last one, and `/probe?port=N` says whether it can reach the
/// loopback port N.
const ECHO_SERVER: &str = r#"#!/bin/sh
cat > server.py <<'EOF'
import hashlib, json, socket, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

released = threading.Event()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        digest, left = hashlib.sha256(), n
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "length": n - left,
            "sha256": digest.hexdigest(),
        }
        self.reply(json.dumps(seen).encode())

    def do_GET(self):
        if self.path == "/hang":
            threading.Event().wait(60)
            return self.reply(b"late", "text/plain")
        if self.path == "/peer":
            return self.reply(str(self.client_address[1]).encode(), "text/plain")
        if self.path == "/release":
            released.set()
            return self.reply(b"released", "text/plain")
        if self.path.startswith("/probe"):
            port = int(self.path.split("=")[1])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                answer = b"connected"
            except OSError:
                answer = b"refused"
            return self.reply(answer, "text/plain")
        if self.path.split("?")[0] == "/events":
            # `?after=S`: the last event comes S seconds after the first if not released sooner.
            after = float(self.path.split("after=")[1]) if "after=" in self.path else 60
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            def chunk(data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            chunk(b"data: first\n\n")
            released.wait(after)
            chunk(b"data: last\n\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.reply(b"unknown path", "text/plain")

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
exec python3 server.py 8080
"#;

/// `GET path` on the server at `url`, without a `Host` of a function.
async fn get(url: &str, path: &str) -> hyper::Response<Incoming> {
    request(url, "GET", path, None, Bytes::new()).await
}

/// A request to the server at `url`: `path` with `host` as the `Host` header (the server's
/// address when `None`).
async fn request(
    url: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    body: Bytes,
) -> hyper::Response<Incoming> {
    let addr = url.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host.unwrap_or(addr))
        .header("content-length", body.len().to_string())
        .body(Full::new(body))
        .expect("request");
    sender.send_request(request).await.expect("response")
}

/// The whole body of `response`, as text.
async fn body_text(response: hyper::Response<Incoming>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    text(&bytes)
}

/// Registers an `exec` HTTP service listening on [`PORT`].
async fn register_service(server: &Server, name: &str, script: &str) {
    let settings = serde_json::json!({"runtime": "exec", "http_port": PORT, "timeout": "20s"});
    let answer = register(&server.client(), name, script, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let shown = server
        .client()
        .get(&format!("/v1/functions/{name}"))
        .await
        .expect("show");
    let shown: serde_json::Value = shown.json().expect("json");
    assert_eq!(shown["http_port"], PORT, "{shown}");
    assert_eq!(shown["http_concurrency"], 100, "{shown}");
    assert_eq!(shown["record_requests"], false, "{shown}");
}

/// A remote worker of `server` with two slots and the strict sandbox, once it has joined.
async fn strict_worker(server: &Server, name: &str) -> Worker {
    let worker = Worker::start_with(
        &server.worker_addr,
        name,
        2,
        "push",
        &["--sandbox", "strict"],
    );
    wait_workers(&server.client(), 1).await;
    worker
}

fn sandboxed(extra: &[&str]) -> Server {
    let mut args = vec!["--sandbox", "strict", "--domain", "example.com"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_is_served_through_the_path_and_the_host_routes() {
    let server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "files", FILE_SERVER).await;

    let by_path = get(&server.url, "/function/files/file.txt").await;
    assert_eq!(by_path.status(), 200);
    // The path route shares the dashboard's origin: its pages run in an opaque origin.
    let policy = by_path.headers().get("content-security-policy");
    assert!(
        policy.is_some_and(|p| p.to_str().unwrap_or_default().starts_with("sandbox ")),
        "{policy:?}"
    );
    // The service's own `Server` stays (faasd's answers carry `Server: faasd`).
    let server_header = by_path
        .headers()
        .get("server")
        .map(|v| v.to_str().unwrap_or_default());
    assert!(
        server_header.is_some_and(|s| s.starts_with("SimpleHTTP")),
        "{server_header:?}"
    );
    assert_eq!(body_text(by_path).await, "hello from the service\n");

    let host = Some("files.Example.com:443");
    let by_host = request(&server.url, "GET", "/file.txt", host, Bytes::new()).await;
    assert_eq!(by_host.status(), 200);
    assert!(by_host.headers().get("content-security-policy").is_none());
    assert_eq!(body_text(by_host).await, "hello from the service\n");

    // The directory listing at the service's root, through both routes.
    let root = get(&server.url, "/function/files/").await;
    assert_eq!(root.status(), 200);
    assert!(body_text(root).await.contains("file.txt"));
    let root = request(&server.url, "GET", "/", host, Bytes::new()).await;
    assert!(body_text(root).await.contains("file.txt"));

    // An unknown name under the domain is a 404 that says so; the bare domain is the API.
    // The same at the host's root, which the path route would take for a plain function.
    let unknown = Some("nosuch.example.com");
    for path in ["/x", "/"] {
        let missing = request(&server.url, "GET", path, unknown, Bytes::new()).await;
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value =
            serde_json::from_str(&body_text(missing).await).expect("json");
        assert_eq!(body["code"], "not_found", "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("no function \"nosuch\" serves this host name"),
            "{path}: {body}"
        );
    }
    let api = request(
        &server.url,
        "GET",
        "/healthz",
        Some("example.com"),
        Bytes::new(),
    )
    .await;
    assert_eq!(api.status(), 200);
    requests_are_counted_not_stored(&server).await;
}

/// Requests are no tasks: the task routes refuse the function and none is stored; they are
/// counted in the metrics by status class, and in usage.
async fn requests_are_counted_not_stored(server: &Server) {
    let client = server.client();
    let refused = common::invoke(&client, "files", b"").await;
    assert_eq!(refused.status, 400, "{}", text(&refused.body));
    assert!(text(&refused.body).contains("is an HTTP service"));
    let tasks = client.get("/v1/tasks").await.expect("tasks");
    let tasks: serde_json::Value = tasks.json().expect("json");
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "{tasks}");
    let metrics = text(&client.get("/metrics").await.expect("metrics").body);
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("faasd_function_http_requests_total{")
                && l.contains("\"files\"")
                && l.contains("2xx")
        })
        .unwrap_or_else(|| panic!("no request count in:\n{metrics}"));
    let count: f64 = counted
        .rsplit(' ')
        .next()
        .expect("value")
        .parse()
        .expect("number");
    assert!(count >= 4.0, "{counted}");
    let usage = || async {
        let usage = client.get("/v1/usage?by=function").await.expect("usage");
        let usage: serde_json::Value = usage.json().expect("json");
        let calls = usage["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["function"] == "files"))
            .and_then(|r| r["calls"].as_u64());
        // Every request is in usage soon, the last ones too (no later request flushes them).
        match calls {
            Some(calls) if calls as f64 >= count => Ok(()),
            _ => Err(usage),
        }
    };
    eventually("every request in usage", Duration::from_secs(10), usage).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn method_path_query_headers_and_a_large_body_pass_through() {
    let server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "echo", ECHO_SERVER).await;
    let large: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    let expected = {
        use sha2::Digest;
        faasd::proto::hex(&sha2::Sha256::digest(&large))
    };
    let path = "/function/echo/upload/a?x=1&y=two";
    let answer = request(&server.url, "POST", path, None, Bytes::from(large)).await;
    assert_eq!(answer.status(), 200);
    let seen: serde_json::Value = serde_json::from_str(&body_text(answer).await).expect("json");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/upload/a?x=1&y=two");
    assert_eq!(seen["length"], 8u64 << 20);
    assert_eq!(seen["sha256"], expected);
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
    assert_eq!(headers["x-forwarded-prefix"], "/function/echo", "{headers}");
    let addr = server.url.trim_start_matches("http://");
    assert_eq!(headers["x-forwarded-host"], addr, "{headers}");

    // Through the host route: no prefix, and the host named.
    let host = Some("echo.example.com");
    let answer = request(&server.url, "POST", "/b", host, Bytes::from_static(b"hi")).await;
    let seen: serde_json::Value = serde_json::from_str(&body_text(answer).await).expect("json");
    assert_eq!(seen["path"], "/b");
    assert_eq!(seen["length"], 2);
    assert_eq!(seen["headers"]["x-forwarded-host"], "echo.example.com");
    assert!(seen["headers"].get("x-forwarded-prefix").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_event_stream_arrives_as_it_is_written() {
    let server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "events", ECHO_SERVER).await;
    let response = get(&server.url, "/function/events/events").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut got = first_event(&mut body).await;
    // The service holds its last event until released: the first arrived on its own.
    assert!(!got.contains("data: last"), "{got}");
    let released = get(&server.url, "/function/events/release").await;
    assert_eq!(body_text(released).await, "released");
    let rest = body.collect().await.expect("the rest").to_bytes();
    got.push_str(&text(&rest));
    assert!(got.ends_with("data: last\n\n"), "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_has_no_host_network() {
    let server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "probe", ECHO_SERVER).await;
    // faasd's own port is open on the host's loopback; the service's loopback is its own.
    let port = server.url.rsplit(':').next().expect("port");
    let path = format!("/function/probe/probe?port={port}");
    let answer = get(&server.url, &path).await;
    assert_eq!(body_text(answer).await, "refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_worker_serves_it_and_a_plain_function_keeps_its_route() {
    let server = sandboxed(&["--local-workers", "0"]);
    let _worker = strict_worker(&server, "remote").await;
    register_service(&server, "files", FILE_SERVER).await;
    let served = || async {
        let answer = get(&server.url, "/function/files/file.txt").await;
        let status = answer.status();
        let body = body_text(answer).await;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    };
    let body = eventually(
        "the file from the remote worker",
        Duration::from_secs(30),
        served,
    )
    .await;
    assert_eq!(body, "hello from the service\n");
    let host = Some("files.example.com");
    let by_host = request(&server.url, "GET", "/file.txt", host, Bytes::new()).await;
    assert_eq!(body_text(by_host).await, "hello from the service\n");

    // A function that is not an HTTP service keeps `/function/{name}` as stdin to stdout.
    let answer = register(&server.client(), "cat", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201);
    let echoed = request(
        &server.url,
        "POST",
        "/function/cat",
        None,
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(body_text(echoed).await, "x");
    let sub = get(&server.url, "/function/cat/sub").await;
    assert_eq!(sub.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_http_settings_are_refused_with_the_field_named() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let cases = [
        (
            serde_json::json!({"http_port": 8080}),
            "shell function cannot be an HTTP service",
        ),
        (
            serde_json::json!({"runtime": "exec", "http_port": 0}),
            "between 1 and 65535",
        ),
        (
            serde_json::json!({"runtime": "exec", "http_concurrency": 5}),
            "need http_port",
        ),
        (
            serde_json::json!({"runtime": "exec", "http_port": 80, "http_concurrency": 0}),
            "http_concurrency must be between 1",
        ),
        (
            serde_json::json!({"runtime": "exec", "http_port": 80, "concurrency": 2}),
            "concurrency does nothing for an HTTP-service function",
        ),
        (
            serde_json::json!({"runtime": "exec", "http_port": 80, "min_warm": 2}),
            "min_warm does nothing for an HTTP-service function",
        ),
    ];
    // The CLI's flags.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("serve.sh");
    std::fs::write(&script, FILE_SERVER).expect("write the script");
    let script = script.to_str().expect("utf-8 path");
    let args = [
        "register",
        "cli",
        script,
        "--runtime",
        "exec",
        "--http-port",
        "8081",
        "--http-concurrency",
        "7",
        "--record-requests",
        "--json",
    ];
    let out = server.cli(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            &shown["http_port"],
            &shown["http_concurrency"],
            &shown["record_requests"]
        ),
        (&8081.into(), &7.into(), &true.into()),
        "{shown}"
    );
    let out = server.cli(&[
        "register",
        "cli0",
        script,
        "--runtime",
        "exec",
        "--http-port",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    for (settings, message) in cases {
        let answer = register(&client, "bad", "#!/bin/sh\n", settings.clone()).await;
        assert_eq!(answer.status, 400, "{settings}");
        let body = text(&answer.body);
        assert!(body.contains(message), "{settings}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_that_asks_has_its_requests_stored_as_tasks() {
    let server = sandboxed(&["--local-workers", "1"]);
    let settings = serde_json::json!({
        "runtime": "exec", "http_port": PORT, "record_requests": true, "http_concurrency": 4,
    });
    let client = server.client();
    let answer = register(&client, "kept", FILE_SERVER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let path = "/function/kept/file.txt?secret=1";
    let served = get(&server.url, path).await;
    assert_eq!(body_text(served).await, "hello from the service\n");
    let stored = || async {
        let tasks = client.get("/v1/tasks?function=kept").await.expect("tasks");
        let tasks: serde_json::Value = tasks.json().expect("json");
        match tasks["tasks"].as_array().map(Vec::as_slice) {
            Some([task]) => Ok(task.clone()),
            _ => Err(tasks),
        }
    };
    let task = eventually("the request as a task", Duration::from_secs(10), stored).await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    let id = task["id"].as_str().expect("id");
    let full: serde_json::Value = client
        .get(&format!("/v1/tasks/{id}"))
        .await
        .expect("task")
        .json()
        .expect("json");
    let message = full["message"].as_str().unwrap_or_default();
    assert_eq!(message, "HTTP GET /file.txt: 200", "{full}");
}

/// The function's warm executors as its listing shows them (from the workers' heartbeats).
async fn executors(server: &Server, name: &str) -> u64 {
    let shown = server
        .client()
        .get(&format!("/v1/functions/{name}"))
        .await
        .expect("show");
    let shown: serde_json::Value = shown.json().expect("json");
    shown["warm_executors"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn executors_grow_with_concurrent_requests_and_stop_when_idle() {
    let server = sandboxed(&["--local-workers", "1"]);
    let settings = serde_json::json!({
        "runtime": "exec", "http_port": PORT, "http_concurrency": 1, "idle_timeout": "1s",
    });
    let answer = register(&server.client(), "grow", ECHO_SERVER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    // The event stream holds the first executor's one slot ...
    let held = get(&server.url, "/function/grow/events").await;
    assert_eq!(held.status(), 200);
    // ... so the next request starts a second executor, which answers it.
    let path = "/function/grow/other";
    let second = get(&server.url, path).await;
    assert_eq!(body_text(second).await, "unknown path");
    let two = || async {
        match executors(&server, "grow").await {
            2 => Ok(()),
            n => Err(n),
        }
    };
    eventually("two executors", Duration::from_secs(10), two).await;
    // The client leaves: the stream ends, and both executors stop once idle.
    drop(held);
    let none = || async {
        match executors(&server, "grow").await {
            0 => Ok(()),
            n => Err(n),
        }
    };
    eventually("the idle executors to stop", Duration::from_secs(20), none).await;
}

/// A `python` bundle that is a program: it listens on the port itself.
const PYTHON_SERVER: &str = r#"
import sys
from http.server import HTTPServer, BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("python says " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

if __name__ == "__main__":
    HTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_python_bundle_runs_as_a_program_that_listens() {
    let server = sandboxed(&["--local-workers", "1"]);
    let settings = serde_json::json!({"runtime": "python", "http_port": PORT});
    let answer = register(&server.client(), "py", PYTHON_SERVER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = get(&server.url, "/function/py/hello").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(body_text(answer).await, "python says /hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_one_after_another_reuse_the_kept_alive_connection() {
    let server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "peer", ECHO_SERVER).await;
    let mut ports = Vec::new();
    for _ in 0..3 {
        let response = get(&server.url, "/function/peer/peer").await;
        assert_eq!(response.status(), 200);
        ports.push(body_text(response).await);
    }
    assert!(
        ports.windows(2).all(|w| w[0] == w[1]),
        "each request came on a new connection: {ports:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_path_reaches_the_service_as_the_client_wrote_it() {
    let server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "raw", ECHO_SERVER).await;
    let path = "/function/raw/a%2Fb/%2e%2e/c%20d?q=%3F";
    let response = request(&server.url, "POST", path, None, Bytes::from_static(b"x")).await;
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value =
        serde_json::from_str(&body_text(response).await).expect("the echo is JSON");
    assert_eq!(seen["path"], "/a%2Fb/%2e%2e/c%20d?q=%3F", "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_does_not_answer_within_the_timeout_is_a_504() {
    let server = sandboxed(&["--local-workers", "1"]);
    let settings = serde_json::json!({"runtime": "exec", "http_port": PORT, "timeout": "3s"});
    let answer = register(&server.client(), "slow", ECHO_SERVER, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let response = get(&server.url, "/function/slow/hang").await;
    assert_eq!(response.status(), 504);
    let body: serde_json::Value =
        serde_json::from_str(&body_text(response).await).expect("an error body");
    assert_eq!(body["code"], "service_failed", "{body}");
    // The executor is not held by the abandoned request: the next one is served.
    let response = get(&server.url, "/function/slow/peer").await;
    assert_eq!(response.status(), 200);
}

/// A `python` module that starts no server: it defines a WSGI `app`, which the harness serves.
const WSGI_APP: &str = r#"import os

def app(environ, start_response):
    said = "wsgi says %s %s on %s" % (environ["REQUEST_METHOD"], environ["PATH_INFO"], os.environ["PORT"])
    body = said.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_python_module_defining_a_wsgi_app_is_served() {
    let server = sandboxed(&["--local-workers", "1"]);
    let settings = serde_json::json!({"runtime": "python", "http_port": PORT});
    let answer = register(&server.client(), "wsgi", WSGI_APP, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = get(&server.url, "/function/wsgi/hi").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        body_text(answer).await,
        format!("wsgi says GET /hi on {PORT}")
    );
}

/// Reads `body` until it holds `data: first`; returns what it read.
async fn first_event(body: &mut Incoming) -> String {
    let mut got = String::new();
    while !got.contains("data: first") {
        let frame = body.frame().await.expect("a frame").expect("body");
        if let Ok(data) = frame.into_data() {
            got.push_str(&text(&data));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_or_server_lets_proxied_requests_finish() {
    use nix::sys::signal::{Signal, kill};
    // A remote worker told to stop (SIGTERM) drains: the request it serves ends whole.
    let server = sandboxed(&["--local-workers", "0"]);
    let mut worker = strict_worker(&server, "w").await;
    register_service(&server, "events", ECHO_SERVER).await;
    let response = get(&server.url, "/function/events/events?after=1").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = first_event(&mut body).await;
    kill(worker.pid(), Signal::SIGTERM).expect("stop the worker");
    let rest = body.collect().await.expect("the whole body").to_bytes();
    got.push_str(&text(&rest));
    assert!(got.ends_with("data: last\n\n"), "{got}");
    let status = worker.child.wait().expect("worker exit");
    assert_eq!(status.code(), Some(0));

    // So does `serve` on SIGTERM, for a request its local worker serves.
    let mut server = sandboxed(&["--local-workers", "1"]);
    register_service(&server, "events", ECHO_SERVER).await;
    let response = get(&server.url, "/function/events/events?after=1").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = first_event(&mut body).await;
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    kill(pid, Signal::SIGTERM).expect("stop the server");
    let rest = body.collect().await.expect("the whole body").to_bytes();
    got.push_str(&text(&rest));
    assert!(got.ends_with("data: last\n\n"), "{got}");
    let exited = || std::future::ready(server.child.try_wait().expect("try_wait").ok_or("running"));
    let status = eventually("the server to exit", Duration::from_secs(30), exited).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_never_listens_is_a_502_with_its_output() {
    let server = sandboxed(&["--local-workers", "1"]);
    let never = "#!/bin/sh\necho 'starting, but listening nowhere' >&2\nexec sleep 30\n";
    let settings = serde_json::json!({"runtime": "exec", "http_port": PORT, "timeout": "2s"});
    let answer = register(&server.client(), "deaf", never, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let response = get(&server.url, "/function/deaf/").await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value =
        serde_json::from_str(&body_text(response).await).expect("an error body");
    assert_eq!(body["code"], "service_failed", "{body}");
    let message = body["error"].as_str().expect("message");
    assert!(
        message.contains("starting, but listening nowhere"),
        "{message}"
    );
}
