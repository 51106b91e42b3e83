//! Executors: running one call of a function in a fresh process and capturing what it did.
//!
//! A call runs in a new temporary working directory (removed afterwards), in its own session and
//! process group, with the payload on stdin. stdout is the result (bounded by the result limit),
//! stderr is captured up to [`Limits::stderr_bytes`] with a truncation marker, and the whole
//! process group is killed when the call ends or times out.
//!
//! [`run`] goes through named steps: spawn, `feed_and_wait` (feed stdin and capture the
//! output while waiting for the exit or the timeout, then kill and reap the group), and
//! `judge` (which fact decides the failure, in `Ending::failure`). The rest of the module:
//! `spawn` (what an executor process gets), `runtimes` (each runtime's command line and
//! environment), `warm` (one process serving many calls), `pool` (a worker's warm executors)
//! and `memory` (what pre-warmed executors hold, against their budget).

mod compile;
pub mod http;
mod memory;
mod pep508;
mod pool;
pub mod requirements;
pub mod runtimes;
mod spawn;
mod usage;
mod warm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::proto::{FailureReason, Outcome, WarmSpec};
use crate::sandbox::{process, shim as sandbox, sys};
use crate::units::format_duration;
pub use compile::compile as compile_python;
pub use memory::default_warm_budget_bytes;
pub use pool::{CallInput, KeepAlive, Pool, PoolLimits, Ready, WarmCall};
pub use runtimes::Runtimes;
pub use spawn::DEFAULT_PATH;

/// How long output may keep flowing after the call's process group is gone.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Errors of starting an executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The working directory could not be created.
    #[error("cannot create working directory under {root}: {source}")]
    Workdir {
        /// Where it was to be made.
        root: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program that was to run.
        program: PathBuf,
        /// Why.
        source: sys::Error,
    },
    /// The thread starting the process ended without an answer (the worker is stopping).
    #[error("the start of {program} was abandoned")]
    Abandoned {
        /// The program that was to run.
        program: PathBuf,
    },
    /// An argument or variable cannot be passed to a process.
    #[error("cannot pass to the executor: {what}")]
    BadArgument {
        /// What was wrong.
        what: String,
    },
}

/// Bounds on what one call may produce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most stdout kept; more fails the call with `output_too_large`.
    pub stdout_bytes: usize,
    /// The most stderr kept; the rest is counted and replaced by a marker.
    pub stderr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stdout_bytes: 6 << 20,
            stderr_bytes: 1 << 20,
        }
    }
}

/// Warm settings of `python` and `pickle` functions registered without any.
pub const DEFAULT_WARM: WarmSpec = WarmSpec {
    min_warm: 0,
    idle_timeout_ms: 60_000,
};

/// One call to run in a fresh process.
pub struct Call<'a> {
    /// The command line (from [`Runtimes::command`]).
    pub argv: &'a [OsString],
    /// The environment variables (from [`Runtimes::env`]).
    pub env: &'a [(String, String)],
    /// What the function reads on stdin.
    pub payload: Bytes,
    /// How long it may run.
    pub timeout: Duration,
    /// Where its temporary working directory is made.
    pub work_root: &'a Path,
    /// Output bounds.
    pub limits: Limits,
}

/// Runs one call to its end and reports what happened. Never fails: a call that cannot start
/// is a FAILED outcome with reason `spawn_failed`.
pub async fn run(call: Call<'_>) -> Outcome {
    let started = Instant::now();
    match run_inner(&call, started).await {
        Ok(outcome) => outcome,
        Err(err) => Outcome {
            failure: Some(FailureReason::SpawnFailed),
            exit_code: None,
            signal: None,
            message: Some(err.to_string()),
            stdout: Bytes::new(),
            stderr: Bytes::new(),
            run_us: started.elapsed().as_micros() as u64,
            cold_start: true,
            init_us: 0,
            cpu_us: 0,
            peak_memory_bytes: 0,
        },
    }
}

/// The steps of a call: make its working directory, spawn, feed and capture until it ends or
/// times out, then judge what it left behind.
async fn run_inner(call: &Call<'_>, started: Instant) -> Result<Outcome, Error> {
    let workdir = tempfile::Builder::new()
        .prefix("call-")
        .tempdir_in(call.work_root)
        .map_err(|source| Error::Workdir {
            root: call.work_root.to_owned(),
            source,
        })?;
    let mut child = spawn::spawn_off_runtime(
        call.argv.to_vec(),
        workdir.path().to_owned(),
        call.env.to_vec(),
    )
    .await?;
    let pipes = Pipes::take(&mut child);
    let finished = feed_and_wait(&mut child, pipes, call).await;
    let run_us = started.elapsed().as_micros() as u64;
    drop(workdir);
    Ok(judge(call, &child, finished, run_us))
}

