//! A full disk is an answer, not an outage: a server whose data directory sits on a small tmpfs
//! is run into a full disk and back. Writes answer 507 `insufficient_storage`, reads and
//! `/healthz` keep answering, a sync call answers within its timeout, and once space returns
//! the store resumes by itself and every acknowledged task completes with its result. At the
//! edges: a blob upload that runs out of space keeps nothing (so the disk is not left full),
//! and a first start on a full disk leaves no half-made store behind.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, eventually, expect_error, register, submit, text, wait_finished};
use faasd::client::{Answer, Client};
use sha2::Digest;

/// A tmpfs mounted on a temporary directory for the test's life.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (such as `16m`); `None` (and a note why) when mounting is refused.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (the test needs root or CAP_SYS_ADMIN): {}",
                text(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a server still dying does not keep the mount.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem holding `path` with a file there; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut written = 0;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // The last partial chunk may have landed; the filesystem is full either way.
    let _ = file.flush();
    written
}

async fn invoke_async(client: &Client, name: &str, payload: Bytes) -> Answer {
    client
        .post(
            &format!("/v1/functions/{name}/invoke?async=true"),
            "application/octet-stream",
            payload,
        )
        .await
        .expect("invoke request")
}

async fn healthz(client: &Client) -> serde_json::Value {
    let answer = client.get("/healthz").await.expect("healthz");
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    answer.json().expect("healthz JSON")
}

