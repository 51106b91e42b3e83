//! Uploaded code bundles kept as files beside the database, named by their SHA-256:
//! `DATA/blobs/<64 hex digits>`.
//!
//! A bundle uploaded with `PUT /v1/blobs/sha256:<hex>` may be far larger than a request body
//! (`--max-code-size`, 1 GiB by default), so it never goes into redb as one value nor into
//! memory whole: the upload streams into a partial file (`.partial-<hex>`) while it is hashed,
//! and only a body that hashes to its name is synced (the file, then the directory) and renamed
//! into place. A refused upload (too large, wrong digest) leaves nothing, and neither does one
//! whose file ran out of space: its partial file would keep the disk full, and with it every
//! write of the store refused. An interrupted one (the client went away, another I/O error)
//! leaves its partial file, which a later upload of the same blob resumes from a given offset
//! (its bytes up to there are hashed again from disk) or starts over; one upload of a blob at a
//! time. A failure says what stays ([`Kept`]). Partial files are swept like unnamed blobs.
//!
//! A file is kept while a stored function version names its hash. One that none names goes at
//! the retention's sweep, but only once it has been left alone for [`GRACE`]: an upload, a
//! `HEAD` finding the blob and a registration naming it all touch its time, so a client that
//! uploaded (or found) a blob has that long to register a function with it. Small bundles
//! registered inline stay in the `blobs` table, as before.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Error, space};
use crate::proto::{CodeHash, hex};

/// The directory of blob files, inside the data directory.
pub const DIR: &str = "blobs";

/// How long a blob file no function version names is kept after its last upload, `HEAD` or
/// registration: the time a client has between uploading a bundle and registering it.
pub const GRACE: Duration = Duration::from_secs(3600);

/// The prefix of an upload's partial file (followed by the blob's hex digest).
const PARTIAL_PREFIX: &str = ".partial-";

/// The blob files of a data directory.
#[derive(Debug, Clone)]
pub struct BlobFiles {
    dir: PathBuf,
    /// Held while a blob's time is touched or a file is put in place, and by the sweep while
    /// it checks and removes one, so a blob just found or stored is never swept under it.
    lock: Arc<Mutex<()>>,
    /// The blobs being uploaded now (one upload of a blob at a time).
    uploading: Arc<Mutex<HashSet<CodeHash>>>,
    /// Who sent each blob's whole body since the server started (see [`BlobFiles::uploaded_by`]).
    uploaders: Arc<Mutex<HashMap<CodeHash, HashSet<u32>>>>,
}

/// Why an upload could not start.
#[derive(Debug)]
pub enum Refused {
    /// Another upload of the blob is under way.
    InProgress,
    /// The offset to resume from is past what was received before (given).
    Offset(u64),
}

/// How an upload ended.
#[derive(Debug)]
pub enum Stored {
    /// The body hashed to its name: the blob is in place, this many bytes long.
    Stored(u64),
    /// The body hashed to something else: its partial file was removed.
    Mismatch {
        /// What the body hashed to.
        actual: CodeHash,
        /// What stays of it (nothing, unless the removal failed).
        kept: Kept,
    },
}

/// What stays of an upload that failed or was given up.
#[derive(Debug)]
pub enum Kept {
    /// Nothing: its file is gone, or was never made.
    Nothing,
    /// Its partial file, this many bytes long: an upload from that offset resumes it.
    Partial(u64),
    /// Its file may remain: removing or measuring it failed too (why).
    Unknown(std::io::Error),
    /// The whole blob, in place, but its directory could not be synced: it may not survive a
    /// crash. It stays, as the same blob may have been in place before, used by functions.
    Placed,
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kept::Nothing => write!(f, "nothing was kept"),
            Kept::Partial(bytes) => write!(
                f,
                "its first {bytes} bytes were kept: an upload from offset {bytes} resumes it"
            ),
            Kept::Unknown(e) => write!(f, "its file may remain ({e})"),
            Kept::Placed => write!(
                f,
                "the blob was put in place but may not survive a crash: send it again"
            ),
        }
    }
}

/// An upload under way: its partial file, and the hash of what it holds. Dropped before
/// [`Upload::finish`] or [`Upload::discard`] (the connection broke), it leaves its partial
/// file for a resumed upload. A step that fails cleans up as `after_failure` says.
pub struct Upload {
    files: BlobFiles,
    hash: CodeHash,
    /// The partial file and the blob's upload slot, which travel together to the blocking
    /// thread that writes: a write cut short by a dropped request still ends (and cleans up
    /// after itself) before another upload of the blob may start. `None` once a step failed.
    open: Option<(File, Slot)>,
    path: PathBuf,
    hasher: Sha256,
    len: u64,
}

