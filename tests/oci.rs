//! The `oci` runtime end to end: images built here (Debian's static busybox in one layer, the
//! config and manifest written by the test, no registry, no Docker) registered with
//! `faasd register NAME IMAGE.tar --runtime oci` or the JSON API, in both archive formats, and
//! run in the sandbox with the image as the root; hostile images refused at registration.

mod common;

use std::path::PathBuf;

use common::image::{Entry, Image, Layer};
use common::{Server, Worker, expect_error, invoke, run, text, wait_workers};

/// Debian's static busybox (`scripts/install-busybox.sh` installs it).
const BUSYBOX: &str = "/bin/busybox";

/// An image whose one layer holds busybox (with `sh` and `cat` linked to it), `/app/hello.txt`,
/// and whose config runs `script` with `sh -c` in `/app`.
fn busybox_image(script: &str) -> Image {
    let busybox = std::fs::read(BUSYBOX).expect("/bin/busybox (run scripts/install-busybox.sh)");
    let layer = Layer::new(vec![
        Entry::Dir("bin".into()),
        Entry::File("bin/busybox".into(), busybox, 0o755),
        Entry::Symlink("bin/sh".into(), "busybox".into()),
        Entry::Symlink("bin/cat".into(), "/bin/busybox".into()),
        Entry::Dir("app".into()),
        Entry::File("app/hello.txt".into(), b"hello-file".to_vec(), 0o644),
    ]);
    Image {
        layers: vec![layer],
        config: serde_json::json!({
            "Entrypoint": ["/bin/busybox", "sh", "-c"],
            "Cmd": [script],
            "Env": ["PATH=/bin", "GREETING=hi", "WHO=image"],
            "WorkingDir": "/app",
            "User": "1000",
        }),
    }
}

/// Writes `bytes` as `name` in a temporary directory kept as long as the returned guard.
fn archive(bytes: &[u8], name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the image");
    (dir, path)
}

/// Registers an image through the JSON API.
async fn register_image(server: &Server, name: &str, bytes: &[u8]) -> faasd::client::Answer {
    let oci = serde_json::json!({"runtime": "oci"});
    common::register(&server.client(), name, bytes, oci).await
}

/// What the image script prints about its root: read-only, a writable `/tmp`, no host `/usr`,
/// not root.
const PROBE: &str = "cat; echo; echo ok $GREETING $WHO; pwd; cat hello.txt; echo; \
    (echo x > /app/x) 2>/dev/null || echo read-only; echo t > /tmp/t && echo tmp-ok; \
    [ -e /usr/bin ] || echo no-host-usr; [ \"$(busybox id -u)\" != 0 ] && echo not-root";

const EXPECTED: &str =
    "in\nok hi faasd\n/app\nhello-file\nread-only\ntmp-ok\nno-host-usr\nnot-root\n";

#[tokio::test]
async fn a_docker_save_image_runs_with_its_env_and_working_directory() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "strict"]);
    let (_dir, path) = archive(&busybox_image(PROBE).docker_save(), "image.tar");
    let path = path.to_str().expect("utf8");
    let out = server.cli(&[
        "register",
        "img",
        path,
        "--runtime",
        "oci",
        "--env",
        "WHO=faasd",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = invoke(&server.client(), "img", b"in").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body), EXPECTED);
    // Again, from the unpacked cache.
    let outcome = run(&server.client(), "img", b"in").await;
    assert_eq!(outcome.result, EXPECTED);
    // And here, outside the server: `replay --local` unpacks the image itself.
    let id = outcome.task["id"].as_str().expect("id");
    let out = server.cli(&["replay", id, "--local", "--sandbox", "strict"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), EXPECTED);
}

