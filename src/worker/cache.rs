//! The worker's code cache: bundles fetched from the server by content hash, kept as files,
//! bounded by size.
//!
//! A bundle is asked for once however many calls wait for it, in chunks of
//! [`CODE_CHUNK_BYTES`] (`FetchCodeChunk`, one in flight per bundle): each chunk is appended
//! to a temporary file while it is hashed, and the whole is checked against its hash before it
//! is renamed into place and handed out. A bundle already on disk (from an earlier run of the
//! worker) is served without asking.
//!
//! The cache holds at most `max_bytes` (`--code-cache-size`): past that, the least recently
//! used bundles that nothing holds a [`CodeRef`] on (no call starting from it, no warm pool
//! keeping executors of it) are removed. A bundle in use is never removed, so the cache may
//! pass its bound while every bundle in it is in use.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{CODE_CHUNK_BYTES, CodeHash, Frame, hex};

/// The default bound of the code cache (`--code-cache-size`): 4 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

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
    /// A chunk the server sent does not continue the bundle (wrong offset or size).
    #[error("a chunk of code {} came out of order: {detail}", hex(hash.as_slice()))]
    ChunkOutOfOrder {
        /// The bundle asked for.
        hash: CodeHash,
        /// What was wrong.
        detail: String,
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

/// A bundle in the cache, held: while any clone lives, the bundle is not evicted.
#[derive(Debug, Clone)]
pub struct CodeRef {
    path: Arc<PathBuf>,
}

impl CodeRef {
    /// The bundle's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for CodeRef {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

/// A call waiting for a bundle being fetched.
type Fetch = oneshot::Sender<Result<CodeRef, Error>>;

/// A bundle on disk.
struct Bundle {
    held: CodeRef,
    bytes: u64,
    /// When it was last handed out, on the cache's clock.
    used: u64,
    /// What was made from it (an `oci` bundle's unpacked image), counted with it.
    derived: Option<Derived>,
}

/// A directory made from a bundle (see [`CodeCache::attach`]).
#[derive(Debug, Clone, PartialEq)]
struct Derived {
    /// Where it is.
    dir: PathBuf,
    /// What it holds, counted in the cache's size.
    bytes: u64,
}

/// The suffix of the file beside a bundle that names what was made from it (its path relative
/// to the cache, then its size), so a reopened cache counts and evicts it too.
const DERIVED_SUFFIX: &str = ".derived";

/// The prefix a derived directory is renamed to before it is removed (in the background): the
/// prefix of a half-built image root, which a restarted worker removes in turn.
const DISCARDED_PREFIX: &str = ".unpack-discarded-";

impl Bundle {
    /// The bytes it counts for: its file and what was made from it.
    fn total_bytes(&self) -> u64 {
        self.bytes + self.derived.as_ref().map_or(0, |d| d.bytes)
    }
}

impl Bundle {
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.held.path) > 1
    }
}

/// A bundle being fetched: what has arrived so far.
struct Partial {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    received: u64,
}

enum Entry {
    Ready(Bundle),
    Fetching {
        waiters: Vec<Fetch>,
        /// `None` until the first chunk, and while a chunk is being written.
        partial: Option<Box<Partial>>,
    },
}

/// Code bundles on disk, keyed by their SHA-256, shared by every session of a worker.
#[derive(Clone)]
pub struct CodeCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    dir: PathBuf,
    max_bytes: u64,
    clock: AtomicU64,
    entries: Mutex<HashMap<CodeHash, Entry>>,
}

/// A chunk of a bundle, as a `CodeChunk` frame carries it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The bundle.
    pub hash: CodeHash,
    /// Where the chunk starts.
    pub offset: u64,
    /// The whole bundle's size.
    pub total_bytes: u64,
    /// The chunk's bytes.
    pub bytes: Bytes,
    /// Whether the server has the bundle.
    pub found: bool,
}

/// What appending a chunk left.
enum Step {
    /// More to fetch, from the partial's `received`.
    More(Box<Partial>),
    /// The bundle is whole, checked and in place, this many bytes long.
    Whole(u64),
}

/// The frame asking for a bundle's chunk at `offset`.
fn ask(hash: CodeHash, offset: u64) -> Frame {
    Frame::FetchCodeChunk {
        hash,
        offset,
        max_len: CODE_CHUNK_BYTES,
    }
}