/// A blob's place in the set of uploads under way, given up when dropped.
struct Slot {
    files: BlobFiles,
    hash: CodeHash,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.files.uploads().remove(&self.hash);
    }
}

impl BlobFiles {
    /// The blob files of the data directory `data_dir`, creating their directory.
    pub fn open(data_dir: &Path) -> Result<BlobFiles, Error> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(BlobFiles {
            dir,
            lock: Arc::new(Mutex::new(())),
            uploading: Arc::new(Mutex::new(HashSet::new())),
            uploaders: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Records that `user` sent the whole body of blob `hash`, checked against its digest.
    pub fn record_uploader(&self, hash: CodeHash, user: u32) {
        self.uploaders
            .lock()
            .expect("uploaders poisoned by an earlier panic")
            .entry(hash)
            .or_default()
            .insert(user);
    }

    /// Whether `user` sent the whole body of blob `hash` since the server started. Knowing a
    /// digest is not having its bytes: a blob is used by digest only by whoever proved to have
    /// them (or owns code that has that hash). The record lives in memory: after a restart an
    /// uploader sends the body again (the grace a blob waits for its registration is an hour).
    pub fn uploaded_by(&self, hash: &CodeHash, user: u32) -> bool {
        self.uploaders
            .lock()
            .expect("uploaders poisoned by an earlier panic")
            .get(hash)
            .is_some_and(|users| users.contains(&user))
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashSet<CodeHash>> {
        self.uploading
            .lock()
            .expect("upload set poisoned by an earlier panic")
    }

    /// The partial file of an interrupted upload of a blob.
    fn partial_path(&self, hash: &CodeHash) -> PathBuf {
        self.dir.join(format!("{PARTIAL_PREFIX}{}", hex(hash)))
    }

    /// How many bytes an interrupted upload of a blob left (the offset to resume from);
    /// `None` when none is kept.
    pub fn partial_len(&self, hash: &CodeHash) -> Option<u64> {
        std::fs::metadata(self.partial_path(hash))
            .ok()
            .map(|m| m.len())
    }

    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::BlobFile { op, path, source }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .expect("blob lock poisoned by an earlier panic")
    }

    /// The file of a blob.
    pub fn path(&self, hash: &CodeHash) -> PathBuf {
        self.dir.join(hex(hash))
    }

    /// The size of a blob's file, touching its time (the blob is wanted: see [`GRACE`]);
    /// `None` when there is no such file.
    pub fn touch(&self, hash: &CodeHash) -> Result<Option<u64>, Error> {
        let path = self.path(hash);
        let _guard = self.guard();
        let file = match File::options().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("open", &path)(e)),
        };
        file.set_modified(SystemTime::now())
            .map_err(self.io("touch", &path))?;
        let len = file.metadata().map_err(self.io("stat", &path))?.len();
        Ok(Some(len))
    }

    /// Starts an upload of a blob, resuming from `offset` what an interrupted upload left (0
    /// starts over): the bytes before it are hashed again from the partial file.
    pub async fn upload(
        &self,
        hash: CodeHash,
        offset: u64,
    ) -> Result<Result<Upload, Refused>, Error> {
        if !self.uploads().insert(hash) {
            return Ok(Err(Refused::InProgress));
        }
        // From here the upload owns the blob's partial file; dropped, it lets it go.
        let files = self.clone();
        let reopened = tokio::task::spawn_blocking(move || files.reopen(&hash, offset))
            .await
            .map_err(|e| Error::Join(e.to_string()));
        let (file, hasher) = match reopened.and_then(|r| r) {
            Ok(Ok(opened)) => opened,
            Ok(Err(refused)) => {
                self.uploads().remove(&hash);
                return Ok(Err(refused));
            }
            Err(e) => {
                self.uploads().remove(&hash);
                return Err(e);
            }
        };
        let slot = Slot {
            files: self.clone(),
            hash,
        };
        Ok(Ok(Upload {
            files: self.clone(),
            hash,
            open: Some((file, slot)),
            path: self.partial_path(&hash),
            hasher,
            len: offset,
        }))
    }

