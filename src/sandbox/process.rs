//! A started executor ([`Child`]) and the two ways to start one: [`spawn`] (`posix_spawn` of a
//! program, the shim or the function itself) and [`spawn_in_zygote`] (a fork of the sandbox
//! zygote, which then also reaps it and looks after its cgroups).
//!
//! A child is watched through a pidfd, killed as a whole process group, and never reaped twice
//! (its pid, and so its group id, may belong to another process by then).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::sys::{self, Error};
use super::zygote::Zygote;

/// Who reaps a child.
#[derive(Clone, Copy)]
enum Parent {
    /// This process (`posix_spawn`).
    Us,
    /// The sandbox zygote of this generation, which forked it.
    Zygote(&'static Zygote, u64),
}

/// A started executor: its pid (also its process group and session id), a pidfd to watch its
/// exit, and the parent's ends of its stdio pipes.
pub struct Child {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    /// For a zygote's child: readable once the function has ended (see [`Child::exited`]).
    ended: Option<AsyncFd<OwnedFd>>,
    /// Whether nothing of the call runs once `ended` is readable (its init ended the rest).
    contained: bool,
    reaped: bool,
    /// Whether [`Child::kill_group`] was sent: its reap then waits for the exit itself, not
    /// for a report its init may still have written as it died.
    killed: std::sync::atomic::AtomicBool,
    parent: Parent,
    /// What the zygote said, when reaping, of the call's memory limit (`None`: not its cgroups).
    memory_killed: Option<bool>,
    /// What it used, once reaped by [`Child::reap`].
    usage: Option<sys::Usage>,
    /// The write end of the child's stdin.
    pub stdin: Option<OwnedFd>,
    /// The read end of the child's stdout.
    pub stdout: Option<OwnedFd>,
    /// The read end of the child's stderr.
    pub stderr: Option<OwnedFd>,
}

/// The three pipes of a child's stdio: the child's ends (stdin's read end, stdout's and
/// stderr's write ends) and ours.
struct Pipes {
    theirs: [OwnedFd; 3],
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Pipes {
    fn new() -> Result<Self, Error> {
        let (stdin_r, stdin_w) = sys::pipe()?;
        let (stdout_r, stdout_w) = sys::pipe()?;
        let (stderr_r, stderr_w) = sys::pipe()?;
        Ok(Pipes {
            theirs: [stdin_r, stdout_w, stderr_w],
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        })
    }

    /// The child's ends, to hand over.
    fn theirs(&self) -> [std::os::fd::BorrowedFd<'_>; 3] {
        [
            self.theirs[0].as_fd(),
            self.theirs[1].as_fd(),
            self.theirs[2].as_fd(),
        ]
    }

    /// The started child, once its ends have been handed over (and are closed here).
    fn into_child(self, pid: Pid, pidfd: AsyncFd<OwnedFd>, parent: Parent) -> Child {
        drop(self.theirs);
        Child {
            pid,
            pidfd,
            ended: None,
            contained: false,
            reaped: false,
            killed: std::sync::atomic::AtomicBool::new(false),
            parent,
            memory_killed: None,
            usage: None,
            stdin: Some(self.stdin),
            stdout: Some(self.stdout),
            stderr: Some(self.stderr),
        }
    }
}

/// Registers a pidfd (or a report pipe) with the async runtime.
fn watch(pidfd: OwnedFd) -> Result<AsyncFd<OwnedFd>, Error> {
    // SAFETY: `OwnedFd::as_raw_fd` always returns the one fd it owns, open until it drops.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }.map_err(|e| {
        Error::Call {
            call: "epoll_ctl(pidfd)",
            errno: sys::errno_of(&e.into_parts().1),
        }
    })
}

/// Waits until `fd` is readable (it stays so: nothing reads it).
async fn readable(fd: &AsyncFd<OwnedFd>) -> Result<(), Error> {
    let guard = fd.readable().await.map_err(|e| Error::Call {
        call: "epoll_wait(pidfd)",
        errno: sys::errno_of(&e),
    })?;
    drop(guard);
    Ok(())
}

