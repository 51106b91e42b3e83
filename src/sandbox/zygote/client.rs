//! The worker's side of the zygote: the [`Zygote`] handle ([`start`], [`get`]), the keeper
//! thread that starts every zygote process, and the requests: spawn, reap, kill. A zygote that
//! went away is started again (a new generation) on the next spawn; children of an earlier
//! generation are never signalled by pid nor reaped through the new one.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::wire::{Reply, Request, read_frame, write_frame};
use crate::sandbox::sys::{self, Error};

/// The hidden subcommand that runs the zygote.
pub const ZYGOTE_COMMAND: &str = "__zygote";

/// Why this process's zygote could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// [`start`] was called before, successfully.
    #[error("this process already has a sandbox zygote")]
    AlreadyStarted,
    /// What an earlier zygote left in its directory could not be removed.
    #[error("cannot clear {}: {source}", dir.display())]
    ClearDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its directory could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The zygote process could not be started.
    #[error("cannot start {} {ZYGOTE_COMMAND}: {source}", faasd.display())]
    Exec {
        /// The faasd binary.
        faasd: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The zygote started, then reported a failed set-up.
    #[error("the zygote could not start: {message}")]
    SetUp {
        /// Its account of the failure.
        message: String,
    },
    /// Its first frame was not the one expected.
    #[error("the zygote did not start: {source}")]
    Handshake {
        /// Why.
        #[source]
        source: Error,
    },
    /// It ended before saying it was ready.
    #[error("the zygote ended before it was ready")]
    Ended,
}

/// A child the zygote forked, as the worker watches it.
pub struct Spawned {
    /// Its pid.
    pub pid: i32,
    /// A pidfd for it.
    pub pidfd: OwnedFd,
    /// Readable once the function has ended, when the child's init has reported it and only
    /// has to exit (never read: the zygote reads the report when reaping).
    pub ended: Option<OwnedFd>,
    /// Whether nothing of the call runs once `ended` is readable (see `Reply::Spawned`).
    pub contained: bool,
}

/// The worker's handle on its zygote.
pub struct Zygote {
    faasd: PathBuf,
    /// Where it builds its template roots (visible only in its own mount namespace).
    dir: PathBuf,
    conn: Mutex<Option<Conn>>,
    /// How many zygotes have been started: a child is signalled and reaped only through the
    /// zygote that forked it (once that one is gone, its pids may belong to anyone).
    generation: AtomicU64,
    /// The generation of the zygote running now, 0 once it is known to be gone (read without
    /// the connection's lock, which a spawn holds).
    current: AtomicU64,
}

/// The connection to one running zygote.
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
pub fn start(faasd: &Path, dir: &Path) -> Result<Started, StartError> {
    if ZYGOTE.get().is_some() {
        return Err(StartError::AlreadyStarted);
    }
    // Whatever an earlier zygote left there was mounted only in its own namespace.
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StartError::ClearDir {
                dir: dir.to_owned(),
                source,
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| StartError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    let (conn, started) = launch(faasd, dir, 1)?;
    let zygote = Zygote {
        faasd: faasd.to_owned(),
        dir: dir.to_owned(),
        conn: Mutex::new(Some(conn)),
        generation: AtomicU64::new(1),
        current: AtomicU64::new(1),
    };
    ZYGOTE.set(zygote).map_err(|_| StartError::AlreadyStarted)?;
    Ok(started)
}

/// The running zygote, if this process started one.
pub fn get() -> Option<&'static Zygote> {
    ZYGOTE.get()
}

/// A started zygote process and the worker's end of its socket.
type Launched = (std::process::Child, OwnedFd);

/// What the keeper thread is asked to start.
type LaunchJob = (
    PathBuf,
    PathBuf,
    std::sync::mpsc::Sender<std::io::Result<Launched>>,
);

