//! Ready sandboxes: after a spawn, the zygote prepares the next call's sandbox for the same
//! configuration while the current call runs, so a cold call's critical path is only "hand over
//! stdio, start the function, exec".
//!
//! A ready sandbox is a forked child that has already done everything that does not depend on
//! the call ([`crate::sandbox::shim::prepare_init`]: it is the init of a new PID namespace,
//! sits in its pooled cgroups and network namespace, in fresh mount, IPC and UTS namespaces,
//! with its own fresh `/tmp` and `/proc`, pivoted into a copy of the template root), and waits
//! on a socket for its call: the function's command line and environment, with its stdin,
//! stdout, stderr and report pipe as `SCM_RIGHTS` (a [`Request::Spawn`] frame). Nothing of a
//! call is in it before that frame.
//!
//! A sandbox whose function runs without privileges ([`shim::serves_again`]) then serves the
//! next call of its configuration: once the call has ended, init has killed and reaped every
//! other process of the namespace and reported, it takes a new IPC namespace and (unless the
//! call left it untouched) a fresh `/tmp`, says it is prepared again, and the zygote keeps it
//! among the ready ones once the worker has reaped the call. Every call gets new processes, a
//! new `/tmp`, a new IPC namespace, its own stdio and report; what it shares with the last call
//! of the same function is what that function could not change (`docs/security.md`).
//!
//! [`ReadySandboxes`] holds at most [`MAX_READY_PER_CONFIG`] per configuration (the shim's
//! config, which names the function's bundle and every limit), at most [`MAX_READY`] in all,
//! each for at most [`READY_IDLE`]: an idle worker keeps none.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

use super::wire::{Request, read_frame};
use crate::sandbox::shim::{self, Config, Prepared};
use crate::sandbox::sys::{self, Error};

/// The most ready sandboxes kept at once (each holds a process, a cgroup pair and a network
/// namespace).
pub(super) const MAX_READY: usize = 8;

/// How long a ready sandbox waits for its call before the zygote ends it.
pub(super) const READY_IDLE: Duration = Duration::from_secs(3);

/// One ready sandbox, as the zygote holds it.
pub(super) struct Ready {
    /// Its pid (the init of its PID namespace).
    pub pid: i32,
    /// A pidfd for it, handed to the worker with the call.
    pub pidfd: OwnedFd,
    /// The zygote's end of its socket: the call goes there.
    pub control: OwnedFd,
    /// When it was forked, or last gave its call back.
    pub since: Instant,
    /// Whether it serves another call once its call has ended ([`shim::serves_again`]).
    pub again: bool,
}

/// The most ready sandboxes kept for one configuration: as many as its calls that run at once,
/// when sandboxes that served a call come back.
pub(super) const MAX_READY_PER_CONFIG: usize = 4;

/// The ready sandboxes, by configuration (the shim's config as JSON).
#[derive(Default)]
pub(super) struct ReadySandboxes {
    by_config: HashMap<Vec<u8>, Vec<Ready>>,
}

impl ReadySandboxes {
    /// Takes a ready sandbox for `config` (the last one kept), if there is one.
    pub(super) fn take(&mut self, config: &[u8]) -> Option<Ready> {
        let ready = self.by_config.get_mut(config)?;
        let taken = ready.pop();
        if ready.is_empty() {
            self.by_config.remove(config);
        }
        taken
    }

    /// Whether one is ready for `config`.
    pub(super) fn has(&self, config: &[u8]) -> bool {
        self.by_config.contains_key(config)
    }

    /// Keeps `ready` for `config`; returns the sandbox it displaced to keep within
    /// [`MAX_READY_PER_CONFIG`] and [`MAX_READY`] (the oldest of its configuration, else the
    /// oldest of all), for the caller to end.
    pub(super) fn put(&mut self, config: Vec<u8>, ready: Ready) -> Option<Ready> {
        let total: usize = self.by_config.values().map(Vec::len).sum();
        let displaced = match self.by_config.get_mut(&config) {
            Some(same) if same.len() >= MAX_READY_PER_CONFIG => Some(same.remove(0)),
            _ if total >= MAX_READY => self.take_oldest(),
            _ => None,
        };
        self.by_config.entry(config).or_default().push(ready);
        displaced
    }

