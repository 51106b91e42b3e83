//! HTTP-service executors: a function's program started as a server that listens on its port,
//! kept running between requests, and reached inside its own network namespace.
//!
//! An executor serves up to its function's `http_concurrency` requests at once; a request
//! that finds every executor of its function version full starts another. Executors idle past
//! their idle timeout are stopped by [`HttpPool::reap`], as warm pools do.
//!
//! # Reaching the server without the host's network
//!
//! In the sandbox each executor has its own network namespace (loopback only). To connect,
//! a short-lived thread enters that namespace (`setns` on `/proc/PID/ns/net` of the function's
//! process), makes a socket and connects it to `127.0.0.1:PORT`; a socket stays in the
//! namespace it was made in, so the connected stream is handed back to tokio and used from
//! the host's side. The function never gets the host's network. Without a network namespace
//! (`--sandbox none`, or `allow_net`) the server listens on the host's loopback, so a worker
//! runs at most one executor of such a function (two could not share the port).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use super::{Pipes, keep_tail, spawn};
use crate::sandbox::process;
use crate::units::format_duration;

/// How often a starting executor's port is tried until it accepts.
const READY_POLL: Duration = Duration::from_millis(5);

/// How much of an executor's output is kept for the message of a failed start.
const OUTPUT_TAIL_BYTES: usize = 8 * 1024;

/// Errors of HTTP-service executors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The executor could not be started.
    #[error("cannot start the HTTP service of {function}: {message}")]
    Start {
        /// The function.
        function: String,
        /// What went wrong, with the tail of its output.
        message: String,
    },
    /// Connecting to a running executor's port failed.
    #[error("cannot connect to port {port} of the HTTP service of {function}: {message}")]
    Connect {
        /// The function.
        function: String,
        /// The port.
        port: u16,
        /// The system's error.
        message: String,
    },
}

/// What a request needs to start an executor of its function version.
#[derive(Clone)]
pub struct ServiceSpec {
    /// The function version.
    pub key: (String, u32),
    /// The command line, through the sandbox.
    pub argv: Vec<OsString>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Where its working directory is made.
    pub work_root: PathBuf,
    /// The port it listens on.
    pub port: u16,
    /// Requests one executor serves at once.
    pub concurrency: u32,
    /// The most executors of the function version this worker runs (a few per slot it has):
    /// past them, requests share the executors beyond `concurrency` rather than start more.
    pub max_executors: u32,
    /// The longest its start may take until the port accepts.
    pub start_timeout: Duration,
    /// How long it may stay idle.
    pub idle_timeout: Duration,
    /// Whether it has a network namespace of its own (else it listens on the host's).
    pub own_network: bool,
    /// What must stay while an executor of it runs (its code bundle's hold in the worker's
    /// cache, which keeps the bundle and its unpacked image from eviction).
    pub keep: Option<super::KeepAlive>,
}

/// A started executor.
struct Running {
    child: process::Child,
    /// A process inside the function's network namespace.
    net_pid: u32,
    sandboxed: bool,
    _stdin: Option<tokio::net::unix::pipe::Sender>,
    _workdir: tempfile::TempDir,
    _keep: Option<super::KeepAlive>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.child.end_executor(self.sandboxed);
    }
}

/// One executor, starting or started.
struct Executor {
    /// Unique among the executors this process ever started.
    id: u64,
    port: u16,
    function: String,
    /// Requests given to it and not finished.
    in_flight: AtomicU32,
    last_used: Mutex<Instant>,
    idle_timeout: Duration,
    started: OnceCell<Result<Running, Error>>,
}

/// A function version: its name and version.
type Key = (String, u32);

/// The id of the next executor started.
static NEXT_EXECUTOR_ID: AtomicU64 = AtomicU64::new(1);

/// A request's hold on one executor: its slot is given back when dropped.
pub struct Lease {
    executor: Arc<Executor>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.executor.last_used.lock().expect("last_used lock") = Instant::now();
        self.executor.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HTTP-service executors of one worker, by function version.
#[derive(Clone, Default)]
pub struct HttpPool {
    executors: Arc<Mutex<HashMap<Key, Vec<Arc<Executor>>>>>,
}

impl HttpPool {
    /// A slot on an executor of `spec`'s function version, started first when every one is
    /// full (or none runs); waits for its start.
    pub async fn acquire(&self, spec: ServiceSpec) -> Result<Lease, Error> {
        let executor = self.reserve(&spec);
        let lease = Lease {
            executor: executor.clone(),
        };
        // The start runs on a task of its own: a request that goes away while it waits does
        // not abandon a half-started process; the next request waits for the same start.
        let owned = spec.clone();
        let started = executor
            .started
            .get_or_init(|| async move {
                let function = owned.key.0.clone();
                tokio::spawn(async move { start(&owned).await })
                    .await
                    .unwrap_or_else(|e| {
                        Err(Error::Start {
                            function,
                            message: format!("the start was abandoned: {e}"),
                        })
                    })
            })
            .await;
        match started {
            Ok(_) => Ok(lease),
            Err(e) => {
                drop(lease);
                self.forget(&spec.key, &executor);
                Err(e.clone())
            }
        }
    }

