//! The zygote process (`faasd __zygote DIR`): [`zygote_main`] sets it up, then serves the
//! worker's requests one at a time, each handled by a method of [`Server`] named after it
//! (`spawn`, `reap`, `kill`). A spawn hands the call to the sandbox ready for its
//! configuration (`ready.rs`), or else forks the call's init, which sets itself up as
//! `posix_spawn` would (session, stdio, working directory), joins what the zygote prepared
//! (a pooled network namespace and cgroups, a template root, the compiled seccomp filter) and
//! runs the shim's layers and the function. Once the reply is sent, the zygote prepares the
//! next call's sandbox; between requests it ends ready sandboxes left idle and reaps the
//! children it answered for early (`reap_early`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::unistd::ForkResult;

use super::pools::{Cgroups, Nets, TakenCgroup};
use super::ready::{self, Ready, ReadySandboxes};
use super::templates::Templates;
use super::wire::{Reply, Request, read_frame, write_frame};
use crate::sandbox::root;
use crate::sandbox::shim::{self, Config, Prepared, Report};
use crate::sandbox::sys::{self, Error};

/// The fd on which the call's init finds its report pipe.
const REPORT_FD: RawFd = 3;

/// How long a call waits for a ready sandbox that is still preparing before it spawns cold.
const PREPARE_WAIT: Duration = Duration::from_millis(20);

