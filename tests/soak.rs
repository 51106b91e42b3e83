//! No leaks: 10,000 sandboxed invocations, mixed cold and warm, some failing, then the server
//! and its sandbox zygote hold the same number of fds, have no children but the zygote, and
//! have left no working directories or cgroups behind.

mod common;

use std::time::Duration;

use common::{Server, eventually, register, submit, wait_finished};

/// How long each clean-up [`eventually`] waits for.
const SETTLE: Duration = Duration::from_secs(20);

/// A process's open fds other than sockets (HTTP keep-alive connections come and go with the
/// client; pipes, pidfds and files are what executors could leak) and network namespaces (the
/// zygote's pool of them, bounded, grows with concurrency).
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|target| {
                    let target = target.to_string_lossy();
                    !target.starts_with("socket:") && !target.starts_with("net:")
                })
                .unwrap_or(false)
        })
        .count()
}

/// The pooled network namespaces a process holds.
fn netns_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("net:"))
        })
        .count()
}

fn is_zygote(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"__zygote"))
}

/// Children of `pid` and their states.
fn children(pid: u32) -> Vec<(u32, char)> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(") ")?;
            let child: u32 = head.split_whitespace().next()?.parse().ok()?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == pid).then_some((child, state))
        })
        .collect()
}

/// The memory cgroups the kernel holds (live ones and removed ones it has not freed yet).
fn memory_cgroups_in_kernel() -> usize {
    std::fs::read_to_string("/proc/cgroups")
        .expect("/proc/cgroups")
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.first() == Some(&"memory")).then(|| fields[2].parse().expect("count"))
        })
        .expect("a memory controller")
}

/// The zygote's pooled cgroups (`z<zygote pid>-<n>`).
fn pooled_cgroups(zygote: u32) -> usize {
    let prefix = format!("z{zygote}-");
    std::fs::read_dir("/sys/fs/cgroup/memory/faasd")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or_default()
}

/// Per-call cgroups (named by a shim's pid).
fn call_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/memory/faasd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_invocations_leave_nothing_behind() {
    let server = Server::start(&["--local-workers", "2", "--sandbox", "strict"]);
    let client = server.client();
    let pid = server.child.id();
    let brief = serde_json::json!({"idle_timeout": "300ms", "runtime": "python"});
    let code = "def handle(p):\n    if p == b'fail':\n        raise ValueError(p)\n    return p\n";
    assert_eq!(register(&client, "warm", code, brief).await.status, 201);
    assert_eq!(
        register(&client, "cold", "cat", serde_json::json!({}))
            .await
            .status,
        201
    );
    assert_eq!(
        register(&client, "bad", "exit 3", serde_json::json!({}))
            .await
            .status,
        201
    );

    // Baseline: one call of each kind, then every warm executor gone idle and stopped.
    for name in ["warm", "cold", "bad"] {
        wait_finished(&client, &submit(&client, name, b"x").await).await;
    }
    let work = server.data.join("work");
    let zygotes: Vec<u32> = children(pid)
        .into_iter()
        .map(|(child, _)| child)
        .filter(|child| is_zygote(*child))
        .collect();
    assert_eq!(zygotes.len(), 1, "one sandbox zygote: {zygotes:?}");
    let zygote = zygotes[0];
    let no_executors = || {
        let kids: Vec<_> = children(pid)
            .into_iter()
            .filter(|(child, _)| *child != zygote)
            .chain(children(zygote))
            .collect();
        if kids.is_empty() {
            Ok(())
        } else {
            Err(format!("children {kids:?}"))
        }
    };
    eventually("executors to stop when idle", SETTLE, || async {
        no_executors()
    })
    .await;
    let baseline = fd_count(pid);
    let zygote_baseline = fd_count(zygote);
    let kernel_cgroups = memory_cgroups_in_kernel();

    // 10,000 invocations: 8,000 warm (1 in 10 raising), 1,500 cold, 500 failing cold.
    let mut jobs = tokio::task::JoinSet::new();
    for c in 0..16usize {
        let client = client.clone();
        jobs.spawn(async move {
            let mut ids = Vec::new();
            for i in (c..10_000).step_by(16) {
                let (name, payload): (&str, &[u8]) = match i % 20 {
                    0..=15 if i % 10 == 0 => ("warm", b"fail"),
                    0..=15 => ("warm", b"ok"),
                    16..=18 => ("cold", b"ok"),
                    _ => ("bad", b""),
                };
                ids.push((
                    submit(&client, name, payload).await,
                    name,
                    payload == b"fail",
                ));
            }
            for (id, name, raises) in &ids {
                let task = wait_finished(&client, id).await;
                let expected = if *name == "bad" || *raises {
                    "FAILED"
                } else {
                    "COMPLETED"
                };
                assert_eq!(task["status"], expected, "{task}");
            }
            ids.len()
        });
    }
    let mut total = 0;
    while let Some(n) = jobs.join_next().await {
        total += n.expect("job");
    }
    assert_eq!(total, 10_000);

    eventually("executors to stop when idle", SETTLE, || async {
        no_executors()
    })
    .await;
    // At most the baseline: a descriptor open when it was counted (a client connection, a
    // start-up sweep) may have closed since; more would be a leak.
    eventually("the fd count to return to the baseline", SETTLE, || async {
        let now = fd_count(pid);
        if now <= baseline {
            Ok(())
        } else {
            Err(format!("{now} fds, baseline {baseline}"))
        }
    })
    .await;
    let zygote_fds_settled = || async {
        let now = fd_count(zygote);
        if now == zygote_baseline {
            Ok(())
        } else {
            Err(format!("{now} fds, baseline {zygote_baseline}"))
        }
    };
    let what = "the zygote's fd count to return to the baseline";
    eventually(what, SETTLE, zygote_fds_settled).await;
    // Two slots and their warm executors: never more than a few namespaces and cgroups in use
    // at once, and the kernel is not left holding thousands of removed memory cgroups. A few:
    // per slot the running call and the one answered before its teardown ended, the warm
    // executors, and a ready sandbox per function (three here), each holding a pair and a
    // namespace; the pools keep what the busiest moment used.
    let pooled = netns_count(zygote);
    assert!(
        (1..=16).contains(&pooled),
        "{pooled} pooled network namespaces"
    );
    let pooled = pooled_cgroups(zygote);
    assert!((1..=16).contains(&pooled), "{pooled} pooled cgroups");
    let kernel_now = memory_cgroups_in_kernel();
    assert!(
        kernel_now <= kernel_cgroups + 16,
        "memory cgroups in the kernel: {kernel_cgroups} before, {kernel_now} after"
    );
    assert!(
        children(pid).iter().any(|(child, _)| *child == zygote),
        "the same zygote served every call"
    );
    eventually("no working directories left", SETTLE, || async {
        let left: Vec<_> = std::fs::read_dir(&work)
            .expect("work dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    eventually("no call cgroups left", SETTLE, || async {
        let left = call_cgroups();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}
