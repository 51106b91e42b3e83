//! Ready sandboxes: after a spawn, the zygote prepares the next call's sandbox for the same
//! configuration while the current call runs, so a cold call's critical path is only "hand over
//! stdio, fork the function, exec".
//!
//! A ready sandbox is a forked child that has already done everything that does not depend on
//! the call ([`crate::sandbox::shim::prepare_init`]: it is the init of a new PID namespace,
//! sits in its pooled cgroups and network namespace, in fresh mount, IPC and UTS namespaces,
//! with its own fresh `/tmp` and `/proc`, pivoted into a copy of the template root), and waits
//! on a socket for its call: the function's command line and environment, with its stdin,
//! stdout and stderr as `SCM_RIGHTS` (a [`Request::Spawn`] frame). Nothing of a call is in it
//! before that frame, and it serves exactly one call, so no state passes between calls.
//!
//! [`ReadySandboxes`] holds at most one per configuration (the shim's config, which names the
//! function's bundle and every limit), at most [`MAX_READY`] in all, each for at most
//! [`READY_IDLE`]: an idle worker keeps none.

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
    /// When it was forked.
    pub since: Instant,
}

/// The ready sandboxes, by configuration (the shim's config as JSON).
#[derive(Default)]
pub(super) struct ReadySandboxes {
    by_config: HashMap<Vec<u8>, Ready>,
}

impl ReadySandboxes {
    /// Takes the ready sandbox for `config`, if there is one.
    pub(super) fn take(&mut self, config: &[u8]) -> Option<Ready> {
        self.by_config.remove(config)
    }

    /// Whether one is ready for `config`.
    pub(super) fn has(&self, config: &[u8]) -> bool {
        self.by_config.contains_key(config)
    }

    /// Keeps `ready` for `config`; returns the sandbox it displaced to keep within
    /// [`MAX_READY`] (the oldest), for the caller to end.
    pub(super) fn put(&mut self, config: Vec<u8>, ready: Ready) -> Option<Ready> {
        let displaced = if self.by_config.len() >= MAX_READY {
            let oldest = self
                .by_config
                .iter()
                .min_by_key(|(_, r)| r.since)
                .map(|(k, _)| k.clone());
            oldest.and_then(|k| self.by_config.remove(&k))
        } else {
            None
        };
        self.by_config.insert(config, ready);
        displaced
    }

    /// Removes and returns those idle past [`READY_IDLE`] (all of them with `everything`).
    pub(super) fn expired(&mut self, everything: bool) -> Vec<Ready> {
        let old: Vec<Vec<u8>> = self
            .by_config
            .iter()
            .filter(|(_, r)| everything || r.since.elapsed() >= READY_IDLE)
            .map(|(k, _)| k.clone())
            .collect();
        old.iter()
            .filter_map(|k| self.by_config.remove(k))
            .collect()
    }

    /// How long until the next one expires (`None`: none is held).
    pub(super) fn next_expiry(&self) -> Option<Duration> {
        self.by_config
            .values()
            .map(|r| READY_IDLE.saturating_sub(r.since.elapsed()))
            .min()
    }
}

/// The forked child of a ready sandbox: the layers that do not depend on the call, then waits
/// for the call on `control` and runs it as the shim's init would. A set-up failure is told on
/// the call's stderr, as without a ready sandbox. Returns the exit status to end with.
pub(super) fn child(
    config: &Config,
    prepared: &Prepared,
    net: Option<&OwnedFd>,
    report: OwnedFd,
    control: OwnedFd,
) -> i32 {
    let setup = set_up(net, &report, &control).and_then(|()| shim::prepare_init(config, prepared));
    // A sandbox that could not be prepared ends now, unused: the zygote sees it gone and
    // spawns the call cold, which meets the same failure and tells it on the call's stderr.
    // Else it says it is prepared, and only then can it be handed a call.
    if setup.is_err() || nix::unistd::write(&control, PREPARED).is_err() {
        return shim::SETUP_FAILED;
    }
    let Some((argv, env, stdio)) = wait_for_call(&control) else {
        // The zygote ended this sandbox unused, or what it sent could not be read: either way
        // no call ran, which a status of 0 would claim.
        return shim::SETUP_FAILED;
    };
    let started =
        take_stdio(stdio, control).and_then(|()| shim::start_and_wait(config, &argv, &env, report));
    match started {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{}{e}", shim::ERROR_PREFIX);
            shim::SETUP_FAILED
        }
    }
}

