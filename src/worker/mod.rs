//! The worker: the agent that takes tasks over the frame protocol and runs them in executors.
//!
//! It is the same code inside `serve` (over an in-memory duplex pipe) and in `faasd worker`
//! (over TCP): it says `Hello` and `Join` (its join token), waits for `Welcome`, then runs every `Assign` it gets in an
//! executor, fetching code it lacks by hash, heartbeats, and sends back a `Report` per task.
//! A session that ends stops every task it was running: the server hands a lost worker's tasks
//! back to their queues (or fails them) and never accepts a report from an earlier session, so
//! running them on would only hold executors the next session's tasks need. A report that finds
//! its session gone is dropped for the same reason.
//!
//! A session is `handshake` (with `on_welcome`), then a loop that hands each frame from
//! the server to a handler named after it (`on_assign`, `on_prewarm`, `on_code`; `Refused`
//! ends it) and reacts to `on_cancel` (drain). None of them blocks: tasks, code fetches and
//! executor starts run on tasks of their own. Heartbeats come from their own timer task
//! (`Heartbeat`), so no amount of work, frames or executor starts makes a busy worker look
//! dead. `run_task` runs one assignment, warm or cold, and makes its report.

pub mod cache;
pub mod envs;
pub mod health;
mod http;
pub mod images;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::exec;
use crate::proto::{self, Assignment, DispatchMode, FailureReason, Frame, Outcome, Report};
pub use cache::CodeCache;

/// Errors that end a worker session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the handshake.
    #[error("the server refused this worker: {reason}")]
    Refused {
        /// The server's reason.
        reason: String,
    },
    /// The server did not answer the handshake in time.
    #[error("the server did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The server sent something other than a welcome.
    #[error("unexpected handshake answer from the server: {0}")]
    Handshake(String),
    /// The server's first answer is not a frame at all: not a faasd worker port, or one that
    /// speaks TLS to a worker without `--tls`.
    #[error(
        "the server's answer is not a faasd worker frame ({0}): check that the address is the worker port `faasd serve` printed (`faasd worker port on ...`), and if the server has --tls-cert, run the worker with --tls"
    )]
    NotFaasd(String),
    /// The connection failed.
    #[error("{0}")]
    Proto(#[from] proto::Error),
}

/// What a worker is and how it runs code.
pub struct Config {
    /// Its name, for people.
    pub name: String,
    /// How many tasks it runs at once.
    pub slots: u32,
    /// How it receives tasks.
    pub mode: DispatchMode,
    /// Where code bundles are cached.
    pub cache: CodeCache,
    /// Where executors' temporary working directories are made.
    pub work_root: PathBuf,
    /// Output bounds per call.
    pub limits: exec::Limits,
    /// How executors of each runtime are launched.
    pub runtimes: exec::Runtimes,
    /// The resident memory idle warm executors may hold before pre-warming pauses.
    pub max_warm_memory_bytes: u64,
    /// The server's join token, sent in the handshake (empty: none).
    pub join_token: String,
}

/// A worker across its sessions: its configuration, its running tasks, and the reports that
/// could not be delivered yet.
pub struct Agent {
    config: Config,
    /// Warm executors, kept across sessions.
    pool: exec::Pool,
    /// The `python` functions' own environments (from their `requirements.txt`).
    envs: envs::Envs,
    /// The `oci` functions' unpacked images.
    images: images::Images,
    /// The HTTP-service executors and the proxied requests in flight.
    http: http::Services,
    /// The current session's outbound frames; `None` between sessions.
    link: Mutex<Option<mpsc::UnboundedSender<Frame>>>,
    /// Signalled when the last running task finishes.
    idle: Notify,
    running: AtomicU32,
    /// Whether a server has welcomed this worker at least once.
    welcomed: AtomicBool,
    /// The running tasks by id, each with its lease and what stops it (a `Cancel` from the
    /// server).
    stops: Mutex<HashMap<u128, (u64, CancellationToken)>>,
}

/// The directory executors' working directories are made in: emptied when created (a worker
/// killed outright leaves its calls' directories behind) and removed when dropped.
pub struct WorkRoot {
    path: PathBuf,
}