/// Starts `faasd __zygote DIR` from one thread that lives as long as the process: the
/// zygote's `PR_SET_PDEATHSIG` fires when the *thread* that forked it ends, and a blocking-pool
/// thread would end after a few idle seconds, taking the zygote and every executor with it.
fn spawn_from_keeper(faasd: &Path, dir: &Path) -> std::io::Result<Launched> {
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

/// Starts the zygote process with one end of a new socket pair as its stdin.
fn spawn_zygote(faasd: &Path, dir: &Path) -> std::io::Result<Launched> {
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

/// Starts a zygote of `generation` and waits until it says it is ready.
fn launch(faasd: &Path, dir: &Path, generation: u64) -> Result<(Conn, Started), StartError> {
    let (process, sock) = spawn_from_keeper(faasd, dir).map_err(|source| StartError::Exec {
        faasd: faasd.to_owned(),
        source,
    })?;
    let conn = Conn {
        sock,
        process,
        generation,
    };
    match read_frame::<Reply>(conn.sock.as_fd()) {
        Ok(Some((Ok(Reply::Ready { fast_attach, note }), _))) => {
            Ok((conn, Started { fast_attach, note }))
        }
        Ok(Some((Ok(Reply::Failed { message, .. }), _))) => Err(StartError::SetUp { message }),
        Ok(Some((Ok(_), _))) => Err(StartError::Handshake {
            source: Error::UnexpectedReply,
        }),
        Ok(Some((Err(source), _))) | Err(source) => Err(StartError::Handshake { source }),
        Ok(None) => Err(StartError::Ended),
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

/// A reply, the fds that came with it, and the generation of the zygote that sent it.
type Answer = (Reply, Vec<OwnedFd>, u64);

impl Zygote {
    /// One request and its reply, through the zygote of `generation` (`None`: the current one,
    /// started again if it has gone away).
    fn ask(
        &self,
        request: &Request,
        fds: &[RawFd],
        generation: Option<u64>,
    ) -> Result<Answer, Error> {
        blocking(|| {
            let mut conn = self.conn.lock().map_err(|_| Error::ZygoteLock)?;
            let mut relaunched = false;
            loop {
                if conn.is_none() {
                    if generation.is_some() || relaunched {
                        return Err(Error::ZygoteGone);
                    }
                    *conn = Some(self.relaunch()?);
                    relaunched = true;
                }
                let Some(c) = conn.as_ref() else { continue };
                if generation.is_some_and(|g| g != c.generation) {
                    return Err(Error::ZygoteGone);
                }
                match exchange(c, request, fds) {
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

    /// Starts a zygote of the next generation, in place of one that went away.
    fn relaunch(&self) -> Result<Conn, Error> {
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let (new, _) = launch(&self.faasd, &self.dir, next).map_err(|why| {
            tracing::warn!("sandbox zygote: {why}");
            Error::ZygoteRestart
        })?;
        tracing::info!("sandbox zygote started again");
        self.current.store(next, Ordering::SeqCst);
        Ok(new)
    }

    /// Whether the zygote of `generation` is still the one running.
    pub fn is_current(&self, generation: u64) -> bool {
        self.current.load(Ordering::SeqCst) == generation
    }

    /// Forks a shim for `argv` (a command line from [`crate::sandbox::shim::wrap`]); returns
    /// what the worker watches it through and the zygote's generation.
    pub fn spawn(
        &self,
        argv: &[CString],
        envp: &[CString],
        cwd: &CStr,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<(Spawned, u64), Error> {
        let bytes = |v: &[CString]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        let request = Request::Spawn {
            argv: bytes(argv),
            env: bytes(envp),
            cwd: cwd.to_bytes().to_vec(),
        };
        let fds = stdio.map(|fd| fd.as_raw_fd());
        match self.ask(&request, &fds, None)? {
            (Reply::Spawned { pid, contained }, fds, generation)
                if (1..=2).contains(&fds.len()) =>
            {
                let mut fds = fds.into_iter();
                let spawned = fds.next().map(|pidfd| Spawned {
                    pid,
                    pidfd,
                    ended: fds.next(),
                    contained,
                });
                spawned.map(|s| (s, generation)).ok_or(Error::MissingPidfd)
            }
            (Reply::Spawned { pid, .. }, _, generation) => {
                // A child we cannot follow must not run unwatched.
                self.kill(pid, generation);
                Err(Error::MissingPidfd)
            }
            (Reply::Failed { message, errno }, _, _) => {
                tracing::warn!("sandbox zygote: {message}");
                Err(Reply::into_error(message, errno))
            }
            _ => Err(Error::UnexpectedReply),
        }
    }

    /// The wait status of a child of the zygote of `generation` that has ended (its pidfd is
    /// readable). Also says whether the call's memory limit killed any of its processes
    /// (`None`: the child made its own cgroups, named by its pid, for the worker to read and
    /// remove).
    /// What the child used comes with it (see [`sys::Usage`]).
    pub fn reap(
        &self,
        pid: i32,
        generation: u64,
    ) -> Result<(ExitStatus, Option<bool>, sys::Usage), Error> {
        use std::os::unix::process::ExitStatusExt;
        match self.ask(&Request::Reap { pid }, &[], Some(generation))? {
            (
                Reply::Reaped {
                    status,
                    oom,
                    cpu_us,
                    peak_memory_bytes,
                },
                _,
                _,
            ) => {
                let usage = sys::Usage {
                    cpu_us,
                    peak_memory_bytes,
                };
                Ok((ExitStatus::from_raw(status), oom, usage))
            }
            (Reply::Failed { message, errno }, _, _) => Err(Reply::into_error(message, errno)),
            _ => Err(Error::UnexpectedReply),
        }
    }

    /// Has the zygote of `generation` kill and reap a child.
    pub fn kill(&self, pid: i32, generation: u64) {
        let _ = self.ask(&Request::Kill { pid }, &[], Some(generation));
    }
}

/// Sends `request` to the zygote behind `conn` and reads its reply.
fn exchange(
    conn: &Conn,
    request: &Request,
    fds: &[RawFd],
) -> Result<Option<super::wire::Frame<Reply>>, Error> {
    write_frame(conn.sock.as_fd(), request, fds)?;
    read_frame::<Reply>(conn.sock.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zygote_that_is_not_faasd_fails_to_start_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `true` ends at once without a frame: the zygote ended before it was ready.
        let ended = launch(Path::new("/bin/true"), dir.path(), 1).map(drop);
        assert!(matches!(ended, Err(StartError::Ended)), "{ended:?}");
        let missing = launch(&dir.path().join("no-such-faasd"), dir.path(), 1).map(drop);
        assert!(
            matches!(missing, Err(StartError::Exec { .. })),
            "{missing:?}"
        );
    }
}
