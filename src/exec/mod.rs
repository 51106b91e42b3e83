//! Executors: running one call of a function in a fresh process and capturing what it did.
//!
//! A call runs in a new temporary working directory (removed afterwards), in its own session and
//! process group, with the payload on stdin. stdout is the result (bounded by the result limit),
//! stderr is captured up to [`Limits::stderr_bytes`] with a truncation marker, and the whole
//! process group is killed when the call ends or times out.

mod pool;
mod runtimes;
mod spawn;
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
use crate::sandbox::{shim as sandbox, sys};
pub use pool::{Pool, WarmCall};
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
        },
    }
}

async fn run_inner(call: &Call<'_>, started: Instant) -> Result<Outcome, Error> {
    let workdir = tempfile::Builder::new()
        .prefix("call-")
        .tempdir_in(call.work_root)
        .map_err(|source| Error::Workdir {
            root: call.work_root.to_owned(),
            source,
        })?;
    let mut child = spawn::spawn(&spawn::SpawnSpec {
        argv: call.argv,
        workdir: workdir.path(),
        env: call.env,
    })?;
    let stdin = child
        .stdin
        .take()
        .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok());
    let stdout = child
        .stdout
        .take()
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
    let stderr = child
        .stderr
        .take()
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());

    let payload = call.payload.clone();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A function that exits without reading its input closes the pipe: not an error.
            let _ = stdin.write_all(&payload).await;
        }
    };
    let stdout = capture(stdout, call.limits.stdout_bytes);
    let stderr = capture(stderr, call.limits.stderr_bytes);

    let timeout = call.timeout;
    let (reaped, reaped_rx) = tokio::sync::oneshot::channel::<()>();
    let main = async {
        let waited = async {
            let (_, exited) = tokio::join!(feed, child.exited());
            exited
        };
        let timed_out = tokio::time::timeout(timeout, waited).await.is_err();
        // Whatever the outcome, nothing of the call's process group may outlive it; this also
        // ends background children that would hold the output pipes open. The leader is not
        // reaped yet, so its pid still names this group.
        child.kill_group();
        // Reap only once the kernel says it is gone, so the blocking waitpid never waits.
        let _ = child.exited().await;
        let status = child.reap().ok();
        let _ = reaped.send(());
        (status, timed_out)
    };
    // A descendant that left the process group can hold the pipes open: once the group is
    // gone, the output gets a short grace and is then abandoned.
    let outputs = async {
        tokio::select! {
            both = async { tokio::join!(stdout, stderr) } => Some(both),
            () = async {
                let _ = reaped_rx.await;
                tokio::time::sleep(OUTPUT_GRACE).await;
            } => None,
        }
    };
    let ((status, timed_out), outputs) = tokio::join!(main, outputs);
    let held_open = outputs.is_none();
    let ((out, out_dropped), (err, err_dropped)) = outputs.unwrap_or_default();
    let run_us = started.elapsed().as_micros() as u64;
    drop(workdir);

    let mut stderr = err;
    if err_dropped > 0 {
        stderr.extend_from_slice(
            format!("\n[faasd: stderr truncated, {err_dropped} more bytes dropped]\n").as_bytes(),
        );
    }
    let (exit_code, signal) = decode_status(status);
    // The sandbox's memory limit, read (and its cgroups removed) now the call's processes are gone.
    let out_of_memory = sandbox::is_wrapped(call.argv) && child.out_of_memory();
    // The sandbox shim's own failure, before the function ever ran.
    let sandbox_failed = exit_code == Some(sandbox::SETUP_FAILED)
        && stderr.starts_with(sandbox::ERROR_PREFIX.as_bytes());
    let (failure, message) = if out_of_memory {
        (
            Some(FailureReason::OutOfMemory),
            Some("killed by the memory limit".to_string()),
        )
    } else if sandbox_failed {
        (
            Some(FailureReason::SpawnFailed),
            Some(String::from_utf8_lossy(&stderr).trim().to_string()),
        )
    } else if held_open {
        (
            Some(FailureReason::OutputHeldOpen),
            Some("a process that left the call's process group kept its output open".into()),
        )
    } else if timed_out {
        (
            Some(FailureReason::Timeout),
            Some(format!(
                "timed out after {}",
                humantime::format_duration(call.timeout)
            )),
        )
    } else if out_dropped > 0 {
        (
            Some(FailureReason::OutputTooLarge),
            Some(format!(
                "stdout exceeded the {} byte result limit",
                call.limits.stdout_bytes
            )),
        )
    } else if let Some(sig) = signal {
        (
            Some(FailureReason::Signal),
            Some(format!("killed by signal {}", signal_name(sig))),
        )
    } else if exit_code != Some(0) {
        let code = exit_code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
        (
            Some(FailureReason::ExitStatus),
            Some(format!("exited with status {code}")),
        )
    } else {
        (None, None)
    };
    Ok(Outcome {
        failure,
        exit_code,
        signal,
        message,
        stdout: if out_dropped > 0 {
            Bytes::new()
        } else {
            Bytes::from(out)
        },
        stderr: Bytes::from(stderr),
        run_us,
        cold_start: true,
        init_us: 0,
    })
}

fn decode_status(status: Option<ExitStatus>) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => (s.code(), s.signal()),
        None => (None, None),
    }
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_string())
}

/// Reads a stream to its end, keeping at most `limit` bytes; returns what was kept and how many
/// bytes were dropped.
async fn capture<R: AsyncRead + Unpin>(stream: Option<R>, limit: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let Some(mut stream) = stream else {
        return (kept, dropped);
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
        }
    }
    (kept, dropped)
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
