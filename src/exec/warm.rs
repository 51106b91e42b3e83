//! A warm executor: one process that serves many calls over the warm frame protocol.
//!
//! # The warm frame protocol
//!
//! Every frame is a 4-byte big-endian length, then that many bytes of body, written in one
//! `write` (a frame split across writes is still read correctly, but costs a round trip).
//!
//! | direction | body | meaning |
//! |---|---|---|
//! | executor → worker | `R` | ready: loading and `init()` are done |
//! | executor → worker | `E` + text | loading failed (the text is the traceback); it then exits |
//! | worker → executor | `C` + flags (1 byte, bit 0 = JSON payload) + payload | one call |
//! | executor → worker | `O` + result length (4 bytes BE) + result + logs | the call's result |
//! | executor → worker | `X` + result length (4 bytes BE) + result + logs | the call raised |
//!
//! Anything else, a frame over the size limit, an exit mid-call, or no answer within the
//! function's timeout ends that executor (its process group is killed and reaped) and fails
//! that one call with a clear reason; the next call gets a fresh executor.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::{Limits, spawn};
use crate::proto::FailureReason;
use crate::sandbox::process;

/// How much of a warm executor's own stderr (outside calls) is kept for error messages.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// A failed start or call: the reason, a message, and any logs.
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub reason: FailureReason,
    /// For people.
    pub message: String,
    /// What the executor wrote (a traceback, its stderr tail).
    pub logs: Bytes,
    /// A result that still came back (the pickled exception of a `pickle` call).
    pub result: Bytes,
}

/// A successful call's result and logs.
pub struct Answer {
    /// The result bytes.
    pub result: Bytes,
    /// What the call printed.
    pub logs: Bytes,
}

/// A running warm executor.
pub struct WarmExecutor {
    child: process::Child,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    /// Runs through the sandbox shim (whose cgroups must go when it does).
    sandboxed: bool,
    _workdir: tempfile::TempDir,
    /// When it last finished a call.
    pub last_used: Instant,
}