impl CodeCache {
    /// A cache that keeps its files in `dir` (created if missing) and holds at most
    /// `max_bytes`. Bundles an earlier run left there are kept (by age, the oldest first to
    /// go) and temporary files it left are removed.
    pub fn new(dir: PathBuf, max_bytes: u64) -> std::io::Result<CodeCache> {
        std::fs::create_dir_all(&dir)?;
        let cache = CodeCache {
            inner: Arc::new(CacheInner {
                dir,
                max_bytes,
                clock: AtomicU64::new(0),
                entries: Mutex::new(HashMap::new()),
            }),
        };
        cache.load()?;
        Ok(cache)
    }

    /// Takes in the bundles on disk and removes leftover temporary files.
    fn load(&self) -> std::io::Result<()> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(bundle) = name.strip_suffix(DERIVED_SUFFIX) {
                // A note whose bundle is gone names nothing the cache counts.
                if !self.inner.dir.join(bundle).exists() {
                    let _ = std::fs::remove_file(entry.path());
                }
            } else if let Some(hash) = parse_hash(&name) {
                found.push((meta.modified().ok(), hash, meta.len()));
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let mut entries = self.entries();
        for (_, hash, bytes) in found {
            let mut bundle = self.bundle(hash, bytes);
            bundle.derived = self.read_derived(&hash);
            entries.insert(hash, Entry::Ready(bundle));
        }
        self.evict(&mut entries, None);
        Ok(())
    }