/// An acknowledged task and the result it must end with.
struct Acked {
    id: String,
    result: String,
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_reads_and_heals_when_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("16m") else {
        return;
    };
    let data: PathBuf = tmpfs.path().join("data");
    let server = Server::start_on(&data, &["--local-workers", "4", "--min-free-space", "4MiB"]);
    let client = server.client();
    let echo = register(
        &client,
        "echo",
        "printf 'got:%s' \"$(wc -c)\"",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(echo.status, 201, "{}", text(&echo.body));
    let slow = "sleep 1; printf 'slow:%s' \"$(wc -c)\"";
    let reg = register(&client, "slow", slow, serde_json::json!({"timeout": "5s"})).await;
    assert_eq!(reg.status, 201, "{}", text(&reg.body));
    assert_eq!(healthz(&client).await["status"], "ok");

    // A task finished before the disk fills, and both functions' code cached by the worker.
    let earlier = submit(&client, "echo", b"abc").await;
    assert_eq!(
        wait_finished(&client, &earlier).await["status"],
        "COMPLETED"
    );
    let warm = submit(&client, "slow", b"x").await;
    assert_eq!(wait_finished(&client, &warm).await["status"], "COMPLETED");

    // Acknowledged tasks still running when the disk fills: their ends are stored later.
    let mut acked = Vec::new();
    for n in 1..=4 {
        let payload = vec![b'p'; n];
        let id = submit(&client, "slow", &payload).await;
        acked.push(Acked {
            id,
            result: format!("slow:{n}"),
        });
    }
    let filler = tmpfs.path().join("filler");
    fill(&filler);

    // redb may still have free pages inside its file: write until a write is refused.
    let payload = Bytes::from(vec![b'q'; 256 << 10]);
    let mut refused = None;
    for _ in 0..200 {
        let answer = invoke_async(&client, "echo", payload.clone()).await;
        if answer.status == 202 {
            let v: serde_json::Value = answer.json().expect("json");
            acked.push(Acked {
                id: v["task_id"].as_str().expect("task_id").into(),
                result: format!("got:{}", payload.len()),
            });
            continue;
        }
        refused = Some(answer);
        break;
    }
    let refused = refused.expect("a write refused once the disk is full");
    let body = expect_error(&refused, 507, "insufficient_storage");
    let message = body["error"].as_str().expect("message");
    assert!(
        message.contains("data directory") && message.contains("is full"),
        "{message}"
    );

    // Writes go on being refused; reads go on working.
    let again = invoke_async(&client, "echo", Bytes::from_static(b"x")).await;
    expect_error(&again, 507, "insufficient_storage");
    let status = common::status(&client, &earlier).await;
    assert_eq!(status["status"], "COMPLETED");
    let result = client
        .get(&format!("/v1/tasks/{earlier}/result"))
        .await
        .expect("result");
    assert_eq!(
        (result.status.as_u16(), text(&result.body)),
        (200, "got:3".into())
    );

    // A sync call gets an answer within its function's timeout (5 s), not a hang.
    let started = Instant::now();
    let sync = tokio::time::timeout(
        Duration::from_secs(10),
        common::invoke(&client, "slow", b"sync"),
    )
    .await
    .expect("a sync call answered within its timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    expect_error(&sync, 507, "insufficient_storage");

    let health = healthz(&client).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let warnings = health["warnings"].to_string();
    assert!(warnings.contains("--min-free-space"), "{health}");
    assert!(warnings.contains("is full"), "{health}");

    // Space returns: the store resumes by itself.
    std::fs::remove_file(&filler).expect("remove filler");
    let freed = Instant::now();
    let resumed = || async {
        let answer = invoke_async(&client, "echo", Bytes::from_static(b"after")).await;
        if answer.status == 202 {
            let v: serde_json::Value = answer.json().expect("json");
            Ok(v["task_id"].as_str().expect("task_id").to_string())
        } else {
            Err(format!("{} {}", answer.status, text(&answer.body)))
        }
    };
    let after = eventually(
        "writes to be stored again",
        Duration::from_secs(15),
        resumed,
    )
    .await;
    eprintln!(
        "writes stored again {:?} after space returned",
        freed.elapsed()
    );
    acked.push(Acked {
        id: after,
        result: "got:5".into(),
    });
    for task in &acked {
        let done = wait_finished(&client, &task.id).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        let result = client
            .get(&format!("/v1/tasks/{}/result", task.id))
            .await
            .expect("result");
        assert_eq!(text(&result.body), task.result, "task {}", task.id);
    }
    let healthy = || async {
        let health = healthz(&client).await;
        if health["status"] == "ok" {
            Ok(())
        } else {
            Err(health)
        }
    };
    eventually("/healthz to be ok again", Duration::from_secs(15), healthy).await;
    drop(server);
}

/// One result larger than the space left must not keep every other write out: its end is
/// stored without it (FAILED `output_too_large`, saying why), and the writes behind it land.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_too_large_for_the_space_left_does_not_stop_other_writes() {
    let Some(tmpfs) = Tmpfs::mount("16m") else {
        return;
    };
    let data: PathBuf = tmpfs.path().join("data");
    let server = Server::start_on(&data, &["--local-workers", "2", "--min-free-space", "1MiB"]);
    let client = server.client();
    let big = "sleep 1; head -c 5000000 /dev/zero | tr '\\0' x";
    let reg = register(&client, "big", big, serde_json::json!({"timeout": "10s"})).await;
    assert_eq!(reg.status, 201, "{}", text(&reg.body));
    let reg = register(&client, "echo", "cat", serde_json::json!({})).await;
    assert_eq!(reg.status, 201, "{}", text(&reg.body));
    let warm = submit(&client, "echo", b"warm").await;
    assert_eq!(wait_finished(&client, &warm).await["status"], "COMPLETED");

    // About 3 MB left: small writes fit, the 5 MB result does not.
    let filler = tmpfs.path().join("filler");
    let spare = free_bytes(tmpfs.path()).saturating_sub(3 << 20);
    std::fs::write(&filler, vec![0u8; spare as usize]).expect("fill");
    let large = submit(&client, "big", b"").await;
    let done = wait_finished(&client, &large).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["reason"], "output_too_large", "{done}");
    let message = done["message"].as_str().expect("message");
    assert!(
        message.contains("it completed, but its result"),
        "{message}"
    );
    assert!(message.contains("too little free space"), "{message}");

    // Writes go on: a new task is acknowledged and completes with its result.
    let stored = || async {
        let answer = invoke_async(&client, "echo", Bytes::from_static(b"after")).await;
        match answer.status.as_u16() {
            202 => Ok(answer.json::<serde_json::Value>().expect("json")["task_id"]
                .as_str()
                .expect("task_id")
                .to_owned()),
            _ => Err(format!("{} {}", answer.status, text(&answer.body))),
        }
    };
    let after = eventually("a write to be stored", Duration::from_secs(5), stored).await;
    assert_eq!(wait_finished(&client, &after).await["status"], "COMPLETED");
    let result = client
        .get(&format!("/v1/tasks/{after}/result"))
        .await
        .expect("result");
    assert_eq!(text(&result.body), "after");
    drop(server);
}