    /// Takes a slot on the least busy executor with room, or on a new one.
    fn reserve(&self, spec: &ServiceSpec) -> Arc<Executor> {
        let mut executors = self.executors.lock().expect("http pool lock");
        let list = executors.entry(spec.key.clone()).or_default();
        list.retain(|e| e.alive());
        let max = if spec.own_network {
            spec.max_executors as usize
        } else {
            1
        };
        let room = list
            .iter()
            .filter(|e| e.in_flight.load(Ordering::Acquire) < spec.concurrency || list.len() >= max)
            .min_by_key(|e| e.in_flight.load(Ordering::Acquire));
        let executor = match room {
            Some(e) => e.clone(),
            None => {
                let e = Arc::new(Executor {
                    id: NEXT_EXECUTOR_ID.fetch_add(1, Ordering::Relaxed),
                    port: spec.port,
                    function: spec.key.0.clone(),
                    in_flight: AtomicU32::new(0),
                    last_used: Mutex::new(Instant::now()),
                    idle_timeout: spec.idle_timeout,
                    started: OnceCell::new(),
                });
                list.push(e.clone());
                e
            }
        };
        executor.in_flight.fetch_add(1, Ordering::AcqRel);
        executor
    }

    fn forget(&self, key: &Key, executor: &Arc<Executor>) {
        let mut executors = self.executors.lock().expect("http pool lock");
        if let Some(list) = executors.get_mut(key) {
            list.retain(|e| !Arc::ptr_eq(e, executor));
        }
    }

    /// Stops the executors idle past their idle timeout, and those whose process ended.
    pub fn reap(&self) {
        let now = Instant::now();
        let mut stopped = Vec::new();
        let mut executors = self.executors.lock().expect("http pool lock");
        for list in executors.values_mut() {
            list.retain(|e| {
                let keep = e.alive() && !e.expired(now);
                if !keep {
                    stopped.push(e.clone());
                }
                keep
            });
        }
        executors.retain(|_, list| !list.is_empty());
        drop(executors);
        // Dropping the last reference kills and reaps the process.
        drop(stopped);
    }

    /// Stops every executor of a function (all its versions up to `version`).
    pub fn retire(&self, function: &str, version: u32) {
        let mut executors = self.executors.lock().expect("http pool lock");
        executors.retain(|(name, v), _| name != function || *v > version);
    }

    /// The executors started and not stopped, by function.
    pub fn counts(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let executors = self.executors.lock().expect("http pool lock");
        for ((name, _), list) in executors.iter() {
            *out.entry(name.clone()).or_default() += list.len() as u32;
        }
        out
    }
}

impl Executor {
    /// Whether it is starting, or started and its process still runs.
    fn alive(&self) -> bool {
        match self.started.get() {
            None => true,
            Some(Ok(running)) => !running.child.has_exited(),
            Some(Err(_)) => false,
        }
    }

    /// Whether it has had no request for longer than its idle timeout.
    fn expired(&self, now: Instant) -> bool {
        let idle_since = *self.last_used.lock().expect("last_used lock");
        self.in_flight.load(Ordering::Acquire) == 0
            && self.started.initialized()
            && now.duration_since(idle_since) > self.idle_timeout
    }
}

impl Lease {
    /// Its executor's id: unique among the executors this process ever started, so what is
    /// kept for one (a kept-alive connection) is never handed to another.
    pub fn executor_id(&self) -> u64 {
        self.executor.id
    }

