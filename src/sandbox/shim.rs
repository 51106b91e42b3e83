//! The sandbox: a small single-threaded shim (`faasd __sandbox CONFIG -- PROGRAM ARGS...`) that
//! the worker starts in place of the function's program. It applies every layer, in one place
//! and in this order, then `execve`s the function:
//!
//! 1. session and process group (already new, from `posix_spawn`), `PR_SET_PDEATHSIG`;
//! 2. new PID, mount, IPC, UTS and (unless the function may use the network) network
//!    namespaces; the shim forks the namespace's init, which starts the function as pid 2 (so
//!    signals and zombies behave as on any host), ends whatever it left and reports how it
//!    ended; the shim then ends the same way;
//! 3. a private filesystem: a fresh tmpfs root holding read-only binds of the host's `/usr`,
//!    `/bin`, `/lib*`, `/sbin`, a few files of `/etc`, the device nodes a program needs, the
//!    paths the runtime needs (the bundle, the interpreter); a size-capped writable tmpfs as
//!    `/tmp` and the working directory; a fresh `/proc`; nothing else of the host;
//! 4. cgroups (v1 `memory` and `pids`) limiting the call's memory and process count, and
//!    rlimits: `CORE` 0, `NOFILE`, `FSIZE`, `CPU`, and `NPROC` where there is no pids cgroup;
//! 5. `no_new_privs`; an unprivileged uid/gid (which also drops every capability); every fd but
//!    0–2 closed;
//! 6. a seccomp filter answering EPERM to ptrace, mount, kexec, bpf, keyctl, io_uring,
//!    perf_event_open, unshare/setns and namespace-creating clones, reboot and module loading,
//!    installed by the function's own process just before its `execve` (`launch.rs`). Init
//!    runs no code of the function and stays unfiltered, so that a sandbox serving another call
//!    can renew its `/tmp` and IPC namespace.
//!
//! The shim runs before any thread exists (main dispatches to it before starting the async
//! runtime), so ordinary code is safe between its fork and exec. Each step's failure names the
//! system call (a [`sys::Error`]), and the shim then exits with [`SETUP_FAILED`].
//!
//! This file owns the shim's command line ([`wrap`], [`is_wrapped`], [`Config`]), its steps
//! (step 3, the filesystem, is `root.rs`), and `Report`, how the function ended (`Ending`) and
//! what it used, which init writes for the shim or the zygote. A zygote runs the same steps
//! from `run_as_init`, with what it did ahead of time (`Prepared`), or in two halves: a ready
//! sandbox runs `prepare_init` before its call is known and `start_and_wait` once it is.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, signal};
use nix::unistd::{ForkResult, fork};
use serde::{Deserialize, Serialize};

use super::launch::Launch;
pub(super) use super::root::WorkspaceState;
/// Where the sandbox shows the bundle, and its working directory (see `root.rs`).
pub use super::root::{BUNDLE, WORKDIR};
use super::root::{View, Workspace, build_root};
use super::sys::{self, Error, call as step};

/// The hidden subcommand that runs the shim.
pub const SHIM_COMMAND: &str = "__sandbox";

/// The exit status of a shim whose set-up failed (its stderr names the call).
pub const SETUP_FAILED: i32 = 125;

/// How the shim's error messages begin (on the executor's stderr).
pub const ERROR_PREFIX: &str = "faasd sandbox: ";

/// What the shim applies for one executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Leave the network namespace shared (the function was registered with network access).
    pub allow_net: bool,
    /// New namespaces and the private filesystem (off where the worker may not make them).
    #[serde(default = "on")]
    pub namespaces: bool,
    /// Switch to `uid`/`gid` (off where the worker may not, or already runs unprivileged).
    #[serde(default = "on")]
    pub drop_uid: bool,
    /// Size of the writable tmpfs (`/tmp`, the working directory), also `RLIMIT_FSIZE`.
    pub tmpfs_bytes: u64,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Open files (`RLIMIT_NOFILE`).
    pub max_files: u64,
    /// Processes of the call (its pids cgroup), or without cgroups of the function's uid
    /// (`RLIMIT_NPROC`).
    pub max_processes: u64,
    /// The call's memory limit (its memory cgroup); 0 for none.
    pub memory_bytes: u64,
    /// The uid and gid the function runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Host paths made visible read-only, each at the given path inside (the bundle, the
    /// interpreter...).
    pub read_only: Vec<(PathBuf, PathBuf)>,
    /// An unpacked image to be the root instead of the host's system paths (an `oci` function):
    /// bound read-only, with the sandbox's own `/tmp`, `/proc` and `/dev` over it.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Where the function starts inside its root, instead of `/tmp` (an image's `WorkingDir`).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