/// The call's ends of the child's stdio pipes.
struct Pipes {
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

impl Pipes {
    /// Takes the child's stdio as async pipes.
    fn take(child: &mut process::Child) -> Pipes {
        Pipes {
            stdin: child
                .stdin
                .take()
                .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok()),
            stdout: child
                .stdout
                .take()
                .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()),
            stderr: child
                .stderr
                .take()
                .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()),
        }
    }
}

/// What a stream left: the bytes kept, and how many more were dropped past the limit.
#[derive(Debug, Default, PartialEq, Eq)]
struct Captured {
    kept: Vec<u8>,
    dropped_bytes: u64,
}

/// What a call left behind once its process group is gone, before it is judged.
struct Finished {
    /// The leader's exit status (`None` when it could not be collected).
    status: Option<ExitStatus>,
    /// It ran past its timeout and was killed.
    timed_out: bool,
    /// A process that left the group kept the output pipes open past [`OUTPUT_GRACE`].
    held_open: bool,
    stdout: Captured,
    stderr: Captured,
}

/// Feeds the payload and captures stdout and stderr while waiting for the process to exit or
/// time out; then kills its group and reaps it.
async fn feed_and_wait(child: &mut process::Child, pipes: Pipes, call: &Call<'_>) -> Finished {
    let feed = feed(pipes.stdin, call.payload.clone());
    let stdout = capture(pipes.stdout, call.limits.stdout_bytes);
    let stderr = capture(pipes.stderr, call.limits.stderr_bytes);
    let (reaped, reaped_rx) = tokio::sync::oneshot::channel::<()>();
    let waited = wait_then_kill(child, feed, call.timeout, reaped);
    let outputs = outputs_within_grace(stdout, stderr, reaped_rx);
    let ((status, timed_out), outputs) = tokio::join!(waited, outputs);
    let held_open = outputs.is_none();
    let (stdout, stderr) = outputs.unwrap_or_default();
    Finished {
        status,
        timed_out,
        held_open,
        stdout,
        stderr,
    }
}

/// Reads an executor's output to its end, keeping its last `max` bytes in `tail` (what a warm
/// executor writes outside calls, an HTTP service's output), for the error that names why it
/// stopped.
async fn keep_tail(
    mut out: pipe::Receiver,
    tail: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>,
    max: usize,
) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tail.extend(&buf[..n]);
        let excess = tail.len().saturating_sub(max);
        tail.drain(..excess);
    }
}

/// Writes the payload to the function's stdin and closes it.
async fn feed(stdin: Option<pipe::Sender>, payload: Bytes) {
    if let Some(mut stdin) = stdin {
        // A function that exits without reading its input closes the pipe: not an error.
        let _ = stdin.write_all(&payload).await;
    }
}

/// Waits (up to `timeout`) for the payload to be fed and the process to exit, then kills its
/// group, reaps it and signals `reaped`; returns its status and whether it timed out.
async fn wait_then_kill(
    child: &mut process::Child,
    feed: impl Future<Output = ()>,
    timeout: Duration,
    reaped: tokio::sync::oneshot::Sender<()>,
) -> (Option<ExitStatus>, bool) {
    let waited = async {
        let (_, exited) = tokio::join!(feed, child.exited());
        exited
    };
    let timed_out = tokio::time::timeout(timeout, waited).await.is_err();
    // Whatever the outcome, nothing of the call's process group may outlive it; this also
    // ends background children that would hold the output pipes open. The leader is not
    // reaped yet, so its pid still names this group. A sandbox's init that has reported has
    // ended every process of the call already, and may serve another call.
    if !child.finished_contained() {
        child.kill_group();
    }
    // Reap only once the kernel says it is gone, so the blocking waitpid never waits.
    let _ = child.exited().await;
    let status = child.reap().ok();
    let _ = reaped.send(());
    (status, timed_out)
}

