//! Who may do what: every route of the API against every kind of caller, protected mode, the
//! CLI's user commands and exit codes, tokens never at rest, and the MPCS API with
//! `--anonymous`.

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use bytes::Bytes;
use common::{Server, register, submit, text};
use faasd::client::{Answer, Client};
use hyper::Method;

/// The kinds of caller, in the order of [`Row::expect`]'s columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// An admin.
    Admin,
    /// A developer that owns the function the route acts on.
    Owner,
    /// A developer that does not own it.
    OtherDev,
    /// An invoker granted the function.
    Granted,
    /// An invoker without a grant.
    Ungranted,
    /// No token, on a server without `--anonymous`.
    NoToken,
    /// A token-shaped string no user holds.
    WrongToken,
    /// No token, on a server started with `--anonymous developer`.
    AnonymousDev,
}

const WHO: [Who; 8] = [
    Who::Admin,
    Who::Owner,
    Who::OtherDev,
    Who::Granted,
    Who::Ungranted,
    Who::NoToken,
    Who::WrongToken,
    Who::AnonymousDev,
];

/// One route and the status each kind of caller gets, in [`WHO`] order.
struct Row {
    method: &'static str,
    path: &'static str,
    expect: [u16; 8],
}

const fn row(method: &'static str, path: &'static str, expect: [u16; 8]) -> Row {
    Row {
        method,
        path,
        expect,
    }
}

