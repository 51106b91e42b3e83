//! The raw system calls of process start-up, each wrapper's error naming the call.
//!
//! Executors start through `posix_spawn(3)`, which glibc and musl implement with
//! `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the parent's memory until it execs, so a
//! start costs no page-table copy and no copy-on-write faults in the busy, multi-threaded
//! server (a plain `fork` here spent more time in those faults than the function ran). The
//! child gets a new session and process group, default signal dispositions and an empty signal
//! mask, its pipes on fds 0-2, and its working directory, all applied by the C library between
//! clone and exec. Its exit is watched through a pidfd.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// A failed system call, named.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {errno}")]
pub struct SysError {
    /// The call that failed.
    pub call: &'static str,
    /// Its errno.
    pub errno: Errno,
}

fn check(call: &'static str, rc: libc::c_int) -> Result<(), SysError> {
    // posix_spawn* return the error number instead of setting errno.
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError {
            call,
            errno: Errno::from_raw(rc),
        })
    }
}

/// A started executor: its pid (also its process group and session id), a pidfd to watch its
/// exit, and the parent's ends of its stdio pipes.
pub struct Child {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    reaped: bool,
    /// The sandbox zygote and its generation, when it forked the child (and so reaps it).
    zygote: Option<(&'static crate::sandbox::zygote::Zygote, u64)>,
    /// What the zygote said, when reaping, of the call's memory limit (`None`: not its cgroups).
    memory_killed: Option<bool>,
    /// The write end of the child's stdin.
    pub stdin: Option<OwnedFd>,
    /// The read end of the child's stdout.
    pub stdout: Option<OwnedFd>,
    /// The read end of the child's stderr.
    pub stderr: Option<OwnedFd>,
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> Result<Self, SysError> {
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: init writes a valid object into the uninitialised storage.
        check("posix_spawn_file_actions_init", unsafe {
            libc::posix_spawn_file_actions_init(raw.as_mut_ptr())
        })?;
        // SAFETY: initialised by the successful call above.
        Ok(FileActions(unsafe { raw.assume_init() }))
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the object was initialised in `new` and is destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> Result<Self, SysError> {
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: init writes a valid object into the uninitialised storage.
        check("posix_spawnattr_init", unsafe {
            libc::posix_spawnattr_init(raw.as_mut_ptr())
        })?;
        // SAFETY: initialised by the successful call above.
        Ok(Attributes(unsafe { raw.assume_init() }))
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: the object was initialised in `new` and is destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SysError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| SysError {
        call: "pipe2",
        errno,
    })
}

/// Has the sandbox zygote fork a shim for `argv` (a [`crate::sandbox::shim::wrap`] command line)
/// with exactly `envp`, in `cwd`, in a new session: what [`spawn`] does, without an `exec` of
/// faasd.
pub fn spawn_in_zygote(
    zygote: &'static crate::sandbox::zygote::Zygote,
    argv: &[CString],
    envp: &[CString],
    cwd: &CStr,
) -> Result<Child, SysError> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (pid, pidfd, generation) = zygote.spawn(
        argv,
        envp,
        cwd,
        [stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()],
    )?;
    drop((stdin_r, stdout_w, stderr_w));
    let pid = Pid::from_raw(pid);
    // SAFETY: `OwnedFd::as_raw_fd` always returns the one fd it owns, open until it drops.
    let pidfd =
        match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                drop(e);
                zygote.kill(pid.as_raw(), generation);
                return Err(SysError {
                    call: "epoll_ctl(pidfd)",
                    errno: Errno::EIO,
                });
            }
        };
    Ok(Child {
        pid,
        pidfd,
        reaped: false,
        zygote: Some((zygote, generation)),
        memory_killed: None,
        stdin: Some(stdin_w),
        stdout: Some(stdout_r),
        stderr: Some(stderr_r),
    })
}

/// Blocks until the process behind `pidfd` has exited.
fn wait_exited(pidfd: &OwnedFd) {
    let mut fd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the pidfd stays open for the call.
    while unsafe { libc::poll(&mut fd, 1, -1) } < 0 && Errno::last() == Errno::EINTR {}
}