/// The ready child's own set-up: a new session, nothing of the zygote on 0-2 (`/dev/null`
/// until the call's stdio arrives), the pooled network namespace, every fd closed but 0-2,
/// `report` and `control`.
fn set_up(net: Option<&OwnedFd>, report: &OwnedFd, control: &OwnedFd) -> Result<(), Error> {
    sys::call("setsid", nix::unistd::setsid())?;
    let null = sys::call(
        "open(/dev/null)",
        nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ),
    )?;
    for target in 0..3 {
        sys::dup2("dup2(/dev/null)", null.as_fd(), target)?;
    }
    drop(null);
    if let Some(net) = net {
        sys::call(
            "setns(pooled NET)",
            nix::sched::setns(net, nix::sched::CloneFlags::CLONE_NEWNET),
        )?;
    }
    sys::close_all_but(&[report.as_raw_fd(), control.as_raw_fd()])
}

/// Puts the call's stdio on 0-2, and closes the originals and the socket.
fn take_stdio(stdio: Vec<OwnedFd>, control: OwnedFd) -> Result<(), Error> {
    for (fd, target) in stdio.iter().zip(0..) {
        sys::dup2("dup2", fd.as_fd(), target)?;
    }
    drop((stdio, control));
    Ok(())
}

/// The function's command line, environment and stdio, the call's frame; `None` when the
/// zygote closed the socket instead (or sent something else).
type Call = (Vec<OsString>, Vec<OsString>, Vec<OwnedFd>);

fn wait_for_call(control: &OwnedFd) -> Option<Call> {
    match read_frame::<Request>(control.as_fd()) {
        Ok(Some((Ok(Request::Spawn { argv, env, .. }), stdio))) if stdio.len() == 3 => {
            let strings = |v: Vec<Vec<u8>>| v.into_iter().map(OsString::from_vec).collect();
            Some((strings(argv), strings(env), stdio))
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

/// The frame that hands a call to a ready sandbox, and its fds.
pub(super) fn call_frame(
    argv: &[OsString],
    env: &[OsString],
    stdio: &[OwnedFd],
) -> (Request, Vec<RawFd>) {
    let bytes = |v: &[OsString]| v.iter().map(|s| s.clone().into_vec()).collect();
    let frame = Request::Spawn {
        argv: bytes(argv),
        env: bytes(env),
        cwd: Vec::new(),
    };
    (frame, stdio.iter().map(|fd| fd.as_raw_fd()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(age: Duration) -> Ready {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        Ready {
            pid: 0,
            pidfd: OwnedFd::from(a),
            control: OwnedFd::from(b),
            since: Instant::now()
                .checked_sub(age)
                .expect("an instant in the past"),
        }
    }

    #[test]
    fn one_per_config_the_oldest_displaced_past_the_cap_and_the_idle_expire() {
        let mut pool = ReadySandboxes::default();
        for n in 0..MAX_READY {
            let age = Duration::from_millis(100 * (MAX_READY - n) as u64);
            assert!(pool.put(vec![n as u8], ready(age)).is_none());
        }
        assert!(pool.has(&[0]));
        // Config 0 is the oldest: it makes room for a new one.
        let displaced = pool.put(vec![99], ready(Duration::ZERO));
        assert!(displaced.is_some());
        assert!(!pool.has(&[0]) && pool.has(&[99]));
        assert!(pool.take(&[99]).is_some() && pool.take(&[99]).is_none());
        assert!(pool.expired(false).is_empty(), "none is idle yet");
        pool.put(vec![42], ready(READY_IDLE));
        assert_eq!(pool.next_expiry(), Some(Duration::ZERO));
        assert_eq!(pool.expired(false).len(), 1);
        assert_eq!(pool.expired(true).len(), MAX_READY - 1);
        assert_eq!(pool.next_expiry(), None);
    }
}