impl WorkRoot {
    /// Makes `path` an empty directory.
    pub fn create(path: &std::path::Path) -> std::io::Result<WorkRoot> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(path)?;
        Ok(WorkRoot {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for WorkRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How long a registration's compile may take here.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(10);

/// The verdict of a compile this worker could not run.
fn unavailable(agent: &Agent, why: String) -> proto::CompileVerdict {
    proto::CompileVerdict {
        unavailable: Some(format!("worker {}: {why}", agent.name())),
        ..Default::default()
    }
}

/// How often idle warm executors are reaped and `min_warm` topped up.
const REAP_PERIOD: Duration = Duration::from_millis(250);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The server closed the connection (or went silent).
    ServerClosed,
    /// `cancel` fired: the worker drained and left.
    Drained,
}

impl Agent {
    /// A new agent.
    pub fn new(config: Config) -> Arc<Agent> {
        let pool = exec::Pool::new(exec::PoolLimits::for_slots(
            config.slots,
            config.max_warm_memory_bytes,
        ));
        let reaper = pool.clone();
        let http = http::Services::default();
        let http_reaper = http.pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                reaper.keep_min_warm();
                reaper.reap();
                http_reaper.reap();
            }
        });
        let python = config.runtimes.python().map(Path::to_owned);
        let envs = envs::Envs::new(config.cache.dir().join("envs"), python);
        let images = images::Images::new(&config.cache, Default::default());
        Arc::new(Agent {
            config,
            pool,
            envs,
            images,
            http,
            link: Mutex::new(None),
            idle: Notify::new(),
            running: AtomicU32::new(0),
            welcomed: AtomicBool::new(false),
            stops: Mutex::new(HashMap::new()),
        })
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether a server has welcomed this worker at least once (so its address is a faasd
    /// worker port, whatever it answers now).
    pub fn was_welcomed(&self) -> bool {
        self.welcomed.load(Ordering::Relaxed)
    }

    fn sender(&self) -> Option<mpsc::UnboundedSender<Frame>> {
        self.link.lock().expect("link lock poisoned").clone()
    }

    fn set_link(&self, frames: Option<mpsc::UnboundedSender<Frame>>) {
        *self.link.lock().expect("link lock poisoned") = frames;
    }

    /// Sends a report on the current session. Without one it is dropped: the server took the
    /// task back when the session that leased it ended, and refuses a report from any other
    /// session (a lease belongs to one).
    fn deliver(&self, report: Report) {
        let task = report.task_id;
        let sent = self
            .sender()
            .is_some_and(|tx| tx.send(Frame::Report(report)).is_ok());
        if !sent {
            tracing::debug!(task = %uuid::Uuid::from_u128(task), "dropped the report of a task whose session ended");
        }
    }

    /// Whether no task runs and no proxied HTTP request is in flight here.
    fn is_idle(&self) -> bool {
        self.running.load(Ordering::Acquire) == 0 && self.http.in_flight() == 0
    }

    /// Waits until no task is running and no proxied HTTP request is in flight (a drain lets
    /// both finish), or `deadline` passes; returns whether it is idle.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return self.is_idle();
            }
        }
    }
}

/// Runs one session over `io` until the server closes it or `cancel` fires; on cancel it sends
/// `Drain`, finishes its running tasks (up to `drain_deadline`) and reports them.
pub async fn run_session<T>(
    io: T,
    agent: Arc<Agent>,
    cancel: CancellationToken,
    drain_deadline: Duration,
) -> Result<Ended, Error>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = proto::split(io);
    let heartbeat = handshake(&agent.config, &mut reader, &mut writer).await?;
    agent.welcomed.store(true, Ordering::Relaxed);
    let mut session = Session::open(agent, writer, heartbeat);
    match session.serve(&mut reader, cancel, drain_deadline).await {
        Ok(Ended::Drained) => {
            session.finish_drain().await;
            Ok(Ended::Drained)
        }
        Ok(Ended::ServerClosed) => {
            session.agent.close_session(session.pump);
            Ok(Ended::ServerClosed)
        }
        Err(err) => {
            session.agent.close_session(session.pump);
            Err(err)
        }
    }
}

