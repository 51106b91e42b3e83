//! Which sandbox layers this machine can apply: each is tried on top of those already found to
//! work, by running `/bin/true` through the shim, so a layer that cannot be applied is named
//! with the system call that refused it, and the others stay on.

use super::cgroup::{self, Version};
use super::policy::{ProbeError, Sandbox};

/// Whether one layer applies here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Applied; with a note where it applies in a reduced way.
    Active(String),
    /// Not applied, and why.
    Unavailable(String),
}

/// One row of the layer table.
#[derive(Debug, Clone)]
pub struct Layer {
    /// What the layer is.
    pub name: &'static str,
    /// Whether it applies.
    pub state: Availability,
}

const BASE: [&str; 4] = [
    "new session and process group, default signals, PR_SET_PDEATHSIG",
    "rlimits: core, nofile, fsize, cpu (nproc without cgroups)",
    "no_new_privs, inherited fds closed, environment cleared",
    "seccomp filter",
];
const UID: &str = "unprivileged uid/gid, no capabilities";
const NAMESPACES: &str = "pid, mount, ipc, uts namespaces; private read-only filesystem";
const NETWORK: &str = "network namespace (loopback only)";
const CGROUPS: &str = "cgroup memory and pids limits";

/// The layers of `wanted` that this machine can apply: the sandbox with only those on, and
/// the table. The sandbox is `None` when not even the base layers apply.
pub fn negotiate(wanted: &Sandbox) -> (Option<Sandbox>, Vec<Layer>) {
    let mut rows = Vec::new();
    let mut row = |name, state| rows.push(Layer { name, state });
    let mut current = Sandbox {
        namespaces: false,
        isolate_net: false,
        drop_uid: false,
        memory_bytes: 0,
        ..wanted.clone()
    };
    if let Err(why) = current.probe() {
        for name in BASE {
            row(name, Availability::Unavailable(why.to_string()));
        }
        let rest = "the base layers cannot be applied".to_string();
        for name in [UID, NAMESPACES, NETWORK, CGROUPS] {
            row(name, Availability::Unavailable(rest.clone()));
        }
        return (None, rows);
    }
    for name in BASE {
        row(name, Availability::Active(String::new()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { nix::libc::geteuid() };
    row(UID, uid_layer(&mut current, wanted, euid));
    let namespaces = namespace_layer(&mut current, euid);
    let have_namespaces = namespaces == Availability::Active(String::new());
    row(NAMESPACES, namespaces);
    row(NETWORK, network_layer(&mut current, have_namespaces));
    row(cgroup_layer_name(), cgroup_layer(&mut current, wanted));
    (Some(current), rows)
}

/// Probes `current` with `change` made; keeps the change when the probe passes, else says why.
fn try_layer(current: &mut Sandbox, change: impl FnOnce(&mut Sandbox)) -> Result<(), ProbeError> {
    let mut next = current.clone();
    change(&mut next);
    next.probe()?;
    *current = next;
    Ok(())
}

/// Running as `uid`/`gid`: always so for a worker that is not root (`euid`).
fn uid_layer(current: &mut Sandbox, wanted: &Sandbox, euid: u32) -> Availability {
    if euid != 0 {
        return Availability::Active(format!(
            "functions run as the worker's own uid {euid}, which has no privileges to drop"
        ));
    }
    match try_layer(current, |s| s.drop_uid = true) {
        Ok(()) => Availability::Active(format!("uid {}, gid {}", wanted.uid, wanted.gid)),
        Err(why) => Availability::Unavailable(why.to_string()),
    }
}

/// The namespaces and the private filesystem.
fn namespace_layer(current: &mut Sandbox, euid: u32) -> Availability {
    match try_layer(current, |s| s.namespaces = true) {
        Ok(()) => Availability::Active(String::new()),
        Err(why) if euid != 0 => Availability::Unavailable(format!(
            "the worker is not root (user namespaces are not used): {why}"
        )),
        Err(why) => Availability::Unavailable(why.to_string()),
    }
}

/// A network namespace per executor (on top of the other namespaces).
fn network_layer(current: &mut Sandbox, have_namespaces: bool) -> Availability {
    if !have_namespaces {
        return Availability::Unavailable("needs the namespaces above".into());
    }
    match try_layer(current, |s| s.isolate_net = true) {
        Ok(()) => Availability::Active(String::new()),
        Err(why) => Availability::Unavailable(why.to_string()),
    }
}

/// The call's memory and pids cgroups.
fn cgroup_layer(current: &mut Sandbox, wanted: &Sandbox) -> Availability {
    if wanted.memory_bytes == 0 || !cgroup::available() {
        return Availability::Unavailable(
            "no cgroup v2 nor v1 hierarchy with the memory and pids controllers on this machine"
                .into(),
        );
    }
    match try_layer(current, |s| s.memory_bytes = wanted.memory_bytes) {
        Ok(()) => Availability::Active(format!("memory limit {} bytes", wanted.memory_bytes)),
        Err(why) => Availability::Unavailable(why.to_string()),
    }
}

/// The cgroup layer's row, naming the version in use.
fn cgroup_layer_name() -> &'static str {
    match cgroup::version() {
        Some(Version::V2(_)) => "cgroup memory and pids limits (v2)",
        Some(Version::V1) => "cgroup memory and pids limits (v1)",
        None => CGROUPS,
    }
}