/// Free bytes in the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

/// The files left in the server's blob directory.
fn blob_dir(data: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(data.join("blobs")).expect("blob directory");
    let names = entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned());
    names.collect()
}

#[tokio::test]
async fn a_blob_upload_that_fills_the_disk_keeps_nothing_and_frees_the_space() {
    let Some(tmpfs) = Tmpfs::mount("32m") else {
        return;
    };
    let data: PathBuf = tmpfs.path().join("data");
    let server = Server::start_on(&data, &["--local-workers", "1"]);
    let client = server.client();
    let echo = register(
        &client,
        "echo",
        "printf 'got:%s' \"$(wc -c)\"",
        serde_json::json!({}),
    );
    let echo = echo.await;
    assert_eq!(echo.status, 201, "{}", text(&echo.body));
    // A task run before, so the worker has the code and the store its first pages.
    let earlier = submit(&client, "echo", b"abc").await;
    assert_eq!(
        wait_finished(&client, &earlier).await["status"],
        "COMPLETED"
    );

    // About 6 MiB left free: the 20 MiB upload runs out of space part way.
    let filler = tmpfs.path().join("filler");
    let written = fill(&filler);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("filler");
    file.set_len(written - (6 << 20)).expect("free 6 MiB");
    drop(file);
    let free_before = free_bytes(tmpfs.path());
    let blob = Bytes::from(
        (0..20u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let digest = format!("sha256:{}", faasd::proto::hex(&sha2::Sha256::digest(&blob)));
    let path = format!("/v1/blobs/{digest}");
    let answer = client.request(hyper::Method::PUT, &path, None, blob);
    let answer = answer.await.expect("PUT");
    let body = expect_error(&answer, 507, "insufficient_storage");
    let message = body["error"].as_str().expect("message");
    assert!(message.contains("nothing was kept"), "{message}");
    assert!(body.get("upload_offset").is_none(), "{body}");

    // Nothing was kept indeed: no partial file, no offset to resume from, the space is back.
    assert_eq!(blob_dir(&data), Vec::<String>::new());
    let head = client.request(hyper::Method::HEAD, &path, None, Bytes::new());
    let head = head.await.expect("HEAD");
    assert_eq!(head.status, 404);
    assert!(
        head.headers.get("upload-offset").is_none(),
        "{:?}",
        head.headers
    );
    let free_after = free_bytes(tmpfs.path());
    assert!(
        free_after + (256 << 10) >= free_before,
        "{free_after} bytes free after the failed upload, {free_before} before"
    );
    // And writes are stored: an async call is accepted and runs.
    let after = invoke_async(&client, "echo", Bytes::from_static(b"after")).await;
    assert_eq!(after.status, 202, "{}", text(&after.body));
    let v: serde_json::Value = after.json().expect("json");
    let id = v["task_id"].as_str().expect("task_id");
    assert_eq!(wait_finished(&client, id).await["status"], "COMPLETED");
    drop(server);
}

/// Runs `faasd serve` on `data` until it exits (it must, within 30 s); its output.
async fn serve_until_exit(data: &Path) -> std::process::Output {
    let child = tokio::process::Command::new(common::BIN)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--worker-listen", "127.0.0.1:0"])
        .args(["--local-workers", "0"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start faasd serve");
    let exited = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output());
    exited
        .await
        .expect("faasd serve exited")
        .expect("its output")
}

#[tokio::test]
async fn a_first_start_on_a_full_disk_leaves_no_store_behind() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let filler = tmpfs.path().join("filler");
    fill(&filler);
    let data = tmpfs.path().join("data");
    let out = serve_until_exit(&data).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // One clear line: what failed, why (once), and that nothing is left to trip the next start.
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("cannot create store"), "{stderr}");
    assert!(stderr.contains("was removed"), "{stderr}");
    assert!(!data.join("faasd.redb").exists(), "{stderr}");

    // Space freed, the next start creates the store and serves.
    std::fs::remove_file(&filler).expect("remove filler");
    let server = Server::start_on(&data, &["--local-workers", "0"]);
    assert_eq!(healthz(&server.client()).await["status"], "ok");
    drop(server);
}
