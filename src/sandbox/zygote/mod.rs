//! The sandbox zygote: one small single-threaded process per worker (`faasd __zygote`) that
//! forks every sandboxed executor, so a call pays for a `fork` of a process that is already
//! loaded rather than for an `exec` of faasd, and reuses what can be reused:
//!
//! - the seccomp filter, compiled once;
//! - network namespaces: a pool of empty ones with loopback up, one per running executor,
//!   given back when the worker reaps it and reused only by the same function's executors, and
//!   only when they run without privileges (creating and destroying a namespace per call costs
//!   more than everything else the sandbox does, and one shared namespace would let functions
//!   reach each other over loopback);
//! - cgroups: a pool of memory and pids cgroup pairs, one per running executor, reused once
//!   its call is over (a removed memory cgroup lingers in the kernel while page cache is
//!   charged to it);
//! - template roots, one per set of read-only paths, built in the zygote's own mount namespace
//!   and rebuilt after a minute (so a host file replaced since is seen);
//! - fast cgroup moves: on cgroup v1 a process entering a cgroup waits for an RCU grace period
//!   (about 11 ms here) unless some hierarchy is mounted with `favordynmods`; the zygote mounts
//!   an empty named hierarchy with that option, privately, for as long as it lives. The
//!   kernel's documented trade: moves get fast, forks and exits take a slightly slower lock.
//!
//! The worker talks to it over a Unix stream socket on the zygote's stdin, one request at a
//! time: `Spawn` (the shim's command line, the environment, the working directory, and the
//! three stdio fds as `SCM_RIGHTS`) is answered by the child's pid with a pidfd for it; `Reap`
//! (sent once the pidfd says the child ended; refused, never waited for, if it has not) by its
//! wait status; `Kill` kills and reaps a child the worker cannot follow. The zygote never reaps
//! a child before it is asked to, so the worker may signal the child's process group until
//! then, exactly as it would its own child. Frames are a little-endian `u32` length and a
//! postcard body; a frame the zygote cannot use fails that request alone.
//!
//! The zygote dies with the worker (`PR_SET_PDEATHSIG`, tied to the thread that started it, so a
//! dedicated thread that lives as long as the process starts every zygote), and its children
//! with it. It runs in its own process group, so a Ctrl-C meant for the worker leaves it (and
//! the calls the worker is draining) alone. If it dies anyway, the next spawn starts a new one
//! (a new generation); children of an earlier generation are never signalled by pid nor reaped
//! through the new one, since their pids may have been reused.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsString};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::sandbox::shim::{self as sandbox, Prepared};
use crate::sandbox::sys::SysError;

/// The hidden subcommand that runs the zygote.
pub const ZYGOTE_COMMAND: &str = "__zygote";

/// The largest request or reply accepted (a command line and an environment).
const MAX_FRAME: usize = 16 << 20;

/// The most idle cgroups kept for reuse.
const MAX_POOLED_CGROUPS: usize = 64;

/// The most idle network namespaces kept for reuse.
const MAX_POOLED_NETNS: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a shim for this command line (the shim's own, `faasd __sandbox CONFIG -- ...`);
    /// stdin, stdout and stderr come as fds.
    Spawn {
        argv: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        cwd: Vec<u8>,
    },
    /// Collect the wait status of a child that has ended (refused, not waited for, if it has
    /// not).
    Reap { pid: i32 },
    /// Kill a child and reap it (one the worker could not follow).
    Kill { pid: i32 },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// The zygote is ready; `fast_attach` says whether cgroup moves are fast, `note` why not.
    Ready { fast_attach: bool, note: String },
    /// The child's pid; its pidfd comes as an fd.
    Spawned { pid: i32 },
    /// The child's raw wait status, and whether its memory limit killed any of its processes
    /// (`None`: its cgroups are not the zygote's, the worker reads and removes them).
    Reaped { status: i32, oom: Option<bool> },
    /// The request failed in this system call.
    Failed { call: String, errno: i32 },
}

fn write_frame(
    sock: BorrowedFd<'_>,
    message: &impl Serialize,
    fds: &[RawFd],
) -> Result<(), SysError> {
    let body = postcard::to_allocvec(message).map_err(|_| SysError {
        call: "encoding a zygote frame",
        errno: Errno::EINVAL,
    })?;
    if body.len() > MAX_FRAME {
        return Err(SysError {
            call: "encoding a zygote frame (too large)",
            errno: Errno::EMSGSIZE,
        });
    }
    let len = (body.len() as u32).to_le_bytes();
    let iov = [IoSlice::new(&len), IoSlice::new(&body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let total = len.len() + body.len();
    let sent = loop {
        match nix::sys::socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(SysError {
                    call: "sendmsg(zygote)",
                    errno,
                });
            }
        }
    };
    if sent < total {
        // The fds went with the first byte; the rest is plain data.
        let mut rest = Vec::with_capacity(total - sent);
        rest.extend_from_slice(&len);
        rest.extend_from_slice(&body);
        let mut stream = borrowed_stream(sock);
        stream.write_all(&rest[sent..]).map_err(|e| SysError {
            call: "write(zygote)",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    }
    Ok(())
}

/// A `UnixStream` view of a borrowed socket that does not close it.
fn borrowed_stream(sock: BorrowedFd<'_>) -> std::mem::ManuallyDrop<UnixStream> {
    // SAFETY: the fd stays open for the view's life (it is borrowed), and ManuallyDrop keeps
    // the view from closing it.
    std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(sock.as_raw_fd()) })
}

