//! The dashboard served by `faasd serve`: the page and its assets are open, typed, cached by
//! tag, carry every id the shared DOM contract names, fetch nothing from another host, never put
//! server strings into HTML, and stay small. (What a person sees in a browser is checked by the
//! headless-Chromium test.)

mod common;

use bytes::Bytes;
use common::{Server, text};
use faasd::client::{Answer, Client};
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
    "functions",
    "workers",
    "tasks",
    "invoke-form",
    "invoke-function",
    "invoke-payload",
    "invoke-submit",
    "invoke-result",
    "invoke-status",
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