/// Starts `program` with `argv` and exactly `envp`, in `cwd`, in a new session.
pub fn spawn(
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
    cwd: &CStr,
) -> Result<Child, Error> {
    let pipes = Pipes::new()?;
    let pid = sys::posix_spawn(program, argv, envp, cwd, pipes.theirs())?;
    match sys::pidfd_open(pid).and_then(watch) {
        Ok(pidfd) => Ok(pipes.into_child(pid, pidfd, Parent::Us)),
        Err(e) => {
            // Without a pidfd we cannot watch it: end it now rather than leak it.
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = sys::reap(pid.as_raw());
            Err(e)
        }
    }
}

/// Has the sandbox zygote fork a shim for `argv` (a [`super::shim::wrap`] command line) with
/// exactly `envp`, in `cwd`, in a new session: what [`spawn`] does, without an `exec` of faasd.
pub fn spawn_in_zygote(
    zygote: &'static Zygote,
    argv: &[CString],
    envp: &[CString],
    cwd: &CStr,
) -> Result<Child, Error> {
    let pipes = Pipes::new()?;
    let (spawned, generation) = zygote.spawn(argv, envp, cwd, pipes.theirs())?;
    let pid = Pid::from_raw(spawned.pid);
    let ended = spawned.ended.map(watch).transpose();
    match watch(spawned.pidfd).and_then(|pidfd| Ok((pidfd, ended?))) {
        Ok((pidfd, ended)) => {
            let mut child = pipes.into_child(pid, pidfd, Parent::Zygote(zygote, generation));
            child.ended = ended;
            child.contained = spawned.contained;
            Ok(child)
        }
        Err(e) => {
            zygote.kill(pid.as_raw(), generation);
            Err(e)
        }
    }
}

impl Child {
    /// Waits until the child has exited, without reaping it: while it is an unreaped zombie
    /// its pid (and so its process group id) cannot be reused, so the group can still be
    /// killed safely. A zygote's child counts as exited once its init has reported how the
    /// function ended: init then only exits, tearing its namespaces down, which the call need
    /// not wait for (its group is killed through the pidfd, which names only it).
    pub async fn exited(&self) -> Result<(), Error> {
        // A pidfd turns readable when the process exits and stays readable; so does the
        // report pipe, which nothing here reads.
        match &self.ended {
            Some(ended) => tokio::select! {
                r = readable(&self.pidfd) => r,
                r = readable(ended) => r,
            },
            None => readable(&self.pidfd).await,
        }
    }

    /// Whether nothing of the call runs any more: its init, the init of the call's PID
    /// namespace, has reported, after ending every other process in it. The group then needs
    /// no kill, and a sandbox that serves another call lives on for it.
    pub fn finished_contained(&self) -> bool {
        self.contained
            && self
                .ended
                .as_ref()
                .is_some_and(|ended| sys::readable_now(ended.get_ref().as_fd()))
    }

    /// Whether the sandbox's memory limit killed a process of the call, once the child is
    /// reaped; a shim's own cgroups (no zygote) are removed here too.
    pub fn out_of_memory(&self) -> bool {
        match self.memory_killed {
            Some(killed) => killed,
            None => super::cgroup::finish(self.pid()),
        }
    }

    /// What the child used (its CPU time and peak memory, with those of the descendants that
    /// were waited for), once [`Child::reap`] has collected it.
    pub fn usage(&self) -> Option<sys::Usage> {
        self.usage
    }

    /// Whether the sandbox zygote forked the child (and so looks after its cgroups).
    pub fn forked_by_zygote(&self) -> bool {
        matches!(self.parent, Parent::Zygote(..))
    }

    /// The child's pid (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Whether the child has exited, without waiting.
    pub fn has_exited(&self) -> bool {
        sys::has_exited(self.pidfd.get_ref().as_fd())
    }

    /// Sends SIGKILL to the child's whole process group (not once it is reaped: its pid, and so
    /// the group id, may have been reused).
    pub fn kill_group(&self) {
        if self.reaped {
            return;
        }
        self.killed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Parent::Zygote(zygote, generation) = self.parent {
            // Through the pidfd, which cannot name another process; a child the zygote has
            // just forked may not have made its session yet. Its group only while its zygote
            // runs: a dead zygote's children were reaped by someone else, freeing their pids.
            // An error is ESRCH: reaped already (by whoever took over a dead zygote's children).
            let sent = sys::pidfd_kill(self.pidfd.get_ref().as_fd());
            if sent.is_err() || !zygote.is_current(generation) {
                return;
            }
        }
        // ESRCH (the group is already gone) is the normal case after a clean exit.
        let _ = killpg(self.pid, Signal::SIGKILL);
    }

