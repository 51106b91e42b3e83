//! Listing tasks (`GET /v1/tasks`, `faasd tasks`) through the real binary: filters, newest
//! first, cursor paging without duplicates or gaps, `since`, limit bounds, what each caller may
//! see; and `faasd logs ID --follow` waiting for a task that ends later.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Server, eventually, expect_error, register, submit, text, wait_finished};
use faasd::client::Client;
use hyper::Method;

async fn register_ok(client: &Client, name: &str, script: &str) {
    let answer = register(client, name, script, serde_json::json!({})).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}

/// `GET path` answered 200; its JSON.
async fn get_ok(client: &Client, path: &str) -> serde_json::Value {
    let answer = client.get(path).await.expect("request");
    assert_eq!(answer.status, 200, "{path}: {}", text(&answer.body));
    answer.json().expect("json")
}

/// The ids of a page, in its order.
fn ids(page: &serde_json::Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every task `query` lists, page by page of `limit`; also how many pages it took.
async fn all_pages(client: &Client, query: &str, limit: usize) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..=100 {
        let after = cursor.map_or_else(String::new, |c| format!("&cursor={c}"));
        let page = get_ok(client, &format!("/v1/tasks?limit={limit}{query}{after}")).await;
        let got = ids(&page);
        assert!(got.len() <= limit, "{page}");
        out.extend(got);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (out, pages),
        }
    }
    panic!("more than 100 pages for {query}");
}

