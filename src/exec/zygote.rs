//! The sandbox zygote: one small single-threaded process per worker (`faasd __zygote`) that
//! forks every sandboxed executor, so a call pays for a `fork` of a process that is already
//! loaded rather than for an `exec` of faasd, and reuses what can be reused:
//!
//! - the seccomp filter, compiled once;
//! - network namespaces: a pool of empty ones with loopback up, one per running executor,
//!   given back when the worker reaps it (creating and destroying a namespace per call costs
//!   more than everything else the sandbox does, and one shared namespace would let functions
//!   reach each other over loopback);
//! - fast cgroup moves: on cgroup v1 a process entering a cgroup waits for an RCU grace period
//!   (about 11 ms here) unless some hierarchy is mounted with `favordynmods`; the zygote mounts
//!   an empty named hierarchy with that option, privately, for as long as it lives. The
//!   kernel's documented trade: moves get fast, forks and exits take a slightly slower lock.
//!
//! The worker talks to it over a Unix stream socket on the zygote's stdin, one request at a
//! time: `Spawn` (the shim's command line, the environment, the working directory, and the
//! three stdio fds as `SCM_RIGHTS`) is answered by the child's pid with a pidfd for it; `Reap`
//! (sent once the pidfd says the child ended) by its wait status. The zygote never reaps a
//! child before it is asked to, so the worker may signal the child's process group until then,
//! exactly as it would its own child. Frames are a little-endian `u32` length and a postcard
//! body. The zygote dies with the worker (`PR_SET_PDEATHSIG`), and its children with it.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsString};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::sandbox::{self, Prepared};
use super::sys::SysError;

/// The hidden subcommand that runs the zygote.
pub const ZYGOTE_COMMAND: &str = "__zygote";

/// The largest request or reply accepted (a command line and an environment).
const MAX_FRAME: usize = 16 << 20;

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
    /// Collect the wait status of a child that has ended.
    Reap { pid: i32 },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// The zygote is ready; `fast_attach` says whether cgroup moves are fast, `note` why not.
    Ready { fast_attach: bool, note: String },
    /// The child's pid; its pidfd comes as an fd.
    Spawned { pid: i32 },
    /// The child's raw wait status.
    Reaped { status: i32 },
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

/// Reads one frame and the fds that came with it; `Ok(None)` at end of stream.
fn read_frame<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, SysError> {
    let failed = |call: &'static str, errno: Errno| SysError { call, errno };
    let mut len = [0u8; 4];
    let mut fds = Vec::new();
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
                for cmsg in msg.cmsgs().map_err(|e| failed("recvmsg(zygote)", e))? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these fds in this process.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
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
        return Err(failed(
            "reading a zygote frame (too large)",
            Errno::EMSGSIZE,
        ));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(io)?;
    let message = postcard::from_bytes(&body)
        .map_err(|_| failed("decoding a zygote frame", Errno::EBADMSG))?;
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
}

struct Conn {
    sock: OwnedFd,
    process: std::process::Child,
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

/// Starts this process's zygote, which keeps its template roots under `dir` (once; later calls
/// start a new one in its place).
pub fn start(faasd: &std::path::Path, dir: &std::path::Path) -> Result<Started, String> {
    let zygote = ZYGOTE.get_or_init(|| Zygote {
        faasd: faasd.to_owned(),
        dir: dir.to_owned(),
        conn: Mutex::new(None),
    });
    let mut conn = zygote
        .conn
        .lock()
        .map_err(|_| "zygote lock poisoned".to_string())?;
    *conn = None;
    // Whatever an earlier zygote left there was mounted only in its own namespace.
    match std::fs::remove_dir_all(&zygote.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot clear {}: {e}", zygote.dir.display())),
    }
    std::fs::create_dir_all(&zygote.dir)
        .map_err(|e| format!("cannot create {}: {e}", zygote.dir.display()))?;
    let (new, started) = launch(&zygote.faasd, &zygote.dir)?;
    *conn = Some(new);
    Ok(started)
}

/// The running zygote, if this process started one.
pub fn get() -> Option<&'static Zygote> {
    ZYGOTE.get()
}

