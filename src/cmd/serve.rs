//! `faasd serve`: the whole platform in one process: store, broker, HTTP API, the worker port
//! for remote workers, and in-process workers speaking the same frames over duplex pipes.

mod http;
mod keys;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::exit;
use crate::api::{self, AppState, FunctionDefaults};
use crate::broker::{self, Broker};
use crate::exec;
use crate::proto::DispatchMode;
use crate::store::Store;
use crate::worker::{self, CodeCache};

/// Run the platform.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The data directory (holds the store and the code cache).
    #[arg(long, default_value = "./faasd-data")]
    pub data: PathBuf,
    /// The HTTP API's address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// The address remote workers connect to (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub worker_listen: String,
    /// Executor slots of the in-process worker (default: one per core; 0: remote workers only).
    #[arg(long)]
    pub local_workers: Option<u32>,
    /// The largest request body accepted, such as `6MiB` (413 past it).
    #[arg(long, default_value = "6MiB", value_parser = crate::units::parse_bytes)]
    pub max_body: usize,
    /// The largest code bundle uploaded apart from its registration (`PUT /v1/blobs/...`,
    /// which `faasd register` uses for large files), streamed to disk, never held in memory.
    #[arg(long, default_value = "1GiB", value_parser = crate::units::parse_bytes)]
    pub max_code_size: usize,
    /// Timeout of functions registered without one.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub default_timeout: Duration,
    /// How long a stop waits for running tasks before it closes the store anyway.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub executors: super::ExecutorArgs,
    /// The most worker connections at once.
    #[arg(long, default_value_t = 1024)]
    pub max_worker_connections: usize,
    /// How long an HTTP client may take to send a request's headers before its connection is
    /// closed.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub header_timeout: Duration,
    /// How long a request body may take before it must average 1,000 bytes a second: a body
    /// slower than that afterwards is answered 408 `request_timeout` and its connection closed
    /// (each kilobyte received earns another second, so large uploads on slow links go on).
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub body_timeout: Duration,
    /// How long an HTTP connection may sit idle between requests before it is closed.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub keepalive_timeout: Duration,
    /// The most HTTP connections at once; more are closed as they arrive (default: 10000, or
    /// half the open-files limit if that is lower).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// The largest `min_warm` a registration may ask for (400 past it); each worker also keeps
    /// at most one ready executor of a function per slot.
    #[arg(long, default_value_t = api::DEFAULT_MAX_MIN_WARM)]
    pub max_min_warm: u32,
    /// Warn (log and `/healthz`) when free space in the data directory falls under this, such
    /// as `2GiB` (default: the smaller of 1 GiB and 5% of its filesystem; 0: never).
    #[arg(long, value_parser = crate::units::parse_bytes)]
    pub min_free_space: Option<usize>,
    /// Make every commit record the store's allocator state (a two-phase commit: two fsyncs
    /// instead of one), so that a restart after a crash or `kill -9` takes the same short time
    /// whatever the store's size. Without it, that restart first verifies the whole store
    /// file (about a second per GB). See docs/performance.md for what it costs.
    #[arg(long)]
    pub quick_repair: bool,
    /// Answer a sync call only once its task's end is on disk (one more fsync on its path).
    /// Without it the answer goes as soon as the worker reports, and the end is written by the
    /// next group commit: a crash in between loses that record, whose caller has the answer
    /// (an async task is always on disk before its 202).
    #[arg(long)]
    pub commit_before_answer: bool,
    /// The file holding the token remote workers must present (default: one generated into
    /// the data directory at the first start; print it with `faasd join-token`).
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Serve HTTPS (and the worker port over TLS) with this certificate chain (PEM); needs
    /// `--tls-key`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Route requests whose `Host` is `NAME.DOMAIN` (any path, any case, port ignored) to
    /// function NAME, as `/function/NAME/...` is; the bare domain and other hosts keep the
    /// API. With `--tls-cert` holding a wildcard certificate for `*.DOMAIN`, this serves
    /// `https://NAME.DOMAIN`.
    #[arg(long, value_name = "DOMAIN", value_parser = parse_domain)]
    pub domain: Option<String>,
    /// Let requests without a token act with this role (as the MPCS clients, which send no
    /// header, need); requests with a wrong token are still refused.
    #[arg(long, value_enum, value_name = "ROLE")]
    pub anonymous: Option<crate::auth::Role>,
    /// Serve `GET /metrics` to anyone, without a token (for a scraper on a trusted network);
    /// without it, the metrics need an admin's or developer's token, as `GET /v1/workers`.
    #[arg(long)]
    pub metrics_open: bool,
    /// How long an `Idempotency-Key` is remembered: a repeat within it answers the first
    /// request's tasks; older keys are ignored and purged in the background.
    #[arg(long, default_value = "24h", value_parser = crate::units::parse_duration)]
    pub idempotency_ttl: Duration,
    /// Purge finished tasks (record, payload, result, logs) whose ids were made longer ago than
    /// this, such as `7d` or `12h`; asking for one then answers 410 `task_expired`. Usage
    /// totals are kept. 0 keeps every task forever.
    #[arg(long, default_value = "7d", value_parser = crate::units::parse_duration)]
    pub retain: Duration,
    /// How often the retention purge looks for expired tasks once it has caught up.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub purge_interval: Duration,
    /// How many live events (`GET /v1/events`) the server holds for a consumer that is behind;
    /// one that falls further behind gets a `dropped` event and its stream is closed.
    #[arg(long, default_value_t = crate::broker::DEFAULT_EVENT_BUFFER, value_parser = clap::value_parser!(usize))]
    pub event_buffer: usize,
}

