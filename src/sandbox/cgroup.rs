//! Per-call cgroups limiting memory and processes: the sandbox shim creates and joins them,
//! named by its own pid (or joins a pair the zygote pooled); the worker, once it has reaped the
//! shim, reads whether the memory limit killed anything and removes them; [`sweep`] removes
//! those left by a worker that was killed.
//!
//! cgroup v2 is used where its `memory` and `pids` controllers are available (a unified
//! hierarchy at `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts), v1's `memory`
//! and `pids` hierarchies otherwise. The layer is probed at start like every other, so a host
//! where neither works reports the layer unavailable rather than failing calls.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::sys::{self, Error};

/// Which cgroup interface this host offers faasd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// v1: separate `memory` and `pids` hierarchies.
    V1,
    /// v2: one hierarchy (its mount point) with both controllers.
    V2(PathBuf),
}

/// v1's controllers, and faasd's directory in each.
const V1_DIRS: [(&str, &str); 2] = [
    ("memory", "/sys/fs/cgroup/memory/faasd"),
    ("pids", "/sys/fs/cgroup/pids/faasd"),
];

/// Where a unified (v2) hierarchy may be mounted.
const V2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// The interface to use here, if any (decided once per process).
pub fn version() -> Option<&'static Version> {
    static VERSION: OnceLock<Option<Version>> = OnceLock::new();
    VERSION.get_or_init(detect).as_ref()
}

fn detect() -> Option<Version> {
    for mount in V2_MOUNTS {
        let controllers = std::fs::read_to_string(Path::new(mount).join("cgroup.controllers"));
        if let Ok(list) = controllers
            && has_controllers(&list)
        {
            return Some(Version::V2(PathBuf::from(mount)));
        }
    }
    let v1 = V1_DIRS
        .iter()
        .all(|(_, dir)| Path::new(dir).parent().is_some_and(Path::exists));
    v1.then_some(Version::V1)
}

/// Whether a `cgroup.controllers` list has both controllers faasd needs.
fn has_controllers(list: &str) -> bool {
    let names: Vec<&str> = list.split_whitespace().collect();
    names.contains(&"memory") && names.contains(&"pids")
}

/// Whether this machine has controllers faasd can use.
pub fn available() -> bool {
    version().is_some()
}

/// The directories of the cgroups called `name` (a shim's pid, or a zygote's pooled name), the
/// memory one first.
fn dirs_of(name: &str) -> Vec<PathBuf> {
    match version() {
        Some(Version::V1) => V1_DIRS
            .iter()
            .map(|(_, root)| PathBuf::from(format!("{root}/{name}")))
            .collect(),
        Some(Version::V2(mount)) => vec![mount.join("faasd").join(name)],
        None => Vec::new(),
    }
}

fn call_dirs(shim_pid: u32) -> Vec<PathBuf> {
    dirs_of(&shim_pid.to_string())
}

/// This process's pid as the host (and so the worker) sees it: a zygote's child is already
/// pid 1 of its own PID namespace, but `/proc` is still the host's.
fn host_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(std::process::id)
}

/// Writes `value` to the cgroup file `file`.
fn write(file: PathBuf, value: &str) -> Result<(), Error> {
    std::fs::write(&file, value).map_err(|e| sys::on_path("write", &file, &e))
}

/// In the shim: creates the call's cgroups (named by its host pid), sets their limits and moves
/// the shim into them; its children follow.
pub fn enter(memory_bytes: u64, max_pids: u64) -> Result<(), Error> {
    let name = host_pid().to_string();
    create(&name)?;
    set_limits(&name, memory_bytes, max_pids)?;
    join(&name)
}

/// Creates the cgroups called `name` (empty, without limits).
pub fn create(name: &str) -> Result<(), Error> {
    if let Some(Version::V2(mount)) = version() {
        // The controllers must be enabled for faasd's subtree (a cgroup with processes of its
        // own cannot, so the calls live under a directory that has none).
        let base = mount.join("faasd");
        std::fs::create_dir_all(&base).map_err(|e| sys::on_path("mkdir", &base, &e))?;
        for parent in [mount, &base] {
            let control = parent.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !has_controllers(&enabled) {
                write(control, "+memory +pids")?;
            }
        }
    }
    if version().is_none() {
        return Err(Error::NoCgroups);
    }
    for d in dirs_of(name) {
        if let Err(e) = std::fs::create_dir_all(&d) {
            remove(name);
            return Err(sys::on_path("mkdir", &d, &e));
        }
    }
    Ok(())
}