/// Both outputs to their end, or `None` when they are still open [`OUTPUT_GRACE`] after the
/// group was reaped: a descendant that left the process group can hold the pipes open, and
/// its output is then abandoned.
async fn outputs_within_grace(
    stdout: impl Future<Output = Captured>,
    stderr: impl Future<Output = Captured>,
    reaped: tokio::sync::oneshot::Receiver<()>,
) -> Option<(Captured, Captured)> {
    tokio::select! {
        both = async { tokio::join!(stdout, stderr) } => Some(both),
        () = async {
            let _ = reaped.await;
            tokio::time::sleep(OUTPUT_GRACE).await;
        } => None,
    }
}

/// Turns what a call left behind into its outcome.
fn judge(call: &Call<'_>, child: &process::Child, finished: Finished, run_us: u64) -> Outcome {
    let mut stderr = finished.stderr.kept;
    if finished.stderr.dropped_bytes > 0 {
        stderr.extend_from_slice(&truncation_marker(finished.stderr.dropped_bytes));
    }
    let (exit_code, signal) = decode_status(finished.status);
    let ending = Ending {
        // The sandbox's memory limit, read (and its cgroups removed) now the call's processes
        // are gone.
        out_of_memory: sandbox::is_wrapped(call.argv) && child.out_of_memory(),
        // The sandbox shim's own failure, before the function ever ran.
        sandbox_failed: exit_code == Some(sandbox::SETUP_FAILED)
            && stderr.starts_with(sandbox::ERROR_PREFIX.as_bytes()),
        held_open: finished.held_open,
        timed_out: finished.timed_out,
        stdout_dropped_bytes: finished.stdout.dropped_bytes,
        exit_code,
        signal,
    };
    let (failure, message) = ending.failure(&stderr, call.timeout, call.limits.stdout_bytes);
    let usage = child.usage().unwrap_or_default();
    Outcome {
        failure,
        exit_code,
        signal,
        message,
        stdout: if ending.stdout_dropped_bytes > 0 {
            Bytes::new()
        } else {
            Bytes::from(finished.stdout.kept)
        },
        stderr: Bytes::from(stderr),
        run_us,
        cold_start: true,
        init_us: 0,
        cpu_us: usage.cpu_us,
        peak_memory_bytes: usage.peak_memory_bytes,
    }
}

/// The marker put after stderr cut at its limit.
fn truncation_marker(dropped_bytes: u64) -> Vec<u8> {
    format!("\n[faasd: stderr truncated, {dropped_bytes} more bytes dropped]\n").into_bytes()
}

/// The facts about how a call ended that decide whether (and why) it failed.
#[derive(Debug, Default, Clone, Copy)]
struct Ending {
    out_of_memory: bool,
    sandbox_failed: bool,
    held_open: bool,
    timed_out: bool,
    stdout_dropped_bytes: u64,
    exit_code: Option<i32>,
    signal: Option<i32>,
}

impl Ending {
    /// The failure reason and message, the first fact that applies winning: the memory limit,
    /// the sandbox's own failure, output held open, timeout, oversized stdout, a signal, a
    /// non-zero status. `stderr` is the sandbox's message when it failed.
    fn failure(
        &self,
        stderr: &[u8],
        timeout: Duration,
        stdout_limit_bytes: usize,
    ) -> (Option<FailureReason>, Option<String>) {
        let (reason, message) = if self.out_of_memory {
            (
                FailureReason::OutOfMemory,
                "killed by the memory limit".to_string(),
            )
        } else if self.sandbox_failed {
            (
                FailureReason::SpawnFailed,
                String::from_utf8_lossy(stderr).trim().to_string(),
            )
        } else if self.held_open {
            (
                FailureReason::OutputHeldOpen,
                "a process that left the call's process group kept its output open".into(),
            )
        } else if self.timed_out {
            (
                FailureReason::Timeout,
                format!("timed out after {}", format_duration(timeout)),
            )
        } else if self.stdout_dropped_bytes > 0 {
            (
                FailureReason::OutputTooLarge,
                format!("stdout exceeded the {stdout_limit_bytes} byte result limit"),
            )
        } else if let Some(sig) = self.signal {
            (
                FailureReason::Signal,
                format!("killed by signal {}", signal_name(sig)),
            )
        } else if self.exit_code != Some(0) {
            let code = self
                .exit_code
                .map_or_else(|| "unknown".to_string(), |c| c.to_string());
            (
                FailureReason::ExitStatus,
                format!("exited with status {code}"),
            )
        } else {
            return (None, None);
        };
        (Some(reason), Some(message))
    }
}

/// The exit code and the terminating signal of a status, if any.
fn decode_status(status: Option<ExitStatus>) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => (s.code(), s.signal()),
        None => (None, None),
    }
}