fn launch(faasd: &std::path::Path, dir: &std::path::Path) -> Result<(Conn, Started), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let process = std::process::Command::new(faasd)
        .arg(ZYGOTE_COMMAND)
        .arg(dir)
        .env_clear()
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {} {ZYGOTE_COMMAND}: {e}", faasd.display()))?;
    let conn = Conn {
        sock: OwnedFd::from(ours),
        process,
    };
    match read_frame::<Reply>(conn.sock.as_fd()) {
        Ok(Some((Reply::Ready { fast_attach, note }, _))) => {
            Ok((conn, Started { fast_attach, note }))
        }
        Ok(Some((Reply::Failed { call, errno }, _))) => Err(format!(
            "the zygote could not start: {call} failed: {}",
            Errno::from_raw(errno)
        )),
        Ok(_) => Err("the zygote ended before it was ready".into()),
        Err(e) => Err(format!("the zygote did not start: {e}")),
    }
}

impl Zygote {
    /// One request and its reply; a zygote that has gone away is started again once.
    fn ask(&self, request: &Request, fds: &[RawFd]) -> Result<(Reply, Vec<OwnedFd>), SysError> {
        let mut conn = self.conn.lock().map_err(|_| SysError {
            call: "zygote lock (poisoned)",
            errno: Errno::EDEADLK,
        })?;
        let mut relaunched = false;
        loop {
            if conn.is_none() {
                let (new, _) = launch(&self.faasd, &self.dir).map_err(|why| {
                    tracing::warn!("sandbox zygote: {why}");
                    SysError {
                        call: "starting the sandbox zygote",
                        errno: Errno::ECHILD,
                    }
                })?;
                *conn = Some(new);
                relaunched = true;
            }
            let Some(c) = conn.as_ref() else { continue };
            let result = write_frame(c.sock.as_fd(), request, fds)
                .and_then(|()| read_frame::<Reply>(c.sock.as_fd()));
            match result {
                Ok(Some(reply)) => return Ok(reply),
                // The zygote is gone. A spawn may go to a new one; a reap may not (the child
                // belonged to the old zygote and died with it).
                Ok(None) | Err(_) if !relaunched && matches!(request, Request::Spawn { .. }) => {
                    tracing::warn!("sandbox zygote went away; starting a new one");
                    *conn = None;
                }
                Ok(None) => {
                    *conn = None;
                    return Err(SysError {
                        call: "zygote (ended)",
                        errno: Errno::EPIPE,
                    });
                }
                Err(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
    }

    /// Forks a shim for `argv` (a command line from [`sandbox::wrap`]); returns its pid and a
    /// pidfd for it.
    pub fn spawn(
        &self,
        argv: &[CString],
        envp: &[CString],
        cwd: &CStr,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<(i32, OwnedFd), SysError> {
        let bytes = |v: &[CString]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        let request = Request::Spawn {
            argv: bytes(argv),
            env: bytes(envp),
            cwd: cwd.to_bytes().to_vec(),
        };
        let fds = stdio.map(|fd| fd.as_raw_fd());
        match self.ask(&request, &fds)? {
            (Reply::Spawned { pid }, mut fds) if fds.len() == 1 => Ok((pid, fds.remove(0))),
            (Reply::Failed { call, errno }, _) => {
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

    /// The wait status of a child that has ended (its pidfd is readable).
    pub fn reap(&self, pid: i32) -> Result<ExitStatus, SysError> {
        use std::os::unix::process::ExitStatusExt;
        match self.ask(&Request::Reap { pid }, &[])? {
            (Reply::Reaped { status }, _) => Ok(ExitStatus::from_raw(status)),
            (Reply::Failed { errno, .. }, _) => Err(SysError {
                call: "waitpid (zygote)",
                errno: Errno::from_raw(errno),
            }),
            _ => Err(SysError {
                call: "zygote (unexpected reply)",
                errno: Errno::EPROTO,
            }),
        }
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
    /// The template roots built so far.
    templates: HashMap<TemplateKey, std::path::PathBuf>,
    /// This process's own network namespace.
    home_net: OwnedFd,
    /// Idle pooled network namespaces.
    idle_nets: Vec<OwnedFd>,
    /// The pooled namespace each unreaped child holds.
    held_nets: HashMap<i32, OwnedFd>,
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
    let filter = super::seccomp::program().map_err(|_| SysError {
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
        home_net,
        idle_nets: Vec::new(),
        held_nets: HashMap::new(),
        home_pid,
        reports: HashMap::new(),
    };
    write_frame(sock.as_fd(), &Reply::Ready { fast_attach, note }, &[])?;
    while let Some((request, fds)) = read_frame::<Request>(sock.as_fd())? {
        match request {
            Request::Spawn { argv, env, cwd } => match spawn_one(&mut state, argv, env, cwd, fds) {
                Ok((pid, pidfd)) => {
                    write_frame(sock.as_fd(), &Reply::Spawned { pid }, &[pidfd.as_raw_fd()])?;
                }
                Err(e) => write_frame(
                    sock.as_fd(),
                    &Reply::Failed {
                        call: e.call.to_string(),
                        errno: e.errno as i32,
                    },
                    &[],
                )?,
            },
            Request::Reap { pid } => {
                let report = state.reports.remove(&pid);
                let reply = match reap(pid) {
                    Ok(status) => Reply::Reaped {
                        status: report.and_then(|r| reported(&r)).unwrap_or(status),
                    },
                    Err(errno) => Reply::Failed {
                        call: "waitpid".into(),
                        errno: errno as i32,
                    },
                };
                if let Some(net) = state.held_nets.remove(&pid)
                    && state.idle_nets.len() < MAX_POOLED_NETNS
                {
                    state.idle_nets.push(net);
                }
                write_frame(sock.as_fd(), &reply, &[])?;
            }
        }
    }
    Ok(())
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
    if let Some(path) = state.templates.get(&key) {
        return (!path.as_os_str().is_empty()).then(|| path.clone());
    }
    let path = state.dir.join(format!("root-{}", state.templates.len()));
    let built = std::fs::create_dir_all(&path)
        .map_err(|e| format!("mkdir({}): {e}", path.display()))
        .and_then(|()| {
            let refs: Vec<_> = key.0.iter().collect();
            sandbox::fill_template(&path, &refs, stub).map_err(|e| e.to_string())
        });
    match built {
        Ok(()) => {
            state.templates.insert(key, path.clone());
            Some(path)
        }
        Err(why) => {
            eprintln!(
                "faasd zygote: cannot build a template root, executors build their own: {why}"
            );
            // Not tried again for these paths.
            state.templates.insert(key, std::path::PathBuf::new());
            None
        }
    }
}

/// The fd on which the call's init finds its report pipe.
const REPORT_FD: RawFd = 3;

/// The wait status the function itself ended with, as its init reported it (`None` when init
/// died before it could say, killed with the call).
fn reported(report: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 5];
    let got = nix::unistd::read(report, &mut buf).ok()?;
    if got < 5 {
        return None;
    }
    let value = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    match buf[0] {
        b'E' => Some((value & 0xff) << 8),
        b'S' => Some(value & 0x7f),
        _ => None,
    }
}

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
    let net = if config.allow_net || !config.namespaces {
        None
    } else {
        Some(match state.idle_nets.pop() {
            Some(net) => net,
            None => new_netns(&state.home_net)?,
        })
    };
    // How the function ended, from the call's init (the child); the zygote reads it at reaping.
    let (report_r, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|errno| SysError {
            call: "pipe2",
            errno,
        })?;
    // The child is the init of a new PID namespace: unshare makes the next child one, and
    // setns sets the zygote's own children back to its namespace.
    if config.namespaces {
        sys(
            "unshare(PID)",
            nix::sched::unshare(CloneFlags::CLONE_NEWPID),
        )?;
    }
    // SAFETY: the zygote is single-threaded, so the child may run any code.
    let forked = unsafe { nix::unistd::fork() };
    if config.namespaces && !matches!(forked, Ok(nix::unistd::ForkResult::Child)) {
        sys(
            "setns(home PID)",
            nix::sched::setns(&state.home_pid, CloneFlags::CLONE_NEWPID),
        )?;
    }
    match forked.map_err(|errno| SysError {
        call: "fork",
        errno,
    })? {
        nix::unistd::ForkResult::Child => {
            drop(report_r);
            let prepared = Prepared {
                net_joined: net.is_some(),
                filter: Some(state.filter.clone()),
                template,
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
            // The child cannot be reaped before we wait for it, so this is its pidfd.
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if let Some(net) = net {
                state.held_nets.insert(pid, net);
            }
            if fd < 0 {
                let errno = Errno::last();
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = reap(pid);
                state.held_nets.remove(&pid);
                state.reports.remove(&pid);
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