    /// Opens a blob's partial file cut to `offset` bytes, with their hash; refused when it
    /// holds fewer.
    fn reopen(&self, hash: &CodeHash, offset: u64) -> Result<Reopened, Error> {
        let path = self.partial_path(hash);
        cut_and_hash(&path, offset).map_err(|(op, source)| Error::Upload {
            op,
            kept: after_failure(&path, &source),
            path,
            source,
        })
    }

    /// Up to `max_len` bytes of a blob from `offset`, with the blob's whole size; `None` when
    /// there is no such file.
    pub fn read_chunk(
        &self,
        hash: &CodeHash,
        offset: u64,
        max_len: usize,
    ) -> Result<Option<(u64, Bytes)>, Error> {
        let path = self.path(hash);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("open", &path)(e)),
        };
        let total = file.metadata().map_err(self.io("stat", &path))?.len();
        let len = total.saturating_sub(offset).min(max_len as u64);
        file.seek(SeekFrom::Start(offset.min(total)))
            .map_err(self.io("seek", &path))?;
        let mut bytes = vec![0; len as usize];
        file.read_exact(&mut bytes)
            .map_err(self.io("read", &path))?;
        Ok(Some((total, Bytes::from(bytes))))
    }

    /// Removes the blob files (and stale upload files) untouched since `before` whose hash
    /// `wanted` does not want. Returns how many went.
    pub fn sweep(
        &self,
        before: SystemTime,
        mut wanted: impl FnMut(&CodeHash) -> bool,
    ) -> Result<usize, Error> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(self.io("list", &self.dir))? {
            let entry = entry.map_err(self.io("list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let doomed = match parse_hash(&name) {
                Some(hash) => !wanted(&hash),
                None => name.starts_with(PARTIAL_PREFIX),
            };
            if !doomed {
                continue;
            }
            let _guard = self.guard();
            if let Some(hash) = name.strip_prefix(PARTIAL_PREFIX).and_then(parse_hash) {
                if self.uploads().contains(&hash) {
                    continue;
                }
            }
            let modified = entry.metadata().and_then(|m| m.modified());
            if modified.is_ok_and(|m| m < before) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
                if let Some(hash) = parse_hash(&name) {
                    self.uploaders
                        .lock()
                        .expect("uploaders poisoned by an earlier panic")
                        .remove(&hash);
                }
            }
        }
        Ok(removed)
    }
}

impl Upload {
    /// The partial file and the upload slot; an error when an earlier step failed.
    fn take_open(&mut self, op: &'static str) -> Result<(File, Slot), Error> {
        let earlier = || std::io::Error::other("an earlier step of the upload failed");
        self.open
            .take()
            .ok_or_else(|| self.files.io(op, &self.path)(earlier()))
    }

    /// Runs `op` on the partial file on a blocking thread, the upload slot with it. A failure
    /// is cleaned up there, before the slot is given up, even if the request is gone by then.
    async fn on_file<T: Send + 'static>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let (mut file, slot) = self.take_open(op)?;
        let path = self.path.clone();
        let done = tokio::task::spawn_blocking(move || match f(&mut file) {
            Ok(value) => Ok((value, file, slot)),
            Err(source) => {
                drop(file);
                let kept = after_failure(&path, &source);
                drop(slot);
                Err(Error::Upload {
                    op,
                    path,
                    source,
                    kept,
                })
            }
        });
        let (value, file, slot) = done.await.map_err(|e| Error::Join(e.to_string()))??;
        self.open = Some((file, slot));
        Ok(value)
    }

    /// Appends `bytes` to the upload.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), Error> {
        let sent = bytes.clone();
        self.on_file("write", move |file| file.write_all(&sent))
            .await?;
        self.hasher.update(&bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The bytes received so far (a resumed upload's included).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives the upload up (it was refused): its partial file is removed, the upload slot held
    /// until it is. Returns what stays (nothing, unless the removal failed).
    pub async fn discard(mut self) -> Kept {
        let (open, path) = (self.open.take(), self.path.clone());
        let removed = tokio::task::spawn_blocking(move || {
            drop(open);
            remove(&path)
        });
        removed
            .await
            .unwrap_or_else(|e| Kept::Unknown(std::io::Error::other(e.to_string())))
    }

    /// Ends the upload: when the body hashes to `expected`, makes it durable (the file, then
    /// the directory) and puts it in place; else removes it.
    pub async fn finish(mut self) -> Result<Stored, Error> {
        let expected = self.hash;
        let actual: CodeHash = std::mem::take(&mut self.hasher).finalize().into();
        if actual != expected {
            let kept = self.discard().await;
            return Ok(Stored::Mismatch { actual, kept });
        }
        let open = self.take_open("sync")?;
        let (files, from, len) = (self.files.clone(), self.path.clone(), self.len);
        tokio::task::spawn_blocking(move || files.put_in_place(open, &from, &expected, len))
            .await
            .map_err(|e| Error::Join(e.to_string()))?
    }
}

impl BlobFiles {
    /// Makes a whole upload durable and puts it in place: syncs its partial file `from`, renames
    /// it to the blob's name and syncs the directory. A failure before the rename cleans up as
    /// [`after_failure`] says; after it, the blob stays ([`Kept::Placed`]).
    fn put_in_place(
        &self,
        (file, _slot): (File, Slot),
        from: &Path,
        hash: &CodeHash,
        len: u64,
    ) -> Result<Stored, Error> {
        let failed = |op: &'static str, source: std::io::Error| Error::Upload {
            op,
            path: from.to_owned(),
            kept: after_failure(from, &source),
            source,
        };
        let synced = file.sync_all();
        drop(file);
        synced.map_err(|e| failed("sync", e))?;
        let path = self.path(hash);
        let _guard = self.guard();
        std::fs::rename(from, &path).map_err(|e| failed("rename", e))?;
        if let Err(source) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            return Err(Error::Upload {
                op: "sync",
                path: self.dir.clone(),
                kept: Kept::Placed,
                source,
            });
        }
        Ok(Stored::Stored(len))
    }
}