/// Runs the zygote on the socket at fd 0; `args` (what follows `__zygote`) name the directory
/// for its template roots. Never returns.
pub fn zygote_main(args: &[OsString]) -> ! {
    // SAFETY: fd 0 is the socket the worker gave us; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    let dir = args.first().map(PathBuf::from).unwrap_or_default();
    let code = match serve(&sock, dir) {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_frame(sock.as_fd(), &Reply::failed(&e), &[]);
            eprintln!("faasd zygote: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Sets the zygote up, says it is ready, then answers requests until the worker goes away.
fn serve(sock: &OwnedFd, dir: PathBuf) -> Result<(), Error> {
    sys::die_with_parent()?;
    raise_fd_limit();
    crate::sandbox::shim::note_signal_dispositions();
    let (mut server, ready) = Server::open(dir)?;
    write_frame(sock.as_fd(), &ready, &[])?;
    loop {
        // Waits for a request, ending the ready sandboxes that have waited too long meanwhile.
        server.end_ready(false);
        server.reap_ending();
        if let Some(wait) = server.next_wake()
            && !sys::readable_within(sock.as_fd(), wait)
        {
            continue;
        }
        let Some((request, fds)) = read_frame::<Request>(sock.as_fd())? else {
            break;
        };
        let (reply, sent) = match request {
            // A frame this zygote cannot use fails that request alone.
            Err(e) => (Reply::failed(&e), Vec::new()),
            Ok(request) => server.handle(request, fds),
        };
        let fds: Vec<RawFd> = sent.iter().map(|fd| fd.as_raw_fd()).collect();
        write_frame(sock.as_fd(), &reply, &fds)?;
        // Off the call's path: the next call's sandbox.
        server.prepare_next();
    }
    // The worker is gone: its ready sandboxes and idle cgroups go too.
    server.end_ready(true);
    server.reap_ending();
    server.cgroups.remove_idle();
    Ok(())
}

/// Each running executor holds a pidfd, a report pipe and a network namespace here: the fd
/// limit goes up to its hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The zygote's state: what it prepares once and pools for its executors, and what it holds
/// for each unreaped child.
struct Server {
    /// The seccomp filter, compiled once.
    filter: crate::sandbox::seccomp::BpfProgram,
    /// The template roots.
    templates: Templates,
    /// The pooled cgroups.
    cgroups: Cgroups,
    /// The pooled network namespaces.
    nets: Nets,
    /// This process's own PID namespace.
    home_pid: OwnedFd,
    /// The read end of each unreaped child's report pipe.
    reports: HashMap<i32, OwnedFd>,
    /// Children answered for early (see [`Server::reap_early`]), not reaped yet.
    ending: Vec<i32>,
    /// Ready sandboxes serving a call, which serve another once it is reaped.
    serving: HashMap<i32, Serving>,
    /// Sandboxes prepared ahead of their call.
    ready: ReadySandboxes,
    /// The configuration (as JSON, and parsed) of the last spawn, whose next call's sandbox is
    /// prepared once its reply is sent.
    next: Option<(Vec<u8>, Config)>,
}

/// A ready sandbox serving a call, as the zygote holds it until the call is reaped: its
/// configuration, its control socket and a pidfd of its own.
struct Serving {
    key: Vec<u8>,
    control: OwnedFd,
    pidfd: OwnedFd,
}

/// What a spawn took for its call before the fork.
struct Taken {
    template: Option<PathBuf>,
    /// The pooled network namespace and its pool (`None`: the call uses the host's network).
    net: Option<(Option<PathBuf>, OwnedFd)>,
    cgroup: Option<TakenCgroup>,
}

impl Taken {
    /// What the forked child has ready from it: the template root and the cgroup it hands
    /// over, whether it joins the network namespace, and the filter.
    fn prepared(&mut self, filter: &crate::sandbox::seccomp::BpfProgram) -> Prepared {
        Prepared {
            net_joined: self.net.is_some(),
            filter: Some(filter.clone()),
            template: self.template.take(),
            cgroup: self.cgroup.take().map(|pair| pair.name),
        }
    }
}

impl Server {
    /// Sets the zygote's process up: a private mount namespace (for the template roots and the
    /// fast cgroup moves), the seccomp filter, its home namespaces. Returns the server and its
    /// ready reply.
    fn open(dir: PathBuf) -> Result<(Server, Reply), Error> {
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
        let filter = crate::sandbox::seccomp::program();
        let server = Server {
            filter,
            // Templates need the private mount namespace.
            templates: Templates::new(if private { dir } else { PathBuf::new() }),
            cgroups: Cgroups::default(),
            nets: Nets::new(sys::open_namespace("/proc/self/ns/net")?),
            home_pid: sys::open_namespace("/proc/self/ns/pid")?,
            reports: HashMap::new(),
            ending: Vec::new(),
            serving: HashMap::new(),
            ready: ReadySandboxes::default(),
            next: None,
        };
        Ok((server, Reply::Ready { fast_attach, note }))
    }

    /// Answers one request: the reply, and the fd to send with it.
    fn handle(&mut self, request: Request, fds: Vec<OwnedFd>) -> (Reply, Vec<OwnedFd>) {
        // Children answered for early that have ended since refill the pools first.
        self.reap_ending();
        let answer = match request {
            Request::Spawn { argv, env, cwd } => {
                let argv = argv.into_iter().map(OsString::from_vec).collect();
                let env = env.into_iter().map(OsString::from_vec).collect();
                self.spawn(argv, env, OsString::from_vec(cwd), fds).map(
                    |(pid, pidfd, contained)| {
                        let fds = self.spawned_fds(pid, pidfd);
                        (Reply::Spawned { pid, contained }, fds)
                    },
                )
            }
            Request::Reap { pid } => self.reap(pid).map(|reply| (reply, Vec::new())),
            Request::Kill { pid } => self.kill(pid).map(|reply| (reply, Vec::new())),
        };
        answer.unwrap_or_else(|e| (Reply::failed(&e), Vec::new()))
    }

    /// The fds that go with a `Spawned` reply: the pidfd, and a copy of the read end of the
    /// child's report pipe, which turns readable once the function has ended (the worker waits
    /// on either, never reads it).
    fn spawned_fds(&self, pid: i32, pidfd: OwnedFd) -> Vec<OwnedFd> {
        let report = self.reports.get(&pid).and_then(|r| r.try_clone().ok());
        std::iter::once(pidfd).chain(report).collect()
    }

    /// `Spawn`: forks the call's init for a shim command line (or hands the call to a ready
    /// one); returns its pid, a pidfd, and whether it is the init of the call's PID namespace.
    fn spawn(
        &mut self,
        argv: Vec<OsString>,
        env: Vec<OsString>,
        cwd: OsString,
        stdio: Vec<OwnedFd>,
    ) -> Result<(i32, OwnedFd, bool), Error> {
        if stdio.len() != 3 || !shim::is_wrapped(&argv) {
            return Err(Error::Arguments {
                what: "a spawn needs a shim's command line and three fds",
            });
        }
        let (config, inner) = shim::parse_args(&argv[2..])?;
        let key = argv[2].as_bytes().to_vec();
        if let Some(ready) = self.ready.take(&key) {
            if let Some((pid, pidfd)) = self.hand_over(&key, ready, (inner, &env, &stdio)) {
                let contained = config.namespaces;
                self.next = Some((key, config));
                return Ok((pid, pidfd, contained));
            }
        }
        let mut taken = self.take(&config)?;
        if config.namespaces && taken.template.is_some() {
            // Only over a template: a root built from nothing needs the call's working directory.
            self.next = Some((key, config.clone()));
        }
        let pipe = report_pipe().and_then(|p| next_child_in_new_pid_namespace(&config).map(|()| p));
        let (report_r, report_w) = match pipe {
            Ok(pipe) => pipe,
            Err(e) => return Err(self.give_back(taken, e)),
        };
        match self.fork(&config) {
            Err(e) => Err(self.give_back(taken, e)),
            Ok(ForkResult::Child) => {
                drop(report_r);
                let prepared = taken.prepared(&self.filter);
                let net = taken.net.as_ref().map(|(_, net)| net);
                let launch = Launch {
                    env: &env,
                    cwd: &cwd,
                    stdio: &stdio,
                    net,
                };
                std::process::exit(child(&config, inner, &launch, &prepared, report_w))
            }
            Ok(ForkResult::Parent { child }) => {
                drop((stdio, report_w));
                let (pid, pidfd) = self.adopt(child.as_raw(), Some(report_r), taken)?;
                Ok((pid, pidfd, config.namespaces))
            }
        }
    }

    /// Hands a call to a ready sandbox, with a new report pipe (whose read end replaces the
    /// sandbox's last): its pid and pidfd, or `None` (the sandbox is ended) when it is gone. A
    /// sandbox that serves again is kept as serving `key` until its call is reaped.
    fn hand_over(
        &mut self,
        key: &[u8],
        ready: Ready,
        call: (&[OsString], &[OsString], &[OwnedFd]),
    ) -> Option<(i32, OwnedFd)> {
        let (argv, env, stdio) = call;
        let Ok((report_r, report_w)) = report_pipe() else {
            self.end(ready);
            return None;
        };
        let (frame, fds) = ready::call_frame(argv, env, stdio, &report_w);
        let prepared = ready::prepared_within(ready.control.as_fd(), PREPARE_WAIT);
        if !(prepared && write_frame(ready.control.as_fd(), &frame, &fds).is_ok()) {
            self.end(ready);
            return None;
        }
        self.reports.insert(ready.pid, report_r);
        if ready.again
            && let Ok(pidfd) = ready.pidfd.try_clone()
        {
            let serving = Serving {
                key: key.to_vec(),
                control: ready.control,
                pidfd,
            };
            self.serving.insert(ready.pid, serving);
        }
        Some((ready.pid, ready.pidfd))
    }

    /// Prepares the next call's sandbox for the last spawn's configuration, unless one is
    /// ready. A failure only means that call prepares its own.
    fn prepare_next(&mut self) {
        let Some((key, config)) = self.next.take() else {
            return;
        };
        if self.ready.has(&key) {
            return;
        }
        match self.fork_ready(&config) {
            Ok(Some(ready)) => {
                if let Some(displaced) = self.ready.put(key, ready) {
                    self.end(displaced);
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("faasd zygote: cannot prepare a sandbox ahead: {e}"),
        }
    }

    /// Forks a ready sandbox for `config` (`None`: it has no template root).
    fn fork_ready(&mut self, config: &Config) -> Result<Option<Ready>, Error> {
        let mut taken = self.take(config)?;
        if taken.template.is_none() {
            // Its root would be built from the call's working directory: not ahead of it.
            let _ = self.give_back(
                taken,
                Error::Arguments {
                    what: "no template",
                },
            );
            return Ok(None);
        }
        let sockets = sys::call(
            "socketpair",
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            ),
        );
        // Each call brings its own report pipe (`hand_over`).
        let sockets = sockets.and_then(|s| next_child_in_new_pid_namespace(config).map(|()| s));
        let (control, theirs) = match sockets {
            Ok(fds) => fds,
            Err(e) => return Err(self.give_back(taken, e)),
        };
        match self.fork(config) {
            Err(e) => Err(self.give_back(taken, e)),
            Ok(ForkResult::Child) => {
                drop(control);
                let prepared = taken.prepared(&self.filter);
                let net = taken.net.as_ref().map(|(_, net)| net);
                std::process::exit(ready::child(config, &prepared, net, theirs))
            }
            Ok(ForkResult::Parent { child }) => {
                drop(theirs);
                let (pid, pidfd) = self.adopt(child.as_raw(), None, taken)?;
                let since = std::time::Instant::now();
                let again = shim::serves_again(config);
                Ok(Some(Ready {
                    pid,
                    pidfd,
                    control,
                    since,
                    again,
                }))
            }
        }
    }

    /// How long the zygote may wait for a request before it has work of its own: a ready
    /// sandbox to end, or children answered for early to reap (`None`: neither).
    fn next_wake(&self) -> Option<Duration> {
        let reap = (!self.ending.is_empty()).then_some(Duration::from_millis(1));
        match (self.ready.next_expiry(), reap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the ready sandboxes that waited too long (all of them with `everything`).
    fn end_ready(&mut self, everything: bool) {
        for ready in self.ready.expired(everything) {
            self.end(ready);
        }
    }

    /// Ends a ready sandbox that will serve no call: kills and reaps it, and gives its network
    /// namespace and cgroups back (nothing of a call ever ran in them).
    fn end(&mut self, ready: Ready) {
        let _ = sys::pidfd_kill(ready.pidfd.as_fd());
        drop(ready.control);
        let _ = sys::reap(ready.pid);
        self.reports.remove(&ready.pid);
        self.cgroups.release(ready.pid);
        self.nets.release(ready.pid);
    }

    /// What the call takes before the fork: its template root, a pooled network namespace and
    /// pooled cgroups.
    fn take(&mut self, config: &Config) -> Result<Taken, Error> {
        // An image's root is its own, built by the shim from the unpacked layers.
        let template = if config.namespaces && config.rootfs.is_none() {
            self.templates.for_config(config)
        } else {
            None
        };
        let net = if config.allow_net || !config.namespaces {
            None
        } else {
            let pool = net_pool(config);
            Some((pool.clone(), self.nets.take(pool.as_ref())?))
        };
        // Pooled cgroups: creating and removing a memory cgroup per call costs time, and a
        // removed one lingers in the kernel as long as page cache is charged to it. Only with a
        // PID namespace: its end guarantees no process of the call is left in them.
        let pooled =
            config.memory_bytes > 0 && config.namespaces && crate::sandbox::cgroup::available();
        let cgroup = if pooled {
            Some(
                self.cgroups
                    .take(config.memory_bytes, config.max_processes)?,
            )
        } else {
            None
        };
        Ok(Taken {
            template,
            net,
            cgroup,
        })
    }

    /// Gives back what a spawn took when it failed before the fork; returns its error.
    fn give_back(&mut self, taken: Taken, error: Error) -> Error {
        if let Some(cgroup) = taken.cgroup {
            self.cgroups.put_back(cgroup);
        }
        error
    }

    /// Forks; in the zygote, returns to its own PID namespace (with namespaces on, the child is
    /// the init of a new one).
    fn fork(&self, config: &Config) -> Result<ForkResult, Error> {
        // SAFETY: the zygote is single-threaded, so the child may run any code.
        let forked = unsafe { nix::unistd::fork() };
        if config.namespaces
            && !matches!(forked, Ok(ForkResult::Child))
            && let Err(errno) = nix::sched::setns(&self.home_pid, CloneFlags::CLONE_NEWPID)
        {
            // Every later child would land in this call's namespace: end, taking them all along.
            eprintln!("faasd zygote: setns(home PID) failed: {errno}");
            std::process::exit(1);
        }
        sys::call("fork", forked)
    }

    /// Takes a forked child in: holds its report pipe (a ready sandbox has none before its
    /// call), cgroups and network namespace until it is reaped; returns its pid and a pidfd.
    fn adopt(
        &mut self,
        pid: i32,
        report: Option<OwnedFd>,
        taken: Taken,
    ) -> Result<(i32, OwnedFd), Error> {
        // The child cannot be reaped before we wait for it, so this is its pidfd.
        let pidfd = match sys::pidfd_open(nix::unistd::Pid::from_raw(pid)) {
            Ok(pidfd) => pidfd,
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = sys::reap(pid);
                return Err(self.give_back(taken, e));
            }
        };
        if let Some(report) = report {
            self.reports.insert(pid, report);
        }
        if let Some(cgroup) = taken.cgroup {
            self.cgroups.hold(pid, cgroup);
        }
        if let Some((pool, net)) = taken.net {
            self.nets.hold(pid, pool, net);
        }
        Ok((pid, pidfd))
    }

    /// `Reap`: reaps a child that has ended (one still running is refused, never waited for)
    /// and gives its network namespace and cgroups back to the pools.
    fn reap(&mut self, pid: i32) -> Result<Reply, Error> {
        let (waited, usage) = match sys::wait4(pid, true) {
            Ok(None) => return self.reap_early(pid),
            Ok(Some((status, usage))) => (Ok(status), usage),
            Err(e) => (Err(e), sys::Usage::default()),
        };
        self.serving.remove(&pid);
        let report = self.reports.remove(&pid).and_then(|r| Report::read(&r));
        let oom = self.cgroups.release(pid);
        self.nets.release(pid);
        let (status, usage) = match report {
            Some(report) => (report.ending.wait_status(), report.usage),
            None => (waited?, usage),
        };
        Ok(Reply::Reaped {
            status,
            oom,
            cpu_us: usage.cpu_us,
            peak_memory_bytes: usage.peak_memory_bytes,
        })
    }

    /// `Reap` of a child whose init has reported how the function ended but has not ended
    /// itself (it is tearing its namespaces down): answered from the report now, so the call
    /// need not wait for the teardown; the child is reaped, and its network namespace and
    /// cgroups go back to the pools, once it has ended ([`Server::reap_ending`]). Refused, as
    /// by `reap`, while there is no report.
    fn reap_early(&mut self, pid: i32) -> Result<Reply, Error> {
        let report = self
            .reports
            .get(&pid)
            .and_then(Report::read)
            .ok_or(Error::NotEnded { pid })?;
        self.reports.remove(&pid);
        let oom = self.cgroups.oom_in_call(pid);
        match self.serving.remove(&pid) {
            // Its init has ended and reaped every process of the call: it renews itself and
            // is ready again (`ready::child`).
            Some(serving) => {
                let ready = Ready {
                    pid,
                    pidfd: serving.pidfd,
                    control: serving.control,
                    since: std::time::Instant::now(),
                    again: true,
                };
                if let Some(displaced) = self.ready.put(serving.key, ready) {
                    self.end(displaced);
                }
            }
            None => self.ending.push(pid),
        }
        Ok(Reply::Reaped {
            status: report.ending.wait_status(),
            oom,
            cpu_us: report.usage.cpu_us,
            peak_memory_bytes: report.usage.peak_memory_bytes,
        })
    }

    /// Reaps the children answered for early that have ended since, and gives their network
    /// namespaces and cgroups back to the pools: every process of their calls is gone then.
    fn reap_ending(&mut self) {
        let mut still = Vec::new();
        for pid in std::mem::take(&mut self.ending) {
            if let Ok(None) = sys::wait4(pid, true) {
                still.push(pid);
                continue;
            }
            self.cgroups.release(pid);
            self.nets.release(pid);
        }
        self.ending = still;
    }

    /// `Kill`: kills a child and reaps it.
    fn kill(&mut self, pid: i32) -> Result<Reply, Error> {
        // A killed sandbox serves no further call, whatever it reported before it died.
        self.serving.remove(&pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // A killed process ends at once unless stuck in the kernel: waited for a moment, never
        // for ever (the worker's other calls wait on this zygote).
        let mut reply = self.reap(pid);
        for _ in 0..100 {
            if !matches!(&reply, Err(Error::NotEnded { .. })) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            reply = self.reap(pid);
        }
        reply
    }
}

/// The pool a call's network namespace comes from and goes back to: reused only by the same
/// function's executors (a namespace keeps traces of its last user: TIME_WAIT sockets,
/// counters), and only when they run without privileges (a privileged one could change its
/// interfaces, routes or filters). `None`: not reused.
fn net_pool(config: &Config) -> Option<PathBuf> {
    let bundle = Path::new(root::BUNDLE);
    config.drop_uid.then(|| {
        config
            .read_only
            .iter()
            .find(|(_, inside)| inside == bundle)
            .map(|(host, _)| host.clone())
            .unwrap_or_default()
    })
}

/// A pipe on which a call's init reports how the function ended (the zygote reads it at
/// reaping, without blocking).
fn report_pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    sys::call(
        "pipe2",
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK),
    )
}

/// With namespaces on, makes the next child the init of a new PID namespace.
fn next_child_in_new_pid_namespace(config: &Config) -> Result<(), Error> {
    if config.namespaces {
        sys::call(
            "unshare(PID)",
            nix::sched::unshare(CloneFlags::CLONE_NEWPID),
        )?;
    }
    Ok(())
}

/// What the forked child sets itself up with before the shim's layers.
struct Launch<'a> {
    env: &'a [OsString],
    cwd: &'a OsString,
    /// stdin, stdout and stderr.
    stdio: &'a [OwnedFd],
    /// A pooled network namespace to join.
    net: Option<&'a OwnedFd>,
}

/// The forked child, the call's init: what `posix_spawn` does for an ordinary executor
/// (session, stdio, working directory), then the shim's layers and the function.
fn child(
    config: &Config,
    argv: &[OsString],
    launch: &Launch<'_>,
    prepared: &Prepared,
    report: OwnedFd,
) -> i32 {
    if let Err(e) = set_up_child(launch, &report) {
        eprintln!("{}{e}", shim::ERROR_PREFIX);
        return shim::SETUP_FAILED;
    }
    // Closed by the set-up's close_range already.
    std::mem::forget(report);
    // SAFETY: fd 3 is the report pipe, dup'ed there above; nothing else owns it.
    let report = unsafe { OwnedFd::from_raw_fd(REPORT_FD) };
    match shim::run_as_init(config, argv, launch.env, prepared, report) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{}{e}", shim::ERROR_PREFIX);
            shim::SETUP_FAILED
        }
    }
}

/// The child's set-up, in order: a new session, stdio on 0-2, the working directory, the
/// pooled network namespace, the report pipe on fd 3, every other fd closed (`report`'s
/// original too, which the caller must then forget rather than close again).
fn set_up_child(launch: &Launch<'_>, report: &OwnedFd) -> Result<(), Error> {
    sys::call("setsid", nix::unistd::setsid())?;
    for (fd, target) in launch.stdio.iter().zip(0..) {
        sys::dup2("dup2", fd.as_fd(), target)?;
    }
    sys::call(
        "chdir(working directory)",
        nix::unistd::chdir(launch.cwd.as_os_str()),
    )?;
    if let Some(net) = launch.net {
        sys::call(
            "setns(pooled NET)",
            nix::sched::setns(net, CloneFlags::CLONE_NEWNET),
        )?;
    }
    sys::dup2("dup2(report)", report.as_fd(), REPORT_FD)?;
    // The zygote's socket, the namespace and the originals of 0-3: nothing here uses them
    // again.
    sys::close_range(REPORT_FD as u32 + 1)
}

/// A private mount namespace (still receiving the host's later mounts) for the cgroup mount.
fn private_mounts() -> Result<(), Error> {
    sys::call("unshare(NS)", nix::sched::unshare(CloneFlags::CLONE_NEWNS))?;
    let none: Option<&str> = None;
    sys::call(
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

/// Mounts an empty named cgroup v1 hierarchy with `favordynmods`, then detaches it, keeping it
/// alive through an open fd for the zygote's life.
fn fast_cgroup_moves() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("faasd-zygote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| sys::on_path("mkdir", &dir, &e))?;
    let result = mount_favordynmods(&dir);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// The named hierarchy's mount at `dir`, held open and detached.
fn mount_favordynmods(dir: &Path) -> Result<(), Error> {
    use nix::mount::MsFlags;
    sys::call(
        "mount(cgroup name=faasd,favordynmods)",
        nix::mount::mount(
            Some("cgroup"),
            dir,
            Some("cgroup"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("none,name=faasd,favordynmods"),
        ),
    )?;
    let held = sys::call(
        "open(cgroup mount)",
        nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        ),
    )?;
    // Held for the rest of this process's life: closing it would end the hierarchy.
    std::mem::forget(held);
    sys::call(
        "umount2(cgroup mount, DETACH)",
        nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(drop_uid: bool, read_only: Vec<(PathBuf, PathBuf)>) -> Config {
        Config {
            allow_net: false,
            namespaces: true,
            drop_uid,
            tmpfs_bytes: 1 << 20,
            cpu_seconds: 5,
            max_files: 64,
            max_processes: 64,
            memory_bytes: 0,
            uid: 65534,
            gid: 65534,
            read_only,
            rootfs: None,
            workdir: None,
        }
    }

    #[test]
    fn a_network_namespace_is_pooled_per_function_and_only_without_privileges() {
        let bundle = vec![(PathBuf::from("/srv/f1"), PathBuf::from(root::BUNDLE))];
        assert_eq!(
            net_pool(&config(true, bundle.clone())),
            Some(PathBuf::from("/srv/f1"))
        );
        assert_eq!(net_pool(&config(false, bundle)), None);
        assert_eq!(net_pool(&config(true, Vec::new())), Some(PathBuf::new()));
    }
}
