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

    /// The directory the bundles are kept in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(bytes: &[u8]) -> CodeHash {
        Sha256::digest(bytes).into()
    }

    fn cache() -> (tempfile::TempDir, CodeCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CodeCache::new(dir.path().join("code")).expect("cache");
        (dir, cache)
    }

    /// Starts a `get` in the background and returns it with the frame it sent.
    async fn start_get(
        cache: &CodeCache,
        hash: CodeHash,
    ) -> (
        tokio::task::JoinHandle<Result<PathBuf, Error>>,
        mpsc::UnboundedReceiver<Frame>,
    ) {
        let (frames, mut sent) = mpsc::unbounded_channel();
        let getter = cache.clone();
        let get = tokio::spawn(async move { getter.get(hash, &frames).await });
        let frame = sent.recv().await.expect("a fetch");
        assert_eq!(frame, Frame::FetchCode { hash });
        (get, sent)
    }

    #[tokio::test]
    async fn fetched_code_is_written_and_then_served_without_fetching() {
        let (_dir, cache) = cache();
        let code = b"#!/bin/sh\necho hi\n";
        let hash = hash_of(code);
        let (get, _sent) = start_get(&cache, hash).await;
        cache.fill(hash, true, Bytes::from_static(code)).await;
        let path = get.await.expect("join").expect("code");
        assert_eq!(std::fs::read(&path).expect("read"), code);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        let (frames, mut sent) = mpsc::unbounded_channel();
        assert_eq!(cache.get(hash, &frames).await.expect("cached"), path);
        assert!(
            sent.try_recv().is_err(),
            "a cached bundle was fetched again"
        );
    }

    #[tokio::test]
    async fn a_bundle_left_on_disk_is_served_without_fetching() {
        let (dir, _) = cache();
        let code = b"exit 0\n";
        let hash = hash_of(code);
        let files = dir.path().join("code");
        std::fs::write(files.join(hex(&hash)), code).expect("write");
        let cache = CodeCache::new(files).expect("reopen");
        let (frames, mut sent) = mpsc::unbounded_channel();
        let path = cache.get(hash, &frames).await.expect("on disk");
        assert_eq!(std::fs::read(path).expect("read"), code);
        assert!(sent.try_recv().is_err(), "a bundle on disk was fetched");
    }

    #[tokio::test]
    async fn code_that_does_not_match_its_hash_is_refused() {
        let (_dir, cache) = cache();
        let hash = hash_of(b"the real code");
        let (get, _sent) = start_get(&cache, hash).await;
        cache
            .fill(hash, true, Bytes::from_static(b"tampered"))
            .await;
        let err = get.await.expect("join").expect_err("refused");
        assert!(matches!(err, Error::HashMismatch { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("code received for {} does not match its hash", hex(&hash))
        );
        assert!(!cache.path_of(&hash).exists(), "refused code was written");
        // Nothing is cached: the next call asks again.
        let (_get, _sent) = start_get(&cache, hash).await;
    }

    #[tokio::test]
    async fn unknown_code_is_reported() {
        let (_dir, cache) = cache();
        let hash = hash_of(b"gone");
        let (get, _sent) = start_get(&cache, hash).await;
        cache.fill(hash, false, Bytes::new()).await;
        let err = get.await.expect("join").expect_err("not found");
        assert_eq!(
            err.to_string(),
            format!("the server has no code with hash {}", hex(&hash))
        );
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_fetch() {
        let (_dir, cache) = cache();
        let code = b"shared";
        let hash = hash_of(code);
        let (first, mut sent) = start_get(&cache, hash).await;
        let (frames, _) = mpsc::unbounded_channel();
        let getter = cache.clone();
        let second = tokio::spawn(async move { getter.get(hash, &frames).await });
        // The second call has registered once the entry has two waiters.
        let mut registered = false;
        for _ in 0..500 {
            registered =
                matches!(cache.entries().get(&hash), Some(Entry::Fetching(w)) if w.len() == 2);
            if registered {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            registered,
            "the second call never waited on the first fetch"
        );
        cache.fill(hash, true, Bytes::from_static(code)).await;
        let first = first.await.expect("join").expect("first");
        let second = second.await.expect("join").expect("second");
        assert_eq!(first, second);
        assert!(sent.try_recv().is_err(), "fetched twice");
    }

    #[tokio::test]
    async fn a_closed_connection_fails_the_fetch() {
        let (_dir, cache) = cache();
        let hash = hash_of(b"x");
        let (frames, sent) = mpsc::unbounded_channel();
        drop(sent);
        let err = cache.get(hash, &frames).await.expect_err("closed");
        assert_eq!(err.to_string(), "the connection to the server closed");
        let (get, _sent) = start_get(&cache, hash).await;
        cache.abandon_fetches();
        let err = get.await.expect("join").expect_err("abandoned");
        assert_eq!(err.to_string(), "the connection closed while fetching code");
    }
}