fn on() -> bool {
    true
}

/// Whether a command line runs through the shim.
pub fn is_wrapped(argv: &[OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == SHIM_COMMAND)
}

/// The shim's command line for `argv` under `config`.
pub fn wrap(faasd: &Path, config: &Config, argv: Vec<OsString>) -> Vec<OsString> {
    let mut out = vec![
        faasd.into(),
        SHIM_COMMAND.into(),
        serde_json::to_string(config)
            .expect("a sandbox config always serializes")
            .into(),
        "--".into(),
    ];
    out.extend(argv);
    out
}

/// Runs the shim: `args` are what follows `__sandbox` on the command line. Never returns.
pub fn shim_main(args: &[OsString]) -> ! {
    let code = match parse_args(args).and_then(|(config, argv)| {
        let env: Vec<OsString> = std::env::vars_os().map(|(k, v)| env_entry(k, &v)).collect();
        run(&config, argv, &env, &Prepared::default())
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{ERROR_PREFIX}{e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

/// What a zygote did ahead of time for the shim.
#[derive(Default)]
pub(super) struct Prepared {
    /// The shim already sits in a pooled network namespace with loopback up.
    pub net_joined: bool,
    /// The seccomp filter, compiled once.
    pub filter: Option<super::seccomp::BpfProgram>,
    /// A root the zygote built for this set of read-only paths (see [`fill_template`]).
    pub template: Option<PathBuf>,
    /// Pooled cgroups the zygote made for this call (else the shim makes its own).
    pub cgroup: Option<String>,
}

fn env_entry(key: OsString, value: &std::ffi::OsStr) -> OsString {
    let mut kv = key;
    kv.push("=");
    kv.push(value);
    kv
}

/// Splits the shim's arguments into its config and the function's command line.
pub(super) fn parse_args(args: &[OsString]) -> Result<(Config, &[OsString]), Error> {
    let (config, argv) = match args {
        [config, dashes, argv @ ..] if dashes == "--" && !argv.is_empty() => (config, argv),
        _ => {
            return Err(Error::Arguments {
                what: "expected CONFIG -- PROGRAM ARGS...",
            });
        }
    };
    let config: Config =
        serde_json::from_slice(config.as_bytes()).map_err(|_| Error::Arguments {
            what: "config is not valid JSON",
        })?;
    Ok((config, argv))
}

/// Applies every layer and runs `argv` with exactly `env`; returns the exit status to end with.
/// `prepared` is what a zygote has already done.
pub(super) fn run(
    config: &Config,
    argv: &[OsString],
    env: &[OsString],
    prepared: &Prepared,
) -> Result<i32, Error> {
    prologue(config, prepared)?;
    // 2. Namespaces; the PID namespace takes effect for the next child, the namespace's init.
    let new_net = enter_namespaces(config, prepared, true)?;

    // The namespace's init reports how the function ended through this pipe.
    let (report_r, report_w) = step("pipe2", nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))?;
    // SAFETY: the shim is single-threaded (it runs before the async runtime starts), so the
    // child may run any code.
    match step("fork", unsafe { fork() })? {
        ForkResult::Parent { child } => {
            drop(report_w);
            Ok(pass_on(child, report_r))
        }
        ForkResult::Child => {
            drop(report_r);
            let err = match init(config, new_net, argv, env, prepared, report_w) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            eprintln!("{ERROR_PREFIX}{err}");
            std::process::exit(SETUP_FAILED)
        }
    }
}

/// What [`run`] does, for a process a zygote has already made the init of a new PID namespace
/// (with namespaces on): the layers, then the function as pid 2. How the function ended goes to
/// `report` (for the zygote to pass on), not into this process's own exit status, since an
/// init cannot die by a signal it sends itself. Returns only when a step fails.
pub(super) fn run_as_init(
    config: &Config,
    argv: &[OsString],
    env: &[OsString],
    prepared: &Prepared,
    report: OwnedFd,
) -> Result<std::convert::Infallible, Error> {
    prepare_init(config, prepared)?;
    start_and_wait(config, argv, env, prepared.filter.as_ref(), report)
}

/// The part of [`run_as_init`] before the function is known: the layers up to and including
/// the private filesystem. A zygote runs it ahead of a call (see `zygote/ready.rs`), so that
/// the call itself only waits for [`start_and_wait`].
pub(super) fn prepare_init(config: &Config, prepared: &Prepared) -> Result<(), Error> {
    prologue(config, prepared)?;
    let new_net = enter_namespaces(config, prepared, false)?;
    ready_init(config, new_net, prepared)
}

/// Step 1 and the cgroups: signals, `PR_SET_PDEATHSIG`, the call's cgroups.
fn prologue(config: &Config, prepared: &Prepared) -> Result<(), Error> {
    // 1. Default dispositions for every signal (a Rust program starts with SIGPIPE ignored,
    //    and an ignored signal stays ignored across exec) and an empty mask; die with the
    //    worker.
    reset_signals();
    sys::die_with_parent()?;

    // The call's cgroups, which every process it starts inherits.
    if config.memory_bytes > 0 {
        match &prepared.cgroup {
            // The zygote set its limits.
            Some(name) => super::cgroup::join(name)?,
            None => super::cgroup::enter(config.memory_bytes, config.max_processes)?,
        }
    }
    Ok(())
}

/// Step 2: the mount, IPC, UTS (and `pid`: PID) namespaces, and a network namespace unless the
/// function may use the network or a zygote already put us in one. Returns whether a new
/// network namespace was made (its loopback is still down).
fn enter_namespaces(config: &Config, prepared: &Prepared, pid: bool) -> Result<bool, Error> {
    let new_net = config.namespaces && !config.allow_net && !prepared.net_joined;
    if !config.namespaces {
        return Ok(false);
    }
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if new_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let call = match (pid, new_net) {
        (true, true) => "unshare(PID|NS|IPC|UTS|NET)",
        (true, false) => "unshare(PID|NS|IPC|UTS)",
        (false, true) => "unshare(NS|IPC|UTS|NET)",
        (false, false) => "unshare(NS|IPC|UTS)",
    };
    step(call, unshare(flags))?;
    Ok(new_net)
}

/// How the function ended, as the namespace's init reports it on a pipe: a kind byte (`E` or
/// `S`) and a big-endian `i32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// A signal of this number killed it.
    Signaled(i32),
}

impl Ending {
    /// The report's bytes.
    fn encode(self) -> [u8; 5] {
        let (kind, value) = match self {
            Ending::Exited(code) => (b'E', code),
            Ending::Signaled(sig) => (b'S', sig),
        };
        let mut message = [kind, 0, 0, 0, 0];
        message[1..].copy_from_slice(&value.to_be_bytes());
        message
    }

    /// The ending a report's bytes say; `None` for bytes that are not a report.
    fn decode(bytes: [u8; 5]) -> Option<Ending> {
        let value = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        match bytes[0] {
            b'E' => Some(Ending::Exited(value)),
            b'S' => Some(Ending::Signaled(value)),
            _ => None,
        }
    }

    /// As a raw wait status.
    pub(super) fn wait_status(self) -> i32 {
        match self {
            Ending::Exited(code) => (code & 0xff) << 8,
            Ending::Signaled(sig) => sig & 0x7f,
        }
    }
}

/// What the namespace's init reports on its pipe once the function has ended: the
/// [`Ending`]'s five bytes, then what init's children (the function and whatever else init
/// reaped) used: CPU microseconds and peak resident bytes, big-endian `u64`s. With it, a zygote
/// can answer for the call while init is still on its way out (tearing down its namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Report {
    /// How the function ended.
    pub ending: Ending,
    /// What it used.
    pub usage: sys::Usage,
}

impl Report {
    /// The report's length in bytes.
    const LEN: usize = 21;

    /// The report's bytes.
    fn encode(self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[..5].copy_from_slice(&self.ending.encode());
        bytes[5..13].copy_from_slice(&self.usage.cpu_us.to_be_bytes());
        bytes[13..].copy_from_slice(&self.usage.peak_memory_bytes.to_be_bytes());
        bytes
    }

    /// The report its bytes say; `None` for bytes that are not one.
    fn decode(bytes: [u8; Self::LEN]) -> Option<Report> {
        let ending = Ending::decode([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])?;
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let usage = sys::Usage {
            cpu_us: u64_at(5),
            peak_memory_bytes: u64_at(13),
        };
        Some(Report { ending, usage })
    }

    /// Reads the report from `pipe`; `None` when init ended before it could write one (or,
    /// on a non-blocking pipe, has not written it yet).
    pub(super) fn read(pipe: &OwnedFd) -> Option<Report> {
        let mut buf = [0u8; Self::LEN];
        if nix::unistd::read(pipe, &mut buf).ok()? < buf.len() {
            return None;
        }
        Report::decode(buf)
    }

    /// Writes the report to `pipe`, in one `write` (shorter than `PIPE_BUF`, so it arrives
    /// whole).
    pub(super) fn write_to(self, pipe: OwnedFd) {
        let _ = std::io::Write::write_all(&mut std::fs::File::from(pipe), &self.encode());
    }
}

/// The shim outside the namespaces: waits for the namespace's init, then ends the way the
/// function did (the same exit status, or death by the same signal), so the worker sees it.
fn pass_on(init: nix::unistd::Pid, report: OwnedFd) -> i32 {
    let status = match sys::reap(init.as_raw()) {
        Ok(status) if libc::WIFEXITED(status) => libc::WEXITSTATUS(status),
        // Killed by a signal: the report, if init wrote one, still says how the function ended.
        Ok(_) => SETUP_FAILED,
        Err(_) => return SETUP_FAILED,
    };
    match Report::read(&report).map(|r| r.ending) {
        // Set-up failed before the function started; init said why on stderr.
        None => status,
        Some(Ending::Exited(code)) => code,
        Some(Ending::Signaled(value)) => {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(value) {
                let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
                // SAFETY: restoring the default disposition of a signal is always sound.
                let _ = unsafe { signal(sig, SigHandler::SigDfl) };
                let _ = nix::sys::signal::raise(sig);
            }
            128 + value
        }
    }
}

/// The namespace's init (pid 1): builds the filesystem, starts the function as pid 2 and waits
/// for it, reaping whatever else ends, then ends what the function left, reports and exits.
fn init(
    config: &Config,
    new_net: bool,
    argv: &[OsString],
    env: &[OsString],
    prepared: &Prepared,
    report: OwnedFd,
) -> Result<std::convert::Infallible, Error> {
    ready_init(config, new_net, prepared)?;
    start_and_wait(config, argv, env, prepared.filter.as_ref(), report)
}

/// The namespace's init up to the function's start: its filesystem. Init itself is never
/// filtered (the function installs the filter, `launch.rs`), so that a sandbox that serves
/// another call can renew its `/tmp` and IPC namespace.
fn ready_init(config: &Config, new_net: bool, prepared: &Prepared) -> Result<(), Error> {
    init_root(config, new_net, prepared)
}

/// In the namespace's init: dies with its parent, then (with namespaces) names the host, brings
/// up a new network namespace's loopback and builds the private filesystem.
fn init_root(config: &Config, new_net: bool, prepared: &Prepared) -> Result<(), Error> {
    // If the shim dies (killed with the worker), init dies, and the namespace with it.
    sys::die_with_parent()?;
    if config.namespaces {
        let _ = nix::unistd::sethostname("faasd");
        if new_net {
            sys::loopback_up()?;
        }
        let workspace = Workspace {
            tmpfs_bytes: config.tmpfs_bytes,
            uid: config.uid,
            gid: config.gid,
        };
        let view = View {
            read_only: &config.read_only,
            rootfs: config.rootfs.as_deref(),
            workdir: config.workdir.as_deref(),
        };
        build_root(&view, &workspace, prepared.template.as_deref())?;
    }
    Ok(())
}

/// Whether a ready sandbox for `config` may serve another call once its last one has ended
/// (`zygote/ready.rs`): only with its own namespaces and filesystem, for a function that runs
/// without privileges (it can change nothing init keeps: no mount, no host name, no network
/// setting), and with nothing bound into the workspace (which is renewed between calls).
pub(super) fn serves_again(config: &Config) -> bool {
    config.namespaces
        && config.drop_uid
        && config.rootfs.is_none()
        && !config
            .read_only
            .iter()
            .any(|(_, inside)| super::root::in_workspace(inside))
}

/// In the init of a sandbox that serves another call, the last one over (its processes all
/// gone): a fresh IPC namespace, and a fresh workspace unless the last call left it as it was
/// (`last`, updated here).
pub(super) fn renew(config: &Config, last: &mut Option<WorkspaceState>) -> Result<(), Error> {
    step("unshare(IPC)", unshare(CloneFlags::CLONE_NEWIPC))?;
    let now = WorkspaceState::now();
    if now.is_none() || now != *last {
        let workspace = Workspace {
            tmpfs_bytes: config.tmpfs_bytes,
            uid: config.uid,
            gid: config.gid,
        };
        super::root::renew_workspace(&workspace)?;
        *last = WorkspaceState::now();
    }
    Ok(())
}

/// In the namespace's init, its filesystem built: runs the call, reports how it ended on
/// `report` and exits.
pub(super) fn start_and_wait(
    config: &Config,
    argv: &[OsString],
    env: &[OsString],
    filter: Option<&super::seccomp::BpfProgram>,
    report: OwnedFd,
) -> Result<std::convert::Infallible, Error> {
    run_call(config, argv, env, filter)?.write_to(report);
    std::process::exit(0)
}

/// In the namespace's init, its filesystem built: one call. Starts the function (pid 2 in a
/// fresh PID namespace; the next free pid in a sandbox serving another call), lets go of the
/// call's stdio, waits for the function, then ends and reaps whatever it left; returns how it
/// ended and what every process init reaped during the call used.
pub(super) fn run_call(
    config: &Config,
    argv: &[OsString],
    env: &[OsString],
    filter: Option<&super::seccomp::BpfProgram>,
) -> Result<Report, Error> {
    let built;
    let filter = match filter {
        Some(filter) => filter,
        None => {
            built = super::seccomp::program();
            &built
        }
    };
    let ids = config.drop_uid.then_some((config.uid, config.gid));
    let launch = Launch::new(limits(config), ids, filter, config.namespaces, argv, env);
    let function = match launch.and_then(|launch| launch.start(SETUP_FAILED)) {
        Ok((function, failed)) => {
            if let Some(err) = failed {
                eprintln!("{ERROR_PREFIX}{err}");
            }
            function
        }
        Err(err) => {
            // Nothing started: report the set-up failure as the function's own would be.
            eprintln!("{ERROR_PREFIX}{err}");
            let _ = sys::stdio_to_null();
            let ending = Ending::Exited(SETUP_FAILED);
            let usage = sys::Usage::default();
            return Ok(Report { ending, usage });
        }
    };
    // Init keeps no copy of the call's stdin, stdout and stderr: the outputs end with the
    // call's own processes (closed, if /dev/null cannot be opened).
    let _ = sys::stdio_to_null();
    let mut usage = sys::Usage::default();
    let ending = wait_for_function(function, &mut usage)?;
    end_leftovers(&mut usage);
    Ok(Report { ending, usage })
}

/// In init, once the function has ended: kills and reaps whatever it left running, so the
/// report's usage counts their CPU and memory too (work moved into a background process is
/// metered like any other), and none of them outlives the answer. Only as the PID namespace's
/// init (pid 1), where `kill(-1)` reaches exactly the call's processes; without that namespace
/// the shim has no such scope, and the zygote's reap after the call ends them.
fn end_leftovers(usage: &mut sys::Usage) {
    if nix::unistd::getpid().as_raw() != 1 {
        return;
    }
    // pid 1 is spared by kill(-1): init signals every other process of its namespace.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    );
    while sys::wait_any(usage).is_ok() {}
}

/// In init: reaps every process that ends until `function` does, adding what each used to
/// `usage`; how the function ended.
fn wait_for_function(function: nix::unistd::Pid, usage: &mut sys::Usage) -> Result<Ending, Error> {
    loop {
        let (pid, status) = sys::wait_any(usage).map_err(|errno| Error::Call {
            call: "wait4",
            errno,
        })?;
        if pid != function.as_raw() {
            continue;
        }
        if libc::WIFEXITED(status) {
            return Ok(Ending::Exited(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Ending::Signaled(libc::WTERMSIG(status)));
        }
    }
}

/// The signals whose disposition is not the default in this process, when a zygote noted them
/// ([`note_signal_dispositions`]) for the inits it forks, which inherit its dispositions.
static NOT_DEFAULT: std::sync::OnceLock<Vec<libc::c_int>> = std::sync::OnceLock::new();

/// Notes which signals have a disposition other than the default (a Rust program ignores
/// SIGPIPE and handles SIGSEGV and SIGBUS), so that a forked init resets only those: a reset
/// of every signal is some sixty system calls per call. For a process that sets no handler
/// after this.
pub(super) fn note_signal_dispositions() {
    let changed = (1..=libc::SIGRTMAX())
        .filter(|&signo| {
            // SAFETY: a query (no new action) into a zeroed struct the call fills in.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let queried = unsafe { libc::sigaction(signo, std::ptr::null(), &mut old) } == 0;
            queried && old.sa_sigaction != libc::SIG_DFL
        })
        .collect();
    let _ = NOT_DEFAULT.set(changed);
}

/// Every catchable signal back to its default disposition, and an empty signal mask.
fn reset_signals() {
    let every: Vec<libc::c_int>;
    let signals = match NOT_DEFAULT.get() {
        Some(noted) => noted.as_slice(),
        None => {
            every = (1..=libc::SIGRTMAX()).collect();
            &every
        }
    };
    for &signo in signals {
        if signo != libc::SIGKILL && signo != libc::SIGSTOP {
            // SAFETY: restoring the default disposition of a signal is always sound; numbers
            // the kernel refuses (reserved by the C library) just fail.
            unsafe { libc::signal(signo, libc::SIG_DFL) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Step 4: resource limits.
fn limits(config: &Config) -> Vec<(&'static str, Resource, u64)> {
    let mut limits = vec![
        ("setrlimit(CORE)", Resource::RLIMIT_CORE, 0),
        (
            "setrlimit(NOFILE)",
            Resource::RLIMIT_NOFILE,
            config.max_files,
        ),
        // Above the tmpfs size, so filling the disk meets ENOSPC rather than SIGXFSZ.
        (
            "setrlimit(FSIZE)",
            Resource::RLIMIT_FSIZE,
            config.tmpfs_bytes + (1 << 20),
        ),
        ("setrlimit(CPU)", Resource::RLIMIT_CPU, config.cpu_seconds),
    ];
    // The call's pids cgroup bounds its processes where there are cgroups (`memory_bytes` > 0:
    // the call joined its memory and pids cgroups, or failed). `NPROC` is only the bound
    // without them: it counts every process of the uid on the machine, so with it one call's
    // fork bomb would make every other call's forks fail.
    if config.memory_bytes == 0 {
        limits.push((
            "setrlimit(NPROC)",
            Resource::RLIMIT_NPROC,
            config.max_processes,
        ));
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            allow_net: false,
            namespaces: true,
            drop_uid: false,
            tmpfs_bytes: 64 << 20,
            cpu_seconds: 32,
            max_files: 1024,
            max_processes: 1024,
            memory_bytes: 256 << 20,
            uid: 65534,
            gid: 65533,
            read_only: vec![(PathBuf::from("/srv/bundle"), PathBuf::from(BUNDLE))],
            rootfs: None,
            workdir: None,
        }
    }

    #[test]
    fn a_wrapped_command_line_parses_back_to_its_config_and_program() {
        let argv = vec![OsString::from("/bin/echo"), OsString::from("hi there")];
        let wrapped = wrap(Path::new("/usr/bin/faasd"), &config(), argv.clone());
        assert!(is_wrapped(&wrapped));
        assert_eq!(wrapped[0], "/usr/bin/faasd");
        assert_eq!(wrapped[1], SHIM_COMMAND);
        let (parsed, program) = parse_args(&wrapped[2..]).expect("parses");
        assert_eq!(program, &argv[..]);
        assert_eq!(
            serde_json::to_value(&parsed).expect("json"),
            serde_json::to_value(config()).expect("json")
        );
        assert!(!is_wrapped(&argv));
        assert!(!is_wrapped(&[OsString::from("faasd")]));
    }

    #[test]
    fn a_config_without_the_later_switches_keeps_them_on() {
        let mut json = serde_json::to_value(config()).expect("json");
        let object = json.as_object_mut().expect("an object");
        object.remove("namespaces");
        object.remove("drop_uid");
        let parsed: Config = serde_json::from_value(json).expect("decodes");
        assert!(parsed.namespaces && parsed.drop_uid);
    }

    #[test]
    fn shim_arguments_without_a_program_or_with_a_bad_config_are_refused() {
        let refused = |list: &[&str]| {
            let args: Vec<OsString> = list.iter().map(OsString::from).collect();
            matches!(parse_args(&args), Err(Error::Arguments { .. }))
        };
        assert!(refused(&["{}", "--"]), "no program");
        assert!(refused(&["{}", "/bin/true"]), "no dashes");
        assert!(refused(&["{not json", "--", "/bin/true"]), "not JSON");
    }

    #[test]
    fn every_ending_round_trips_through_its_five_bytes() {
        for ending in [
            Ending::Exited(0),
            Ending::Exited(3),
            Ending::Exited(-1),
            Ending::Signaled(9),
            Ending::Signaled(i32::MAX),
        ] {
            let bytes = ending.encode();
            assert_eq!(Ending::decode(bytes), Some(ending));
        }
        // The encoding itself: a kind byte and a big-endian i32.
        assert_eq!(Ending::Exited(258).encode(), [b'E', 0, 0, 1, 2]);
        assert_eq!(Ending::Signaled(11).encode(), [b'S', 0, 0, 0, 11]);
        assert_eq!(Ending::decode([b'X', 0, 0, 0, 1]), None);
    }

    #[test]
    fn a_report_is_read_from_its_pipe_and_a_short_one_is_none() {
        let report = Report {
            ending: Ending::Signaled(6),
            usage: sys::Usage {
                cpu_us: 1_234_567,
                peak_memory_bytes: 5 << 30,
            },
        };
        let (r, w) = sys::pipe().expect("pipe");
        report.write_to(w);
        assert_eq!(Report::read(&r), Some(report));
        let (r, w) = sys::pipe().expect("pipe");
        drop(w);
        assert_eq!(Report::read(&r), None, "init ended before it reported");
        let mut bytes = report.encode();
        bytes[0] = b'X';
        assert_eq!(Report::decode(bytes), None);
    }

    #[test]
    fn an_ending_as_a_wait_status_reads_back_as_the_same_ending() {
        let exited = Ending::Exited(7).wait_status();
        assert!(libc::WIFEXITED(exited) && libc::WEXITSTATUS(exited) == 7);
        let killed = Ending::Signaled(libc::SIGKILL).wait_status();
        assert!(libc::WIFSIGNALED(killed) && libc::WTERMSIG(killed) == libc::SIGKILL);
    }
}