/// Submits `n` calls of `name` and waits for each to end; returns their ids, oldest first.
async fn run_many(client: &Client, name: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(submit(client, name, format!("{i}").as_bytes()).await);
    }
    for id in &ids {
        wait_finished(client, id).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_listed_newest_first_filtered_and_paged_without_gaps() {
    let server = Server::start(&["--local-workers", "2"]);
    let client = server.client();
    register_ok(&client, "ok", "cat").await;
    register_ok(&client, "bad", "exit 3").await;
    let ok = run_many(&client, "ok", 7).await;
    let bad = run_many(&client, "bad", 4).await;
    let mut newest_first: Vec<String> = ok.iter().chain(&bad).cloned().collect();
    newest_first.reverse();

    let all = get_ok(&client, "/v1/tasks").await;
    assert_eq!(ids(&all), newest_first);
    assert!(all["next_cursor"].is_null(), "{all}");
    assert_eq!(all["tasks"][0]["status"], "FAILED");
    assert_eq!(all["tasks"][0]["function"], "bad");

    let only_ok = get_ok(&client, "/v1/tasks?function=ok").await;
    assert_eq!(ids(&only_ok), ok.iter().rev().cloned().collect::<Vec<_>>());
    let failed = get_ok(&client, "/v1/tasks?status=FAILED").await;
    assert_eq!(ids(&failed), bad.iter().rev().cloned().collect::<Vec<_>>());
    let completed = get_ok(&client, "/v1/tasks?status=completed&function=ok").await;
    assert_eq!(ids(&completed).len(), 7);
    let none = get_ok(&client, "/v1/tasks?status=FAILED&function=ok").await;
    assert!(ids(&none).is_empty(), "{none}");
    let empty_params = get_ok(&client, "/v1/tasks?function=&status=&since=&cursor=").await;
    assert_eq!(ids(&empty_params), newest_first);

    // Pages of 3: 11 tasks in 4 pages, together the whole list in order, none twice.
    let (paged, pages) = all_pages(&client, "", 3).await;
    assert_eq!((paged.clone(), pages), (newest_first.clone(), 4));
    assert_eq!(paged.iter().collect::<HashSet<_>>().len(), 11);
    let (paged_ok, _) = all_pages(&client, "&function=ok", 2).await;
    assert_eq!(paged_ok, ok.iter().rev().cloned().collect::<Vec<_>>());

    // Every task here is at least as old as the time it took to run the others.
    let recent = get_ok(&client, "/v1/tasks?since=1ms").await;
    assert!(ids(&recent).is_empty(), "{recent}");
    for since in ["10", "10s", "2m", "1h", "500000ms"] {
        let page = get_ok(&client, &format!("/v1/tasks?since={since}")).await;
        assert_eq!(ids(&page), newest_first, "since={since}");
    }
    let limited = get_ok(&client, "/v1/tasks?limit=1000").await;
    assert_eq!(ids(&limited).len(), 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_parameters_are_refused_naming_the_field() {
    let server = Server::start(&["--local-workers", "1"]);
    let client = server.client();
    let cases = [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("since=yesterday", "since"),
        ("since=-5s", "since"),
        ("status=DONE", "status"),
        ("cursor=not-a-cursor", "cursor"),
    ];
    for (query, field) in cases {
        let answer = client
            .get(&format!("/v1/tasks?{query}"))
            .await
            .expect("request");
        let error = expect_error(&answer, 400, "invalid_request");
        assert_eq!(error["field"], field, "{query}: {error}");
        let message = error["error"].as_str().expect("message");
        assert!(message.contains(field), "{query}: {message}");
    }
    for limit in ["5000", "0"] {
        let usage = server.cli(&["tasks", "--limit", limit]);
        assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
        assert!(
            text(&usage.stderr).contains("limit"),
            "{}",
            text(&usage.stderr)
        );
    }
    let usage = server.cli(&["tasks", "--status", "done"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_an_aligned_table_or_json_and_follows_cursors_up_to_its_limit() {
    let server = Server::start(&["--local-workers", "2"]);
    let client = server.client();
    register_ok(&client, "echo", "cat").await;
    register_ok(&client, "fail", "exit 1").await;
    let echo = run_many(&client, "echo", 5).await;
    let fail = run_many(&client, "fail", 1).await;

    let out = server.cli(&["tasks", "--function", "echo", "--limit", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "FUNCTION", "STATUS", "CREATED", "DURATION"]);
    for (line, id) in lines[1..].iter().zip(echo.iter().rev()) {
        assert!(line.starts_with(id.as_str()), "{line}");
        // Aligned: every column starts where its header does.
        let status_at = lines[0].find("STATUS").expect("STATUS");
        assert_eq!(&line[status_at..status_at + 9], "COMPLETED", "{stdout}");
        assert!(line.trim_end().ends_with("ms"), "{line}");
    }
    assert!(
        text(&out.stderr).contains("--cursor"),
        "{}",
        text(&out.stderr)
    );

    let out = server.cli(&["tasks", "--status", "FAILED", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ids(&page), fail);
    assert!(page["next_cursor"].is_null(), "{page}");

    // The CLI reads pages until it has its limit, and hands on the cursor to go on from.
    let out = server.cli(&["tasks", "--limit", "4", "--json"]);
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cursor = first["next_cursor"].as_str().expect("a next cursor");
    let out = server.cli(&["tasks", "--json", "--cursor", cursor]);
    let rest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut together = ids(&first);
    together.extend(ids(&rest));
    let mut expected: Vec<String> = echo.iter().chain(&fail).cloned().collect();
    expected.reverse();
    assert_eq!(together, expected);
}

/// Adds a user and returns a client with its token.
async fn user(server: &Server, admin: &Client, name: &str, role: &str) -> (Client, String) {
    let body = serde_json::json!({"name": name, "role": role}).to_string();
    let answer = admin
        .request(
            Method::POST,
            "/v1/users",
            Some("application/json"),
            body.into(),
        )
        .await
        .expect("add user");
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let v: serde_json::Value = answer.json().expect("json");
    let token = v["token"].as_str().expect("token").to_owned();
    (server.client().with_token(&token).expect("token"), token)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_caller_lists_only_the_tasks_it_may_read() {
    let server = Server::start(&["--local-workers", "2"]);
    let (admin, _) = user(&server, &server.client(), "root", "admin").await;
    let (dev, dev_token) = user(&server, &admin, "dev", "developer").await;
    let (dev2, _) = user(&server, &admin, "dev2", "developer").await;
    let (inv, _) = user(&server, &admin, "inv", "invoker").await;
    register_ok(&dev, "mine", "cat").await;
    register_ok(&dev2, "theirs", "cat").await;
    let grant = dev
        .request(
            Method::PUT,
            "/v1/users/inv/grants/mine",
            None,
            bytes::Bytes::new(),
        )
        .await
        .expect("grant");
    assert_eq!(grant.status, 204, "{}", text(&grant.body));
    let by_dev = run_many(&dev, "mine", 2).await;
    let by_dev2 = run_many(&dev2, "theirs", 3).await;
    let by_inv = run_many(&inv, "mine", 1).await;

    let listed = |client: Client| async move {
        let (ids, _) = all_pages(&client, "", 2).await;
        ids.into_iter().collect::<HashSet<String>>()
    };
    let set = |ids: &[&Vec<String>]| ids.iter().flat_map(|v| v.iter().cloned()).collect();
    assert_eq!(listed(admin).await, set(&[&by_dev, &by_dev2, &by_inv]));
    // A developer sees its own calls and the calls of the functions it owns.
    assert_eq!(listed(dev).await, set(&[&by_dev, &by_inv]));
    assert_eq!(listed(dev2).await, set(&[&by_dev2]));
    assert_eq!(listed(inv.clone()).await, set(&[&by_inv]));
    let theirs = get_ok(&inv, "/v1/tasks?function=theirs").await;
    assert!(ids(&theirs).is_empty(), "{theirs}");

    let out = server.cli(&["tasks", "--json", "--token", &dev_token]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let seen: HashSet<String> = ids(&page).into_iter().collect();
    assert_eq!(seen, set(&[&by_dev, &by_inv]));
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_waits_for_a_running_task_and_prints_its_logs() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let client = server.client();
    // Runs until the file named by its payload exists, then logs a line.
    let script =
        "gate=$(cat); while [ ! -e \"$gate\" ]; do sleep 0.02; done; echo \"gate opened\" >&2";
    register_ok(&client, "gated", script).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("open");
    let id = submit(&client, "gated", gate.to_str().expect("utf-8").as_bytes()).await;
    common::wait_running(&client, &id).await;

    let early = server.cli(&["logs", &id]);
    assert_eq!(early.status.code(), Some(5), "{}", text(&early.stderr));
    let message = text(&early.stderr);
    assert!(
        message.contains(&format!("faasd logs {id} --follow")),
        "{message}"
    );

    let follower = Command::new(BIN)
        .args(["logs", &id, "--follow"])
        .env("FAASD_URL", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start faasd logs --follow");
    // A follower that did not wait would exit 5 within moments, the task still running: it
    // must still be there a second later (this pause only gives a wrong follower time to fail;
    // a right one passes whatever the timing).
    let mut follower = follower;
    let spawned = std::time::Instant::now();
    let waited_a_second = || {
        let exited = follower.try_wait().expect("try_wait");
        std::future::ready(match exited {
            Some(status) => panic!("the follower exited while the task ran: {status}"),
            None if spawned.elapsed() >= Duration::from_secs(1) => Ok(()),
            None => Err("under a second"),
        })
    };
    eventually(
        "the follower to wait a second",
        Duration::from_secs(5),
        waited_a_second,
    )
    .await;
    assert_eq!(common::status(&client, &id).await["status"], "RUNNING");
    std::fs::write(&gate, b"").expect("open the gate");
    let out = follower.wait_with_output().expect("follower output");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "gate opened\n");
}
