//! The `oci` functions' images, unpacked once per image: each bundle is unpacked (on a blocking
//! thread) into a root under the code cache's `images/` directory, named by the image's config
//! digest. Calls of one bundle wait for one unpack instead of each making its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    limits: oci::Limits,
    /// One lock per bundle, held while it is unpacked (or found unpacked).
    turns: Arc<Mutex<HashMap<CodeHash, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Images {
    /// Images unpacked under `dir`, each within `limits`; roots left half-built there over an
    /// hour ago (by a worker killed mid-unpack) are removed.
    pub fn new(dir: PathBuf, limits: oci::Limits) -> Images {
        let removed = oci::remove_unfinished(&dir, std::time::Duration::from_secs(3600));
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "removed half-unpacked images");
        }
        Images {
            dir,
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
        let _turn = turn.lock().await;
        let (code, dir, limits) = (code.to_owned(), self.dir.clone(), self.limits);
        tokio::task::spawn_blocking(move || oci::ensure_rootfs(&code, &dir, limits))
            .await
            .map_err(|e| Error::UnpackTask {
                reason: e.to_string(),
            })?
            .map_err(Error::from)
    }
}
