//! Large code bundles: uploaded apart from their registration (`PUT /v1/blobs/sha256:<hex>`,
//! bounded by `--max-code-size`, not `--max-body`), registered by digest, fetched by remote
//! workers in chunks; the CLI uploads a bundle once however often it is registered.

mod common;

use bytes::Bytes;
use common::{Server, Worker, expect_error, invoke, text, wait_workers};
use faasd::client::Client;
use hyper::Method;
use sha2::{Digest, Sha256};

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", faasd::proto::hex(&Sha256::digest(bytes)))
}

async fn put(client: &Client, digest: &str, body: Bytes) -> faasd::client::Answer {
    client
        .request(Method::PUT, &format!("/v1/blobs/{digest}"), None, body)
        .await
        .expect("PUT")
}

async fn head(client: &Client, digest: &str) -> u16 {
    let path = format!("/v1/blobs/{digest}");
    let answer = client.request(Method::HEAD, &path, None, Bytes::new());
    answer.await.expect("HEAD").status.as_u16()
}

/// The files in the server's blob directory.
fn blob_files(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.data.join("blobs"))
        .expect("blob directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A shell script of about `size` bytes that answers `big <payload>`: it exits before the
/// padding of comments after it.
fn big_script(size: usize) -> Vec<u8> {
    let mut script = b"#!/bin/sh\necho \"big $(cat)\"\nexit 0\n".to_vec();
    let mut line = 0u64;
    while script.len() < size {
        script.extend_from_slice(format!("# padding line {line} {}\n", "x".repeat(100)).as_bytes());
        line += 1;
    }
    script
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_over_max_body_registers_by_digest_and_runs_on_a_remote_worker() {
    let server = Server::start(&["--max-body", "1MiB", "--local-workers", "0"]);
    let client = server.client();
    let _worker = Worker::start(&server.worker_addr, "remote", 1, "push");
    wait_workers(&client, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.sh");
    let script = big_script(20 << 20);
    std::fs::write(&file, &script).expect("write the bundle");
    let file = file.to_str().expect("utf-8 path");

    let first = server.cli(&["register", "big", file, "--runtime", "shell"]);
    let stderr = text(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("uploaded"), "{stderr}");
    assert!(text(&first.stdout).contains("registered big version 1"));

    // The worker fetches the 20 MiB bundle in 4 MiB chunks (no frame could carry it whole
    // under the server's 1 MiB body limit, nor is there another way) and runs it.
    let answer = invoke(&client, "big", b"hi").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body).trim(), "big hi");

    // Registering the same file again uploads nothing.
    let second = server.cli(&[
        "register",
        "big",
        file,
        "--runtime",
        "shell",
        "--timeout",
        "9s",
    ]);
    let stderr = text(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("code already on the server"), "{stderr}");
    assert!(!stderr.contains("uploaded"), "{stderr}");
    assert!(text(&second.stdout).contains("registered big version 2"));
    let listed: serde_json::Value = client
        .get("/v1/functions/big")
        .await
        .expect("show")
        .json()
        .expect("json");
    assert_eq!(listed["code_bytes"], script.len() as u64);
    assert_eq!(
        format!("sha256:{}", listed["code_sha256"].as_str().expect("hash")),
        digest_of(&script)
    );
    assert_eq!(
        blob_files(&server),
        vec![digest_of(&script)[7..].to_string()]
    );

    // The kept version's code reads back whole, streamed from its file.
    let code = client
        .get("/v1/functions/big/versions/1/code")
        .await
        .expect("code");
    assert_eq!(code.status, 200);
    assert!(code.body == script, "the code read back differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_refused_over_the_limit_or_on_a_wrong_digest_and_keep_nothing() {
    let server = Server::start(&["--max-code-size", "2MiB", "--local-workers", "1"]);
    let client = server.client();

    let big = Bytes::from(vec![7u8; 3 << 20]);
    let answer = put(&client, &digest_of(&big), big.clone()).await;
    let error = expect_error(&answer, 413, "payload_too_large");
    let message = error["error"].as_str().expect("message");
    assert!(message.contains("--max-code-size"), "{error}");
    assert!(message.contains("nothing was kept"), "{error}");
    assert_eq!(head(&client, &digest_of(&big)).await, 404);

    let code = Bytes::from_static(b"#!/bin/sh\necho \"small $(cat)\"\n");
    let wrong = digest_of(b"something else");
    let answer = put(&client, &wrong, code.clone()).await;
    let error = expect_error(&answer, 400, "digest_mismatch");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was kept")),
        "{error}"
    );
    assert_eq!(head(&client, &wrong).await, 404);
    assert!(blob_files(&server).is_empty(), "{:?}", blob_files(&server));

    let answer = put(&client, "sha256:nothex", code.clone()).await;
    expect_error(&answer, 400, "invalid_request");

    let digest = digest_of(&code);
    assert_eq!(head(&client, &digest).await, 404);
    assert_eq!(put(&client, &digest, code.clone()).await.status, 201);
    assert_eq!(head(&client, &digest).await, 200);
    // Sent again, it is not read: the server has it.
    assert_eq!(put(&client, &digest, code.clone()).await.status, 200);

    let register = |code_sha256: &str| {
        let body =
            serde_json::json!({"name": "small", "runtime": "shell", "code_sha256": code_sha256});
        client.post(
            "/v1/functions",
            "application/json",
            serde_json::to_vec(&body).expect("json").into(),
        )
    };
    let unknown = register(&digest_of(b"never uploaded"))
        .await
        .expect("register");
    expect_error(&unknown, 400, "blob_not_found");
    let registered = register(&digest).await.expect("register");
    assert_eq!(registered.status, 201, "{}", text(&registered.body));
    let answer = invoke(&client, "small", b"x").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body).trim(), "small x");
}

