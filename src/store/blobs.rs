//! Uploaded code bundles kept as files beside the database, named by their SHA-256:
//! `DATA/blobs/<64 hex digits>`.
//!
//! A bundle uploaded with `PUT /v1/blobs/sha256:<hex>` may be far larger than a request body
//! (`--max-code-size`, 1 GiB by default), so it never goes into redb as one value nor into
//! memory whole: the upload streams into a temporary file (`.upload-*`) while it is hashed,
//! and only a body that hashes to its name is synced (the file, then the directory) and renamed
//! into place. An interrupted or refused upload leaves nothing; a retry starts over.
//!
//! A file is kept while a stored function version names its hash. One that none names goes at
//! the retention's sweep, but only once it has been left alone for [`GRACE`]: an upload, a
//! `HEAD` finding the blob and a registration naming it all touch its time, so a client that
//! uploaded (or found) a blob has that long to register a function with it. Small bundles
//! registered inline stay in the `blobs` table, as before.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Error;
use crate::proto::{CodeHash, hex};

/// The directory of blob files, inside the data directory.
pub const DIR: &str = "blobs";

/// How long a blob file no function version names is kept after its last upload, `HEAD` or
/// registration: the time a client has between uploading a bundle and registering it.
pub const GRACE: Duration = Duration::from_secs(3600);

/// The prefix of an upload's temporary file.
const UPLOAD_PREFIX: &str = ".upload-";

/// The blob files of a data directory.
#[derive(Debug, Clone)]
pub struct BlobFiles {
    dir: PathBuf,
    /// Held while a blob's time is touched or a file is put in place, and by the sweep while
    /// it checks and removes one, so a blob just found or stored is never swept under it.
    lock: Arc<Mutex<()>>,
}

/// How an upload ended.
#[derive(Debug)]
pub enum Stored {
    /// The body hashed to its name: the blob is in place, this many bytes long.
    Stored(u64),
    /// The body hashed to something else (given): nothing was kept.
    Mismatch(CodeHash),
}

/// An upload under way: a temporary file in the blob directory, and the hash of what it holds.
/// Dropped before [`Upload::finish`], it removes its file.
pub struct Upload {
    files: BlobFiles,
    file: tokio::fs::File,
    temp: tempfile::TempPath,
    hasher: Sha256,
    len: u64,
}

impl BlobFiles {
    /// The blob files of the data directory `data_dir`, creating their directory and removing
    /// the temporary files of uploads a stop interrupted (only one server opens a data
    /// directory, so none is under way).
    pub fn open(data_dir: &Path) -> Result<BlobFiles, Error> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let files = BlobFiles {
            dir,
            lock: Arc::new(Mutex::new(())),
        };
        for entry in std::fs::read_dir(&files.dir).map_err(files.io("list", &files.dir))? {
            let entry = entry.map_err(files.io("list", &files.dir))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(UPLOAD_PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(files)
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

    /// Starts an upload: a temporary file in the blob directory.
    pub fn upload(&self) -> Result<Upload, Error> {
        let temp = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(self.io("create", &self.dir))?;
        let (file, temp) = temp.into_parts();
        Ok(Upload {
            files: self.clone(),
            file: tokio::fs::File::from_std(file),
            temp,
            hasher: Sha256::new(),
            len: 0,
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
                None => name.starts_with(UPLOAD_PREFIX),
            };
            if !doomed {
                continue;
            }
            let _guard = self.guard();
            let modified = entry.metadata().and_then(|m| m.modified());
            if modified.is_ok_and(|m| m < before) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Upload {
    /// Appends `bytes` to the upload.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .await
            .map_err(self.files.io("write", &self.temp))
    }

    /// The bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends the upload: when the body hashes to `expected`, makes it durable (the file, then
    /// the directory) and puts it in place; else removes it.
    pub async fn finish(mut self, expected: CodeHash) -> Result<Stored, Error> {
        let actual: CodeHash = self.hasher.finalize().into();
        if actual != expected {
            return Ok(Stored::Mismatch(actual));
        }
        let io = self.files.io("sync", &self.temp);
        self.file
            .flush()
            .await
            .map_err(self.files.io("write", &self.temp))?;
        self.file.sync_all().await.map_err(io)?;
        drop(self.file);
        let (files, temp, len) = (self.files, self.temp, self.len);
        tokio::task::spawn_blocking(move || {
            let path = files.path(&expected);
            let _guard = files.guard();
            temp.persist(&path)
                .map_err(|e| files.io("rename", &path)(e.error))?;
            File::open(&files.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(files.io("sync", &files.dir))?;
            Ok(Stored::Stored(len))
        })
        .await
        .map_err(|e| Error::Join(e.to_string()))?
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

    #[tokio::test]
    async fn an_upload_is_kept_only_when_it_matches_its_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let files = BlobFiles::open(dir.path()).expect("open");
        let mut upload = files.upload().expect("upload");
        upload.write(b"hello ").await.expect("write");
        upload.write(b"world").await.expect("write");
        let hash = hash_of(b"hello world");
        assert!(matches!(
            upload.finish(hash).await.expect("finish"),
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

        let mut upload = files.upload().expect("upload");
        upload.write(b"not it").await.expect("write");
        let other = hash_of(b"something else");
        let end = upload.finish(other).await.expect("finish");
        assert!(matches!(end, Stored::Mismatch(h) if h == hash_of(b"not it")));
        assert_eq!(files.touch(&other).expect("touch"), None);
        let names: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(hex(&hash))]);
    }

    #[tokio::test]
    async fn the_sweep_keeps_wanted_and_recent_blobs_and_drops_interrupted_uploads() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let files = BlobFiles::open(dir.path()).expect("open");
        for code in [&b"a"[..], b"b"] {
            let mut upload = files.upload().expect("upload");
            upload.write(code).await.expect("write");
            upload.finish(hash_of(code)).await.expect("finish");
        }
        let interrupted = files.upload().expect("upload");
        std::mem::forget(interrupted);
        // Nothing is old enough yet.
        let removed = files
            .sweep(SystemTime::now() - GRACE, |_| false)
            .expect("sweep");
        assert_eq!(removed, 0);
        let later = SystemTime::now() + Duration::from_secs(1);
        let removed = files.sweep(later, |h| *h == hash_of(b"a")).expect("sweep");
        assert_eq!(removed, 2, "the unwanted blob and the interrupted upload");
        assert!(files.touch(&hash_of(b"a")).expect("touch").is_some());
        assert!(files.touch(&hash_of(b"b")).expect("touch").is_none());
        // Reopening removes interrupted uploads at once.
        std::mem::forget(files.upload().expect("upload"));
        BlobFiles::open(dir.path()).expect("reopen");
        let left = std::fs::read_dir(dir.path().join(DIR))
            .expect("list")
            .count();
        assert_eq!(left, 1);
    }
}
