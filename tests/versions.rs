//! Versions through the real binary: every registration is listed with its settings, a
//! rollback makes an old version live again, a call can pin a version (`NAME@N`, `?version=N`),
//! an unknown version is 404 `version_not_found`, `rm` removes every version, and a name
//! registered again goes on numbering above the removed versions.

mod common;

use bytes::Bytes;
use common::{Server, expect_error, invoke, register, submit, text, wait_finished};

/// Registers `f` three times: versions 1, 2 and 3 print `v1`, `v2`, `v3`, with a timeout and
/// an environment of their own.
async fn three_versions(server: &Server) {
    let client = server.client();
    for n in 1..=3 {
        let settings = serde_json::json!({"timeout": n * 10, "env": {"N": n.to_string()}});
        let answer = register(&client, "f", &format!("printf v{n}"), settings).await;
        assert_eq!(answer.status, 201, "{}", text(&answer.body));
    }
}

/// The stdout of a successful CLI run.
fn ok(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn versions_lists_every_version_with_its_settings_and_the_live_one() {
    let server = Server::start(&[]);
    three_versions(&server).await;
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&server.cli(&["versions", "f", "--json"]))).expect("JSON");
    let listed = listed.as_array().expect("a list");
    let summary: Vec<(u64, bool, u64, &str)> = listed
        .iter()
        .map(|v| {
            let version = v["version"].as_u64().expect("version");
            let live = v["live"].as_bool().expect("live");
            let timeout = v["timeout_ms"].as_u64().expect("timeout");
            (version, live, timeout, v["env"]["N"].as_str().expect("env"))
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, false, 10_000, "1"),
            (2, false, 20_000, "2"),
            (3, true, 30_000, "3")
        ]
    );
    for v in listed {
        assert_eq!(v["code_bytes"], "printf v1".len(), "{v}");
        assert_eq!(v["code_sha256"].as_str().map(str::len), Some(64), "{v}");
        assert!(v["created_at"].is_string(), "{v}");
    }
    let table = ok(&server.cli(&["versions", "f"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[3].trim_start().starts_with("3  *"), "{table}");
}

#[tokio::test]
async fn a_rollback_makes_the_old_code_and_settings_live_and_numbering_goes_on() {
    let server = Server::start(&[]);
    three_versions(&server).await;
    let client = server.client();
    assert_eq!(
        ok(&server.cli(&["rollback", "f", "--to", "1"])),
        "f is at version 1 again\n"
    );
    let answer = invoke(&client, "f", b"").await;
    assert_eq!(text(&answer.body), "v1");
    let id = submit(&client, "f", b"").await;
    let task = wait_finished(&client, &id).await;
    assert_eq!(task["version"], 1, "{task}");
    let shown: serde_json::Value = client
        .get("/v1/functions/f")
        .await
        .expect("show")
        .json()
        .expect("JSON");
    assert_eq!(
        (shown["version"].as_u64(), shown["timeout_ms"].as_u64()),
        (Some(1), Some(10_000))
    );
    // The next registration is numbered above every version, not above the live one.
    let answer = register(&client, "f", "printf v4", serde_json::json!({})).await;
    let registered: serde_json::Value = answer.json().expect("JSON");
    assert_eq!(registered["version"], 4, "{registered}");
    assert_eq!(text(&invoke(&client, "f", b"").await.body), "v4");
    // An unknown version is refused, by the API and the CLI (exit 4).
    let body = Bytes::from(r#"{"version": 9}"#);
    let answer = client
        .post("/v1/functions/f/rollback", "application/json", body)
        .await
        .expect("rollback");
    expect_error(&answer, 404, "version_not_found");
    let out = server.cli(&["rollback", "f", "--to", "9"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no version 9"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_call_can_pin_a_version_in_the_cli_and_over_http() {
    let server = Server::start(&[]);
    three_versions(&server).await;
    let client = server.client();
    assert_eq!(ok(&server.cli(&["invoke", "f@2"])), "v2");
    assert_eq!(ok(&server.cli(&["invoke", "f"])), "v3");
    let answer = client
        .post(
            "/v1/functions/f/invoke?version=1",
            "application/octet-stream",
            Bytes::new(),
        )
        .await
        .expect("invoke");
    assert_eq!(text(&answer.body), "v1");
    let answer = client
        .post("/function/f?version=2", "text/plain", Bytes::new())
        .await
        .expect("call");
    assert_eq!(text(&answer.body), "v2");
    let answer = client
        .post(
            "/v1/functions/f/batch?version=1",
            "application/json",
            Bytes::from(r#"["a","b"]"#),
        )
        .await
        .expect("batch");
    assert_eq!(answer.status, 202, "{}", text(&answer.body));
    let ids: serde_json::Value = answer.json().expect("JSON");
    for id in ids["task_ids"].as_array().expect("ids") {
        let id = id.as_str().expect("id");
        let task = wait_finished(&client, id).await;
        assert_eq!(task["version"], 1, "{task}");
        let result = client
            .get(&format!("/v1/tasks/{id}/result"))
            .await
            .expect("result");
        assert_eq!(text(&result.body), "v1");
    }
    // The pinned version runs with its own settings: version 1's environment.
    let answer = register(
        &client,
        "env",
        "printf $N",
        serde_json::json!({"env": {"N": "one"}}),
    )
    .await;
    assert_eq!(answer.status, 201);
    register(
        &client,
        "env",
        "printf $N",
        serde_json::json!({"env": {"N": "two"}}),
    )
    .await;
    assert_eq!(ok(&server.cli(&["invoke", "env@1"])), "one");
    // Unknown versions.
    let answer = client
        .post(
            "/v1/functions/f/invoke?version=7",
            "application/octet-stream",
            Bytes::new(),
        )
        .await
        .expect("invoke");
    expect_error(&answer, 404, "version_not_found");
    let out = server.cli(&["invoke", "f@7"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "f@x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[tokio::test]
async fn rm_removes_every_version_and_a_new_registration_numbers_above_them() {
    let server = Server::start(&[]);
    three_versions(&server).await;
    let client = server.client();
    ok(&server.cli(&["rm", "f"]));
    let out = server.cli(&["versions", "f"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let answer = client
        .get("/v1/functions/f/versions")
        .await
        .expect("versions");
    expect_error(&answer, 404, "function_not_found");
    let answer = register(&client, "f", "printf again", serde_json::json!({})).await;
    let registered: serde_json::Value = answer.json().expect("JSON");
    assert_eq!(registered["version"], 4, "{registered}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&server.cli(&["versions", "f", "--json"]))).expect("JSON");
    let versions: Vec<u64> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v["version"].as_u64().expect("version"))
        .collect();
    assert_eq!(versions, [4]);
    // The removed versions cannot be pinned or rolled back to.
    let out = server.cli(&["invoke", "f@2"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let out = server.cli(&["rollback", "f", "--to", "3"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
}

#[tokio::test]
async fn numbering_after_rm_and_a_rollback_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start_on(&data, &[]);
    three_versions(&server).await;
    ok(&server.cli(&["rm", "f"]));
    drop(server);
    let server = Server::start_on(&data, &[]);
    let client = server.client();
    for (script, expected) in [("printf again", 4), ("printf newer", 5)] {
        let answer = register(&client, "f", script, serde_json::json!({})).await;
        let registered: serde_json::Value = answer.json().expect("JSON");
        assert_eq!(registered["version"], expected, "{registered}");
    }
    ok(&server.cli(&["rollback", "f", "--to", "4"]));
    drop(server);
    let server = Server::start_on(&data, &[]);
    assert_eq!(ok(&server.cli(&["invoke", "f"])), "again");
}