/// A partial file reopened for an upload, with the hash of what it holds; or why not.
type Reopened = Result<(File, Sha256), Refused>;

/// Opens the partial file `path` cut to `offset` bytes, with their hash; refused when it
/// holds fewer. A failure names its step.
fn cut_and_hash(path: &Path, offset: u64) -> Result<Reopened, (&'static str, std::io::Error)> {
    let step = |op| move |e| (op, e);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(step("open"))?;
    let have = file.metadata().map_err(step("stat"))?.len();
    if offset > have {
        return Ok(Err(Refused::Offset(have)));
    }
    file.set_len(offset).map_err(step("truncate"))?;
    let mut hasher = Sha256::new();
    let mut piece = vec![0; 1 << 20];
    let mut left = offset;
    while left > 0 {
        let n = file.read(&mut piece).map_err(step("read"))?;
        if n == 0 {
            break;
        }
        hasher.update(&piece[..n]);
        left -= n as u64;
    }
    file.seek(SeekFrom::Start(offset)).map_err(step("seek"))?;
    Ok(Ok((file, hasher)))
}

/// What stays of an upload after `error` on its partial file `path` (closed by then). For lack
/// of space the file is removed: it would keep the disk full, and every write of the store
/// refused with it, until the sweep an hour later. Otherwise it stays for a resumed upload,
/// unless it is empty.
fn after_failure(path: &Path, error: &std::io::Error) -> Kept {
    if !space::out_of_space(error) {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() > 0 => return Kept::Partial(meta.len()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Kept::Nothing,
            Err(e) => return Kept::Unknown(e),
        }
    }
    remove(path)
}

/// Removes an upload's file: [`Kept::Nothing`] once it is gone.
fn remove(path: &Path) -> Kept {
    match std::fs::remove_file(path) {
        Ok(()) => Kept::Nothing,
        Err(e) if e.kind() == ErrorKind::NotFound => Kept::Nothing,
        Err(e) => Kept::Unknown(e),
    }
}

