//! `faasd serve`: the whole platform in one process: store, broker, HTTP API, the worker port
//! for remote workers, and in-process workers speaking the same frames over duplex pipes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
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
}

/// Runs `faasd serve` until SIGINT or SIGTERM.
pub async fn run(mut args: ServeArgs) -> anyhow::Result<u8> {
    // A payload travels to its worker in one frame, next to a little metadata.
    let max_body_limit = crate::proto::MAX_FRAME_BYTES - (1 << 20);
    if args.max_body > max_body_limit {
        return Err(exit::coded(
            exit::USAGE,
            format!("--max-body may be at most {max_body_limit} bytes (the worker frame limit)"),
        ));
    }
    let store = Store::open(&args.data).context("cannot open the store")?;
    // Executors run in their own working directories, so every path handed down is absolute.
    args.data = std::fs::canonicalize(&args.data)
        .with_context(|| format!("cannot resolve {}", args.data.display()))?;
    let broker = Broker::start(store.clone())
        .await
        .context("cannot load the store")?;
    let http = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.listen))?;
    let workers = TcpListener::bind(&args.worker_listen)
        .await
        .with_context(|| format!("cannot listen for workers on {}", args.worker_listen))?;
    let http_addr = http.local_addr().context("cannot read the HTTP address")?;
    let worker_addr = workers
        .local_addr()
        .context("cannot read the worker address")?;

    let tracker = TaskTracker::new();
    let stop_http = CancellationToken::new();
    let stop_workers = CancellationToken::new();

    let slots = args
        .local_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let work_root = worker::WorkRoot::create(&args.data.join("work"))
        .context("cannot create the executors' working directory")?;
    if slots > 0 {
        let cache =
            CodeCache::new(args.data.join("code-cache")).context("cannot create the code cache")?;
        let agent = worker::Agent::new(worker::Config {
            name: "local".into(),
            slots,
            mode: DispatchMode::Push,
            cache,
            work_root: work_root.path().to_owned(),
            limits: exec::Limits::default(),
            runtimes: args.executors.runtimes(&args.data.join("runtime"))?,
        });
        let (server_end, worker_end) = tokio::io::duplex(1 << 20);
        tracker.spawn(broker::serve_worker(
            broker.clone(),
            server_end,
            "local".into(),
            stop_workers.clone(),
        ));
        let cancel = stop_workers.clone();
        let deadline = args.shutdown_timeout;
        tracker.spawn(async move {
            if let Err(e) = worker::run_session(worker_end, agent, cancel, deadline).await {
                tracing::error!(error = %e, "local worker stopped");
            }
        });
    }
    {
        let broker = broker.clone();
        let cancel = stop_workers.clone();
        tracker.spawn(async move { broker.watch_leases(Duration::from_secs(1), cancel).await });
    }
    tracker.spawn(accept_workers(
        workers,
        broker.clone(),
        stop_workers.clone(),
        args.max_worker_connections,
        tracker.clone(),
    ));

    let app = api::router(AppState {
        broker: broker.clone(),
        max_body_bytes: args.max_body,
        defaults: FunctionDefaults {
            timeout: args.default_timeout,
            ..FunctionDefaults::default()
        },
    });
    let stop = stop_http.clone();
    let server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });

    // Watch for signals before announcing readiness, so a stop right after it is graceful.
    let stop_signal = wait_for_signal().await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "faasd listening on http://{http_addr}")?;
        writeln!(out, "faasd worker port on {worker_addr}")?;
        out.flush()?;
    }
    tracing::info!(%http_addr, %worker_addr, local_slots = slots, data = %args.data.display(), "faasd ready");

    let signal = stop_signal.await;
    tracing::info!(
        signal,
        "stopping: no new requests; waiting for running tasks"
    );
    broker.stop_dispatch();
    stop_http.cancel();
    let still_running = broker.wait_settled(args.shutdown_timeout).await;
    if still_running > 0 {
        tracing::warn!(
            tasks = still_running,
            "shutdown deadline passed; those tasks re-run at the next start"
        );
    }
    stop_workers.cancel();
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
    store.close().await;
    tracing::info!("stopped");
    Ok(exit::OK)
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

/// Accepts worker connections (at most `max` at once) until `cancel` fires.
async fn accept_workers(
    listener: TcpListener,
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
        tracker.spawn(async move {
            broker::serve_worker(broker, stream, peer.to_string(), cancel).await;
            drop(permit);
        });
    }
}