    /// Removes and returns the oldest of all.
    fn take_oldest(&mut self) -> Option<Ready> {
        let (key, at) = self
            .by_config
            .iter()
            .flat_map(|(k, v)| v.iter().enumerate().map(move |(i, r)| (k, i, r.since)))
            .min_by_key(|(_, _, since)| *since)
            .map(|(k, i, _)| (k.clone(), i))?;
        let same = self.by_config.get_mut(&key)?;
        let oldest = same.remove(at);
        if same.is_empty() {
            self.by_config.remove(&key);
        }
        Some(oldest)
    }

    /// Removes and returns those idle past [`READY_IDLE`] (all of them with `everything`).
    pub(super) fn expired(&mut self, everything: bool) -> Vec<Ready> {
        let mut old = Vec::new();
        for ready in self.by_config.values_mut() {
            let (gone, kept): (Vec<Ready>, Vec<Ready>) = std::mem::take(ready)
                .into_iter()
                .partition(|r| everything || r.since.elapsed() >= READY_IDLE);
            old.extend(gone);
            *ready = kept;
        }
        self.by_config.retain(|_, ready| !ready.is_empty());
        old
    }

    /// How long until the next one expires (`None`: none is held).
    pub(super) fn next_expiry(&self) -> Option<Duration> {
        self.by_config
            .values()
            .flatten()
            .map(|r| READY_IDLE.saturating_sub(r.since.elapsed()))
            .min()
    }
}

/// The forked child of a ready sandbox: the layers that do not depend on the call, then waits
/// for the call on `control` and runs it as the shim's init would. A set-up failure is told on
/// the call's stderr, as without a ready sandbox. A sandbox that serves again
/// ([`shim::serves_again`]) then renews its workspace and IPC namespace, says it is prepared
/// again and waits for the next call. Returns the exit status to end with.
pub(super) fn child(
    config: &Config,
    prepared: &Prepared,
    net: Option<&OwnedFd>,
    control: OwnedFd,
) -> i32 {
    let setup = set_up(net, &control).and_then(|()| shim::prepare_init(config, prepared));
    // A sandbox that could not be prepared ends now, unused: the zygote sees it gone and
    // spawns the call cold, which meets the same failure and tells it on the call's stderr.
    // Else it says it is prepared, and only then can it be handed a call.
    if setup.is_err() || nix::unistd::write(&control, PREPARED).is_err() {
        return shim::SETUP_FAILED;
    }
    let again = shim::serves_again(config);
    let mut workspace = shim::WorkspaceState::now();
    loop {
        let Some(call) = wait_for_call(&control) else {
            // The zygote ended this sandbox unused, or what it sent could not be read: either
            // way no call ran, which a status of 0 would claim.
            return shim::SETUP_FAILED;
        };
        let ran = take_stdio(call.stdio)
            .and_then(|()| shim::run_call(config, &call.argv, &call.env, prepared.filter.as_ref()));
        match ran {
            Ok(report) => report.write_to(call.report),
            Err(e) => {
                eprintln!("{}{e}", shim::ERROR_PREFIX);
                return shim::SETUP_FAILED;
            }
        }
        if !again
            || shim::renew(config, &mut workspace).is_err()
            || nix::unistd::write(&control, PREPARED).is_err()
        {
            return 0;
        }
    }
}

/// The ready child's own set-up: a new session, nothing of the zygote on 0-2 (`/dev/null`
/// until the call's stdio arrives), the pooled network namespace, every fd closed but 0-2
/// and `control`.
fn set_up(net: Option<&OwnedFd>, control: &OwnedFd) -> Result<(), Error> {
    sys::call("setsid", nix::unistd::setsid())?;
    sys::stdio_to_null()?;
    if let Some(net) = net {
        sys::call(
            "setns(pooled NET)",
            nix::sched::setns(net, nix::sched::CloneFlags::CLONE_NEWNET),
        )?;
    }
    sys::close_all_but(&[control.as_raw_fd()])
}

/// Puts the call's stdio on 0-2, and closes the originals.
fn take_stdio(stdio: Vec<OwnedFd>) -> Result<(), Error> {
    for (fd, target) in stdio.iter().zip(0..) {
        sys::dup2("dup2", fd.as_fd(), target)?;
    }
    Ok(())
}

