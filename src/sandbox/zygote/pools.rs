//! The zygote's pools of what is costly to make per call:
//!
//! - network namespaces ([`Nets`]): empty ones with loopback up, one per running executor,
//!   given back when the worker reaps it and reused only by the same function's executors, and
//!   only when they run without privileges (creating and destroying a namespace per call costs
//!   more than everything else the sandbox does, and one shared namespace would let functions
//!   reach each other over loopback);
//! - cgroups ([`Cgroups`]): memory and pids cgroup pairs, one per running executor, reused once
//!   its call is over (a removed memory cgroup lingers in the kernel while page cache is
//!   charged to it).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;

use crate::sandbox::cgroup;
use crate::sandbox::sys::{self, Error};

/// The most idle cgroups kept for reuse.
const MAX_POOLED_CGROUPS: usize = 64;

/// The most idle network namespaces kept for reuse.
const MAX_POOLED_NETNS: usize = 64;

/// The pool of cgroup pairs (a memory and a pids cgroup of one name).
#[derive(Default)]
pub(super) struct Cgroups {
    /// Idle pairs.
    idle: Vec<TakenCgroup>,
    /// The pair each unreaped child is in.
    held: HashMap<i32, TakenCgroup>,
    /// Numbers the pairs.
    next: usize,
}

/// A cgroup pair: its name, the limits last written to it (memory bytes, pids) and its count
/// of memory-limit kills when it was last idle. An idle pair keeps both, so a call with the
/// same limits as the pair's last takes it without writing a file, and the count read when
/// the last call was reaped is the next call's starting point without reading it again
/// (nothing runs in an idle pair): the cgroup files are the zygote's costliest system calls
/// per call after the fork.
pub(super) struct TakenCgroup {
    /// The pair's name.
    pub name: String,
    limits: (u64, u64),
    oom_kills: u64,
}

impl Cgroups {
    /// An idle pair with this call's limits set, or a new one: an idle pair with the same
    /// limits first; a pair whose limits cannot be set (a lower memory limit than the charge a
    /// previous call left, or a pair removed from outside) is dropped from the pool.
    pub(super) fn take(&mut self, memory_bytes: u64, max_pids: u64) -> Result<TakenCgroup, Error> {
        let limits = (memory_bytes, max_pids);
        if let Some(at) = self.idle.iter().rposition(|c| c.limits == limits) {
            return Ok(self.idle.swap_remove(at));
        }
        while let Some(mut pair) = self.idle.pop() {
            if cgroup::set_limits(&pair.name, memory_bytes, max_pids).is_ok() {
                pair.limits = limits;
                return Ok(pair);
            }
            cgroup::remove(&pair.name);
        }
        let name = format!("z{}-{}", std::process::id(), self.next);
        self.next += 1;
        cgroup::create(&name)?;
        if let Err(e) = cgroup::set_limits(&name, memory_bytes, max_pids) {
            cgroup::remove(&name);
            return Err(e);
        }
        let oom_kills = cgroup::oom_kills_of(&name);
        Ok(TakenCgroup {
            name,
            limits,
            oom_kills,
        })
    }

    /// Gives back a pair whose call never started.
    pub(super) fn put_back(&mut self, taken: TakenCgroup) {
        self.idle.push(taken);
    }

    /// Records the pair the child `pid` is in.
    pub(super) fn hold(&mut self, pid: i32, taken: TakenCgroup) {
        self.held.insert(pid, taken);
    }

    /// Whether the memory limit of the child `pid`'s pair has killed any of its processes
    /// since its call began (`None`: it has no pooled pair); the count read now is where the
    /// next call's begins, for a sandbox that serves another.
    pub(super) fn oom_in_call(&mut self, pid: i32) -> Option<bool> {
        let pair = self.held.get_mut(&pid)?;
        let now = cgroup::oom_kills_of(&pair.name);
        let oom = now > pair.oom_kills;
        pair.oom_kills = now;
        Some(oom)
    }

    /// Once the child `pid` is reaped: whether its memory limit killed any of its processes
    /// (`None`: it had no pooled pair). Every process of the call is gone (its PID namespace
    /// ended with its init), so the pair is empty and serves the next call.
    pub(super) fn release(&mut self, pid: i32) -> Option<bool> {
        let mut pair = self.held.remove(&pid)?;
        let now = cgroup::oom_kills_of(&pair.name);
        let oom = now > pair.oom_kills;
        pair.oom_kills = now;
        if self.idle.len() < MAX_POOLED_CGROUPS {
            self.idle.push(pair);
        } else {
            cgroup::remove(&pair.name);
        }
        Some(oom)
    }

    /// Removes every idle pair (the worker is gone; pairs still in use are swept at its next
    /// start, their zygote being gone).
    pub(super) fn remove_idle(&mut self) {
        for pair in self.idle.drain(..) {
            cgroup::remove(&pair.name);
        }
    }
}

/// The pool of network namespaces.
pub(super) struct Nets {
    /// This process's own network namespace.
    home: OwnedFd,
    /// Idle namespaces, oldest first, each for the function (its bundle) whose executors used
    /// it.
    idle: VecDeque<(PathBuf, OwnedFd)>,
    /// The namespace each unreaped child holds, and its pool (`None`: not reused).
    held: HashMap<i32, (Option<PathBuf>, OwnedFd)>,
}

impl Nets {
    /// An empty pool, for namespaces made from `home` (this process's own).
    pub(super) fn new(home: OwnedFd) -> Self {
        Nets {
            home,
            idle: VecDeque::new(),
            held: HashMap::new(),
        }
    }

    /// An idle namespace of `pool` (the function's bundle), or a new one.
    pub(super) fn take(&mut self, pool: Option<&PathBuf>) -> Result<OwnedFd, Error> {
        let reused = pool.and_then(|key| {
            let at = self.idle.iter().rposition(|(k, _)| k == key)?;
            self.idle.remove(at).map(|(_, net)| net)
        });
        match reused {
            Some(net) => Ok(net),
            None => self.create(),
        }
    }

    /// A new network namespace with loopback up, left again at once.
    fn create(&self) -> Result<OwnedFd, Error> {
        sys::call(
            "unshare(NET)",
            nix::sched::unshare(CloneFlags::CLONE_NEWNET),
        )?;
        let made = sys::open_namespace("/proc/self/ns/net");
        let up = sys::loopback_up();
        sys::call(
            "setns(home NET)",
            nix::sched::setns(&self.home, CloneFlags::CLONE_NEWNET),
        )?;
        up?;
        made
    }

    /// Records the namespace the child `pid` holds, and its pool (`None`: not reused).
    pub(super) fn hold(&mut self, pid: i32, pool: Option<PathBuf>, net: OwnedFd) {
        self.held.insert(pid, (pool, net));
    }

    /// Once the child `pid` is reaped: its namespace goes back to its pool, if it has one.
    pub(super) fn release(&mut self, pid: i32) {
        if let Some((Some(key), net)) = self.held.remove(&pid) {
            self.idle.push_back((key, net));
            if self.idle.len() > MAX_POOLED_NETNS {
                self.idle.pop_front();
            }
        }
    }
}