/// Says `Hello`, then `Join` with the join token, and waits for the server's answer; returns the heartbeat period its `Welcome`
/// asks for.
async fn handshake<R, W>(
    config: &Config,
    reader: &mut proto::Reader<R>,
    writer: &mut proto::Writer<W>,
) -> Result<Duration, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer
        .feed(&Frame::Hello {
            protocol: proto::PROTOCOL_VERSION,
            name: config.name.clone(),
            slots: config.slots,
            mode: config.mode,
            runtimes: config.runtimes.runnable(),
        })
        .await?;
    writer
        .send(&Frame::Join {
            token: config.join_token.clone(),
        })
        .await?;
    reader.set_max_frame_bytes(proto::HANDSHAKE_FRAME_BYTES);
    let answer = tokio::time::timeout(proto::HANDSHAKE_TIMEOUT, reader.next())
        .await
        .map_err(|_| Error::HandshakeTimeout(proto::HANDSHAKE_TIMEOUT))?
        .map_err(|e| match e {
            // Bytes that do not frame (a TLS record or an HTTP answer reads as a huge length)
            // or do not decode.
            proto::Error::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                Error::NotFaasd(source.to_string())
            }
            // A frame that does not decode is more likely another protocol version's.
            other => Error::Proto(other),
        })?;
    reader.set_max_frame_bytes(proto::MAX_FRAME_BYTES);
    match answer {
        Some(Frame::Welcome { heartbeat_ms, .. }) => Ok(on_welcome(heartbeat_ms)),
        Some(Frame::Refused { reason }) => Err(Error::Refused { reason }),
        Some(other) => Err(Error::Handshake(format!("{other:?}"))),
        None => Err(Error::Handshake("the server closed the connection".into())),
    }
}

/// The heartbeat period a `Welcome` asks for (at least 50 ms).
fn on_welcome(heartbeat_ms: u32) -> Duration {
    Duration::from_millis(u64::from(heartbeat_ms.max(50)))
}

/// A wait for the running tasks to finish (up to the drain deadline): whether they did.
type DrainWait = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

/// One connection to the server, once the handshake is done.
struct Session {
    agent: Arc<Agent>,
    /// Outbound frames, written by `pump`.
    frames: mpsc::UnboundedSender<Frame>,
    /// Writes `frames` to the connection; ends when writing fails.
    pump: tokio::task::JoinHandle<Result<(), proto::Error>>,
    /// Sends the heartbeats while the session lasts.
    heartbeat: Heartbeat,
}