    /// The directory the bundles are kept in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The bound on the bytes the cache holds.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<CodeHash, Entry>> {
        self.inner
            .entries
            .lock()
            .expect("code cache lock poisoned by an earlier panic")
    }

    fn tick(&self) -> u64 {
        self.inner.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn bundle(&self, hash: CodeHash, bytes: u64) -> Bundle {
        Bundle {
            held: CodeRef {
                path: Arc::new(self.path_of(&hash)),
            },
            bytes,
            used: self.tick(),
            derived: None,
        }
    }

    /// A bundle, held, asking the server for it over `frames` if it is not cached yet.
    pub async fn get(
        &self,
        hash: CodeHash,
        frames: &mpsc::UnboundedSender<Frame>,
    ) -> Result<CodeRef, Error> {
        let rx = {
            let mut entries = self.entries();
            match entries.get_mut(&hash) {
                Some(Entry::Ready(bundle)) => {
                    bundle.used = self.tick();
                    return Ok(bundle.held.clone());
                }
                Some(Entry::Fetching { waiters, .. }) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    rx
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    let waiters = vec![tx];
                    entries.insert(
                        hash,
                        Entry::Fetching {
                            waiters,
                            partial: None,
                        },
                    );
                    if frames.send(ask(hash, 0)).is_err() {
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

    /// Stores a whole bundle the server sent (a `Code` frame) after checking it matches its
    /// hash, and wakes the calls waiting for it.
    pub async fn fill(&self, hash: CodeHash, found: bool, bytes: Bytes) {
        let total_bytes = bytes.len() as u64;
        let chunk = Chunk {
            hash,
            offset: 0,
            total_bytes,
            bytes,
            found,
        };
        self.fill_chunk(chunk, None).await;
    }

    /// Takes a chunk the server sent: appends it to the bundle's temporary file and asks for
    /// the next over `frames`, or, once the bundle is whole, checks its hash, moves it into
    /// place and wakes the calls waiting for it. A chunk of a bundle not being fetched (its
    /// fetch was abandoned) is dropped.
    pub async fn fill_chunk(&self, chunk: Chunk, frames: Option<&mpsc::UnboundedSender<Frame>>) {
        let hash = chunk.hash;
        let Some(partial) = self.take_partial(hash) else {
            return;
        };
        let step = if chunk.found {
            self.append(partial, chunk).await
        } else {
            Err(Error::CodeNotFound { hash })
        };
        match step {
            Ok(Step::Whole(bytes)) => self.finish(hash, Ok(bytes)),
            Ok(Step::More(partial)) => {
                let offset = partial.received;
                if !self.put_partial(hash, partial) {
                    return;
                }
                let asked = frames.is_some_and(|f| f.send(ask(hash, offset)).is_ok());
                if !asked {
                    self.finish(hash, Err(Error::ConnectionClosed));
                }
            }
            Err(e) => self.finish(hash, Err(e)),
        }
    }

    /// The partial file of a bundle being fetched (`Some(None)` before its first chunk);
    /// `None` when it is not being fetched.
    fn take_partial(&self, hash: CodeHash) -> Option<Option<Box<Partial>>> {
        match self.entries().get_mut(&hash) {
            Some(Entry::Fetching { partial, .. }) => Some(partial.take()),
            _ => None,
        }
    }

    /// Puts a partial file back; false when the fetch was abandoned meanwhile.
    fn put_partial(&self, hash: CodeHash, file: Box<Partial>) -> bool {
        match self.entries().get_mut(&hash) {
            Some(Entry::Fetching { partial, .. }) => {
                *partial = Some(file);
                true
            }
            _ => false,
        }
    }

    /// Appends a chunk off the async threads (see [`append`]).
    async fn append(&self, partial: Option<Box<Partial>>, chunk: Chunk) -> Result<Step, Error> {
        let path = self.path_of(&chunk.hash);
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || append(&dir, &path, partial, chunk))
            .await
            .map_err(|e| Error::WriteTask {
                reason: e.to_string(),
            })?
    }

    /// Ends a fetch: the bundle goes in (evicting others past the bound) and the calls
    /// waiting for it get it, or they get the error.
    fn finish(&self, hash: CodeHash, result: Result<u64, Error>) {
        let (waiters, result) = {
            let mut entries = self.entries();
            let waiters = match entries.remove(&hash) {
                Some(Entry::Fetching { waiters, .. }) => waiters,
                Some(ready) => {
                    entries.insert(hash, ready);
                    Vec::new()
                }
                None => Vec::new(),
            };
            let result = result.map(|bytes| {
                let bundle = self.bundle(hash, bytes);
                let held = bundle.held.clone();
                entries.insert(hash, Entry::Ready(bundle));
                self.evict(&mut entries, Some(hash));
                held
            });
            (waiters, result)
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    /// Removes the least recently used bundles nobody holds (never `keep`) until the cache
    /// is within its bound or nothing more can go.
    fn evict(&self, entries: &mut HashMap<CodeHash, Entry>, keep: Option<CodeHash>) {
        let mut total: u64 = entries
            .values()
            .map(|e| match e {
                Entry::Ready(bundle) => bundle.total_bytes(),
                Entry::Fetching { .. } => 0,
            })
            .sum();
        while total > self.inner.max_bytes {
            let victim = entries
                .iter()
                .filter_map(|(hash, entry)| match entry {
                    Entry::Ready(b) if Some(*hash) != keep && !b.in_use() => {
                        Some((b.used, *hash, b.total_bytes()))
                    }
                    _ => None,
                })
                .min();
            let Some((_, hash, bytes)) = victim else {
                tracing::warn!(
                    bytes = total,
                    max_bytes = self.inner.max_bytes,
                    "the code cache is over its size, with every bundle in it in use"
                );
                break;
            };
            let path = self.path_of(&hash);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot evict a code bundle");
                    break;
                }
            }
            if let Some(Entry::Ready(bundle)) = entries.remove(&hash) {
                self.discard_derived(entries, &hash, bundle.derived);
            }
            total -= bytes;
            tracing::info!(hash = %hex(&hash), bytes, "evicted a code bundle from the cache");
        }
    }

    /// Counts `dir`, made from the bundle `hash` (its unpacked image, `bytes` in all), with the
    /// bundle: it is evicted with it, unless another bundle made the same directory. Remembered
    /// beside the bundle, so a reopened cache counts it too. A bundle not in the cache (evicted
    /// meanwhile) leaves `dir` uncounted.
    pub fn attach(&self, hash: &CodeHash, dir: PathBuf, bytes: u64) {
        let mut entries = self.entries();
        let Some(Entry::Ready(bundle)) = entries.get_mut(hash) else {
            return;
        };
        let relative = dir.strip_prefix(&self.inner.dir).unwrap_or(&dir).to_owned();
        let note = format!("{}\n{bytes}\n", relative.display());
        if let Err(e) = std::fs::write(self.derived_note(hash), note) {
            tracing::warn!(error = %e, "cannot note an unpacked image beside its bundle");
        }
        bundle.derived = Some(Derived { dir, bytes });
        self.evict(&mut entries, Some(*hash));
    }

    /// Whether something made from the bundle `hash` is counted with it.
    pub fn has_attached(&self, hash: &CodeHash) -> bool {
        matches!(self.entries().get(hash), Some(Entry::Ready(b)) if b.derived.is_some())
    }

    /// Every directory counted with a bundle.
    pub fn attached_dirs(&self) -> Vec<PathBuf> {
        self.entries()
            .values()
            .filter_map(|e| match e {
                Entry::Ready(b) => b.derived.as_ref().map(|d| d.dir.clone()),
                Entry::Fetching { .. } => None,
            })
            .collect()
    }

    fn derived_note(&self, hash: &CodeHash) -> PathBuf {
        let mut name = hex(hash.as_slice());
        name.push_str(DERIVED_SUFFIX);
        self.inner.dir.join(name)
    }

    /// What the note beside a bundle on disk says was made from it, if that is still there.
    fn read_derived(&self, hash: &CodeHash) -> Option<Derived> {
        let note = std::fs::read_to_string(self.derived_note(hash)).ok()?;
        let mut lines = note.lines();
        let dir = self.inner.dir.join(lines.next()?);
        let bytes = lines.next()?.parse().ok()?;
        dir.is_dir().then_some(Derived { dir, bytes })
    }

    /// Removes what an evicted bundle `hash` had made, unless another bundle has it too: renamed
    /// at once, deleted on a thread of its own (an image root may be large).
    fn discard_derived(
        &self,
        entries: &HashMap<CodeHash, Entry>,
        hash: &CodeHash,
        derived: Option<Derived>,
    ) {
        let _ = std::fs::remove_file(self.derived_note(hash));
        let Some(derived) = derived else {
            return;
        };
        let shared = entries.values().any(|e| {
            matches!(e, Entry::Ready(b) if b.derived.as_ref().is_some_and(|d| d.dir == derived.dir))
        });
        if !shared {
            discard_dir(&derived.dir);
        }
    }

    /// Forgets fetches in flight (their connection ended); their callers get an error.
    pub fn abandon_fetches(&self) {
        self.entries()
            .retain(|_, entry| matches!(entry, Entry::Ready(_)));
    }
}

/// `<64 hex digits>` → the hash.
fn parse_hash(name: &str) -> Option<CodeHash> {
    if name.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// Appends `chunk` to the bundle's temporary file (made in `dir` on the first chunk), and once
/// the bundle is whole checks its hash and renames it to `path`, executable.
fn append(
    dir: &Path,
    path: &Path,
    partial: Option<Box<Partial>>,
    chunk: Chunk,
) -> Result<Step, Error> {
    let hash = chunk.hash;
    let io = |source| Error::WriteCode {
        path: path.to_owned(),
        source: Arc::new(source),
    };
    let mut partial = match partial {
        Some(partial) => partial,
        None => Box::new(Partial {
            file: tempfile::NamedTempFile::new_in(dir).map_err(io)?,
            hasher: Sha256::new(),
            received: 0,
        }),
    };
    let len = chunk.bytes.len() as u64;
    let end = partial.received + len;
    let detail = if chunk.offset != partial.received {
        Some(format!(
            "offset {} where {} was next",
            chunk.offset, partial.received
        ))
    } else if end > chunk.total_bytes || (len == 0 && end < chunk.total_bytes) {
        Some(format!(
            "{len} bytes at {} of {}",
            chunk.offset, chunk.total_bytes
        ))
    } else {
        None
    };
    if let Some(detail) = detail {
        return Err(Error::ChunkOutOfOrder { hash, detail });
    }
    partial.file.write_all(&chunk.bytes).map_err(io)?;
    partial.hasher.update(&chunk.bytes);
    partial.received = end;
    if end < chunk.total_bytes {
        return Ok(Step::More(partial));
    }
    let Partial { file, hasher, .. } = *partial;
    if hasher.finalize().as_slice() != hash {
        return Err(Error::HashMismatch { hash });
    }
    use std::os::unix::fs::PermissionsExt;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(Step::Whole(end))
}

/// Removes a directory tree without waiting for it: renamed out of the way at once (a restarted
/// worker removes what a crash left under that name), then deleted on a thread of its own.
pub fn discard_dir(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    // A name of its own each time: an earlier discard of the same root may still be deleting.
    static DISCARDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut discarded = std::ffi::OsString::from(DISCARDED_PREFIX);
    discarded.push(format!(
        "{}-{}-",
        std::process::id(),
        DISCARDS.fetch_add(1, Ordering::Relaxed)
    ));
    discarded.push(name);
    let gone = parent.join(discarded);
    if let Err(e) = std::fs::rename(dir, &gone) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an unpacked image");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("faasd-discard".into())
        .spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&gone) {
                tracing::warn!(dir = %gone.display(), error = %e, "cannot remove an unpacked image");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to remove an unpacked image");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(bytes: &[u8]) -> CodeHash {
        Sha256::digest(bytes).into()
    }

    fn cache() -> (tempfile::TempDir, CodeCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CodeCache::new(dir.path().join("code"), DEFAULT_MAX_BYTES).expect("cache");
        (dir, cache)
    }

    /// Starts a `get` in the background and returns it with the frame it sent.
    async fn start_get(
        cache: &CodeCache,
        hash: CodeHash,
    ) -> (
        tokio::task::JoinHandle<Result<CodeRef, Error>>,
        mpsc::UnboundedReceiver<Frame>,
    ) {
        let (frames, mut sent) = mpsc::unbounded_channel();
        let getter = cache.clone();
        let get = tokio::spawn(async move { getter.get(hash, &frames).await });
        let frame = sent.recv().await.expect("a fetch");
        assert_eq!(frame, ask(hash, 0));
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
        assert_eq!(std::fs::read(path.path()).expect("read"), code);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path.path())
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        let (frames, mut sent) = mpsc::unbounded_channel();
        let again = cache.get(hash, &frames).await.expect("cached");
        assert_eq!(again.path(), path.path());
        assert!(
            sent.try_recv().is_err(),
            "a cached bundle was fetched again"
        );
    }

    fn chunk(hash: CodeHash, offset: u64, total_bytes: u64, bytes: &'static [u8]) -> Chunk {
        Chunk {
            hash,
            offset,
            total_bytes,
            bytes: Bytes::from_static(bytes),
            found: true,
        }
    }

    #[tokio::test]
    async fn a_bundle_arrives_in_chunks_each_asked_for_after_the_last() {
        let (_dir, cache) = cache();
        let code = b"0123456789";
        let hash = hash_of(code);
        let (get, mut sent) = start_get(&cache, hash).await;
        let (frames, mut asked) = mpsc::unbounded_channel();
        cache
            .fill_chunk(chunk(hash, 0, 10, b"0123"), Some(&frames))
            .await;
        assert_eq!(asked.try_recv().expect("next chunk asked"), ask(hash, 4));
        cache
            .fill_chunk(chunk(hash, 4, 10, b"456"), Some(&frames))
            .await;
        assert_eq!(asked.try_recv().expect("next chunk asked"), ask(hash, 7));
        cache
            .fill_chunk(chunk(hash, 7, 10, b"789"), Some(&frames))
            .await;
        assert!(asked.try_recv().is_err(), "asked past the end");
        let held = get.await.expect("join").expect("code");
        assert_eq!(std::fs::read(held.path()).expect("read"), code);
        assert!(sent.try_recv().is_err());
        let left: Vec<_> = std::fs::read_dir(cache.dir()).expect("list").collect();
        assert_eq!(left.len(), 1, "a temporary file was left: {left:?}");
    }

    #[tokio::test]
    async fn a_chunk_out_of_order_fails_the_fetch_and_leaves_no_file() {
        let (_dir, cache) = cache();
        let hash = hash_of(b"0123456789");
        let (get, _sent) = start_get(&cache, hash).await;
        let (frames, _asked) = mpsc::unbounded_channel();
        cache
            .fill_chunk(chunk(hash, 0, 10, b"0123"), Some(&frames))
            .await;
        cache
            .fill_chunk(chunk(hash, 6, 10, b"6789"), Some(&frames))
            .await;
        let err = get.await.expect("join").expect_err("refused");
        assert!(matches!(err, Error::ChunkOutOfOrder { .. }), "{err:?}");
        let left = std::fs::read_dir(cache.dir()).expect("list").count();
        assert_eq!(left, 0, "a file was left");
    }

    /// Fetches `code` into `cache` whole and returns its hold.
    async fn fetch(cache: &CodeCache, code: &'static [u8]) -> CodeRef {
        let hash = hash_of(code);
        let (get, _sent) = start_get(cache, hash).await;
        cache.fill(hash, true, Bytes::from_static(code)).await;
        get.await.expect("join").expect("code")
    }

    #[tokio::test]
    async fn past_its_size_the_cache_evicts_the_least_recently_used_bundle_not_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CodeCache::new(dir.path().join("code"), 25).expect("cache");
        let a = fetch(&cache, b"aaaaaaaaaa").await;
        let a_path = a.path().to_owned();
        drop(a);
        let b = fetch(&cache, b"bbbbbbbbbb").await;
        // `a` is used again, so `b` is now the least recently used...
        let (frames, _) = mpsc::unbounded_channel();
        let a = cache
            .get(hash_of(b"aaaaaaaaaa"), &frames)
            .await
            .expect("cached");
        let b_path = b.path().to_owned();
        drop(b);
        // ... and goes when a third bundle passes the bound; `a` is held and stays.
        let c = fetch(&cache, b"cccccccccc").await;
        assert!(!b_path.exists(), "the least recently used bundle stayed");
        assert!(a_path.exists() && c.path().exists());
        // Every bundle held: the cache passes its bound rather than remove one in use.
        let d = fetch(&cache, b"dddddddddd").await;
        assert!(a.path().exists() && c.path().exists() && d.path().exists());
        drop((a, c));
        // Reopened, the cache takes in what is on disk and keeps within its bound.
        drop(cache);
        let cache = CodeCache::new(dir.path().join("code"), 15).expect("reopen");
        let kept = std::fs::read_dir(cache.dir()).expect("list").count();
        assert_eq!(kept, 1, "reopening did not evict down to the bound");
        drop(d);
    }

    /// A directory of `bytes` bytes at `cache`'s `images/NAME`, as an unpacked image would be.
    fn made_dir(cache: &CodeCache, name: &str, bytes: usize) -> PathBuf {
        let dir = cache.dir().join("images").join(name);
        std::fs::create_dir_all(dir.join("rootfs")).expect("mkdir");
        std::fs::write(dir.join("rootfs").join("file"), vec![0u8; bytes]).expect("write");
        dir
    }

    #[tokio::test]
    async fn what_was_made_from_a_bundle_counts_with_it_and_goes_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CodeCache::new(dir.path().join("code"), 40).expect("cache");
        let a = fetch(&cache, b"aaaaaaaaaa").await;
        let a_hash = hash_of(b"aaaaaaaaaa");
        let root = made_dir(&cache, "a-image", 20);
        cache.attach(&a_hash, root.clone(), 20);
        assert!(cache.has_attached(&a_hash));
        // Reopened, the cache still counts the image with its bundle.
        drop(a);
        let cache = CodeCache::new(dir.path().join("code"), 40).expect("reopen");
        assert_eq!(cache.attached_dirs(), vec![root.clone()]);
        // 10 + 20 for `a`, then 10 for `b`: within 40. A third bundle passes it, and `a`, the
        // least recently used, goes with its image.
        let b = fetch(&cache, b"bbbbbbbbbb").await;
        let c = fetch(&cache, b"cccccccccc").await;
        assert!(!root.exists(), "the evicted bundle's image stayed");
        assert!(
            !cache
                .dir()
                .join(format!("{}.derived", hex(&a_hash)))
                .exists()
        );
        assert!(b.path().exists() && c.path().exists());
    }

    #[tokio::test]
    async fn an_image_two_bundles_made_stays_while_one_of_them_is_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CodeCache::new(dir.path().join("code"), 30).expect("cache");
        let (a, b) = (
            fetch(&cache, b"aaaaaaaaaa").await,
            fetch(&cache, b"bbbbbbbbbb").await,
        );
        let root = made_dir(&cache, "shared", 5);
        cache.attach(&hash_of(b"aaaaaaaaaa"), root.clone(), 5);
        cache.attach(&hash_of(b"bbbbbbbbbb"), root.clone(), 5);
        let a_path = a.path().to_owned();
        drop(a);
        // A third bundle passes the bound: `a` goes, `b` (held) stays, and so does their image.
        let c = fetch(&cache, b"cccccccccc").await;
        assert!(!a_path.exists(), "the bundle not in use stayed");
        assert!(root.exists(), "an image another bundle has was removed");
        drop((b, c));
    }

    #[tokio::test]
    async fn a_bundle_left_on_disk_is_served_without_fetching() {
        let (dir, _) = cache();
        let code = b"exit 0\n";
        let hash = hash_of(code);
        let files = dir.path().join("code");
        std::fs::write(files.join(hex(&hash)), code).expect("write");
        std::fs::write(files.join(".tmpleft"), b"partial").expect("write");
        let cache = CodeCache::new(files.clone(), DEFAULT_MAX_BYTES).expect("reopen");
        assert!(
            !files.join(".tmpleft").exists(),
            "a temporary file was left"
        );
        let (frames, mut sent) = mpsc::unbounded_channel();
        let path = cache.get(hash, &frames).await.expect("on disk");
        assert_eq!(std::fs::read(path.path()).expect("read"), code);
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
            registered = matches!(cache.entries().get(&hash), Some(Entry::Fetching { waiters, .. }) if waiters.len() == 2);
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
        assert_eq!(first.path(), second.path());
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