/// Starts `program` with `argv` and exactly `envp`, in `cwd`, in a new session.
pub fn spawn(
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
    cwd: &CStr,
) -> Result<Child, SysError> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;

    let mut actions = FileActions::new()?;
    for (fd, target) in [(&stdin_r, 0), (&stdout_w, 1), (&stderr_w, 2)] {
        // SAFETY: `actions` is initialised; the fds stay open until posix_spawn returns. dup2
        // onto 0-2 clears close-on-exec on the copies; the originals (O_CLOEXEC) close at exec.
        check("posix_spawn_file_actions_adddup2", unsafe {
            libc::posix_spawn_file_actions_adddup2(&mut actions.0, fd.as_raw_fd(), target)
        })?;
    }
    // SAFETY: `actions` is initialised; `cwd` is a valid C string that outlives the spawn.
    check("posix_spawn_file_actions_addchdir_np", unsafe {
        libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, cwd.as_ptr())
    })?;

    let mut attrs = Attributes::new()?;
    let flags = libc::POSIX_SPAWN_SETSID as libc::c_int
        | libc::POSIX_SPAWN_SETSIGMASK
        | libc::POSIX_SPAWN_SETSIGDEF;
    // SAFETY: `attrs` is initialised; the flag bits are the C library's own constants.
    check("posix_spawnattr_setflags", unsafe {
        libc::posix_spawnattr_setflags(&mut attrs.0, flags as libc::c_short)
    })?;
    let empty: libc::sigset_t = unsafe {
        // SAFETY: sigemptyset fully initialises the set.
        let mut set = std::mem::MaybeUninit::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    };
    let all: libc::sigset_t = unsafe {
        // SAFETY: sigfillset fully initialises the set.
        let mut set = std::mem::MaybeUninit::uninit();
        libc::sigfillset(set.as_mut_ptr());
        set.assume_init()
    };
    // SAFETY: `attrs` is initialised and the sets are valid for the calls.
    check("posix_spawnattr_setsigmask", unsafe {
        libc::posix_spawnattr_setsigmask(&mut attrs.0, &empty)
    })?;
    // Every signal back to its default: the server ignores SIGPIPE, its functions must not.
    // SAFETY: as above.
    check("posix_spawnattr_setsigdefault", unsafe {
        libc::posix_spawnattr_setsigdefault(&mut attrs.0, &all)
    })?;

    let mut argv_ptrs: Vec<*mut libc::c_char> =
        argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> =
        envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid and NUL-terminated for the duration of the call; the
    // argv and envp arrays end with a null pointer; `actions` and `attrs` are initialised.
    check("posix_spawn", unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.0,
            &attrs.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    })?;
    let pid = Pid::from_raw(pid);
    drop((stdin_r, stdout_w, stderr_w));

    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd we cannot watch it: end it now rather than leak it.
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = reap(pid);
            return Err(e);
        }
    };
    Ok(Child {
        pid,
        pidfd,
        reaped: false,
        zygote: None,
        memory_killed: None,
        stdin: Some(stdin_w),
        stdout: Some(stdout_r),
        stderr: Some(stderr_r),
    })
}

fn pidfd_open(pid: Pid) -> Result<AsyncFd<OwnedFd>, SysError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(SysError {
            call: "pidfd_open",
            errno: Errno::last(),
        });
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    // SAFETY: `OwnedFd::as_raw_fd` always returns the one fd it owns, open until it drops.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| {
        SysError {
            call: "epoll_ctl(pidfd)",
            errno: Errno::from_raw(e.into_parts().1.raw_os_error().unwrap_or(libc::EIO)),
        }
    })
}

fn reap(pid: Pid) -> Result<ExitStatus, SysError> {
    use std::os::unix::process::ExitStatusExt;
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if rc == pid.as_raw() {
            return Ok(ExitStatus::from_raw(status));
        }
        let errno = Errno::last();
        if errno != Errno::EINTR {
            return Err(SysError {
                call: "waitpid",
                errno,
            });
        }
    }
}

