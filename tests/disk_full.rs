//! A full disk is an answer, not an outage: a server whose data directory sits on a small tmpfs
//! is run into a full disk and back. Writes answer 507 `insufficient_storage`, reads and
//! `/healthz` keep answering, a sync call answers within its timeout, and once space returns
//! the store resumes by itself and every acknowledged task completes with its result.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, eventually, expect_error, register, submit, text, wait_finished};
use faasd::client::{Answer, Client};

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
