//! The dashboard served by `faasd serve`: the page and its assets are open, typed, cached by
//! tag, carry every id the shared DOM contract names, fetch nothing from another host, never put
//! server strings into HTML, and stay small; and the summary stream it reads opens with the
//! ends of the last five minutes, those before any page was open included. (What a person sees
//! in a browser is checked by the headless-Chromium test.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, eventually, invoke, register, text};
use faasd::client::{Answer, Client, ServerEvent};
use hyper::Method;

/// The ids the page must hold (the shared DOM contract).
const IDS: &[&str] = &[
    "connection",
    "overview",
    "stat-queued",
    "stat-running",
    "stat-slots",
    "stat-rate",
    "stat-p50",
    "stat-p99",
    "chart",
    "chart-totals",
    "functions",
    "workers",
    "tasks",
    "invoke-form",
    "invoke-function",
    "invoke-payload",
    "invoke-submit",
    "invoke-result",
    "invoke-status",
    "invoke-note",
    "token",
];

/// The page and its assets, with the content type each is served as.
const ASSETS: &[(&str, &str)] = &[
    ("/", "text/html"),
    ("/assets/app.js", "text/javascript"),
    ("/assets/app.css", "text/css"),
];

/// A server in token mode (a user exists), so that an open route is seen to need no token.
async fn server_with_a_user() -> (Server, Client) {
    let server = Server::start(&[]);
    let local = server.client();
    let body = Bytes::from(r#"{"name": "root", "role": "admin"}"#);
    let added = local
        .post("/v1/users", "application/json", body)
        .await
        .expect("add user");
    assert_eq!(added.status, 201, "{}", text(&added.body));
    let anonymous = server.client();
    (server, anonymous)
}

async fn get(client: &Client, path: &str) -> Answer {
    client.get(path).await.expect("request")
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_its_assets_are_open_typed_and_cached_by_tag() {
    let (_server, anonymous) = server_with_a_user().await;
    for (path, content_type) in ASSETS {
        let answer = get(&anonymous, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", text(&answer.body));
        let served = header(&answer, "content-type");
        assert!(served.starts_with(content_type), "{path}: {served}");
        assert!(!answer.body.is_empty(), "{path}");
        let etag = header(&answer, "etag").to_string();
        assert!(etag.starts_with('"'), "{path}: etag {etag:?}");
        let again = anonymous
            .request_with(
                Method::GET,
                path,
                None,
                &[("if-none-match", &etag)],
                Bytes::new(),
            )
            .await
            .expect("request");
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty(), "{path}");
    }
    // The data the page shows still needs a token.
    let data = get(&anonymous, "/v1/functions").await;
    assert_eq!(data.status, 401, "{}", text(&data.body));
    // Only the dashboard's own paths are open; any other path needs a token.
    let unknown = get(&anonymous, "/assets/other.js").await;
    assert_eq!(unknown.status, 401, "{}", text(&unknown.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_holds_every_id_of_the_contract_and_every_id_its_script_uses() {
    let (_server, client) = server_with_a_user().await;
    let page = text(&get(&client, "/").await.body);
    for id in IDS {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "the page lacks #{id}"
        );
    }
    assert!(
        page.contains("<canvas id=\"chart\""),
        "the chart is a canvas"
    );
    let script = text(&get(&client, "/assets/app.js").await.body);
    let used: Vec<&str> = script
        .split("$(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once("\")").map(|(id, _)| id))
        .collect();
    assert!(
        used.len() > 10,
        "the script names its elements with $(\"id\")"
    );
    for id in used {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "the script uses #{id}, which the page lacks"
        );
    }
    // The rows and cells the browser test finds, built by the script.
    for needle in [
        "dataset: { function:",
        "dataset: { worker:",
        "dataset: { task:",
        "class: \"cpu\"",
        "class: \"mem\"",
        "class: \"load\"",
        "class: `state ",
        "class: `status ",
        "bytes (binary)",
    ] {
        assert!(script.contains(needle), "the script lacks {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_assets_are_small_offline_and_put_no_server_string_into_html() {
    let (_server, client) = server_with_a_user().await;
    let mut total = 0;
    for (path, _) in ASSETS {
        let body = text(&get(&client, path).await.body);
        total += body.len();
        for scheme in ["http://", "https://", "//cdn", "@import"] {
            assert!(!body.contains(scheme), "{path} names {scheme:?}");
        }
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!body.contains(sink), "{path} uses {sink}");
        }
    }
    eprintln!("dashboard: {total} bytes in all, uncompressed");
    assert!(total < 64 * 1024, "the dashboard is {total} bytes");
}

/// The ends of `function` in the `history` event a new summary stream opens with, summed over
/// its seconds: (completed, failed, run times sent).
async fn history_of(client: &Client, function: &str) -> (u64, u64, usize) {
    let mut stream = client
        .events("/v1/events?tasks=summary")
        .await
        .expect("a summary stream");
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event within 30 s")
        .expect("the stream reads")
        .expect("the stream is open");
    let ServerEvent { event, data } = first;
    assert_eq!(
        event, "history",
        "a summary stream opens with its history: {data}"
    );
    let history: serde_json::Value = serde_json::from_str(&data).expect("one line of JSON");
    assert_eq!(history["span_ms"], 300_000, "{history}");
    let mut sums = (0, 0, 0);
    for second in history["seconds"].as_array().expect("seconds") {
        assert_eq!(
            second["at_ms"].as_u64().expect("at_ms") % 1000,
            0,
            "{second}"
        );
        for f in second["functions"].as_array().expect("functions") {
            if f["name"] == function {
                sums.0 += f["completed"].as_u64().expect("completed");
                sums.1 += f["failed"].as_u64().expect("failed");
                sums.2 += f["run_ms"].as_array().expect("run_ms").len();
            }
        }
    }
    sums
}

/// Opens summary streams until one's history shows `expected` for `function` (a sync call is
/// answered before its end is committed, and the history holds only committed ends).
async fn history_reaches(client: &Client, function: &str, expected: (u64, u64, usize)) {
    let reached = || async {
        match history_of(client, function).await {
            got if got == expected => Ok(()),
            got => Err(format!("{got:?}")),
        }
    };
    let what = format!("a history of {function} with {expected:?} (completed, failed, run times)");
    eventually(&what, Duration::from_secs(10), reached).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_summary_stream_opens_with_the_ends_of_the_last_five_minutes() {
    let server = Server::start(&["--local-workers", "2"]);
    let client = server.client();
    for (name, code) in [("ok", "cat"), ("bad", "echo no >&2; exit 3")] {
        let answer = register(&client, name, code, serde_json::json!({})).await;
        assert_eq!(answer.status, 201, "{}", text(&answer.body));
    }
    // Before any stream is open: the server's first summary stream reads these from the store.
    for i in 0..12 {
        let answer = invoke(&client, "ok", format!("{i}").as_bytes()).await;
        assert_eq!(answer.status, 200, "{}", text(&answer.body));
    }
    for i in 0..5 {
        let answer = invoke(&client, "bad", format!("{i}").as_bytes()).await;
        assert_ne!(answer.status, 200, "{}", text(&answer.body));
    }
    history_reaches(&client, "ok", (12, 0, 12)).await;
    history_reaches(&client, "bad", (0, 5, 5)).await;

    // After it: recorded from the live events, each end once (a second count of an end would
    // never come back down to these figures).
    for i in 0..3 {
        let answer = invoke(&client, "ok", format!("later {i}").as_bytes()).await;
        assert_eq!(answer.status, 200, "{}", text(&answer.body));
    }
    history_reaches(&client, "ok", (15, 0, 15)).await;
    assert_eq!(history_of(&client, "bad").await, (0, 5, 5));
}
