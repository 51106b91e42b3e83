//! How each runtime's executor is launched: its command line and the environment it adds, and
//! the Python interpreter and harness the `python` and `pickle` runtimes share.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use std::time::Duration;

use super::sandbox;
use crate::proto::{Isolation, Runtime};

/// The embedded Python harness (see `harness.py`).
const HARNESS: &str = include_str!("harness.py");

/// Where the sandbox shows the function's bundle.
const SANDBOX_BUNDLE: &str = sandbox::BUNDLE;

/// Where the sandbox shows the Python harness.
const SANDBOX_HARNESS: &str = "/faasd/harness.py";

/// Where the sandbox shows the `i`th `--python-path` directory.
fn sandbox_python_path(i: usize) -> PathBuf {
    PathBuf::from(format!("/faasd/python-path/{i}"))
}

/// The shell that runs `shell` functions.
const SHELL: &str = "/bin/sh";

/// How a worker isolates its executors.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The faasd binary, re-executed as the sandbox shim.
    pub faasd: PathBuf,
    /// The uid and gid functions run as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Size of each executor's writable tmpfs.
    pub tmpfs_bytes: u64,
    /// Memory limit of each call (0: no cgroups).
    pub memory_bytes: u64,
    /// New namespaces and a private filesystem for each executor.
    pub namespaces: bool,
    /// A network namespace of its own for each executor of a function without `--allow-net`.
    pub isolate_net: bool,
    /// Switch to `uid`/`gid` (off when the worker already runs unprivileged).
    pub drop_uid: bool,
}

impl Sandbox {
    /// The shim's settings for one executor.
    pub fn config(
        &self,
        timeout: Duration,
        read_only: Vec<(PathBuf, PathBuf)>,
        isolation: Isolation,
    ) -> sandbox::Config {
        // Without cgroups (memory_bytes 0) a function's own limit cannot apply either.
        let memory_bytes = match (self.memory_bytes, isolation.memory_bytes) {
            (0, _) => 0,
            (default, own) => own.unwrap_or(default),
        };
        sandbox::Config {
            allow_net: isolation.allow_net || !self.isolate_net,
            namespaces: self.namespaces,
            drop_uid: self.drop_uid,
            tmpfs_bytes: self.tmpfs_bytes,
            // A little over the timeout: the timeout itself is enforced by the worker.
            cpu_seconds: timeout.as_secs() + 2,
            max_files: 1024,
            max_processes: 1024,
            memory_bytes,
            uid: self.uid,
            gid: self.gid,
            read_only,
        }
    }

    /// Runs `/bin/true` in the sandbox: `Ok` when every layer could be applied here, else the
    /// shim's account of the step that failed.
    pub fn probe(&self) -> Result<(), String> {
        let argv = sandbox::wrap(
            &self.faasd,
            &self.config(Duration::from_secs(5), Vec::new(), Isolation::default()),
            vec!["/bin/true".into()],
        );
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.faasd.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// What a worker launches executors with.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// The Python interpreter's real path and its prefix, or why there is none.
    python: Result<(PathBuf, PathBuf), String>,
    /// Executors run in the sandbox when set.
    sandbox: Option<Sandbox>,
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
        sandbox: Option<Sandbox>,
    ) -> std::io::Result<Runtimes> {
        std::fs::create_dir_all(dir)?;
        let harness = dir.join("faasd_harness.py");
        std::fs::write(&harness, HARNESS)?;
        let python = resolve_python(python.unwrap_or(Path::new("python3")));
        match &python {
            Ok((path, _)) => tracing::info!(python = %path.display(), "python runtime ready"),
            Err(why) => tracing::warn!("python runtimes unavailable: {why}"),
        }
        let python_path = python_path
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        Ok(Runtimes {
            python,
            sandbox,
            python_path,
            harness,
        })
    }

    /// The command line that runs `bundle` under `runtime` (inside the sandbox when the worker
    /// has one; `timeout` sets its CPU limit).
    pub fn command(
        &self,
        runtime: Runtime,
        bundle: &Path,
        timeout: Duration,
        isolation: Isolation,
    ) -> Result<Vec<OsString>, String> {
        let Some(sandbox) = &self.sandbox else {
            return self.program(runtime, bundle, &self.harness);
        };
        if !sandbox.namespaces {
            // No private filesystem: the program sees the host's paths.
            let argv = self.program(runtime, bundle, &self.harness)?;
            return Ok(sandbox::wrap(
                &sandbox.faasd,
                &sandbox.config(timeout, Vec::new(), isolation),
                argv,
            ));
        }
        // Inside, the bundle and the harness sit at fixed paths; the interpreter's installation
        // at its own path (its location is how it finds its library).
        let mut read_only = vec![(bundle.to_owned(), PathBuf::from(SANDBOX_BUNDLE))];
        if let (Runtime::Python | Runtime::Pickle, Ok((_, prefix))) = (runtime, &self.python) {
            read_only.push((self.harness.clone(), PathBuf::from(SANDBOX_HARNESS)));
            read_only.push((prefix.clone(), prefix.clone()));
            for (i, dir) in self.python_path.iter().enumerate() {
                read_only.push((dir.clone(), sandbox_python_path(i)));
            }
        }
        let argv = self.program(
            runtime,
            Path::new(SANDBOX_BUNDLE),
            Path::new(SANDBOX_HARNESS),
        )?;
        Ok(sandbox::wrap(
            &sandbox.faasd,
            &sandbox.config(timeout, read_only, isolation),
            argv,
        ))
    }

    fn program(
        &self,
        runtime: Runtime,
        bundle: &Path,
        harness: &Path,
    ) -> Result<Vec<OsString>, String> {
        Ok(match runtime {
            Runtime::Shell => vec![SHELL.into(), bundle.into()],
            Runtime::Exec => vec![bundle.into()],
            Runtime::Python | Runtime::Pickle => {
                let (python, _) = self.python.as_ref().map_err(Clone::clone)?;
                let mode = if runtime == Runtime::Python {
                    "python"
                } else {
                    "pickle"
                };
                vec![
                    python.into(),
                    "-u".into(),
                    harness.into(),
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
                let dirs: Vec<PathBuf> = match &self.sandbox {
                    Some(sandbox) if sandbox.namespaces => (0..self.python_path.len())
                        .map(sandbox_python_path)
                        .collect(),
                    _ => self.python_path.clone(),
                };
                let joined = std::env::join_paths(&dirs)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                add("PYTHONPATH", joined);
            }
            add("PYTHONDONTWRITEBYTECODE", "1".into());
        }
        all
    }
}

/// Asks the interpreter for its own real path (`sys.executable`) and its installation prefix.
fn resolve_python(python: &Path) -> Result<(PathBuf, PathBuf), String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.base_prefix)",
        ])
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
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(path), Some(prefix)) = (lines.next(), lines.next()) else {
        return Err(format!("{} did not say where it lives", python.display()));
    };
    let path = PathBuf::from(path);
    let prefix = PathBuf::from(prefix);
    Ok((
        std::fs::canonicalize(&path).unwrap_or(path),
        std::fs::canonicalize(&prefix).unwrap_or(prefix),
    ))
}
