//! The worker: the agent that takes tasks over the frame protocol and runs them in executors.
//!
//! It is the same code inside `serve` (over an in-memory duplex pipe) and in `faasd worker`
//! (over TCP): it says `Hello`, waits for `Welcome`, then runs every `Assign` it gets in an
//! executor, fetching code it lacks by hash, heartbeats, and sends back a `Report` per task.
//! Reports that find their session gone are kept and sent at the start of the next session;
//! the server refuses any whose lease has since moved on.

mod cache;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

/// A worker across its sessions: its configuration, its running tasks, and the reports that
/// could not be delivered yet.
pub struct Agent {
    config: Config,
    /// Warm executors, kept across sessions.
    pool: exec::Pool,
    /// The current session's outbound frames; `None` between sessions.
    link: Mutex<Option<mpsc::UnboundedSender<Frame>>>,
    /// Signalled when the last running task finishes.
    idle: Notify,
    running: AtomicU32,
    unsent: Mutex<Vec<Report>>,
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
        // Idle executors across all functions: enough to keep every slot's function warm a few
        // times over, bounded against clients that register many functions.
        let pool = exec::Pool::new((config.slots as usize * 4).max(8));
        let reaper = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                reaper.reap();
            }
        });
        Arc::new(Agent {
            config,
            pool,
            link: Mutex::new(None),
            idle: Notify::new(),
            running: AtomicU32::new(0),
            unsent: Mutex::new(Vec::new()),
        })
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn sender(&self) -> Option<mpsc::UnboundedSender<Frame>> {
        self.link.lock().expect("link lock poisoned").clone()
    }

    fn set_link(&self, frames: Option<mpsc::UnboundedSender<Frame>>) {
        *self.link.lock().expect("link lock poisoned") = frames;
    }

    /// Sends a report on the current session, or keeps it for the next one.
    fn deliver(&self, report: Report) {
        let frame = Frame::Report(report);
        let undelivered = match self.sender() {
            Some(tx) => tx.send(frame).err().map(|e| e.0),
            None => Some(frame),
        };
        if let Some(Frame::Report(report)) = undelivered {
            self.unsent
                .lock()
                .expect("unsent lock poisoned")
                .push(report);
        }
    }

    /// Waits until no task is running, or `deadline` passes; returns whether it is idle.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return self.running.load(Ordering::Acquire) == 0;
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
    let config = &agent.config;
    let (mut reader, mut writer) = proto::split(io);
    writer
        .send(&Frame::Hello {
            protocol: proto::PROTOCOL_VERSION,
            name: config.name.clone(),
            slots: config.slots,
            mode: config.mode,
        })
        .await?;
    let answer = tokio::time::timeout(proto::HANDSHAKE_TIMEOUT, reader.next())
        .await
        .map_err(|_| Error::HandshakeTimeout(proto::HANDSHAKE_TIMEOUT))??;
    let heartbeat = match answer {
        Some(Frame::Welcome { heartbeat_ms, .. }) => {
            Duration::from_millis(u64::from(heartbeat_ms.max(50)))
        }
        Some(Frame::Refused { reason }) => return Err(Error::Refused { reason }),
        Some(other) => return Err(Error::Handshake(format!("{other:?}"))),
        None => return Err(Error::Handshake("the server closed the connection".into())),
    };

    let (frames, outbox) = mpsc::unbounded_channel();
    agent.set_link(Some(frames.clone()));
    let mut pump = tokio::spawn(async move { writer.pump(outbox).await });
    for report in std::mem::take(&mut *agent.unsent.lock().expect("unsent lock poisoned")) {
        let _ = frames.send(Frame::Report(report));
    }
    if config.mode == DispatchMode::Pull {
        let free = config
            .slots
            .saturating_sub(agent.running.load(Ordering::Relaxed));
        let _ = frames.send(Frame::Pull { slots: free });
    }
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While draining the session keeps reading (code still arrives for running tasks) and
    // heartbeating (so the server does not declare it dead), until its tasks are done.
    let mut drained: Option<std::pin::Pin<Box<dyn Future<Output = bool> + Send>>> = None;
    let ended = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            _ = beat.tick() => {
                let running = agent.running.load(Ordering::Relaxed);
                let _ = frames.send(Frame::Heartbeat { running });
                continue;
            }
            idle = async { drained.as_mut().expect("guarded by is_some").await }, if drained.is_some() => {
                if !idle {
                    tracing::warn!("drain deadline passed with tasks still running");
                }
                break Ended::Drained;
            }
            () = cancel.cancelled(), if drained.is_none() => {
                let _ = frames.send(Frame::Drain);
                let agent = agent.clone();
                drained = Some(Box::pin(async move { agent.wait_idle(drain_deadline).await }));
                continue;
            }
            _ = &mut pump => {
                tracing::warn!("writing to the server failed");
                break Ended::ServerClosed;
            }
        };
        match frame {
            Ok(Some(Frame::Assign(task))) => {
                let agent_for_task = agent.clone();
                agent.running.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let agent = agent_for_task;
                    let report = run_task(&agent, task).await;
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
            Ok(Some(Frame::Prewarm(spec))) => {
                let agent = agent.clone();
                tokio::spawn(async move { agent.prewarm(spec).await });
            }
            Ok(Some(Frame::Code { hash, found, bytes })) => {
                let cache = config.cache.clone();
                tokio::spawn(async move { cache.fill(hash, found, bytes).await });
            }
            Ok(Some(Frame::Refused { reason })) => {
                agent.close_session(pump);
                return Err(Error::Refused { reason });
            }
            Ok(Some(other)) => tracing::warn!(frame = ?other, "unexpected frame from the server"),
            Ok(None) => break Ended::ServerClosed,
            Err(e) => {
                tracing::warn!(error = %e, "connection to the server failed");
                break Ended::ServerClosed;
            }
        }
    };
    if ended == Ended::Drained {
        // Every finished task's report is queued: let the pump write them, then close.
        agent.set_link(None);
        drop(frames);
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        config.cache.abandon_fetches();
        return Ok(ended);
    }
    agent.close_session(pump);
    Ok(ended)
}

