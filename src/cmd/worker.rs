//! `faasd worker --server HOST:PORT`: join a server from any machine and run its tasks.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::exec;
use crate::proto::DispatchMode;
use crate::worker::{self, Agent, CodeCache, Ended};

/// How a worker takes tasks.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Dispatch {
    /// The server places tasks on free slots.
    Push,
    /// The worker asks for a task each time a slot frees.
    Pull,
}

/// Run a worker that joins a server.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The server's worker port.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "check_sandbox"
    )]
    pub server: Option<String>,
    /// Print which sandbox layers this machine can apply, then exit (1 if any cannot).
    #[arg(long)]
    pub check_sandbox: bool,
    /// Executor slots (default: one per core).
    #[arg(long)]
    pub slots: Option<u32>,
    /// How tasks reach this worker.
    #[arg(long, value_enum, default_value = "push")]
    pub dispatch: Dispatch,
    /// A name for people (default: the host name and pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Where fetched code is cached, and executors work: one worker's (a second one on it exits
    /// 1).
    #[arg(long, default_value = "./faasd-worker-cache")]
    pub cache: PathBuf,
    #[command(flatten)]
    pub executors: super::ExecutorArgs,
    /// How long SIGTERM waits for running tasks before the worker exits anyway.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub drain_timeout: Duration,
    /// The server's join token (print it on the server with `faasd join-token`); a worker
    /// joining over loopback while the server has no users needs none. A token may begin with
    /// `-` (one made before tokens avoided it, or one of your own): it is taken as the value.
    #[arg(
        long,
        env = "FAASD_JOIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub join_token: Option<String>,
    /// Connect over TLS (the server runs with `--tls-cert`); the certificate must name the
    /// host of `--server`.
    #[arg(long)]
    pub tls: bool,
    /// The CA certificate (PEM) that signed the server's certificate (default: the system's
    /// roots); with `--tls`.
    #[arg(long, env = "FAASD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Runs `faasd worker` until SIGTERM/SIGINT (after draining) or a refused handshake.
pub async fn run(args: WorkerArgs) -> anyhow::Result<u8> {
    if args.check_sandbox {
        return check_sandbox(&args.executors);
    }
    let server = args.server.clone().unwrap_or_default();
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    if slots == 0 {
        return Err(exit::coded(exit::USAGE, "--slots must be at least 1"));
    }
    check_server_address(&server)?;
    let tls = tls_connector(&args, &server)?;
    // `work_root` lives until the worker ends: dropping it removes the executors' directories;
    // `lock` keeps other workers off the cache meanwhile.
    let (agent, work_root, lock) = build_agent(&args, slots)?;
    let cancel = cancel_on_signal(agent.clone()).await?;
    let link = ServerLink {
        server,
        tls,
        agent,
        slots,
        cancel,
        drain_timeout: args.drain_timeout,
    };
    let ended = link.stay_connected().await;
    // The working directories go before the lock does: a worker started next on this cache
    // waits for the lock, and must not have its own directories removed by this one.
    drop(link);
    drop(work_root);
    drop(lock);
    // Stopped at once by a second signal: the drain may have ended first (its tasks were
    // killed), but the exit says how the worker was stopped.
    match STOPPED_BY.load(Ordering::Acquire) {
        0 => ended,
        code => Ok(code),
    }
}

/// The exit code of a second signal (130 for SIGINT, 143 for SIGTERM) once one arrived.
static STOPPED_BY: AtomicU8 = AtomicU8::new(0);

/// Refuses a `--server` that is not `HOST:PORT` (exit 2): it could never connect, and would
/// retry for ever.
fn check_server_address(server: &str) -> anyhow::Result<()> {
    let port = server
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    // An IPv6 host is bracketed (`[::1]:7000`); a URL (`http://...`) is not an address.
    let host_ok = |host: &str| {
        !host.is_empty()
            && !host.contains('/')
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    };
    match port {
        Some((host, Ok(port))) if host_ok(host) && port > 0 => Ok(()),
        _ => Err(exit::coded(
            exit::USAGE,
            format!(
                "--server {server:?} is not HOST:PORT: give the server's worker port, as \
                 `faasd serve` prints it (`faasd worker port on HOST:PORT`)"
            ),
        )),
    }
}

/// The TLS connector and server name of `--tls` (with `--cacert`), if asked for.
fn tls_connector(args: &WorkerArgs, server: &str) -> anyhow::Result<Option<WorkerTls>> {
    if !args.tls {
        return Ok(None);
    }
    let usage = |e: crate::tls::Error| exit::coded(exit::USAGE, format!("cannot use TLS: {e}"));
    let config = crate::tls::client_config(args.cacert.as_deref()).map_err(usage)?;
    let name = crate::tls::server_name(server).map_err(usage)?;
    Ok(Some(WorkerTls {
        connector: tokio_rustls::TlsConnector::from(config),
        name,
    }))
}

