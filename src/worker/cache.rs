//! The worker's code cache: bundles fetched from the server by content hash, kept as files.
//!
//! A bundle is asked for once (a `FetchCode` frame) however many calls wait for it; what the
//! server sends back is checked against its hash before it is written and handed out. A bundle
//! already on disk (from an earlier run of the worker) is served without asking.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{CodeHash, Frame, hex};

/// Why a bundle could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The session's connection closed before the bundle could be asked for.
    #[error("the connection to the server closed")]
    ConnectionClosed,
    /// The connection closed while the bundle was being fetched.
    #[error("the connection closed while fetching code")]
    FetchAbandoned,
    /// The server has no bundle with this hash.
    #[error("the server has no code with hash {}", hex(hash.as_slice()))]
    CodeNotFound {
        /// The bundle asked for.
        hash: CodeHash,
    },
    /// The bytes the server sent do not hash to what was asked for.
    #[error("code received for {} does not match its hash", hex(hash.as_slice()))]
    HashMismatch {
        /// The bundle asked for.
        hash: CodeHash,
    },
    /// The bundle could not be written to the cache directory.
    #[error("cannot write code to the cache: {source}")]
    WriteCode {
        /// Where it was to go.
        path: PathBuf,
        /// Why (shared: every call waiting for the bundle gets this error).
        source: Arc<std::io::Error>,
    },
    /// The blocking task writing the bundle did not finish (it panicked or was cancelled).
    #[error("{reason}")]
    WriteTask {
        /// What the runtime said.
        reason: String,
    },
}

/// A call waiting for a bundle being fetched.
type Fetch = oneshot::Sender<Result<PathBuf, Error>>;

enum Entry {
    Ready(PathBuf),
    Fetching(Vec<Fetch>),
}

/// Code bundles on disk, keyed by their SHA-256, shared by every session of a worker.
#[derive(Clone)]
pub struct CodeCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    dir: PathBuf,
    entries: Mutex<HashMap<CodeHash, Entry>>,
}

impl CodeCache {
    /// A cache that keeps its files in `dir` (created if missing).
    pub fn new(dir: PathBuf) -> std::io::Result<CodeCache> {
        std::fs::create_dir_all(&dir)?;
        Ok(CodeCache {
            inner: Arc::new(CacheInner {
                dir,
                entries: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<CodeHash, Entry>> {
        self.inner
            .entries
            .lock()
            .expect("code cache lock poisoned by an earlier panic")
    }

    /// The path of a bundle, asking the server for it over `frames` if it is not cached yet.
    pub async fn get(
        &self,
        hash: CodeHash,
        frames: &mpsc::UnboundedSender<Frame>,
    ) -> Result<PathBuf, Error> {
        let rx = {
            let mut entries = self.entries();
            match entries.get_mut(&hash) {
                Some(Entry::Ready(path)) => return Ok(path.clone()),
                Some(Entry::Fetching(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    rx
                }
                None => {
                    let path = self.path_of(&hash);
                    if path.exists() {
                        entries.insert(hash, Entry::Ready(path.clone()));
                        return Ok(path);
                    }
                    let (tx, rx) = oneshot::channel();
                    entries.insert(hash, Entry::Fetching(vec![tx]));
                    if frames.send(Frame::FetchCode { hash }).is_err() {
                        entries.remove(&hash);
                        return Err(Error::ConnectionClosed);
                    }
                    rx
                }
            }
        };
        rx.await.map_err(|_| Error::FetchAbandoned)?
    }

    fn path_of(&self, hash: &CodeHash) -> PathBuf {
        self.inner.dir.join(hex(hash.as_slice()))
    }

    /// Stores a bundle the server sent, after checking it matches its hash, and wakes the
    /// calls waiting for it.
    pub async fn fill(&self, hash: CodeHash, found: bool, bytes: Bytes) {
        let result = if !found {
            Err(Error::CodeNotFound { hash })
        } else if Sha256::digest(&bytes).as_slice() != hash {
            Err(Error::HashMismatch { hash })
        } else {
            self.write(hash, bytes).await
        };
        let waiters = {
            let mut entries = self.entries();
            let waiters = match entries.remove(&hash) {
                Some(Entry::Fetching(w)) => w,
                Some(ready) => {
                    entries.insert(hash, ready);
                    Vec::new()
                }
                None => Vec::new(),
            };
            if let Ok(path) = &result {
                entries.insert(hash, Entry::Ready(path.clone()));
            }
            waiters
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    /// Writes a checked bundle into the cache directory, off the async threads.
    async fn write(&self, hash: CodeHash, bytes: Bytes) -> Result<PathBuf, Error> {
        let path = self.path_of(&hash);
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || {
            write_executable(&dir, &path, &bytes)
                .map(|()| path.clone())
                .map_err(|source| Error::WriteCode {
                    path,
                    source: Arc::new(source),
                })
        })
        .await
        .map_err(|e| Error::WriteTask {
            reason: e.to_string(),
        })?
    }

    /// Forgets fetches in flight (their connection ended); their callers get an error.
    pub fn abandon_fetches(&self) {
        self.entries()
            .retain(|_, entry| matches!(entry, Entry::Ready(_)));
    }
}

/// Writes a file under a temporary name and renames it into place, executable.
fn write_executable(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