/// A signal's name (`SIGKILL`), or its number when it has none.
fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_string())
}

/// Reads a stream to its end, keeping at most `limit` bytes and counting the rest.
async fn capture<R: AsyncRead + Unpin>(stream: Option<R>, limit: usize) -> Captured {
    let mut captured = Captured::default();
    let Some(mut stream) = stream else {
        return captured;
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(captured.kept.len()).min(n);
                captured.kept.extend_from_slice(&buf[..room]);
                captured.dropped_bytes += (n - room) as u64;
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &Path) -> Vec<OsString> {
        vec!["/bin/sh".into(), script.into()]
    }

    async fn run_script(
        script: &str,
        payload: &[u8],
        timeout: Duration,
        limits: Limits,
    ) -> Outcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("script.sh");
        std::fs::write(&program, script).expect("write script");
        run(Call {
            argv: &shell(&program),
            env: &[("GREETING".into(), "hi".into())],
            payload: Bytes::copy_from_slice(payload),
            timeout,
            work_root: dir.path(),
            limits,
        })
        .await
    }

    #[test]
    fn decode_status_splits_exit_code_and_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            decode_status(Some(ExitStatus::from_raw(3 << 8))),
            (Some(3), None)
        );
        assert_eq!(
            decode_status(Some(ExitStatus::from_raw(9))),
            (None, Some(9))
        );
        assert_eq!(decode_status(None), (None, None));
    }

    #[test]
    fn signal_name_is_the_name_or_the_number() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(1000), "1000");
    }

    #[tokio::test]
    async fn capture_keeps_exactly_the_limit() {
        let data = vec![7u8; 100];
        let captured = capture(Some(&data[..]), 100).await;
        assert_eq!(captured.kept, data);
        assert_eq!(captured.dropped_bytes, 0);
    }

    #[tokio::test]
    async fn capture_counts_what_it_drops_across_reads() {
        // Larger than one read buffer, so the limit falls inside a later read.
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let captured = capture(Some(std::io::Cursor::new(data.clone())), 20_001).await;
        assert_eq!(captured.kept, data[..20_001]);
        assert_eq!(captured.dropped_bytes, 19_999);
    }

    #[tokio::test]
    async fn capture_of_no_stream_is_empty() {
        let captured = capture(None::<&[u8]>, 10).await;
        assert_eq!(captured, Captured::default());
    }

    #[test]
    fn truncation_marker_names_the_dropped_bytes() {
        assert_eq!(
            truncation_marker(900),
            b"\n[faasd: stderr truncated, 900 more bytes dropped]\n"
        );
    }

    fn judged(ending: Ending) -> (Option<FailureReason>, Option<String>) {
        ending.failure(
            b"  faasd sandbox: no such user\n",
            Duration::from_millis(1500),
            10,
        )
    }

    #[test]
    fn a_clean_exit_is_no_failure() {
        let ending = Ending {
            exit_code: Some(0),
            ..Ending::default()
        };
        assert_eq!(judged(ending), (None, None));
    }

    #[test]
    fn exit_status_and_signal_messages() {
        let exited = Ending {
            exit_code: Some(3),
            ..Ending::default()
        };
        assert_eq!(
            judged(exited),
            (
                Some(FailureReason::ExitStatus),
                Some("exited with status 3".into())
            )
        );
        assert_eq!(
            judged(Ending::default()),
            (
                Some(FailureReason::ExitStatus),
                Some("exited with status unknown".into())
            )
        );
        let killed = Ending {
            signal: Some(9),
            ..Ending::default()
        };
        assert_eq!(
            judged(killed),
            (
                Some(FailureReason::Signal),
                Some("killed by signal SIGKILL".into())
            )
        );
    }

    #[test]
    fn failure_reasons_apply_in_order() {
        let everything = Ending {
            out_of_memory: true,
            sandbox_failed: true,
            held_open: true,
            timed_out: true,
            stdout_dropped_bytes: 5,
            exit_code: None,
            signal: Some(9),
        };
        let mut ending = everything;
        let mut reasons = Vec::new();
        loop {
            let (reason, message) = judged(ending);
            reasons.push((reason.expect("a failure"), message.expect("a message")));
            match reason {
                Some(FailureReason::OutOfMemory) => ending.out_of_memory = false,
                Some(FailureReason::SpawnFailed) => ending.sandbox_failed = false,
                Some(FailureReason::OutputHeldOpen) => ending.held_open = false,
                Some(FailureReason::Timeout) => ending.timed_out = false,
                Some(FailureReason::OutputTooLarge) => ending.stdout_dropped_bytes = 0,
                _ => break,
            }
        }
        let expected = [
            (FailureReason::OutOfMemory, "killed by the memory limit"),
            (FailureReason::SpawnFailed, "faasd sandbox: no such user"),
            (
                FailureReason::OutputHeldOpen,
                "a process that left the call's process group kept its output open",
            ),
            (FailureReason::Timeout, "timed out after 1s 500ms"),
            (
                FailureReason::OutputTooLarge,
                "stdout exceeded the 10 byte result limit",
            ),
            (FailureReason::Signal, "killed by signal SIGKILL"),
        ];
        let expected: Vec<(FailureReason, String)> =
            expected.iter().map(|(r, m)| (*r, m.to_string())).collect();
        assert_eq!(reasons, expected);
    }

    #[tokio::test]
    async fn payload_in_result_out() {
        let out = run_script(
            "cat; echo \"$GREETING\" >&2",
            b"abc",
            Duration::from_secs(5),
            Limits::default(),
        )
        .await;
        assert_eq!(out.failure, None);
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(&out.stdout[..], b"abc");
        assert_eq!(&out.stderr[..], b"hi\n");
    }

    #[tokio::test]
    async fn environment_is_cleared() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("FAASD_TEST_LEAK", "leaked") };
        let out = run_script(
            "printf '%s' \"${FAASD_TEST_LEAK:-clean}\"",
            b"",
            Duration::from_secs(5),
            Limits::default(),
        )
        .await;
        assert_eq!(&out.stdout[..], b"clean");
    }

    #[tokio::test]
    async fn nonzero_exit_fails_with_status() {
        let out = run_script(
            "echo bad >&2; exit 3",
            b"",
            Duration::from_secs(5),
            Limits::default(),
        )
        .await;
        assert_eq!(out.failure, Some(FailureReason::ExitStatus));
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(&out.stderr[..], b"bad\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survivor");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let out = run_script(&script, b"", Duration::from_millis(200), Limits::default()).await;
        assert_eq!(out.failure, Some(FailureReason::Timeout));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a background child outlived the timeout");
    }

    #[tokio::test]
    async fn stderr_is_bounded_with_a_marker() {
        let limits = Limits {
            stdout_bytes: 1 << 20,
            stderr_bytes: 100,
        };
        let out = run_script(
            "head -c 1000 /dev/zero >&2",
            b"",
            Duration::from_secs(5),
            limits,
        )
        .await;
        assert_eq!(out.failure, None);
        assert!(out.stderr.starts_with(&[0u8; 100]));
        let tail = String::from_utf8_lossy(&out.stderr[100..]).to_string();
        assert!(
            tail.contains("stderr truncated, 900 more bytes dropped"),
            "{tail}"
        );
    }

    #[tokio::test]
    async fn oversized_stdout_fails() {
        let limits = Limits {
            stdout_bytes: 10,
            stderr_bytes: 100,
        };
        let out = run_script(
            "head -c 1000 /dev/zero",
            b"",
            Duration::from_secs(5),
            limits,
        )
        .await;
        assert_eq!(out.failure, Some(FailureReason::OutputTooLarge));
    }

    #[tokio::test]
    async fn working_directory_is_fresh_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("script.sh");
        std::fs::write(&program, "ls -A; pwd").expect("write script");
        let root = dir.path().join("work");
        std::fs::create_dir(&root).expect("mkdir");
        let out = run(Call {
            argv: &shell(&program),
            env: &[],
            payload: Bytes::new(),
            timeout: Duration::from_secs(5),
            work_root: &root,
            limits: Limits::default(),
        })
        .await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.trim().starts_with(root.to_str().expect("utf8")),
            "{text}"
        );
        assert_eq!(std::fs::read_dir(&root).expect("read").count(), 0);
    }

    #[tokio::test]
    async fn missing_program_is_spawn_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run(Call {
            argv: &[dir.path().join("nope").into()],
            env: &[],
            payload: Bytes::new(),
            timeout: Duration::from_secs(5),
            work_root: dir.path(),
            limits: Limits::default(),
        })
        .await;
        assert_eq!(out.failure, Some(FailureReason::SpawnFailed));
        assert!(out.message.unwrap_or_default().contains("nope"));
    }
}
