//! The raw system calls of the sandbox, one wrapper each, and [`Error`], the one error type of a
//! failed system call anywhere in `sandbox/` (its variants name the call and its object).
//!
//! Executors start through `posix_spawn(3)` ([`posix_spawn`]), which glibc and musl implement
//! with `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the parent's memory until it execs, so
//! a start costs no page-table copy and no copy-on-write faults in the busy, multi-threaded
//! server (a plain `fork` here spent more time in those faults than the function ran). The
//! child gets a new session and process group, default signal dispositions and an empty signal
//! mask, its pipes on fds 0-2, and its working directory, all applied by the C library between
//! clone and exec. Its exit is watched through a pidfd ([`pidfd_open`]).
//!
//! This file is the bottom of the sandbox: it imports nothing else of faasd.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::unistd::Pid;

/// A failed system call, named with its object; or a request the sandbox zygote could not
/// serve, since executors start through it too.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{call} failed: {errno}")]
    Call {
        /// The call (with its object, where it has a fixed one).
        call: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// A system call on a path failed.
    #[error("{call}({}) failed: {errno}", path.display())]
    Path {
        /// The call.
        call: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// Its errno.
        errno: Errno,
    },
    /// No cgroup hierarchy with the `memory` and `pids` controllers on this machine.
    #[error("no cgroup hierarchy with the memory and pids controllers")]
    NoCgroups,
    /// The shim's command line is not `CONFIG -- PROGRAM ARGS...` with a valid config.
    #[error("reading the sandbox arguments ({what}) failed: EINVAL: Invalid argument")]
    Arguments {
        /// What is wrong with them.
        what: &'static str,
    },
    /// An argument or variable of the function holds a NUL byte.
    #[error("execve (argument with a NUL byte) failed: EINVAL: Invalid argument")]
    NulByte,
    /// A zygote frame over the size limit.
    #[error("a zygote frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The zygote's stream ended inside a frame.
    #[error("the zygote's stream ended inside a frame")]
    FrameTruncated,
    /// A message could not be encoded as a zygote frame.
    #[error("encoding a zygote frame failed: {source}")]
    FrameEncode {
        /// What postcard said.
        #[source]
        source: postcard::Error,
    },
    /// A zygote frame could not be decoded.
    #[error("decoding a zygote frame failed: {source}")]
    FrameDecode {
        /// What postcard said.
        #[source]
        source: postcard::Error,
    },
    /// The zygote answered a request with a reply of another kind.
    #[error("the sandbox zygote answered with an unexpected reply")]
    UnexpectedReply,
    /// The zygote spawned a child but sent no pidfd for it (the child was killed).
    #[error("the sandbox zygote sent no pidfd for its child")]
    MissingPidfd,
    /// The zygote that forked this child is gone (its pids may belong to anyone now).
    #[error("the sandbox zygote that forked this child is gone")]
    ZygoteGone,
    /// The zygote was gone and could not be started again.
    #[error("starting the sandbox zygote again failed")]
    ZygoteRestart,
    /// The lock on the zygote's connection was poisoned.
    #[error("the sandbox zygote's lock is poisoned")]
    ZygoteLock,
    /// Reaping a child that has not ended (the zygote never waits for one).
    #[error("waitpid({pid}) failed: the child has not ended")]
    NotEnded {
        /// Its pid.
        pid: i32,
    },
    /// The zygote's own system call failed, as it reported.
    #[error("in the sandbox zygote: {message}")]
    InZygote {
        /// The zygote's message.
        message: String,
        /// Its errno.
        errno: Errno,
    },
}

impl Error {
    /// The errno that best says what went wrong (for the zygote's replies and for retries).
    pub fn errno(&self) -> Errno {
        match self {
            Error::Call { errno, .. } | Error::Path { errno, .. } => *errno,
            Error::InZygote { errno, .. } => *errno,
            Error::NoCgroups => Errno::ENOENT,
            Error::Arguments { .. } | Error::NulByte => Errno::EINVAL,
            Error::FrameTooLarge { .. } => Errno::EMSGSIZE,
            Error::FrameTruncated => Errno::EPIPE,
            Error::FrameEncode { .. } => Errno::EINVAL,
            Error::FrameDecode { .. } => Errno::EBADMSG,
            Error::UnexpectedReply | Error::MissingPidfd => Errno::EPROTO,
            Error::ZygoteGone | Error::ZygoteRestart => Errno::ECHILD,
            Error::ZygoteLock => Errno::EDEADLK,
            Error::NotEnded { .. } => Errno::EAGAIN,
        }
    }
}

