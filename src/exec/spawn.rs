//! The one place that builds an executor process: everything the child gets set up before it
//! runs the function's code happens here, so the sandbox can grow in one spot.
//!
//! The checklist, in order: new session and process group → cleared environment plus the
//! function's own variables → fresh working directory → stdin/stdout/stderr pipes → exec.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::Error;
use crate::proto::Runtime;

/// The `PATH` every executor starts with (the host environment is never inherited).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What to start.
pub struct SpawnSpec<'a> {
    /// How the code runs.
    pub runtime: Runtime,
    /// The cached code bundle.
    pub program: &'a Path,
    /// The working directory (fresh and empty).
    pub workdir: &'a Path,
    /// The function's environment variables.
    pub env: &'a [(String, String)],
}

/// Starts the executor with piped stdio in its own session and process group.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Child, Error> {
    let mut cmd = match spec.runtime {
        Runtime::Shell => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg(spec.program);
            cmd
        }
        Runtime::Exec => Command::new(spec.program),
    };
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", spec.workdir)
        .env("TMPDIR", spec.workdir)
        .envs(spec.env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
        .current_dir(spec.workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2), which
    // is async-signal-safe; it touches no memory shared with the parent's other threads.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let program = match spec.runtime {
        Runtime::Shell => Path::new("/bin/sh"),
        Runtime::Exec => spec.program,
    };
    // A freshly written executable can be briefly busy (ETXTBSY) while another thread's fork
    // still holds its write descriptor; that clears within microseconds.
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::yield_now();
            }
            Err(source) => {
                return Err(Error::Spawn {
                    program: program.to_owned(),
                    source,
                });
            }
        }
    }
}
