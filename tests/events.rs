//! The live event stream `GET /v1/events` and `faasd watch`: a task's state changes, a
//! registration, a remote worker joining, reporting its health and leaving, the `?function=`
//! filter, a caller who may not read a task not seeing it, and a consumer that does not read
//! being dropped while every task still completes.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use common::{Server, Worker, eventually, register, submit, text};
use faasd::client::{Client, EventStream, ServerEvent};

/// How long a test waits for the next event before it fails.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// The next event of `stream` as (type, JSON), failing the test if none comes in time.
async fn next(stream: &mut EventStream) -> (String, serde_json::Value) {
    let event = tokio::time::timeout(EVENT_WAIT, stream.next())
        .await
        .expect("an event within the wait")
        .expect("the stream reads")
        .expect("the stream is open");
    let ServerEvent { event, data } = event;
    let json = serde_json::from_str(&data).expect("one line of JSON");
    (event, json)
}

/// Reads events until `stop` holds for one; returns every event read, that one last.
async fn until(
    stream: &mut EventStream,
    stop: impl Fn(&str, &serde_json::Value) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut seen = Vec::new();
    loop {
        let (kind, data) = next(stream).await;
        let done = stop(&kind, &data);
        seen.push((kind, data));
        if done {
            return seen;
        }
    }
}