/// The task that tells the server, every period, that this worker is alive, how many tasks
/// it runs, and how its machine is doing (a `Health` frame after each `Heartbeat`). It is a timer of its own that does nothing else, so frames, tasks and executor
/// starts cannot delay it; it holds the outbound channel only weakly, and stops when dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(agent: Arc<Agent>, frames: &mpsc::UnboundedSender<Frame>, period: Duration) -> Self {
        let frames = frames.downgrade();
        Heartbeat(tokio::spawn(async move {
            let mut beat = tokio::time::interval(period);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut health = health::Sampler::new();
            loop {
                beat.tick().await;
                let running = agent.running.load(Ordering::Relaxed);
                let sample = health.sample();
                let warm = agent.warm_counts();
                let sent = frames.upgrade().is_some_and(|tx| {
                    tx.send(Frame::Heartbeat { running }).is_ok()
                        && tx.send(Frame::Health(sample)).is_ok()
                        && tx.send(Frame::Warm(warm)).is_ok()
                });
                if !sent {
                    return;
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    /// Starts writing frames and heartbeating every `heartbeat`, makes this the agent's
    /// current session, sends the reports the last session could not, and (in pull mode) asks
    /// for work for the free slots.
    fn open<W>(agent: Arc<Agent>, mut writer: proto::Writer<W>, heartbeat: Duration) -> Session
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let config = &agent.config;
        let (frames, outbox) = mpsc::unbounded_channel();
        agent.set_link(Some(frames.clone()));
        let pump = tokio::spawn(async move { writer.pump(outbox).await });
        if config.mode == DispatchMode::Pull {
            let free = config
                .slots
                .saturating_sub(agent.running.load(Ordering::Relaxed));
            let _ = frames.send(Frame::Pull { slots: free });
        }
        let heartbeat = Heartbeat::start(agent.clone(), &frames, heartbeat);
        Session {
            agent,
            frames,
            pump,
            heartbeat,
        }
    }

    /// Reads and handles frames until the connection ends or (once `cancel` fires) the
    /// running tasks are drained. While draining the session keeps reading (code still
    /// arrives for running tasks) and its heartbeat task keeps beating (so the server does not
    /// declare it dead).
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut proto::Reader<R>,
        cancel: CancellationToken,
        drain_deadline: Duration,
    ) -> Result<Ended, Error> {
        let mut drained: Option<DrainWait> = None;
        loop {
            let frame = tokio::select! {
                frame = reader.next() => frame,
                idle = async { drained.as_mut().expect("guarded by is_some").await }, if drained.is_some() => {
                    if !idle {
                        tracing::warn!("drain deadline passed with tasks still running");
                    }
                    return Ok(Ended::Drained);
                }
                () = cancel.cancelled(), if drained.is_none() => {
                    drained = Some(self.on_cancel(drain_deadline));
                    continue;
                }
                _ = &mut self.pump => {
                    tracing::warn!("writing to the server failed");
                    return Ok(Ended::ServerClosed);
                }
            };
            match frame {
                Ok(Some(frame)) => self.on_frame(frame)?,
                Ok(None) => return Ok(Ended::ServerClosed),
                Err(e) => {
                    tracing::warn!(error = %e, "connection to the server failed");
                    return Ok(Ended::ServerClosed);
                }
            }
        }
    }

    /// Hands a frame from the server to its handler; a `Refused` ends the session.
    fn on_frame(&self, frame: Frame) -> Result<(), Error> {
        if self.on_http_frame(&frame) {
            return Ok(());
        }
        match frame {
            Frame::HttpOpen(open) => self.on_http_open(open),
            Frame::Assign(task) => self.on_assign(task),
            Frame::Cancel { task_id, lease } => self.on_cancel_task(task_id, lease),
            Frame::Prewarm(spec) => self.on_prewarm(spec),
            Frame::Code { hash, found, bytes } => self.on_code(hash, found, bytes),
            Frame::CodeChunk {
                hash,
                offset,
                total_bytes,
                bytes,
                found,
            } => self.on_code_chunk(cache::Chunk {
                hash,
                offset,
                total_bytes,
                bytes,
                found,
            }),
            Frame::CheckCode {
                check,
                file,
                source,
            } => self.on_check_code(check, file, source),
            Frame::Refused { reason } => return Err(Error::Refused { reason }),
            other => tracing::warn!(frame = ?other, "unexpected frame from the server"),
        }
        Ok(())
    }

    /// Runs the task in the background and reports it; in pull mode, then asks for another. A
    /// `Cancel` for it stops it (its process or warm executor is killed) and reports it
    /// FAILED `cancelled`.
    fn on_assign(&self, task: Assignment) {
        let agent = self.agent.clone();
        agent.running.fetch_add(1, Ordering::AcqRel);
        let stop = agent.track(task.task_id, task.lease);
        tokio::spawn(async move {
            let (task_id, lease) = (task.task_id, task.lease);
            // A task not kept warm runs in a fresh process: a cold start, stopped or not.
            let cold = warm_spec(&task).is_none();
            let started = std::time::Instant::now();
            let report = tokio::select! {
                biased;
                () = stop.cancelled() => cancelled(task_id, lease, started.elapsed(), cold),
                report = run_task(&agent, task) => report,
            };
            agent.untrack(task_id, lease);
            agent.deliver(report);
            if agent.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                agent.idle.notify_waiters();
            }
            if agent.config.mode == DispatchMode::Pull {
                if let Some(tx) = agent.sender() {
                    let _ = tx.send(Frame::Pull { slots: 1 });
                }
            }
        });
    }

    /// Stops task `task_id` if it runs here under `lease`; else (it has ended, its report on
    /// the way) nothing.
    fn on_cancel_task(&self, task_id: u128, lease: u64) {
        let stops = self.agent.stops.lock().expect("stops lock poisoned");
        match stops.get(&task_id) {
            Some((held, stop)) if *held == lease => {
                tracing::info!(task = %uuid::Uuid::from_u128(task_id), "stopping a cancelled task");
                stop.cancel();
            }
            _ => {}
        }
    }

    /// Registers the function version's warm settings in the background; `min_warm` 0 (the
    /// server's word that the function was removed) stops its executors at once.
    fn on_prewarm(&self, spec: proto::Prewarm) {
        if spec.warm.min_warm == 0 {
            self.agent.pool.retire(&spec.function, spec.version);
            self.agent.http.pool.retire(&spec.function, spec.version);
            return;
        }
        let agent = self.agent.clone();
        tokio::spawn(async move { agent.prewarm(spec).await });
    }

    /// Stores the code the server sent and wakes the calls waiting for it.
    fn on_code(&self, hash: proto::CodeHash, found: bool, bytes: bytes::Bytes) {
        let cache = self.agent.config.cache.clone();
        tokio::spawn(async move { cache.fill(hash, found, bytes).await });
    }

    /// Writes a chunk of code the server sent and asks for the next, or, with the bundle
    /// whole, wakes the calls waiting for it.
    fn on_code_chunk(&self, chunk: cache::Chunk) {
        let cache = self.agent.config.cache.clone();
        let frames = self.frames.clone();
        tokio::spawn(async move { cache.fill_chunk(chunk, Some(&frames)).await });
    }

    /// Compiles a registration's module in the background and answers with the verdict; a
    /// compile past [`COMPILE_TIMEOUT`] gets no answer (the server times it out).
    fn on_check_code(&self, check: u64, file: String, source: bytes::Bytes) {
        let agent = self.agent.clone();
        let frames = self.frames.clone();
        tokio::spawn(async move {
            let verdict = match agent.config.runtimes.python() {
                Err(e) => unavailable(&agent, e.to_string()),
                Ok(python) => {
                    let compile = exec::compile_python(python, &file, &source);
                    match tokio::time::timeout(COMPILE_TIMEOUT, compile).await {
                        Err(_) => return,
                        Ok(Err(e)) => unavailable(&agent, e.to_string()),
                        Ok(Ok(verdict)) => verdict,
                    }
                }
            };
            let _ = frames.send(Frame::CodeChecked { check, verdict });
        });
    }

    /// Asks the server for no new tasks and starts waiting for the running ones.
    fn on_cancel(&self, drain_deadline: Duration) -> DrainWait {
        let _ = self.frames.send(Frame::Drain);
        let agent = self.agent.clone();
        Box::pin(async move { agent.wait_idle(drain_deadline).await })
    }

    /// Ends a drained session: every finished task's report is queued, so the pump gets a
    /// moment to write them before the connection closes.
    async fn finish_drain(self) {
        self.agent.set_link(None);
        self.agent.http.cancel_all();
        drop(self.heartbeat);
        drop(self.frames);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.pump).await;
        self.agent.config.cache.abandon_fetches();
    }
}

