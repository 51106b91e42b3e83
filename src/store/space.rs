//! Free space in the data directory: measured with `statvfs`, compared with the
//! `--min-free-space` threshold, warned about in the log, and kept for `/healthz`; and which
//! I/O errors mean it ran out ([`out_of_space`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Error;

/// The default threshold's byte part: 1 GiB (the default is the smaller of this and
/// [`DEFAULT_MIN_FREE_PERCENT`] of the filesystem).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
/// The default threshold's share of the filesystem, in percent.
pub const DEFAULT_MIN_FREE_PERCENT: u64 = 5;
/// How often the writer thread measures free space once a watch is set.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// One measurement of the data directory's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    /// The filesystem's size.
    pub total_bytes: u64,
    /// The threshold under which `serve` warns.
    pub min_free_bytes: u64,
    /// Whether `free_bytes` is under `min_free_bytes`.
    pub low: bool,
}

/// Bytes available to unprivileged writers in the filesystem holding `dir`, and its size.
pub(super) fn measure(dir: &Path) -> Result<(u64, u64), Error> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|source| Error::Statvfs {
        path: dir.to_owned(),
        source,
    })?;
    let unit = stat.fragment_size() as u64;
    Ok((
        (stat.blocks_available() as u64).saturating_mul(unit),
        (stat.blocks() as u64).saturating_mul(unit),
    ))
}

/// Whether an I/O error says the filesystem (or the user's quota) is out of space: `ENOSPC` or
/// `EDQUOT`.
pub(super) fn out_of_space(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT)
    )
}

/// The threshold for a filesystem of `total_bytes`: `min_free_bytes` when set, else the smaller
/// of 1 GiB and 5% of the filesystem.
pub fn threshold(min_free_bytes: Option<u64>, total_bytes: u64) -> u64 {
    min_free_bytes
        .unwrap_or_else(|| DEFAULT_MIN_FREE_BYTES.min(total_bytes / 100 * DEFAULT_MIN_FREE_PERCENT))
}

/// The free-space watch the writer thread runs every [`CHECK_EVERY`].
#[derive(Debug)]
pub(super) struct Watch {
    dir: PathBuf,
    min_free_bytes: Option<u64>,
    next_check: Instant,
    /// The last measurement (`None` until the first succeeds).
    pub last: Option<Space>,
}

impl Watch {
    /// A watch of `dir` against `min_free_bytes` (`None`: the default threshold).
    pub fn new(dir: PathBuf, min_free_bytes: Option<u64>) -> Watch {
        Watch {
            dir,
            min_free_bytes,
            next_check: Instant::now(),
            last: None,
        }
    }

    /// When the next measurement is due.
    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    /// Makes the next [`Watch::check_if_due`] measure at once.
    pub fn due_now(&mut self) {
        self.next_check = Instant::now();
    }

    /// Measures now if a measurement is due, logging a warning when free space falls under the
    /// threshold (and at the first measurement if it starts under it) and a note when it is back.
    pub fn check_if_due(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + CHECK_EVERY;
        let (free_bytes, total_bytes) = match measure(&self.dir) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure free space");
                return;
            }
        };
        let min_free_bytes = threshold(self.min_free_bytes, total_bytes);
        let space = Space {
            free_bytes,
            total_bytes,
            min_free_bytes,
            low: free_bytes < min_free_bytes,
        };
        let was_low = self.last.is_some_and(|s| s.low);
        if space.low && !was_low {
            tracing::warn!(
                data_dir = %self.dir.display(),
                free_bytes,
                min_free_bytes,
                "{}",
                low_space_message(&self.dir, &space)
            );
        } else if !space.low && was_low {
            tracing::info!(data_dir = %self.dir.display(), free_bytes, "free space in the data directory is back over the threshold");
        }
        self.last = Some(space);
    }
}

/// The warning for low free space, as the log and `/healthz` give it.
pub fn low_space_message(dir: &Path, space: &Space) -> String {
    format!(
        "free space in the data directory {} is {} bytes, under the {} byte minimum (--min-free-space)",
        dir.display(),
        space.free_bytes,
        space.min_free_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_threshold_is_the_smaller_of_a_gibibyte_and_five_percent() {
        assert_eq!(threshold(None, 100 << 30), 1 << 30);
        assert_eq!(threshold(None, 1000 << 20), 50 << 20);
        assert_eq!(threshold(Some(7), 100 << 30), 7);
    }

    #[test]
    fn a_watch_measures_the_directory_and_flags_space_under_its_threshold() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut watch = Watch::new(dir.path().to_owned(), Some(u64::MAX));
        watch.check_if_due(Instant::now());
        let space = watch.last.expect("measured");
        assert!(space.total_bytes > 0 && space.low);
        let mut roomy = Watch::new(dir.path().to_owned(), Some(0));
        roomy.check_if_due(Instant::now());
        assert!(!roomy.last.expect("measured").low);
    }

    #[test]
    fn out_of_space_is_enospc_or_edquot_only() {
        let os = std::io::Error::from_raw_os_error;
        assert!(out_of_space(&os(nix::libc::ENOSPC)));
        assert!(out_of_space(&os(nix::libc::EDQUOT)));
        assert!(!out_of_space(&os(nix::libc::EIO)));
        assert!(!out_of_space(&std::io::Error::other("no space")));
    }
}