/// One frame as read: the message, or why this frame (alone) was unusable; and its fds.
type Frame<T> = (Result<T, SysError>, Vec<OwnedFd>);

/// Reads one frame and the fds that came with it; `Ok(None)` at end of stream. The outer error
/// means the stream itself broke; the inner one, that this frame could not be used (too large,
/// undecodable, or its fds were cut off), with the stream still in step.
fn read_frame<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<Frame<T>>, SysError> {
    let failed = |call: &'static str, errno: Errno| SysError { call, errno };
    let mut len = [0u8; 4];
    let mut fds = Vec::new();
    let mut problem = None;
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let got = loop {
        let mut iov = [IoSliceMut::new(&mut len)];
        match nix::sys::socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                match msg.cmsgs() {
                    Ok(cmsgs) => {
                        for cmsg in cmsgs {
                            if let ControlMessageOwned::ScmRights(received) = cmsg {
                                // SAFETY: the kernel just installed these fds in this process.
                                fds.extend(
                                    received
                                        .into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    // Cut off (no room for the fds, or no fds left to take them).
                    Err(errno) => problem = Some(failed("recvmsg(zygote, fds cut off)", errno)),
                }
                break msg.bytes;
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(failed("recvmsg(zygote)", errno)),
        }
    };
    if got == 0 {
        return Ok(None);
    }
    let mut stream = borrowed_stream(sock);
    let io = |e: std::io::Error| {
        failed(
            "read(zygote)",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    };
    stream.read_exact(&mut len[got..]).map_err(io)?;
    let size = u32::from_le_bytes(len) as usize;
    if size > MAX_FRAME {
        // Skipped, so the next frame is read from its start.
        std::io::copy(
            &mut std::io::Read::by_ref(&mut *stream).take(size as u64),
            &mut std::io::sink(),
        )
        .map_err(io)?;
        let error = failed("reading a zygote frame (too large)", Errno::EMSGSIZE);
        return Ok(Some((Err(error), fds)));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(io)?;
    let message = match problem {
        Some(error) => Err(error),
        None => postcard::from_bytes(&body)
            .map_err(|_| failed("decoding a zygote frame", Errno::EBADMSG)),
    };
    Ok(Some((message, fds)))
}

// ---------------------------------------------------------------------------------------------
// The worker's side.

/// The worker's handle on its zygote.
pub struct Zygote {
    faasd: std::path::PathBuf,
    /// Where it builds its template roots (visible only in its own mount namespace).
    dir: std::path::PathBuf,
    conn: Mutex<Option<Conn>>,
    /// How many zygotes have been started: a child is signalled and reaped only through the
    /// zygote that forked it (once that one is gone, its pids may belong to anyone).
    generation: AtomicU64,
    /// The generation of the zygote running now, 0 once it is known to be gone (read without
    /// the connection's lock, which a spawn holds).
    current: AtomicU64,
}

struct Conn {
    sock: OwnedFd,
    process: std::process::Child,
    generation: u64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

static ZYGOTE: OnceLock<Zygote> = OnceLock::new();

/// What a started zygote reports about itself.
#[derive(Debug, Clone)]
pub struct Started {
    /// Whether cgroup moves are fast (see the module's documentation).
    pub fast_attach: bool,
    /// Why they are not, when they are not.
    pub note: String,
}

/// Starts this process's zygote, which keeps its template roots under `dir`. Until this
/// succeeds, [`get`] says there is none and executors start through an `exec` of the shim.
pub fn start(faasd: &std::path::Path, dir: &std::path::Path) -> Result<Started, String> {
    if ZYGOTE.get().is_some() {
        return Err("this process already has a sandbox zygote".into());
    }
    // Whatever an earlier zygote left there was mounted only in its own namespace.
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot clear {}: {e}", dir.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (conn, started) = launch(faasd, dir, 1)?;
    let zygote = Zygote {
        faasd: faasd.to_owned(),
        dir: dir.to_owned(),
        conn: Mutex::new(Some(conn)),
        generation: AtomicU64::new(1),
        current: AtomicU64::new(1),
    };
    ZYGOTE
        .set(zygote)
        .map_err(|_| "this process already has a sandbox zygote".to_string())?;
    Ok(started)
}

/// The running zygote, if this process started one.
pub fn get() -> Option<&'static Zygote> {
    ZYGOTE.get()
}

/// What the keeper thread is asked to start.
type LaunchJob = (
    std::path::PathBuf,
    std::path::PathBuf,
    std::sync::mpsc::Sender<std::io::Result<(std::process::Child, OwnedFd)>>,
);

/// Starts `faasd __zygote DIR` from one thread that lives as long as the process: the
/// zygote's `PR_SET_PDEATHSIG` fires when the *thread* that forked it ends, and a blocking-pool
/// thread would end after a few idle seconds, taking the zygote and every executor with it.
fn spawn_from_keeper(
    faasd: &std::path::Path,
    dir: &std::path::Path,
) -> std::io::Result<(std::process::Child, OwnedFd)> {
    static KEEPER: OnceLock<Mutex<std::sync::mpsc::Sender<LaunchJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<LaunchJob>();
        let started = std::thread::Builder::new()
            .name("faasd-zygote-keeper".into())
            .spawn(move || {
                for (faasd, dir, answer) in queue {
                    let _ = answer.send(spawn_zygote(&faasd, &dir));
                }
            });
        if let Err(e) = started {
            tracing::warn!("cannot start the zygote keeper thread: {e}");
        }
        Mutex::new(jobs)
    });
    let (answer, answered) = std::sync::mpsc::channel();
    let sent = keeper
        .lock()
        .map_err(|_| std::io::Error::other("zygote keeper lock poisoned"))?
        .send((faasd.to_owned(), dir.to_owned(), answer));
    sent.map_err(|_| std::io::Error::other("the zygote keeper thread is gone"))?;
    answered
        .recv()
        .map_err(|_| std::io::Error::other("the zygote keeper thread is gone"))?
}

fn spawn_zygote(
    faasd: &std::path::Path,
    dir: &std::path::Path,
) -> std::io::Result<(std::process::Child, OwnedFd)> {
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = UnixStream::pair()?;
    let process = std::process::Command::new(faasd)
        .arg(ZYGOTE_COMMAND)
        .arg(dir)
        .env_clear()
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        // Its own process group: a Ctrl-C meant for the worker must not end the zygote (and
        // every running call) before the worker has drained.
        .process_group(0)
        .spawn()?;
    Ok((process, OwnedFd::from(ours)))
}

fn launch(
    faasd: &std::path::Path,
    dir: &std::path::Path,
    generation: u64,
) -> Result<(Conn, Started), String> {
    let (process, sock) = spawn_from_keeper(faasd, dir)
        .map_err(|e| format!("cannot start {} {ZYGOTE_COMMAND}: {e}", faasd.display()))?;
    let conn = Conn {
        sock,
        process,
        generation,
    };
    match read_frame::<Reply>(conn.sock.as_fd()) {
        Ok(Some((Ok(Reply::Ready { fast_attach, note }), _))) => {
            Ok((conn, Started { fast_attach, note }))
        }
        Ok(Some((Ok(Reply::Failed { call, errno }), _))) => Err(format!(
            "the zygote could not start: {call} failed: {}",
            Errno::from_raw(errno)
        )),
        Ok(Some((Err(e), _))) => Err(format!("the zygote did not start: {e}")),
        Ok(_) => Err("the zygote ended before it was ready".into()),
        Err(e) => Err(format!("the zygote did not start: {e}")),
    }
}

/// Runs `f`, which blocks on the zygote, telling the async runtime first when called from one
/// of its worker threads (so it moves its other tasks elsewhere meanwhile).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Zygote {
    /// One request and its reply, through the zygote of `generation` (`None`: the current one,
    /// started again if it has gone away).
    fn ask(
        &self,
        request: &Request,
        fds: &[RawFd],
        generation: Option<u64>,
    ) -> Result<(Reply, Vec<OwnedFd>, u64), SysError> {
        blocking(|| {
            let mut conn = self.conn.lock().map_err(|_| SysError {
                call: "zygote lock (poisoned)",
                errno: Errno::EDEADLK,
            })?;
            let gone = SysError {
                call: "zygote (the one that forked this child is gone)",
                errno: Errno::ECHILD,
            };
            let mut relaunched = false;
            loop {
                if conn.is_none() {
                    if generation.is_some() || relaunched {
                        return Err(gone);
                    }
                    let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    let (new, _) = launch(&self.faasd, &self.dir, next).map_err(|why| {
                        tracing::warn!("sandbox zygote: {why}");
                        SysError {
                            call: "starting the sandbox zygote",
                            errno: Errno::ECHILD,
                        }
                    })?;
                    tracing::info!("sandbox zygote started again");
                    self.current.store(next, Ordering::SeqCst);
                    *conn = Some(new);
                    relaunched = true;
                }
                let Some(c) = conn.as_ref() else { continue };
                if generation.is_some_and(|g| g != c.generation) {
                    return Err(gone);
                }
                let result = write_frame(c.sock.as_fd(), request, fds)
                    .and_then(|()| read_frame::<Reply>(c.sock.as_fd()));
                match result {
                    Ok(Some((Ok(reply), fds))) => return Ok((reply, fds, c.generation)),
                    Ok(Some((Err(e), _))) => return Err(e),
                    // The zygote is gone (its children died with it).
                    Ok(None) | Err(_) => {
                        tracing::warn!("sandbox zygote went away");
                        self.current.store(0, Ordering::SeqCst);
                        *conn = None;
                        // Its children died with it; their cgroups go once empty.
                        crate::sandbox::cgroup::sweep();
                    }
                }
            }
        })
    }

    /// Whether the zygote of `generation` is still the one running.
    pub fn is_current(&self, generation: u64) -> bool {
        self.current.load(Ordering::SeqCst) == generation
    }

    /// Forks a shim for `argv` (a command line from [`sandbox::wrap`]); returns its pid, a
    /// pidfd for it, and the zygote's generation.
    pub fn spawn(
        &self,
        argv: &[CString],
        envp: &[CString],
        cwd: &CStr,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<(i32, OwnedFd, u64), SysError> {
        let bytes = |v: &[CString]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        let request = Request::Spawn {
            argv: bytes(argv),
            env: bytes(envp),
            cwd: cwd.to_bytes().to_vec(),
        };
        let fds = stdio.map(|fd| fd.as_raw_fd());
        match self.ask(&request, &fds, None)? {
            (Reply::Spawned { pid }, mut fds, generation) if fds.len() == 1 => {
                Ok((pid, fds.remove(0), generation))
            }
            (Reply::Spawned { pid }, _, generation) => {
                // A child we cannot follow must not run unwatched.
                self.kill(pid, generation);
                Err(SysError {
                    call: "zygote (a child without its pidfd)",
                    errno: Errno::EPROTO,
                })
            }
            (Reply::Failed { call, errno }, _, _) => {
                tracing::warn!("sandbox zygote: {call} failed: {}", Errno::from_raw(errno));
                Err(SysError {
                    call: "zygote fork",
                    errno: Errno::from_raw(errno),
                })
            }
            _ => Err(SysError {
                call: "zygote (unexpected reply)",
                errno: Errno::EPROTO,
            }),
        }
    }

    /// The wait status of a child of the zygote of `generation` that has ended (its pidfd is
    /// readable).
    /// Also says whether the call's memory limit killed any of its processes (`None`: the
    /// child made its own cgroups, named by its pid, for the worker to read and remove).
    pub fn reap(&self, pid: i32, generation: u64) -> Result<(ExitStatus, Option<bool>), SysError> {
        use std::os::unix::process::ExitStatusExt;
        match self.ask(&Request::Reap { pid }, &[], Some(generation))? {
            (Reply::Reaped { status, oom }, _, _) => Ok((ExitStatus::from_raw(status), oom)),
            (Reply::Failed { errno, .. }, _, _) => Err(SysError {
                call: "waitpid (zygote)",
                errno: Errno::from_raw(errno),
            }),
            _ => Err(SysError {
                call: "zygote (unexpected reply)",
                errno: Errno::EPROTO,
            }),
        }
    }

    /// Has the zygote of `generation` kill and reap a child.
    pub fn kill(&self, pid: i32, generation: u64) {
        let _ = self.ask(&Request::Kill { pid }, &[], Some(generation));
    }
}

// ---------------------------------------------------------------------------------------------
// The zygote's side.

/// Runs the zygote on the socket at fd 0; `args` (what follows `__zygote`) name the directory
/// for its template roots. Never returns.
pub fn zygote_main(args: &[OsString]) -> ! {
    // SAFETY: fd 0 is the socket the worker gave us; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    let dir = args
        .first()
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let code = match serve(&sock, dir) {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_frame(
                sock.as_fd(),
                &Reply::Failed {
                    call: e.call.to_string(),
                    errno: e.errno as i32,
                },
                &[],
            );
            eprintln!("faasd zygote: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn sys(call: &'static str, result: nix::Result<impl Sized>) -> Result<(), SysError> {
    result.map(drop).map_err(|errno| SysError { call, errno })
}

/// Which template root serves an executor: its read-only paths other than the bundle, and
/// whether the bundle is a directory.
type TemplateKey = (Vec<(std::path::PathBuf, std::path::PathBuf)>, Option<bool>);

struct State {
    filter: seccompiler::BpfProgram,
    /// Where template roots are built.
    dir: std::path::PathBuf,
    /// The template roots built so far and when (`None`: building failed then).
    templates: HashMap<TemplateKey, (Option<std::path::PathBuf>, Instant)>,
    /// Templates replaced by newer ones, and since when (detached once no child can still be
    /// about to copy them).
    retired: Vec<(std::path::PathBuf, Instant)>,
    /// Numbers the template directories.
    next_template: usize,
    /// Idle pooled cgroups (each a memory and a pids cgroup of one name).
    idle_cgroups: Vec<String>,
    /// The pooled cgroups each unreaped child is in, with their count of memory-limit kills
    /// when it got them.
    held_cgroups: HashMap<i32, (String, u64)>,
    /// Numbers the pooled cgroups.
    next_cgroup: usize,
    /// This process's own network namespace.
    home_net: OwnedFd,
    /// Idle pooled network namespaces, oldest first, each for the function (its bundle) whose
    /// executors used it.
    idle_nets: std::collections::VecDeque<(std::path::PathBuf, OwnedFd)>,
    /// The network namespace each unreaped child holds, and its pool (`None`: not reused).
    held_nets: HashMap<i32, (Option<std::path::PathBuf>, OwnedFd)>,
    /// This process's own PID namespace.
    home_pid: OwnedFd,
    /// The read end of each unreaped child's report pipe.
    reports: HashMap<i32, OwnedFd>,
}

fn serve(sock: &OwnedFd, dir: std::path::PathBuf) -> Result<(), SysError> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(SysError {
            call: "prctl(PR_SET_PDEATHSIG)",
            errno: Errno::last(),
        });
    }
    // Each running executor holds a pidfd, a report pipe and a network namespace here.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let private = private_mounts().is_ok();
    let moves = if private {
        fast_cgroup_moves()
    } else {
        private_mounts()
    };
    let (fast_attach, note) = match moves {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    };
    let filter = crate::sandbox::seccomp::program().map_err(|_| SysError {
        call: "building the seccomp filter",
        errno: Errno::EINVAL,
    })?;
    let home_net = open_ns("/proc/self/ns/net")?;
    let home_pid = open_ns("/proc/self/ns/pid")?;
    let mut state = State {
        filter,
        // Templates need the private mount namespace.
        dir: if private { dir } else { Default::default() },
        templates: HashMap::new(),
        retired: Vec::new(),
        next_template: 0,
        idle_cgroups: Vec::new(),
        held_cgroups: HashMap::new(),
        next_cgroup: 0,
        home_net,
        idle_nets: std::collections::VecDeque::new(),
        held_nets: HashMap::new(),
        home_pid,
        reports: HashMap::new(),
    };
    write_frame(sock.as_fd(), &Reply::Ready { fast_attach, note }, &[])?;
    while let Some((request, fds)) = read_frame::<Request>(sock.as_fd())? {
        let failed = |e: SysError| Reply::Failed {
            call: e.call.to_string(),
            errno: e.errno as i32,
        };
        let reply = match request {
            // A frame this zygote cannot use fails that request alone.
            Err(e) => failed(e),
            Ok(Request::Spawn { argv, env, cwd }) => {
                match spawn_one(&mut state, argv, env, cwd, fds) {
                    Ok((pid, pidfd)) => {
                        write_frame(sock.as_fd(), &Reply::Spawned { pid }, &[pidfd.as_raw_fd()])?;
                        continue;
                    }
                    Err(e) => failed(e),
                }
            }
            Ok(Request::Reap { pid }) => reap_child(&mut state, pid),
            Ok(Request::Kill { pid }) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                // A killed process ends at once unless stuck in the kernel: waited for a
                // moment, never for ever (the worker's other calls wait on this zygote).
                let mut reply = reap_child(&mut state, pid);
                for _ in 0..100 {
                    if !matches!(&reply, Reply::Failed { errno, .. } if *errno == Errno::EAGAIN as i32)
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    reply = reap_child(&mut state, pid);
                }
                reply
            }
        };
        write_frame(sock.as_fd(), &reply, &[])?;
    }
    // The worker is gone: its idle cgroups go too (those still in use are swept at its next
    // start, their zygote being gone).
    for name in state.idle_cgroups.drain(..) {
        crate::sandbox::cgroup::remove(&name);
    }
    Ok(())
}

/// Reaps a child that has ended (one still running is refused with EAGAIN, never waited for)
/// and gives its network namespace and cgroups back to the pools.
fn reap_child(state: &mut State, pid: i32) -> Reply {
    let mut status: libc::c_int = 0;
    let flags = libc::WNOHANG;
    let rc = loop {
        // SAFETY: waitpid on one of our children with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
        if rc >= 0 || Errno::last() != Errno::EINTR {
            break rc;
        }
    };
    if rc == 0 {
        return Reply::Failed {
            call: "waitpid (the child has not ended)".into(),
            errno: Errno::EAGAIN as i32,
        };
    }
    let errno = Errno::last();
    let report = state.reports.remove(&pid);
    // Every process of the call is gone (its PID namespace ended with its init), so its cgroups
    // are empty and serve the next call; the memory limit's kill count says if it struck.
    let mut oom = None;
    if let Some((name, before)) = state.held_cgroups.remove(&pid) {
        oom = Some(crate::sandbox::cgroup::oom_kills_of(&name) > before);
        if state.idle_cgroups.len() < MAX_POOLED_CGROUPS {
            state.idle_cgroups.push(name);
        } else {
            crate::sandbox::cgroup::remove(&name);
        }
    }
    if let Some((Some(key), net)) = state.held_nets.remove(&pid) {
        state.idle_nets.push_back((key, net));
        if state.idle_nets.len() > MAX_POOLED_NETNS {
            state.idle_nets.pop_front();
        }
    }
    if rc < 0 {
        return Reply::Failed {
            call: "waitpid".into(),
            errno: errno as i32,
        };
    }
    Reply::Reaped {
        status: report
            .and_then(|r| sandbox::Report::read(&r))
            .map_or(status, sandbox::Report::wait_status),
        oom,
    }
}

/// A private mount namespace (still receiving the host's later mounts) for the cgroup mount.
fn private_mounts() -> Result<(), SysError> {
    sys("unshare(NS)", nix::sched::unshare(CloneFlags::CLONE_NEWNS))?;
    let none: Option<&str> = None;
    sys(
        "mount(make / slave)",
        nix::mount::mount(
            none,
            "/",
            none,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
            none,
        ),
    )
}

fn open_ns(path: &'static str) -> Result<OwnedFd, SysError> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| SysError { call: path, errno })?;
    Ok(fd)
}

/// Mounts an empty named cgroup v1 hierarchy with `favordynmods`, then detaches it, keeping it
/// alive through an open fd for the zygote's life.
fn fast_cgroup_moves() -> Result<(), SysError> {
    let dir = std::env::temp_dir().join(format!("faasd-zygote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| SysError {
        call: "mkdir(cgroup mount point)",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let mounted = nix::mount::mount(
        Some("cgroup"),
        &dir,
        Some("cgroup"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("none,name=faasd,favordynmods"),
    );
    let result = mounted
        .map_err(|errno| SysError {
            call: "mount(cgroup name=faasd,favordynmods)",
            errno,
        })
        .and_then(|()| {
            let held = nix::fcntl::open(
                &dir,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|errno| SysError {
                call: "open(cgroup mount)",
                errno,
            })?;
            // Held for the rest of this process's life: closing it would end the hierarchy.
            std::mem::forget(held);
            sys(
                "umount2(cgroup mount, DETACH)",
                nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH),
            )
        });
    let _ = std::fs::remove_dir(&dir);
    result
}

/// A new network namespace with loopback up, left again at once.
fn new_netns(home: &OwnedFd) -> Result<OwnedFd, SysError> {
    sys(
        "unshare(NET)",
        nix::sched::unshare(CloneFlags::CLONE_NEWNET),
    )?;
    let made = open_ns("/proc/self/ns/net");
    let up = sandbox::loopback_up().map_err(|e| SysError {
        call: "ioctl(SIOCSIFFLAGS, lo)",
        errno: e.errno(),
    });
    sys(
        "setns(home NET)",
        nix::sched::setns(home, CloneFlags::CLONE_NEWNET),
    )?;
    up?;
    made
}

/// An idle pooled cgroup pair with this call's limits set, or a new one: a pair whose limits
/// cannot be set (a lower memory limit than the charge a previous call left, or a pair removed
/// from outside) is dropped from the pool.
fn pooled_cgroup(state: &mut State, memory_bytes: u64, max_pids: u64) -> Result<String, SysError> {
    let failed = |(_, e): (std::path::PathBuf, std::io::Error)| SysError {
        call: "setting up a pooled cgroup",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    while let Some(name) = state.idle_cgroups.pop() {
        if crate::sandbox::cgroup::set_limits(&name, memory_bytes, max_pids).is_ok() {
            return Ok(name);
        }
        crate::sandbox::cgroup::remove(&name);
    }
    let name = format!("z{}-{}", std::process::id(), state.next_cgroup);
    state.next_cgroup += 1;
    crate::sandbox::cgroup::create(&name).map_err(failed)?;
    if let Err(e) = crate::sandbox::cgroup::set_limits(&name, memory_bytes, max_pids) {
        crate::sandbox::cgroup::remove(&name);
        return Err(failed(e));
    }
    Ok(name)
}

/// The template root for `config`'s paths, built on first use; `None` (each executor then
/// builds its own root) when it cannot be built.
fn template_for(state: &mut State, config: &sandbox::Config) -> Option<std::path::PathBuf> {
    if state.dir.as_os_str().is_empty() {
        return None;
    }
    let bundle = std::path::Path::new(sandbox::BUNDLE);
    let others: Vec<_> = config
        .read_only
        .iter()
        .filter(|(_, inside)| inside != bundle)
        .cloned()
        .collect();
    let stub = config
        .read_only
        .iter()
        .find(|(_, inside)| inside == bundle)
        .map(|(host, _)| host.is_dir());
    let key = (others, stub);
    if let Some((path, built)) = state.templates.get(&key) {
        if built.elapsed() < TEMPLATE_LIFE {
            return path.clone();
        }
        // Files bound one by one (`/etc/resolv.conf`, `hosts`, `localtime`) keep the inode
        // they had when the template was built; a host that replaced one gets it seen anew.
        if let Some(path) = path {
            state.retired.push((path.clone(), Instant::now()));
        }
    }
    // A child forked just before a template was retired may not have copied the mount
    // namespace yet; a few seconds later every such child has.
    state.retired.retain(|(path, since)| {
        if since.elapsed() < RETIRED_GRACE {
            return true;
        }
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(path);
        false
    });
    let path = state.dir.join(format!("root-{}", state.next_template));
    state.next_template += 1;
    let built = std::fs::create_dir_all(&path)
        .map_err(|e| format!("mkdir({}): {e}", path.display()))
        .and_then(|()| {
            let refs: Vec<_> = key.0.iter().collect();
            sandbox::fill_template(&path, &refs, stub).map_err(|e| e.to_string())
        });
    match built {
        Ok(()) => {
            state
                .templates
                .insert(key, (Some(path.clone()), Instant::now()));
            Some(path)
        }
        Err(why) => {
            eprintln!(
                "faasd zygote: cannot build a template root, executors build their own: {why}"
            );
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            // Tried again for these paths once the template's life has passed.
            state.templates.insert(key, (None, Instant::now()));
            None
        }
    }
}

/// How long a template root serves before it is built anew.
const TEMPLATE_LIFE: Duration = Duration::from_secs(60);

/// How long a replaced template stays mounted.
const RETIRED_GRACE: Duration = Duration::from_secs(10);

/// The fd on which the call's init finds its report pipe.
const REPORT_FD: RawFd = 3;

fn reap(pid: i32) -> Result<i32, Errno> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let errno = Errno::last();
        if errno != Errno::EINTR {
            return Err(errno);
        }
    }
}

fn spawn_one(
    state: &mut State,
    argv: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    cwd: Vec<u8>,
    fds: Vec<OwnedFd>,
) -> Result<(i32, OwnedFd), SysError> {
    let argv: Vec<OsString> = argv.into_iter().map(OsString::from_vec).collect();
    let env: Vec<OsString> = env.into_iter().map(OsString::from_vec).collect();
    let cwd = OsString::from_vec(cwd);
    let bad = |errno| SysError {
        call: "reading the spawn request",
        errno,
    };
    if fds.len() != 3 || !sandbox::is_wrapped(&argv) {
        return Err(bad(Errno::EINVAL));
    }
    let (config, inner) = sandbox::shim(&argv[2..]).map_err(|e| bad(e.errno()))?;
    let template = if config.namespaces {
        template_for(state, &config)
    } else {
        None
    };
    // A network namespace is reused only by the same function's executors (a namespace keeps
    // traces of its last user: TIME_WAIT sockets, counters), and only when they run without
    // privileges (a privileged one could change its interfaces, routes or filters).
    let bundle = std::path::Path::new(sandbox::BUNDLE);
    let pool = config.drop_uid.then(|| {
        config
            .read_only
            .iter()
            .find(|(_, inside)| inside == bundle)
            .map(|(host, _)| host.clone())
            .unwrap_or_default()
    });
    let net = if config.allow_net || !config.namespaces {
        None
    } else {
        let reused = pool.as_ref().and_then(|key| {
            let at = state.idle_nets.iter().rposition(|(k, _)| k == key)?;
            state.idle_nets.remove(at).map(|(_, net)| net)
        });
        Some(match reused {
            Some(net) => net,
            None => new_netns(&state.home_net)?,
        })
    };
    // Pooled cgroups: creating and removing a memory cgroup per call costs time, and a removed
    // one lingers in the kernel as long as page cache is charged to it.
    // Only with a PID namespace: its end guarantees no process of the call is left in them.
    let cgroup =
        if config.memory_bytes > 0 && config.namespaces && crate::sandbox::cgroup::available() {
            let name = pooled_cgroup(state, config.memory_bytes, config.max_processes)?;
            let before = crate::sandbox::cgroup::oom_kills_of(&name);
            Some((name, before))
        } else {
            None
        };
    // How the function ended, from the call's init (the child); the zygote reads it at reaping.
    // The child is the init of a new PID namespace: unshare makes the next child one, and
    // setns sets the zygote's own children back to its namespace.
    let prepared = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|errno| SysError {
            call: "pipe2",
            errno,
        })
        .and_then(|pipe| {
            if config.namespaces {
                sys(
                    "unshare(PID)",
                    nix::sched::unshare(CloneFlags::CLONE_NEWPID),
                )?;
            }
            Ok(pipe)
        });
    let (report_r, report_w) = match prepared {
        Ok(pipe) => pipe,
        Err(e) => {
            if let Some((name, _)) = cgroup {
                state.idle_cgroups.push(name);
            }
            return Err(e);
        }
    };
    // SAFETY: the zygote is single-threaded, so the child may run any code.
    let forked = unsafe { nix::unistd::fork() };
    if config.namespaces
        && !matches!(forked, Ok(nix::unistd::ForkResult::Child))
        && let Err(errno) = nix::sched::setns(&state.home_pid, CloneFlags::CLONE_NEWPID)
    {
        // Every later child would land in this call's namespace: end, taking them all along.
        eprintln!("faasd zygote: setns(home PID) failed: {errno}");
        std::process::exit(1);
    }
    let forked = match forked {
        Ok(forked) => forked,
        Err(errno) => {
            if let Some((name, _)) = cgroup {
                state.idle_cgroups.push(name);
            }
            return Err(SysError {
                call: "fork",
                errno,
            });
        }
    };
    match forked {
        nix::unistd::ForkResult::Child => {
            drop(report_r);
            let prepared = Prepared {
                net_joined: net.is_some(),
                filter: Some(state.filter.clone()),
                template,
                cgroup: cgroup.as_ref().map(|(name, _)| name.clone()),
            };
            let code = child(
                &config,
                inner,
                &env,
                &cwd,
                &fds,
                net.as_ref(),
                &prepared,
                report_w,
            );
            std::process::exit(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((fds, report_w));
            let pid = child.as_raw();
            state.reports.insert(pid, report_r);
            if let Some(cgroup) = cgroup {
                state.held_cgroups.insert(pid, cgroup);
            }
            // The child cannot be reaped before we wait for it, so this is its pidfd.
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if let Some(net) = net {
                state.held_nets.insert(pid, (pool, net));
            }
            if fd < 0 {
                let errno = Errno::last();
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = reap(pid);
                state.held_nets.remove(&pid);
                state.reports.remove(&pid);
                if let Some((name, _)) = state.held_cgroups.remove(&pid) {
                    state.idle_cgroups.push(name);
                }
                return Err(SysError {
                    call: "pidfd_open",
                    errno,
                });
            }
            // SAFETY: the kernel just returned this fd and nothing else owns it.
            Ok((pid, unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
        }
    }
}

/// The forked child, the call's init: what `posix_spawn` does for an ordinary executor
/// (session, stdio, working directory), then the shim's layers and the function.
#[allow(clippy::too_many_arguments)]
fn child(
    config: &sandbox::Config,
    argv: &[OsString],
    env: &[OsString],
    cwd: &OsString,
    stdio: &[OwnedFd],
    net: Option<&OwnedFd>,
    prepared: &Prepared,
    report: OwnedFd,
) -> i32 {
    let setup = || -> Result<(), SysError> {
        sys("setsid", nix::unistd::setsid())?;
        for (fd, target) in stdio.iter().zip(0..) {
            // SAFETY: dup2 onto 0-2 of fds this process holds.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                return Err(SysError {
                    call: "dup2",
                    errno: Errno::last(),
                });
            }
        }
        sys(
            "chdir(working directory)",
            nix::unistd::chdir(cwd.as_os_str()),
        )?;
        if let Some(net) = net {
            sys(
                "setns(pooled NET)",
                nix::sched::setns(net, CloneFlags::CLONE_NEWNET),
            )?;
        }
        // The report pipe on fd 3, everything above closed.
        // SAFETY: dup2 onto 3 of an fd this process holds.
        if unsafe { libc::dup2(report.as_raw_fd(), REPORT_FD) } < 0 {
            return Err(SysError {
                call: "dup2(report)",
                errno: Errno::last(),
            });
        }
        // SAFETY: close_range on fds this process owns (the zygote's socket, the namespace
        // and the originals of 0-3); nothing in this process uses them again.
        if unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) } != 0 {
            return Err(SysError {
                call: "close_range",
                errno: Errno::last(),
            });
        }
        Ok(())
    };
    if let Err(e) = setup() {
        eprintln!("{}{e}", sandbox::ERROR_PREFIX);
        return sandbox::SETUP_FAILED;
    }
    // SAFETY: fd 3 is the report pipe, dup'ed there above; nothing else owns it.
    let report = unsafe { OwnedFd::from_raw_fd(REPORT_FD) };
    match sandbox::run_as_init(config, argv, env, prepared, report) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{}{e}", sandbox::ERROR_PREFIX);
            sandbox::SETUP_FAILED
        }
    }
}