impl Agent {
    /// Notes task `task_id` as running under `lease`; returns what stops it.
    fn track(&self, task_id: u128, lease: u64) -> CancellationToken {
        let stop = CancellationToken::new();
        let mut stops = self.stops.lock().expect("stops lock poisoned");
        stops.insert(task_id, (lease, stop.clone()));
        stop
    }

    /// Stops every running task without reporting them: the worker is told to stop at once,
    /// and the server takes the tasks back when its connection drops (a report would end them
    /// `cancelled` instead). Their processes are killed as the tasks' runs are dropped.
    pub fn stop_now(&self) {
        self.set_link(None);
        self.stop_all();
    }

    /// Stops every running task (their session ended, and its leases with it); returns how
    /// many.
    fn stop_all(&self) -> usize {
        let mut stops = self.stops.lock().expect("stops lock poisoned");
        let stopped = stops.len();
        for (_, (_, stop)) in stops.drain() {
            stop.cancel();
        }
        stopped
    }

    /// Forgets task `task_id`'s run under `lease` (a later run of it under another lease
    /// stays).
    fn untrack(&self, task_id: u128, lease: u64) {
        let mut stops = self.stops.lock().expect("stops lock poisoned");
        if stops.get(&task_id).is_some_and(|(held, _)| *held == lease) {
            stops.remove(&task_id);
        }
    }

    /// Registers a function version's warm settings with the pool, which starts its `min_warm`
    /// executors on its next round.
    async fn prewarm(&self, spec: proto::Prewarm) {
        let timeout = Duration::from_millis(spec.timeout_ms);
        let launch = Launch {
            runtime: spec.runtime,
            code_hash: spec.code_hash,
            env: &spec.env,
            timeout,
            isolation: spec.isolation,
            serving: false,
        };
        // No call waits: the function's environment may take as long as its build does.
        match self.prepare(launch, None).await {
            Ok(prepared) => self.pool.prewarm(exec::WarmCall {
                key: (spec.function, spec.version),
                warm: spec.warm,
                argv: prepared.argv,
                env: prepared.env,
                waited: Duration::ZERO,
                work_root: self.config.work_root.clone(),
                payload: Default::default(),
                json: false,
                timeout: Duration::from_millis(spec.timeout_ms),
                limits: self.config.limits,
                keep: Some(Arc::new(prepared.code)),
            }),
            Err(why) => {
                tracing::warn!(function = %spec.function, error = %why.message, "cannot pre-start warm executors");
            }
        }
    }