/// Sets the limits of the cgroups called `name`.
pub fn set_limits(name: &str, memory_bytes: u64, max_pids: u64) -> Result<(), Error> {
    let memory = memory_bytes.to_string();
    let pids = max_pids.to_string();
    let dirs = dirs_of(name);
    match version() {
        Some(Version::V1) => {
            let (memory_dir, pids_dir) = (&dirs[0], &dirs[1]);
            // Swap must not extend the limit where the kernel accounts it (the memsw file is
            // absent where it does not). memsw may never be below the plain limit, so the plain
            // limit is tried first (it fails when raised above the old memsw), then memsw, then
            // the plain limit for good.
            let _ = std::fs::write(memory_dir.join("memory.limit_in_bytes"), &memory);
            let memsw = memory_dir.join("memory.memsw.limit_in_bytes");
            match std::fs::write(&memsw, &memory) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(sys::on_path("write", &memsw, &e));
                }
                _ => {}
            }
            write(memory_dir.join("memory.limit_in_bytes"), &memory)?;
            write(pids_dir.join("pids.max"), &pids)
        }
        Some(Version::V2(_)) => {
            let d = &dirs[0];
            write(d.join("memory.max"), &memory)?;
            let _ = std::fs::write(d.join("memory.swap.max"), "0");
            write(d.join("pids.max"), &pids)
        }
        None => Err(Error::NoCgroups),
    }
}

/// Moves this process into the cgroups called `name` (writing 0, "this process", which holds
/// in any PID namespace); its children follow.
pub fn join(name: &str) -> Result<(), Error> {
    for d in dirs_of(name) {
        write(d.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

/// How many processes the memory limit of the cgroup called `name` has killed so far.
pub fn oom_kills_of(name: &str) -> u64 {
    let events = match version() {
        Some(Version::V1) => "memory.oom_control",
        _ => "memory.events",
    };
    dirs_of(name)
        .first()
        .and_then(|d| std::fs::read_to_string(d.join(events)).ok())
        .map_or(0, |text| oom_kills(&text))
}

/// Removes the (empty) cgroups called `name`.
pub fn remove(name: &str) {
    for d in dirs_of(name) {
        let _ = std::fs::remove_dir(d);
    }
}

/// The count of processes the memory limit killed, from a v1 `memory.oom_control` or a v2
/// `memory.events`.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// In the worker, after reaping the shim: whether the memory limit killed a process of the
/// call; then removes the call's cgroups (in the background while their last processes exit).
pub fn finish(shim_pid: u32) -> bool {
    let oom = oom_kills_of(&shim_pid.to_string()) > 0;
    let dirs = call_dirs(shim_pid);
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

/// Removes the cgroups of shims and zygotes that no longer exist (left by a worker that was
/// killed while executors ran). A cgroup that still has processes cannot be removed, so this never disturbs
/// a live call.
pub fn sweep() {
    let roots: Vec<PathBuf> = match version() {
        Some(Version::V1) => V1_DIRS.iter().map(|(_, d)| PathBuf::from(d)).collect(),
        Some(Version::V2(mount)) => vec![mount.join("faasd")],
        None => Vec::new(),
    };
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // A shim's pid, or a zygote's pooled cgroup (`z<zygote pid>-<n>`).
            let owner = name.to_str().and_then(|n| {
                let n = n
                    .strip_prefix('z')
                    .map_or(n, |rest| rest.split('-').next().unwrap_or(""));
                n.parse::<u32>().ok()
            });
            let Some(pid) = owner else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_and_oom_counts_are_read_from_either_version() {
        assert!(has_controllers(
            "cpuset cpu io memory hugetlb pids rdma misc"
        ));
        assert!(!has_controllers("cpuset cpu io"));
        assert!(!has_controllers(""));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(v1), 2);
        assert_eq!(oom_kills(v2), 1);
        assert_eq!(oom_kills("oom_group_kill 3\n"), 0);
    }
}
