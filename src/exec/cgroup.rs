//! Per-call cgroups (v1 `memory` and `pids` controllers): the sandbox shim creates and joins
//! them, named by its own pid; the worker, once it has reaped the shim, reads whether the memory
//! limit killed anything and removes them.

use std::path::PathBuf;
use std::time::Duration;

/// The controllers used, and faasd's directory in each.
const CONTROLLERS: [(&str, &str); 2] = [
    ("memory", "/sys/fs/cgroup/memory/faasd"),
    ("pids", "/sys/fs/cgroup/pids/faasd"),
];

fn dir(root: &str, shim_pid: u32) -> PathBuf {
    PathBuf::from(format!("{root}/{shim_pid}"))
}

/// Whether this machine has the controllers faasd uses.
pub fn available() -> bool {
    CONTROLLERS.iter().all(|(_, root)| {
        std::path::Path::new(root)
            .parent()
            .is_some_and(|p| p.exists())
    })
}

/// In the shim: creates the call's cgroups, sets their limits and moves the shim into them
/// (its children follow). Returns the file whose write failed, with the error.
pub fn enter(memory_bytes: u64, max_pids: u64) -> Result<(), (PathBuf, std::io::Error)> {
    let pid = std::process::id();
    for (controller, root) in CONTROLLERS {
        let d = dir(root, pid);
        std::fs::create_dir_all(&d).map_err(|e| (d.clone(), e))?;
        let limit = match controller {
            "memory" => ("memory.limit_in_bytes", memory_bytes.to_string()),
            _ => ("pids.max", max_pids.to_string()),
        };
        if controller == "memory" {
            // Swap must not extend the limit where the kernel accounts it.
            let _ = std::fs::write(d.join("memory.memsw.limit_in_bytes"), &limit.1);
        }
        let file = d.join(limit.0);
        std::fs::write(&file, &limit.1).map_err(|e| (file.clone(), e))?;
        let procs = d.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|e| (procs.clone(), e))?;
    }
    Ok(())
}

/// In the worker, after reaping the shim: whether the memory limit killed a process of the
/// call; then removes the call's cgroups (in the background while their last processes exit).
pub fn finish(shim_pid: u32) -> bool {
    let memory = dir(CONTROLLERS[0].1, shim_pid);
    let oom = std::fs::read_to_string(memory.join("memory.oom_control"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
        })
        .is_some_and(|kills| kills > 0);
    let dirs: Vec<PathBuf> = CONTROLLERS
        .iter()
        .map(|(_, root)| dir(root, shim_pid))
        .collect();
    let remove = move || {
        for d in dirs {
            for _ in 0..100 {
                match std::fs::remove_dir(&d) {
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(remove)),
        Err(_) => remove(),
    }
    oom
}

/// Removes the cgroups of shims that no longer exist (left by a worker that was killed while
/// executors ran). A cgroup that still has processes cannot be removed, so this never disturbs
/// a live call.
pub fn sweep() {
    for (_, root) in CONTROLLERS {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}
