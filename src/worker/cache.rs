//! The worker's code cache: bundles fetched from the server by content hash, kept as files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{CodeHash, Frame, hex};

type Fetch = oneshot::Sender<Result<PathBuf, String>>;

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
    ) -> Result<PathBuf, String> {
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
                        return Err("the connection to the server closed".into());
                    }
                    rx
                }
            }
        };
        rx.await
            .map_err(|_| "the connection closed while fetching code".to_string())?
    }

    fn path_of(&self, hash: &CodeHash) -> PathBuf {
        self.inner.dir.join(hex(hash.as_slice()))
    }

    /// Stores a bundle the server sent, after checking it matches its hash, and wakes the
    /// calls waiting for it.
    pub async fn fill(&self, hash: CodeHash, found: bool, bytes: Bytes) {
        let result = if !found {
            Err(format!(
                "the server has no code with hash {}",
                hex(hash.as_slice())
            ))
        } else if Sha256::digest(&bytes).as_slice() != hash {
            Err(format!(
                "code received for {} does not match its hash",
                hex(hash.as_slice())
            ))
        } else {
            let path = self.path_of(&hash);
            let dir = self.inner.dir.clone();
            tokio::task::spawn_blocking(move || {
                write_executable(&dir, &path, &bytes).map(|()| path)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("cannot write code to the cache: {e}")))
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