    /// Its executors by function, warm ones and HTTP services together.
    fn warm_counts(&self) -> Vec<proto::WarmCount> {
        let mut counts = self.pool.warm_counts();
        for (function, executors) in self.http.pool.counts() {
            match counts.iter_mut().find(|c| c.function == function) {
                Some(count) => count.executors += executors,
                None => counts.push(proto::WarmCount {
                    function,
                    executors,
                }),
            }
        }
        counts
    }

    /// Ends a session whose connection is gone, and stops the tasks it leased: their leases
    /// ended with it.
    fn close_session(&self, pump: tokio::task::JoinHandle<Result<(), proto::Error>>) {
        self.set_link(None);
        let stopped = self.stop_all();
        if stopped > 0 {
            tracing::warn!(
                tasks = stopped,
                "stopped the tasks of the lost session; the server runs them again or fails them"
            );
        }
        self.http.cancel_all();
        self.config.cache.abandon_fetches();
        pump.abort();
    }
}

/// Runs one task (warm when its function is kept warm, else in a fresh process) and makes its
/// report; a task whose code or command line cannot be had fails without running. A warm task
/// with an executor ready goes straight to it: its code, environment and command line are the
/// executor's already.
async fn run_task(agent: &Agent, task: Assignment) -> Report {
    let (task_id, lease) = (task.task_id, task.lease);
    let timeout = Duration::from_millis(task.timeout_ms);
    let ready =
        warm_spec(&task).and_then(|_| agent.pool.take_ready((task.function.clone(), task.version)));
    if let Some(ready) = ready {
        let input = exec::CallInput {
            payload: task.payload,
            json: task.json,
            timeout,
            limits: agent.config.limits,
        };
        let outcome = agent.pool.run_ready(ready, input).await;
        return Report {
            task_id,
            lease,
            outcome,
        };
    }
    let launch = Launch {
        runtime: task.runtime,
        code_hash: task.code_hash,
        env: &task.env,
        timeout,
        isolation: task.isolation,
        serving: false,
    };
    let prepared = agent.prepare(launch, Some(timeout)).await;
    let outcome = match prepared {
        Ok(prepared) => run_prepared(agent, task, prepared).await,
        Err(why) => not_started(why),
    };
    Report {
        task_id,
        lease,
        outcome,
    }
}

/// Runs a task whose executor command line and environment are ready.
async fn run_prepared(agent: &Agent, task: Assignment, prepared: Prepared) -> Outcome {
    let Prepared {
        argv,
        env,
        waited,
        code,
    } = prepared;
    let config = &agent.config;
    let timeout = Duration::from_millis(task.timeout_ms);
    match warm_spec(&task) {
        Some(warm) => {
            agent
                .pool
                .run(exec::WarmCall {
                    key: (task.function, task.version),
                    warm,
                    argv,
                    env,
                    waited,
                    work_root: config.work_root.clone(),
                    payload: task.payload,
                    json: task.json,
                    timeout,
                    limits: config.limits,
                    keep: Some(Arc::new(code)),
                })
                .await
        }
        // Boxed: a cold call's future holds its output buffers (the whole future of a task was
        // 100 KB), which every task's future would otherwise carry and copy when it is
        // spawned, warm ones included.
        None => {
            Box::pin(exec::run(exec::Call {
                argv: &argv,
                env: &env,
                payload: task.payload,
                timeout,
                work_root: &config.work_root,
                limits: config.limits,
            }))
            .await
        }
    }
}

/// How the task's executors are kept warm; `None` for a fresh process per call.
fn warm_spec(task: &Assignment) -> Option<proto::WarmSpec> {
    task.warm
        .or(task.runtime.always_warm().then_some(exec::DEFAULT_WARM))
}

/// The report of a task stopped by a `Cancel` after running for `ran` (`cold_start`: in a
/// fresh process): its process (or warm executor) was killed when its run was dropped, and what
/// it had written so far is lost with it.
fn cancelled(task_id: u128, lease: u64, ran: Duration, cold_start: bool) -> Report {
    Report {
        task_id,
        lease,
        outcome: Outcome {
            failure: Some(FailureReason::Cancelled),
            exit_code: None,
            signal: None,
            message: Some("cancelled while it ran".to_owned()),
            stdout: Default::default(),
            stderr: Default::default(),
            run_us: ran.as_micros() as u64,
            cold_start,
            init_us: 0,
            cpu_us: 0,
            peak_memory_bytes: 0,
        },
    }
}

