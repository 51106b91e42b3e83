//! Isolation of executors: the [`Sandbox`] settings a worker runs with and the negotiation of
//! which layers this machine can apply ([`layers`]), the raw system calls ([`sys`]), the shim
//! that applies every layer before the function runs ([`shim`]), cgroups ([`cgroup`]), the
//! seccomp filter ([`seccomp`]), and the zygote that forks sandboxed executors ([`zygote`]).
//!
//! This module knows nothing of runtimes, the broker or HTTP: it is handed a command line and
//! the settings of one executor, and runs it isolated.

pub mod cgroup;
pub mod layers;
mod seccomp;
pub mod shim;
pub mod sys;
pub mod zygote;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::Isolation;

/// How executors are isolated, as the `--sandbox` flag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No sandbox: for trusted code only.
    None,
    /// Every layer this machine allows; says at start which could not be applied and why.
    Auto,
    /// Every layer, or refuse to start.
    Strict,
}

/// Why a sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The faasd binary, which the shim and the zygote re-execute, cannot be found.
    #[error("cannot find the faasd binary: {source}")]
    CurrentExe {
        /// The underlying error.
        source: std::io::Error,
    },
    /// `--sandbox strict` on a machine that cannot apply every layer.
    #[error("--sandbox strict: these layers cannot be applied here: {}", missing.join("; "))]
    StrictUnavailable {
        /// Each missing layer, with the reason.
        missing: Vec<String>,
    },
}

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
    ) -> shim::Config {
        // Without cgroups (memory_bytes 0) a function's own limit cannot apply either.
        let memory_bytes = match (self.memory_bytes, isolation.memory_bytes) {
            (0, _) => 0,
            (default, own) => own.unwrap_or(default),
        };
        shim::Config {
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
        let argv = shim::wrap(
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

/// The settings of a sandbox before negotiation: every layer wanted.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The uid and gid functions run as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Size of each executor's writable tmpfs.
    pub tmpfs_bytes: u64,
    /// Memory limit of each call.
    pub memory_bytes: u64,
}

impl Settings {
    /// The sandbox with every layer on (not yet probed).
    pub fn wanted(&self) -> Result<Sandbox, Error> {
        Ok(Sandbox {
            faasd: std::env::current_exe().map_err(|source| Error::CurrentExe { source })?,
            uid: self.uid,
            gid: self.gid,
            tmpfs_bytes: self.tmpfs_bytes,
            memory_bytes: self.memory_bytes,
            namespaces: true,
            isolate_net: true,
            drop_uid: true,
        })
    }

    /// The sandbox to use, after finding which layers apply here (each logged, with the reason
    /// for any that cannot): `None` for [`Mode::None`], or for [`Mode::Auto`] when not even the
    /// base layers apply; [`Mode::Strict`] refuses without every layer.
    pub fn negotiate(&self, mode: Mode) -> Result<Option<Sandbox>, Error> {
        if mode == Mode::None {
            tracing::warn!(
                "sandbox: off (--sandbox none): functions run with the worker's privileges"
            );
            return Ok(None);
        }
        let (sandbox, layers) = layers::negotiate(&self.wanted()?);
        let mut missing = Vec::new();
        for layer in &layers {
            match &layer.state {
                layers::State::Active(note) if note.is_empty() => {
                    tracing::info!("sandbox layer active: {}", layer.name)
                }
                layers::State::Active(note) => {
                    tracing::info!("sandbox layer active: {} ({note})", layer.name)
                }
                layers::State::Unavailable(why) => {
                    tracing::warn!("sandbox layer unavailable: {}: {why}", layer.name);
                    missing.push(format!("{} ({why})", layer.name));
                }
            }
        }
        if mode == Mode::Strict && !missing.is_empty() {
            return Err(Error::StrictUnavailable { missing });
        }
        let Some(sandbox) = sandbox else {
            tracing::warn!("sandbox: off, not even its base layers can be applied here");
            return Ok(None);
        };
        if sandbox.memory_bytes > 0 {
            cgroup::sweep();
        }
        Ok(Some(sandbox))
    }
}

/// Starts this process's zygote (template roots under `dir`) and logs how it went; without one,
/// each executor starts through an `exec` of the shim.
pub fn start_zygote(sandbox: &Sandbox, dir: &Path) {
    match zygote::start(&sandbox.faasd, dir) {
        Ok(started) if started.fast_attach => tracing::info!(
            "sandbox zygote ready: executors are forked from it, network namespaces pooled, cgroup moves fast (favordynmods)"
        ),
        Ok(started) => tracing::info!(
            "sandbox zygote ready: executors are forked from it, network namespaces pooled; cgroup moves stay slow ({})",
            started.note
        ),
        Err(why) => tracing::warn!(
            "sandbox zygote unavailable ({why}): each executor starts through an exec of the shim"
        ),
    }
}
