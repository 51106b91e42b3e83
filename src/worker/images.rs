//! The `oci` functions' images, unpacked once per image: each bundle is unpacked (on a blocking
//! thread) into a root under the code cache's `images/` directory, named by the bundle's hash
//! (never by the image's config digest alone, which a hostile archive can copy). Calls of one bundle wait for one unpack instead of each making its own.
//!
//! An unpacked root counts in the code cache's size with the bundle it came from
//! ([`CodeCache::attach`]) and goes when that bundle is evicted, which it never is while an
//! executor holds it; a root no cached bundle counts is removed when the worker starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::cache::{CodeCache, discard_dir};
use crate::oci;
use crate::proto::CodeHash;

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be read or unpacked.
    #[error("cannot unpack the function's image: {0}")]
    Unpack(#[from] oci::Error),
    /// The blocking task unpacking it did not finish (it panicked or was cancelled).
    #[error("the image's unpack did not finish: {reason}")]
    UnpackTask {
        /// What the runtime said.
        reason: String,
    },
}

/// The unpacked images of one worker.
#[derive(Clone)]
pub struct Images {
    dir: PathBuf,
    cache: CodeCache,
    limits: oci::Limits,
    /// One lock per bundle, held while it is unpacked (or found unpacked).
    turns: Arc<Mutex<HashMap<CodeHash, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Images {
    /// Images unpacked under the code cache's `images/`, each within `limits`; roots left
    /// half-built there over an hour ago (by a worker killed mid-unpack), and roots no cached
    /// bundle counts, are removed.
    pub fn new(cache: &CodeCache, limits: oci::Limits) -> Images {
        let dir = cache.dir().join("images");
        let removed = oci::remove_unfinished(&dir, std::time::Duration::from_secs(3600));
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "removed half-unpacked images");
        }
        remove_orphans(&dir, &cache.attached_dirs());
        Images {
            dir,
            cache: cache.clone(),
            limits,
            turns: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The unpacked root of the bundle `code` (whose hash is `hash`), unpacked first if need be.
    pub async fn rootfs(&self, hash: CodeHash, code: &Path) -> Result<oci::Rootfs, Error> {
        let turn = {
            let mut turns = self.turns.lock().expect("image locks poisoned");
            turns.entry(hash).or_default().clone()
        };
        let result = {
            let _turn = turn.lock().await;
            self.unpack(hash, code).await
        };
        // The last caller of this bundle for now drops its lock (the map would keep one per
        // bundle ever run otherwise); callers take the map's lock to join one, so the count is
        // exact.
        let mut turns = self.turns.lock().expect("image locks poisoned");
        if Arc::strong_count(&turn) <= 2 {
            turns.remove(&hash);
        }
        result
    }

    /// [`Images::rootfs`] under the bundle's lock: unpacked if need be, and counted in the cache.
    async fn unpack(&self, hash: CodeHash, code: &Path) -> Result<oci::Rootfs, Error> {
        let (code, dir, limits) = (code.to_owned(), self.dir.clone(), self.limits);
        let counted = self.cache.has_attached(&hash);
        let (rootfs, size) = tokio::task::spawn_blocking(move || {
            let rootfs = oci::ensure_rootfs(&code, &crate::proto::hex(&hash), &dir, limits)?;
            let size = (!counted).then(|| tree_bytes(&rootfs.path));
            Ok::<_, oci::Error>((rootfs, size))
        })
        .await
        .map_err(|e| Error::UnpackTask {
            reason: e.to_string(),
        })??;
        if let (Some(bytes), Some(root)) = (size, rootfs.path.parent()) {
            self.cache.attach(&hash, root.to_owned(), bytes);
        }
        Ok(rootfs)
    }
}

/// The bytes of the files under `dir` (symbolic links not followed). Blocking.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => tree_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Removes the unpacked roots under `dir` that are not among `counted` (their bundles left the
/// cache while the worker was stopped, or an older worker unpacked them without counting them).
fn remove_orphans(dir: &Path, counted: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let building = name.to_string_lossy().starts_with('.');
        if !building && !counted.contains(&entry.path()) {
            tracing::info!(root = %entry.path().display(), "removing an unpacked image no cached bundle counts");
            discard_dir(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_no_cached_bundle_counts_is_removed_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CodeCache::new(dir.path().join("code"), 1 << 20).expect("cache");
        let orphan = cache.dir().join("images").join("0123abcd");
        std::fs::create_dir_all(orphan.join("rootfs/bin")).expect("mkdir");
        std::fs::write(orphan.join("rootfs/bin/tool"), b"x").expect("write");
        let _images = Images::new(&cache, oci::Limits::default());
        assert!(!orphan.exists(), "an uncounted root stayed");
    }
}