/// Sends `GET path` with `Host: host` to the server and returns the status line and the body.
async fn get_with_host(server: &Server, path: &str, host: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = text(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

#[tokio::test]
async fn an_image_whose_busybox_httpd_serves_a_file_by_path_and_by_host_name() {
    let server = Server::start(&[
        "--local-workers",
        "1",
        "--sandbox",
        "strict",
        "--domain",
        "example.com",
    ]);
    let mut image = busybox_image("unused");
    image.layers[0].entries.extend([
        Entry::Dir("www".into()),
        Entry::File("www/file.txt".into(), b"served by httpd".to_vec(), 0o644),
    ]);
    image.config["Entrypoint"] = serde_json::json!(["/bin/busybox", "httpd", "-f"]);
    image.config["Cmd"] = serde_json::json!(["-p", "127.0.0.1:8080", "-h", "/www"]);
    let (_dir, path) = archive(&image.docker_save(), "web.tar");
    let path = path.to_str().expect("utf8");
    let out = server.cli(&[
        "register",
        "web",
        path,
        "--runtime",
        "oci",
        "--http-port",
        "8080",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = server
        .client()
        .get("/function/web/file.txt")
        .await
        .expect("request");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body), "served by httpd");
    let (status, body) = get_with_host(&server, "/file.txt", "web.example.com").await;
    assert!(status.contains(" 200 "), "{status}: {body}");
    assert_eq!(body, "served by httpd");
    let (status, body) = get_with_host(&server, "/file.txt", "nosuch.example.com").await;
    assert!(status.contains(" 404 "), "{status}: {body}");
    assert!(body.contains("nosuch"), "{body}");
}

#[tokio::test]
async fn an_image_over_the_body_limit_travels_as_a_blob_once() {
    let server = Server::start(&[
        "--local-workers",
        "1",
        "--sandbox",
        "strict",
        "--max-body",
        "1MiB",
    ]);
    let mut image = busybox_image("cat; echo; wc -c < /app/big.bin");
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    image.layers[0]
        .entries
        .push(Entry::File("app/big.bin".into(), big, 0o644));
    let (_dir, path) = archive(&image.docker_save(), "big.tar");
    let path = path.to_str().expect("utf8");
    let register = |name: &str| server.cli(&["register", name, path, "--runtime", "oci"]);
    let out = register("big");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("uploaded"),
        "{}",
        text(&out.stderr)
    );
    let answer = invoke(&server.client(), "big", b"in").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body), format!("in\n{}\n", 5u32 << 20));
    // The same image again uploads nothing.
    let out = register("big-again");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("code already on the server"),
        "{}",
        text(&out.stderr)
    );
    // A hostile image that travels as a blob is checked from its file all the same.
    image.layers[0]
        .entries
        .push(Entry::File("../escape".into(), b"x".to_vec(), 0o644));
    let (_dir, path) = archive(&image.docker_save(), "hostile.tar");
    let out = server.cli(&[
        "register",
        "hostile",
        path.to_str().expect("utf8"),
        "--runtime",
        "oci",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(".."), "{}", text(&out.stderr));
}

#[tokio::test]
async fn an_oci_layout_with_a_gzip_layer_runs() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "strict"]);
    let mut image = busybox_image(PROBE);
    image.layers[0].gzip = true;
    image.config["Env"] = serde_json::json!(["PATH=/bin", "GREETING=hi", "WHO=faasd"]);
    let answer = register_image(&server, "layout", &image.oci_layout()).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = invoke(&server.client(), "layout", b"in").await;
    assert_eq!(text(&answer.body), EXPECTED);
}

/// Registers a one-layer image of `entries` in both formats and checks each is refused with
/// 400 `invalid_code` and a message holding every one of `expect`, and that nothing is stored.
async fn assert_refused(server: &Server, entries: Vec<Entry>, expect: &[&str]) {
    let image = Image {
        layers: vec![Layer::new(entries)],
        config: serde_json::json!({"Cmd": ["/bin/true"]}),
    };
    for bytes in [image.docker_save(), image.oci_layout()] {
        let answer = register_image(server, "hostile", &bytes).await;
        let body = expect_error(&answer, 400, "invalid_code");
        let message = body["error"].as_str().expect("message");
        for part in expect {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
        let listed = server
            .client()
            .get("/v1/functions/hostile")
            .await
            .expect("get");
        assert_eq!(listed.status, 404, "nothing stored");
    }
}

#[tokio::test]
async fn hostile_images_are_refused_at_registration() {
    let server = Server::start(&["--local-workers", "1"]);
    let file = |path: &str| Entry::File(path.into(), b"owned".to_vec(), 0o644);
    assert_refused(
        &server,
        vec![file("../../etc/evil")],
        &["\"../../etc/evil\"", "`..`"],
    )
    .await;
    assert_refused(
        &server,
        vec![file("/etc/evil")],
        &["\"/etc/evil\"", "absolute"],
    )
    .await;
    let escape = vec![
        Entry::Symlink("escape".into(), "/etc".into()),
        file("escape/evil"),
    ];
    assert_refused(
        &server,
        escape,
        &["passes through the symbolic link escape"],
    )
    .await;
    let device = vec![Entry::CharDevice("dev/mem".into())];
    assert_refused(&server, device, &["\"dev/mem\"", "device nodes"]).await;
    let sparse = vec![Entry::Sparse("big".into(), 2 << 30)];
    assert_refused(&server, sparse, &["\"big\"", "size limit"]).await;
    let answer = register_image(&server, "hostile", b"not an image at all").await;
    let body = expect_error(&answer, 400, "invalid_code");
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("not an image archive"),
        "{body}"
    );
    assert!(!std::path::Path::new("/etc/evil").exists());
}