impl Child {
    /// Waits until the child has exited, without reaping it: while it is an unreaped zombie
    /// its pid (and so its process group id) cannot be reused, so the group can still be
    /// killed safely.
    pub async fn exited(&self) -> Result<(), SysError> {
        // A pidfd turns readable when the process exits and stays readable.
        let guard = self.pidfd.readable().await.map_err(|e| SysError {
            call: "epoll_wait(pidfd)",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        drop(guard);
        Ok(())
    }

    /// Whether the sandbox's memory limit killed a process of the call, once the child is
    /// reaped; a shim's own cgroups (no zygote) are removed here too.
    pub fn out_of_memory(&self) -> bool {
        match self.memory_killed {
            Some(killed) => killed,
            None => super::cgroup::finish(self.pid()),
        }
    }

    /// Whether the sandbox zygote forked the child (and so looks after its cgroups).
    pub fn forked_by_zygote(&self) -> bool {
        self.zygote.is_some()
    }

    /// The child's pid (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Whether the child has exited, without waiting.
    pub fn has_exited(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout; the pidfd stays open for the call.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        ready > 0 && fd.revents & libc::POLLIN != 0
    }

    /// Sends SIGKILL to the child's whole process group (not once it is reaped: its pid, and so
    /// the group id, may have been reused).
    pub fn kill_group(&self) {
        if self.reaped {
            return;
        }
        if let Some((zygote, generation)) = self.zygote {
            // Through the pidfd, which cannot name another process; a child the zygote has
            // just forked may not have made its session yet. Its group only while its zygote
            // runs: a dead zygote's children were reaped by someone else, freeing their pids.
            // SAFETY: pidfd_send_signal on our own open pidfd, no siginfo, no flags.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.get_ref().as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
            // ESRCH: reaped already (by whoever took over a dead zygote's children).
            if sent != 0 || !zygote.is_current(generation) {
                return;
            }
        }
        // ESRCH (the group is already gone) is the normal case after a clean exit.
        let _ = killpg(self.pid, Signal::SIGKILL);
    }

    /// Collects the exit status (blocks until the child has exited: call after [`exited`] or
    /// after a SIGKILL).
    ///
    /// [`exited`]: Child::exited
    /// Kills the process group and reaps the child, then runs `after`; the reap (short, but a
    /// blocking wait) runs off the async threads when there are any. Does nothing once reaped.
    pub fn kill_and_reap_then(&mut self, after: impl FnOnce() + Send + 'static) {
        if self.reaped {
            return;
        }
        self.kill_group();
        self.reaped = true;
        let pid = self.pid;
        let zygote = self.zygote;
        // The zygote reaps only a child that has ended; wait for that on a copy of the pidfd.
        let pidfd = self.pidfd.get_ref().try_clone().ok();
        let finish = move || {
            match (zygote, pidfd) {
                (Some((zygote, generation)), Some(pidfd)) => {
                    wait_exited(&pidfd);
                    if let Ok((_, None)) = zygote.reap(pid.as_raw(), generation) {
                        // Cgroups the child made itself, named by its pid.
                        super::cgroup::finish(pid.as_raw() as u32);
                    }
                }
                // No copy of the pidfd to wait on: the zygote kills and reaps it.
                (Some((zygote, generation)), None) => zygote.kill(pid.as_raw(), generation),
                (None, _) => drop(reap(pid)),
            }
            after();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(finish)),
            Err(_) => finish(),
        }
    }

    /// Reaping twice is refused (the pid may belong to another process by then).
    pub fn reap(&mut self) -> Result<ExitStatus, SysError> {
        if self.reaped {
            return Err(SysError {
                call: "waitpid (already reaped)",
                errno: Errno::ECHILD,
            });
        }
        let status = match self.zygote {
            Some((zygote, generation)) => {
                wait_exited(self.pidfd.get_ref());
                zygote
                    .reap(self.pid.as_raw(), generation)
                    .map(|(status, oom)| {
                        self.memory_killed = oom;
                        status
                    })
            }
            None => reap(self.pid),
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