/// Runs `faasd serve` until SIGINT or SIGTERM.
pub async fn run(mut args: ServeArgs) -> anyhow::Result<u8> {
    api::log_panics();
    check_max_body(args.max_body)?;
    let http_limits = http_limits(&args)?;
    let tls = tls_acceptor(&args)?;
    let (store, broker) = open_store(&mut args).await?;
    let users = load_users(&store, &args).await?;
    let worker_gate = WorkerGate {
        token: super::join_token::load_or_create(args.join_token_file.as_deref(), &args.data)
            .context("cannot set up the join token")?
            .into(),
        protected: {
            let users = users.clone();
            Arc::new(move || users.is_empty())
        },
        tls: tls.clone(),
    };
    let listeners = Listeners::bind(&args).await?;
    let stops = Stops::default();
    let tracker = TaskTracker::new();
    let slots = args
        .local_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    // Lives until `run` returns: dropping it removes the executors' working directories.
    let work_root = worker::WorkRoot::create(&args.data.join("work"))
        .context("cannot create the executors' working directory")?;
    if slots > 0 {
        start_local_worker(&args, slots, &work_root, &broker, &stops, &tracker)?;
    }
    start_worker_port(
        listeners.workers,
        worker_gate,
        &args,
        &broker,
        &stops,
        &tracker,
    );
    start_retention(&args, &store, &stops, &tracker);
    let https = tls.is_some();
    let server = start_http(
        listeners.http,
        &args,
        http_limits,
        tls,
        &broker,
        users,
        &stops,
    );

    tracker.spawn(keys::expire(
        store.clone(),
        args.key_lifetime(),
        stops.http.clone(),
    ));
    tracker.spawn(flush_http_usage(broker.clone(), stops.http.clone()));

    // Ready means ready to run calls: a sync call is refused while no worker is connected, so
    // the local worker's handshake (a few frames over a pipe) comes before the announcement.
    if slots > 0 && !broker.wait_for_worker(Duration::from_secs(10)).await {
        tracing::warn!("the local worker has not joined after 10 s");
    }
    // Watch for signals before announcing readiness, so a stop right after it is graceful.
    let stop_signal = wait_for_signal().await?;
    announce(&listeners.addrs, https, slots, &args)?;
    let signal = stop_signal.await;
    shut_down(signal, &args, &broker, &stops, &tracker, server).await;
    broker.flush_http_usage();
    store.close().await;
    tracing::info!("stopped");
    Ok(exit::OK)
}

