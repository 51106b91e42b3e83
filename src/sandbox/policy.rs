//! The sandbox a worker applies to its executors ([`Sandbox`], the layers negotiated for this
//! machine), the shim settings it gives each executor ([`Sandbox::config`]), and the probe that
//! tells whether it can be applied here ([`Sandbox::probe`]).

use std::path::PathBuf;
use std::time::Duration;

use super::shim;
use crate::proto::Isolation;

/// Why a sandbox cannot be applied here.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The shim could not be run at all.
    #[error("cannot run {}: {source}", faasd.display())]
    Run {
        /// The faasd binary.
        faasd: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The shim ran and failed: its account of the step that failed.
    #[error("{stderr}")]
    Refused {
        /// The shim's stderr, trimmed.
        stderr: String,
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
    pub fn probe(&self) -> Result<(), ProbeError> {
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
            .map_err(|source| ProbeError::Run {
                faasd: self.faasd.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ProbeError::Refused {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}