/// The errno of an `io::Error` (EIO for one the kernel did not give).
pub fn errno_of(error: &std::io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}

/// Names the call of a `nix` result.
pub fn call<T>(call: &'static str, result: nix::Result<T>) -> Result<T, Error> {
    result.map_err(|errno| Error::Call { call, errno })
}

/// The error of a call on `path` that returned `error`.
pub fn on_path(call: &'static str, path: &Path, error: &std::io::Error) -> Error {
    Error::Path {
        call,
        path: path.to_owned(),
        errno: errno_of(error),
    }
}

/// The error of a raw call that just failed (from `errno`).
fn last(call: &'static str) -> Error {
    Error::Call {
        call,
        errno: Errno::last(),
    }
}

/// Checks the return of a `posix_spawn*` call, which returns the error number instead of
/// setting errno.
fn check(call: &'static str, rc: libc::c_int) -> Result<(), Error> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Call {
            call,
            errno: Errno::from_raw(rc),
        })
    }
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    call("pipe2", nix::unistd::pipe2(OFlag::O_CLOEXEC))
}

/// `posix_spawn`'s file actions.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    /// Actions that put `stdio` on fds 0-2 and change to `cwd`.
    fn new(stdio: [BorrowedFd<'_>; 3], cwd: &CStr) -> Result<Self, Error> {
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: init writes a valid object into the uninitialised storage.
        check("posix_spawn_file_actions_init", unsafe {
            libc::posix_spawn_file_actions_init(raw.as_mut_ptr())
        })?;
        // SAFETY: initialised by the successful call above.
        let mut actions = FileActions(unsafe { raw.assume_init() });
        for (fd, target) in stdio.iter().zip(0..) {
            // SAFETY: `actions` is initialised; the fds stay open until posix_spawn returns.
            // dup2 onto 0-2 clears close-on-exec on the copies; the originals (O_CLOEXEC) close
            // at exec.
            check("posix_spawn_file_actions_adddup2", unsafe {
                libc::posix_spawn_file_actions_adddup2(&mut actions.0, fd.as_raw_fd(), target)
            })?;
        }
        // SAFETY: `actions` is initialised; `cwd` is a valid C string that outlives the spawn.
        check("posix_spawn_file_actions_addchdir_np", unsafe {
            libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, cwd.as_ptr())
        })?;
        Ok(actions)
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the object was initialised in `new` and is destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawn`'s attributes.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    /// A new session, an empty signal mask and every signal at its default disposition (the
    /// server ignores SIGPIPE, its functions must not).
    fn new() -> Result<Self, Error> {
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: init writes a valid object into the uninitialised storage.
        check("posix_spawnattr_init", unsafe {
            libc::posix_spawnattr_init(raw.as_mut_ptr())
        })?;
        // SAFETY: initialised by the successful call above.
        let mut attrs = Attributes(unsafe { raw.assume_init() });
        let flags = libc::POSIX_SPAWN_SETSID as libc::c_int
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        // SAFETY: `attrs` is initialised; the flag bits are the C library's own constants.
        check("posix_spawnattr_setflags", unsafe {
            libc::posix_spawnattr_setflags(&mut attrs.0, flags as libc::c_short)
        })?;
        // SAFETY: `attrs` is initialised and the sets are valid for the calls.
        check("posix_spawnattr_setsigmask", unsafe {
            libc::posix_spawnattr_setsigmask(&mut attrs.0, &signal_set(false))
        })?;
        // SAFETY: as above.
        check("posix_spawnattr_setsigdefault", unsafe {
            libc::posix_spawnattr_setsigdefault(&mut attrs.0, &signal_set(true))
        })?;
        Ok(attrs)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: the object was initialised in `new` and is destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// The set of every signal (`full`) or of none.
fn signal_set(full: bool) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::uninit();
    // SAFETY: sigfillset and sigemptyset fully initialise the set.
    unsafe {
        if full {
            libc::sigfillset(set.as_mut_ptr());
        } else {
            libc::sigemptyset(set.as_mut_ptr());
        }
        set.assume_init()
    }
}

/// A null-terminated array of pointers to `strings` (valid while they are).
fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
    let mut ptrs: Vec<*mut libc::c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
    ptrs.push(std::ptr::null_mut());
    ptrs
}

/// Starts `program` with `argv` and exactly `envp`, in `cwd`, with `stdio` on fds 0-2, in a new
/// session with default signals; returns its pid.
pub fn posix_spawn(
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
    cwd: &CStr,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<Pid, Error> {
    let actions = FileActions::new(stdio, cwd)?;
    let attrs = Attributes::new()?;
    let (argv_ptrs, envp_ptrs) = (pointers(argv), pointers(envp));
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
    Ok(Pid::from_raw(pid))
}

/// A pidfd for `pid` (which must not be reaped yet, or the pid may name another process).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Error> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(last("pidfd_open"));
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends SIGKILL to the process behind `pidfd` (which, unlike a pid, cannot name another).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>) -> Result<(), Error> {
    // SAFETY: pidfd_send_signal on an open pidfd, no siginfo, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if sent != 0 {
        return Err(last("pidfd_send_signal"));
    }
    Ok(())
}

/// Whether `fd` is readable, waiting at most `timeout_ms` (-1: for ever, 0: not at all).
fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd; the fd stays open for the call (it is borrowed).
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if ready >= 0 || Errno::last() != Errno::EINTR {
            return ready > 0 && poll.revents & libc::POLLIN != 0;
        }
    }
}

/// Blocks until the process behind `pidfd` has exited (a pidfd turns readable then).
pub fn wait_exited(pidfd: BorrowedFd<'_>) {
    poll_readable(pidfd, -1);
}

/// Whether the process behind `pidfd` has exited, without waiting.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    poll_readable(pidfd, 0)
}

/// `waitpid` on our own child `pid`, again after a signal: its raw wait status, or with
/// `nohang` `None` while it has not ended.
pub fn waitpid(pid: i32, nohang: bool) -> Result<Option<i32>, Error> {
    Ok(wait4(pid, nohang)?.map(|(status, _)| status))
}

/// What a reaped child used, as `wait4` reports it: its own CPU time and that of every
/// descendant it (or they) waited for, and the largest peak resident set among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    /// The largest peak resident set size (`ru_maxrss`), in bytes.
    pub peak_memory_bytes: u64,
}

impl Usage {
    fn of(ru: &libc::rusage) -> Usage {
        let micros =
            |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64;
        Usage {
            cpu_us: micros(ru.ru_utime) + micros(ru.ru_stime),
            // Linux reports ru_maxrss in KiB.
            peak_memory_bytes: (ru.ru_maxrss.max(0) as u64) * 1024,
        }
    }
}

/// Waits for any child of this process (again after a signal): its pid and raw wait status,
/// with what it used added to `usage` (CPU times summed, the largest peak kept).
pub fn wait_any(usage: &mut Usage) -> Result<(i32, i32), Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 for any child with valid out pointers.
        let rc = unsafe { libc::wait4(-1, &mut status, 0, &mut ru) };
        if rc > 0 {
            let used = Usage::of(&ru);
            usage.cpu_us += used.cpu_us;
            usage.peak_memory_bytes = usage.peak_memory_bytes.max(used.peak_memory_bytes);
            return Ok((rc, status));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            errno => return Err(errno),
        }
    }
}

/// Points fds 0-2 at `/dev/null`; where it cannot be opened, closes them and says why (either
/// way nothing that was on them stays open).
pub fn stdio_to_null() -> Result<(), Error> {
    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    match null {
        Ok(null) => (0..3).try_for_each(|target| {
            dup2("dup2(/dev/null)", std::os::fd::AsFd::as_fd(&null), target)
        }),
        Err(errno) => {
            for target in 0..3 {
                // SAFETY: closing a standard fd number this process owns.
                unsafe { libc::close(target) };
            }
            Err(Error::Call {
                call: "open(/dev/null)",
                errno,
            })
        }
    }
}

/// Blocks until `first` or `second` is readable.
pub fn wait_either(first: BorrowedFd<'_>, second: BorrowedFd<'_>) {
    let mut polls = [first, second].map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two valid pollfds; the fds stay open for the call (they are borrowed).
    while unsafe { libc::poll(polls.as_mut_ptr(), 2, -1) } < 0 && Errno::last() == Errno::EINTR {}
}

/// `wait4` on our own child `pid`, again after a signal: its raw wait status and what it used,
/// or with `nohang` `None` while it has not ended.
pub fn wait4(pid: i32, nohang: bool) -> Result<Option<(i32, Usage)>, Error> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child with valid out pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        match rc {
            0 => return Ok(None),
            rc if rc > 0 => return Ok(Some((status, Usage::of(&ru)))),
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err(last("wait4")),
        }
    }
}

/// Waits for our own child `pid` to end and reaps it: its raw wait status and what it used.
pub fn reap_with_usage(pid: i32) -> Result<(i32, Usage), Error> {
    wait4(pid, false)?.ok_or(Error::Call {
        call: "wait4",
        errno: Errno::ECHILD,
    })
}

/// Waits for our own child `pid` to end and reaps it: its raw wait status.
pub fn reap(pid: i32) -> Result<i32, Error> {
    waitpid(pid, false)?.ok_or(Error::Call {
        call: "waitpid",
        errno: Errno::ECHILD,
    })
}

/// Closes every fd from `first` up.
pub fn close_range(first: u32) -> Result<(), Error> {
    // SAFETY: close_range on fds this process owns; the callers use none of them again.
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) } != 0 {
        return Err(last("close_range"));
    }
    Ok(())
}

/// Closes every fd from 3 up but those of `keep`.
pub fn close_all_but(keep: &[RawFd]) -> Result<(), Error> {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    kept.sort_unstable();
    let mut first = 3u32;
    for fd in kept.into_iter().filter(|&fd| fd >= 3) {
        if fd > first {
            // SAFETY: close_range on fds this process owns and the caller gave up.
            if unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0u32) } != 0 {
                return Err(last("close_range"));
            }
        }
        first = fd + 1;
    }
    close_range(first)
}

/// Whether `fd` is readable now, without waiting.
pub fn readable_now(fd: BorrowedFd<'_>) -> bool {
    poll_readable(fd, 0)
}

/// Whether `fd` turns readable within `timeout`.
pub fn readable_within(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> bool {
    // Rounded up, so a wait never ends just before the moment it waits for.
    let ms = libc::c_int::try_from(timeout.as_millis() + 1).unwrap_or(libc::c_int::MAX);
    poll_readable(fd, ms)
}

/// Has the kernel send this process SIGKILL when the thread that forked it ends.
pub fn die_with_parent() -> Result<(), Error> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(last("prctl(PR_SET_PDEATHSIG)"));
    }
    Ok(())
}

/// Sets `no_new_privs`: no exec may grant privileges from here on.
pub fn no_new_privs() -> Result<(), Error> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    Ok(())
}

/// Duplicates `fd` onto `target` (`call` names the copy in errors).
pub fn dup2(call: &'static str, fd: BorrowedFd<'_>, target: RawFd) -> Result<(), Error> {
    // SAFETY: dup2 of an fd this process holds (it is borrowed) onto a number it owns.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(last(call));
    }
    Ok(())
}

/// Opens the namespace file at `path` (`/proc/self/ns/...`), close-on-exec.
pub fn open_namespace(path: &str) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| Error::Path {
        call: "open",
        path: PathBuf::from(path),
        errno,
    })
}

/// In a new network namespace, brings up loopback (its only interface).
pub fn loopback_up() -> Result<(), Error> {
    // SAFETY: a plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last("socket(AF_INET)"));
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it; it closes on drop.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own; the socket is open.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(last("ioctl(SIOCGIFFLAGS, lo)"));
    }
    // SAFETY: writing the flags member of the union the kernel just filled in.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own; the socket is open.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(last("ioctl(SIOCSIFFLAGS, lo)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_call_its_object_and_errno() {
        let call = Error::Call {
            call: "fork",
            errno: Errno::EAGAIN,
        };
        assert_eq!(call.to_string(), format!("fork failed: {}", Errno::EAGAIN));
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let path = on_path("mkdir", Path::new("/x/y"), &io);
        assert_eq!(
            path.to_string(),
            format!("mkdir(/x/y) failed: {}", Errno::EACCES)
        );
        assert_eq!(path.errno(), Errno::EACCES);
        assert_eq!(Error::NotEnded { pid: 7 }.errno(), Errno::EAGAIN);
        // An io::Error the kernel did not give has no errno of its own.
        assert_eq!(errno_of(&std::io::Error::other("x")), Errno::EIO);
    }

    #[test]
    fn a_child_is_reaped_once_and_watched_through_its_pidfd() {
        let (stdin, _keep) = pipe().expect("pipe");
        let (_read, stdout) = pipe().expect("pipe");
        let null = |s: &str| CString::new(s).expect("no NUL");
        let pid = posix_spawn(
            &null("/bin/sh"),
            &[null("sh"), null("-c"), null("exit 3")],
            &[],
            &null("/"),
            [
                std::os::fd::AsFd::as_fd(&stdin),
                std::os::fd::AsFd::as_fd(&stdout),
                std::os::fd::AsFd::as_fd(&stdout),
            ],
        )
        .expect("spawn");
        let pidfd = pidfd_open(pid).expect("pidfd");
        wait_exited(std::os::fd::AsFd::as_fd(&pidfd));
        assert!(has_exited(std::os::fd::AsFd::as_fd(&pidfd)));
        let status = reap(pid.as_raw()).expect("reap");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3);
        assert!(reap(pid.as_raw()).is_err(), "a second reap is refused");
    }
}