impl Agent {
    /// Registers a function version's warm settings with the pool, which starts its `min_warm`
    /// executors on its next round.
    async fn prewarm(&self, spec: proto::Prewarm) {
        let timeout = Duration::from_millis(spec.timeout_ms);
        let prepared = self
            .prepare(
                spec.runtime,
                spec.code_hash,
                &spec.env,
                timeout,
                spec.isolation,
            )
            .await;
        match prepared {
            Ok((argv, env)) => self.pool.prewarm(exec::WarmCall {
                key: (spec.function, spec.version),
                warm: spec.warm,
                argv,
                env,
                work_root: self.config.work_root.clone(),
                payload: Default::default(),
                json: false,
                timeout: Duration::from_millis(spec.timeout_ms),
                limits: self.config.limits,
            }),
            Err((_, why)) => {
                tracing::warn!(function = %spec.function, error = %why, "cannot pre-start warm executors");
            }
        }
    }

    /// Ends a session whose connection is gone: later reports wait for the next session.
    fn close_session(&self, pump: tokio::task::JoinHandle<Result<(), proto::Error>>) {
        self.set_link(None);
        self.config.cache.abandon_fetches();
        pump.abort();
    }
}

async fn run_task(agent: &Agent, task: Assignment) -> Report {
    let timeout = Duration::from_millis(task.timeout_ms);
    let outcome = match agent
        .prepare(
            task.runtime,
            task.code_hash,
            &task.env,
            timeout,
            task.isolation,
        )
        .await
    {
        Ok((argv, env)) => {
            let config = &agent.config;
            let timeout = Duration::from_millis(task.timeout_ms);
            let warm = task
                .warm
                .or(task.runtime.always_warm().then_some(exec::DEFAULT_WARM));
            match warm {
                Some(warm) => {
                    agent
                        .pool
                        .run(exec::WarmCall {
                            key: (task.function, task.version),
                            warm,
                            argv,
                            env,
                            work_root: config.work_root.clone(),
                            payload: task.payload,
                            json: task.json,
                            timeout,
                            limits: config.limits,
                        })
                        .await
                }
                None => {
                    exec::run(exec::Call {
                        argv: &argv,
                        env: &env,
                        payload: task.payload,
                        timeout,
                        work_root: &config.work_root,
                        limits: config.limits,
                    })
                    .await
                }
            }
        }
        Err((reason, message)) => Outcome {
            failure: Some(reason),
            exit_code: None,
            signal: None,
            message: Some(message),
            stdout: Default::default(),
            stderr: Default::default(),
            run_us: 0,
            cold_start: false,
            init_us: 0,
        },
    };
    Report {
        task_id: task.task_id,
        lease: task.lease,
        outcome,
    }
}

impl Agent {
    /// The executor's command line and environment, with the code fetched if needed.
    async fn prepare(
        &self,
        runtime: proto::Runtime,
        code_hash: proto::CodeHash,
        env: &[(String, String)],
        timeout: Duration,
        isolation: proto::Isolation,
    ) -> Result<(Vec<std::ffi::OsString>, Vec<(String, String)>), (FailureReason, String)> {
        let config = &self.config;
        let code = match self.sender() {
            Some(frames) => config.cache.get(code_hash, &frames).await,
            None => Err("the connection to the server closed".to_string()),
        }
        .map_err(|m| (FailureReason::CodeUnavailable, m))?;
        let argv = config
            .runtimes
            .command(runtime, &code, timeout, isolation)
            .map_err(|m| {
                (
                    FailureReason::InitFailed,
                    format!("cannot run a {} function: {m}", runtime.as_str()),
                )
            })?;
        Ok((argv, config.runtimes.env(runtime, env)))
    }
}