/// The expected answers. Columns: admin, owner, other developer, granted invoker, ungranted
/// invoker, no token, wrong token, anonymous developer.
const TABLE: &[Row] = &[
    row(
        "POST",
        "/v1/functions",
        [201, 201, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "GET",
        "/v1/functions",
        [200, 200, 200, 200, 200, 401, 401, 200],
    ),
    // Uploading code is for those who may register functions. The blob exists (the code of
    // `f`): `HEAD` finds it, and `PUT` answers 200 without reading the body, only for those who
    // may use it by digest (an admin, `f`'s owner); another developer is told it is missing
    // and sends the body, which proves it has the code (201).
    row(
        "HEAD",
        "/v1/blobs/{digest}",
        [200, 200, 404, 403, 403, 401, 401, 404],
    ),
    row(
        "PUT",
        "/v1/blobs/{digest}",
        [200, 200, 201, 403, 403, 401, 401, 201],
    ),
    row(
        "GET",
        "/v1/functions/{name}",
        [200, 200, 403, 200, 403, 401, 401, 403],
    ),
    row(
        "DELETE",
        "/v1/functions/{name}",
        [200, 200, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "GET",
        "/v1/functions/{name}/versions",
        [200, 200, 403, 200, 403, 401, 401, 403],
    ),
    row(
        "GET",
        "/v1/functions/{name}/versions/{version}/code",
        [200, 200, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "POST",
        "/v1/functions/{name}/rollback",
        [200, 200, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "POST",
        "/v1/functions/{name}/invoke",
        [202, 202, 403, 202, 403, 401, 401, 403],
    ),
    row(
        "POST",
        "/v1/functions/{name}/batch",
        [202, 202, 403, 202, 403, 401, 401, 403],
    ),
    // An invoker cancels its own queued tasks of a function it may invoke; its owner and
    // admins everyone's.
    row(
        "POST",
        "/v1/functions/{name}/cancel",
        [200, 200, 403, 200, 403, 401, 401, 403],
    ),
    row(
        "ANY",
        "/function/{name}",
        [200, 200, 403, 200, 403, 401, 401, 403],
    ),
    row(
        "ANY",
        "/function/{name}/",
        [200, 200, 403, 200, 403, 401, 401, 403],
    ),
    // `f` is no HTTP service: those who may call it learn that its sub-paths are not routes.
    row(
        "ANY",
        "/function/{name}/{*path}",
        [404, 404, 403, 404, 403, 401, 401, 403],
    ),
    row("GET", "/v1/tasks", [200, 200, 200, 200, 200, 401, 401, 200]),
    row(
        "POST",
        "/v1/tasks/wait",
        [200, 200, 200, 200, 200, 401, 401, 200],
    ),
    row(
        "GET",
        "/v1/tasks/{id}",
        [200, 200, 404, 200, 404, 401, 401, 404],
    ),
    row(
        "GET",
        "/v1/tasks/{id}/result",
        [200, 200, 404, 200, 404, 401, 401, 404],
    ),
    row(
        "GET",
        "/v1/tasks/{id}/logs",
        [200, 200, 404, 200, 404, 401, 401, 404],
    ),
    row(
        "GET",
        "/v1/tasks/{id}/payload",
        [200, 200, 404, 200, 404, 401, 401, 404],
    ),
    row(
        "POST",
        "/v1/tasks/{id}/replay",
        [202, 202, 404, 202, 404, 401, 401, 404],
    ),
    // The task has finished: whoever may cancel it learns so (409 `task_finished`); whoever
    // may not read it learns nothing (404).
    row(
        "POST",
        "/v1/tasks/{id}/cancel",
        [409, 409, 404, 409, 404, 401, 401, 404],
    ),
    row(
        "GET",
        "/v1/workers",
        [200, 200, 200, 403, 403, 401, 401, 200],
    ),
    row(
        "GET",
        "/v1/events",
        [200, 200, 200, 200, 200, 401, 401, 200],
    ),
    row(
        "POST",
        "/v1/users",
        [201, 403, 403, 403, 403, 401, 401, 403],
    ),
    row("GET", "/v1/users", [200, 403, 403, 403, 403, 401, 401, 403]),
    row(
        "GET",
        "/v1/users/{name}",
        [200, 403, 403, 200, 403, 401, 401, 403],
    ),
    row(
        "DELETE",
        "/v1/users/{name}",
        [204, 403, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "POST",
        "/v1/users/{name}/token",
        [200, 403, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "PUT",
        "/v1/users/{name}/grants/{function}",
        [204, 204, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "DELETE",
        "/v1/users/{name}/grants/{function}",
        [204, 204, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "GET",
        "/v1/whoami",
        [200, 200, 200, 200, 200, 401, 401, 200],
    ),
    row("GET", "/v1/usage", [200, 200, 200, 200, 200, 401, 401, 200]),
    row(
        "POST",
        "/register_function",
        [200, 200, 200, 403, 403, 401, 401, 200],
    ),
    row(
        "POST",
        "/execute_function",
        [200, 200, 403, 403, 403, 401, 401, 403],
    ),
    row(
        "GET",
        "/status/{id}",
        [200, 200, 404, 200, 404, 401, 401, 404],
    ),
    row(
        "GET",
        "/result/{id}",
        [200, 200, 404, 200, 404, 401, 401, 404],
    ),
    row("GET", "/healthz", [200, 200, 200, 200, 200, 200, 200, 200]),
    row("GET", "/metrics", [200, 200, 200, 403, 403, 401, 401, 200]),
    row("GET", "/", [200, 200, 200, 200, 200, 200, 200, 200]),
    row(
        "GET",
        "/assets/app.js",
        [200, 200, 200, 200, 200, 200, 200, 200],
    ),
    row(
        "GET",
        "/assets/app.css",
        [200, 200, 200, 200, 200, 200, 200, 200],
    ),
];

/// A token of the right shape that no user holds.
fn wrong_token() -> String {
    format!("fdt_1_{}", "A".repeat(43))
}

/// A small protocol-4 pickle of `None`: enough for the MPCS routes, which check the framing.
fn pickle_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(b"\x80\x04N.")
}

fn json(value: serde_json::Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// A server with users of every role, a function `f` owned by `dev` and granted to `inv`,
/// and a finished task of `inv` on it.
struct Fixture {
    /// Kept alive for the clients.
    _server: Server,
    admin: Client,
    owner: Client,
    other_dev: Client,
    granted: Client,
    ungranted: Client,
    anonymous: Client,
    wrong: Client,
    /// A finished task `inv` made.
    task: String,
    /// An MPCS function `dev` registered.
    mpcs_function: String,
}

impl Fixture {
    async fn start(args: &[&str]) -> Fixture {
        let server = Server::start(args);
        let local = server.client();
        let root = add_user(&local, "root", "admin").await;
        let admin = server.client().with_token(&root).expect("token");
        let with = |token: &str| server.client().with_token(token).expect("token");
        let owner = with(&add_user(&admin, "dev", "developer").await);
        let other_dev = with(&add_user(&admin, "dev2", "developer").await);
        let granted = with(&add_user(&admin, "inv", "invoker").await);
        let ungranted = with(&add_user(&admin, "inv2", "invoker").await);
        add_user(&admin, "grantee", "invoker").await;
        let registered = register(&owner, "f", "cat", serde_json::json!({})).await;
        assert_eq!(registered.status, 201, "{}", text(&registered.body));
        send(
            &owner,
            Method::PUT,
            "/v1/users/inv/grants/f",
            Bytes::new(),
            204,
        )
        .await;
        let task = submit(&granted, "f", b"hi").await;
        let finished = granted
            .get(&format!("/v1/tasks/{task}?wait=60s"))
            .await
            .expect("status");
        let finished: serde_json::Value = finished.json().expect("json");
        assert_eq!(finished["status"], "COMPLETED", "{finished}");
        let body = json(serde_json::json!({"name": "m", "payload": pickle_base64()}));
        let answer = send(&owner, Method::POST, "/register_function", body, 200).await;
        let mpcs: serde_json::Value = answer.json().expect("json");
        let mpcs_function = mpcs["function_id"].as_str().expect("id").to_string();
        Fixture {
            anonymous: server.client(),
            wrong: with(&wrong_token()),
            _server: server,
            admin,
            owner,
            other_dev,
            granted,
            ungranted,
            task,
            mpcs_function,
        }
    }

    fn client(&self, who: Who) -> &Client {
        match who {
            Who::Admin => &self.admin,
            Who::Owner => &self.owner,
            Who::OtherDev => &self.other_dev,
            Who::Granted => &self.granted,
            Who::Ungranted => &self.ungranted,
            Who::NoToken | Who::AnonymousDev => &self.anonymous,
            Who::WrongToken => &self.wrong,
        }
    }

    /// The request `who` sends for the route `method path`, after whatever set-up the route
    /// needs of its own (a function or a user to remove, so removals do not disturb other
    /// cells).
    async fn request(&self, method: &str, path: &str, who: Who) -> (Method, String, Bytes) {
        let tag = format!("{who:?}").to_lowercase();
        let task = &self.task;
        let code = base64::engine::general_purpose::STANDARD.encode("cat");
        let register = json(serde_json::json!({"name": "f", "code": code}));
        let (path, body) = match (method, path) {
            ("POST", "/v1/functions") => (path.to_string(), register),
            (_, "/v1/blobs/{digest}") => {
                use sha2::Digest;
                let digest = faasd::proto::hex(&sha2::Sha256::digest(b"cat"));
                let path = path.replace("{digest}", &format!("sha256:{digest}"));
                (path, Bytes::from_static(b"cat"))
            }
            ("DELETE", "/v1/functions/{name}") => {
                let name = format!("gone-{tag}");
                let answer = register_fn(&self.owner, &name).await;
                assert_eq!(answer.status, 201, "{}", text(&answer.body));
                (format!("/v1/functions/{name}"), Bytes::new())
            }
            ("POST", "/v1/functions/{name}/invoke") => {
                ("/v1/functions/f/invoke?async=true".into(), Bytes::new())
            }
            ("POST", "/v1/functions/{name}/cancel") => {
                ("/v1/functions/f/cancel".into(), Bytes::new())
            }
            ("POST", "/v1/functions/{name}/batch") => {
                ("/v1/functions/f/batch".into(), Bytes::from(r#"["a"]"#))
            }
            (_, "/v1/functions/{name}" | "/function/{name}" | "/function/{name}/")
            | ("GET", "/v1/functions/{name}/versions") => {
                (path.replace("{name}", "f"), Bytes::new())
            }
            ("GET", "/v1/functions/{name}/versions/{version}/code") => {
                ("/v1/functions/f/versions/1/code".into(), Bytes::new())
            }
            ("POST", "/v1/functions/{name}/rollback") => (
                "/v1/functions/f/rollback".into(),
                json(serde_json::json!({"version": 1})),
            ),
            ("POST", "/v1/tasks/wait") => (path.into(), json(serde_json::json!({"ids": [task]}))),
            (_, "/v1/tasks/{id}" | "/v1/tasks/{id}/result" | "/v1/tasks/{id}/logs")
            | (_, "/v1/tasks/{id}/payload" | "/v1/tasks/{id}/replay")
            | (_, "/v1/tasks/{id}/cancel")
            | (_, "/status/{id}" | "/result/{id}") => (path.replace("{id}", task), Bytes::new()),
            ("POST", "/v1/users") => (
                path.into(),
                json(serde_json::json!({"name": format!("new-{tag}"), "role": "invoker"})),
            ),
            ("GET", "/v1/users/{name}") => ("/v1/users/inv".into(), Bytes::new()),
            ("DELETE", "/v1/users/{name}") | ("POST", "/v1/users/{name}/token") => {
                let name = format!("{}-{tag}", if method == "POST" { "rot" } else { "gone" });
                add_user(&self.admin, &name, "invoker").await;
                (path.replace("{name}", &name), Bytes::new())
            }
            (_, "/function/{name}/{*path}") => ("/function/f/sub/path".into(), Bytes::new()),
            (_, "/v1/users/{name}/grants/{function}") => {
                ("/v1/users/grantee/grants/f".into(), Bytes::new())
            }
            ("POST", "/register_function") => (
                path.into(),
                json(serde_json::json!({"name": "m", "payload": pickle_base64()})),
            ),
            ("POST", "/execute_function") => (
                path.into(),
                json(serde_json::json!({"function_id": self.mpcs_function, "payload": "x"})),
            ),
            _ => (path.to_string(), Bytes::new()),
        };
        let method = match method {
            "ANY" => Method::POST,
            other => other.parse().expect("a method"),
        };
        (method, path, body)
    }
}

async fn register_fn(client: &Client, name: &str) -> Answer {
    register(client, name, "cat", serde_json::json!({})).await
}

/// Sends a request and checks its status.
async fn send(client: &Client, method: Method, path: &str, body: Bytes, status: u16) -> Answer {
    let content_type = (!body.is_empty()).then_some("application/json");
    let answer = client
        .request(method.clone(), path, content_type, body)
        .await
        .expect("request");
    assert_eq!(
        answer.status.as_u16(),
        status,
        "{method} {path}: {}",
        text(&answer.body)
    );
    answer
}

/// Adds a user and returns its token.
async fn add_user(client: &Client, name: &str, role: &str) -> String {
    let body = json(serde_json::json!({"name": name, "role": role}));
    let answer = send(client, Method::POST, "/v1/users", body, 201).await;
    let user: serde_json::Value = answer.json().expect("json");
    assert_eq!(user["name"], name);
    assert_eq!(user["role"], role);
    user["token"].as_str().expect("token").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_kind_of_caller_as_the_table_says() {
    let routes: BTreeSet<(&str, &str)> = faasd::api::route_table().into_iter().collect();
    let covered: BTreeSet<(&str, &str)> = TABLE.iter().map(|r| (r.method, r.path)).collect();
    let missing: Vec<_> = routes.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "routes without an entry in the access table: {missing:?}"
    );
    let unknown: Vec<_> = covered.difference(&routes).collect();
    assert!(
        unknown.is_empty(),
        "entries for routes the API does not have: {unknown:?}"
    );

    let plain = Fixture::start(&[]).await;
    let anonymous = Fixture::start(&["--anonymous", "developer"]).await;
    let mut wrong = Vec::new();
    for row in TABLE
        .iter()
        .filter(|r| routes.contains(&(r.method, r.path)))
    {
        for (who, expected) in WHO.iter().zip(row.expect) {
            let fixture = if *who == Who::AnonymousDev {
                &anonymous
            } else {
                &plain
            };
            let (method, path, body) = fixture.request(row.method, row.path, *who).await;
            if row.path == "/v1/events" {
                // A stream that does not end: its status is the answer.
                let got = match fixture.client(*who).events(&path).await {
                    Ok(_) => (200, None),
                    Err(faasd::client::Error::Answered { status, code, .. }) => {
                        (status.as_u16(), code.map(|c| format!("{c:?}")))
                    }
                    Err(e) => panic!("GET /v1/events as {who:?}: {e}"),
                };
                if got.0 != expected {
                    wrong.push(format!(
                        "GET /v1/events as {who:?}: {got:?} (expected {expected})"
                    ));
                }
                continue;
            }
            let content_type = (!body.is_empty()).then_some("application/json");
            let answer = fixture
                .client(*who)
                .request(method.clone(), &path, content_type, body)
                .await
                .expect("request");
            if answer.status.as_u16() != expected {
                wrong.push(format!(
                    "{} {} as {who:?}: {} (expected {expected}): {}",
                    row.method,
                    row.path,
                    answer.status.as_u16(),
                    text(&answer.body)
                ));
            }
            let code = answer.error_code().map(|c| format!("{c:?}"));
            if method == Method::HEAD {
                // A HEAD answer has no body to carry an error code.
                continue;
            }
            match expected {
                401 => assert_eq!(code.as_deref(), Some("Unauthenticated"), "{method} {path}"),
                403 => assert_eq!(code.as_deref(), Some("Forbidden"), "{method} {path}"),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_mode_serves_loopback_as_admin_until_a_user_exists() {
    let server = Server::start(&[]);
    let local = server.client();
    let me = send(&local, Method::GET, "/v1/whoami", Bytes::new(), 200).await;
    let me: serde_json::Value = me.json().expect("json");
    assert_eq!(
        me,
        serde_json::json!({"name": "local", "role": "admin", "mode": "protected"})
    );
    let registered = register_fn(&local, "f").await;
    assert_eq!(registered.status, 201, "{}", text(&registered.body));

    let token = add_user(&local, "ann", "admin").await;
    let refused = send(&local, Method::GET, "/v1/functions", Bytes::new(), 401).await;
    assert_eq!(
        refused.error_code().map(|c| format!("{c:?}")).as_deref(),
        Some("Unauthenticated")
    );
    let ann = server.client().with_token(&token).expect("token");
    let me = send(&ann, Method::GET, "/v1/whoami", Bytes::new(), 200).await;
    let me: serde_json::Value = me.json().expect("json");
    assert_eq!(
        me,
        serde_json::json!({"name": "ann", "role": "admin", "mode": "tokens"})
    );
    // The health check stays open to load balancers.
    send(&local, Method::GET, "/healthz", Bytes::new(), 200).await;

    // Removing the last user brings protected mode back.
    send(&ann, Method::DELETE, "/v1/users/ann", Bytes::new(), 204).await;
    send(&ann, Method::GET, "/v1/whoami", Bytes::new(), 200).await;
    let me = send(&local, Method::GET, "/v1/whoami", Bytes::new(), 200).await;
    let me: serde_json::Value = me.json().expect("json");
    assert_eq!(me["mode"], "protected");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_only_admin_cannot_be_removed_while_other_users_remain() {
    let server = Server::start(&[]);
    let local = server.client();
    let root = add_user(&local, "root", "admin").await;
    let root = server.client().with_token(&root).expect("token");
    add_user(&root, "dev", "developer").await;

    // Removing the only admin would leave a developer nobody can manage: refused, and the admin
    // keeps working.
    let refused = send(&root, Method::DELETE, "/v1/users/root", Bytes::new(), 409).await;
    assert_eq!(
        refused.error_code().map(|c| format!("{c:?}")).as_deref(),
        Some("LastAdmin")
    );
    assert!(
        text(&refused.body).contains("only admin"),
        "{}",
        text(&refused.body)
    );
    send(&root, Method::GET, "/v1/users", Bytes::new(), 200).await;

    // With a second admin, the first may go; the second still manages the rest.
    let second = add_user(&root, "second", "admin").await;
    let second = server.client().with_token(&second).expect("token");
    send(&second, Method::DELETE, "/v1/users/root", Bytes::new(), 204).await;
    send(
        &second,
        Method::DELETE,
        "/v1/users/second",
        Bytes::new(),
        409,
    )
    .await;
    send(&second, Method::DELETE, "/v1/users/dev", Bytes::new(), 204).await;
    // Alone, the last admin may remove itself: the server returns to protected mode.
    send(
        &second,
        Method::DELETE,
        "/v1/users/second",
        Bytes::new(),
        204,
    )
    .await;
    let me = send(&local, Method::GET, "/v1/whoami", Bytes::new(), 200).await;
    let me: serde_json::Value = me.json().expect("json");
    assert_eq!(me["mode"], "protected");
    let users = send(&local, Method::GET, "/v1/users", Bytes::new(), 200).await;
    assert_eq!(
        users.json::<serde_json::Value>().expect("json"),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_seen_only_by_their_caller_the_owner_and_admins() {
    let fixture = Fixture::start(&[]).await;
    // The other developer's call of its own function is not the first developer's to read.
    let other = &fixture.other_dev;
    assert_eq!(register_fn(other, "g").await.status, 201);
    let id = submit(other, "g", b"x").await;
    let path = format!("/v1/tasks/{id}");
    send(&fixture.owner, Method::GET, &path, Bytes::new(), 404).await;
    send(other, Method::GET, &path, Bytes::new(), 200).await;
    send(&fixture.admin, Method::GET, &path, Bytes::new(), 200).await;
    // A wait on it from someone else reports it as unknown.
    let body = json(serde_json::json!({"ids": [id]}));
    let answer = send(&fixture.owner, Method::POST, "/v1/tasks/wait", body, 200).await;
    let answer: serde_json::Value = answer.json().expect("json");
    assert_eq!(answer["unknown"], serde_json::json!([id]), "{answer}");
    // Lists show what the caller owns or is granted.
    let names = |answer: Answer| -> Vec<String> {
        let list: Vec<serde_json::Value> = answer.json().expect("json");
        list.iter()
            .map(|f| f["name"].as_str().expect("name").to_string())
            .filter(|n| n.len() < 10)
            .collect()
    };
    let listed = send(
        &fixture.granted,
        Method::GET,
        "/v1/functions",
        Bytes::new(),
        200,
    )
    .await;
    assert_eq!(names(listed), ["f"]);
    let listed = send(
        &fixture.admin,
        Method::GET,
        "/v1/functions",
        Bytes::new(),
        200,
    )
    .await;
    assert_eq!(names(listed), ["f", "g"]);
    // A revoked grant stops calls at once.
    send(
        &fixture.owner,
        Method::DELETE,
        "/v1/users/inv/grants/f",
        Bytes::new(),
        204,
    )
    .await;
    let path = "/v1/functions/f/invoke?async=true";
    send(&fixture.granted, Method::POST, path, Bytes::new(), 403).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_is_stored_in_the_data_directory() {
    let server = Server::start(&[]);
    let local = server.client();
    let mut tokens = vec![add_user(&local, "root", "admin").await];
    let admin = server.client().with_token(&tokens[0]).expect("token");
    for (name, role) in [("a", "developer"), ("b", "invoker")] {
        tokens.push(add_user(&admin, name, role).await);
    }
    for name in ["a", "b", "a"] {
        let path = format!("/v1/users/{name}/token");
        let answer = send(&admin, Method::POST, &path, Bytes::new(), 200).await;
        let body: serde_json::Value = answer.json().expect("json");
        tokens.push(body["token"].as_str().expect("token").to_string());
    }
    let rotated = server.client().with_token(&tokens[1]).expect("token");
    send(&rotated, Method::GET, "/v1/whoami", Bytes::new(), 401).await;
    // Every file of the data directory, read whole, holds neither a token nor its secret.
    let mut files = vec![server.data.clone()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                files.push(entry.expect("entry").path());
            }
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        read += 1;
        for token in &tokens {
            let secret = &token[token.len() - 43..];
            for needle in [token.as_bytes(), secret.as_bytes()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds a token",
                    path.display()
                );
            }
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret)
                .expect("secret bytes");
            assert!(
                !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
                "{} holds a token's secret bytes",
                path.display()
            );
        }
    }
    assert!(read > 0, "no file was read");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_tokens_alone_and_exits_6_when_refused() {
    let server = Server::start(&[]);
    let out = server.cli(&["user", "add", "root", "--role", "admin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout.strip_suffix('\n').expect("one line");
    assert!(
        !token.contains('\n') && token.starts_with("fdt_"),
        "{stdout:?}"
    );

    // Without the token, and with a wrong one: unauthenticated.
    for args in [
        vec!["user", "ls"],
        vec!["user", "ls", "--token", "fdt_1_nope"],
    ] {
        let out = server.cli(&args);
        assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("unauthenticated:"),
            "{}",
            text(&out.stderr)
        );
    }

    let as_root = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token", token]);
        server.cli(&all)
    };
    let out = as_root(&["user", "add", "ivy", "--role", "invoker"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ivy = text(&out.stdout).trim().to_string();
    // A right the caller lacks: forbidden.
    let out = server.cli(&["user", "ls", "--token", &ivy]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("forbidden:"),
        "{}",
        text(&out.stderr)
    );

    let admin = server.client().with_token(token).expect("token");
    assert_eq!(register_fn(&admin, "f").await.status, 201);
    let out = as_root(&["grant", "ivy", "f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = as_root(&["user", "ls"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.starts_with("NAME"), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("ivy ") && l.contains("invoker") && l.ends_with(" f")),
        "{listing}"
    );
    let out = as_root(&["user", "ls", "--json"]);
    let users: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(users.len(), 2);
    let out = server.cli(&["invoke", "f", "hi", "--token", &ivy]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hi");
    let out = as_root(&["revoke", "ivy", "f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = server.cli(&["invoke", "f", "hi", "--token", &ivy]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));

    let out = as_root(&["user", "token", "ivy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let new = text(&out.stdout);
    assert!(
        new.starts_with("fdt_") && new.lines().count() == 1,
        "{new:?}"
    );
    let out = server.cli(&["user", "ls", "--token", &ivy]);
    assert!(
        text(&out.stderr).contains("unauthenticated:"),
        "{}",
        text(&out.stderr)
    );
    let out = as_root(&["user", "rm", "ivy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = server.cli(&["user", "ls", "--token", new.trim()]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn mpcs_clients_without_a_header_work_with_anonymous_developer() {
    let server = Server::start(&["--anonymous", "developer"]);
    let local = server.client();
    let token = add_user(&local, "root", "admin").await;
    // Users exist: the tokenless client is the anonymous developer now.
    let me = send(&local, Method::GET, "/v1/whoami", Bytes::new(), 200).await;
    let me: serde_json::Value = me.json().expect("json");
    assert_eq!(
        me,
        serde_json::json!({"name": "anonymous", "role": "developer", "mode": "tokens"})
    );
    let body = json(serde_json::json!({"name": "m", "payload": pickle_base64()}));
    let answer = send(&local, Method::POST, "/register_function", body, 200).await;
    let function: serde_json::Value = answer.json().expect("json");
    let body = json(serde_json::json!({"function_id": function["function_id"], "payload": "x"}));
    let answer = send(&local, Method::POST, "/execute_function", body, 200).await;
    let task: serde_json::Value = answer.json().expect("json");
    let id = task["task_id"].as_str().expect("task id");
    send(
        &local,
        Method::GET,
        &format!("/status/{id}"),
        Bytes::new(),
        200,
    )
    .await;
    send(
        &local,
        Method::GET,
        &format!("/result/{id}"),
        Bytes::new(),
        200,
    )
    .await;
    // A wrong token is still refused, and an admin's task is not the anonymous caller's.
    let wrong = server.client().with_token(&wrong_token()).expect("token");
    send(
        &wrong,
        Method::GET,
        &format!("/status/{id}"),
        Bytes::new(),
        401,
    )
    .await;
    let admin = server.client().with_token(&token).expect("token");
    assert_eq!(register_fn(&admin, "f").await.status, 201);
    let admins = submit(&admin, "f", b"x").await;
    send(
        &local,
        Method::GET,
        &format!("/status/{admins}"),
        Bytes::new(),
        404,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_user_is_an_admin_and_anonymous_invokers_hold_grants() {
    let server = Server::start(&["--anonymous", "invoker"]);
    let local = server.client();
    // In protected mode the first user must be an admin: no one else could manage users.
    let body = json(serde_json::json!({"name": "bob", "role": "developer"}));
    let refused = send(&local, Method::POST, "/v1/users", body, 400).await;
    let refused: serde_json::Value = refused.json().expect("json");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|m| m.contains("the first user must be an admin")),
        "{refused}"
    );
    let token = add_user(&local, "root", "admin").await;
    let admin = server.client().with_token(&token).expect("token");
    assert_eq!(register_fn(&admin, "f").await.status, 201);

    // A tokenless caller is the anonymous invoker: refused until `anonymous` is granted.
    let anonymous = server.client();
    let invoke = |status| {
        send(
            &anonymous,
            Method::POST,
            "/v1/functions/f/invoke",
            Bytes::new(),
            status,
        )
    };
    let grant = |method| {
        send(
            &admin,
            method,
            "/v1/users/anonymous/grants/f",
            Bytes::new(),
            204,
        )
    };
    let refused: serde_json::Value = invoke(403).await.json().expect("json");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|m| m.contains("faasd grant anonymous f")),
        "{refused}"
    );
    grant(Method::PUT).await;
    invoke(200).await;
    grant(Method::DELETE).await;
    invoke(403).await;
}