/// A call's frame: the function's command line and environment, its stdio, and the write end
/// of the pipe its report goes to.
struct Call {
    argv: Vec<OsString>,
    env: Vec<OsString>,
    stdio: Vec<OwnedFd>,
    report: OwnedFd,
}

/// The next call; `None` when the zygote closed the socket instead (or sent something else).
fn wait_for_call(control: &OwnedFd) -> Option<Call> {
    match read_frame::<Request>(control.as_fd()) {
        Ok(Some((Ok(Request::Spawn { argv, env, .. }), mut fds))) if fds.len() == 4 => {
            let strings = |v: Vec<Vec<u8>>| v.into_iter().map(OsString::from_vec).collect();
            let report = fds.pop()?;
            Some(Call {
                argv: strings(argv),
                env: strings(env),
                stdio: fds,
                report,
            })
        }
        _ => None,
    }
}

/// What a ready sandbox sends on its control socket once it is prepared.
const PREPARED: &[u8] = b"R";

/// Whether the ready sandbox on `control` says it is prepared within `wait` (it may still be
/// preparing when a call comes right after the last); false when it ended instead.
pub(super) fn prepared_within(control: BorrowedFd<'_>, wait: std::time::Duration) -> bool {
    if !sys::readable_within(control, wait) {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!(
        nix::sys::socket::recv(
            control.as_raw_fd(),
            &mut byte,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT
        ),
        Ok(1)
    ) && byte == PREPARED
}

/// The frame that hands a call to a ready sandbox, and its fds: the call's stdio, then the
/// write end of its report pipe.
pub(super) fn call_frame(
    argv: &[OsString],
    env: &[OsString],
    stdio: &[OwnedFd],
    report: &OwnedFd,
) -> (Request, Vec<RawFd>) {
    let bytes = |v: &[OsString]| v.iter().map(|s| s.clone().into_vec()).collect();
    let frame = Request::Spawn {
        argv: bytes(argv),
        env: bytes(env),
        cwd: Vec::new(),
    };
    let fds = stdio.iter().chain(std::iter::once(report));
    (frame, fds.map(|fd| fd.as_raw_fd()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(age: Duration, pid: i32) -> Ready {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        Ready {
            pid,
            pidfd: OwnedFd::from(a),
            control: OwnedFd::from(b),
            since: Instant::now()
                .checked_sub(age)
                .expect("an instant in the past"),
            again: false,
        }
    }

    #[test]
    fn the_oldest_is_displaced_past_the_cap_and_the_idle_expire() {
        let mut pool = ReadySandboxes::default();
        for n in 0..MAX_READY {
            let age = Duration::from_millis(100 * (MAX_READY - n) as u64);
            assert!(pool.put(vec![n as u8], ready(age, n as i32)).is_none());
        }
        assert!(pool.has(&[0]));
        // Config 0 is the oldest: it makes room for a new one.
        let displaced = pool.put(vec![99], ready(Duration::ZERO, 99));
        assert_eq!(displaced.map(|r| r.pid), Some(0));
        assert!(!pool.has(&[0]) && pool.has(&[99]));
        assert!(pool.take(&[99]).is_some() && pool.take(&[99]).is_none());
        assert!(pool.expired(false).is_empty(), "none is idle yet");
        pool.put(vec![42], ready(READY_IDLE, 42));
        assert_eq!(pool.next_expiry(), Some(Duration::ZERO));
        assert_eq!(pool.expired(false).len(), 1);
        assert_eq!(pool.expired(true).len(), MAX_READY - 1);
        assert_eq!(pool.next_expiry(), None);
    }

    #[test]
    fn a_config_keeps_several_the_last_kept_taken_first_up_to_its_cap() {
        let mut pool = ReadySandboxes::default();
        for pid in 0..MAX_READY_PER_CONFIG as i32 {
            assert!(pool.put(vec![1], ready(Duration::ZERO, pid)).is_none());
        }
        // Past its own cap a config gives up its oldest, whatever the others hold.
        let displaced = pool.put(vec![1], ready(Duration::ZERO, 77));
        assert_eq!(displaced.map(|r| r.pid), Some(0));
        assert_eq!(pool.take(&[1]).map(|r| r.pid), Some(77));
        let left = std::iter::from_fn(|| pool.take(&[1])).count();
        assert_eq!(left, MAX_READY_PER_CONFIG - 1);
        assert!(!pool.has(&[1]));
    }
}
