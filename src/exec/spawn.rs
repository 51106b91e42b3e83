//! The one place that decides what an executor process gets before it runs the function's
//! code, so the sandbox can grow in one spot.
//!
//! The checklist, in order: new session and process group, default signals → stdio pipes →
//! fresh working directory → cleared environment plus the function's own variables → exec.
//! Which command line a runtime runs is decided by [`super::Runtimes::command`].
//! The system calls themselves are in [`crate::sandbox::sys`].

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Error;
use crate::sandbox::process::{self, Child};

/// The `PATH` every executor starts with (the host environment is never inherited).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What to start.
pub struct SpawnSpec<'a> {
    /// The command line; `argv[0]` is the program's path.
    pub argv: &'a [OsString],
    /// The working directory (fresh and empty).
    pub workdir: &'a Path,
    /// The function's environment variables (plus any the runtime adds).
    pub env: &'a [(String, String)],
}

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::BadArgument {
        what: format!("path {} contains a NUL byte", path.display()),
    })
}

fn c_string(text: String) -> Result<CString, Error> {
    CString::new(text).map_err(|e| Error::BadArgument {
        what: format!(
            "{:?} contains a NUL byte",
            String::from_utf8_lossy(&e.into_vec())
        ),
    })
}

/// The executor's whole environment: the function's variables, then `PATH`, `HOME` and
/// `TMPDIR` (the last two the working directory) unless the function sets them itself.
fn environment(spec: &SpawnSpec<'_>) -> Result<Vec<CString>, Error> {
    let workdir = spec.workdir.to_string_lossy();
    // The function's own variables win over the defaults.
    let mut envp = Vec::with_capacity(spec.env.len() + 3);
    for (k, v) in spec.env {
        envp.push(c_string(format!("{k}={v}"))?);
    }
    for (k, v) in [
        ("PATH", DEFAULT_PATH),
        ("HOME", &workdir),
        ("TMPDIR", &workdir),
    ] {
        if !spec.env.iter().any(|(name, _)| name == k) {
            envp.push(c_string(format!("{k}={v}"))?);
        }
    }
    Ok(envp)
}

/// Starts the executor with piped stdio in its own session and process group.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Child, Error> {
    let Some(program) = spec.argv.first().map(Path::new) else {
        return Err(Error::BadArgument {
            what: "an empty command line".into(),
        });
    };
    let c_program = c_path(program)?;
    let argv = spec
        .argv
        .iter()
        .map(|a| c_path(Path::new(a)))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = environment(spec)?;
    let cwd = c_path(spec.workdir)?;
    // A freshly written executable can be briefly busy (ETXTBSY) while another thread still
    // holds its write descriptor; that clears within microseconds.
    let mut tries = 0;
    loop {
        let zygote =
            crate::sandbox::zygote::get().filter(|_| crate::sandbox::shim::is_wrapped(spec.argv));
        let started = match zygote {
            Some(zygote) => process::spawn_in_zygote(zygote, &argv, &envp, &cwd),
            None => process::spawn(&c_program, &argv, &envp, &cwd),
        };
        match started {
            Ok(child) => return Ok(child),
            Err(e) if e.errno() == nix::errno::Errno::ETXTBSY && tries < 20 => {
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

/// Starts the executor like [`spawn`], on a blocking thread: a start waits its turn at the
/// sandbox's zygote (one at a time) and must never hold up the async threads, which carry
/// the worker's heartbeats and frames.
pub async fn spawn_off_runtime(
    argv: Vec<OsString>,
    workdir: PathBuf,
    env: Vec<(String, String)>,
) -> Result<Child, Error> {
    let program = PathBuf::from(argv.first().cloned().unwrap_or_default());
    let start = tokio::task::spawn_blocking(move || {
        spawn(&SpawnSpec {
            argv: &argv,
            workdir: &workdir,
            env: &env,
        })
    });
    start.await.map_err(|_| Error::Abandoned { program })?
}