/// The statuses of the task `id` among `events`, in order.
fn statuses(events: &[(String, serde_json::Value)], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(kind, data)| kind == "task" && data["id"] == id)
        .map(|(_, data)| data["status"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn completed(id: &str) -> impl Fn(&str, &serde_json::Value) -> bool + '_ {
    move |kind, data| kind == "task" && data["id"] == id && data["status"] == "COMPLETED"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_sees_a_registration_and_a_task_go_queued_running_completed() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let mut stream = client.events("/v1/events").await.expect("stream");

    let registered = register(&client, "f", "cat", serde_json::json!({})).await;
    assert_eq!(registered.status, 201, "{}", text(&registered.body));
    let (kind, data) = until(&mut stream, |kind, _| kind == "function")
        .await
        .pop()
        .expect("an event");
    assert_eq!(kind, "function");
    assert_eq!(
        data,
        serde_json::json!({"kind": "registered", "name": "f", "version": 1})
    );

    let id = submit(&client, "f", b"hi").await;
    let events = until(&mut stream, completed(&id)).await;
    assert_eq!(statuses(&events, &id), ["QUEUED", "RUNNING", "COMPLETED"]);
    let (_, end) = events.last().expect("the end");
    assert_eq!(end["function"], "f");
    assert_eq!(end["version"], 1);
    assert!(end["reason"].is_null(), "{end}");
    assert!(end["run_ms"].is_u64(), "{end}");
    assert!(end["finished_ms"].as_u64() >= end["started_ms"].as_u64());
    assert!(end["started_ms"].as_u64() >= end["queued_ms"].as_u64());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_worker_is_seen_joining_reporting_its_health_and_leaving() {
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let mut stream = client.events("/v1/events").await.expect("stream");
    let mut worker = Worker::start(&server.worker_addr, "remote-1", 2, "push");

    let is = |kind: &'static str| {
        move |event: &str, data: &serde_json::Value| {
            event == "worker" && data["kind"] == kind && data["name"] == "remote-1"
        }
    };
    let (_, joined) = until(&mut stream, is("joined"))
        .await
        .pop()
        .expect("joined");
    assert_eq!(joined["slots"], 2);
    assert_eq!(joined["mode"], "push");
    let (_, health) = until(&mut stream, is("health"))
        .await
        .pop()
        .expect("health");
    let cpu = health["cpu_percent"].as_f64().expect("cpu_percent");
    assert!((0.0..=100.0).contains(&cpu), "{health}");
    assert!(health["memory_total_bytes"].as_u64() > Some(0), "{health}");
    assert!(health["load1"].is_f64(), "{health}");

    worker.child.kill().expect("kill the worker");
    worker.child.wait().expect("reap the worker");
    let (_, left) = until(&mut stream, is("left")).await.pop().expect("left");
    assert_eq!(left["id"], joined["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_function_filter_keeps_only_that_functions_events() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    for name in ["f", "g"] {
        let answer = register(&client, name, "cat", serde_json::json!({})).await;
        assert_eq!(answer.status, 201, "{}", text(&answer.body));
    }
    let mut only_g = client
        .events("/v1/events?function=g")
        .await
        .expect("stream");
    let mut all = client.events("/v1/events").await.expect("stream");
    // f's task comes first: a filter that let it through would show it first.
    let of_f = submit(&client, "f", b"1").await;
    let of_g = submit(&client, "g", b"2").await;

    let filtered = until(&mut only_g, completed(&of_g)).await;
    for (kind, data) in &filtered {
        assert_eq!(kind, "task", "{data}");
        assert_eq!(data["function"], "g", "{data}");
    }
    assert_eq!(
        statuses(&filtered, &of_g),
        ["QUEUED", "RUNNING", "COMPLETED"]
    );
    // The unfiltered stream has both.
    let both = until(&mut all, completed(&of_g)).await;
    assert_eq!(
        statuses(&both, &of_f).first().map(String::as_str),
        Some("QUEUED")
    );
}

/// Adds a user through `client` and returns a client holding its token.
async fn user(server: &Server, client: &Client, name: &str, role: &str) -> Client {
    let body = serde_json::json!({"name": name, "role": role}).to_string();
    let answer = client
        .post("/v1/users", "application/json", Bytes::from(body))
        .await
        .expect("add user");
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let user: serde_json::Value = answer.json().expect("json");
    let token = user["token"].as_str().expect("token");
    server.client().with_token(token).expect("token")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_does_not_see_the_tasks_it_may_not_read_nor_the_workers() {
    let server = Server::start(&["--local-workers", "1"]);
    let admin = user(&server, &server.client(), "root", "admin").await;
    let owner = user(&server, &admin, "dev", "developer").await;
    let ann = user(&server, &admin, "ann", "invoker").await;
    let bob = user(&server, &admin, "bob", "invoker").await;
    let answer = register(&owner, "f", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    for name in ["ann", "bob"] {
        let path = format!("/v1/users/{name}/grants/f");
        let granted = owner
            .request(hyper::Method::PUT, &path, None, Bytes::new())
            .await
            .expect("grant");
        assert_eq!(granted.status, 204, "{}", text(&granted.body));
    }
    let mut bobs = bob.events("/v1/events").await.expect("bob's stream");
    let mut owners = owner.events("/v1/events").await.expect("owner's stream");
    // A function bob may not invoke is not his to hear of; a new version of his is.
    for name in ["secret", "f"] {
        let answer = register(&owner, name, "cat", serde_json::json!({})).await;
        assert_eq!(answer.status, 201, "{}", text(&answer.body));
    }

    let of_ann = submit(&ann, "f", b"ann's").await;
    let of_bob = submit(&bob, "f", b"bob's").await;
    let seen_by_bob = until(&mut bobs, completed(&of_bob)).await;
    assert!(
        statuses(&seen_by_bob, &of_ann).is_empty(),
        "{seen_by_bob:?}"
    );
    let functions: Vec<&str> = seen_by_bob
        .iter()
        .filter(|(kind, _)| kind == "function")
        .filter_map(|(_, data)| data["name"].as_str())
        .collect();
    assert_eq!(functions, ["f"], "{seen_by_bob:?}");
    assert_eq!(
        statuses(&seen_by_bob, &of_bob),
        ["QUEUED", "RUNNING", "COMPLETED"]
    );
    assert!(
        seen_by_bob.iter().all(|(kind, _)| kind != "worker"),
        "an invoker sees no worker events: {seen_by_bob:?}"
    );
    // The function's owner reads both tasks.
    let seen_by_owner = until(&mut owners, completed(&of_bob)).await;
    assert_eq!(
        statuses(&seen_by_owner, &of_ann)
            .first()
            .map(String::as_str),
        Some("QUEUED")
    );

    let refused = server.client().events("/v1/events").await;
    assert!(
        matches!(&refused, Err(faasd::client::Error::Answered { status, .. }) if *status == 401),
        "a caller without a token is refused"
    );
}

/// Opens `GET /v1/events` on a raw socket whose receive buffer is as small as the kernel
/// allows, so that a consumer that reads nothing soon stops the server's writes.
async fn raw_stream(url: &str) -> std::net::TcpStream {
    let host = url.trim_start_matches("http://");
    let addr: std::net::SocketAddr = host.parse().expect("an address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let mut stream = stream.into_std().expect("a std socket");
    stream.set_nonblocking(false).expect("blocking");
    let request = format!("GET /v1/events HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_does_not_read_is_dropped_and_the_broker_keeps_its_pace() {
    let server = Server::start(&["--local-workers", "2", "--event-buffer", "64"]);
    let client = server.client();
    let answer = register(&client, "f", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let mut slow = raw_stream(&server.url).await;
    // The server subscribes it before it answers: wait for the answer's first bytes.
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).expect("the answer starts");
    assert_eq!(&head, b"HTTP/1.1 200");

    const TASKS: usize = 1500;
    let payloads: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    let batch = Bytes::from(serde_json::to_vec(&payloads).expect("json"));
    for _ in 0..TASKS / payloads.len() {
        let answer = client
            .post("/v1/functions/f/batch", "application/json", batch.clone())
            .await
            .expect("batch");
        assert_eq!(answer.status, 202, "{}", text(&answer.body));
    }
    // (a) Every task completes while the consumer reads nothing.
    eventually(
        "every task to complete",
        Duration::from_secs(240),
        || async {
            let health: serde_json::Value = client.get("/healthz").await?.json()?;
            let done = health["queued"] == 0 && health["running"] == 0;
            let completed = count_completed(&client).await?;
            if done && completed == TASKS {
                Ok(())
            } else {
                Err(faasd::client::Error::Answered {
                    status: hyper::StatusCode::OK,
                    code: None,
                    message: format!("{completed} completed; {health}"),
                })
            }
        },
    )
    .await;

    // (b) Reading now, it finds the events the buffers held, then `dropped`, then the end.
    let read = tokio::task::spawn_blocking(move || {
        slow.set_read_timeout(Some(EVENT_WAIT)).expect("timeout");
        let mut all = Vec::new();
        slow.read_to_end(&mut all).map(|_| all)
    });
    let all = read
        .await
        .expect("reader")
        .expect("the server closes the stream");
    let all = text(&all);
    let dropped = all.find("event: dropped").expect("a dropped event");
    assert!(all[dropped..].contains("reconnect"), "{}", &all[dropped..]);
    let events = all.matches("event: task").count();
    assert!(
        events < TASKS * 3,
        "it got every event ({events}): nothing lagged"
    );
}

/// How many tasks of `f` completed, counted over the pages of `GET /v1/tasks`.
async fn count_completed(client: &Client) -> Result<usize, faasd::client::Error> {
    let mut count = 0;
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/tasks?function=f&status=COMPLETED&limit=1000&cursor={cursor}");
        let page: serde_json::Value = client.get(&path).await?.ok()?.json()?;
        count += page["tasks"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return Ok(count),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faasd_watch_prints_json_lines_and_exits_3_when_the_server_is_unreachable() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let mut watch = std::process::Command::new(common::BIN)
        .args(["watch", "--json", "--function", "f", "--url", &server.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start faasd watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (lines, printed) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            let json = serde_json::from_str(&line).expect("a JSON line");
            if lines.send(json).is_err() {
                return;
            }
        }
    });
    // It has connected once it prints a registration: register versions until it does.
    let first = eventually(
        "the watcher to connect",
        Duration::from_secs(20),
        || async {
            if let Ok(line) = printed.try_recv() {
                return Ok(line);
            }
            let answer = register(&client, "f", "cat", serde_json::json!({})).await;
            Err(format!(
                "nothing printed yet; registration: {}",
                answer.status
            ))
        },
    )
    .await;
    assert_eq!(first["event"], "function", "{first}");
    assert_eq!(first["data"]["name"], "f", "{first}");

    let id = submit(&client, "f", b"x").await;
    let read = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        while let Ok(json) = printed.recv_timeout(EVENT_WAIT) {
            let end = json["event"] == "task" && json["data"]["status"] == "COMPLETED";
            got.push(json);
            if end {
                break;
            }
        }
        got
    });
    let got = read.await.expect("reader");
    let tasks: Vec<_> = got.iter().filter(|j| j["event"] == "task").collect();
    let statuses: Vec<_> = tasks.iter().map(|j| j["data"]["status"].clone()).collect();
    assert_eq!(statuses, ["QUEUED", "RUNNING", "COMPLETED"], "{got:?}");
    assert!(
        tasks.iter().all(|j| j["data"]["id"] == id.as_str()),
        "{got:?}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let unreachable = std::process::Command::new(common::BIN)
        .args(["watch", "--url", "http://127.0.0.1:9"])
        .output()
        .expect("run faasd watch");
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        text(&unreachable.stderr)
    );
}

/// Reads `tasks` summaries until `completed` tasks of `function` ended; returns them.
async fn summaries_until(
    stream: &mut EventStream,
    function: &str,
    completed: u64,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    let mut ended = 0;
    while ended < completed {
        let (kind, data) = next(stream).await;
        if kind != "tasks" {
            continue;
        }
        let functions = data["functions"].as_array().expect("functions");
        for f in functions.iter().filter(|f| f["name"] == function) {
            ended += f["completed"].as_u64().expect("completed");
        }
        seen.push(data);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_summary_stream_counts_ends_once_a_second_and_shows_levels_only_to_who_may_read_them() {
    let server = Server::start(&["--local-workers", "1"]);
    let admin = user(&server, &server.client(), "root", "admin").await;
    let owner = user(&server, &admin, "dev", "developer").await;
    let ann = user(&server, &admin, "ann", "invoker").await;
    let answer = register(&owner, "f", "cat", serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let path = "/v1/users/ann/grants/f";
    let granted = owner
        .request(hyper::Method::PUT, path, None, Bytes::new())
        .await
        .expect("grant");
    assert_eq!(granted.status, 204, "{}", text(&granted.body));
    let refused = owner.get("/v1/events?tasks=every").await.expect("answer");
    assert_eq!(refused.status, 400, "{}", text(&refused.body));
    assert!(text(&refused.body).contains("each or summary"));

    let mut owners = owner
        .events("/v1/events?tasks=summary")
        .await
        .expect("owner's stream");
    let mut anns = ann
        .events("/v1/events?tasks=summary")
        .await
        .expect("ann's stream");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submit(&ann, "f", format!("{i}").as_bytes()).await);
    }

    let summaries = summaries_until(&mut owners, "f", 20).await;
    for summary in &summaries {
        assert_eq!(summary["window_ms"], 1000, "{summary}");
        let f = &summary["functions"][0];
        assert!(f["queued"].is_u64() && f["running"].is_u64(), "{summary}");
        assert!(f["run_ms"].as_array().expect("run_ms").len() as u64 <= 100);
        assert!(summary["latest"].as_array().expect("latest").len() <= 50);
    }
    assert!(
        summaries.iter().all(|s| s.get("id").is_none()),
        "no per-task events in a summary stream"
    );
    let last_of = |summaries: &[serde_json::Value], id: &str| {
        summaries
            .iter()
            .flat_map(|s| s["latest"].as_array().cloned().unwrap_or_default())
            .rev()
            .find(|t| t["id"] == id)
    };
    let newest = ids.last().expect("an id");
    let last = last_of(&summaries, newest).expect("the newest task is among the latest");
    assert_eq!(last["status"], "COMPLETED", "{last}");

    // The invoker sees its own tasks end, but not the function's levels.
    let anns_summaries = summaries_until(&mut anns, "f", 20).await;
    for summary in &anns_summaries {
        assert!(summary["functions"][0]["queued"].is_null(), "{summary}");
    }
    let last = last_of(&anns_summaries, newest).expect("its newest task");
    assert_eq!(last["status"], "COMPLETED", "{last}");
}