    /// Ends an executor: kills its process group, reaps it, then, for a `sandboxed` one the
    /// zygote did not fork, removes the cgroups it made (empty by then; a zygote recycles its
    /// children's cgroups itself). Does nothing once reaped.
    pub fn end_executor(&mut self, sandboxed: bool) {
        let sandboxed = sandboxed && !self.forked_by_zygote();
        let pid = self.pid();
        self.kill_and_reap_then(move || {
            if sandboxed {
                super::cgroup::finish(pid);
            }
        });
    }

    /// Kills the process group and reaps the child, then runs `after`; the reap (short, but a
    /// blocking wait) runs off the async threads when there are any. Does nothing once reaped.
    pub fn kill_and_reap_then(&mut self, after: impl FnOnce() + Send + 'static) {
        if self.reaped {
            return;
        }
        self.kill_group();
        self.reaped = true;
        let pid = self.pid.as_raw();
        let parent = self.parent;
        // The zygote reaps only a child that has ended; wait for that on a copy of the pidfd.
        let pidfd = self.pidfd.get_ref().try_clone().ok();
        let finish = move || {
            match (parent, pidfd) {
                (Parent::Zygote(zygote, generation), Some(pidfd)) => {
                    sys::wait_exited(pidfd.as_fd());
                    if let Ok((_, None, _)) = zygote.reap(pid, generation) {
                        // Cgroups the child made itself, named by its pid.
                        super::cgroup::finish(pid as u32);
                    }
                }
                // No copy of the pidfd to wait on: the zygote kills and reaps it.
                (Parent::Zygote(zygote, generation), None) => zygote.kill(pid, generation),
                (Parent::Us, _) => drop(sys::reap(pid)),
            }
            after();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(finish)),
            Err(_) => finish(),
        }
    }

    /// Collects the exit status (blocks until the child has exited: call after [`exited`] or
    /// after a SIGKILL). Reaping twice is refused (the pid may belong to another process by
    /// then).
    ///
    /// [`exited`]: Child::exited
    pub fn reap(&mut self) -> Result<ExitStatus, Error> {
        use std::os::unix::process::ExitStatusExt;
        if self.reaped {
            return Err(Error::Call {
                call: "waitpid (already reaped)",
                errno: Errno::ECHILD,
            });
        }
        let status = match self.parent {
            Parent::Zygote(zygote, generation) => {
                let pid = self.pid.as_raw();
                let killed = self.killed.load(std::sync::atomic::Ordering::Relaxed);
                match &self.ended {
                    // A killed sandbox is reaped once gone, never taken back as one that
                    // serves another call.
                    Some(ended) if !killed => {
                        sys::wait_either(self.pidfd.get_ref().as_fd(), ended.get_ref().as_fd())
                    }
                    _ => sys::wait_exited(self.pidfd.get_ref().as_fd()),
                }
                // The report pipe also turns readable when init dies without reporting: the
                // zygote then refuses while it has not ended; asked again once it has.
                let reaped = match zygote.reap(pid, generation) {
                    Err(e) if e.errno() == Errno::EAGAIN => {
                        sys::wait_exited(self.pidfd.get_ref().as_fd());
                        zygote.reap(pid, generation)
                    }
                    reaped => reaped,
                };
                reaped.map(|(status, oom, usage)| {
                    self.memory_killed = oom;
                    self.usage = Some(usage);
                    status
                })
            }
            Parent::Us => sys::reap_with_usage(self.pid.as_raw()).map(|(status, usage)| {
                self.usage = Some(usage);
                ExitStatus::from_raw(status)
            }),
        };
        self.reaped = true;
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Dropped mid-run (the call was cancelled): nothing of it may outlive us.
        self.kill_and_reap_then(|| {});
    }
}
