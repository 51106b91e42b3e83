//! Which sandbox layers this machine can apply: each is tried on top of those already found to
//! work, by running `/bin/true` through the shim, so a layer that cannot be applied is named
//! with the system call that refused it, and the others stay on.

use super::Sandbox;

/// Whether one layer applies here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
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
    pub state: State,
}

/// The layers of `wanted` that this machine can apply: the sandbox with only those on, and
/// the table. The sandbox is `None` when not even the base layers apply.
pub fn negotiate(wanted: &Sandbox) -> (Option<Sandbox>, Vec<Layer>) {
    let mut rows = Vec::new();
    let mut row = |name, state| rows.push(Layer { name, state });
    let base_names = [
        "new session and process group, default signals, PR_SET_PDEATHSIG",
        "rlimits: core, nofile, fsize, cpu, nproc",
        "no_new_privs, inherited fds closed, environment cleared",
        "seccomp filter",
    ];
    let mut current = Sandbox {
        namespaces: false,
        isolate_net: false,
        drop_uid: false,
        memory_bytes: 0,
        ..wanted.clone()
    };
    if let Err(why) = current.probe() {
        for name in base_names {
            row(name, State::Unavailable(why.clone()));
        }
        let rest = "the base layers cannot be applied".to_string();
        for name in [UID, NAMESPACES, NETWORK, "cgroup memory and pids limits"] {
            row(name, State::Unavailable(rest.clone()));
        }
        return (None, rows);
    }
    for name in base_names {
        row(name, State::Active(String::new()));
    }

    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { nix::libc::geteuid() };
    let try_layer = |current: &mut Sandbox, change: &dyn Fn(&mut Sandbox)| {
        let mut next = current.clone();
        change(&mut next);
        next.probe().map(|()| *current = next)
    };
    let state = if euid != 0 {
        State::Active(format!(
            "functions run as the worker's own uid {euid}, which has no privileges to drop"
        ))
    } else {
        match try_layer(&mut current, &|s| s.drop_uid = true) {
            Ok(()) => State::Active(format!("uid {}, gid {}", wanted.uid, wanted.gid)),
            Err(why) => State::Unavailable(why),
        }
    };
    row(UID, state);

    let namespaces = match try_layer(&mut current, &|s| s.namespaces = true) {
        Ok(()) => State::Active(String::new()),
        Err(why) if euid != 0 => State::Unavailable(format!(
            "the worker is not root (user namespaces are not used): {why}"
        )),
        Err(why) => State::Unavailable(why),
    };
    let have_namespaces = namespaces == State::Active(String::new());
    row(NAMESPACES, namespaces);

    let network = if !have_namespaces {
        State::Unavailable("needs the namespaces above".into())
    } else {
        match try_layer(&mut current, &|s| s.isolate_net = true) {
            Ok(()) => State::Active(String::new()),
            Err(why) => State::Unavailable(why),
        }
    };
    row(NETWORK, network);

    let cgroups = if wanted.memory_bytes == 0 || !super::cgroup::available() {
        State::Unavailable(
            "no cgroup v2 nor v1 hierarchy with the memory and pids controllers on this machine"
                .into(),
        )
    } else {
        match try_layer(&mut current, &|s| s.memory_bytes = wanted.memory_bytes) {
            Ok(()) => State::Active(format!("memory limit {} bytes", wanted.memory_bytes)),
            Err(why) => State::Unavailable(why),
        }
    };
    let name = match super::cgroup::version() {
        Some(super::cgroup::Version::V2(_)) => "cgroup memory and pids limits (v2)",
        Some(super::cgroup::Version::V1) => "cgroup memory and pids limits (v1)",
        None => "cgroup memory and pids limits",
    };
    row(name, cgroups);
    (Some(current), rows)
}

const UID: &str = "unprivileged uid/gid, no capabilities";
const NAMESPACES: &str = "pid, mount, ipc, uts namespaces; private read-only filesystem";
const NETWORK: &str = "network namespace (loopback only)";
