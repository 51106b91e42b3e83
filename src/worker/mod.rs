//! The worker: the agent that takes tasks over the frame protocol and runs them in executors.
//!
//! It is the same code inside `serve` (over an in-memory duplex pipe) and in `faasd worker`
//! (over TCP): it says `Hello`, waits for `Welcome`, then runs every `Assign` it gets in an
//! executor, fetching code it lacks by hash, and sends back a `Report` per task.

mod cache;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The server closed the connection.
    ServerClosed,
    /// `cancel` fired: the worker drained and left.
    Drained,
}

/// Runs one session over `io` until the server closes it or `cancel` fires; on cancel it sends
/// `Drain`, finishes its running tasks (up to `drain_deadline`) and reports them.
pub async fn run_session<T>(
    io: T,
    config: Arc<Config>,
    cancel: CancellationToken,
    drain_deadline: Duration,
) -> Result<Ended, Error>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
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
    match answer {
        Some(Frame::Welcome { .. }) => {}
        Some(Frame::Refused { reason }) => return Err(Error::Refused { reason }),
        Some(other) => return Err(Error::Handshake(format!("{other:?}"))),
        None => return Err(Error::Handshake("the server closed the connection".into())),
    }

    let (frames, outbox) = mpsc::unbounded_channel();
    let pump = tokio::spawn(async move { writer.pump(outbox).await });
    if config.mode == DispatchMode::Pull {
        let _ = frames.send(Frame::Pull {
            slots: config.slots,
        });
    }
    let tracker = TaskTracker::new();
    let ended = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            () = cancel.cancelled() => break Ended::Drained,
        };
        match frame? {
            Some(Frame::Assign(task)) => {
                let config = config.clone();
                let frames = frames.clone();
                tracker.spawn(async move {
                    let report = run_task(&config, task, &frames).await;
                    let _ = frames.send(Frame::Report(report));
                    if config.mode == DispatchMode::Pull {
                        let _ = frames.send(Frame::Pull { slots: 1 });
                    }
                });
            }
            Some(Frame::Code { hash, found, bytes }) => {
                let cache = config.cache.clone();
                tokio::spawn(async move { cache.fill(hash, found, bytes).await });
            }
            Some(Frame::Refused { reason }) => return Err(Error::Refused { reason }),
            Some(other) => tracing::warn!(frame = ?other, "unexpected frame from the server"),
            None => break Ended::ServerClosed,
        }
    };
    if ended == Ended::Drained {
        let _ = frames.send(Frame::Drain);
        tracker.close();
        if tokio::time::timeout(drain_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed with tasks still running");
        }
    }
    config.cache.abandon_fetches();
    drop(frames);
    // Reports already queued still go out; the pump ends when every sender is gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    Ok(ended)
}

async fn run_task(
    config: &Config,
    task: Assignment,
    frames: &mpsc::UnboundedSender<Frame>,
) -> Report {
    let outcome = match config.cache.get(task.code_hash, frames).await {
        Ok(program) => {
            exec::run(exec::Call {
                runtime: task.runtime,
                program: &program,
                env: &task.env,
                payload: task.payload,
                timeout: Duration::from_millis(task.timeout_ms),
                work_root: &config.work_root,
                limits: config.limits,
            })
            .await
        }
        Err(message) => Outcome {
            failure: Some(FailureReason::CodeUnavailable),
            exit_code: None,
            signal: None,
            message: Some(message),
            stdout: Default::default(),
            stderr: Default::default(),
            run_us: 0,
        },
    };
    Report {
        task_id: task.task_id,
        lease: task.lease,
        outcome,
    }
}