/// How a `--tls` worker starts each connection.
struct WorkerTls {
    connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must carry (the host of `--server`).
    name: rustls::pki_types::ServerName<'static>,
}

/// The lock a worker holds on its `--cache` for as long as it runs.
type CacheLock = nix::fcntl::Flock<std::fs::File>;

/// How long a worker waits for its cache's lock (a worker being restarted may still be exiting).
const CACHE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the lock of cache directory `dir` (the file `.lock` in it), waiting up to
/// [`CACHE_LOCK_WAIT`] while another process holds it. Two workers on one cache would remove
/// each other's working directories and partial downloads, so the second one exits 1 instead.
/// The file is opened close-on-exec: executors never inherit the lock.
fn lock_cache(dir: &std::path::Path) -> anyhow::Result<CacheLock> {
    use nix::fcntl::{Flock, FlockArg};
    let path = dir.join(".lock");
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let until = std::time::Instant::now() + CACHE_LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((held, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < until => {
                file = held;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => anyhow::bail!(
                "the code cache {} is in use: another faasd worker holds its lock (give each \
                 worker on a machine its own --cache)",
                dir.display()
            ),
            Err((_, e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}

/// Prepares the code cache (locked for this worker) and the executors' working directory under
/// `--cache`, and the agent that runs tasks with them.
fn build_agent(
    args: &WorkerArgs,
    slots: u32,
) -> anyhow::Result<(Arc<Agent>, worker::WorkRoot, CacheLock)> {
    std::fs::create_dir_all(&args.cache)
        .with_context(|| format!("cannot create the code cache {}", args.cache.display()))?;
    // Executors run in their own working directories: hand them absolute paths.
    let cache_dir = std::fs::canonicalize(&args.cache)
        .with_context(|| format!("cannot resolve {}", args.cache.display()))?;
    let lock = lock_cache(&cache_dir)?;
    let cache_size = args.executors.code_cache_size as u64;
    let cache =
        CodeCache::new(cache_dir.clone(), cache_size).context("cannot open the code cache")?;
    let work_root = worker::WorkRoot::create(&cache_dir.join("work"))
        .context("cannot create the executors' working directory")?;
    let agent = Agent::new(worker::Config {
        name: args.name.clone().unwrap_or_else(default_name),
        slots,
        mode: match args.dispatch {
            Dispatch::Push => DispatchMode::Push,
            Dispatch::Pull => DispatchMode::Pull,
        },
        cache,
        work_root: work_root.path().to_owned(),
        limits: exec::Limits::default(),
        runtimes: args.executors.runtimes(&cache_dir)?,
        max_warm_memory_bytes: args.executors.max_warm_memory_bytes(),
        join_token: args
            .join_token
            .clone()
            .unwrap_or_default()
            .trim()
            .to_owned(),
    });
    Ok((agent, work_root, lock))
}

/// A token cancelled by the first SIGTERM or SIGINT: the worker drains and exits.
async fn cancel_on_signal(agent: Arc<Agent>) -> anyhow::Result<CancellationToken> {
    let cancel = CancellationToken::new();
    let signal = super::serve::wait_for_signal().await?;
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let name = signal.await;
        tracing::info!(
            signal = name,
            "draining: no new tasks; finishing the running ones (a second signal stops at once)"
        );
        on_signal.cancel();
        // A second signal does not wait for the drain: the server takes the tasks back when
        // the connection drops, and runs them again elsewhere.
        if let Ok(again) = super::serve::wait_for_signal().await {
            let name = again.await;
            tracing::warn!(
                signal = name,
                "stopping at once; the running tasks are left to the server"
            );
            let code = if name == "SIGINT" { 130 } else { 143 };
            STOPPED_BY.store(code, Ordering::Release);
            // Their processes go first (the exit below runs no destructors), within a moment.
            agent.stop_now();
            agent.wait_idle(Duration::from_secs(2)).await;
            std::process::exit(i32::from(code));
        }
    });
    Ok(cancel)
}

/// The worker's tie to its server: it connects, runs a session, and reconnects with backoff
/// until it is drained or refused.
struct ServerLink {
    server: String,
    /// Under `--tls`: every connection starts with a TLS handshake.
    tls: Option<WorkerTls>,
    agent: Arc<Agent>,
    slots: u32,
    cancel: CancellationToken,
    drain_timeout: Duration,
}

impl ServerLink {
    /// Connects and reconnects until the worker is drained (exit 0) or refused (an error).
    async fn stay_connected(&self) -> anyhow::Result<u8> {
        let server = &self.server;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.cancel.is_cancelled() {
                return Ok(exit::OK);
            }
            let connected = tokio::select! {
                c = tokio::net::TcpStream::connect(server) => c,
                () = self.cancel.cancelled() => return Ok(exit::OK),
            };
            match connected {
                Ok(stream) => {
                    let started = std::time::Instant::now();
                    if self.secure_session(stream).await?.is_break() {
                        return Ok(exit::OK);
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %server, error = %e, retry_in = ?backoff, "cannot connect");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.cancel.cancelled() => {
                    // Finish what is still running from the lost session before leaving.
                    self.agent.wait_idle(self.drain_timeout).await;
                    return Ok(exit::OK);
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs one session on `stream`, over TLS under `--tls`. A server certificate this worker
    /// does not trust is an error (it will not be trusted on the next try either); another
    /// failed TLS handshake is retried.
    async fn secure_session(
        &self,
        stream: tokio::net::TcpStream,
    ) -> anyhow::Result<ControlFlow<()>> {
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.session(stream).await;
        };
        let handshake = tls.connector.connect(tls.name.clone(), stream);
        match tokio::time::timeout(crate::proto::HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => self.session(stream).await,
            Ok(Err(e)) if crate::tls::is_certificate_error(&e) => Err(exit::coded(
                exit::FAILURE,
                format!(
                    "the server at {} has a certificate this worker does not accept: {}",
                    self.server,
                    crate::tls::explain_certificate_error(&e).unwrap_or_else(|| e.to_string())
                ),
            )),
            // A port that has never welcomed this worker and breaks off the handshake is most
            // likely a plain worker port: trying again would get the same answer.
            Ok(Err(e))
                if !self.agent.was_welcomed() && e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Err(exit::coded(
                    exit::FAILURE,
                    format!(
                        "the server at {} did not complete a TLS handshake ({e}): is its worker port \
                     plain? Drop --tls, or start serve with --tls-cert/--tls-key",
                        self.server
                    ),
                ))
            }
            Ok(Err(e)) => {
                tracing::warn!(server = %self.server, error = %e, "TLS handshake failed; reconnecting");
                Ok(ControlFlow::Continue(()))
            }
            Err(_) => {
                tracing::warn!(server = %self.server, "TLS handshake timed out; reconnecting");
                Ok(ControlFlow::Continue(()))
            }
        }
    }

    /// Runs one session on `stream`: `Break` once drained, `Continue` to reconnect, an error
    /// if the server refused this worker.
    async fn session<S>(&self, stream: S) -> anyhow::Result<ControlFlow<()>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let server = &self.server;
        tracing::info!(server = %server, name = self.agent.name(), slots = self.slots, "connected");
        let session = worker::run_session(
            stream,
            self.agent.clone(),
            self.cancel.clone(),
            self.drain_timeout,
        );
        match session.await {
            Ok(Ended::Drained) => {
                tracing::info!("drained; exiting");
                return Ok(ControlFlow::Break(()));
            }
            Ok(Ended::ServerClosed) => {
                tracing::warn!(server = %server, "the server closed the connection; reconnecting");
            }
            Err(worker::Error::Refused { reason }) => {
                return Err(exit::coded(
                    exit::FAILURE,
                    format!("the server at {} refused this worker: {reason}", server),
                ));
            }
            // Trying again would get the same answer, unless this address has answered as
            // faasd before (then it is retried like any broken session).
            Err(e @ worker::Error::NotFaasd(_)) if !self.agent.was_welcomed() => {
                return Err(exit::coded(exit::FAILURE, format!("{server}: {e}")));
            }
            Err(e) => tracing::warn!(error = %e, "session failed; reconnecting"),
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// `--check-sandbox`: the table of layers and whether each applies here.
fn check_sandbox(executors: &super::ExecutorArgs) -> anyhow::Result<u8> {
    use crate::sandbox::layers::{self, Availability};
    let wanted = executors.sandbox_settings().wanted()?;
    let (_, layers) = layers::negotiate(&wanted);
    println!("{:<64} STATE", "LAYER");
    let mut all = true;
    for layer in &layers {
        let state = match &layer.state {
            Availability::Active(note) if note.is_empty() => "active".to_string(),
            Availability::Active(note) => format!("active ({note})"),
            Availability::Unavailable(why) => {
                all = false;
                format!("unavailable ({why})")
            }
        };
        println!("{:<64} {state}", layer.name);
    }
    Ok(if all { exit::OK } else { exit::FAILURE })
}