impl ServeArgs {
    /// How long an idempotency key lives: `--idempotency-ttl`, or `--retain` when that is
    /// shorter, so a key never answers with a task the retention purge has removed.
    fn key_lifetime(&self) -> Duration {
        if self.retain.is_zero() {
            self.idempotency_ttl
        } else {
            self.idempotency_ttl.min(self.retain)
        }
    }
}

/// Starts the background purge of expired tasks (none with `--retain 0`); it stops with the
/// worker sessions.
fn start_retention(args: &ServeArgs, store: &Store, stops: &Stops, tracker: &TaskTracker) {
    if args.retain.is_zero() {
        return;
    }
    let retention = crate::store::Retention {
        retain: args.retain,
        interval: args.purge_interval.max(Duration::from_millis(100)),
    };
    let store = store.clone();
    let cancel = stops.workers.clone();
    tracker.spawn(async move { store.keep_purging(retention, cancel).await });
}

/// Refuses a `--max-body` that would not fit in a worker frame: a payload travels to its
/// worker in one frame, next to a little metadata.
fn check_max_body(max_body: usize) -> anyhow::Result<()> {
    let max_body_limit = crate::proto::MAX_FRAME_BYTES - (1 << 20);
    if max_body > max_body_limit {
        return Err(exit::coded(
            exit::USAGE,
            format!("--max-body may be at most {max_body_limit} bytes (the worker frame limit)"),
        ));
    }
    Ok(())
}

/// Parses `--domain`: a host name such as `example.com` (a clap value parser).
fn parse_domain(text: &str) -> Result<String, String> {
    let domain = text.trim().trim_end_matches('.');
    let ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(domain.to_ascii_lowercase())
    } else {
        Err(format!("{text:?} is not a domain name such as example.com"))
    }
}

/// The TLS acceptor of `--tls-cert` and `--tls-key` (both or neither), if given.
fn tls_acceptor(args: &ServeArgs) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let config = crate::tls::server_config(cert, key)
        .map_err(|e| exit::coded(exit::USAGE, format!("cannot serve TLS: {e}")))?;
    if let Some(why) = crate::tls::unusable_server_certificate(cert) {
        tracing::warn!(cert = %cert.display(), "clients will refuse this certificate: {why}");
    }
    Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
}

/// Who may join over the worker port, and over what.
struct WorkerGate {
    /// The join token workers present.
    token: Arc<str>,
    /// Whether the server is in protected mode (no user exists yet), when loopback workers
    /// need no token.
    protected: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The TLS every worker connection starts with, under `--tls-cert`.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl WorkerGate {
    /// What a worker connecting from `peer` must present.
    fn admission(&self, peer: SocketAddr) -> broker::Admission {
        broker::Admission::JoinToken {
            token: self.token.clone(),
            exempt: peer.ip().to_canonical().is_loopback() && (self.protected)(),
        }
    }
}

/// The HTTP limits from the flags; zero timeouts or a zero connection cap are refused.
fn http_limits(args: &ServeArgs) -> anyhow::Result<http::HttpLimits> {
    for (flag, value) in [
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--keepalive-timeout", args.keepalive_timeout),
    ] {
        if value.is_zero() {
            return Err(exit::coded(
                exit::USAGE,
                format!("{flag} must be more than zero"),
            ));
        }
    }
    let max_connections = args.max_connections.unwrap_or_else(default_max_connections);
    if max_connections == 0 {
        return Err(exit::coded(
            exit::USAGE,
            "--max-connections must be at least 1",
        ));
    }
    Ok(http::HttpLimits {
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        keepalive_timeout: args.keepalive_timeout,
        max_connections,
        linger_bytes: linger_bytes(args.max_body),
        domain: args
            .domain
            .as_deref()
            .map(|d| d.to_ascii_lowercase().into()),
    })
}

/// How much of an unread request body a closing connection drains so that its client reads
/// the 413 answer: 4 × `--max-body`, and at least 128 MiB.
fn linger_bytes(max_body: usize) -> u64 {
    const AT_LEAST: u64 = 128 << 20;
    (max_body as u64).saturating_mul(4).max(AT_LEAST)
}

/// 10,000 connections, or half the open-files limit if that is lower (the other half is left
/// to worker connections, the store and the executors' pipes).
fn default_max_connections() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    const DEFAULT: usize = 10_000;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft / 2).map_or(DEFAULT, |half| half.clamp(1, DEFAULT)),
        Err(_) => DEFAULT,
    }
}

