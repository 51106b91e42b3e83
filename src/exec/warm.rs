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

use super::{Limits, Pipes, keep_tail, spawn, truncation_marker};
use crate::proto::FailureReason;
use crate::sandbox::process;
use crate::units::format_duration;

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
    /// What the executor printed while loading (its ready frame's text), until the first call
    /// takes it into its log.
    init_logs: Bytes,
    /// The `/proc` files of the process that runs the function, whose CPU and memory a call's
    /// usage reads (see `usage.rs`); opened once the executor is ready.
    meter: super::usage::Meter,
    /// When it last finished a call.
    pub last_used: Instant,
}

/// The largest frame an executor may send before it is ready (its traceback, if loading fails).
const READY_FRAME_LIMIT_BYTES: usize = 1 << 20;

impl Failure {
    /// A failure without logs or result.
    fn new(reason: FailureReason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
            logs: Bytes::new(),
            result: Bytes::new(),
        }
    }

    /// A start that failed.
    fn init_failed(message: impl Into<String>) -> Failure {
        Failure::new(FailureReason::InitFailed, message)
    }

    /// An answer that breaks the frame protocol.
    fn protocol(message: &str) -> Failure {
        Failure::new(FailureReason::ProtocolError, message)
    }
}

impl WarmExecutor {
    /// Starts an executor and waits (up to `timeout`) until it is ready.
    pub async fn start(
        argv: &[OsString],
        env: &[(String, String)],
        work_root: &Path,
        timeout: Duration,
    ) -> Result<WarmExecutor, Failure> {
        let workdir = tempfile::Builder::new()
            .prefix("warm-")
            .tempdir_in(work_root)
            .map_err(|e| Failure::init_failed(format!("cannot create a working directory: {e}")))?;
        let mut child =
            spawn::spawn_off_runtime(argv.to_vec(), workdir.path().to_owned(), env.to_vec())
                .await
                .map_err(|e| Failure::new(FailureReason::SpawnFailed, e.to_string()))?;
        let Pipes {
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
        } = Pipes::take(&mut child)
        else {
            return Err(Failure::init_failed("cannot set up the executor's pipes"));
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        // What the executor writes outside calls.
        tokio::spawn(keep_tail(stderr, stderr_tail.clone(), STDERR_TAIL_BYTES));
        let pid = child.pid();
        let mut executor = WarmExecutor {
            child,
            stdin,
            stdout,
            stderr_tail,
            sandboxed: crate::sandbox::shim::is_wrapped(argv),
            _workdir: workdir,
            init_logs: Bytes::new(),
            meter: super::usage::Meter::none(),
            last_used: Instant::now(),
        };
        executor.wait_ready(timeout).await?;
        executor.meter = super::usage::Meter::open(super::usage::executor_pid(pid));
        Ok(executor)
    }

    /// Waits (up to `timeout`) for the executor's first frame, which must say it is ready.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Failure> {
        let first = tokio::time::timeout(timeout, self.read_frame(READY_FRAME_LIMIT_BYTES)).await;
        match first {
            Err(_) => Err(Failure::init_failed(format!(
                "the executor was not ready within {}",
                format_duration(timeout)
            ))),
            Ok(Ok(body)) if body.first() == Some(&b'R') => {
                // What it printed while loading, for the first call's log.
                self.init_logs = body.slice(1..);
                Ok(())
            }
            Ok(Ok(body)) if body.first() == Some(&b'E') => Err(Failure {
                logs: body.slice(1..),
                ..Failure::init_failed("the function could not be loaded")
            }),
            Ok(Ok(_)) => Err(Failure::protocol(
                "the executor's first frame was not `R` (ready)",
            )),
            Ok(Err(e)) => Err(self.died(e, FailureReason::InitFailed).await),
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
        let frame = call_frame(payload, json);
        let limit = limits.stdout_bytes + limits.stderr_bytes + 16;
        let answered = self
            .exchange(&frame, limit, timeout)
            .await
            .and_then(|body| parse_answer(body, limits));
        self.last_used = Instant::now();
        // The first call's log starts with what the executor printed while loading.
        let init_logs = std::mem::take(&mut self.init_logs);
        if init_logs.is_empty() {
            return answered;
        }
        let with_init = |logs: Bytes| {
            bound(
                [init_logs.clone(), logs].concat().into(),
                limits.stderr_bytes,
            )
        };
        match answered {
            Ok(answer) => Ok(Answer {
                logs: with_init(answer.logs),
                ..answer
            }),
            Err(failure) => Err(Failure {
                logs: with_init(failure.logs),
                ..failure
            }),
        }
    }

    /// Writes a call frame and reads the answer's body, within `timeout`.
    async fn exchange(
        &mut self,
        frame: &[u8],
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, Failure> {
        // The tail from here on is this call's: what it printed (the harness copies it to
        // stderr) is its log if it never answers.
        self.stderr_tail
            .lock()
            .expect("stderr tail lock poisoned")
            .clear();
        let exchange = async {
            self.stdin.write_all(frame).await.map_err(FrameError::Io)?;
            self.read_frame(limit).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(Failure {
                logs: self.stderr_tail(),
                ..Failure::new(
                    FailureReason::Timeout,
                    format!("timed out after {}", format_duration(timeout)),
                )
            }),
            Ok(Err(e)) => Err(self.died(e, FailureReason::ExecutorDied).await),
            Ok(Ok(body)) => Ok(body),
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
                let message = if killed_by_memory_limit {
                    // As a cold call's: the cause, not the signal it came by.
                    "killed by the memory limit".to_string()
                } else {
                    let how = status.map_or_else(
                        || format!("stopped answering ({io})"),
                        |s| format!("exited ({s})"),
                    );
                    format!("the executor {how}")
                };
                // Give the stderr drain a moment to catch the last words.
                tokio::task::yield_now().await;
                Failure {
                    reason,
                    message,
                    logs: self.stderr_tail(),
                    result: Bytes::new(),
                }
            }
        }
    }

    /// The executor's process id, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What the call that just ended used: its CPU time in microseconds (the function
    /// process's increase since the previous call ended) and that process's peak memory over
    /// its life in bytes; zeros for what cannot be read (the executor is gone).
    pub fn call_ended(&mut self) -> (u64, u64) {
        self.meter.call_ended()
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
        self.child.end_executor(self.sandboxed);
    }
}

enum FrameError {
    Io(std::io::Error),
    Garbage(String),
    TooLarge(usize),
}

/// The frame of one call: `C`, the flags, the payload.
fn call_frame(payload: &[u8], json: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 6);
    frame.extend_from_slice(&((payload.len() + 2) as u32).to_be_bytes());
    frame.push(b'C');
    frame.push(u8::from(json));
    frame.extend_from_slice(payload);
    frame
}