/// The `Upload-Offset` a `HEAD` of a missing blob gives, if any.
async fn upload_offset(client: &Client, digest: &str) -> Option<u64> {
    let path = format!("/v1/blobs/{digest}");
    let answer = client.request(Method::HEAD, &path, None, Bytes::new());
    let answer = answer.await.expect("HEAD");
    assert_eq!(answer.status, 404);
    answer
        .headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_resumes_from_what_the_server_kept() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&["--local-workers", "0"]);
    let client = server.client();
    let code: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    let digest = digest_of(&code);
    let sent = 1 << 20;
    // A client that sends a third of the body, then goes away.
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        code.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send headers");
    stream.write_all(&code[..sent]).await.expect("send a third");
    stream.flush().await.expect("flush");
    drop(stream);
    // The server keeps what it received, and says how much.
    let kept = common::eventually(
        "the interrupted upload's offset",
        std::time::Duration::from_secs(10),
        || async {
            match upload_offset(&client, &digest).await {
                Some(kept) if kept == sent as u64 => Ok(kept),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // An offset past it is refused, and says what was kept (once the cut-off upload has
    // ended on the server: until then another upload of the blob is refused as under way).
    let path = format!("/v1/blobs/{digest}?offset={}", kept + 1);
    let rest = Bytes::copy_from_slice(&code[kept as usize + 1..]);
    let refused = common::eventually(
        "the cut-off upload to end",
        std::time::Duration::from_secs(10),
        || async {
            let answer = client
                .request(Method::PUT, &path, None, rest.clone())
                .await
                .expect("PUT");
            let busy = answer.status == 409 && text(&answer.body).contains("upload_in_progress");
            if busy {
                Err(text(&answer.body))
            } else {
                Ok(answer)
            }
        },
    )
    .await;
    let error = expect_error(&refused, 409, "upload_offset_mismatch");
    assert_eq!(error["upload_offset"], kept);
    // The rest completes it (on a new connection: the server closes one whose body it left
    // unread).
    let client = server.client();
    let path = format!("/v1/blobs/{digest}?offset={kept}");
    let rest = Bytes::copy_from_slice(&code[kept as usize..]);
    let done = client
        .request(Method::PUT, &path, None, rest)
        .await
        .expect("PUT");
    assert_eq!(done.status, 201, "{}", text(&done.body));
    assert_eq!(head(&client, &digest).await, 200);
    assert_eq!(blob_files(&server), vec![digest[7..].to_string()]);
}

/// Adds a user through `admin`; its token.
async fn add_user(admin: &Client, name: &str, role: &str) -> String {
    let body = serde_json::json!({"name": name, "role": role}).to_string();
    let answer = admin
        .post("/v1/users", "application/json", body.into())
        .await
        .expect("add user");
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let user: serde_json::Value = answer.json().expect("json");
    user["token"].as_str().expect("token").to_string()
}

/// Registers `name` with the blob `digest` as its code.
async fn register_by_digest(client: &Client, name: &str, digest: &str) -> faasd::client::Answer {
    let body = serde_json::json!({"name": name, "runtime": "shell", "code_sha256": digest});
    client
        .post("/v1/functions", "application/json", body.to_string().into())
        .await
        .expect("register")
}

#[tokio::test]
async fn knowing_a_digest_is_not_having_the_code() {
    let server = Server::start(&["--local-workers", "1"]);
    let root = add_user(&server.client(), "root", "admin").await;
    let admin = server.client().with_token(&root).expect("token");
    let alice = server
        .client()
        .with_token(&add_user(&admin, "alice", "developer").await)
        .expect("token");
    let mallory = server
        .client()
        .with_token(&add_user(&admin, "mallory", "developer").await)
        .expect("token");
    let code = Bytes::from_static(b"echo alice's secret\n");
    let digest = digest_of(&code);
    assert_eq!(put(&alice, &digest, code.clone()).await.status, 201);
    let answer = register_by_digest(&alice, "secret", &digest).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    assert_eq!(head(&alice, &digest).await, 200);
    // Mallory read the digest somewhere: the server answers as if it had no such blob...
    assert_eq!(head(&mallory, &digest).await, 404);
    let answer = register_by_digest(&mallory, "stolen", &digest).await;
    expect_error(&answer, 400, "blob_not_found");
    // ... and a PUT without the bytes does not pass for having them.
    let answer = put(&mallory, &digest, Bytes::from_static(b"guess")).await;
    expect_error(&answer, 400, "digest_mismatch");
    let answer = register_by_digest(&mallory, "stolen", &digest).await;
    expect_error(&answer, 400, "blob_not_found");
    // Whoever sends the whole body has the code, and may use it.
    assert_eq!(put(&mallory, &digest, code).await.status, 201);
    let answer = register_by_digest(&mallory, "hers", &digest).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
}