/// The outcome of a task that failed before any executor ran it (a wait for its Python
/// environment counts as its cold start).
fn not_started(why: NotStarted) -> Outcome {
    Outcome {
        failure: Some(why.reason),
        exit_code: None,
        signal: None,
        message: Some(why.message),
        stdout: Default::default(),
        stderr: why.logs,
        run_us: 0,
        cold_start: !why.waited.is_zero(),
        init_us: why.waited.as_micros() as u64,
        cpu_us: 0,
        peak_memory_bytes: 0,
    }
}

/// What an executor is started for: a task's or a prewarm's settings.
struct Launch<'a> {
    runtime: proto::Runtime,
    code_hash: proto::CodeHash,
    env: &'a [(String, String)],
    timeout: Duration,
    isolation: proto::Isolation,
    /// Started as an HTTP service (a `python` module runs as a program).
    serving: bool,
}

/// An executor ready to start.
struct Prepared {
    argv: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    /// How long getting the function's Python environment built took.
    waited: Duration,
    /// The hold on its code bundle: the code cache keeps the bundle while it lives.
    code: cache::CodeRef,
}

/// Why a task cannot start, and what its outcome shows.
struct NotStarted {
    reason: FailureReason,
    message: String,
    logs: Bytes,
    /// How long it waited for its Python environment first.
    waited: Duration,
}

impl NotStarted {
    fn new(reason: FailureReason, message: String) -> NotStarted {
        NotStarted {
            reason,
            message,
            logs: Bytes::new(),
            waited: Duration::ZERO,
        }
    }
}

impl Agent {
    /// The executor's command line and environment, with the code fetched and the function's
    /// Python environment built if needed (waiting at most `wait_limit` for that).
    async fn prepare(
        &self,
        launch: Launch<'_>,
        wait_limit: Option<Duration>,
    ) -> Result<Prepared, NotStarted> {
        let config = &self.config;
        let code = match self.sender() {
            Some(frames) => config.cache.get(launch.code_hash, &frames).await,
            None => Err(cache::Error::ConnectionClosed),
        }
        .map_err(|e| NotStarted::new(FailureReason::CodeUnavailable, e.to_string()))?;
        if launch.runtime == proto::Runtime::Oci {
            return self.prepare_image(&launch, code).await;
        }
        let function_env = match launch.runtime {
            proto::Runtime::Python => {
                self.function_env(launch.code_hash, &code, wait_limit)
                    .await?
            }
            _ => None,
        };
        let serving;
        let runtimes = if launch.serving {
            serving = config.runtimes.serving();
            &serving
        } else {
            &config.runtimes
        };
        let (runtime, timeout, isolation) = (launch.runtime, launch.timeout, launch.isolation);
        let argv = match &function_env {
            Some((venv, _)) => runtimes
                .in_env(venv)
                .command(runtime, &code, timeout, isolation),
            None => runtimes.command(runtime, &code, timeout, isolation),
        }
        .map_err(|e| {
            let message = format!("cannot run a {} function: {e}", runtime.as_str());
            NotStarted::new(FailureReason::InitFailed, message)
        })?;
        Ok(Prepared {
            argv,
            env: runtimes.env(runtime, launch.env),
            waited: function_env.map_or(Duration::ZERO, |(_, waited)| waited),
            code,
        })
    }

    /// An `oci` function's executor: its image unpacked (once per config digest, on a blocking
    /// thread; the unpack counts as the call's cold start), then its entrypoint and command
    /// with the image as the sandbox's root.
    async fn prepare_image(
        &self,
        launch: &Launch<'_>,
        code: cache::CodeRef,
    ) -> Result<Prepared, NotStarted> {
        let started = std::time::Instant::now();
        let rootfs = self
            .images
            .rootfs(launch.code_hash, &code)
            .await
            .map_err(|e| NotStarted::new(FailureReason::InitFailed, e.to_string()))?;
        let runtimes = &self.config.runtimes;
        let argv = runtimes
            .image_command(&rootfs, launch.timeout, launch.isolation)
            .map_err(|e| {
                let message = format!("cannot run an oci function: {e}");
                NotStarted::new(FailureReason::InitFailed, message)
            })?;
        Ok(Prepared {
            argv,
            env: runtimes.image_env(&rootfs, launch.env),
            waited: if rootfs.unpacked {
                started.elapsed()
            } else {
                Duration::ZERO
            },
            code,
        })
    }