impl WarmExecutor {
    /// Starts an executor and waits (up to `timeout`) until it is ready.
    pub async fn start(
        argv: &[OsString],
        env: &[(String, String)],
        work_root: &Path,
        timeout: Duration,
    ) -> Result<WarmExecutor, Failure> {
        let init_failed = |message: String| Failure {
            reason: FailureReason::InitFailed,
            message,
            logs: Bytes::new(),
            result: Bytes::new(),
        };
        let workdir = tempfile::Builder::new()
            .prefix("warm-")
            .tempdir_in(work_root)
            .map_err(|e| init_failed(format!("cannot create a working directory: {e}")))?;
        let mut child = spawn::spawn(&spawn::SpawnSpec {
            argv,
            workdir: workdir.path(),
            env,
        })
        .map_err(|e| Failure {
            reason: FailureReason::SpawnFailed,
            ..init_failed(e.to_string())
        })?;
        let pipes = (
            child
                .stdin
                .take()
                .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok()),
            child
                .stdout
                .take()
                .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()),
            child
                .stderr
                .take()
                .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()),
        );
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            return Err(init_failed("cannot set up the executor's pipes".into()));
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(drain_stderr(stderr, stderr_tail.clone()));
        let mut executor = WarmExecutor {
            child,
            stdin,
            stdout,
            stderr_tail,
            sandboxed: crate::sandbox::shim::is_wrapped(argv),
            _workdir: workdir,
            last_used: Instant::now(),
        };
        let limit = 1 << 20;
        match tokio::time::timeout(timeout, executor.read_frame(limit)).await {
            Err(_) => Err(init_failed(format!(
                "the executor was not ready within {}",
                humantime::format_duration(timeout)
            ))),
            Ok(Ok(body)) if body.as_ref() == b"R" => Ok(executor),
            Ok(Ok(body)) if body.first() == Some(&b'E') => Err(Failure {
                logs: body.slice(1..),
                ..init_failed("loading the function failed (traceback in the logs)".into())
            }),
            Ok(Ok(_)) => Err(Failure {
                reason: FailureReason::ProtocolError,
                ..init_failed("the executor's first frame was not `R` (ready)".into())
            }),
            Ok(Err(e)) => Err(executor.died(e, FailureReason::InitFailed).await),
        }
    }

    /// Serves one call; on any failure the executor must be dropped.
    pub async fn call(
        &mut self,
        payload: &[u8],
        json: bool,
        timeout: Duration,
        limits: Limits,
    ) -> Result<Answer, Failure> {
        let mut frame = Vec::with_capacity(payload.len() + 6);
        frame.extend_from_slice(&((payload.len() + 2) as u32).to_be_bytes());
        frame.push(b'C');
        frame.push(u8::from(json));
        frame.extend_from_slice(payload);
        let limit = limits.stdout_bytes + limits.stderr_bytes + 16;
        let exchange = async {
            self.stdin.write_all(&frame).await.map_err(FrameError::Io)?;
            self.read_frame(limit).await
        };
        let body = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(Failure {
                    reason: FailureReason::Timeout,
                    message: format!("timed out after {}", humantime::format_duration(timeout)),
                    logs: self.stderr_tail(),
                    result: Bytes::new(),
                });
            }
            Ok(Err(e)) => return Err(self.died(e, FailureReason::ExecutorDied).await),
            Ok(Ok(body)) => body,
        };
        self.last_used = Instant::now();
        let protocol = |message: &str| Failure {
            reason: FailureReason::ProtocolError,
            message: message.to_string(),
            logs: Bytes::new(),
            result: Bytes::new(),
        };
        let (kind, rest) = match body.split_first() {
            Some((k, rest)) if rest.len() >= 4 => (*k, rest),
            _ => return Err(protocol("the executor's answer is too short")),
        };
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > rest.len() - 4 {
            return Err(protocol("the executor's answer has a bad result length"));
        }
        let result = body.slice(5..5 + len);
        let logs = bound(body.slice(5 + len..), limits.stderr_bytes);
        if result.len() > limits.stdout_bytes {
            return Err(Failure {
                reason: FailureReason::OutputTooLarge,
                message: format!("the result exceeded the {} byte limit", limits.stdout_bytes),
                logs,
                result: Bytes::new(),
            });
        }
        match kind {
            b'O' => Ok(Answer { result, logs }),
            b'X' => Err(Failure {
                reason: FailureReason::Exception,
                message: "the handler raised an exception (traceback in the logs)".into(),
                logs,
                result,
            }),
            _ => Err(protocol("the executor's answer is neither `O` nor `X`")),
        }
    }

    async fn read_frame(&mut self, limit: usize) -> Result<Bytes, FrameError> {
        let mut header = [0u8; 4];
        self.stdout
            .read_exact(&mut header)
            .await
            .map_err(FrameError::Io)?;
        let len = u32::from_be_bytes(header) as usize;
        if len > limit {
            // A real answer too big to take, or garbage whose first bytes read as a length.
            let mut kind = [0u8; 1];
            let answer =
                self.stdout.read_exact(&mut kind).await.is_ok() && matches!(kind[0], b'O' | b'X');
            return Err(if answer {
                FrameError::TooLarge(len)
            } else {
                FrameError::Garbage(format!(
                    "a frame of {len} bytes (over the {limit} byte limit; garbage on stdout?)"
                ))
            });
        }
        let mut body = vec![0u8; len];
        self.stdout
            .read_exact(&mut body)
            .await
            .map_err(FrameError::Io)?;
        Ok(Bytes::from(body))
    }

    /// Explains a broken exchange: garbage, or the executor's exit with its stderr tail.
    async fn died(&mut self, error: FrameError, reason: FailureReason) -> Failure {
        match error {
            FrameError::TooLarge(len) => Failure {
                reason: FailureReason::OutputTooLarge,
                message: format!("the executor's answer of {len} bytes exceeds the result limit"),
                logs: self.stderr_tail(),
                result: Bytes::new(),
            },
            FrameError::Garbage(what) => Failure {
                reason: FailureReason::ProtocolError,
                message: format!("the executor broke the frame protocol: {what}"),
                logs: self.stderr_tail(),
                result: Bytes::new(),
            },
            FrameError::Io(io) => {
                // The pipe closed: the executor is exiting; collect how it ended.
                let exited =
                    tokio::time::timeout(Duration::from_secs(1), self.child.exited()).await;
                self.child.kill_group();
                let status = match exited {
                    Ok(_) => self.child.reap().ok(),
                    Err(_) => None,
                };
                let killed_by_memory_limit =
                    self.sandboxed && status.is_some() && self.child.out_of_memory();
                let reason = if killed_by_memory_limit {
                    FailureReason::OutOfMemory
                } else {
                    reason
                };
                let how = status.map_or_else(
                    || format!("stopped answering ({io})"),
                    |s| format!("exited ({s})"),
                );
                // Give the stderr drain a moment to catch the last words.
                tokio::task::yield_now().await;
                Failure {
                    reason,
                    message: format!("the executor {how}"),
                    logs: self.stderr_tail(),
                    result: Bytes::new(),
                }
            }
        }
    }

    /// Whether the process has exited (killed from outside while idle, say).
    pub fn has_exited(&self) -> bool {
        self.child.has_exited()
    }

    fn stderr_tail(&self) -> Bytes {
        let tail = self.stderr_tail.lock().expect("stderr tail lock poisoned");
        Bytes::from(tail.iter().copied().collect::<Vec<u8>>())
    }
}

impl Drop for WarmExecutor {
    fn drop(&mut self) {
        // Reap first, then remove the call's cgroups (which must be empty by then); a zygote
        // recycles its children's cgroups itself.
        let sandboxed = self.sandboxed && !self.child.forked_by_zygote();
        let pid = self.child.pid();
        self.child.kill_and_reap_then(move || {
            if sandboxed {
                crate::sandbox::cgroup::finish(pid);
            }
        });
    }
}

enum FrameError {
    Io(std::io::Error),
    Garbage(String),
    TooLarge(usize),
}

/// Keeps the last [`STDERR_TAIL_BYTES`] of what the executor writes outside calls.
async fn drain_stderr(mut stderr: pipe::Receiver, tail: Arc<Mutex<VecDeque<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().expect("stderr tail lock poisoned");
        tail.extend(&buf[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// Cuts logs to `limit` bytes with the truncation marker.
fn bound(logs: Bytes, limit: usize) -> Bytes {
    if logs.len() <= limit {
        return logs;
    }
    let mut kept = logs[..limit].to_vec();
    kept.extend_from_slice(
        format!(
            "\n[faasd: stderr truncated, {} more bytes dropped]\n",
            logs.len() - limit
        )
        .as_bytes(),
    );
    Bytes::from(kept)
}