/// Opens the store in the data directory, makes `args.data` absolute, and starts the broker
/// on the store's contents.
async fn open_store(args: &mut ServeArgs) -> anyhow::Result<(Store, Broker)> {
    let store = match Store::open(&args.data) {
        // The one line says it all: which directory, and that another server holds it.
        Err(locked @ crate::store::Error::Locked { .. }) => {
            return Err(exit::coded(exit::FAILURE, locked.to_string()));
        }
        opened => opened.context("cannot open the store")?,
    };
    // Executors run in their own working directories, so every path handed down is absolute.
    args.data = std::fs::canonicalize(&args.data)
        .with_context(|| format!("cannot resolve {}", args.data.display()))?;
    store.watch_free_space(args.min_free_space.map(|b| b as u64));
    store.set_quick_repair(args.quick_repair);
    let broker = Broker::start_with_events(store.clone(), args.event_buffer)
        .await
        .context("cannot load the store")?;
    broker.set_commit_before_answer(args.commit_before_answer);
    Ok((store, broker))
}

/// Loads the users and logs whether the server is in protected mode.
async fn load_users(store: &Store, args: &ServeArgs) -> anyhow::Result<crate::auth::Directory> {
    let users = crate::auth::Directory::load(store.clone())
        .await
        .context("cannot load the users")?;
    let anonymous = args.anonymous.map(|r| r.as_str());
    if users.is_empty() {
        tracing::info!(
            anonymous,
            "faasd is in protected mode: no user exists, so loopback clients act as admin and others are refused; add one with `faasd user add NAME --role admin`"
        );
    } else {
        tracing::info!(anonymous, "users exist: every request needs a token");
    }
    Ok(users)
}

/// The bound HTTP and worker listeners.
struct Listeners {
    http: TcpListener,
    workers: TcpListener,
    addrs: Addrs,
}

/// The addresses the listeners got (their ports may have been picked by the system).
struct Addrs {
    http: SocketAddr,
    workers: SocketAddr,
}

