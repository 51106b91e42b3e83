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
            rootfs: None,
            workdir: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(memory_bytes: u64, isolate_net: bool) -> Sandbox {
        Sandbox {
            faasd: PathBuf::from("/usr/bin/faasd"),
            uid: 65534,
            gid: 65534,
            tmpfs_bytes: 64 << 20,
            memory_bytes,
            namespaces: true,
            isolate_net,
            drop_uid: true,
        }
    }

    fn isolation(memory_bytes: Option<u64>, allow_net: bool) -> Isolation {
        Isolation {
            memory_bytes,
            allow_net,
        }
    }

    fn config(sandbox: &Sandbox, isolation: Isolation) -> shim::Config {
        sandbox.config(Duration::from_secs(10), Vec::new(), isolation)
    }

    #[test]
    fn a_function_s_own_memory_limit_wins_over_the_worker_s() {
        let worker = sandbox(512 << 20, true);
        assert_eq!(
            config(&worker, isolation(None, false)).memory_bytes,
            512 << 20
        );
        assert_eq!(
            config(&worker, isolation(Some(64 << 20), false)).memory_bytes,
            64 << 20
        );
    }

    #[test]
    fn without_cgroups_no_memory_limit_applies_not_even_a_function_s_own() {
        let worker = sandbox(0, true);
        assert_eq!(
            config(&worker, isolation(Some(64 << 20), false)).memory_bytes,
            0
        );
        assert_eq!(config(&worker, isolation(None, false)).memory_bytes, 0);
    }

    #[test]
    fn the_network_is_shared_when_the_function_may_use_it_or_cannot_be_isolated() {
        let isolating = sandbox(0, true);
        assert!(!config(&isolating, isolation(None, false)).allow_net);
        assert!(config(&isolating, isolation(None, true)).allow_net);
        let not_isolating = sandbox(0, false);
        assert!(config(&not_isolating, isolation(None, false)).allow_net);
    }

    #[test]
    fn the_cpu_limit_is_a_little_over_the_timeout() {
        let c = config(&sandbox(0, true), isolation(None, false));
        assert_eq!(c.cpu_seconds, 12);
        assert_eq!((c.uid, c.gid, c.tmpfs_bytes), (65534, 65534, 64 << 20));
    }

    #[test]
    fn a_probe_says_whether_the_shim_could_run_or_why_it_refused() {
        let mut missing = sandbox(0, true);
        missing.faasd = PathBuf::from("/nonexistent/faasd");
        let run = missing.probe();
        assert!(matches!(run, Err(ProbeError::Run { .. })), "{run:?}");
        assert!(
            run.expect_err("no binary")
                .to_string()
                .contains("/nonexistent/faasd")
        );
        let mut refusing = sandbox(0, true);
        refusing.faasd = PathBuf::from("/bin/false");
        let refused = refusing.probe();
        assert!(
            matches!(refused, Err(ProbeError::Refused { .. })),
            "{refused:?}"
        );
    }
}