    /// The Python environment of a bundle with requirements, built first if needed; a call
    /// gives up after `wait_limit` (the build goes on).
    async fn function_env(
        &self,
        hash: proto::CodeHash,
        code: &Path,
        wait_limit: Option<Duration>,
    ) -> Result<Option<(PathBuf, Duration)>, NotStarted> {
        let get = self.envs.for_bundle(hash, code);
        let got = match wait_limit {
            None => get.await,
            Some(limit) => tokio::time::timeout(limit, get).await.map_err(|_| NotStarted {
                waited: limit,
                ..NotStarted::new(
                    FailureReason::Timeout,
                    format!(
                        "timed out after {} waiting for the function's Python environment to be built (the build goes on)",
                        crate::units::format_duration(limit)
                    ),
                )
            })?,
        };
        match got.venv {
            Ok(venv) => Ok(venv.map(|venv| (venv, got.waited))),
            Err(e) => Err(NotStarted {
                reason: FailureReason::InitFailed,
                message: e.to_string(),
                logs: e.logs(),
                waited: got.waited,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        Config {
            name: "test".into(),
            slots: 2,
            mode: DispatchMode::Push,
            cache: CodeCache::new(dir.join("code"), cache::DEFAULT_MAX_BYTES).expect("cache"),
            work_root: dir.join("work"),
            limits: exec::Limits::default(),
            runtimes: exec::Runtimes::new(
                Some(std::path::Path::new("/bin/true")),
                Vec::new(),
                dir,
                None,
            )
            .expect("runtimes"),
            max_warm_memory_bytes: 1 << 30,
            join_token: "secret".into(),
        }
    }

    /// Runs the worker's side of the handshake against a server that answers `answer`
    /// (or closes the connection when it is `None`); checks the worker's `Hello` and `Join`.
    async fn handshake_answered(answer: Option<Frame>) -> Result<Duration, Error> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let (worker_end, server_end) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let (mut reader, mut writer) = proto::split(server_end);
            let hello = reader.next().await.expect("read").expect("a frame");
            let join = reader.next().await.expect("read").expect("a frame");
            if let Some(answer) = answer {
                writer.send(&answer).await.expect("send");
            }
            (hello, join)
        });
        let (mut reader, mut writer) = proto::split(worker_end);
        let result = handshake(&config, &mut reader, &mut writer).await;
        let (hello, join) = server.await.expect("join");
        assert_eq!(
            join,
            Frame::Join {
                token: "secret".into()
            }
        );
        assert_eq!(
            hello,
            Frame::Hello {
                protocol: proto::PROTOCOL_VERSION,
                name: "test".into(),
                slots: 2,
                mode: DispatchMode::Push,
                runtimes: config.runtimes.runnable(),
            }
        );
        result
    }

    #[tokio::test]
    async fn a_welcome_sets_the_heartbeat() {
        let welcome = Frame::Welcome {
            protocol: proto::PROTOCOL_VERSION,
            worker_id: 7,
            heartbeat_ms: 1500,
        };
        let heartbeat = handshake_answered(Some(welcome)).await.expect("welcomed");
        assert_eq!(heartbeat, Duration::from_millis(1500));
    }

    #[test]
    fn the_heartbeat_is_at_least_50ms() {
        assert_eq!(on_welcome(0), Duration::from_millis(50));
        assert_eq!(on_welcome(49), Duration::from_millis(50));
        assert_eq!(on_welcome(51), Duration::from_millis(51));
    }

    #[tokio::test]
    async fn a_refusal_ends_the_handshake_with_its_reason() {
        let refused = Frame::Refused {
            reason: "wrong token".into(),
        };
        match handshake_answered(Some(refused)).await {
            Err(Error::Refused { reason }) => assert_eq!(reason, "wrong token"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_connection_or_another_frame_is_a_handshake_error() {
        let err = handshake_answered(None).await.expect_err("closed");
        assert_eq!(
            err.to_string(),
            "unexpected handshake answer from the server: the server closed the connection"
        );
        let err = handshake_answered(Some(Frame::Drain))
            .await
            .expect_err("not a welcome");
        assert!(matches!(err, Error::Handshake(_)), "{err:?}");
    }

    #[test]
    fn a_task_that_cannot_start_fails_without_running() {
        let outcome = not_started(NotStarted::new(
            FailureReason::CodeUnavailable,
            "no code".into(),
        ));
        assert_eq!(outcome.failure, Some(FailureReason::CodeUnavailable));
        assert_eq!(outcome.message.as_deref(), Some("no code"));
        assert_eq!((outcome.run_us, outcome.cold_start), (0, false));
    }
}