impl Listeners {
    /// Binds `--listen` and `--worker-listen`.
    async fn bind(args: &ServeArgs) -> anyhow::Result<Listeners> {
        let http = listen(&args.listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", args.listen))?;
        let workers = listen(&args.worker_listen)
            .await
            .with_context(|| format!("cannot listen for workers on {}", args.worker_listen))?;
        let addrs = Addrs {
            http: http.local_addr().context("cannot read the HTTP address")?,
            workers: workers
                .local_addr()
                .context("cannot read the worker address")?,
        };
        Ok(Listeners {
            http,
            workers,
            addrs,
        })
    }
}

/// The listen backlog of both listeners: connections the kernel completes while the accept loop
/// has not taken them yet, as in a burst of new clients. With the usual 128, the kernel drops
/// the handshakes of a burst past it, and each dropped client waits a second or more for its
/// retry. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` (`host:port`, the host maybe a name) with [`LISTEN_BACKLOG`],
/// trying each address the name resolves to.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut failed = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(err) => failed = Some(err),
        }
    }
    Err(failed.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// The tokens that stop the server in two stages: HTTP first, then the worker sessions.
#[derive(Default)]
struct Stops {
    http: CancellationToken,
    workers: CancellationToken,
}

/// Starts the in-process worker with `slots` executor slots, connected to the broker over a
/// duplex pipe that speaks the same frames as the worker port.
fn start_local_worker(
    args: &ServeArgs,
    slots: u32,
    work_root: &worker::WorkRoot,
    broker: &Broker,
    stops: &Stops,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let cache_size = args.executors.code_cache_size as u64;
    let cache = CodeCache::new(args.data.join("code-cache"), cache_size)
        .context("cannot create the code cache")?;
    let agent = worker::Agent::new(worker::Config {
        name: "local".into(),
        slots,
        mode: DispatchMode::Push,
        cache,
        work_root: work_root.path().to_owned(),
        limits: exec::Limits::default(),
        runtimes: args.executors.runtimes(&args.data.join("runtime"))?,
        max_warm_memory_bytes: args.executors.max_warm_memory_bytes(),
        join_token: String::new(),
    });
    let cancel = stops.workers.clone();
    let deadline = args.shutdown_timeout;
    let (broker, sessions) = (broker.clone(), tracker.clone());
    // Joins again whenever its session ends before the server stops: the broker drops a
    // worker that has not heartbeat for three periods, as it would after the whole process
    // was paused (SIGSTOP, a suspended machine), and the server must not be left without it.
    tracker.spawn(async move {
        loop {
            let (server_end, worker_end) = tokio::io::duplex(1 << 20);
            sessions.spawn(broker::serve_worker(
                broker.clone(),
                server_end,
                "local".into(),
                broker::Admission::Open,
                cancel.clone(),
            ));
            let ended = worker::run_session(worker_end, agent.clone(), cancel.clone(), deadline);
            match ended.await {
                Ok(worker::Ended::Drained) => return,
                _ if cancel.is_cancelled() => return,
                Ok(ended) => {
                    tracing::warn!(?ended, "the local worker's session ended; joining again")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the local worker's session failed; joining again")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(())
}

/// Starts the lease watch and the worker port's accept loop.
fn start_worker_port(
    listener: TcpListener,
    gate: WorkerGate,
    args: &ServeArgs,
    broker: &Broker,
    stops: &Stops,
    tracker: &TaskTracker,
) {
    {
        let broker = broker.clone();
        let cancel = stops.workers.clone();
        tracker.spawn(async move { broker.watch_leases(Duration::from_secs(1), cancel).await });
    }
    tracker.spawn(accept_workers(
        listener,
        gate,
        broker.clone(),
        stops.workers.clone(),
        args.max_worker_connections,
        tracker.clone(),
    ));
}

/// Serves the HTTP API on `listener` (HTTPS with `tls`), within `limits`, until `stops.http`
/// fires.
fn start_http(
    listener: TcpListener,
    args: &ServeArgs,
    limits: http::HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    broker: &Broker,
    users: crate::auth::Directory,
    stops: &Stops,
) -> JoinHandle<()> {
    let app = api::router(AppState::new(api::Shared {
        users,
        anonymous: args.anonymous,
        metrics_open: args.metrics_open,
        broker: broker.clone(),
        max_body_bytes: args.max_body,
        max_code_bytes: args.max_code_size as u64,
        defaults: FunctionDefaults {
            timeout: args.default_timeout,
            max_min_warm: args.max_min_warm,
            ..FunctionDefaults::default()
        },
        code_check: api::CodeCheck::new(args.executors.python.clone(), Some(broker.clone())),
        keys: api::Keys::new(args.key_lifetime()),
        domain: args.domain.as_ref().map(|d| d.to_ascii_lowercase()),
        https: tls.is_some(),
    }));
    tokio::spawn(http::serve(listener, app, limits, tls, stops.http.clone()))
}

/// Prints the two addresses on standard output (the line tests and scripts wait for).
fn announce(addrs: &Addrs, https: bool, slots: u32, args: &ServeArgs) -> anyhow::Result<()> {
    let (http_addr, worker_addr) = (addrs.http, addrs.workers);
    let scheme = if https { "https" } else { "http" };
    let printed = {
        let mut out = std::io::stdout().lock();
        writeln!(out, "faasd listening on {scheme}://{http_addr}")
            .and_then(|()| writeln!(out, "faasd worker port on {worker_addr}"))
            .and_then(|()| out.flush())
    };
    // A reader that took the first line and went (`faasd serve | head -1`) must not stop
    // the server.
    if let Err(e) = printed {
        tracing::warn!(error = %e, "cannot print the ready lines on standard output");
    }
    tracing::info!(%http_addr, %worker_addr, local_slots = slots, data = %args.data.display(), "faasd ready");
    Ok(())
}

/// Stops in order: no new dispatch or requests, running tasks settle (up to
/// `--shutdown-timeout`), worker sessions end, open HTTP requests get a short grace.
async fn shut_down(
    signal: &'static str,
    args: &ServeArgs,
    broker: &Broker,
    stops: &Stops,
    tracker: &TaskTracker,
    server: JoinHandle<()>,
) {
    tracing::info!(
        signal,
        "stopping: no new requests; waiting for running tasks"
    );
    broker.stop_dispatch();
    stops.http.cancel();
    let until = tokio::time::Instant::now() + args.shutdown_timeout;
    let still_running = broker.wait_settled(args.shutdown_timeout).await;
    if still_running > 0 {
        tracing::warn!(
            tasks = still_running,
            "shutdown deadline passed; those tasks re-run at the next start"
        );
    }
    // Requests proxied to HTTP-service functions finish too, within the same deadline: the
    // worker sessions that carry them end next.
    let still_open = broker.wait_streams_done(until).await;
    if still_open > 0 {
        tracing::warn!(
            requests = still_open,
            "shutdown deadline passed with proxied HTTP requests still open; they are cut"
        );
    }
    stops.workers.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some worker sessions did not end in time");
    }
    // In-flight HTTP requests (sync calls whose tasks stay queued) get a short grace, then go.
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests were still open at shutdown");
    }
}

/// Installs SIGTERM and SIGINT handlers now; the returned future resolves with the name of the
/// first of them to arrive.
pub(crate) async fn wait_for_signal()
-> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Accepts worker connections (at most `max` at once) until `cancel` fires, each admitted by
/// `gate`.
async fn accept_workers(
    listener: TcpListener,
    gate: WorkerGate,
    broker: Broker,
    cancel: CancellationToken,
    max: usize,
    tracker: TaskTracker,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a worker connection failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max, "too many worker connections; refusing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        let cancel = cancel.clone();
        let admission = gate.admission(peer);
        let tls = gate.tls.clone();
        tracker.spawn(async move {
            let address = peer.to_string();
            match tls {
                None => broker::serve_worker(broker, stream, address, admission, cancel).await,
                Some(tls) => {
                    if let Some(stream) = tls_handshake(&tls, stream, &address).await {
                        broker::serve_worker(broker, stream, address, admission, cancel).await;
                    }
                }
            }
            drop(permit);
        });
    }
}

/// A worker connection's TLS handshake, bounded by the handshake timeout; `None` (logged) if it
/// fails, as a plain connection to a TLS port does.
async fn tls_handshake(
    tls: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    address: &str,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(crate::proto::HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::warn!(%address, error = %e, "worker's TLS handshake failed; closing");
            None
        }
        Err(_) => {
            tracing::warn!(%address, "worker did not finish its TLS handshake in time; closing");
            None
        }
    }
}

/// Writes the HTTP-service requests' usage sums every second until `stop`, so the last requests
/// before a quiet spell are in `/v1/usage` within a second.
async fn flush_http_usage(broker: Broker, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => broker.flush_http_usage(),
            () = stop.cancelled() => return,
        }
    }
}