    /// A new connection to the executor's port, made inside its network namespace.
    pub async fn connect(&self) -> Result<TcpStream, Error> {
        let e = &self.executor;
        let Some(Ok(running)) = e.started.get() else {
            return Err(Error::Connect {
                function: e.function.clone(),
                port: e.port,
                message: "the executor is not running".into(),
            });
        };
        connect_in(running.net_pid, e.port)
            .await
            .map_err(|err| Error::Connect {
                function: e.function.clone(),
                port: e.port,
                message: err.to_string(),
            })
    }
}

/// Starts an executor and waits until its port accepts a connection (or the start timeout
/// passes, or it exits).
async fn start(spec: &ServiceSpec) -> Result<Running, Error> {
    let failed = |message: String| Error::Start {
        function: spec.key.0.clone(),
        message,
    };
    let workdir = tempfile::Builder::new()
        .prefix("http-")
        .tempdir_in(&spec.work_root)
        .map_err(|e| failed(format!("cannot create a working directory: {e}")))?;
    let mut child = spawn::spawn_off_runtime(
        spec.argv.clone(),
        workdir.path().to_owned(),
        spec.env.clone(),
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    let Pipes {
        stdin,
        stdout,
        stderr,
    } = Pipes::take(&mut child);
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    for out in [stdout, stderr].into_iter().flatten() {
        tokio::spawn(keep_tail(out, tail.clone(), OUTPUT_TAIL_BYTES));
    }
    let mut running = Running {
        net_pid: child.pid(),
        sandboxed: crate::sandbox::shim::is_wrapped(&spec.argv),
        child,
        _stdin: stdin,
        _workdir: workdir,
        _keep: spec.keep.clone(),
    };
    match wait_listening(&mut running, spec).await {
        Ok(()) => Ok(running),
        Err(why) => {
            let output = String::from_utf8_lossy(tail.lock().expect("tail lock").make_contiguous())
                .into_owned();
            let output = if output.is_empty() {
                String::new()
            } else {
                format!("; its output ends with:\n{output}")
            };
            Err(failed(format!("{why}{output}")))
        }
    }
}

/// Why a started executor never listened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotListening(String);

/// Tries the port every [`READY_POLL`] until it accepts; the reason when it never does.
async fn wait_listening(running: &mut Running, spec: &ServiceSpec) -> Result<(), NotListening> {
    let deadline = tokio::time::Instant::now() + spec.start_timeout;
    let own_net = own_net_namespace();
    loop {
        if running.child.has_exited() {
            // Let its last output arrive before the message is made.
            let _ = tokio::time::timeout(Duration::from_millis(100), running.child.exited()).await;
            return Err(NotListening(
                "the program exited before it listened on its port".into(),
            ));
        }
        let pid = super::usage::executor_pid(running.child.pid());
        // In the sandbox, wait until the function's process is in its own namespace: until
        // then a connection would reach the host's loopback.
        let entered = !spec.own_network || net_namespace(pid).is_some_and(|ns| Some(ns) != own_net);
        if entered && connect_in(pid, spec.port).await.is_ok() {
            running.net_pid = pid;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NotListening(format!(
                "nothing accepted connections on port {} within {}",
                spec.port,
                format_duration(spec.start_timeout)
            )));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The inode of a process's network namespace.
fn net_namespace(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The inode of this process's network namespace.
fn own_net_namespace() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Connects to `127.0.0.1:port` inside the network namespace of process `pid`, from a thread
/// of its own that enters the namespace and ends with the connection made.
async fn connect_in(pid: u32, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("faasd-http-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_blocking(pid, port));
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Enters `pid`'s network namespace (this thread only) and connects.
fn connect_blocking(pid: u32, port: u16) -> std::io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    if net_namespace(pid) != own_net_namespace() {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::other(format!("setns(NET) of process {pid}: {e}")))?;
    }
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(concurrency: u32, own_network: bool) -> ServiceSpec {
        ServiceSpec {
            key: ("web".into(), 1),
            argv: vec!["/bin/true".into()],
            env: Vec::new(),
            work_root: std::env::temp_dir(),
            port: 8080,
            concurrency,
            max_executors: 8,
            start_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            own_network,
            keep: None,
        }
    }

    #[test]
    fn executors_stop_growing_at_the_workers_slots_and_share_the_rest() {
        let pool = HttpPool::default();
        let spec = ServiceSpec {
            max_executors: 2,
            ..spec(1, true)
        };
        let held: Vec<_> = (0..6).map(|_| pool.reserve(&spec)).collect();
        assert_eq!(pool.counts().get("web"), Some(&2));
        let loads: Vec<u32> = held[..2]
            .iter()
            .map(|e| e.in_flight.load(Ordering::Acquire))
            .collect();
        assert_eq!(loads, [3, 3], "the six requests spread evenly");
    }

    #[test]
    fn a_full_executor_makes_room_on_a_new_one() {
        let pool = HttpPool::default();
        let spec = spec(2, true);
        let held: Vec<_> = (0..5).map(|_| pool.reserve(&spec)).collect();
        assert_eq!(pool.counts().get("web"), Some(&3));
        let loads: Vec<u32> = held
            .iter()
            .map(|e| e.in_flight.load(Ordering::Acquire))
            .collect();
        assert!(loads.iter().all(|&n| n <= 2), "{loads:?}");
    }

    #[test]
    fn without_a_network_namespace_one_executor_takes_every_request() {
        let pool = HttpPool::default();
        let spec = spec(1, false);
        for _ in 0..3 {
            pool.reserve(&spec);
        }
        assert_eq!(pool.counts().get("web"), Some(&1));
    }

    #[test]
    fn retiring_forgets_the_function_s_executors() {
        let pool = HttpPool::default();
        pool.reserve(&spec(1, true));
        pool.retire("web", 1);
        assert!(pool.counts().is_empty());
    }
}