/// Reads an answer's body (`O` or `X`, the result's length, the result, the logs), bounding
/// the logs and refusing a result over the limit.
fn parse_answer(body: Bytes, limits: Limits) -> Result<Answer, Failure> {
    let (kind, rest) = match body.split_first() {
        Some((k, rest)) if rest.len() >= 4 => (*k, rest),
        _ => return Err(Failure::protocol("the executor's answer is too short")),
    };
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len > rest.len() - 4 {
        return Err(Failure::protocol(
            "the executor's answer has a bad result length",
        ));
    }
    let result = body.slice(5..5 + len);
    let logs = bound(body.slice(5 + len..), limits.stderr_bytes);
    if result.len() > limits.stdout_bytes {
        return Err(Failure {
            logs,
            ..Failure::new(
                FailureReason::OutputTooLarge,
                format!("the result exceeded the {} byte limit", limits.stdout_bytes),
            )
        });
    }
    match kind {
        b'O' => Ok(Answer { result, logs }),
        b'X' => Err(Failure {
            logs,
            result,
            ..Failure::new(FailureReason::Exception, "the handler raised an exception")
        }),
        _ => Err(Failure::protocol(
            "the executor's answer is neither `O` nor `X`",
        )),
    }
}

/// Cuts logs to `limit` bytes with the truncation marker.
fn bound(logs: Bytes, limit: usize) -> Bytes {
    if logs.len() <= limit {
        return logs;
    }
    let mut kept = logs[..limit].to_vec();
    kept.extend_from_slice(&truncation_marker((logs.len() - limit) as u64));
    Bytes::from(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        stdout_bytes: 8,
        stderr_bytes: 6,
    };

    /// An answer body: the kind, the result's length, the result, the logs.
    fn answer(kind: u8, result: &[u8], logs: &[u8]) -> Bytes {
        let mut body = vec![kind];
        body.extend_from_slice(&(result.len() as u32).to_be_bytes());
        body.extend_from_slice(result);
        body.extend_from_slice(logs);
        Bytes::from(body)
    }

    #[test]
    fn bound_keeps_logs_up_to_the_limit() {
        let logs = Bytes::from_static(b"123456");
        assert_eq!(bound(logs.clone(), 6), logs);
        assert_eq!(bound(logs.clone(), 100), logs);
    }

    #[test]
    fn bound_cuts_with_a_marker() {
        let cut = bound(Bytes::from(vec![b'x'; 1000]), 100);
        assert_eq!(&cut[..100], &[b'x'; 100][..]);
        assert_eq!(
            &cut[100..],
            b"\n[faasd: stderr truncated, 900 more bytes dropped]\n"
        );
    }

    #[test]
    fn call_frame_is_length_kind_flags_payload() {
        assert_eq!(call_frame(b"hi", true), b"\0\0\0\x04C\x01hi");
        assert_eq!(call_frame(b"", false), b"\0\0\0\x02C\x00");
    }

    #[test]
    fn an_ok_answer_splits_result_and_logs() {
        let done = parse_answer(answer(b'O', b"result", b"log"), LIMITS).expect("an answer");
        assert_eq!(done.result, Bytes::from_static(b"result"));
        assert_eq!(done.logs, Bytes::from_static(b"log"));
    }

    #[test]
    fn an_exception_keeps_its_result_and_logs() {
        let failure = parse_answer(answer(b'X', b"pickled", b"trace"), LIMITS)
            .err()
            .expect("a failure");
        assert_eq!(failure.reason, FailureReason::Exception);
        assert_eq!(failure.result, Bytes::from_static(b"pickled"));
        assert_eq!(failure.logs, Bytes::from_static(b"trace"));
    }

    #[test]
    fn an_oversized_result_fails_with_bounded_logs() {
        let failure = parse_answer(answer(b'O', b"123456789", b"1234567"), LIMITS)
            .err()
            .expect("a failure");
        assert_eq!(failure.reason, FailureReason::OutputTooLarge);
        assert_eq!(failure.message, "the result exceeded the 8 byte limit");
        assert!(failure.result.is_empty());
        assert!(
            failure
                .logs
                .starts_with(b"123456\n[faasd: stderr truncated, 1 more")
        );
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        let mut bad_length = answer(b'O', b"abc", b"").to_vec();
        bad_length[4] = 4;
        let cases = [
            (Bytes::new(), "the executor's answer is too short"),
            (
                Bytes::from_static(b"O\0\0\0"),
                "the executor's answer is too short",
            ),
            (
                Bytes::from(bad_length),
                "the executor's answer has a bad result length",
            ),
            (
                answer(b'Q', b"", b""),
                "the executor's answer is neither `O` nor `X`",
            ),
        ];
        for (body, message) in cases {
            let failure = parse_answer(body, LIMITS).err().expect("a failure");
            assert_eq!(failure.reason, FailureReason::ProtocolError);
            assert_eq!(failure.message, message);
        }
    }

    /// Starts a warm executor running `script` under `/bin/sh`.
    async fn start_script(script: &str, timeout: Duration) -> Result<WarmExecutor, Failure> {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("executor.sh");
        std::fs::write(&program, script).expect("write script");
        let argv: Vec<OsString> = vec!["/bin/sh".into(), program.into()];
        WarmExecutor::start(&argv, &[], dir.path(), timeout).await
    }

    #[tokio::test]
    async fn start_waits_for_ready() {
        let executor = start_script(
            "printf '\\000\\000\\000\\001R'; cat >/dev/null",
            Duration::from_secs(5),
        )
        .await;
        let executor = executor.expect("ready");
        assert!(!executor.has_exited());
    }

    #[tokio::test]
    async fn a_load_error_is_init_failed_with_its_traceback() {
        let failure = start_script(
            "printf '\\000\\000\\000\\006Eboom!'",
            Duration::from_secs(5),
        )
        .await
        .err()
        .expect("a failure");
        assert_eq!(failure.reason, FailureReason::InitFailed);
        assert_eq!(failure.logs, Bytes::from_static(b"boom!"));
    }

    #[tokio::test]
    async fn an_executor_never_ready_times_out() {
        let failure = start_script("sleep 30", Duration::from_millis(200))
            .await
            .err()
            .expect("a failure");
        assert_eq!(failure.reason, FailureReason::InitFailed);
        assert_eq!(failure.message, "the executor was not ready within 200ms");
    }
}