#[tokio::test]
async fn without_the_sandbox_an_image_function_is_refused_at_once_or_waits_for_a_sandbox() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "none"]);
    let image = busybox_image("cat");
    let answer = register_image(&server, "img", &image.docker_save()).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    // The only worker cannot run images: a sync call is refused saying so, an async one waits
    // in its queue for a worker with the sandbox (rather than failing on this one).
    let client = server.client();
    let refused = common::invoke(&client, "img", b"x").await;
    common::expect_no_workers(&refused, "can run oci functions");
    let id = common::submit(&client, "img", b"x").await;
    assert_eq!(common::status(&client, &id).await["status"], "QUEUED");
    assert_eq!(common::queued(&client).await, 1);
}

#[tokio::test]
async fn an_image_without_a_command_is_refused() {
    let server = Server::start(&["--local-workers", "1"]);
    let image = Image {
        layers: vec![Layer::new(vec![Entry::Dir("bin".into())])],
        config: serde_json::json!({"Env": ["A=1"]}),
    };
    let answer = register_image(&server, "empty", &image.oci_layout()).await;
    let body = expect_error(&answer, 400, "invalid_code");
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("neither Entrypoint nor Cmd"),
        "{body}"
    );
}

/// A warm executor in busybox `sh`: the warm frame protocol's ready frame, then per call an `O`
/// frame whose result is the payload and the executor's count of calls.
const WARM_SH: &str = r#"
be32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1>>24&255)) $(($1>>16&255)) $(($1>>8&255)) $(($1&255)))"; }
be32 1; printf R
calls=0
while :; do
  set -- $(dd bs=1 count=4 2>/dev/null | od -An -tu1)
  [ $# -eq 4 ] || exit 0
  n=$(( ($1<<24) + ($2<<16) + ($3<<8) + $4 ))
  dd bs=1 count=2 >/dev/null 2>&1
  payload=$(dd bs=1 count=$((n-2)) 2>/dev/null)
  calls=$((calls+1))
  result="warm:$payload:$calls"
  be32 $((5+${#result})); printf O; be32 ${#result}; printf '%s' "$result"
done
"#;

#[tokio::test]
async fn a_warm_image_serves_many_calls_from_one_executor() {
    let server = Server::start(&["--local-workers", "1", "--sandbox", "strict"]);
    let image = busybox_image(WARM_SH);
    let client = server.client();
    let settings = serde_json::json!({"runtime": "oci", "warm": true});
    let answer = common::register(&client, "warm", image.docker_save(), settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let first = invoke(&client, "warm", b"a").await;
    assert_eq!(text(&first.body), "warm:a:1");
    let second = invoke(&client, "warm", b"b").await;
    assert_eq!(
        text(&second.body),
        "warm:b:2",
        "the same executor served both"
    );
}

#[tokio::test]
async fn a_remote_worker_fetches_and_unpacks_the_image() {
    let server = Server::start(&["--local-workers", "0"]);
    let _worker = Worker::start_with(
        &server.worker_addr,
        "w",
        1,
        "push",
        &["--sandbox", "strict"],
    );
    wait_workers(&server.client(), 1).await;
    let mut image = busybox_image(PROBE);
    image.config["Env"] = serde_json::json!(["PATH=/bin", "GREETING=hi", "WHO=faasd"]);
    let answer = register_image(&server, "remote", &image.oci_layout()).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = invoke(&server.client(), "remote", b"in").await;
    assert_eq!(text(&answer.body), EXPECTED);
}