/// `<64 hex digits>` → the hash.
pub fn parse_hash(text: &str) -> Option<CodeHash> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(bytes: &[u8]) -> CodeHash {
        Sha256::digest(bytes).into()
    }

    async fn upload(files: &BlobFiles, hash: CodeHash, offset: u64) -> Upload {
        match files.upload(hash, offset).await.expect("upload") {
            Ok(upload) => upload,
            Err(refused) => panic!("refused: {refused:?}"),
        }
    }

    #[tokio::test]
    async fn an_upload_is_kept_only_when_it_matches_its_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let files = BlobFiles::open(dir.path()).expect("open");
        let hash = hash_of(b"hello world");
        let mut up = upload(&files, hash, 0).await;
        up.write(Bytes::from_static(b"hello "))
            .await
            .expect("write");
        up.write(Bytes::from_static(b"world")).await.expect("write");
        assert!(matches!(
            up.finish().await.expect("finish"),
            Stored::Stored(11)
        ));
        assert_eq!(files.touch(&hash).expect("touch"), Some(11));
        let (total, chunk) = files.read_chunk(&hash, 6, 3).expect("read").expect("found");
        assert_eq!((total, &chunk[..]), (11, &b"wor"[..]));
        let (_, tail) = files
            .read_chunk(&hash, 9, 100)
            .expect("read")
            .expect("found");
        assert_eq!(&tail[..], b"ld");

        let other = hash_of(b"something else");
        let mut up = upload(&files, other, 0).await;
        up.write(Bytes::from_static(b"not it"))
            .await
            .expect("write");
        let end = up.finish().await.expect("finish");
        assert!(
            matches!(end, Stored::Mismatch { actual, kept: Kept::Nothing } if actual == hash_of(b"not it"))
        );
        assert_eq!(files.touch(&other).expect("touch"), None);
        let names: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(hex(&hash))]);
    }

    #[test]
    fn a_failure_for_lack_of_space_removes_the_partial_file_and_others_keep_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join(".partial-x");
        let os = std::io::Error::from_raw_os_error;
        std::fs::write(&path, b"012345").expect("write");
        assert!(matches!(
            after_failure(&path, &os(nix::libc::EIO)),
            Kept::Partial(6)
        ));
        assert!(path.exists());
        assert!(matches!(
            after_failure(&path, &os(nix::libc::ENOSPC)),
            Kept::Nothing
        ));
        assert!(!path.exists());
        // An empty partial file is worth nothing to a resume.
        std::fs::write(&path, b"").expect("write");
        assert!(matches!(
            after_failure(&path, &os(nix::libc::EIO)),
            Kept::Nothing
        ));
        assert!(!path.exists());
        assert!(matches!(
            after_failure(&path, &os(nix::libc::EDQUOT)),
            Kept::Nothing
        ));
    }

    #[tokio::test]
    async fn an_interrupted_upload_resumes_from_what_it_left() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let files = BlobFiles::open(dir.path()).expect("open");
        let hash = hash_of(b"0123456789");
        let mut up = upload(&files, hash, 0).await;
        up.write(Bytes::from_static(b"012345"))
            .await
            .expect("write");
        assert!(matches!(
            files.upload(hash, 0).await.expect("upload"),
            Err(Refused::InProgress)
        ));
        drop(up);
        assert_eq!(files.partial_len(&hash), Some(6));
        assert!(matches!(
            files.upload(hash, 7).await.expect("upload"),
            Err(Refused::Offset(6))
        ));
        // Resumed from 4: the bytes before are hashed again, the rest cut and sent anew.
        let mut up = upload(&files, hash, 4).await;
        assert_eq!(up.len(), 4);
        up.write(Bytes::from_static(b"456789"))
            .await
            .expect("write");
        assert!(matches!(
            up.finish().await.expect("finish"),
            Stored::Stored(10)
        ));
        assert_eq!(files.partial_len(&hash), None);
        let (_, all) = files
            .read_chunk(&hash, 0, 100)
            .expect("read")
            .expect("found");
        assert_eq!(&all[..], b"0123456789");
    }

    #[tokio::test]
    async fn the_sweep_keeps_wanted_and_recent_blobs_and_drops_old_partial_uploads() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let files = BlobFiles::open(dir.path()).expect("open");
        for code in [&b"a"[..], b"b"] {
            let mut up = upload(&files, hash_of(code), 0).await;
            up.write(Bytes::copy_from_slice(code)).await.expect("write");
            up.finish().await.expect("finish");
        }
        let mut interrupted = upload(&files, hash_of(b"cut"), 0).await;
        interrupted
            .write(Bytes::from_static(b"c"))
            .await
            .expect("write");
        let later = SystemTime::now() + Duration::from_secs(1);
        // A partial file whose upload is under way stays.
        assert_eq!(
            files.sweep(later, |h| *h == hash_of(b"a")).expect("sweep"),
            1
        );
        assert!(files.touch(&hash_of(b"b")).expect("touch").is_none());
        drop(interrupted);
        // Nothing is old enough yet.
        let removed = files
            .sweep(SystemTime::now() - GRACE, |_| false)
            .expect("sweep");
        assert_eq!(removed, 0);
        assert_eq!(
            files.sweep(later, |h| *h == hash_of(b"a")).expect("sweep"),
            1
        );
        assert_eq!(files.partial_len(&hash_of(b"cut")), None);
        assert!(files.touch(&hash_of(b"a")).expect("touch").is_some());
    }
}
