//! Isolation of executors. This file owns the `--sandbox` [`Mode`], the [`Settings`] a worker
//! starts with and their negotiation into a [`Sandbox`] (logging each layer), and the start of
//! the zygote. The files, each depending only on those listed before it:
//!
//! - `sys.rs`: the raw system calls, and [`sys::Error`], the one error of a failed call;
//! - `seccomp.rs`: the seccomp filter;
//! - `cgroup.rs`: the per-call memory and pids cgroups;
//! - `root.rs`: the private filesystem an executor sees (step 3 of the shim);
//! - `launch.rs`: the function's process, from init's `clone(CLONE_VM | CLONE_VFORK)` to its `execve`;
//! - `shim.rs`: the shim (`faasd __sandbox`) that applies every layer, then runs the function;
//! - `zygote/`: the zygote (`faasd __zygote`) that forks sandboxed executors, and the worker's
//!   handle on it;
//! - `process.rs`: a started executor ([`process::Child`]), by `posix_spawn` or the zygote;
//! - `policy.rs`: the negotiated [`Sandbox`] and the shim settings it gives each executor;
//! - `layers.rs`: which layers this machine can apply, each probed on top of the others.
//!
//! This module knows nothing of runtimes, the broker or HTTP: it is handed a command line and
//! the settings of one executor, and runs it isolated.

pub mod cgroup;
mod launch;
pub mod layers;
mod policy;
pub mod process;
mod root;
mod seccomp;
pub mod shim;
pub mod sys;
pub mod zygote;

use std::path::Path;

pub use policy::{ProbeError, Sandbox};

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
    #[error("cannot find the faasd binary")]
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
                layers::Availability::Active(note) if note.is_empty() => {
                    tracing::info!("sandbox layer active: {}", layer.name)
                }
                layers::Availability::Active(note) => {
                    tracing::info!("sandbox layer active: {} ({note})", layer.name)
                }
                layers::Availability::Unavailable(why) => {
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
