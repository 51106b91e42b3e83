//! How each runtime's executor is launched: its command line and the environment it adds, and
//! the Python interpreter and harness the `python` and `pickle` runtimes share.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::proto::Runtime;

/// The embedded Python harness (see `harness.py`).
const HARNESS: &str = include_str!("harness.py");

/// The shell that runs `shell` functions.
const SHELL: &str = "/bin/sh";

/// What a worker launches executors with.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// The Python interpreter's real path, or why there is none.
    python: Result<PathBuf, String>,
    /// Directories put on `PYTHONPATH` (to resolve functions pickled by reference).
    python_path: Vec<PathBuf>,
    /// Where the harness was written.
    harness: PathBuf,
}

impl Runtimes {
    /// Resolves the Python interpreter (`python3` on `PATH` unless `python` names one) to its
    /// real path once, so no call pays for a launcher script such as a pyenv shim, and writes
    /// the harness into `dir`.
    pub fn new(
        python: Option<&Path>,
        python_path: Vec<PathBuf>,
        dir: &Path,
    ) -> std::io::Result<Runtimes> {
        std::fs::create_dir_all(dir)?;
        let harness = dir.join("faasd_harness.py");
        std::fs::write(&harness, HARNESS)?;
        let python = resolve_python(python.unwrap_or(Path::new("python3")));
        match &python {
            Ok(path) => tracing::info!(python = %path.display(), "python runtime ready"),
            Err(why) => tracing::warn!("python runtimes unavailable: {why}"),
        }
        let python_path = python_path
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        Ok(Runtimes {
            python,
            python_path,
            harness,
        })
    }

    /// The command line that runs `bundle` under `runtime`.
    pub fn command(&self, runtime: Runtime, bundle: &Path) -> Result<Vec<OsString>, String> {
        Ok(match runtime {
            Runtime::Shell => vec![SHELL.into(), bundle.into()],
            Runtime::Exec => vec![bundle.into()],
            Runtime::Python | Runtime::Pickle => {
                let python = self.python.as_ref().map_err(Clone::clone)?;
                let mode = if runtime == Runtime::Python {
                    "python"
                } else {
                    "pickle"
                };
                vec![
                    python.into(),
                    "-u".into(),
                    self.harness.clone().into(),
                    mode.into(),
                    bundle.into(),
                ]
            }
        })
    }

    /// The function's environment plus what the runtime needs.
    pub fn env(&self, runtime: Runtime, env: &[(String, String)]) -> Vec<(String, String)> {
        let mut all = env.to_vec();
        if matches!(runtime, Runtime::Python | Runtime::Pickle) {
            let mut add = |k: &str, v: String| {
                if !all.iter().any(|(name, _)| name == k) {
                    all.push((k.to_string(), v));
                }
            };
            if !self.python_path.is_empty() {
                let joined = std::env::join_paths(&self.python_path)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                add("PYTHONPATH", joined);
            }
            add("PYTHONDONTWRITEBYTECODE", "1".into());
        }
        all
    }
}

/// Asks the interpreter for its own real path (`sys.executable`).
fn resolve_python(python: &Path) -> Result<PathBuf, String> {
    let out = std::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.as_os_str().is_empty() {
        return Err(format!("{} did not say where it lives", python.display()));
    }
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}
